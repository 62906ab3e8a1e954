"""Memory tried as a new user would, with the real default model, through the HTTP API only:
import documents under two tags, chat with retrieval on and get the answer from the right
document with it cited; correct an answer and get the correction in the very next chat; a
second user does not get the first user's private notes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from bench.scenario import Server, running_server

pytestmark = pytest.mark.e2e

DOCUMENTS = [
    (
        "Zephyr 400",
        "aviation",
        "The Zephyr 400 is a regional airliner built by Korvath Aerospace. Its turbofan engines "
        "have a bypass ratio of eleven to one, and it cruises at 780 kilometres per hour.",
    ),
    (
        "Halden Glider",
        "aviation",
        "The Halden Glider is a two-seat training glider with a wingspan of eighteen metres. "
        "It is built from carbon fibre by the Halden Works in Tromso.",
    ),
    (
        "Compost",
        "garden",
        "A compost heap should be turned every week so that air reaches the middle. Mix green "
        "kitchen scraps with brown leaves, one part to three.",
    ),
]


def _chat(server: Server, question: str, **extra: Any) -> dict[str, Any]:
    response = server.client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": 48,
            **extra,
        },
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _answer(body: dict[str, Any]) -> str:
    return str(body["choices"][0]["message"]["content"])


def test_documents_corrections_and_privacy_with_the_default_model(settings_env: Path) -> None:
    with running_server(
        settings_env / "data",
        env={"SELFTUNE_MEMORY__ENABLED": "true"},
        worker_states=("compiling", "ready", "busy"),
    ) as server:
        imports = []
        for title, tag, text in DOCUMENTS:
            queued = server.client.post(
                "/api/import", json={"text": text, "title": title, "tags": [tag]}
            )
            assert queued.status_code == 202, queued.text
            imports.append(queued.json()["import_id"])
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            states = [server.client.get(f"/api/imports/{i}").json()["state"] for i in imports]
            if all(state in ("succeeded", "failed") for state in states):
                break
            time.sleep(0.5)
        assert states == ["succeeded"] * 3

        # Retrieval must find the right document for every question; the 135M model reads the
        # answer out of it most of the time (19 of 24 generated facts in a side measurement),
        # so three of four answers must hold the fact.
        asked = [
            (
                "What is the bypass ratio of the Zephyr 400's engines?",
                {},
                "Zephyr 400",
                ("eleven", "11"),
            ),
            ("How fast does the Zephyr 400 cruise?", {}, "Zephyr 400", ("780",)),
            ("What is the wingspan of the Halden Glider?", {}, "Halden Glider", ("eighteen", "18")),
            (
                "How often should a compost heap be turned?",
                {"tags": ["garden"]},
                "Compost",
                ("week",),
            ),
        ]
        answered = 0
        for question, options, title, facts in asked:
            body = _chat(server, question, memory={"k": 2, **options})
            assert body["memory"][0]["title"] == title, (question, body["memory"])
            answered += any(fact in _answer(body).lower() for fact in facts)
        assert answered >= 3, answered
        garden = _chat(server, "Which plane cruises fastest?", memory={"tags": ["garden"]})
        assert {p["title"] for p in garden["memory"]} <= {"Compost"}  # the tag filter holds

        question = "What is the name of the office dog?"
        first = _chat(server, question, user="ann")
        rated = server.client.post(
            "/api/feedback",
            json={
                "interaction_id": first["id"],
                "rating": -1,
                "correction": "The office dog is called Biscuit.",
            },
        )
        assert rated.status_code == 200, rated.text
        again = _chat(server, question, user="ann", memory=True)
        assert again["memory"][0]["kind"] == "correction"
        assert "biscuit" in _answer(again).lower(), _answer(again)

        other = _chat(server, question, user="bob", memory=True)
        assert all("Biscuit" not in p["text"] for p in other["memory"])
        assert "biscuit" not in _answer(other).lower()
