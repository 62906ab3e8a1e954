"""The throughput benchmark counts the FLOPs a step does, adapters on some layers or all."""

from __future__ import annotations

from pathlib import Path

from bench.training_throughput import WeightCounts
from selftune.models.base import load_model
from selftune.training.trainer import TrainConfig


def test_the_backward_pass_is_counted_only_where_it_goes(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir)
    every = WeightCounts.of(model, TrainConfig(rank=4, target_modules=("q_proj", "v_proj")))
    top = WeightCounts.of(
        model, TrainConfig(rank=4, target_modules=("q_proj", "v_proj"), layers=(1,))
    )
    # Tiny Llama: hidden 64, 4 heads of 16, 2 KV heads, MLP 128; per layer q 64x64, k and v
    # 64x32, o 64x64, gate/up/down 64x128 each.
    per_layer = 64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3
    assert every.body == top.body == 2 * per_layer
    assert every.body_backward == 2 * per_layer and top.body_backward == per_layer
    per_layer_lora = 4 * (64 + 64) + 4 * (64 + 32)  # q and v, rank 4
    assert every.lora == 2 * per_layer_lora and top.lora == per_layer_lora
    assert top.flops(10, 2) == 10 * (2 * 2 * per_layer + 2 * per_layer + 6 * per_layer_lora) + (
        2 * 4 * every.head
    )
    # Layer 0 ran for 3 of the 10 positions only (its outputs kept for the others).
    assert (
        top.flops(10, 2, frozen_positions=3)
        == (3 * 2 * per_layer + 10 * (2 * per_layer + 2 * per_layer + 6 * per_layer_lora))
        + 2 * 4 * every.head
    )
