"""The decoder layers below the lowest adapter: run once per example, their outputs kept.

With adapters on the top layers only (``TrainConfig.layers``), the layers below them are frozen
and nothing in them trains: an example's hidden states where they end are the same at every step
that sees it. A job takes 25 steps over a few new chats and a few dozen replay prompts, so each
example comes back many times; :class:`FrozenLayers` runs the frozen layers once per example
(without autograd) and each step starts at the first adapted layer from the kept states. On the
default model with adapters on the top 15 of 30 layers, that skips half of the forward pass, a
third of a step.

A position's state depends only on its own example's tokens up to it (packed rows keep examples
apart, ``training.packing``), so states are kept per example and laid out again in whatever
batch the example comes in. Replay prompts are the same for every job; a worker keeps one
:class:`FrozenLayers` from job to job, so after the first job only the new chats are computed.

Only decoder stacks whose forward pass is known to be "embeddings, layers, norm" with one mask
for every layer are split (:data:`_SPLIT_MODEL_TYPES`); others train on the whole stack at every
step, which gives the same numbers, slower.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from selftune.data.tokenize import TokenizedExample
from selftune.training.packing import PackedBatch, needed_length, pack

__all__ = ["FrozenLayers", "run_layers", "split_layer"]

# Decoder stacks run here layer by layer as their own forward runs them; checked by a test each.
_SPLIT_MODEL_TYPES = frozenset({"llama", "qwen2"})
# Kept states are evicted, least recently used first, above this size: 256 MB holds about
# 110,000 tokens of the default model (576 floats a token), some 2,000 short chats.
_MAX_BYTES = 256 * 2**20


def split_layer(backbone: Any, adapted_layers: Sequence[int]) -> int:
    """The first decoder layer a step must run (the lowest with an adapter), or 0 when the
    stack is not one this module can split, or every layer has an adapter."""
    config = backbone.config
    if not adapted_layers or getattr(config, "model_type", "") not in _SPLIT_MODEL_TYPES:
        return 0
    if getattr(config, "attention_dropout", 0.0):
        return 0  # a different dropout mask at every step: nothing to keep
    return min(adapted_layers)


def run_layers(
    backbone: Any, hidden: torch.Tensor, batch: PackedBatch, layers: Sequence[torch.nn.Module]
) -> torch.Tensor:
    """``hidden`` (R, L, hidden) through ``layers`` of ``backbone`` as its forward runs them,
    with the packed batch's mask and positions."""
    position_embeddings = backbone.rotary_emb(hidden, position_ids=batch.position_ids)
    for layer in layers:
        hidden = layer(
            hidden,
            attention_mask=batch.attention_mask,
            position_embeddings=position_embeddings,
            position_ids=batch.position_ids,
            use_cache=False,
        )
    return hidden


class FrozenLayers:
    """Each example's hidden states after the frozen layers, computed once and kept.

    Kept states belong to one base setup (model, precision, device) and split (:meth:`key`);
    asking with another key drops them all.
    """

    def __init__(self, max_bytes: int = _MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._key = ""
        self._states: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.computed_positions = 0  # positions run through the frozen layers, all told

    @staticmethod
    def key(base_setup: str, split: int) -> str:
        return hashlib.sha256(f"{base_setup}|{split}".encode()).hexdigest()

    def hidden(
        self,
        backbone: Any,
        key: str,
        split: int,
        examples: Sequence[TokenizedExample],
        batch: PackedBatch,
    ) -> torch.Tensor:
        """The hidden states entering layer ``split`` for ``batch``, the packing of
        ``examples``: (R, L, hidden), padding zeros. Examples not kept yet are computed now."""
        self.fill(backbone, key, split, examples, batch.attention_mask.dtype)
        names = [_name(example) for example in examples]
        rows, length = batch.input_ids.shape
        states = [self._states[name] for name in names]
        flat = states[0].new_zeros(rows * length, states[0].shape[-1])
        for index, state in enumerate(states):
            flat.index_copy_(0, batch.example_positions(index), state)
        self._evict(keep=set(names))
        return flat.view(rows, length, -1)

    def fill(
        self,
        backbone: Any,
        key: str,
        split: int,
        examples: Sequence[TokenizedExample],
        mask_dtype: torch.dtype,
    ) -> None:
        """Compute the states of those ``examples`` not kept yet, all in one batch."""
        if key != self._key:
            self._states.clear()
            self._bytes = 0
            self._key = key
        missing = {_name(example): example for example in examples}
        for name in list(missing):
            if name in self._states:
                self._states.move_to_end(name)
                del missing[name]
        if missing:
            self._compute(backbone, split, list(missing.values()), mask_dtype)

    @torch.no_grad()
    def _compute(
        self,
        backbone: Any,
        split: int,
        examples: list[TokenizedExample],
        mask_dtype: torch.dtype,
    ) -> None:
        device = backbone.embed_tokens.weight.device
        batch = pack(examples, 0, mask_dtype=mask_dtype).to(device)  # padding ids are not read
        hidden = run_layers(
            backbone, backbone.embed_tokens(batch.input_ids), batch, backbone.layers[:split]
        )
        flat = hidden.reshape(-1, hidden.shape[-1])
        for index, example in enumerate(examples):
            state = flat[batch.example_positions(index)]  # a copy: indexing by a tensor
            self._states[_name(example)] = state
            self._bytes += state.numel() * state.element_size()
        self.computed_positions += batch.computed

    def _evict(self, keep: set[tuple[int, ...]]) -> None:
        while self._bytes > self.max_bytes:
            oldest = next((name for name in self._states if name not in keep), None)
            if oldest is None:
                return  # all in use by this step
            state = self._states.pop(oldest)
            self._bytes -= state.numel() * state.element_size()


def _name(example: TokenizedExample) -> tuple[int, ...]:
    """What an example's states depend on: its tokens up to the last one a step reads."""
    return tuple(example.input_ids[: needed_length(example)])
