"""What selftune does not do is a 400 that names the option, never silently ignored; the values
that change nothing, and the fields every client sends, are accepted."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
COMPLETION = {"prompt": "Once", "max_tokens": 2}
LLAMA = {"prompt": "Once", "n_predict": 2}
SAMPLED = {"temperature": 0.8}

REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/chat/completions", {**CHAT, "functions": [{"name": "f"}]}, "functions"),
    ("/v1/chat/completions", {**CHAT, "function_call": "auto"}, "function_call"),
    ("/v1/chat/completions", {**CHAT, "audio": {"voice": "alloy"}}, "audio"),
    ("/v1/chat/completions", {**CHAT, "modalities": ["text", "audio"]}, "modalities"),
    ("/v1/chat/completions", {**CHAT, "prediction": {"type": "content"}}, "prediction"),
    ("/v1/chat/completions", {**CHAT, "web_search_options": {}}, "web_search_options"),
    ("/v1/chat/completions", {**CHAT, "reasoning_effort": "low"}, "reasoning_effort"),
    ("/v1/chat/completions", {**CHAT, "verbosity": "low"}, "verbosity"),
    ("/v1/chat/completions", {**CHAT, "top_n_sigma": 1.0, **SAMPLED}, "top_n_sigma"),
    ("/v1/chat/completions", {**CHAT, "dynatemp_range": 0.5, **SAMPLED}, "dynatemp_range"),
    ("/v1/chat/completions", {**CHAT, "n": 2}, "n"),
    ("/v1/completions", {**COMPLETION, "echo": True}, "echo"),
    ("/v1/completions", {**COMPLETION, "suffix": "end"}, "suffix"),
    ("/v1/completions", {**COMPLETION, "best_of": 3}, "best_of"),
    ("/v1/completions", {**COMPLETION, "typical_p": 0.5, **SAMPLED}, "typical_p"),
    ("/completion", {**LLAMA, "mirostat": 2}, "mirostat"),
    ("/completion", {**LLAMA, "dry_multiplier": 0.8}, "dry_multiplier"),
    ("/completion", {**LLAMA, "xtc_probability": 0.5}, "xtc_probability"),
    ("/completion", {**LLAMA, "typical_p": 0.9, **SAMPLED}, "typical_p"),
    ("/completion", {**LLAMA, "samplers": ["top_k"], **SAMPLED}, "samplers"),
    ("/completion", {**LLAMA, "post_sampling_probs": True}, "post_sampling_probs"),
    ("/completion", {**LLAMA, "n_cmpl": 2}, "n_cmpl"),
    ("/completion", {**LLAMA, "n_indent": 4}, "n_indent"),
    ("/completion", {**LLAMA, "t_max_predict_ms": 100}, "t_max_predict_ms"),
    ("/completion", {**LLAMA, "response_fields": ["content"]}, "response_fields"),
    ("/completion", {**LLAMA, "grammar_lazy": True}, "grammar_lazy"),
]


@pytest.mark.parametrize(("path", "body", "param"), REFUSED)
def test_an_option_selftune_lacks_is_a_400_naming_it(
    client: TestClient, path: str, body: dict[str, Any], param: str
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert param in error["message"] or error["code"] == "invalid_request"


ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    (
        "/v1/chat/completions",
        {
            **CHAT,
            "user": "alice",
            "metadata": {"k": "v"},
            "store": False,
            "service_tier": "auto",
            "parallel_tool_calls": True,
            "modalities": ["text"],
            "presence_penalty": 0,
            "frequency_penalty": 0.0,
            "response_format": {"type": "text"},
            "tool_choice": "none",
            "verbosity": "medium",
            "logprobs": False,
        },
    ),
    # Options that only narrow the candidates change no greedy answer: accepted at temperature 0.
    (
        "/v1/chat/completions",
        {**CHAT, "temperature": 0, "typical_p": 0.5, "top_n_sigma": 1, "samplers": "edkypmxt"},
    ),
    # llama.cpp's samplers selftune has, at any temperature.
    (
        "/v1/chat/completions",
        {
            **CHAT,
            **SAMPLED,
            "top_k": 40,
            "min_p": 0.05,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.5,
            "repeat_penalty": 1.1,
            "repeat_last_n": -1,
        },
    ),
    (
        "/completion",
        {
            **LLAMA,
            "temperature": 0,
            "top_k": 40,
            "typical_p": 0.9,
            "repeat_penalty": 1.0,
            "cache_prompt": True,
            "n_keep": 0,
            "id_slot": -1,
            "mirostat": 0,
        },
    ),
    ("/v1/completions", {**COMPLETION, "echo": False, "best_of": 1, "suffix": ""}),
]


@pytest.mark.parametrize(("path", "body"), ACCEPTED)
def test_neutral_values_and_harmless_fields_are_accepted(
    client: TestClient, path: str, body: dict[str, Any]
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
