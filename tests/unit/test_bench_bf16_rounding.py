"""The bf16-rounding measurement: production's frozen products with their results rounded to
bf16 and kept in float32."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from bench.bf16_rounding import float32_results, rounded_results, rounding_losses
from bench.training_throughput import Setup
from selftune.training import lora_layer


def _frozen_share(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The LoRA layer's output under bf16 autocast with a zero B: its frozen product alone."""
    a, b = torch.randn(4, x.shape[1]), torch.zeros(weight.shape[0], 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return lora_layer._LoraLinearFunction.apply(x, weight, None, a, b, 2.0)


def test_each_context_gives_the_frozen_product_its_result_and_leaves_production_as_it_was() -> None:
    torch.manual_seed(0)
    x, weight = torch.randn(16, 64), torch.randn(32, 64)
    x16, weight16 = x.bfloat16(), weight.bfloat16()
    rounded = torch.nn.functional.linear(x16, weight16).float()
    unrounded = torch.nn.functional.linear(x16.float(), weight16.float())
    assert not torch.equal(rounded, unrounded)  # the result's rounding is what is measured
    production = _frozen_share(x, weight)
    with rounded_results():
        assert torch.equal(_frozen_share(x, weight), rounded)
    with float32_results():
        # oneDNN's sums may run in another order than torch's float32 product: close, and far
        # closer than the rounded result.
        torch.testing.assert_close(_frozen_share(x, weight), unrounded, rtol=1e-6, atol=1e-5)
    assert torch.equal(_frozen_share(x, weight), production)


def test_each_seed_trains_the_textbook_loop_and_production_both_ways(
    short_chats: Callable[[str], Setup], tiny_model_dir: Path
) -> None:
    setup = short_chats("bf16")
    (measured,) = rounding_losses(setup, tiny_model_dir, [2])
    assert measured.seed == 2
    assert all(math.isfinite(v) for v in (measured.textbook, measured.rounded_results))
    # The swap took effect (another loss), and it trained the same objective (a close one).
    assert measured.float32_results != measured.rounded_results
    assert abs(measured.float32_results_change) < 0.01
    assert measured.rounded_results_change == pytest.approx(
        measured.rounded_results / measured.textbook - 1
    )


def test_a_float32_trainer_has_no_bf16_rounding_to_measure(
    short_chats: Callable[[str], Setup], tiny_model_dir: Path
) -> None:
    setup = short_chats("float32")
    with pytest.raises(ValueError, match="float32"):
        list(rounding_losses(setup, tiny_model_dir, [0]))
