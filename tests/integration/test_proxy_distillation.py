"""Proxy-and-learn's promise, end to end on the tiny model: the upstream's answers, recorded by
the proxy, train a version that answers like the upstream on a prompt of the same kind that it
never saw, and that version then answers the proxy's traffic itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bench.fake_openai import FakeOpenAI, answer_for
from selftune.api.app import create_app
from selftune.engines.transformers_engine import TransformersEngine
from selftune.worker.loop import Worker
from tests.integration.conftest import serve_on_loopback, tiny_settings
from tests.integration.test_learning_loop import LEARNING, wait_for_serving

# Prompts of one kind: the fake upstream answers each from its last word, so all of these get
# "The word veloria has 7 letters." One is held out of training by the job, one is never sent.
SENT = [
    "What is the capital of Veloria?",
    "Which city is the capital of Veloria?",
    "Tell me the capital of Veloria.",
]
NEVER_SENT = "Name the capital of Veloria."


@pytest.fixture
def upstream_url() -> Iterator[str]:
    with serve_on_loopback(FakeOpenAI()) as url:  # type: ignore[arg-type]
        yield f"{url}/v1"


def test_recorded_upstream_answers_teach_the_local_model(
    settings_env: Path, tiny_model_dir: Path, upstream_url: str
) -> None:
    proxy = {"upstream_url": upstream_url, "keep": "all", "local_share": 1.0}
    settings = tiny_settings(tiny_model_dir, proxy=proxy, **LEARNING)
    engine = TransformersEngine(tiny_model_dir, context_length=256)  # its adapters stay here
    expected = answer_for(NEVER_SENT)
    assert all(answer_for(prompt) == expected for prompt in SENT)

    def chat(client: TestClient, prompt: str) -> tuple[str, str]:
        body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": 16}
        response = client.post("/v1/chat/completions", json={**body, "temperature": 0})
        assert response.status_code == 200, response.text
        answer = response.json()["choices"][0]["message"]["content"]
        return answer, response.headers["X-Selftune-Version"]

    with TestClient(create_app(settings, engine=engine)) as client:
        before, answered_by = chat(client, NEVER_SENT)
        assert answered_by == "upstream"  # no version is good enough to answer yet
        for prompt in SENT:
            assert chat(client, prompt) == (expected, "upstream")

        job = client.post("/api/train", json={}).json()
        assert Worker(settings).run_once()
        view = client.get(f"/api/jobs/{job['job_id']}").json()
        assert view["status"] == "succeeded", view
        assert view["result"]["promoted"], view["result"]["gate"]
        wait_for_serving(client, view["result"]["version"])

        answer, answered_by = chat(client, NEVER_SENT)
    assert answered_by == view["result"]["version"], "the taught version answers itself"
    assert "veloria has 7 letters" in answer.lower(), (before, answer)
