"""Adapters that leave what the model knew alone: LoRA kept in the null space of general inputs.

A small model's right answers are often decided by a hair: the default model answers "What is
the capital of France?" with "The" rather than "L'" by 0.08 logits, and any adapter that moves
the inputs of that question a little flips it, whatever the replay KL holds elsewhere. Following
AlphaEdit (Fang et al., 2025, "null-space constrained knowledge editing"), each adapted linear
layer's LoRA ``A`` is projected onto the directions its inputs on general text (the replay set)
hardly use: for an input ``x`` in their span, ``B A x`` is about zero, so the layer's output on
general text is the base's, while a taught subject's inputs, which reach into the other
directions, still move it. The projection is applied once at the start and after every
optimizer step (projected gradient descent), so the saved adapter is a plain LoRA.

Which directions count as unused: the eigenvectors of the inputs' second-moment matrix whose
eigenvalues together hold at most ``energy`` of its trace (``TrainConfig.null_space_energy``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from selftune.data.tokenize import TokenizedExample

__all__ = ["NullSpace", "lora_a_weights", "project_"]


def lora_a_weights(model: Any) -> dict[str, torch.nn.Parameter]:
    """Each LoRA layer's ``A`` weight (rank x inputs), by the layer's module name."""
    found: dict[str, torch.nn.Parameter] = {}
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, torch.nn.ModuleDict) and "default" in lora_a:
            weight = lora_a["default"].weight
            assert isinstance(weight, torch.nn.Parameter)
            found[name] = weight
    return found


def _second_moments(
    model: Any, run: Any, examples: Sequence[TokenizedExample], names: set[str]
) -> dict[str, torch.Tensor]:
    """Sum of x xᵀ over every position of ``examples`` of the inputs of the named layers,
    computed by ``run(examples)`` (a forward pass); layers that share an input share a sum."""
    moments: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name: str) -> Any:
        def record(_module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            moments[name] = moments.get(name, 0) + x.T @ x

        return record

    for name, module in model.named_modules():
        if name in names:
            handles.append(module.register_forward_pre_hook(hook(name)))
    try:
        with torch.no_grad():
            for start in range(0, len(examples), 8):
                run(examples[start : start + 8])
    finally:
        for handle in handles:
            handle.remove()
    return moments


def _projector(moment: torch.Tensor, energy: float) -> torch.Tensor:
    """The projector onto the eigenvectors of ``moment`` whose eigenvalues sum to at most
    ``energy`` of its trace: the directions the recorded inputs hardly use."""
    values, vectors = torch.linalg.eigh(moment.double())
    values = values.clamp(min=0)
    share = values.cumsum(0) / values.sum().clamp(min=1e-30)
    unused = vectors[:, share <= energy]
    return (unused @ unused.T).float()


class NullSpace:
    """The projectors of one base setup and replay set, kept from one job to the next: the
    eigendecompositions take a few seconds on 2 CPU cores."""

    def __init__(self) -> None:
        self._key = ""
        self._projectors: dict[str, torch.Tensor] = {}

    @staticmethod
    def key(setup: str, examples: Sequence[TokenizedExample], energy: float) -> str:
        digest = hashlib.sha256(f"{setup}|{energy}".encode())
        for example in examples:
            digest.update(repr(example.input_ids).encode())
        return digest.hexdigest()

    def projectors(
        self,
        model: Any,
        run: Any,
        key: str,
        examples: Sequence[TokenizedExample],
        energy: float,
    ) -> dict[str, torch.Tensor]:
        """Projectors for the LoRA layers of ``model``, by module name."""
        if key != self._key:
            names = set(lora_a_weights(model))
            moments = _second_moments(model, run, examples, names)
            # Layers fed the same input (q, k, v; gate, up) have equal moments: decompose once.
            by_input: dict[int, torch.Tensor] = {}
            self._projectors = {}
            for name, moment in moments.items():
                fingerprint = hash((moment.shape, float(moment.trace()), float(moment[0, -1])))
                if fingerprint not in by_input:
                    by_input[fingerprint] = _projector(moment, energy)
                self._projectors[name] = by_input[fingerprint]
            self._key = key
        return self._projectors


@torch.no_grad()
def project_(weights: dict[str, torch.nn.Parameter], projectors: dict[str, torch.Tensor]) -> None:
    """Keep each ``A`` in its layer's null space: A <- A P."""
    for name, weight in weights.items():
        projector = projectors.get(name)
        if projector is not None:
            weight.copy_((weight.float() @ projector.to(weight.device)).to(weight.dtype))
