"""Log-probabilities, logit bias and ignore_eos, in OpenAI's and llama.cpp's shapes, on both
engines."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from selftune.api import responses
from tests.integration.tiny_llama import llama_client

ASK = [{"role": "user", "content": "Tell me about the sea."}]
SAMPLED = {"temperature": 1.0, "seed": 7}


@pytest.fixture(scope="module")
def llama(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, shared_cache: Path
) -> Iterator[TestClient]:
    with llama_client(tiny_model_dir, tmp_path_factory.mktemp("logprobs"), shared_cache) as client:
        yield client


def _post(client: TestClient, path: str, **body: Any) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _events(client: TestClient, path: str, **body: Any) -> list[dict[str, Any]]:
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        return [
            json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")
        ]


def _check_entry(entry: dict[str, Any], top: int) -> None:
    assert entry["logprob"] <= 0
    assert bytes(entry["bytes"]).decode("utf-8", errors="replace") == entry["token"]
    alternatives = entry["top_logprobs"]
    assert len(alternatives) == top
    logprobs = [alternative["logprob"] for alternative in alternatives]
    assert logprobs == sorted(logprobs, reverse=True)
    assert entry["logprob"] <= logprobs[0] + 1e-6


@pytest.mark.parametrize("engine", ["llama", "transformers"])
def test_chat_logprobs_cover_every_token(
    llama: TestClient, client: TestClient, engine: str
) -> None:
    server = llama if engine == "llama" else client
    body = {"messages": ASK, "max_tokens": 6, "logprobs": True, "top_logprobs": 3, **SAMPLED}
    answer = _post(server, "/v1/chat/completions", **body)
    logprobs = answer["choices"][0]["logprobs"]
    assert logprobs["refusal"] is None
    entries = logprobs["content"]
    assert len(entries) == answer["usage"]["completion_tokens"]
    for entry in entries:
        _check_entry(entry, 3)
    responses.ChatCompletion.model_validate(answer)  # as /openapi.json documents it
    assert (
        "".join(e["token"] for e in entries).strip()
        == answer["choices"][0]["message"]["content"].strip()
    )
    # Streamed: each chunk carries its own tokens' entries; together, the same.
    events = _events(server, "/v1/chat/completions", **body)
    streamed = [
        entry
        for event in events
        if event["choices"] and event["choices"][0]["logprobs"]
        for entry in event["choices"][0]["logprobs"]["content"]
    ]
    assert [e["token"] for e in streamed] == [e["token"] for e in entries]
    # Without logprobs: none.
    plain = _post(server, "/v1/chat/completions", messages=ASK, max_tokens=2)
    assert plain["choices"][0]["logprobs"] is None


def test_a_greedy_token_is_its_likeliest_alternative(llama: TestClient) -> None:
    body = {"messages": ASK, "max_tokens": 5, "logprobs": True, "top_logprobs": 2}
    answer = _post(llama, "/v1/chat/completions", temperature=0, **body)
    for entry in answer["choices"][0]["logprobs"]["content"]:
        best = entry["top_logprobs"][0]
        assert (best["token"], best["bytes"]) == (entry["token"], entry["bytes"])
        assert math.isclose(best["logprob"], entry["logprob"], abs_tol=1e-5)


def test_completions_logprobs_have_openais_legacy_shape(llama: TestClient) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": 6, "logprobs": 2, **SAMPLED}
    answer = _post(llama, "/v1/completions", **body)
    choice = answer["choices"][0]
    logprobs = choice["logprobs"]
    assert set(logprobs) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    responses.TextCompletion.model_validate(answer)
    assert len(logprobs["tokens"]) == answer["usage"]["completion_tokens"]
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"])
    assert logprobs["text_offset"] == sorted(logprobs["text_offset"])
    assert "".join(logprobs["tokens"]) == choice["text"]
    for token, offset in zip(logprobs["tokens"], logprobs["text_offset"], strict=True):
        assert choice["text"][offset : offset + len(token)] == token
    events = _events(llama, "/v1/completions", **body)
    offsets = [
        o for e in events if e["choices"] for o in e["choices"][0]["logprobs"]["text_offset"]
    ]
    assert offsets == logprobs["text_offset"]


def test_n_probs_gives_llamacpps_completion_probabilities(llama: TestClient) -> None:
    body = {"prompt": "Once upon a time", "n_predict": 5, "n_probs": 3, **SAMPLED}
    answer = _post(llama, "/completion", **body, return_tokens=True)
    probabilities = answer["completion_probabilities"]
    assert len(probabilities) == answer["tokens_predicted"] == len(answer["tokens"])
    assert [p["id"] for p in probabilities] == answer["tokens"]
    for entry in probabilities:
        assert set(entry) == {"id", "token", "bytes", "logprob", "top_logprobs"}
        _check_entry(entry, 3)
        assert set(entry["top_logprobs"][0]) == {"id", "token", "bytes", "logprob"}
    assert answer["generation_settings"]["n_probs"] == 3
    responses.LlamaCompletion.model_validate(answer)
    detokenized = _post(llama, "/detokenize", tokens=answer["tokens"])["content"]
    assert detokenized == answer["content"]
    # Streamed: on each event with its tokens; not on the last.
    events = _events(llama, "/completion", **body)
    streamed = [p["id"] for e in events[:-1] for p in e["completion_probabilities"]]
    assert streamed == answer["tokens"]
    assert "completion_probabilities" not in events[-1]
    plain = _post(llama, "/completion", prompt="Once", n_predict=2)
    assert "completion_probabilities" not in plain and plain["tokens"] == []


def _first_token(server: TestClient, **body: Any) -> int:
    answer = _post(
        server, "/completion", prompt="The sea is", n_predict=1, return_tokens=True, **body
    )
    token: int = answer["tokens"][0]
    return token


@pytest.mark.parametrize("engine", ["llama", "transformers"])
def test_logit_bias_in_each_form_moves_the_answer(
    llama: TestClient, client: TestClient, engine: str
) -> None:
    server = llama if engine == "llama" else client
    greedy = _first_token(server, temperature=0)
    for bias in ([[greedy, False]], {str(greedy): -100}, [[greedy, -100.0]]):
        assert _first_token(server, temperature=0, logit_bias=bias) != greedy, bias
    text = _post(server, "/detokenize", tokens=[greedy])["content"]
    if text.strip():  # llama.cpp's form by text: each of the text's tokens
        assert _first_token(server, temperature=0, logit_bias=[[text, False]]) != greedy
    # OpenAI's form on the chat route, pushing a token to the front.
    chosen = 1000
    answer = _post(
        server,
        "/v1/chat/completions",
        messages=ASK,
        max_tokens=1,
        temperature=0,
        logprobs=True,
        logit_bias={str(chosen): 100},
    )
    entry = answer["choices"][0]["logprobs"]["content"][0]
    assert entry["token"] == _post(server, "/detokenize", tokens=[chosen])["content"]
    assert entry["logprob"] > -0.01


def test_ignore_eos_generates_past_the_end_of_turn(llama: TestClient) -> None:
    [end] = _post(llama, "/tokenize", content="<|im_end|>")["tokens"]
    forced_end = {"prompt": "Hi", "n_predict": 6, "logit_bias": [[end, 100]]}
    answer = _post(llama, "/completion", **forced_end)
    assert (answer["stop_type"], answer["tokens_predicted"]) == ("eos", 0)
    answer = _post(llama, "/completion", **forced_end, ignore_eos=True)
    assert (answer["stop_type"], answer["tokens_predicted"]) == ("limit", 6)
    assert answer["generation_settings"]["ignore_eos"] is True
    assert {"bias": 100.0, "token": end} in answer["generation_settings"]["logit_bias"]


@pytest.mark.parametrize("engine", ["llama", "transformers"])
def test_llamacpps_samplers_change_the_answer_as_they_should(
    llama: TestClient, client: TestClient, engine: str
) -> None:
    server = llama if engine == "llama" else client

    def answer(**body: Any) -> list[int]:
        tokens: list[int] = _post(
            server, "/completion", prompt="The sea is", n_predict=8, return_tokens=True, **body
        )["tokens"]
        return tokens

    greedy = answer(temperature=0)
    # Keeping only the likeliest token is greedy, whatever the temperature.
    assert answer(temperature=1.5, seed=1, top_k=1) == greedy
    assert answer(temperature=1.5, seed=1, min_p=1.0) == greedy
    # The tiny model repeats itself when greedy: a penalty on repeats changes that.
    assert len(set(greedy)) < len(greedy)
    for penalty in ({"repeat_penalty": 3.0}, {"presence_penalty": 2.0}, {"frequency_penalty": 2.0}):
        assert answer(temperature=0, repeat_last_n=-1, **penalty) != greedy, penalty
    assert answer(temperature=0, repeat_last_n=0, repeat_penalty=3.0) == greedy  # no window
    settings = _post(
        server, "/completion", prompt="x", n_predict=1, top_k=5, min_p=0.1, repeat_penalty=1.2
    )["generation_settings"]
    assert (settings["top_k"], settings["min_p"], settings["repeat_penalty"]) == (5, 0.1, 1.2)


def test_bad_bias_and_logprobs_are_400s(llama: TestClient) -> None:
    for body, param in [
        ({"logit_bias": {"999999": 5}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"5": True}}, "logit_bias"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ]:
        response = llama.post("/v1/chat/completions", json={"messages": ASK, **body})
        assert response.status_code == 400, body
        assert response.json()["error"]["param"] == param, body
    response = llama.post("/v1/completions", json={"prompt": "x", "logprobs": 21})
    assert response.status_code == 400 and response.json()["error"]["param"] == "logprobs"
