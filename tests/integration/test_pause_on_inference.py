"""A training job waits while the server answers a request (pause-on-inference), says so in its
stage, and finishes once the request has left, with the time it paused in its result."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from selftune.api.app import create_app
from selftune.api.state import AppState
from selftune.engines.transformers_engine import TransformersEngine
from tests.integration.conftest import run_jobs, tiny_settings
from tests.integration.test_learning_loop import LEARNING, teach


def _job(client: TestClient, job_id: int) -> dict[str, Any]:
    view: dict[str, Any] = client.get(f"/api/jobs/{job_id}").json()
    return view


def test_a_training_job_pauses_while_a_request_is_in_flight(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> None:
    settings = tiny_settings(
        tiny_model_dir,
        train={**LEARNING["train"], "steps": 2},
        gate=LEARNING["gate"],
        autopilot={"min_train_share": 0.0, "resume_idle_seconds": 0.0},
    )
    with TestClient(create_app(settings, engine=tiny_engine)) as client:
        teach(client)
        job_id = client.post("/api/train", json={}).json()["job_id"]
        state: AppState = client.app.state.selftune  # type: ignore[attr-defined]
        entered = state.admission.enter()  # a request in flight, as a chat holds it
        worker = threading.Thread(target=run_jobs, args=(settings,))
        worker.start()
        try:
            deadline = time.monotonic() + 60
            while "paused for serving" not in (_job(client, job_id)["stage"] or ""):
                assert time.monotonic() < deadline, _job(client, job_id)
                time.sleep(0.2)
            time.sleep(1.0)
            view = _job(client, job_id)
            assert view["status"] == "running"
            assert view["stage"].startswith("paused for serving (1 request in flight)")
        finally:
            state.admission.leave(entered, served=True)
            worker.join(timeout=120)
        view = _job(client, job_id)
        assert view["status"] == "succeeded", view
        assert view["result"]["seconds"]["paused"] >= 1.0
