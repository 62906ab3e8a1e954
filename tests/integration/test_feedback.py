"""Feedback becomes training material: corrections replace answers, the newest word wins."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from selftune.store.schema import Feedback, TrainingExample

CHAT = {"model": "selftune", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}


def _active(client: TestClient) -> list[TrainingExample]:
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        return list(session.scalars(select(TrainingExample).where(TrainingExample.active)))


def test_rating_correction_and_withdrawal(client: TestClient) -> None:
    answer = client.post("/v1/chat/completions", json={**CHAT, "user": "carol"}).json()
    interaction, served = answer["id"], answer["choices"][0]["message"]["content"]

    liked = client.post("/api/feedback", json={"interaction_id": interaction, "rating": 1})
    assert liked.status_code == 200
    # The tiny model answered with blank lines: curation stores the rated chat, not for training.
    assert not served.strip()
    assert _active(client) == []
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        rated = session.get(TrainingExample, liked.json()["example_id"])
        assert rated is not None and rated.source == "rating" and rated.user_id == "carol"
        assert (rated.state, rated.reason) == ("rejected", "empty_answer")
        assert rated.messages[-1] == {"role": "assistant", "content": served}

    corrected = client.post(
        "/api/feedback",
        json={
            "interaction_id": interaction,
            "rating": -1,
            "correction": "Hi!",
            "comment": "friendlier",
        },
    )
    [example] = _active(client)  # the correction replaced the earlier example
    assert example.source == "correction"
    assert example.messages == [
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "Hi!"},
    ]
    assert example.feedback_id == corrected.json()["feedback_id"]

    disliked = client.post("/api/feedback", json={"interaction_id": interaction, "rating": -1})
    assert disliked.json()["example_id"] is None
    assert _active(client) == []
    with db.read() as session:
        assert len(session.scalars(select(Feedback)).all()) == 3  # all feedback is kept


def test_completions_are_rated_but_not_trained(client: TestClient) -> None:
    body = client.post(
        "/v1/completions", json={"model": "selftune", "prompt": "abc", "max_tokens": 3}
    ).json()
    response = client.post("/api/feedback", json={"interaction_id": body["id"], "rating": 1})
    assert response.status_code == 200
    assert response.json()["example_id"] is None


def test_corrections_are_scrubbed_of_personal_data_before_training(client: TestClient) -> None:
    asked = {**CHAT, "messages": [{"role": "user", "content": "Mail me at ana@example.org"}]}
    interaction = client.post("/v1/chat/completions", json=asked).json()["id"]
    correction = "Sure: I will write to ana@example.org and call +44 20 7946 0958 today."
    client.post(
        "/api/feedback",
        json={"interaction_id": interaction, "rating": -1, "correction": correction},
    )
    [example] = _active(client)
    assert example.messages == [
        {"role": "user", "content": "Mail me at [EMAIL]"},
        {
            "role": "assistant",
            "content": "Sure: I will write to [EMAIL] and call [PHONE] today.",
        },
    ]
    assert example.provenance == {"importer": "feedback", "scrubbed": {"email": 2, "phone": 1}}
