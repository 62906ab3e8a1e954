"""The chat panel in a browser: a streamed answer that names its version, thumbs up, a
correction, past chats listed and reopened, the prompt format per conversation, and an answer
holding HTML and script shown as text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from selftune.engines.transformers_engine import TransformersEngine
from selftune.store.interactions import record_interaction
from selftune.store.schema import Feedback, Interaction, TrainingExample
from tests.web.conftest import Dashboard, live_dashboard, screenshot


@pytest.fixture(scope="module")
def dashboard(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, shared_cache: Path
) -> Iterator[Dashboard]:
    engine = TransformersEngine(tiny_model_dir, context_length=256)
    root = tmp_path_factory.mktemp("web-chat")
    with live_dashboard(tiny_model_dir, root, shared_cache, engine) as served:
        yield served


def _ask(page: Any, question: str) -> Any:
    """Send ``question``; the answer's list item once it is complete."""
    answers = page.locator("li.message.assistant[data-interaction]")
    before = answers.count()
    page.fill("#chat-input", question)
    page.keyboard.press("Enter")
    answer = answers.nth(before)
    answer.wait_for()
    return answer


def test_chat_answers_rates_and_corrects(dashboard: Dashboard, page: Any, tmp_path: Path) -> None:
    page.goto(dashboard.url, wait_until="domcontentloaded")
    page.locator("#status").filter(has_text="Serving base").wait_for()
    page.select_option("#chat-template", "chatml")

    first = _ask(page, "What is the capital of Veloria?")
    assert "answered by base" in first.locator(".who").inner_text()
    first.get_by_role("button", name="Good answer").click()
    first.locator(".feedback-status").filter(has_text="kept as a good answer").wait_for()

    second = _ask(page, "And its river?")
    assert page.locator("li.message.user").count() == 2  # one conversation, two turns
    second.get_by_role("button", name="Correct this answer").click()
    second.locator("textarea[name=correction]").fill("Its river is the Quen.")
    second.get_by_role("button", name="Save correction").click()
    second.locator(".feedback-status").filter(has_text="Correction recorded").wait_for()

    with dashboard.db.read() as session:
        first_id = first.get_attribute("data-interaction")
        second_id = second.get_attribute("data-interaction")
        ratings = {
            f.interaction_id: (f.rating, f.correction) for f in session.scalars(select(Feedback))
        }
        assert ratings == {first_id: (1, None), second_id: (-1, "Its river is the Quen.")}
        # The second turn was asked with the first in its messages, in the chosen format.
        row = session.get(Interaction, second_id)
        assert row is not None and row.chat_template == "chatml"
        assert [m["role"] for m in row.messages] == ["user", "assistant", "user"]
        learned = session.scalars(select(TrainingExample.messages)).all()
        assert any(m[-1]["content"] == "Its river is the Quen." for m in learned)

    # Both chats are listed, newest first, and reopen with their feedback.
    items = page.locator("#history-list .history-item")
    items.first.filter(has_text="And its river?").wait_for()
    assert items.count() == 2
    page.get_by_role("button", name="New conversation").click()
    assert page.locator("li.message").count() == 0
    items.first.click()
    page.locator("li.message.assistant .feedback-status").filter(has_text="Corrected").wait_for()
    screenshot(page, tmp_path, "chat")
    page.troubles.check()


def test_an_answer_with_html_and_script_is_shown_as_text(
    dashboard: Dashboard, page: Any, tmp_path: Path
) -> None:
    hostile = (
        'Here: <script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
        " and **bold** [link](javascript:window.__pwned=3)"
    )
    record_interaction(
        dashboard.db,
        user_id="anonymous",
        id="chatcmpl-hostile",
        kind="chat",
        model="selftune",
        version_id=None,
        messages=[{"role": "user", "content": "<b>Tell me</b> something hostile"}],
        response=hostile,
        finish_reason="stop",
        prompt_tokens=3,
        completion_tokens=3,
        latency_ms=1.0,
    )
    page.goto(dashboard.url, wait_until="domcontentloaded")
    page.locator(".history-item").filter(has_text="Tell me").first.click()
    answer = page.locator("li.message.assistant .answer").last
    answer.filter(has_text="bold").wait_for()
    text = answer.inner_text()
    assert "<script>window.__pwned = 1</script>" in text  # shown, as text
    assert '<img src=x onerror="window.__pwned = 2">' in text
    assert answer.locator("strong").inner_text() == "bold"  # Markdown still renders
    assert answer.locator("script, img").count() == 0
    assert answer.locator("a[href^=javascript]").count() == 0
    question = page.locator("li.message.user .text").last.inner_text()
    assert question == "<b>Tell me</b> something hostile"
    assert page.evaluate("window.__pwned") is None
    screenshot(page, tmp_path, "hostile-answer")
    page.troubles.check()


def test_the_page_and_its_files_carry_a_strict_policy(dashboard: Dashboard) -> None:
    import httpx

    page = httpx.get(dashboard.url + "/", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text  # no inline script: every script is a file
    script = httpx.get(dashboard.url + "/ui/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert httpx.get(dashboard.url + "/ui/vendor/purify.min.js").status_code == 200
    for name in ("../api/app.py", "nothing.js", "..%2F..%2Fpyproject.toml"):
        assert httpx.get(f"{dashboard.url}/ui/{name}").status_code == 404
    assert httpx.get(dashboard.url + "/").text == "Ollama is running"


def test_the_page_fits_a_phone(dashboard: Dashboard, page: Any, tmp_path: Path) -> None:
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto(dashboard.url, wait_until="domcontentloaded")
    page.locator("#status").filter(has_text="Serving").wait_for()
    for tab in ("Chat", "Learning", "Versions", "Import", "Memory"):
        page.get_by_role("tab", name=tab).click()
        wide = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert wide <= 0, f"{tab} is {wide} px wider than the phone"
    page.get_by_role("tab", name="Chat").click()
    page.get_by_role("tab", name="Learning").focus()  # the keyboard reaches every panel
    page.keyboard.press("Enter")
    page.get_by_role("button", name="Train now").wait_for()
    page.get_by_role("tab", name="Chat").focus()
    page.keyboard.press("Enter")
    screenshot(page, tmp_path, "phone")
    page.troubles.check()
