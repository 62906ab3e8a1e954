"""The test site: pages the extension's content script reads, served on loopback."""

from __future__ import annotations

import base64
import io
import wave


def _silence_wav(seconds: float = 0.5, rate: int = 8000) -> str:
    """A short silent WAV as a data: URL, for a medium that can really play."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(rate)
        w.writeframes(b"\x80" * int(seconds * rate))
    return "data:audio/wav;base64," + base64.b64encode(out.getvalue()).decode()


_IMAGE = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='40' height='40'%3E"
    "%3Crect width='40' height='40' fill='teal'/%3E%3C/svg%3E"
)


def _page(title: str, body: str, style: str = "") -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>body{{margin:0;font:16px sans-serif}}{style}</style></head>"
        f"<body>{body}</body></html>"
    )


def _grid(title: str, cell: str) -> str:
    """A 5 by 5 grid filling the viewport, every cell holding ``cell``; room to scroll below."""
    style = (
        ".grid{display:grid;grid-template:repeat(5,20vh)/repeat(5,20vw);width:100vw;"
        "height:100vh}.grid>div{display:flex;flex-wrap:wrap;align-content:center;"
        "justify-content:center;gap:4px}"
    )
    grid = "<div class=grid>" + f"<div>{cell}</div>" * 25 + "</div><div style='height:50vh'></div>"
    return _page(title, grid, style)


_FILLER = "<p style='height:1200px'>Fruit of the season, sorted by the grocer.</p>"
_SHOP = (
    "<h1>Shop</h1>"
    f"<audio title='Morning song' controls loop src='{_silence_wav()}'></audio>"
    "<video title='Intro film'></video>"  # no source: it cannot play
    f"{_FILLER}<p id=fruit>Red apples, green apples and pears.</p>"
    f"{_FILLER}<p>Baked apples with pears.</p>{_FILLER}"
)

PAGES = {
    "/shop": _page("Shop", _SHOP),
    "/news": _page("News", "<h1>News</h1><p>Nothing happened today.</p>"),
    "/links": _grid("Links", "<a href='#l'>a</a>" * 4),
    "/sparse-links": _grid("Few links", "<a href='#l'>a</a>"),
    "/images": _grid("Images", f"<img src=\"{_IMAGE}\" alt=''>" * 2),
}
