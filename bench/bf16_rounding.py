"""What rounding the LoRA layers' frozen products' results to bf16 costs production's eval loss.

``python -m bench.bf16_rounding [--long] [--seeds N]`` trains production's trainer (bf16,
uncompiled) on the throughput benchmark's chats, seed by seed, in two ways:

- its frozen products as torch computes them on a CPU: inputs in bf16, sums in float32, the
  result rounded to bf16 (8 significant bits);
- the same bf16 inputs with the result kept in float32, as production computes them with the
  opt-in ``train.onednn_products`` (``training.onednn``: the system's oneDNN, a bf16 kernel
  with a float32 output, at bf16 speed). Where that library is missing, this measures the same
  numbers through a float32 product of the bf16 values, 2-3 times slower: a measurement, not a
  way to train.

Each is compared with the textbook loop in float32 on the same seed, by eval loss of the adapter
on the float32 base as served, as the throughput benchmark compares them. The product swapped
is the LoRA layers' frozen one (``training.lora_layer.frozen_product``); the default settings
put adapters on every linear layer above the split, so that is all of them there. The layers
below (run once, their states kept), attention's products and the output layer stay as they
are. Not part of ``make bench``: a seed of the 128-token chats takes about 2 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from bench import training_throughput as throughput
from bench.seed_statistics import MeanChange
from bench.training_throughput import selftune_trainer, textbook_trainer, trained_eval_loss
from selftune.config import load_settings
from selftune.models.base import materialize, resolve_base_model
from selftune.training import lora_layer
from selftune.training.pipeline import train_config

__all__ = ["RoundingLosses", "float32_results", "main", "rounded_results", "rounding_losses"]

# lora_layer.frozen_product's signature: (x, weight, bias, use_onednn) -> x W^T + b
Product = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, bool], torch.Tensor]

_PRODUCTION = lora_layer.frozen_product  # kept: the contexts below swap the module's


def _rounded_product(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, use_onednn: bool = False
) -> torch.Tensor:
    """torch's product, whatever the layer asks for: for bf16 inputs, the result in bf16."""
    return torch.nn.functional.linear(x, weight, bias)


def _onednn_product(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, use_onednn: bool = False
) -> torch.Tensor:
    """Production's product with the opt-in (``train.onednn_products``) on for every layer."""
    return _PRODUCTION(x, weight, bias, True)


def _float32_product(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, use_onednn: bool = False
) -> torch.Tensor:
    """x W^T + b of the (bf16) inputs as they are, multiplied and returned in float32."""
    return torch.nn.functional.linear(
        x.float(), weight.float(), None if bias is None else bias.float()
    )


def _onednn_kernel() -> str | None:
    """The kernel production's opt-in would use here (oneDNN's), or None where it cannot."""
    from selftune.training import onednn  # the opt-in's module: imported only when measuring

    return onednn.implementation() if onednn.available() else None


@contextlib.contextmanager
def _frozen_product(product: Product) -> Iterator[None]:
    kept = lora_layer.frozen_product
    lora_layer.frozen_product = product  # type: ignore[assignment]  # swapped on purpose
    try:
        yield
    finally:
        lora_layer.frozen_product = kept


def rounded_results() -> contextlib.AbstractContextManager[None]:
    """Within it, the LoRA layers' frozen products are torch's: for bf16 inputs, the result
    rounded to bf16."""
    return _frozen_product(_rounded_product)


def float32_results() -> contextlib.AbstractContextManager[None]:
    """Within it, the LoRA layers' frozen products keep their results in float32: production's
    product under ``train.onednn_products`` where oneDNN is available, else a float32 product
    of the bf16 values."""
    return _frozen_product(_onednn_product if _onednn_kernel() else _float32_product)


@dataclasses.dataclass(frozen=True)
class RoundingLosses:
    """One seed's eval losses: the textbook loop in float32, and production's bf16 trainer with
    its frozen products' results rounded to bf16 and kept in float32."""

    seed: int
    textbook: float
    rounded_results: float
    float32_results: float

    @property
    def rounded_results_change(self) -> float:
        return self.rounded_results / self.textbook - 1

    @property
    def float32_results_change(self) -> float:
        return self.float32_results / self.textbook - 1


def rounding_losses(
    setup: throughput.Setup, base_dir: Path, seeds: Sequence[int]
) -> Iterator[RoundingLosses]:
    """Each seed's :class:`RoundingLosses`, trained on ``setup``'s chats (production bf16)."""
    if not setup.config.bf16:
        raise ValueError("production trains in float32 here: there is no bf16 rounding to measure")
    # Uncompiled: a compiled layer could keep the product it was compiled with. The contexts
    # choose the product, whatever the settings' train.onednn_products says.
    config = dataclasses.replace(setup.config, compile=False, onednn_products=False)
    uncompiled = dataclasses.replace(setup, config=config)
    for seed in seeds:
        seeded = uncompiled.with_seed(seed)
        arguments = seeded.trainer_arguments(base_dir)
        textbook = trained_eval_loss(textbook_trainer(*arguments), seeded, base_dir)
        with rounded_results():
            rounded = trained_eval_loss(selftune_trainer(*arguments), seeded, base_dir)
        with float32_results():
            unrounded = trained_eval_loss(selftune_trainer(*arguments), seeded, base_dir)
        yield RoundingLosses(seed, textbook, rounded, unrounded)


def _report(losses: Sequence[RoundingLosses]) -> None:
    compared = {
        "results rounded to bf16": [c.rounded_results_change for c in losses],
        "results in float32": [c.float32_results_change for c in losses],
        "float32 results minus rounded ones": [
            c.float32_results_change - c.rounded_results_change for c in losses
        ],
    }
    for name, changes in compared.items():
        print(f"  {name}: {MeanChange.of(changes)}")


def main(argv: Sequence[str] | None = None) -> int:
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--long", action="store_true", help="the 128-token chats (default: the 50-token ones)"
    )
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument(
        "--seeds",
        type=int,
        default=16,
        help="seeds to train on (one seed's change has an sd of about 0.3-0.4%%: 16 give a "
        "95%% interval about +-0.15%% wide)",
    )
    arguments = parser.parse_args(argv)
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    settings = load_settings()
    base_dir = materialize(resolve_base_model(settings.base_model), settings.cache_dir)
    config = train_config(settings, base_dir)
    if not config.bf16:
        print(f"production trains in float32 on this {config.device}: no bf16 rounding to measure")
        return 0
    workload = throughput.WORKLOADS[1 if arguments.long else 0]
    setup = throughput.set_up(workload, settings, base_dir, arguments.first_seed)
    print(f"bf16 rounding of products' results ({workload.name}, base model {base_dir.name})")
    kernel = _onednn_kernel()
    if kernel:
        print(f"  float32 results: production's with train.onednn_products, by oneDNN ({kernel})")
    else:
        print("  float32 results: a float32 product of the bf16 values (oneDNN not available)")
    seeds = range(arguments.first_seed, arguments.first_seed + arguments.seeds)
    losses: list[RoundingLosses] = []
    for measured in rounding_losses(setup, base_dir, seeds):
        losses.append(measured)
        print(
            f"  seed {measured.seed}: textbook float32 {measured.textbook:.6f}, results "
            f"rounded {measured.rounded_results_change:+.2%}, in float32 "
            f"{measured.float32_results_change:+.2%}",
            flush=True,
        )
    _report(losses)
    again = " --long" if arguments.long else ""
    print(
        f"reproduce: .venv/bin/python -m bench.bf16_rounding{again} "
        f"--first-seed {arguments.first_seed} --seeds {arguments.seeds}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
