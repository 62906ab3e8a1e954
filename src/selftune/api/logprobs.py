"""Token log-probabilities in the three shapes clients read them in.

The engine gives each generated token's log-probability under the model (with the request's
logit bias, before temperature and top_p) and the likeliest alternatives
(:class:`~selftune.engines.base.TokenLogprob`); these functions only shape them:

- OpenAI chat: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}``;
- OpenAI completions: ``{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}],
  "text_offset"}``;
- llama.cpp's ``completion_probabilities``: ``[{"id", "token", "bytes", "logprob",
  "top_logprobs": [{"id", "token", "bytes", "logprob"}]}]``.

A token can hold part of a UTF-8 character: its ``token`` text then shows U+FFFD where the
missing bytes are, and ``bytes`` has the exact bytes. A banned token's log-probability (minus
infinity, which JSON cannot hold) is given as -9999.0, as OpenAI does.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Any

from selftune.engines.base import TokenLogprob

__all__ = ["TextOffsets", "chat_logprobs", "completion_logprobs", "llama_probabilities"]

_FLOOR = -9999.0


def chat_logprobs(tokens: Sequence[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                **_openai(token.piece, token.logprob),
                "top_logprobs": [_openai(piece, logprob) for _, piece, logprob in token.top],
            }
            for token in tokens
        ],
        "refusal": None,
    }


class TextOffsets:
    """Where each token starts in the answer's text (characters), across a stream's chunks."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._chars = 0

    def next(self, piece: bytes) -> int:
        start = self._chars
        self._chars += len(self._decoder.decode(piece))
        return start


def completion_logprobs(tokens: Sequence[TokenLogprob], offsets: TextOffsets) -> dict[str, Any]:
    return {
        "tokens": [_text(token.piece) for token in tokens],
        "token_logprobs": [_finite(token.logprob) for token in tokens],
        "top_logprobs": [
            {_text(piece): _finite(logprob) for _, piece, logprob in token.top} for token in tokens
        ],
        "text_offset": [offsets.next(token.piece) for token in tokens],
    }


def llama_probabilities(tokens: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
    return [
        {
            **_llama(token.token, token.piece, token.logprob),
            "top_logprobs": [_llama(*alternative) for alternative in token.top],
        }
        for token in tokens
    ]


def _openai(piece: bytes, logprob: float) -> dict[str, Any]:
    return {"token": _text(piece), "logprob": _finite(logprob), "bytes": list(piece)}


def _llama(token: int, piece: bytes, logprob: float) -> dict[str, Any]:
    return {"id": token, "token": _text(piece), "bytes": list(piece), "logprob": _finite(logprob)}


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def _finite(logprob: float) -> float:
    return max(logprob, _FLOOR)
