"""Proxy-and-learn ([proxy]): selftune in front of a fake OpenAI server on loopback.

Answers come back as the upstream sent them (JSON and server-sent events, byte for byte), each
is recorded with the upstream's model name and no key, ``proxy.keep`` decides which become
examples, and a served version whose gate recall is good enough answers a share itself.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from bench.fake_openai import MODEL, FakeOpenAI, answer_for
from bench.scenario import free_port
from selftune.api.app import create_app
from selftune.api.proxy import UPSTREAM_PREFIX
from selftune.engines.transformers_engine import TransformersEngine
from selftune.registry.versions import promote
from selftune.store.schema import Interaction, TrainingExample, Version
from tests.integration.conftest import serve_on_loopback, tiny_settings
from tests.integration.lora_versions import add_version

CHAT = {"model": "any-name", "messages": [{"role": "user", "content": "How long is banana?"}]}


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    with serve_on_loopback(fake) as url:  # type: ignore[arg-type]
        yield fake, f"{url}/v1"


@contextlib.contextmanager
def proxied(
    tiny_model_dir: Path, engine: TransformersEngine, url: str, **proxy: Any
) -> Iterator[TestClient]:
    settings = tiny_settings(tiny_model_dir, proxy={"upstream_url": url, **proxy})
    with TestClient(create_app(settings, engine=engine)) as client:
        yield client


def _rows(client: TestClient, model: Any) -> list[Any]:
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        return list(session.scalars(select(model)))


def test_answers_come_back_unchanged_and_are_recorded(
    settings_env: Path,
    tiny_model_dir: Path,
    tiny_engine: TransformersEngine,
    upstream: tuple[FakeOpenAI, str],
) -> None:
    _, url = upstream
    direct = httpx.post(f"{url}/chat/completions", json=CHAT)
    direct_stream = httpx.post(f"{url}/chat/completions", json={**CHAT, "stream": True})
    with proxied(tiny_model_dir, tiny_engine, url) as client:
        answer = client.post("/v1/chat/completions", json=CHAT)
        streamed = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        completion = client.post("/v1/completions", json={"model": "m", "prompt": "Say cherry"})
        interactions = {row.id: row for row in _rows(client, Interaction)}
        examples = _rows(client, TrainingExample)
    assert answer.status_code == 200 and answer.content == direct.content
    assert streamed.content == direct_stream.content
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert completion.json()["choices"][0]["text"] == answer_for("Say cherry")
    for response in (answer, streamed):
        row = interactions[response.headers["X-Selftune-Interaction"]]
        assert row.id.startswith(UPSTREAM_PREFIX) and row.model == MODEL
        assert row.response == answer_for("How long is banana?")
        assert row.messages == CHAT["messages"] and row.version_id is None
    assert interactions[completion.headers["X-Selftune-Interaction"]].kind == "completion"
    # keep = "all": each chat answer is an example, the completion none
    assert sorted(e.interaction_id for e in examples) == sorted(
        r.headers["X-Selftune-Interaction"] for r in (answer, streamed)
    )
    assert {e.source for e in examples} == {"upstream"}
    assert examples[0].messages[-1] == {"role": "assistant", "content": row.response}


def test_keys_go_upstream_and_are_never_recorded(
    settings_env: Path,
    tiny_model_dir: Path,
    tiny_engine: TransformersEngine,
    upstream: tuple[FakeOpenAI, str],
) -> None:
    fake, url = upstream
    fake.seen_authorizations.clear()
    with proxied(tiny_model_dir, tiny_engine, url, upstream_api_key="sk-configured") as client:
        client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-mine"})
        client.post("/v1/chat/completions", json=CHAT)
        db = client.app.state.selftune.db  # type: ignore[attr-defined]
        with db.read() as session:
            names = session.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))
            dump = "".join(
                str(list(session.execute(text(f'SELECT * FROM "{name}"')))) for (name,) in names
            )
    assert fake.seen_authorizations == ["Bearer sk-mine", "Bearer sk-configured"]
    assert "sk-mine" not in dump and "sk-configured" not in dump and MODEL in dump


def test_keep_policies(
    settings_env: Path,
    tiny_model_dir: Path,
    tiny_engine: TransformersEngine,
    upstream: tuple[FakeOpenAI, str],
) -> None:
    _, url = upstream
    with proxied(tiny_model_dir, tiny_engine, url, keep="rated") as client:
        liked = client.post("/v1/chat/completions", json=CHAT).headers["X-Selftune-Interaction"]
        client.post("/v1/chat/completions", json=CHAT)
        assert _rows(client, TrainingExample) == []
        rated = client.post("/api/feedback", json={"interaction_id": liked, "rating": 1})
        assert rated.status_code == 200, rated.text
        examples = _rows(client, TrainingExample)
        assert [(e.interaction_id, e.source) for e in examples] == [(liked, "rating")]
    for share, expected in ((0.0, 0), (1.0, 1)):
        with proxied(tiny_model_dir, tiny_engine, url, keep="sample", sample_share=share) as c:
            before = len(_rows(c, TrainingExample))
            c.post("/v1/chat/completions", json=CHAT)
            assert len(_rows(c, TrainingExample)) - before == expected


def _serve_good_version(client: TestClient, tiny_model_dir: Path, lora: Path) -> str:
    """Store, gate (recall 1.0) and promote a version; wait until the app serves it."""
    state = client.app.state.selftune  # type: ignore[attr-defined]
    version_id = add_version(state.settings, state.db, lora, "v1")
    with state.db.write() as session:
        version = session.get(Version, version_id)
        version.gate = {"passed": True, "figures": {"new_recall_candidate": 1.0}}
        promote(session, version_id, actor="test", reason="recall is good")
    deadline = time.monotonic() + 30
    while state.serving.name != "v1":
        assert time.monotonic() < deadline, "the promoted version was not picked up"
        time.sleep(0.05)
    return "v1"


def test_a_good_local_version_answers_its_share_and_the_upstream_the_rest(
    settings_env: Path,
    tiny_model_dir: Path,
    adapter_engine: TransformersEngine,
    lora: Path,
    upstream: tuple[FakeOpenAI, str],
) -> None:
    fake, url = upstream
    with proxied(tiny_model_dir, adapter_engine, url, local_share=1.0) as client:
        base_answer = client.post("/v1/chat/completions", json=CHAT)  # base: not good enough
        assert base_answer.headers["X-Selftune-Version"] == "upstream"
        _serve_good_version(client, tiny_model_dir, lora)
        before = fake.requests
        local = client.post("/v1/chat/completions", json=CHAT)
        assert local.status_code == 200 and local.headers["X-Selftune-Version"] == "v1"
        assert fake.requests == before
        # A request the local model refuses (more tokens than its context): the upstream answers.
        refused = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 10_000})
        assert refused.headers["X-Selftune-Version"] == "upstream"
        assert refused.json()["model"] == MODEL and fake.requests == before + 1


def test_an_unreachable_upstream(
    settings_env: Path,
    tiny_model_dir: Path,
    adapter_engine: TransformersEngine,
    lora: Path,
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    with proxied(tiny_model_dir, adapter_engine, closed) as client:
        failed = client.post("/v1/chat/completions", json=CHAT)
        assert failed.status_code == 502
        assert failed.json()["error"]["code"] == "upstream_unreachable"
        _serve_good_version(client, tiny_model_dir, lora)
        local = client.post("/v1/chat/completions", json=CHAT)  # local_share 0: fallback only
        assert local.status_code == 200 and local.headers["X-Selftune-Version"] == "v1"
