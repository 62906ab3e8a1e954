"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against the tiny
model served by uvicorn on a loopback port (the helpers of tests/integration/conftest.py).

Each page records what went wrong in the browser (uncaught errors, Content-Security-Policy
refusals), and each test ends by checking there was none, and saves a screenshot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from selftune.api.app import create_app
from selftune.config import Settings
from selftune.engines.transformers_engine import TransformersEngine
from tests.conftest import isolate_settings
from tests.integration.conftest import serve_on_loopback, tiny_settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@dataclasses.dataclass(frozen=True)
class Dashboard:
    url: str
    app: Any
    settings: Settings

    @property
    def db(self) -> Any:
        return self.app.state.selftune.db


@contextlib.contextmanager
def live_dashboard(
    tiny_model_dir: Path,
    root: Path,
    shared_cache: Path,
    engine: TransformersEngine,
    **overrides: Any,
) -> Iterator[Dashboard]:
    """A server for one test module, its data under ``root``."""
    with pytest.MonkeyPatch.context() as env:
        isolate_settings(env, root, shared_cache)
        env.setenv("SELFTUNE_TRAIN__COMPILE", "off")
        settings = tiny_settings(tiny_model_dir, data_dir=str(root / "data"), **overrides)
        app = create_app(settings, engine=engine)
        with serve_on_loopback(app) as url:
            yield Dashboard(url, app, settings)


# Per module, not per session: while Playwright's sync API runs, its event loop counts as
# running in this thread, and every later test that calls asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make sysdeps installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@dataclasses.dataclass
class Troubles:
    """What went wrong inside the page: script errors and refused resources."""

    errors: list[str] = dataclasses.field(default_factory=list)

    def check(self) -> None:
        assert not self.errors, "\n".join(self.errors)


@pytest.fixture
def page(browser: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context and page (its own session storage); a screenshot at the end."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    troubles = Troubles()

    def console(message: Any) -> None:
        text = message.text
        if message.type == "error" and ("Content Security Policy" in text or "Refused" in text):
            troubles.errors.append(f"console: {text}")

    tab.on("console", console)
    tab.on("pageerror", lambda error: troubles.errors.append(f"page error: {error}"))
    tab.troubles = troubles
    try:
        yield tab
    finally:
        with contextlib.suppress(Exception):
            shot = tmp_path / f"{request.node.name}.png"
            tab.screenshot(path=str(shot), full_page=True)
        context.close()


def screenshot(page: Any, folder: Path, name: str) -> Path:
    """Save the whole page as ``folder/name.png``, and check that it was written."""
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000, path
    return path
