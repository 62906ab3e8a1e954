"""Token ids outside the vocabulary never reach llama.cpp: each route that takes them answers
400 and the server stays up. (llama.cpp reads past its tables for such ids and aborts the
process: one request used to kill the server.)"""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import LiveServer

N_VOCAB = 49152  # the tiny model's vocabulary is SmolLM2's
BAD_IDS = [N_VOCAB, N_VOCAB + 1, 2**31, 2**40]


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/detokenize", lambda bad: {"tokens": [1, bad]}),
        ("/completion", lambda bad: {"prompt": [1, bad], "n_predict": 2}),
        ("/v1/embeddings", lambda bad: {"model": "selftune", "input": [[1, bad]]}),
        ("/embedding", lambda bad: {"content": [1, bad]}),
    ],
)
def test_a_token_id_outside_the_vocabulary_is_refused(
    openai_server: LiveServer, route: str, body: object, bad: int
) -> None:
    response = httpx.post(f"{openai_server.url}{route}", json=body(bad), timeout=30)  # type: ignore[operator]
    assert response.status_code == 400, response.text
    assert "vocabulary" in response.json()["error"]["message"] or response.json()["error"]["param"]
    assert httpx.get(f"{openai_server.url}/health", timeout=10).status_code == 200
