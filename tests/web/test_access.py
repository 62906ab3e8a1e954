"""The page where API keys are required: it asks for a key, keeps it in session storage (not in
the URL), shows what the key's owner may see, and admin actions only to an admin's key: the
quarantine (release, delete) and the settings (read only, secrets hidden)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from selftune.api.auth import create_key
from selftune.engines.transformers_engine import TransformersEngine
from selftune.store.schema import TrainingExample
from tests.integration.lora_versions import add_version, save_random_lora
from tests.web.conftest import Dashboard, live_dashboard, screenshot

YOUTUBE_KEY = "AIza-not-for-your-eyes"


def _hold(dashboard: Dashboard, user: str, question: str) -> int:
    """An example of ``user``'s that curation held for an admin (a flood)."""
    with dashboard.db.write() as session:
        example = TrainingExample(
            user_id=user,
            source="submitted",
            messages=[
                {"role": "user", "content": question},
                {"role": "assistant", "content": "Quenmoor."},
            ],
            active=False,
            state="flagged",
            reason="flood",
            detail="sent 40 times in an hour",
        )
        session.add(example)
        session.flush()
        return example.id


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
        youtube={"api_key": YOUTUBE_KEY},  # a secret the settings panel must not show
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
    page.get_by_role("tab", name="Import").click()
    page.locator("#import-list").wait_for(state="attached")
    assert not page.locator("#quarantine").is_visible()  # the quarantine is an admin's
    assert page.locator("#quarantine-list li").count() == 0
    assert not page.locator("nav [data-panel=settings]").is_visible()
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


def test_an_admin_releases_and_deletes_held_examples_and_reads_the_settings(
    dashboard: Dashboard, page: Any, tmp_path: Path
) -> None:
    ops = create_key(dashboard.db, "ops", admin=True)
    create_key(dashboard.db, "carol")
    kept, dropped = _hold(dashboard, "carol", "Capital?"), _hold(dashboard, "carol", "Spam?")
    page.goto(dashboard.url + "/#import", wait_until="domcontentloaded")
    _sign_in(page, ops)
    held = page.locator("#quarantine li.held")
    held.nth(1).wait_for()
    assert held.count() == 2
    assert "flood" in held.first.inner_text() and "carol" in held.first.inner_text()

    page.get_by_role("button", name=f"Release example {kept}").click()
    page.locator(f"#quarantine li[data-example='{kept}']").wait_for(state="detached")
    page.get_by_role("button", name=f"Delete example {dropped}").click()
    page.locator("#confirm-dialog").get_by_role("button", name="Cancel").click()
    assert held.count() == 1  # asked, not done
    page.get_by_role("button", name=f"Delete example {dropped}").click()
    page.locator("#confirm-dialog").get_by_role("button", name="Delete").click()
    page.locator("#quarantine-empty").wait_for()
    with dashboard.db.read() as session:
        released = session.get(TrainingExample, kept)
        assert released is not None and (released.state, released.active) == ("kept", True)
        assert session.get(TrainingExample, dropped) is None
    screenshot(page, tmp_path, "quarantine")

    page.get_by_role("tab", name="Settings").click()
    row = page.locator("#settings-table tr[data-setting='serve.auth_required']")
    assert row.locator("td").first.inner_text() == "true"
    secret = page.locator("#settings-table tr[data-setting='youtube.api_key'] td").first
    assert secret.inner_text() == "********"
    assert YOUTUBE_KEY not in page.content()
    page.fill("#settings-filter", "youtube.")
    assert page.locator("#settings-table tr[data-setting]").count() < 30
    screenshot(page, tmp_path, "settings")
    page.troubles.check()
