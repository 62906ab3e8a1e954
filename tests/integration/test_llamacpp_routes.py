"""llama.cpp's server routes on the tiny model, and choosing the version per request.

Shapes follow llama.cpp's tools/server/README.md; each answer is recorded like /v1/completions,
under the version that actually answered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from selftune.api.app import create_app
from selftune.engines.transformers_engine import TransformersEngine
from selftune.store.schema import Interaction
from tests.integration.conftest import tiny_settings
from tests.integration.lora_versions import add_version, save_random_lora

PROMPT = "Once upon a time"
CHAT = {"model": "selftune", "messages": [{"role": "user", "content": "Hello there"}]}


@pytest.fixture(scope="module")
def adapter_engine(tiny_model_dir: Path) -> TransformersEngine:
    """An engine of its own: the adapters loaded here must not leak into other modules' tests."""
    return TransformersEngine(tiny_model_dir, context_length=256)


@pytest.fixture(scope="module")
def loras(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("loras")
    return [save_random_lora(tiny_model_dir, root / f"lora{seed}", seed=seed) for seed in (1, 2)]


@pytest.fixture
def app_client(
    settings_env: Path, tiny_model_dir: Path, adapter_engine: TransformersEngine, loras: list[Path]
) -> Iterator[TestClient]:
    """Versions v1 (passed its gate) and v2 (failed it); the base is served."""
    settings = tiny_settings(tiny_model_dir)
    app = create_app(settings, engine=adapter_engine)
    db = app.state.selftune.db
    assert add_version(settings, db, loras[0], "v1", gated=True) == 1
    assert add_version(settings, db, loras[1], "v2", gated=False) == 2
    with TestClient(app) as test_client:
        yield test_client


def _row(client: TestClient, interaction_id: str) -> Interaction:
    with client.app.state.selftune.db.read() as session:  # type: ignore[attr-defined]
        row = session.get(Interaction, interaction_id)
    assert row is not None
    return row


def _count(client: TestClient) -> int:
    with client.app.state.selftune.db.read() as session:  # type: ignore[attr-defined]
        return int(session.scalar(select(func.count(Interaction.id))) or 0)


def _error(response: Any, status: int, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code:
        assert error["code"] == code
    message: str = error["message"]
    return message


def _complete(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/completion", json={"prompt": PROMPT, "temperature": 0, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    assert response.headers["X-Selftune-Version"] == result["system_fingerprint"]
    return result


# --- /completion ---------------------------------------------------------------------------
def test_completion_has_llamacpp_shape_and_is_recorded(client: TestClient) -> None:
    body = _complete(client, n_predict=5, user="alice")
    for field in ("content", "tokens_predicted", "tokens_evaluated", "generation_settings",
                  "timings", "stop_type", "stopping_word", "model", "prompt"):  # fmt: skip
        assert field in body, field
    assert body["stop"] is True and body["model"] == "selftune"
    assert body["stop_type"] in ("eos", "limit")
    assert 1 <= body["tokens_predicted"] <= 5
    assert body["generation_settings"]["n_predict"] == 5
    assert body["generation_settings"]["n_ctx"] == 256
    timings = body["timings"]
    assert timings["prompt_n"] == body["tokens_evaluated"]
    assert timings["predicted_n"] == body["tokens_predicted"]
    assert timings["predicted_ms"] >= 0 and timings["predicted_per_second"] >= 0
    row = _row(client, body["id"])
    assert (row.kind, row.user_id, row.model, row.version_id) == (
        "completion",
        "alice",
        "selftune",
        None,
    )
    assert row.messages == [{"prompt": PROMPT}]
    assert row.response == body["content"]
    assert (row.prompt_tokens, row.completion_tokens) == (
        body["tokens_evaluated"],
        body["tokens_predicted"],
    )


def test_completion_answers_like_v1_completions_and_from_token_ids(client: TestClient) -> None:
    native = _complete(client, n_predict=6)
    openai = client.post(
        "/v1/completions",
        json={"model": "selftune", "prompt": PROMPT, "max_tokens": 6, "temperature": 0},
    ).json()
    assert native["content"] == openai["choices"][0]["text"]
    ids = client.post("/tokenize", json={"content": PROMPT}).json()["tokens"]
    from_ids = _complete(client, prompt=ids, n_predict=6)
    assert from_ids["content"] == native["content"]
    assert from_ids["tokens_evaluated"] == len(ids)
    assert _row(client, from_ids["id"]).messages == [{"prompt": PROMPT}]


def test_stop_types_tell_a_stop_word_from_the_limit(client: TestClient) -> None:
    free = _complete(client, n_predict=8)
    text = free["content"]
    assert len(text) > 3 and free["stop_type"] == "limit"
    stop = text[2:4]
    cut = _complete(client, n_predict=8, stop=[stop, "never-there"])
    assert cut["content"] == text[: text.index(stop)]
    assert (cut["stop_type"], cut["stopping_word"]) == ("word", stop)
    assert _row(client, cut["id"]).finish_reason == "stop"
    limited = _complete(client, n_predict=3)
    assert (limited["stop_type"], limited["tokens_predicted"]) == ("limit", 3)


def test_streamed_completion_ends_with_the_summary(client: TestClient) -> None:
    request = {"prompt": PROMPT, "n_predict": 6, "temperature": 0, "stream": True}
    with client.stream("POST", "/completion", json=request) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    events = [json.loads(line[6:]) for line in lines]
    *pieces, final = events
    assert pieces and all(e["stop"] is False and e["content"] for e in pieces)
    assert final["stop"] is True and final["content"] == ""
    assert final["stop_type"] in ("eos", "limit") and "timings" in final
    text = "".join(e["content"] for e in pieces)
    assert text == _complete(client, n_predict=6)["content"]
    assert _row(client, final["id"]).response == text


def test_completion_refuses_bad_requests_and_records_nothing(client: TestClient) -> None:
    before = _count(client)
    message = _error(client.post("/completion", json={"prompt": ["a", "b"]}), 400)
    assert "one prompt" in message
    _error(client.post("/completion", json={"prompt": [1, "x", 2]}), 400)
    _error(client.post("/completion", json={"n_predict": 3}), 400)
    _error(
        client.post("/completion", json={"prompt": "word " * 300}), 400, "context_length_exceeded"
    )
    _error(client.post("/completion", json={"prompt": PROMPT, "n_predict": 10_000}), 400,
           "context_length_exceeded")  # fmt: skip
    _error(client.post("/completion", json={"prompt": PROMPT, "model": "gpt-4"}), 404,
           "model_not_found")  # fmt: skip
    assert _count(client) == before


# --- tokens, props, metrics ----------------------------------------------------------------
def test_tokenize_and_detokenize(client: TestClient) -> None:
    tokens = client.post("/tokenize", json={"content": "Hello world"}).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    pieces = client.post("/tokenize", json={"content": "Hello world", "with_pieces": True}).json()
    assert [p["id"] for p in pieces["tokens"]] == tokens
    assert "".join(p["piece"] for p in pieces["tokens"]) == "Hello world"
    back = client.post("/detokenize", json={"tokens": tokens})
    assert back.json() == {"content": "Hello world"}
    special = client.post("/tokenize", json={"content": "<|im_end|>"}).json()["tokens"]
    assert len(special) == 1  # special tokens written in the text are parsed
    _error(client.post("/tokenize", json={"content": "x", "parse_special": False}), 400)
    _error(client.post("/tokenize", json={}), 400)
    _error(client.post("/detokenize", json={"tokens": [-1]}), 400)


def test_props_name_the_engine_and_the_served_version(
    client: TestClient, tiny_model_dir: Path
) -> None:
    props = client.get("/props").json()
    assert props["total_slots"] == 1
    assert props["model_path"] == str(tiny_model_dir.resolve())
    assert props["default_generation_settings"]["n_ctx"] == 256
    assert props["default_generation_settings"]["params"]["n_predict"] == 8
    assert props["engine"] == "transformers"
    assert props["serving"] == {"version": "base", "version_id": None}
    assert props["chat_template"]
    assert client.get("/health").json()["status"] == "ok"


def _metrics(client: TestClient) -> dict[str, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = {}
    for line in response.text.splitlines():
        if not line.startswith("#"):
            name, value = line.split(" ")
            values[name] = float(value)
    assert "# TYPE llamacpp:prompt_tokens_total counter" in response.text
    return values


def test_metrics_count_every_generation_route(client: TestClient) -> None:
    before = _metrics(client)
    native = _complete(client, n_predict=4)
    chat = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3}).json()
    text = client.post(
        "/v1/completions", json={"model": "selftune", "prompt": "Hi", "max_tokens": 2}
    )
    with client.stream("POST", "/v1/chat/completions",
                       json={**CHAT, "max_tokens": 2, "stream": True}) as streamed:  # fmt: skip
        assert [line for line in streamed.iter_lines() if line][-1] == "data: [DONE]"
    after = _metrics(client)
    usages = [chat["usage"], text.json()["usage"]]
    prompt = native["tokens_evaluated"] + sum(u["prompt_tokens"] for u in usages)
    predicted = native["tokens_predicted"] + sum(u["completion_tokens"] for u in usages)
    chat_prompt = chat["usage"]["prompt_tokens"]  # the streamed chat has the same prompt
    assert after["llamacpp:prompt_tokens_total"] - before["llamacpp:prompt_tokens_total"] == (
        prompt + chat_prompt
    )
    grown = after["llamacpp:tokens_predicted_total"] - before["llamacpp:tokens_predicted_total"]
    assert predicted + 1 <= grown <= predicted + 2
    assert (
        after["llamacpp:tokens_predicted_seconds_total"]
        > before["llamacpp:tokens_predicted_seconds_total"]
    )
    assert after["llamacpp:requests_processing"] == after["llamacpp:requests_deferred"] == 0
    assert after["llamacpp:n_tokens_max"] >= native["tokens_evaluated"] + native["tokens_predicted"]


# --- versions: /lora-adapters, the lora field, model=<version> -----------------------------
def test_lora_adapters_list_versions_and_set_the_served_one(app_client: TestClient) -> None:
    client = app_client
    listed = client.get("/lora-adapters").json()
    assert [(a["id"], a["name"], a["scale"]) for a in listed] == [(1, "v1", 0.0), (2, "v2", 0.0)]
    assert listed[0]["path"].endswith("versions/v1/adapter.gguf")

    assert client.post("/lora-adapters", json=[{"id": 1, "scale": 1.0}]).json() == {"success": True}
    assert [a["scale"] for a in client.get("/lora-adapters").json()] == [1.0, 0.0]
    assert client.get("/health").json()["serving"] == "v1"  # switched now, not at the next poll
    answered = _complete(client, n_predict=4)
    assert answered["system_fingerprint"] == "v1"
    assert _row(client, answered["id"]).version_id == 1
    # Setting the same scales again is no change, not an error.
    assert (
        client.post(
            "/lora-adapters", json=[{"id": 1, "scale": 1}, {"id": 2, "scale": 0}]
        ).status_code
        == 200
    )

    assert "gate" in _error(client.post("/lora-adapters", json=[{"id": 2, "scale": 1}]), 409)
    assert "scale" in _error(client.post("/lora-adapters", json=[{"id": 1, "scale": 0.5}]), 400)
    two = [{"id": 1, "scale": 1}, {"id": 2, "scale": 1}]
    assert "one version" in _error(client.post("/lora-adapters", json=two), 400)
    _error(client.post("/lora-adapters", json=[{"id": 99, "scale": 1}]), 400, "adapter_not_found")
    _error(client.post("/lora-adapters", json={"id": 1, "scale": 1}), 400)

    assert client.post("/lora-adapters", json=[]).json() == {"success": True}  # all zero: base
    assert [a["scale"] for a in client.get("/lora-adapters").json()] == [0.0, 0.0]
    assert client.get("/health").json()["serving"] == "base"
    assert _complete(client, n_predict=4)["system_fingerprint"] == "base"


def test_the_lora_field_picks_the_version_per_request(app_client: TestClient) -> None:
    client = app_client
    base = _complete(client, n_predict=8)
    adapted = _complete(client, n_predict=8, lora=[{"id": 1, "scale": 1.0}])
    assert adapted["system_fingerprint"] == "v1" and adapted["model"] == "selftune"
    assert adapted["content"] != base["content"]  # the adapter changes the greedy answer
    assert _row(client, adapted["id"]).version_id == 1
    assert adapted["generation_settings"]["lora"] == [{"id": 1, "scale": 1.0}]
    # Zero scales, or none at all, are the base; v2 needs no gate when asked for explicitly.
    assert (
        _complete(client, n_predict=8, lora=[{"id": 1, "scale": 0}])["content"] == base["content"]
    )
    assert _complete(client, n_predict=8, lora=[])["system_fingerprint"] == "base"
    assert (
        _complete(client, n_predict=2, lora=[{"id": 2, "scale": 1}])["system_fingerprint"] == "v2"
    )
    chat = client.post("/v1/chat/completions", json={**CHAT, "lora": [{"id": 1, "scale": 1}]})
    assert chat.headers["X-Selftune-Version"] == chat.json()["system_fingerprint"] == "v1"
    assert _row(client, chat.json()["id"]).version_id == 1

    before = _count(client)
    message = _error(
        client.post("/completion", json={"prompt": PROMPT, "lora": [{"id": 1, "scale": 0.5}]}), 400
    )
    assert "scale 1.0" in message  # the transformers engine applies PEFT at 1.0 only
    both = [{"id": 1, "scale": 1}, {"id": 2, "scale": 1}]
    assert "one version per request" in _error(
        client.post("/completion", json={"prompt": PROMPT, "lora": both}), 400
    )
    _error(
        client.post("/completion", json={"prompt": PROMPT, "lora": [{"id": 7, "scale": 1}]}), 400
    )
    _error(client.post("/completion", json={"prompt": PROMPT, "model": "v1", "lora": []}), 400)
    _error(
        client.post("/v1/completions", json={"model": "selftune", "prompt": "x", "lora": both}), 400
    )
    assert _count(client) == before


def test_model_names_a_version_or_the_base(app_client: TestClient) -> None:
    client = app_client
    models = client.get("/v1/models").json()["data"]
    assert [(m["id"], m["version"]) for m in models] == [
        ("selftune", "base"), ("base", "base"), ("v1", "v1"), ("v2", "v2"),
        ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
    ]  # fmt: skip
    v2 = client.post("/v1/chat/completions", json={**CHAT, "model": "v2", "max_tokens": 3})
    assert v2.status_code == 200, v2.text
    assert (v2.json()["model"], v2.json()["system_fingerprint"]) == ("v2", "v2")
    row = _row(client, v2.json()["id"])
    assert (row.model, row.version_id) == ("v2", 2)

    client.post("/api/versions/v1/promote", json={})
    served = client.post(
        "/v1/completions", json={"model": "selftune", "prompt": PROMPT, "max_tokens": 4}
    )
    assert served.headers["X-Selftune-Version"] == "v1"
    assert _row(client, served.json()["id"]).version_id == 1
    base = _complete(client, model="base", n_predict=4)
    assert (base["system_fingerprint"], base["model"]) == ("base", "base")
    assert _row(client, base["id"]).version_id is None
    message = _error(
        client.post("/v1/chat/completions", json={**CHAT, "model": "v9"}), 404, "model_not_found"
    )
    assert "v1" in message and "base" in message


# --- auth and loading ----------------------------------------------------------------------
ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/completion", {"prompt": PROMPT}),
    ("POST", "/tokenize", {"content": "x"}),
    ("POST", "/detokenize", {"tokens": [1]}),
    ("GET", "/props", None),
    ("POST", "/lora-adapters", []),
    ("POST", "/v1/embeddings", {"input": "x"}),
    ("POST", "/embedding", {"content": "x"}),
    ("POST", "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "/nowhere"}),
]


def test_every_route_needs_a_key_when_keys_are_required(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> None:
    settings = tiny_settings(tiny_model_dir, serve={"auth_required": True})
    with TestClient(create_app(settings, engine=tiny_engine)) as client:
        extra = [("GET", "/metrics", None), ("GET", "/lora-adapters", None),
                 ("GET", "/api/versions/1/download", None)]  # fmt: skip
        for method, path, body in [*ROUTES, *extra]:
            response = client.request(method, path, json=body)
            _error(response, 401, "invalid_api_key")


def test_model_routes_answer_503_while_the_model_loads(
    settings_env: Path, tiny_model_dir: Path
) -> None:
    app = create_app(tiny_settings(tiny_model_dir))  # no lifespan: the model never loads
    client = TestClient(app)
    for method, path, body in ROUTES:
        if path != "/lora-adapters":  # moving the alias needs no model
            _error(client.request(method, path, json=body), 503, "model_loading")
    assert client.get("/metrics").status_code == 200
