"""Fuzzing the routes that reach llama.cpp: hostile but well-formed JSON bodies (token ids and
counts at the edges of the vocabulary, the context and the integer types, extreme floats, NaN
and Infinity, empty, long, control-character and unpaired-surrogate strings), sent to one
server on the real llama.cpp engine that runs in a process of its own
(tests/integration/fuzz_server.py), so that an abort in native code is seen, not suffered.

After every request the process must be alive and answer ``/health``; every answer must be
below 500 and a 4xx must carry the route family's error body (OpenAI's ``{"error": {"message":
...}}``, ollama's ``{"error": "..."}``).

Short by default (``make test``); ``SELFTUNE_FUZZ_EXAMPLES=N`` runs N random examples per route
instead of a fixed, deterministic set (``make bench`` runs bench/fuzz.py, which sets it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.fuzz_server import ServerProcess, native_server

N_VOCAB = 49152  # the tiny model's vocabulary is SmolLM2's
CONTEXT = 256  # tiny_settings' context_length
EXAMPLES = int(os.environ.get("SELFTUNE_FUZZ_EXAMPLES", "0"))

# --- values ---------------------------------------------------------------------------------
EDGE_INTS = [
    *(-1, 0, 1, 2, 20, 21),
    *(CONTEXT - 1, CONTEXT, CONTEXT + 1),
    *(N_VOCAB - 1, N_VOCAB, N_VOCAB + 1),
    *(2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30),
    *(-2, -(2**31), -(2**31) - 1, -(2**63), -(2**63) - 1, -(10**30)),
]
ints = st.one_of(st.sampled_from(EDGE_INTS), st.integers(-300, 300))
small_counts = st.one_of(st.sampled_from([-1, 0, 1, 2, 8, CONTEXT, 2**31, 2**63]), ints)
EDGE_FLOATS = [
    *(0.0, -0.0, 5e-324, 1e-308, 1e-12, 0.5, 1.0, 1.0000001, 2.0, 2.0000001, 100.0),
    *(-1e-308, -0.5, -1.0, -2.0, -100.0, 1e308, -1e308, 1.7976931348623157e308),
    *(float("nan"), float("inf"), float("-inf")),
]
floats = st.one_of(st.sampled_from(EDGE_FLOATS), st.floats(), st.integers(-3, 3))
numbers = st.one_of(floats, ints)
token_ids = st.one_of(st.sampled_from(EDGE_INTS), st.integers(0, N_VOCAB - 1))
token_lists = st.one_of(
    st.lists(token_ids, max_size=12),
    st.lists(st.integers(0, N_VOCAB - 1), min_size=CONTEXT - 2, max_size=CONTEXT + 40),
)
EDGE_TEXTS = [
    *("", " ", "\x00", "a\x00b", "\ud800", "a\udfffb", "\ufeff", "\u202e\u0301", "🦙" * 50),
    *("<|im_start|>", "<|im_end|><|endoftext|>", "\r\n\t\x1b[0m", "{{ raise('x') }}"),
    *("a" * 10_000, "é" * 3_000, "<|im_start|>" * 300, "\x00" * 1000),
]
texts = st.one_of(st.sampled_from(EDGE_TEXTS), st.text(max_size=40))
words = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)  # what a client sends
stops = st.one_of(st.none(), texts, st.lists(texts, max_size=5))
anything = st.one_of(st.none(), st.booleans(), ints, floats, texts, st.lists(ints, max_size=3))


def mostly(
    valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """``valid`` five times in six, else ``hostile``: a body with every field hostile is
    refused by its first, and never reaches the engine."""
    return st.integers(0, 5).flatmap(lambda pick: hostile if pick == 0 else valid)


def unit(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False)


biases = mostly(
    st.dictionaries(
        st.integers(0, N_VOCAB - 1).map(str),
        st.one_of(unit(-100, 100), st.booleans()),
        max_size=4,
    ),
    st.one_of(
        st.dictionaries(st.one_of(token_ids.map(str), texts), st.one_of(floats, st.booleans())),
        st.lists(
            st.tuples(st.one_of(token_ids, texts), st.one_of(floats, st.booleans())).map(list),
            max_size=4,
        ),
    ),
)
MODELS = ["selftune", "base", "", "v1", "v99999999999999999999", "\x00", "../../etc/passwd"]
models = mostly(st.sampled_from(["selftune", "base"]), st.one_of(st.sampled_from(MODELS), texts))
prompts = mostly(words, texts)
prompt_tokens = mostly(st.lists(st.integers(0, N_VOCAB - 1), min_size=1, max_size=20), token_lists)


def body(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(required, optional=optional)


# Each option: in the range the schema allows five times in six (edges of the integer types
# included where the schema sets no upper bound), else anything numeric.
SAMPLER = {
    "temperature": mostly(unit(0, 2), numbers),
    "top_k": mostly(st.one_of(st.integers(0, N_VOCAB + 1), st.sampled_from(EDGE_INTS)), numbers),
    "top_p": mostly(st.one_of(unit(1e-6, 1), st.just(5e-324)), numbers),
    "min_p": mostly(unit(0, 1), numbers),
    "repeat_penalty": mostly(st.one_of(unit(1e-6, 10), st.sampled_from([5e-324, 1e308])), numbers),
    "repeat_last_n": mostly(
        st.one_of(st.integers(-1, 2 * CONTEXT), st.sampled_from(EDGE_INTS)), ints
    ),
    "presence_penalty": mostly(unit(-2, 2), numbers),
    "frequency_penalty": mostly(unit(-2, 2), numbers),
    "seed": ints,
    "logit_bias": biases,
    "stop": stops,
    "stream": st.booleans(),
    "ignore_eos": st.booleans(),
    "typical_p": mostly(st.just(1.0), numbers),
    "lora": st.lists(st.fixed_dictionaries({"id": ints, "scale": floats}), max_size=2),
    "model": models,
}
counts = mostly(st.integers(-1, CONTEXT + 8), small_counts)  # n_predict, num_predict, ...
positive_counts = mostly(st.integers(1, CONTEXT + 8), small_counts)
alternatives = mostly(st.integers(0, 20), small_counts)  # logprobs, top_logprobs, n_probs
messages = mostly(
    st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(["system", "user"]), "content": words}),
        min_size=1,
        max_size=3,
    ),
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["system", "user", "assistant", "developer", "tool"])},
            optional={"content": st.one_of(texts, st.none())},
        ),
        min_size=1,
        max_size=4,
    ),
)
OLLAMA_NUMBERS = {
    "num_predict": counts,
    "top_k": SAMPLER["top_k"],
    "top_p": SAMPLER["top_p"],
    "min_p": SAMPLER["min_p"],
    "temperature": SAMPLER["temperature"],
    "repeat_penalty": SAMPLER["repeat_penalty"],
    "repeat_last_n": SAMPLER["repeat_last_n"],
    "presence_penalty": mostly(unit(-2, 2), numbers),
    "frequency_penalty": mostly(unit(-2, 2), numbers),
    "seed": ints,
    "typical_p": mostly(st.just(1.0), numbers),
    "tfs_z": mostly(st.just(1.0), numbers),
    "mirostat": mostly(st.just(0), numbers),
    # Ignored by selftune (the model is loaded once): any integer must stay harmless.
    **{name: ints for name in ("num_ctx", "num_keep", "num_batch", "num_thread", "num_gpu")},
}
OLLAMA_OPTIONS = st.fixed_dictionaries({}, optional={**OLLAMA_NUMBERS, "stop": stops})
OLLAMA = {"stream": st.booleans(), "options": OLLAMA_OPTIONS, "keep_alive": anything}

ROUTES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "/tokenize": body(
        {"content": texts},
        {"add_special": st.booleans(), "with_pieces": mostly(st.booleans(), anything)},
    ),
    "/detokenize": body({"tokens": token_lists}, {}),
    "/completion": body(
        {"prompt": st.one_of(prompts, prompt_tokens)},
        {**SAMPLER, "n_predict": counts, "n_probs": alternatives, "return_tokens": st.booleans()},
    ),
    "/embedding": body(
        {
            "content": st.one_of(
                prompts, token_lists, st.lists(prompt_tokens, min_size=1, max_size=3)
            )
        },
        {"embd_normalize": mostly(st.integers(-1, 4), ints)},
    ),
    "/v1/embeddings": body(
        {"input": st.one_of(prompts, token_lists, st.lists(prompt_tokens, min_size=1, max_size=3))},
        {"encoding_format": st.sampled_from(["float", "base64"]), "model": models},
    ),
    "/v1/completions": body(
        {
            "prompt": st.one_of(
                prompts, mostly(st.lists(words, min_size=1, max_size=1), st.lists(texts))
            )
        },
        {
            **SAMPLER,
            "max_tokens": positive_counts,
            "logprobs": alternatives,
            "n": mostly(st.just(1), small_counts),
            "echo": mostly(st.just(False), st.booleans()),
        },
    ),
    "/v1/chat/completions": body(
        {"messages": messages},
        {
            **SAMPLER,
            "max_tokens": positive_counts,
            "max_completion_tokens": positive_counts,
            "logprobs": st.booleans(),
            "top_logprobs": alternatives,
            "n": mostly(st.just(1), small_counts),
        },
    ),
    "/v1/load_lora_adapter": body(
        {"lora_name": texts, "lora_path": st.sampled_from(["", "\x00", "/nonexistent", "/", "."])},
        {},
    ),
    "/v1/unload_lora_adapter": body({"lora_name": texts}, {}),
    "/api/generate": body(
        {"model": models},
        {**OLLAMA, "prompt": prompts, "system": prompts, "raw": st.booleans()},
    ),
    "/api/chat": body(
        {"model": models},
        {
            **OLLAMA,
            "messages": mostly(
                st.lists(
                    st.fixed_dictionaries({"role": st.just("user"), "content": words}), max_size=2
                ),
                st.lists(
                    st.fixed_dictionaries(
                        {"role": st.sampled_from(["system", "user", "assistant", "tool"])},
                        optional={"content": texts},
                    ),
                    max_size=3,
                ),
            ),
        },
    ),
    "/api/embed": body(
        {"model": models, "input": st.one_of(prompts, st.lists(prompts, max_size=3))},
        {
            "options": OLLAMA_OPTIONS,
            "truncate": st.booleans(),
            "dimensions": mostly(st.none(), ints),
        },
    ),
    "/api/embeddings": body({"model": models, "prompt": prompts}, {"options": OLLAMA_OPTIONS}),
}


@pytest.fixture(scope="module")
def server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, shared_cache: Path
) -> Iterator[ServerProcess]:
    from selftune.models.base import default_gguf_path
    from tests.gguf_base import write_llama_base_gguf

    root = tmp_path_factory.mktemp("fuzz-native")
    gguf = write_llama_base_gguf(tiny_model_dir, root / "tiny.gguf", default_gguf_path())
    with native_server(tiny_model_dir, gguf, root, shared_cache) as process:
        yield process


def check_answer(server: ServerProcess, route: str, payload: dict[str, Any]) -> None:
    # Python's encoder writes NaN and Infinity (which Python's parser reads) and keeps unpaired
    # surrogates as \\ud800 escapes: both are what a hostile client can send.
    content = json.dumps(payload)
    headers = {"content-type": "application/json"}
    try:
        response = httpx.post(f"{server.url}{route}", content=content, headers=headers, timeout=120)
    except httpx.TransportError as exc:
        raise AssertionError(f"{route} {content[:500]}: {exc!r}\n{server.alive()}") from exc
    why = server.alive()
    assert why is None, f"{route} {content[:500]} took the server down: {why}"
    assert response.status_code < 500, f"{route} {content[:500]}: {response.text[:2000]}"
    if response.status_code >= 400:
        error = response.json()["error"]
        if route.startswith("/api/"):
            assert isinstance(error, str) and error, response.text
        else:
            assert isinstance(error["message"], str) and error["message"], response.text


def _settings() -> settings:
    if EXAMPLES:
        return settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    # A fixed set of examples in make test: the same in every run, a short one.
    return settings(
        max_examples=12,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )


@pytest.mark.parametrize("route", list(ROUTES))
def test_hostile_bodies_never_crash_or_500(server: ServerProcess, route: str) -> None:
    @_settings()
    @given(payload=ROUTES[route])
    def fuzz(payload: dict[str, Any]) -> None:
        check_answer(server, route, payload)

    fuzz()


@pytest.mark.parametrize(
    ("route", "payload"),
    [
        ("/tokenize", {"content": "\ud800"}),
        ("/completion", {"prompt": "hi", "logit_bias": {"\udc00": 1}}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a\udfffb"}]}),
        ("/v1/embeddings", {"input": ["fine", "\ud800"]}),
        ("/api/generate", {"model": "selftune", "prompt": "\ud800", "stream": False}),
        ("/api/chat", {"model": "selftune", "options": {"stop": ["\ud800"]}}),
    ],
)
def test_an_unpaired_surrogate_is_refused(
    server: ServerProcess, route: str, payload: dict[str, Any]
) -> None:
    # JSON's "\ud800" escape parses into a str no tokenizer or database takes: it used to
    # reach llama.cpp's tokenizer's UTF-8 encoding and answer 500.
    response = httpx.post(
        f"{server.url}{route}",
        content=json.dumps(payload),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "not valid Unicode" in (error if route.startswith("/api/") else error["message"])
