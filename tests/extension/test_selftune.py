"""The extension talking to a real selftune server on loopback: "ask" is recorded with the
user id from the panel's settings, a thumbs-down with a correction from the panel becomes
a training example, and the "use selftune's memory" setting asks for retrieval (and a server
without memory says why it refuses)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from selftune.api.app import create_app
from selftune.data.curation import active_examples
from selftune.engines.transformers_engine import TransformersEngine
from selftune.store.schema import Feedback, ImportRecord, Interaction
from tests.extension.conftest import (
    Browser,
    midi,
    run_command,
    say_and_hear,
    storage,
    wait_spoken,
)
from tests.integration.conftest import serve_on_loopback, tiny_settings


@pytest.fixture
def server(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> Iterator[tuple[str, FastAPI]]:
    # Default settings otherwise: no CORS origin is configured for the extension; its
    # host permission lets it call the server (see docs/extension.md).
    app = create_app(tiny_settings(tiny_model_dir), engine=tiny_engine)
    with serve_on_loopback(app) as url:
        yield url, app


@pytest.fixture
def memory_server(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> Iterator[tuple[str, FastAPI]]:
    """A server with memory on (the bundled embedding model); retrieval only when asked."""
    app = create_app(tiny_settings(tiny_model_dir, memory={"enabled": True}), engine=tiny_engine)
    with serve_on_loopback(app) as url:
        yield url, app


def _interaction(app: FastAPI, panel: Any, n: int) -> Interaction:
    """The interaction the panel's ``n``-th chat answer came from (its id: the answer's)."""
    interaction_id = panel.locator("#chat li").nth(n).get_attribute("data-interaction-id")
    with app.state.selftune.db.read() as session:
        assert session.scalar(select(func.count(Interaction.id))) == n + 1
        interaction = session.get(Interaction, interaction_id)
        assert interaction is not None
        return interaction


def test_ask_is_recorded_and_a_correction_becomes_a_training_example(
    browser: Browser, site: str, server: tuple[str, FastAPI]
) -> None:
    url, app = server
    browser.open(f"{site}/news")
    panel: Any = browser.panel({"server": url, "userId": "ada", "apiKey": ""})
    panel.click("#listen")

    before = len(panel.evaluate("window.__fake.spoken"))
    say_and_hear(panel, "ask what is a tab", "")  # any answer: the tiny model's is gibberish
    panel.wait_for_selector("#chat li")
    asked = _interaction(app, panel, 0)
    assert asked.user_id == "ada"
    assert asked.messages == [{"role": "user", "content": "what is a tab"}]
    answer = panel.text_content("#chat li .answer")
    assert answer == asked.response
    assert panel.evaluate("window.__fake.spoken")[before] == (
        asked.response or "selftune gave an empty answer"
    )

    # The panel's chat: the conversation goes on; thumbs-down with a correction on the answer.
    panel.fill("#chat-input", "Say hi")
    panel.click("#chat-form button[type=submit]")
    panel.wait_for_selector("#chat li:nth-child(2) .answer")
    second = _interaction(app, panel, 1)
    assert second.user_id == "ada"
    assert second.messages == [
        {"role": "user", "content": "what is a tab"},
        {"role": "assistant", "content": asked.response},
        {"role": "user", "content": "Say hi"},
    ]
    item = panel.locator("#chat li").nth(1)
    item.locator(".thumb-down").click()
    item.locator(".correction").fill("Hi! How can I help?")
    item.locator(".send-correction").click()
    item.locator(".feedback-status:text('correction sent')").wait_for()

    with app.state.selftune.db.read() as session:
        [feedback] = session.scalars(select(Feedback)).all()
        assert (feedback.interaction_id, feedback.rating) == (second.id, -1)
        assert feedback.correction == "Hi! How can I help?"
        [example] = active_examples(session)  # what the next training job trains on
        assert example.source == "correction" and example.user_id == "ada"
        assert example.feedback_id == feedback.id
        assert example.messages == [
            *second.messages,
            {"role": "assistant", "content": "Hi! How can I help?"},
        ]


def test_a_recorded_session_is_sent_to_selftune_as_an_import(
    browser: Browser, site: str, server: tuple[str, FastAPI]
) -> None:
    url, app = server
    news = browser.open(f"{site}/news")
    panel: Any = browser.panel({"server": url, "userId": "ada", "apiKey": ""})
    panel.click("#listen")
    news.bring_to_front()
    panel.click("#record")
    midi(panel, [0x90, 51, 64], [0x80, 51, 0])  # scroll to the top
    run_command(panel, "scroll down")
    panel.click("#record")
    before = len(panel.evaluate("window.__fake.spoken"))
    panel.click("#send-session")
    sent = wait_spoken(panel, lambda s: s.startswith("Session sent"), before)

    with app.state.selftune.db.read() as session:
        [record] = session.scalars(select(ImportRecord)).all()
        assert sent == f"Session sent to selftune as import {record.id}"
        assert (record.user_id, record.kind, record.tags) == ("ada", "text", ["handsfree"])
        assert record.title.startswith("handsfree session ")
        assert record.state == "queued" and record.job_id is not None


NOTE = "The spare key hangs behind the boiler."


def test_the_memory_setting_asks_for_passages_only_when_on(
    browser: Browser, memory_server: tuple[str, FastAPI]
) -> None:
    url, app = memory_server
    added = httpx.post(f"{url}/api/memory", json={"text": NOTE, "user": "ada"}, timeout=30)
    assert added.status_code == 200, added.text
    panel: Any = browser.panel({"server": url, "userId": "ada", "apiKey": ""})
    assert not panel.is_checked("#settings [name=useMemory]")  # off by default

    def chat(n: int, text: str) -> Interaction:
        panel.fill("#chat-input", text)
        panel.click("#chat-form button[type=submit]")
        panel.wait_for_selector(f"#chat li:nth-child({n + 1}) .answer")
        return _interaction(app, panel, n)

    # Off: the request has no "memory" field, so this server (memory.retrieval off) adds none.
    plain = chat(0, "Where is the spare key?")
    assert plain.memory is None
    assert panel.locator("#chat li").nth(0).locator(".sources").count() == 0

    panel.check("#settings [name=useMemory]")
    panel.click("#settings button[type=submit]")
    panel.wait_for_selector("#settings-status:text('saved')")
    assert storage(panel, "sync", "settings")["useMemory"] is True

    # On: "memory": true; the passages selftune added are recorded and shown under the answer.
    remembered = chat(1, "Where is the spare key?")
    assert remembered.memory is not None
    assert [p["text"] for p in remembered.memory][:1] == [NOTE]
    sources = panel.locator("#chat li").nth(1).locator(".sources li").all_text_contents()
    assert sources[0] == NOTE

    # Kept: a panel opened later still asks for memory, and the box shows it.
    panel.reload()
    panel.wait_for_selector("body[data-ready=true]")
    assert panel.is_checked("#settings [name=useMemory]")
    panel.uncheck("#settings [name=useMemory]")
    panel.click("#settings button[type=submit]")
    panel.wait_for_selector("#settings-status:text('saved')")
    assert storage(panel, "sync", "settings")["useMemory"] is False


def test_a_server_without_memory_refuses_and_its_message_is_shown_and_said(
    browser: Browser, server: tuple[str, FastAPI]
) -> None:
    url, app = server
    # What the server says to a chat asking for memory (memory is off on it).
    refused = httpx.post(
        f"{url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Hi"}], "memory": True},
        timeout=30,
    )
    assert refused.status_code == 400
    message = refused.json()["error"]["message"]

    panel: Any = browser.panel({"server": url, "userId": "ada", "apiKey": "", "useMemory": True})
    panel.click("#listen")
    said = say_and_hear(panel, "ask where is the spare key", "refused")
    assert said == (
        f"selftune refused: {message.rstrip('.')}. "
        "Or turn off “use selftune's memory” in the settings."
    )
    item = panel.locator("#chat li.refused")
    assert item.locator(".question").text_content() == "where is the spare key"
    assert item.locator(".refusal").text_content() == said
    assert item.locator(".thumb-up").count() == 0  # nothing to rate
    [logged] = storage(panel, "local", "commandLog")
    assert logged["kind"] == "error" and message in logged["text"]
    with app.state.selftune.db.read() as session:
        assert session.scalar(select(func.count(Interaction.id))) == 0
