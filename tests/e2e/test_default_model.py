"""The acceptance scenario with the real default model, through the HTTP API only.

Teach a fictional fact with three corrected chats and wait: nobody calls /api/train, the
autopilot trains by itself. Then check: the events say why it trained, a paraphrased question
is answered with the fact, questions the base model answered correctly still are, the versions
show the lineage, and a rollback makes the fact disappear again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from bench.scenario import FACT_WORD, KNOWN, PARAPHRASES, TEACHING, Server, running_server

pytestmark = pytest.mark.e2e


def test_learns_a_fact_keeps_what_it_knew_and_rolls_back(
    settings_env: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SELFTUNE_TRAIN__COMPILE", "auto")  # the defaults, compiled training too
    monkeypatch.setenv("SELFTUNE_AUTOPILOT__ENABLED", "true")  # and the autopilot, as shipped
    with running_server(settings_env / "data") as server:
        before = {q: server.answer(q) for q, _ in TEACHING[:1]}
        assert all(FACT_WORD not in a for a in before.values())
        known = [
            (q, words)
            for q, words in KNOWN
            if any(w.lower() in server.answer(q).lower() for w in words)
        ]
        assert len(known) >= 3, "the base model should know a few of these"

        server.teach()
        started = time.monotonic()
        triggered = wait_for_event(server, "autopilot_triggered", timeout=60)
        assert triggered["trigger"] in ("failures", "volume", "patterns"), triggered
        assert triggered["reason"], triggered
        view = server.wait_job(triggered["job_id"], timeout=300)
        assert view["status"] == "succeeded", view
        result = view["result"]
        assert result["promoted"], result["gate"]
        server.wait_serving(result["version"])
        latency = time.monotonic() - started

        answers = [server.answer(q) for q in PARAPHRASES]
        assert any(FACT_WORD in a for a in answers), answers
        for question, words in known:
            reply = server.answer(question)
            assert any(w.lower() in reply.lower() for w in words), (question, reply)

        versions = server.client.get("/api/versions").json()
        # One version, or two where the first forgot too much and the job tried again.
        assert [v["name"] for v in versions["data"]] == [a["version"] for a in result["attempts"]]
        version = versions["data"][-1]
        assert versions["serving"] == version["name"] == result["version"]
        assert version["parent"] == "base"
        assert len(version["trained_on"]) + len(version["held_out"]) == len(TEACHING)

        assert server.client.post("/api/rollback", json={}).json()["serving"] == "base"
        assert all(FACT_WORD not in server.answer(q) for q in PARAPHRASES)
        print(f"learning latency {latency:.1f}s; job stages {result['seconds']}")


def wait_for_event(server: Server, kind: str, timeout: float) -> dict[str, Any]:
    """The payload of the first event of ``kind``, once there is one."""
    deadline = time.monotonic() + timeout
    while True:
        page = server.client.get("/api/events", params={"kind": kind}).json()
        if page["data"]:
            payload: dict[str, Any] = page["data"][-1]["payload"]
            return payload
        assert time.monotonic() < deadline, f"no {kind} event in {timeout:.0f} s"
        time.sleep(0.5)
