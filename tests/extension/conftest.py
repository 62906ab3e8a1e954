"""The unpacked extension in Debian's Chromium (headless) with scripted speech and MIDI, and a
loopback site of test pages. See docs/extension.md."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.extension import pages

EXTENSION = Path(__file__).resolve().parents[2] / "extension"
FAKES = Path(__file__).with_name("fakes.js")
CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_MS = 15_000


class _Pages(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = pages.PAGES.get(self.path)
        if body is None:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def site() -> Iterator[str]:
    """The test pages (tests/extension/pages.py) on a loopback port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="pages")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# Per module, not per session: while Playwright's sync API runs, its event loop counts as
# running in this thread, and every later test that calls asyncio.run() would fail.
@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's Chromium (/usr/bin/chromium) is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


class Browser:
    """A Chromium profile with the extension loaded; ``panel()`` opens its side panel page as
    a tab (headless Chromium cannot show the side panel itself)."""

    def __init__(self, context: Any) -> None:
        self.context = context
        worker = context.service_workers[0] if context.service_workers else None
        if worker is None:
            worker = context.wait_for_event("serviceworker", timeout=TIMEOUT_MS)
        self.worker = worker
        self.extension_id = worker.url.split("/")[2]
        self.base = f"chrome-extension://{self.extension_id}"
        self.errors: list[str] = []  # uncaught errors in the extension's pages

    def icon(self) -> tuple[str, str]:
        """The toolbar icon's state and its badge, as the service worker set them."""
        state = self.worker.evaluate("self.handsfree.iconState")
        return state, self.worker.evaluate("chrome.action.getBadgeText({})")

    def open(self, url: str) -> Any:
        page = self.context.new_page()
        page.goto(url)
        return page

    def panel(self, settings: dict[str, Any] | None = None) -> Any:
        page = self.context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.goto(f"{self.base}/panel.html")
        if settings:  # saved before the panel reads them, then the panel is reloaded
            page.evaluate("s => chrome.storage.sync.set({settings: s})", settings)
            page.reload()
        page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
        return page


@contextlib.contextmanager
def launch(driver: Any, profile: Path) -> Iterator[Browser]:
    """Chromium with the extension and the fakes, on a fresh profile folder."""
    context = driver.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM),
        headless=True,
        args=[
            f"--disable-extensions-except={EXTENSION}",
            f"--load-extension={EXTENSION}",
            # Pages in background tabs keep their timers: the panel is one while tests drive it.
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
        ],
    )
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(path=str(FAKES))
    try:
        yield Browser(context)
    finally:
        context.close()


@pytest.fixture
def browser(playwright_driver: Any, tmp_path: Path) -> Iterator[Browser]:
    with launch(playwright_driver, tmp_path / "profile") as b:
        yield b
        assert not b.errors, "the panel had uncaught errors"


def eventually(page: Any, check: Callable[[], bool], what: str) -> None:
    """Waits (polling ``page``'s clock) until ``check()`` holds."""
    for _ in range(TIMEOUT_MS // 25):
        if check():
            return
        page.wait_for_timeout(25)
    raise AssertionError(f"{what} did not happen within {TIMEOUT_MS} ms")


def spoken(panel: Any) -> list[str]:
    """What the extension said (through the fake speechSynthesis), in order."""
    return list(panel.evaluate("window.__fake.spoken"))


def wait_spoken(panel: Any, predicate: Callable[[str], bool], after: int = 0) -> str:
    """Waits until something said after the ``after``-th utterance matches; returns it."""
    deadline_ms = TIMEOUT_MS
    step = 25
    for _ in range(deadline_ms // step):
        for text in spoken(panel)[after:]:
            if predicate(text):
                return text
        panel.wait_for_timeout(step)
    raise AssertionError(f"nothing matching was said; the extension said {spoken(panel)}")


def say(panel: Any, text: str) -> int:
    """Speaks ``text`` to the running recognizer; returns how many utterances came before."""
    panel.wait_for_function("() => window.__fake.recognitions.size > 0")
    before = len(spoken(panel))
    assert panel.evaluate("t => window.__fake.say(t)", text)
    return before


def say_and_hear(panel: Any, text: str, expected: str) -> str:
    """Says ``text`` and waits for an answer containing ``expected`` (case-insensitive)."""
    before = say(panel, text)
    return wait_spoken(panel, lambda s: expected.lower() in s.lower(), before)


def midi(panel: Any, *messages: list[int], source: str = "fake-keys") -> None:
    """Sends ``messages`` from the fake MIDI input ``source`` ("fake-keys" or "fake-pads")."""
    for message in messages:
        panel.evaluate("([m, s]) => window.__fake.midi(m, performance.now(), s)", [message, source])


def chord(panel: Any, notes: list[int]) -> None:
    """Presses ``notes`` together, then lets them go."""
    midi(panel, *[[0x90, n, 100] for n in notes], *[[0x80, n, 0] for n in notes])


def tab_id(panel: Any, url: str) -> int:
    return int(panel.evaluate("u => chrome.tabs.query({url: u}).then(ts => ts[0].id)", url))


def storage(panel: Any, area: str, key: str) -> Any:
    return panel.evaluate(f"k => chrome.storage.{area}.get(k).then(v => v[k])", key)


# A selftune server for the tests that talk to one: the integration tests' tiny engine.
from tests.integration.conftest import tiny_engine  # noqa: E402, F401 (a fixture)


def run_command(panel: Any, text: str) -> None:
    """Says ``text`` and waits until the panel shows that the page reflects it."""
    say(panel, text)
    panel.wait_for_function(
        "t => document.querySelector('#page-state').textContent === "
        "`page: shows the result of “${t}”`",
        arg=text,
    )
