"""The LoRA training loop, written out in full: setup, train, save.

Each optimizer step sees the new material (sampled if there is more than fits) together with a
few replay sequences, the base model's own answers to general prompts, so the adapter learns the
new material without unlearning what the model knew.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from selftune.data.tokenize import IGNORE_INDEX, TokenizedExample
from selftune.models.base import load_model

__all__ = ["TrainConfig", "TrainResult", "collate", "train_lora", "use_bf16"]


def use_bf16(precision: str) -> bool:
    """Whether to autocast to bfloat16: asked for, or 'auto' on a CPU with native bf16."""
    if precision != "auto":
        return precision == "bf16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    rank: int = 16
    alpha: float = 32.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    learning_rate: float = 1e-3
    steps: int = 40
    batch_size: int = 8
    replay_per_step: int = 4
    warmup_steps: int = 2
    seed: int = 0
    bf16: bool = False  # autocast matmuls to bfloat16; LoRA weights stay float32

    def __post_init__(self) -> None:
        if self.replay_per_step >= self.batch_size:
            raise ValueError("replay_per_step must be smaller than batch_size")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    losses: list[float]
    seconds: float
    tokens: int

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


ProgressFn = Callable[[int, int, float], None]  # (step, total_steps, loss)


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example. Returns input_ids, attention_mask, labels: (B, T)."""
    longest = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _batches(
    new: Sequence[TokenizedExample], replay: Sequence[TokenizedExample], config: TrainConfig
) -> list[list[TokenizedExample]]:
    rng = random.Random(config.seed)
    n_replay = min(config.replay_per_step, len(replay))
    n_new = config.batch_size - n_replay
    order: list[TokenizedExample] = []
    batches = []
    for _ in range(config.steps):
        picked: list[TokenizedExample] = []
        while len(picked) < min(n_new, len(new)):
            if not order:
                order = list(new)
                rng.shuffle(order)
            picked.append(order.pop())
        batches.append(picked + rng.sample(list(replay), n_replay))
    return batches


def train_lora(
    base_dir: Path,
    new: Sequence[TokenizedExample],
    replay: Sequence[TokenizedExample],
    config: TrainConfig,
    *,
    pad_id: int,
    progress: ProgressFn | None = None,
) -> tuple[Any, TrainResult]:
    """Train a LoRA adapter on ``new`` (+ replay). Returns the PEFT model and the figures."""
    from peft import LoraConfig, get_peft_model

    if not new:
        raise ValueError("no examples to train on")
    torch.manual_seed(config.seed)
    model = load_model(base_dir)
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,  # type: ignore[arg-type]  # PEFT accepts floats
        target_modules=list(config.target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)

    losses: list[float] = []
    tokens = 0
    started = time.perf_counter()
    for step, batch in enumerate(_batches(new, replay, config)):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        inputs = collate(batch, pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        tokens += int(inputs["attention_mask"].sum())
        if progress is not None:
            progress(step + 1, config.steps, losses[-1])
    model.eval()
    return model, TrainResult(losses, time.perf_counter() - started, tokens)
