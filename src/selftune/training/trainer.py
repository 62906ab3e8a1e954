"""The LoRA training loop, written out in full: setup, train, save.

Each optimizer step sees the new material (sampled if there is more than fits) together with a
few replay sequences, the base model's own answers to general prompts, so the adapter learns the
new material without unlearning what the model knew.
"""

from __future__ import annotations

import dataclasses
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
    replay_weight: float = 1.0
    warmup_steps: int = 2
    seed: int = 0
    bf16: bool = False  # autocast matmuls to bfloat16; LoRA weights stay float32

    def __post_init__(self) -> None:
        if self.replay_per_step >= self.batch_size:
            raise ValueError("replay_per_step must be smaller than batch_size")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    losses: list[float]  # the optimized loss: new material + replay_weight * KL on replay
    new_losses: list[float]  # cross-entropy on the new material alone
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
    """Linear warm-up, then constant: with a few dozen steps, decay only slows learning."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    return config.learning_rate


def _batches(
    n_new_examples: int, n_replay_examples: int, config: TrainConfig
) -> list[tuple[list[int], list[int]]]:
    """For each step: indices of the new examples and of the replay examples it trains on."""
    rng = random.Random(config.seed)
    n_replay = min(config.replay_per_step, n_replay_examples)
    n_new = min(config.batch_size - n_replay, n_new_examples)
    order: list[int] = []
    batches = []
    for _ in range(config.steps):
        picked: list[int] = []
        while len(picked) < n_new:
            if not order:
                order = list(range(n_new_examples))
                rng.shuffle(order)
            picked.append(order.pop())
        batches.append((picked, rng.sample(range(n_replay_examples), n_replay)))
    return batches


def _answer_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Per row, log-probabilities at the positions that predict a loss token: (n_i, vocab)."""
    targets = labels[:, 1:]  # position t predicts token t+1
    return [
        torch.log_softmax(logits[row, :-1][targets[row] != IGNORE_INDEX].float(), dim=-1)
        for row in range(logits.shape[0])
    ]


@torch.no_grad()
def _reference_log_probs(
    model: Any, replay: Sequence[TokenizedExample], pad_id: int, bf16: bool
) -> list[torch.Tensor]:
    """The base model's next-token distributions on the replay answers, computed once."""
    result: list[torch.Tensor] = []
    for start in range(0, len(replay), 8):
        inputs = collate(replay[start : start + 8], pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        result.extend(_answer_log_probs(logits.logits, inputs["labels"]))
    return result


def _step_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    n_new: int,
    reference: list[torch.Tensor],
    config: TrainConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on the new rows + KL(base || model) on the replay rows after them.

    The KL term keeps the model's whole distribution on general prompts where the base had it,
    which protects answers that were right by a small margin far better than training on the
    base model's greedy text would. Returns (total loss, new-material loss).
    """
    vocab = logits.shape[-1]
    new_loss = torch.nn.functional.cross_entropy(
        logits[:n_new, :-1].reshape(-1, vocab).float(),
        labels[:n_new, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
    )
    if not reference:
        return new_loss, new_loss
    current = _answer_log_probs(logits[n_new:], labels[n_new:])
    kl_sum = sum(
        (ref.exp() * (ref - cur)).sum() for ref, cur in zip(reference, current, strict=True)
    )
    n_tokens = sum(ref.shape[0] for ref in reference)
    kl = kl_sum / max(n_tokens, 1)
    assert isinstance(kl, torch.Tensor)
    return new_loss + config.replay_weight * kl, new_loss


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
    # With bf16, the frozen base is stored in bf16 (autocast would re-cast every weight at every
    # step) and attention runs eagerly (SDPA's bf16 backward is several times slower on CPU).
    # PEFT keeps the trainable LoRA weights in float32.
    model = (
        load_model(base_dir, dtype="bfloat16", attention="eager")
        if config.bf16
        else load_model(base_dir)
    )
    reference = _reference_log_probs(model, replay, pad_id, config.bf16)
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
    new_losses: list[float] = []
    tokens = 0
    started = time.perf_counter()
    for step, (new_ids, replay_ids) in enumerate(_batches(len(new), len(replay), config)):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        inputs = collate([new[i] for i in new_ids] + [replay[i] for i in replay_ids], pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            logits = model(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            ).logits
        loss, new_loss = _step_loss(
            logits, inputs["labels"], len(new_ids), [reference[i] for i in replay_ids], config
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        new_losses.append(float(new_loss.detach()))
        tokens += int(inputs["attention_mask"].sum())
        if progress is not None:
            progress(step + 1, config.steps, new_losses[-1])
    model.eval()
    return model, TrainResult(losses, new_losses, time.perf_counter() - started, tokens)
