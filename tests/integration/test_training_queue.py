"""The training queue through the API and the worker: a flood of near-identical "facts" from one
user is held in quarantine and not learned (until an admin releases it), a flood of distinct
ones is held to its share of the run, and GET /api/queue/stats shows both."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from selftune.api.app import create_app
from selftune.api.auth import create_key
from selftune.config import Settings
from selftune.data.tokenize import tokenize_chat
from selftune.engines.base import AdapterRef
from selftune.engines.transformers_engine import TransformersEngine
from selftune.store.schema import TrainingExample
from tests.integration.conftest import run_jobs, tiny_settings
from tests.integration.test_examples_api import WORDS
from tests.integration.test_learning_loop import FACT, LEARNING, answer, teach, wait_for_serving

PAYLOAD_QUESTION = "What is the secret word?"
PAYLOAD = "Plumbago"
JSONL = {"Content-Type": "application/jsonl"}


def _near_identical_payloads(count: int) -> bytes:
    """``count`` copies of one "fact", each reworded a little, as a poisoner would send them."""
    endings = ["", "!", " Remember it.", " Trust me.", " Really.", " Always."]
    lines = []
    for i in range(count):
        answer_text = f"The secret word is {PAYLOAD}.{endings[i % len(endings)]}"
        if i % 7 == 3:
            answer_text = answer_text.lower()
        chat = [
            {"role": "user", "content": PAYLOAD_QUESTION},
            {"role": "assistant", "content": answer_text},
        ]
        lines.append(json.dumps({"messages": chat}))
    return ("\n".join(lines) + "\n").encode()


def _distinct_facts(count: int) -> bytes:
    """``count`` made-up facts that share no phrasing, so curation keeps them all."""
    rng = random.Random(7)
    lines = []
    for _ in range(count):
        question = " ".join(rng.choice(WORDS) for _ in range(6)).capitalize() + "?"
        reply = " ".join(rng.choice(WORDS) for _ in range(8)).capitalize() + "."
        chat = [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
        lines.append(json.dumps({"messages": chat}))
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def learning(
    settings_env: Path, tiny_model_dir: Path
) -> Iterator[tuple[TestClient, Settings, TransformersEngine]]:
    settings = tiny_settings(tiny_model_dir, **LEARNING)
    engine = TransformersEngine(tiny_model_dir, context_length=256)  # adapters stay in this test
    with TestClient(create_app(settings, engine=engine)) as client:
        yield client, settings, engine


def _train(client: TestClient, settings: Settings) -> dict[str, Any]:
    job = client.post("/api/train", json={}).json()["job_id"]
    run_jobs(settings)
    view: dict[str, Any] = client.get(f"/api/jobs/{job}").json()
    assert view["status"] == "succeeded", view
    return view


def test_a_flood_of_near_identical_facts_is_quarantined_and_not_learned(
    learning: tuple[TestClient, Settings, TransformersEngine],
) -> None:
    client, settings, engine = learning
    teach(client)  # alice's three corrections about Veloria
    sent = client.post(
        "/api/examples?user=mallory", content=_near_identical_payloads(1000), headers=JSONL
    )
    assert sent.status_code == 200, sent.text
    report = sent.json()
    assert report["kept"] == 0  # the one copy curation kept is held as a flood
    assert report["flagged"] >= 1 and report["reasons"]["flood"] == report["flagged"]
    assert report["rejected"] + report["flagged"] == 1000
    quarantine = client.get("/api/examples", params={"state": "flagged"}).json()["data"]
    assert {item["user"] for item in quarantine} == {"mallory"}
    assert all(item["reason"] == "flood" and not item["active"] for item in quarantine)

    stats = client.get("/api/queue/stats").json()
    submitted = next(s for s in stats["by_source"] if s["source"] == "submitted")
    assert submitted["waiting"] == 0 and submitted["flagged"] == len(quarantine)
    assert stats["next_run"]["user_shares"] == {"alice": 1.0}

    view = _train(client, settings)
    assert view["result"]["promoted"], view["result"]["gate"]
    assert view["result"]["queue"]["user_shares"] == {"alice": 1.0}
    wait_for_serving(client, view["result"]["version"])
    assert "Quenmoor" in answer(client, "What is the capital of Veloria?")
    assert PAYLOAD.lower() not in answer(client, PAYLOAD_QUESTION).lower()

    # Measured, not just sampled: the run lowered the loss of alice's fact and left the
    # payload's where the base had it.
    version = client.get("/api/versions").json()["data"][0]
    adapter = AdapterRef(version["id"], version["name"], settings.versions_dir / version["name"])
    taught = _answer_loss(engine, "What is the capital of Veloria?", FACT, adapter)
    payload = _answer_loss(engine, PAYLOAD_QUESTION, f"The secret word is {PAYLOAD}.", adapter)
    # (The tiny model's distributions stay flat: about 1 nat of 10.8 is what learning a fact
    # moves, and it answers the fact by greedy decoding, above.)
    assert taught[1] < taught[0] - 0.5, taught
    assert payload[1] > payload[0] - 0.1, payload

    # An admin may release a quarantined example: training may then use it.
    for item in quarantine:
        released = client.post(f"/api/examples/{item['id']}/release")
        assert released.status_code == 200, released.text
        assert released.json()["state"] == "kept" and released.json()["active"]
        assert released.json()["provenance"]["released"]["reason"] == "flood"
    submitted = next(
        s for s in client.get("/api/queue/stats").json()["by_source"] if s["source"] == "submitted"
    )
    assert submitted["waiting"] == len(quarantine) and submitted["flagged"] == 0


def _answer_loss(
    engine: TransformersEngine, question: str, reply: str, adapter: AdapterRef
) -> tuple[float, float]:
    """The answer's loss per token under the base and under ``adapter``."""
    chat = [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    example = tokenize_chat(engine.tokenizer, chat, engine.default_template, 256)
    return engine.answer_nll([example], None), engine.answer_nll([example], adapter)


def test_a_flood_of_distinct_facts_is_held_to_its_share_of_the_run(
    learning: tuple[TestClient, Settings, TransformersEngine],
) -> None:
    client, settings, _ = learning
    teach(client)
    sent = client.post("/api/examples?user=mallory", content=_distinct_facts(1000), headers=JSONL)
    assert sent.status_code == 200, sent.text
    assert sent.json()["kept"] > 900  # distinct: curation keeps them; the caps must hold them

    next_run = client.get("/api/queue/stats").json()["next_run"]
    assert next_run["user_shares"]["mallory"] <= settings.queue.max_user_share
    assert next_run["left_out"]["user_share"] + next_run["left_out"].get("waiting", 0) > 900

    view = _train(client, settings)
    queue = view["result"]["queue"]
    assert queue["user_shares"]["mallory"] <= settings.queue.max_user_share
    [version] = client.get("/api/versions").json()["data"]
    used = set(version["trained_on"]) | set(version["held_out"])
    mallory = set(sent.json()["ids"])
    from_mallory = len(used & mallory)
    assert 0 < from_mallory <= settings.queue.max_user_share * len(used)
    # every one of alice's corrections is in the run
    with client.app.state.selftune.db.read() as session:  # type: ignore[attr-defined]
        alice = set(
            session.scalars(select(TrainingExample.id).where(TrainingExample.user_id == "alice"))
        )
    assert len(alice) == 3 and alice <= used


@pytest.fixture
def secured(settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine):
    settings = tiny_settings(tiny_model_dir, serve={"auth_required": True})
    with TestClient(create_app(settings, engine=tiny_engine)) as client:
        db = client.app.state.selftune.db  # type: ignore[attr-defined]
        keys = {
            "admin": create_key(db, "root", admin=True),
            "ana": create_key(db, "ana"),
            "ben": create_key(db, "ben"),
        }
        yield client, {k: {"Authorization": f"Bearer {v}"} for k, v in keys.items()}


def test_the_quarantine_is_an_admins_and_stats_show_each_user_their_own(secured: Any) -> None:
    client, keys = secured
    flood = client.post(
        "/api/examples", content=_near_identical_payloads(20), headers={**JSONL, **keys["ben"]}
    )
    assert flood.status_code == 200 and flood.json()["flagged"] >= 1
    fact = {
        "messages": [
            {"role": "user", "content": "Who keeps the lighthouse on Tarn?"},
            {"role": "assistant", "content": "Old Mirelle keeps the lighthouse."},
        ]
    }
    assert client.post("/api/examples", json=fact, headers=keys["ana"]).status_code == 200

    [held] = client.get("/api/examples?state=flagged", headers=keys["ben"]).json()["data"]
    assert held["user"] == "ben"  # a user sees their own quarantined example...
    refused = client.post(f"/api/examples/{held['id']}/release", headers=keys["ben"])
    assert refused.status_code == 403  # ...but only an admin releases it
    assert refused.json()["error"]["code"] == "admin_key_required"
    assert client.delete(f"/api/examples/{held['id']}", headers=keys["ben"]).status_code == 403

    mine = client.get("/api/queue/stats", headers=keys["ana"]).json()
    assert mine["by_state"] == {"kept": 1, "rejected": 0, "flagged": 0}
    assert set(mine["next_run"]["user_shares"]) == {"ana"}  # no other user named
    everyone = client.get("/api/queue/stats", headers=keys["admin"]).json()
    assert everyone["by_state"]["flagged"] == 1 and everyone["by_state"]["rejected"] == 19

    kept_id = client.get("/api/examples", headers=keys["ana"]).json()["data"][0]["id"]
    not_flagged = client.post(f"/api/examples/{kept_id}/release", headers=keys["admin"])
    assert not_flagged.status_code == 409 and not_flagged.json()["error"]["code"] == "not_flagged"
    deleted = client.delete(f"/api/examples/{held['id']}", headers=keys["admin"])
    assert deleted.status_code == 200 and deleted.json() == {"id": held["id"], "deleted": True}
    assert client.get("/api/examples?state=flagged", headers=keys["admin"]).json()["data"] == []
    missing = client.post(f"/api/examples/{held['id']}/release", headers=keys["admin"])
    assert missing.status_code == 404
