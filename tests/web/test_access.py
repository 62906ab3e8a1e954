"""The page where API keys are required: it asks for a key, keeps it in session storage (not in
the URL), shows what the key's owner may see, and admin actions only to an admin's key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from selftune.api.auth import create_key
from selftune.engines.transformers_engine import TransformersEngine
from tests.integration.lora_versions import add_version, save_random_lora
from tests.web.conftest import Dashboard, live_dashboard, screenshot


@pytest.fixture(scope="module")
def dashboard(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, shared_cache: Path
) -> Iterator[Dashboard]:
    engine = TransformersEngine(tiny_model_dir, context_length=256)
    root = tmp_path_factory.mktemp("web-access")
    with live_dashboard(
        tiny_model_dir,
        root,
        shared_cache,
        engine,
        serve={"auth_required": True, "auth_failures_per_minute": 0},
    ) as served:
        lora = save_random_lora(tiny_model_dir, root / "peft", seed=5)
        add_version(served.settings, served.db, lora, "v1")
        yield served


def _sign_in(page: Any, key: str) -> None:
    dialog = page.locator("#key-dialog")
    dialog.wait_for()
    page.fill("#key-input", key)
    dialog.get_by_role("button", name="Use this key").click()


def test_a_users_key_sees_its_own_and_no_admin_actions(
    dashboard: Dashboard, page: Any, tmp_path: Path
) -> None:
    alice = create_key(dashboard.db, "alice")
    ops = create_key(dashboard.db, "ops", admin=True)
    chat = {"messages": [{"role": "user", "content": "ops asks privately"}], "max_tokens": 2}
    asked = httpx.post(
        dashboard.url + "/v1/chat/completions",
        json=chat,
        headers={"Authorization": f"Bearer {ops}"},
        timeout=60,
    )
    assert asked.status_code == 200

    page.goto(dashboard.url, wait_until="domcontentloaded")
    _sign_in(page, "st-not-a-key")
    page.locator("#key-error").filter(has_text="invalid API key").wait_for()
    _sign_in(page, alice)
    page.locator("#who").filter(has_text="alice").wait_for()
    assert page.evaluate("sessionStorage.getItem('selftune.key')") == alice
    assert alice not in page.url

    page.fill("#chat-input", "alice asks")
    page.keyboard.press("Enter")
    page.locator("li.message.assistant[data-interaction]").wait_for()
    page.locator("#history-list .history-item").filter(has_text="alice asks").wait_for()
    assert page.locator("#history-list .history-item").count() == 1  # not ops' chat

    page.get_by_role("tab", name="Versions").click()
    page.locator("li.version[data-version=v1]").wait_for()
    assert page.get_by_role("button", name="Promote v1…").count() == 0
    assert not page.get_by_role("button", name="Roll back…").is_visible()
    screenshot(page, tmp_path, "user-key")
    page.troubles.check()

    # An admin's key, in another tab's session, sees the admin actions.
    page.evaluate("sessionStorage.clear()")
    page.reload(wait_until="domcontentloaded")
    _sign_in(page, ops)
    page.locator("#who").filter(has_text="ops (admin)").wait_for()
    page.get_by_role("tab", name="Versions").click()
    page.get_by_role("button", name="Promote v1…").wait_for()
    assert page.get_by_role("button", name="Roll back…").is_visible()
    screenshot(page, tmp_path, "admin-key")
    page.troubles.check()
