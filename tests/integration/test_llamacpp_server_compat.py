"""llama.cpp's own server tests (``tools/server/tests/unit/``), as selftune's tests of the same
behaviour: the routes, shapes, defaults and errors that clients of ``llama-server`` rely on.

Each test names the llama.cpp test it follows. Where selftune differs on purpose (one slot,
OpenAI's error shape, the version as ``system_fingerprint``), the test pins selftune's answer
and docs/compatibility.md says why; what does not apply at all is listed there too.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from selftune.api.app import create_app
from selftune.api.auth import create_key
from selftune.engines.transformers_engine import TransformersEngine
from tests.integration.conftest import tiny_settings

PROMPT = "I believe the meaning of life is"
BOOK = [{"role": "system", "content": "Book"}, {"role": "user", "content": "What is the best book"}]


def _ok(response: Any) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _events(response: Any) -> list[dict[str, Any]]:
    lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    return [json.loads(line.removeprefix("data: ")) for line in lines if line != "data: [DONE]"]


# --- test_basic.py ------------------------------------------------------------------------
def test_server_start_props_and_models(client: TestClient) -> None:
    """test_server_start_simple, test_server_props, test_server_models."""
    assert client.get("/health").status_code == 200
    props = _ok(client.get("/props"))
    assert props["total_slots"] == 1
    assert props["default_generation_settings"]["n_ctx"] == 256
    assert props["default_generation_settings"]["params"]["seed"] == -1
    models = _ok(client.get("/models"))
    assert models["data"][0]["id"] == props["model_alias"] == "selftune"
    assert models == _ok(client.get("/v1/models"))


def test_server_slots(client: TestClient) -> None:
    """test_server_slots: one slot per server, with the server's context, and no params."""
    slots = _ok(client.get("/slots"))
    assert len(slots) == _ok(client.get("/props"))["total_slots"] == 1
    assert slots[0]["n_ctx"] == 256 and "params" not in slots[0]
    assert (slots[0]["id"], slots[0]["is_processing"]) == (0, False)


def test_slots_fail_on_no_slot(client: TestClient) -> None:
    """test_slots_fail_on_no_slot_ignores_value: any value asks for a 503 while busy."""
    assert client.get("/slots?fail_on_no_slot=1").status_code == 200  # idle: the slot is free
    metrics = client.app.state.selftune.metrics  # type: ignore[attr-defined]
    metrics.admitted()  # a request waiting for the engine
    try:
        assert _ok(client.get("/slots"))[0]["is_processing"] is True
        error = _error(client.get("/slots?fail_on_no_slot=0"), 503)
        assert error["message"].startswith("no slot available")
    finally:
        metrics.left(produced=False)


# --- test_completion.py -------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/completion", "/completions"])
def test_completion(client: TestClient, path: str) -> None:
    """test_completion, on llama-server's two paths for it (test_security.py uses the second)."""
    body = _ok(client.post(path, json={"prompt": PROMPT, "n_predict": 8, "temperature": 1.0}))
    assert body["timings"]["prompt_n"] == body["tokens_evaluated"] > 0
    assert body["timings"]["predicted_n"] == body["tokens_predicted"] == 8
    assert body["truncated"] is False and isinstance(body["has_new_line"], bool)
    assert body["tokens"] == [] and isinstance(body["content"], str)
    assert body["stop_type"] == "limit" and body["stop"] is True


def test_completion_stream_and_stream_vs_non_stream(client: TestClient) -> None:
    """test_completion_stream, test_completion_stream_vs_non_stream."""
    asked = {"prompt": PROMPT, "n_predict": 8, "temperature": 1.0, "seed": 42}
    whole = _ok(client.post("/completion", json=asked))
    with client.stream("POST", "/completion", json={**asked, "stream": True}) as response:
        events = _events(response)
    assert all(isinstance(event["stop"], bool) for event in events)
    *pieces, last = events
    assert not any(piece["stop"] for piece in pieces) and last["stop"]
    assert last["timings"]["predicted_n"] == 8 and last["stop_type"] == "limit"
    assert last["truncated"] is False and isinstance(last["has_new_line"], bool)
    assert last["generation_settings"]["n_predict"] == 8
    assert last["generation_settings"]["seed"] == 42
    assert "".join(piece["content"] for piece in pieces) == whole["content"]


def test_same_seed_same_result_other_seed_other_result(client: TestClient) -> None:
    """test_consistent_result_same_seed, test_different_result_different_seed (one slot)."""

    def content(seed: int) -> str:
        asked = {"prompt": PROMPT, "seed": seed, "temperature": 1.0, "n_predict": 8}
        text: str = _ok(client.post("/completion", json=asked))["content"]
        return text

    assert {content(42) for _ in range(3)} == {content(42)}
    assert len({content(seed) for seed in range(4)}) > 1


def test_prompt_longer_than_the_context(client: TestClient) -> None:
    """test_nocache_long_input_prompt: a 400, with OpenAI's code for it."""
    long = {"prompt": PROMPT * 40, "seed": 42, "temperature": 1.0}
    assert _error(client.post("/completion", json=long), 400)["code"] == "context_length_exceeded"


def test_completion_with_tokens_input(client: TestClient) -> None:
    """test_completion_with_tokens_input: one prompt as token ids. Several prompts in one
    request (llama.cpp answers a list) are refused: selftune records one prompt per answer."""
    tokens = _ok(client.post("/tokenize", json={"content": PROMPT, "add_special": True}))["tokens"]
    by_ids = _ok(client.post("/completion", json={"prompt": tokens, "temperature": 0}))
    by_text = _ok(client.post("/completion", json={"prompt": PROMPT, "temperature": 0}))
    assert by_ids["content"] == by_text["content"] and by_ids["prompt"] == PROMPT
    assert (
        "several prompts"
        in _error(client.post("/completion", json={"prompt": [tokens, tokens]}), 400)["message"]
    )


# --- test_chat_completion.py --------------------------------------------------------------
@pytest.mark.parametrize(
    "user_content",
    [
        "What is the best book",
        [{"type": "text", "text": "What is "}, {"type": "text", "text": "the best book"}],
    ],
)
def test_chat_completion(client: TestClient, user_content: Any) -> None:
    """test_chat_completion: no model (the served one), text or text parts, usage, length."""
    messages = [{"role": "system", "content": "Book"}, {"role": "user", "content": user_content}]
    body = _ok(client.post("/chat/completions", json={"max_tokens": 8, "messages": messages}))
    assert "cmpl" in body["id"] and body["model"] == "selftune"
    assert body["system_fingerprint"] == "base"  # the version that answered, not a build
    assert body["usage"]["completion_tokens"] == 8
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    as_text = _ok(client.post("/chat/completions", json={"max_tokens": 8, "messages": BOOK}))
    assert body["usage"]["prompt_tokens"] == as_text["usage"]["prompt_tokens"]


def test_chat_completion_stream(client: TestClient) -> None:
    """test_chat_completion_stream: the role first, one id throughout, usage last."""
    asked = {
        "max_tokens": 8,
        "messages": BOOK,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with client.stream("POST", "/chat/completions", json=asked) as response:
        events = _events(response)
    first, *rest, usage = events
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in event["choices"][0]["delta"] for event in rest)
    assert {event["id"] for event in events} == {first["id"]}
    assert {event["model"] for event in events} == {"selftune"}
    assert [event["choices"][0]["finish_reason"] for event in rest][-1] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 8


def test_apply_chat_template(client: TestClient) -> None:
    """test_apply_chat_template: the served model's own template (SmolLM2's ChatML)."""
    messages = [
        {"role": "system", "content": "You are a test."},
        {"role": "user", "content": "Hi there"},
    ]
    body = _ok(client.post("/apply-template", json={"messages": messages}))
    assert body == {
        "prompt": "<|im_start|>system\nYou are a test.<|im_end|>\n<|im_start|>user\nHi there"
        "<|im_end|>\n<|im_start|>assistant\n"
    }
    llama2 = _ok(
        client.post("/apply-template", json={"messages": messages, "chat_template": "llama2"})
    )
    assert llama2["prompt"].endswith(
        "[INST] <<SYS>>\nYou are a test.\n<</SYS>>\n\nHi there [/INST]"
    )
    developer = [{"role": "developer", "content": "You are a test."}, messages[1]]
    assert _ok(client.post("/apply-template", json={"messages": developer})) == body
    refused = client.post(
        "/apply-template", json={"messages": messages, "add_generation_prompt": False}
    )
    assert _error(refused, 400)["param"] == "add_generation_prompt"
    assert _error(client.post("/apply-template", json={"messages": []}), 400)


@pytest.mark.parametrize(
    "messages",
    [
        None,
        "string",
        [123],
        [{}],
        [{"role": 123}],
        [{"role": "system", "content": 123}],
        [{"role": "system", "content": "test"}, {}],
    ],
)
def test_invalid_chat_completion_req(client: TestClient, messages: Any) -> None:
    """test_invalid_chat_completion_req: 400 with an error body, never a 500."""
    _error(client.post("/chat/completions", json={"messages": messages}), 400)


def test_context_size_exceeded(client: TestClient) -> None:
    """test_context_size_exceeded: 400; OpenAI's code where llama.cpp has its own error type."""
    error = _error(client.post("/chat/completions", json={"messages": BOOK * 100}), 400)
    assert error["code"] == "context_length_exceeded"
    assert "this model's context is 256 tokens" in error["message"]


# --- test_tokenize.py ---------------------------------------------------------------------
def test_tokenize_detokenize_and_pieces(client: TestClient) -> None:
    """test_tokenize_detokenize, test_tokenize_with_pieces."""
    content = "What is the capital of France ?"
    tokens = _ok(client.post("/tokenize", json={"content": content}))["tokens"]
    assert len(tokens) > 5
    assert _ok(client.post("/detokenize", json={"tokens": tokens}))["content"].strip() == content
    unicode = "This is a test string with unicode 媽 and emoji 🤗"
    pieces = _ok(client.post("/tokenize", json={"content": unicode, "with_pieces": True}))
    assert all(p["id"] > 0 and len(p["piece"]) > 0 for p in pieces["tokens"])


# --- test_embedding.py --------------------------------------------------------------------
def test_embeddings_are_normalized_counted_and_repeatable(client: TestClient) -> None:
    """test_embedding_single, _multiple, test_same_prompt_give_same_result, _usage_*."""
    one = _ok(client.post("/v1/embeddings", json={"input": PROMPT}))
    vector = one["data"][0]["embedding"]
    assert len(one["data"]) == 1 and sum(x * x for x in vector) == pytest.approx(1, abs=1e-3)
    assert one["usage"]["prompt_tokens"] == one["usage"]["total_tokens"] > 0
    five = _ok(client.post("/v1/embeddings", json={"input": [PROMPT] * 5}))
    assert [d["index"] for d in five["data"]] == list(range(5))
    for item in five["data"]:
        assert item["embedding"] == pytest.approx(vector, abs=1e-3)
    assert five["usage"]["prompt_tokens"] == 5 * one["usage"]["prompt_tokens"]


def test_embedding_base64_and_llamacpp_shape(client: TestClient) -> None:
    """test_embedding_openai_library_base64; llama.cpp's /embeddings shape (pooled: one row)."""
    floats = _ok(client.post("/v1/embeddings", json={"input": PROMPT}))["data"][0]["embedding"]
    packed = _ok(client.post("/v1/embeddings", json={"input": PROMPT, "encoding_format": "base64"}))
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert struct.unpack(f"<{len(raw) // 4}f", raw) == pytest.approx(floats, abs=1e-6)
    native = _ok(client.post("/embeddings", json={"input": PROMPT}))
    assert [item["index"] for item in native] == [0] and len(native[0]["embedding"]) == 1
    assert native[0]["embedding"][0] == pytest.approx(floats, abs=1e-6)


def test_embedding_errors(client: TestClient) -> None:
    """test_embedding_invalid_input, test_embedding_error_prompt_too_long."""
    _error(client.post("/v1/embeddings", json={"input": []}), 400)
    too_long = client.post("/v1/embeddings", json={"input": "This is a test " * 512})
    assert "too large" in _error(too_long, 400)["message"]


# --- test_security.py ---------------------------------------------------------------------
@pytest.fixture
def keyed(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> Iterator[tuple[TestClient, str]]:
    app = create_app(
        tiny_settings(tiny_model_dir, serve={"auth_required": True}), engine=tiny_engine
    )
    key = create_key(app.state.selftune.db, "alice")
    with TestClient(app) as client:
        yield client, key


@pytest.mark.parametrize("key", [None, "invalid-key"])
def test_incorrect_api_key(keyed: tuple[TestClient, str], key: str | None) -> None:
    """test_incorrect_api_key: with keys required, none or a wrong one is a 401."""
    client, _ = keyed
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    refused = client.post("/completions", json={"prompt": PROMPT}, headers=headers)
    assert _error(refused, 401)["type"] == "authentication_error"


def test_correct_api_key(keyed: tuple[TestClient, str]) -> None:
    """test_correct_api_key, and the openai library without /v1 (test_openai_library_*)."""
    client, key = keyed
    headers = {"Authorization": f"Bearer {key}"}
    body = _ok(
        client.post("/completions", json={"prompt": PROMPT, "n_predict": 2}, headers=headers)
    )
    assert "content" in body and "error" not in body
    chat = client.post(
        "/chat/completions", json={"messages": BOOK, "max_tokens": 2}, headers=headers
    )
    assert len(_ok(chat)["choices"]) == 1


# --- OpenAI's routes as llama-server's clients use them -----------------------------------
def test_models_are_retrieved_by_name(client: TestClient) -> None:
    """OpenAI's GET /v1/models/{model}, which the openai library's models.retrieve calls."""
    for path in ("/v1/models/selftune", "/models/selftune", "/v1/models/base"):
        card = _ok(client.get(path))
        assert card["id"] == path.rsplit("/", 1)[1] and card["object"] == "model"
    missing = _error(client.get("/v1/models/gpt-4o"), 404)
    assert (missing["code"], missing["param"]) == ("model_not_found", "model")


def test_model_may_be_left_out(client: TestClient) -> None:
    """llama-server answers with its one model whatever ``model`` says; selftune answers with
    the served one when ``model`` is absent (a name it does not know stays a 404)."""
    text = _ok(client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}))
    assert text["model"] == "selftune" and text["system_fingerprint"] == "base"
    chat = _ok(client.post("/v1/chat/completions", json={"messages": BOOK, "max_tokens": 2}))
    assert chat["model"] == "selftune"


# --- metrics (test_metrics.py, and llama.cpp's /metrics series) ---------------------------
def _series(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split(" ")
            values[name] = float(value)
    return values


def test_metrics_series_and_start_header(client: TestClient) -> None:
    before = client.get("/metrics")
    start = before.headers["Process-Start-Time-Unix"]
    assert re.fullmatch(r"\d{10}", start)
    series = _series(before.text)
    for name in (
        "n_decode_total",
        "n_busy_slots_per_decode",
        "prompt_tokens_cached_total",
        "spec_decode_num_drafts_total",
        "n_tokens_max",
    ):
        assert f"llamacpp:{name}" in series, name
    assert "# TYPE llamacpp:n_busy_slots_per_decode gauge" in before.text
    _ok(client.post("/completion", json={"prompt": PROMPT, "n_predict": 5}))
    after = client.get("/metrics")
    assert after.headers["Process-Start-Time-Unix"] == start
    grown = _series(after.text)
    # One step for the prompt, then one per token after the first.
    assert grown["llamacpp:n_decode_total"] - series["llamacpp:n_decode_total"] == 5
    assert grown["llamacpp:n_busy_slots_per_decode"] == 1.0
    assert grown["llamacpp:prompt_tokens_cached_total"] == 0
