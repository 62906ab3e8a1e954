"""The throughput benchmark's loss comparison over several seeds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bench.training_throughput import Setup, losses_on_seeds


def test_each_seed_trains_both_loops_afresh_to_the_same_float32_loss(
    short_chats: Callable[[str], Setup], tiny_model_dir: Path
) -> None:
    setup = short_chats("float32")
    compared = losses_on_seeds(setup, tiny_model_dir, [3, 4])
    assert [c.seed for c in compared] == [3, 4]
    # In float32 the two loops differ by rounding only: the same batches, start and schedule.
    for c in compared:
        assert c.production == pytest.approx(c.textbook, rel=1e-4)
        assert c.change == pytest.approx(0.0, abs=1e-4)
        assert c.textbook_bf16 is None  # production trains in float32: no bf16 loop beside it
    # Another seed starts another adapter on other batches: not one run counted twice.
    assert compared[0].textbook != compared[1].textbook


def test_with_bf16_the_textbook_loop_also_trains_under_bf16_autocast(
    short_chats: Callable[[str], Setup], tiny_model_dir: Path
) -> None:
    """Where production trains in bf16, each seed also trains the textbook loop the usual bf16
    way (``torch.autocast``), so the benchmark sets what that costs beside production's bf16."""
    setup = short_chats("bf16")
    (compared,) = losses_on_seeds(setup, tiny_model_dir, [3])
    assert compared.textbook_bf16 is not None
    change = compared.bf16_autocast_change
    assert change is not None
    assert change == pytest.approx(compared.textbook_bf16 / compared.textbook - 1)
    # The products did run in bf16 (the loss moved), and it trained the same objective.
    assert change != 0.0 and abs(change) < 0.01
