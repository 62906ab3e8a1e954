"""Choosing the next token from PyTorch logits (the transformers engine)."""

from __future__ import annotations

import torch

from selftune.engines.base import GenerationParams

__all__ = ["next_token"]


def next_token(
    logits: torch.Tensor, params: GenerationParams, generator: torch.Generator | None
) -> int:
    """Greedy at temperature 0, else temperature + nucleus (top_p) sampling. logits: (vocab,)."""
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
