"""The dashboard's page and its assets, from the package's ``selftune/web`` folder.

``/`` answers the page to a browser (api/ollama_routes.py asks :func:`page_response`; ollama's
clients still get "Ollama is running"), and ``/ui/<file>`` its scripts, styles and vendored
libraries. Both are constants anyone may fetch, like ``/docs``: the data the page shows comes
from the API, with the key the user gives it.

Every answer carries a strict Content-Security-Policy: scripts, styles and connections from this
origin only, no inline script, no ``eval``, no frames. A chat answer or an imported page that
holds HTML or script is then inert even if a bug let it into the page as markup.
"""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from selftune.api.errors import ApiError

__all__ = ["SECURITY_HEADERS", "WEB", "page_response", "router"]

WEB = Path(__file__).resolve().parent.parent / "web"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    # Assets change with the package; the browser asks again (a 304 costs next to nothing).
    "Cache-Control": "no-cache",
}

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}

router = APIRouter()


@functools.cache
def _assets() -> dict[str, Path]:
    """The files ``/ui/`` serves, by their path under the web folder: nothing else on disk is
    reachable, whatever the requested name holds (``..``, encoded slashes)."""
    return {
        path.relative_to(WEB).as_posix(): path
        for path in WEB.rglob("*")
        if path.is_file() and path.suffix in _TYPES
    }


def _file_response(path: Path) -> Response:
    return Response(
        path.read_bytes(), media_type=_TYPES[path.suffix], headers=dict(SECURITY_HEADERS)
    )


def page_response() -> Response:
    """The dashboard's page, for a browser that asked ``/``."""
    return _file_response(WEB / "index.html")


@router.get("/ui/{name:path}", include_in_schema=False)
async def asset(name: str) -> Response:
    """One of the page's files; 404 for any name that is not one."""
    path = _assets().get(name)
    if path is None:
        raise ApiError(404, f"no dashboard file {name!r}", code="not_found")
    return _file_response(path)
