"""Choosing the next token from PyTorch logits (the transformers engine)."""

from __future__ import annotations

import torch

from selftune.engines.base import GenerationParams

__all__ = ["next_token", "penalized"]


def penalized(logits: torch.Tensor, recent: list[int], params: GenerationParams) -> torch.Tensor:
    """``logits`` with llama.cpp's repetition penalties on the ``recent`` tokens (the last
    ``penalty_last_n`` of the prompt and the answer): a repeated token's logit is divided by
    ``repeat_penalty`` (multiplied where negative), then lowered by ``presence_penalty`` and by
    ``frequency_penalty`` per repetition. logits: (vocab,)."""
    if not params.penalizes or not recent:
        return logits
    tokens, counts = torch.tensor(recent).unique(return_counts=True)
    logits = logits.clone()
    seen = logits[tokens]
    seen = torch.where(seen > 0, seen / params.repeat_penalty, seen * params.repeat_penalty)
    seen = seen - counts * params.frequency_penalty - params.presence_penalty
    logits[tokens] = seen
    return logits


def next_token(
    logits: torch.Tensor, params: GenerationParams, generator: torch.Generator | None
) -> int:
    """Greedy at temperature 0, else temperature, then top-k, nucleus (top_p) and min-p
    sampling. logits: (vocab,)."""
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float() / params.temperature
    if 0 < params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs * keep)
    if params.min_p > 0:
        probs = probs * (probs >= params.min_p * probs.max())
    return int(torch.multinomial(probs, 1, generator=generator))
