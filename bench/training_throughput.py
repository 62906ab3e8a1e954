"""Training throughput: selftune's LoRA trainer against a textbook PEFT loop, and the CPU's peak.

Run with ``make bench`` (or ``python -m bench.training_throughput``). Learning latency is mostly
training time, so this benchmark answers whether the trainer uses the machine well, in one run so
that every figure is measured under the same (often shared, noisy) load:

1. The machine's matrix-multiply peak: ``torch.matmul`` GFLOP/s in float32 and bfloat16 on the
   default model's MLP shape at 2048 tokens (2048x576 @ 576x1536), a large square one, and the
   MLP shape at one training batch of tokens (256 rows), best of a few repeats with torch's
   default thread count, measured before, between and after the trainers. The best shape of each
   dtype is its "peak".
2. Tokens per second (the examples' tokens, padding not counted) of ``train_lora`` with the
   production ``TrainConfig`` (``train_config(load_settings(), base)``), against a textbook
   baseline: transformers + PEFT ``get_peft_model`` with the same rank/alpha/targets, float32,
   AdamW, and the plain loop ``loss = model(**batch).loss; loss.backward(); opt.step();
   opt.zero_grad()``. Both see the same batches of the same tokenized chats, with the same
   batch size, steps and seed; the first steps are warm-up and not timed. Where production
   trains in bf16, the textbook loop also runs under ``torch.autocast`` to bf16, the usual way
   to train in bf16, so the table shows what that gives and costs beside what production's
   bf16 does. The selftune trainer also runs in the other precision (float32 if production
   autocasts to bf16) and, where production compiles its decoder layers (``train.compile``),
   uncompiled, so the table shows what autocast and compiling each buy. Two workloads, each a
   round of its own: short teaching chats (a question and a one-sentence answer, about 50
   tokens: what a corrected chat looks like), and the same questions with answers that go on
   about the person, about 128 tokens, as in the issue's reference loop (batch 4 x 128),
   where production's other precision and compile setting are not timed. Longer rows make
   larger matrix products, which a CPU computes nearer its peak. Replay is off (an empty
   replay list): the baseline has no KL term, and with replay the trainer would do extra work
   per token that the baseline does not.
3. Achieved FLOP/s, two ways. With LoRA the frozen weights get no gradient, so a position
   costs 2N FLOPs forward, where N counts the weights of every frozen linear layer, plus 2N'
   backward (gradient w.r.t. activations only), where N' counts those of the decoder layers
   the backward pass goes through: from the lowest one with an adapter up (all of them when
   every layer has one). The adapters are trained fully (forward, activation and weight
   gradients): 6 * N_lora; the LM head costs 4 * N_head where it runs. Attention scores and
   elementwise work are left out, so both figures are slight underestimates.

   - *model* GFLOP/s (as in "model FLOPs utilization"): tokens/s times what training on these
     examples takes, each example on its own, the LM head only where a loss is taken:
     ``tokens * (2 * N_body + 2 * N'_body + 6 * N_lora) + loss_positions * 4 * N_head``. The
     same yardstick for every trainer, so it moves with tokens/s.
   - *computed* GFLOP/s: what each trainer actually multiplied. The textbook loop computes
     padding and the LM head at every position; selftune's packed batches compute a prompt
     prefix the examples share once per row (``selftune.training.packing``), and the layers
     below the adapters once per example, not at every step that sees it
     (``selftune.training.frozen_layers``).

   Each is printed as a share of the measured peaks too. The model figure's share is the
   model FLOPs utilization (MFU, as defined in the PaLM paper: observed tokens/s against what
   the peak would give, work a trainer avoids or repeats not counted either way); the computed
   figure's is the hardware FLOPs utilization (HFU). A trainer that avoids work has an HFU
   below its MFU: the MFU says how fast it learns for the machine, the HFU how busy it keeps
   the machine while doing so.

   The 32 examples come round again after 8 steps, so the first timed steps see examples new
   to the trainer and the later ones only examples seen before (as a job's 25 steps over a few
   chats and the replay prompts do); the speed-up is also printed for each kind of step.
4. The loss after the same steps, on the last batch and over all examples, and the facts each
   trained model recalls (its greedy answer to a trained question names the taught value), so
   that speed never silently costs quality. Each adapter is evaluated on the float32 base, as
   the gate and serving load it: a trainer that holds its frozen base in bf16 is judged by what
   users get, not by its rounded copy of the base. bf16 and float32 training end a few tenths
   of a percent apart, either way round depending on the seed, so the eval losses of the
   textbook loop and production's trainer are also compared on more seeds (``--loss-seeds``,
   untimed, after the timed rounds: 8 of the short chats, 3 of the long ones by default), and
   so is the textbook loop under bf16 autocast where production trains in bf16. Each mean
   change is printed with its 95% interval (``bench.seed_statistics``), and with how much the
   textbook loop's own eval loss moves from seed to seed.

On a CUDA GPU (``train.device = 'auto'`` finds it) the same runs take place there: the peaks
include an 8192^3 product (a GPU reaches its peak only on large ones), the compiled variant is
added (production compiles on CPUs only), and so is an NF4 base where bitsandbytes is installed.
``bench/gpu_check.sh`` runs it on a lent GPU machine, on a model of the default model's shape.

The machine is shared and noisy: another process computing at the same time oversubscribes the
cores and can slow single steps tenfold, and the same matrix product ran anywhere between 86 and
153 GFLOP/s within seconds on a shared 2-core VM. So the trainers run step by step in turn on
the same batch, the order turning each step, and the speed-up is the median of the per-step
ratios; the output also says how much CPU other processes took meanwhile.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch

from bench.cpu_share import CpuShare
from bench.seed_statistics import MeanChange
from selftune.config import load_settings
from selftune.data.tokenize import (
    IGNORE_INDEX,
    TokenizedExample,
    collate,
    first_answer_tokens,
    tokenize_chat,
)
from selftune.engines.transformers_engine import greedy_answers, mean_answer_nll
from selftune.models.base import load_model, load_tokenizer, materialize, resolve_base_model
from selftune.models.templates import resolve_template
from selftune.training.device import use_bf16
from selftune.training.packing import pack
from selftune.training.pipeline import train_config
from selftune.training.trainer import LoraRun, TrainConfig

# The trainer's batch plan, lr schedule and adapter fields: the baseline trains the same way.
# Private, so a change of their signatures breaks this benchmark loudly rather than silently.
from selftune.training.trainer import _batches as trainer_batches
from selftune.training.trainer import _lora_fields as trainer_lora_fields
from selftune.training.trainer import _lr_at as trainer_lr_at

BATCH_SIZE = 4
WARMUP_STEPS = 2  # not timed: first calls allocate buffers and pick kernels
TIMED_STEPS = 16
N_EXAMPLES = 32
# (m, k, n): the model's MLP shape at 2048 tokens, a large square one, and the MLP shape at one
# training batch's worth of tokens (the ceiling the trainer's matmuls can actually reach).
BATCH_SHAPE = (256, 576, 1536)
PEAK_SHAPES = ((2048, 576, 1536), (2048, 2048, 2048), BATCH_SHAPE)
# A GPU reaches its peak only on products far larger than the model's.
GPU_PEAK_SHAPES = (*PEAK_SHAPES, (8192, 8192, 8192))
PEAK_REPEATS = 5
RECALL_TOKENS = 24  # enough for the answers' first sentence, which names the value

_NAMES = ["Arlen", "Brisa", "Corvin", "Dalia", "Emeric", "Fenna", "Galen", "Hester"]
_FACTS = [  # (question, answer, values the answer picks from)
    (
        "Which city does {n} live in?",
        "{n} lives in the harbour city of {v}.",
        ("Quenmoor", "Talvaro", "Brindlemere", "Oskeny"),
    ),
    (
        "What is {n}'s favourite colour?",
        "{n}'s favourite colour is {v}, without a doubt.",
        ("teal", "ochre", "crimson", "slate grey"),
    ),
    (
        "What instrument does {n} play?",
        "{n} plays the {v} every evening after dinner.",
        ("cello", "bassoon", "hurdy-gurdy", "harp"),
    ),
    (
        "What does {n} do for a living?",
        "{n} works as a {v} at the old observatory.",
        ("glazier", "cartographer", "beekeeper", "clockmaker"),
    ),
]

_DETAILS = [  # more about each person, to make longer chats
    "{n} was born in a small village by the sea and moved inland at nineteen.",
    "On weekends {n} walks along the old canal with a grey dog called Pepper.",
    "{n} keeps a notebook of every bird seen from the kitchen window.",
    "Friends say {n} bakes the best plum cake in the whole district.",
    "{n} learned to sail from an uncle who fished for herring in winter.",
]


@dataclasses.dataclass(frozen=True)
class Peak:
    dtype: torch.dtype
    shape: tuple[int, int, int]
    gflops: float


@dataclasses.dataclass(frozen=True)
class WeightCounts:
    """The weights a token multiplies: training FLOPs are counted from these."""

    body: int  # frozen linear weights but the LM head's
    body_backward: int  # ... of the layers the backward pass goes through
    head: int  # the LM head's
    lora: int  # trained adapter weights

    @classmethod
    def of(cls, model: torch.nn.Module, config: TrainConfig) -> WeightCounts:
        """The counts for training ``model`` (a plain causal LM) with ``config``'s adapters."""
        head = model.get_output_embeddings().weight.numel()  # type: ignore[operator]
        linears = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        depth = [_layer_index(name) for name, _ in linears]
        indices = {i for i in depth if i is not None}
        adapted = set(config.layers) if config.layers else indices
        lowest = min(adapted)
        return cls(
            body=sum(m.weight.numel() for _, m in linears) - head,
            body_backward=sum(
                m.weight.numel()
                for (_, m), i in zip(linears, depth, strict=True)
                if i is not None and i >= lowest
            ),
            head=head,
            lora=sum(
                config.rank * (m.in_features + m.out_features)
                for (name, m), i in zip(linears, depth, strict=True)
                if i in adapted and name.rsplit(".", 1)[-1] in config.target_modules
            ),
        )

    def flops(
        self, positions: int, head_positions: int, frozen_positions: int | None = None
    ) -> float:
        """Matrix-multiply FLOPs of one training step (forward and backward).

        Frozen weights: 2N forward + 2N backward (activation gradient only) where the backward
        pass goes; adapters: 6N (their weight gradients too); the LM head only at
        ``head_positions``. The layers below the backward pass run at ``frozen_positions``
        (default: every position); selftune's trainer keeps their outputs per example
        (``selftune.training.frozen_layers``) and runs them for examples not seen before.
        """
        frozen = positions if frozen_positions is None else frozen_positions
        above = 4 * self.body_backward + 6 * self.lora  # forward and backward
        below = 2 * (self.body - self.body_backward)  # forward only
        return positions * above + frozen * below + head_positions * 4 * self.head


def _layer_index(module_name: str) -> int | None:
    """The decoder layer a module belongs to (``model.layers.7.mlp.up_proj``: 7), if any."""
    match = re.search(r"\.layers\.(\d+)\.", module_name)
    return int(match.group(1)) if match else None


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """What each step of each trainer computes, from the trainer's own batch plan."""

    batches: list[list[int]]  # example indices per step
    tokens: list[int]  # the examples' tokens (non-pad)
    loss_positions: list[int]  # positions whose next token carries a loss
    padded: list[int]  # positions of the padded batch: what the textbook loop computes
    packed: list[int]  # positions selftune's packed batch computes (shared prefixes once a row)


@dataclasses.dataclass
class Timed:
    """One trainer in the benchmark: its steps' seconds and what each step computed."""

    name: str
    precision: str
    step: Callable[[], float]  # runs the next step, returns its loss on the batch
    finish: Callable[[], Any]  # the trained model
    step_flops: list[float]  # matrix-multiply FLOPs each step actually computes
    # Positions each step ran through the layers below the adapters (selftune's trainer keeps
    # their outputs per example); None: all of them at every step.
    frozen_positions: list[int] | None = None
    seconds: list[float] = dataclasses.field(default_factory=list)
    losses: list[float] = dataclasses.field(default_factory=list)
    eval_loss: float = float("nan")
    recalled: int = 0  # facts named in the greedy answers after training

    def run_step(self) -> None:
        started = time.perf_counter()
        self.losses.append(self.step())
        self.seconds.append(time.perf_counter() - started)

    def tokens_per_second(self, plan: StepPlan) -> float:
        """The median timed step's rate: a step slowed by another process's burst is not it."""
        return statistics.median(
            plan.tokens[i] / self.seconds[i] for i in range(WARMUP_STEPS, len(self.seconds))
        )

    def computed_gflops(self) -> float:
        """The median timed step's computed matrix-multiply GFLOP/s."""
        return statistics.median(
            self.step_flops[i] / self.seconds[i] / 1e9
            for i in range(WARMUP_STEPS, len(self.seconds))
        )

    def speedup_over(self, baseline: Timed, steps: Sequence[int] | None = None) -> float:
        """The median over timed ``steps`` (default: all) of baseline seconds / these seconds,
        step by step.

        Both ran the same batch one right after the other, so a slow patch of the machine
        slows both sides of a pair; the median leaves out pairs a burst hit on one side.
        """
        timed = range(WARMUP_STEPS, len(self.seconds)) if steps is None else steps
        return statistics.median(baseline.seconds[i] / self.seconds[i] for i in timed)

    def steps_by_novelty(self) -> tuple[list[int], list[int]]:
        """The timed steps whose batch had examples new to the frozen layers, and the others
        (all of a batch's examples seen before: the layers below the adapters skipped)."""
        timed = range(WARMUP_STEPS, len(self.seconds))
        if self.frozen_positions is None:
            return list(timed), []
        new = [i for i in timed if self.frozen_positions[i]]
        return new, [i for i in timed if not self.frozen_positions[i]]


def matmul_peaks(device: str = "cpu") -> list[Peak]:
    """Best-of-N ``torch.matmul`` GFLOP/s per dtype and shape: the ceiling training can reach.

    Measured again between and after the training rounds, keeping the best: a burst from another
    process during one measurement would otherwise understate the peak and flatter the trainers.
    bfloat16 is measured only where the device computes it natively: torch emulates it on CPUs
    without it, at about 1 GFLOP/s (the 2048^3 product alone took minutes on an AVX2-only EPYC).
    """
    dtypes = (torch.float32, torch.bfloat16) if use_bf16("auto", device) else (torch.float32,)
    shapes = GPU_PEAK_SHAPES if device == "cuda" else PEAK_SHAPES
    return [matmul_peak(shape, dtype, device) for dtype in dtypes for shape in shapes]


def matmul_peak(shape: tuple[int, int, int], dtype: torch.dtype, device: str = "cpu") -> Peak:
    """The best of ``PEAK_REPEATS`` timed ``torch.matmul`` calls of ``shape`` (m, k, n)."""
    m, k, n = shape
    a = torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    torch.matmul(a, b)  # warm-up: oneDNN or cuBLAS picks and caches its kernel
    best = float("inf")
    for _ in range(PEAK_REPEATS):
        _synchronize(device)
        started = time.perf_counter()
        torch.matmul(a, b)
        _synchronize(device)  # a GPU returns before it has computed
        best = min(best, time.perf_counter() - started)
    return Peak(dtype, shape, 2 * m * k * n / best / 1e9)


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@dataclasses.dataclass(frozen=True)
class Fact:
    """A made-up fact as a chat to train on, and the value an answer must name to recall it."""

    chat: list[dict[str, str]]
    value: str


def build_facts(details: int = 0) -> list[Fact]:
    """Synthetic Q/A chats about made-up people: the base model knows none of them.

    Each answer names the fact asked for, then tells ``details`` more made-up things about the
    person (0: about 50 tokens a chat; all of ``_DETAILS``: about 128)."""
    rng = random.Random(0)
    facts = []
    for name in _NAMES:
        told = " ".join(detail.format(n=name) for detail in _DETAILS[:details])
        for question, answer, values in _FACTS:
            value = rng.choice(values)
            chat = [
                {"role": "user", "content": question.format(n=name)},
                {
                    "role": "assistant",
                    "content": f"{answer.format(n=name, v=value)} {told}".strip(),
                },
            ]
            facts.append(Fact(chat, value))
    return facts[:N_EXAMPLES]


def facts_recalled(
    model: Any, tokenizer: Any, facts: Sequence[Fact], examples: Sequence[TokenizedExample]
) -> int:
    """How many facts the model's greedy answer to the question it was trained on names."""
    answers = greedy_answers(model, tokenizer, [_question(e) for e in examples], RECALL_TOKENS)
    return sum(f.value.lower() in a.lower() for f, a in zip(facts, answers, strict=True))


def _question(example: TokenizedExample) -> list[int]:
    """The example's tokens before its answer: the chat rendered up to the assistant's turn."""
    return first_answer_tokens(example, 0).input_ids


def _loss_positions(example: TokenizedExample) -> int:
    """Positions whose next token carries a loss: where the LM head is needed."""
    return sum(label != IGNORE_INDEX for label in example.labels[1:])


def as_served(model: Any, base_dir: Path) -> Any:
    """The trained adapter on the float32 base, loaded as serving and the gate load it.

    A trainer that holds its frozen base in bf16 is judged by what users get, not by its bf16
    copy of the base: evaluated there, the base's own rounding would count against the
    adapter."""
    from peft import PeftModel

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        served = PeftModel.from_pretrained(load_model(base_dir), folder)
    return served.to(next(model.parameters()).device).eval()


def eval_loss(model: Any, examples: Sequence[TokenizedExample], pad_id: int) -> float:
    """Token-weighted cross-entropy on the answers of all examples, float32, no autocast."""
    model.eval()
    return mean_answer_nll(model, examples, pad_id)


def plan_steps(examples: Sequence[TokenizedExample], config: TrainConfig, pad_id: int) -> StepPlan:
    batches = [new for new, _replay in trainer_batches(len(examples), 0, config)]
    chosen = [[examples[i] for i in ids] for ids in batches]
    return StepPlan(
        batches=batches,
        tokens=[sum(len(e.input_ids) for e in batch) for batch in chosen],
        loss_positions=[sum(_loss_positions(e) for e in batch) for batch in chosen],
        padded=[len(batch) * max(len(e.input_ids) for e in batch) for batch in chosen],
        packed=[pack(batch, pad_id).computed for batch in chosen],
    )


def selftune_trainer(
    base_dir: Path,
    examples: Sequence[TokenizedExample],
    config: TrainConfig,
    plan: StepPlan,
    weights: WeightCounts,
    pad_id: int,
) -> Timed:
    """selftune's trainer as the pipeline runs it (``train_lora`` is this loop)."""
    run = LoraRun(base_dir, examples, [], config, pad_id=pad_id)
    step_flops: list[float] = []

    def step() -> float:
        loss = run.step()
        index = len(step_flops)  # counted from what the step did: examples seen before skip
        frozen = run.frozen_positions[index]  # the layers below the adapters
        step_flops.append(weights.flops(plan.packed[index], plan.loss_positions[index], frozen))
        return loss

    if [new for new, _replay in run.plan] != plan.batches:  # the baseline's batches are its own
        raise RuntimeError("the trainer's batch plan is not the one the baseline was given")

    def finish() -> Any:
        model, result = run.result()
        # The FLOPs counted are those it did.
        if (result.tokens, result.computed_tokens) != (sum(plan.tokens), sum(plan.packed)):
            raise RuntimeError(
                f"trainer saw {result.tokens} tokens, computed {result.computed_tokens} "
                f"positions; expected {sum(plan.tokens)} and {sum(plan.packed)}"
            )
        return model

    return Timed(
        "train_lora"
        + (" nf4" if config.quantize_base else "")
        + (" compiled" if config.compile else ""),
        "bf16 autocast" if config.bf16 else "float32",
        step,
        finish,
        step_flops,
        run.frozen_positions,
    )


def textbook_trainer(
    base_dir: Path,
    examples: Sequence[TokenizedExample],
    config: TrainConfig,
    plan: StepPlan,
    weights: WeightCounts,
    pad_id: int,
    *,
    bf16_autocast: bool = False,
) -> Timed:
    """The textbook loop: PEFT LoRA, float32, AdamW, the model's own loss.

    AdamW runs torch's default per-tensor loop with the trainer's hyper-parameters (no weight
    decay); the learning rate follows the trainer's schedule and gradients are clipped at norm
    1.0, as transformers' ``Trainer`` does by default, so that both optimize the same objective
    the same way and their losses differ only by rounding. It sees the trainer's batches,
    padded by ``collate``.

    With ``bf16_autocast`` the forward pass runs under ``torch.autocast`` to bf16, the usual
    way to train in bf16 (transformers' ``Trainer`` with ``bf16=True`` does the same): the
    model and adapter stay float32, the matrix products are computed in bf16, and so are their
    results, the adapter's share of each adapted layer's output included.
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config.seed)  # as train_lora does before loading: same adapter init
    base = load_model(base_dir).to(config.device)
    model = get_peft_model(base, LoraConfig(**trainer_lora_fields(config)))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    batches = enumerate(plan.batches)

    def step() -> float:
        index, ids = next(batches)
        for group in opt.param_groups:
            group["lr"] = trainer_lr_at(index, config)
        padded = collate([examples[i] for i in ids], pad_id)
        batch = {name: tensor.to(config.device) for name, tensor in padded.items()}
        with torch.autocast(config.device, dtype=torch.bfloat16, enabled=bf16_autocast):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        return float(loss.detach())

    return Timed(
        "textbook PEFT loop",
        "bf16 autocast" if bf16_autocast else "float32",
        step,
        lambda: model,
        [weights.flops(n, n) for n in plan.padded],  # the LM head at every position
    )


@dataclasses.dataclass(frozen=True)
class Workload:
    """The chats the trainers learn in one round of the benchmark."""

    name: str
    details: int  # made-up sentences added to each answer: the chats' length
    every_variant: bool  # also time selftune's trainer in the other precision and compile setting
    loss_seeds: int = 3  # the seeds whose eval losses are compared, the timed one first


WORKLOADS = (
    # What a corrected chat looks like. A seed more takes about 45 s on 2 AVX-512 BF16 cores;
    # with 8 the mean change's 95% interval is about +-0.35% wide (one seed's change: sd 0.4%).
    Workload("short teaching chats, about 50 tokens each", 0, every_variant=True, loss_seeds=8),
    # The reference loop: batch 4 x 128 tokens. Longer rows make larger products, which
    # a CPU multiplies nearer its peak.
    Workload("chats of about 128 tokens, as in batch 4 x 128", len(_DETAILS), every_variant=False),
)


@dataclasses.dataclass(frozen=True)
class Setup:
    """A workload's chats, tokenized, and what training them with one seed takes."""

    tokenizer: Any
    pad_id: int
    facts: list[Fact]
    examples: list[TokenizedExample]
    config: TrainConfig  # production's, for the benchmark's batches and steps
    plan: StepPlan
    weights: WeightCounts

    def trainer_arguments(self, base_dir: Path) -> tuple:
        return (base_dir, self.examples, self.config, self.plan, self.weights, self.pad_id)

    def with_seed(self, seed: int) -> Setup:
        """The same chats trained with another seed: another adapter start and batch order."""
        config = dataclasses.replace(self.config, seed=seed)
        plan = plan_steps(self.examples, config, self.pad_id)
        return dataclasses.replace(self, config=config, plan=plan)


@dataclasses.dataclass(frozen=True)
class SeedLosses:
    """The eval losses of the textbook loop and of production's trainer, trained on one seed,
    and where production trains in bf16, that of the textbook loop under bf16 autocast."""

    seed: int
    textbook: float
    production: float
    textbook_bf16: float | None = None

    @property
    def change(self) -> float:
        return self.production / self.textbook - 1

    @property
    def bf16_autocast_change(self) -> float | None:
        """What the textbook loop's own bf16 autocast does to its eval loss."""
        return None if self.textbook_bf16 is None else self.textbook_bf16 / self.textbook - 1


@dataclasses.dataclass
class Round:
    """One workload's trainers, timed step by step in turn, and what they learned."""

    workload: Workload
    setup: Setup  # production's config, as timed
    trainers: list[Timed]
    recalled_by_base: int = 0
    # Eval losses on the timed seed and on more seeds (see :func:`losses_on_seeds`).
    seed_losses: list[SeedLosses] = dataclasses.field(default_factory=list)


def main(argv: Sequence[str] | None = None) -> int:
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the timed trainers' seed (adapter start, batch order)",
    )
    parser.add_argument(
        "--loss-seeds",
        type=int,
        default=None,
        help="compare the eval losses of the textbook loop and production's trainer (and, where "
        "production trains in bf16, the textbook loop under bf16 autocast) on this many seeds in "
        "each round, the timed one and those after it (default: 8 on the short chats, 3 on the "
        "long ones; bf16 and float32 runs end a few tenths of a percent apart, either way round, "
        "by seed)",
    )
    arguments = parser.parse_args(argv)
    seed, loss_seeds = arguments.seed, arguments.loss_seeds

    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    settings = load_settings()
    base_dir = materialize(resolve_base_model(settings.base_model), settings.cache_dir)
    device = train_config(settings, base_dir).device
    print(
        f"training throughput (base model {base_dir.name}, {_device_text(device)}, "
        f"{torch.get_num_threads()} CPU threads)"
    )
    cpu = CpuShare()
    started = time.perf_counter()
    peaks = matmul_peaks(device)
    print(f"  matmul peaks {time.perf_counter() - started:.0f}s", flush=True)
    rounds = []
    for workload in WORKLOADS:
        rounds.append(run_round(workload, settings, base_dir, seed))
        peaks = [_best_peak(a, b) for a, b in zip(peaks, matmul_peaks(device), strict=True)]
    contention = cpu.summary("the run")
    started = time.perf_counter()
    for played in rounds:  # untimed: after the timed rounds, outside the contention measured
        more = range(seed + 1, seed + (loss_seeds or played.workload.loss_seeds))
        played.seed_losses += losses_on_seeds(played.setup, base_dir, more)
    if any(len(played.seed_losses) > 1 for played in rounds):
        print(f"  eval losses on more seeds {time.perf_counter() - started:.0f}s")
    peak = _report_peaks(peaks)
    for played in rounds:
        _report(peak, played)
    if contention:
        print(contention)
    again = (f" --seed {seed}" if seed else "") + (
        f" --loss-seeds {loss_seeds}" if loss_seeds is not None else ""
    )
    print(f"reproduce: make bench  (or .venv/bin/python -m bench.training_throughput{again})")
    return 0


def run_round(workload: Workload, settings: Any, base_dir: Path, seed: int = 0) -> Round:
    """Train the textbook loop and selftune's trainer(s) on ``workload``, step by step in turn,
    then evaluate what each learned."""
    setup = set_up(workload, settings, base_dir, seed)
    tokenizer, pad_id, facts, examples = setup.tokenizer, setup.pad_id, setup.facts, setup.examples
    production, plan, weights = setup.config, setup.plan, setup.weights
    device = production.device
    compared = compared_trainers(setup, base_dir)
    trainers = list(compared)
    variants = []
    if workload.every_variant:
        if use_bf16("auto", device):
            variants.append(dataclasses.replace(production, bf16=not production.bf16))
        else:
            # Without native bf16 (AVX-512 BF16 or AMX) torch emulates it: a step takes 20-30x
            # longer (33 s instead of 1.3 s measured on an AVX2-only EPYC), so it is skipped.
            print(f"  {device} has no native bf16: the bf16 trainer run is skipped", flush=True)
        # What compiling buys: on a CPU with a C++ compiler production compiles, on a GPU it
        # does not until this says it pays (train.compile = 'auto').
        if production.compile or device == "cuda":
            variants.append(dataclasses.replace(production, compile=not production.compile))
        if device == "cuda" and not production.quantize_base and find_spec("bitsandbytes"):
            variants.append(dataclasses.replace(production, quantize_base=True))
    for variant in variants:
        trainers.append(selftune_trainer(base_dir, examples, variant, plan, weights, pad_id))
    started = time.perf_counter()
    for step in range(WARMUP_STEPS + TIMED_STEPS):
        # Step by step, the order turning each time: both sides of a pair see the same load.
        for trainer in trainers[step % len(trainers) :] + trainers[: step % len(trainers)]:
            trainer.run_step()
    print(
        f"  {workload.name}: {len(trainers)} trainers, steps interleaved "
        f"{time.perf_counter() - started:.0f}s",
        flush=True,
    )
    for trainer in trainers:
        if trainer.name.endswith("compiled"):  # the first step compiles (once per process)
            print(f"  {trainer.name}: first step {trainer.seconds[0]:.0f}s (compiling)")
    for trainer in trainers:
        model = as_served(trainer.finish(), base_dir)
        trainer.eval_loss = eval_loss(model, examples, pad_id)
        trainer.recalled = facts_recalled(model, tokenizer, facts, examples)
    played = Round(workload, setup, trainers)
    played.seed_losses.append(SeedLosses(seed, *(trainer.eval_loss for trainer in compared)))
    with model.disable_adapter():  # the base: the last trained model, its adapter off
        played.recalled_by_base = facts_recalled(model, tokenizer, facts, examples)
    return played


def set_up(workload: Workload, settings: Any, base_dir: Path, seed: int) -> Setup:
    """``workload``'s chats tokenized, and production's config for the benchmark's batches."""
    tokenizer = load_tokenizer(base_dir)
    pad_id = tokenizer.pad_token_id or 0
    template = resolve_template(settings.serve.chat_template or None, tokenizer.chat_template)
    facts = build_facts(workload.details)
    examples = [
        tokenize_chat(tokenizer, f.chat, template, settings.train.max_seq_len) for f in facts
    ]
    production = dataclasses.replace(
        train_config(settings, base_dir),
        batch_size=BATCH_SIZE,
        steps=WARMUP_STEPS + TIMED_STEPS,
        replay_per_step=0,
        stop_loss=0.0,  # every step runs: the baseline does not stop early
        seed=seed,
    )
    plan = plan_steps(examples, production, pad_id)
    weights = WeightCounts.of(load_model(base_dir), production)
    return Setup(tokenizer, pad_id, facts, examples, production, plan, weights)


def compared_trainers(setup: Setup, base_dir: Path) -> list[Timed]:
    """The trainers whose eval losses are compared, in :class:`SeedLosses`' order: the textbook
    loop, production's trainer and, where production trains in bf16, the textbook loop under
    bf16 autocast (what bf16 gives and costs done the usual way)."""
    arguments = setup.trainer_arguments(base_dir)
    trainers = [textbook_trainer(*arguments), selftune_trainer(*arguments)]
    if setup.config.bf16:
        trainers.append(textbook_trainer(*arguments, bf16_autocast=True))
    return trainers


def losses_on_seeds(setup: Setup, base_dir: Path, seeds: Sequence[int]) -> list[SeedLosses]:
    """The eval losses of the textbook loop and production's trainer, trained on ``setup``'s
    chats with each of ``seeds`` (the adapter's start and the batch order), untimed; where
    production trains in bf16, also the textbook loop's under bf16 autocast.

    In bf16 production's and the textbook loop's end a few tenths of a percent apart either way
    round, by seed: measured on 2 AVX-512 BF16 cores over seeds 0-31 of the 50-token chats,
    -0.69 to +0.86% (sd 0.4%), mean +0.11% with a 95% interval of -0.03 to +0.26%, while the
    textbook loop's own eval loss varied 7.8% from seed to seed; over seeds 0-31 of the
    128-token chats, +0.28% (+0.18 to +0.38%). One seed's comparison is a draw from that
    spread; the mean over several says what bf16 costs. The textbook loop under bf16 autocast
    ends well above both: +1.28% (+0.97 to +1.59%) over seeds 8-31 of the 50-token chats and
    +1.88% (+1.68 to +2.08%) over seeds 3-31 of the 128-token ones, where production was
    +0.09% and +0.29% on the same seeds.
    """
    compared = []
    for seed in seeds:
        seeded = setup.with_seed(seed)
        losses = [
            trained_eval_loss(t, seeded, base_dir) for t in compared_trainers(seeded, base_dir)
        ]
        compared.append(SeedLosses(seed, *losses))
    return compared


def trained_eval_loss(trainer: Timed, setup: Setup, base_dir: Path) -> float:
    """Run all of ``setup``'s steps of ``trainer``, untimed, and evaluate it as served."""
    for _ in setup.plan.batches:
        trainer.run_step()
    served = as_served(trainer.finish(), base_dir)
    return eval_loss(served, setup.examples, setup.pad_id)


def _device_text(device: str) -> str:
    if device == "cuda":
        return f"CUDA: {torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"CPU, torch {torch.__version__}"


def _layers_text(layers: Sequence[int]) -> str:
    if not layers:
        return "every decoder layer"
    return f"decoder layers {min(layers)}-{max(layers)}"


def _best_peak(a: Peak, b: Peak) -> Peak:
    return a if a.gflops >= b.gflops else b


def _report_peaks(peaks: Sequence[Peak]) -> dict[torch.dtype, float | None]:
    """Print the measured peaks; returns the best of each dtype (None: not measured)."""
    peak = {
        dtype: max((p.gflops for p in peaks if p.dtype == dtype), default=None)
        for dtype in (torch.float32, torch.bfloat16)
    }
    print()
    print(
        f"matmul peak (torch.matmul, best of {PEAK_REPEATS} at each of several points in the run):"
    )
    for p in peaks:
        m, k, n = p.shape
        dtype = str(p.dtype).removeprefix("torch.")
        print(f"  {dtype:<9} {f'{m}x{k} @ {k}x{n}':<22} {p.gflops:7.1f} GFLOP/s")
    if peak[torch.bfloat16] is None:
        print("  bfloat16: not measured, this device has no native bf16 (torch emulates it)")
    return peak


def _report_seed_losses(production: Timed, seed_losses: Sequence[SeedLosses]) -> None:
    """Print each seed's eval-loss change against the float32 textbook loop, and their mean."""
    compared = [(f"{production.name} ({production.precision})", [c.change for c in seed_losses])]
    autocast = [c.bf16_autocast_change for c in seed_losses]
    if None not in autocast:
        autocast_changes = [change for change in autocast if change is not None]
        compared.append(("textbook PEFT loop (bf16 autocast)", autocast_changes))
    for trainer, changes in compared:
        by_seed = ", ".join(
            f"{change:+.2%} (seed {c.seed})" for change, c in zip(changes, seed_losses, strict=True)
        )
        print(
            f"  {trainer} against the textbook loop in float32, eval loss by seed: {by_seed}\n"
            f"    {MeanChange.of(changes)}"
        )
    textbook = [c.textbook for c in seed_losses]
    spread = statistics.stdev(textbook) / statistics.fmean(textbook)
    print(f"    (the textbook loop's own eval loss varies {spread:.1%} from seed to seed, sd)")


def _report(peak: dict[torch.dtype, float | None], played: Round) -> None:
    """Print a round's set-up and one table row per trainer (the first is the baseline)."""
    config, plan, weights = played.setup.config, played.setup.plan, played.setup.weights
    runs = played.trainers
    timed = slice(WARMUP_STEPS, None)
    tokens = sum(plan.tokens[timed])
    pairs = zip(plan.tokens[timed], plan.loss_positions[timed], strict=True)
    model_flops = sum(weights.flops(n, h) for n, h in pairs)
    print()
    print(
        f"{played.workload.name}:\n"
        f"LoRA r={config.rank} alpha={config.alpha:g} on {','.join(config.target_modules)} of "
        f"{_layers_text(config.layers)}\n"
        f"lr {config.learning_rate:g}; batch {BATCH_SIZE} from {N_EXAMPLES} synthetic Q/A chats; "
        f"{TIMED_STEPS} timed steps after {WARMUP_STEPS} warm-up; seed {config.seed}\n"
        "replay: none (an empty replay list, so no KL term in either trainer)\n"
        f"{tokens} example tokens timed; the textbook loop computes "
        f"{sum(plan.padded[timed]) / tokens:.0%} of that many positions (padding), selftune's "
        f"packed batches {sum(plan.packed[timed]) / tokens:.0%} (shared prompt prefix once)\n"
        f"FLOPs per position: 2*N_body + 2*N_body_backward + 6*N_lora = 2*{weights.body / 1e6:.1f}M"
        f" + 2*{weights.body_backward / 1e6:.1f}M + 6*{weights.lora / 1e6:.2f}M, plus 4*N_head = "
        f"4*{weights.head / 1e6:.1f}M where the LM head runs\n"
        "  (N_body_backward: the frozen weights of the layers the backward pass goes through, "
        "from the lowest with an adapter up)\n"
        "  (attention scores and elementwise work left out)\n"
        "tokens/s: the median timed step's example tokens per second\n"
        "vs base: the median over timed steps of the baseline's seconds / the trainer's, each "
        "pair run back to back on the same batch\n"
        f"model GFLOP/s: tokens/s x the FLOPs training these examples takes with the LM head at "
        f"loss positions only ({model_flops / tokens / 1e9:.3f} GFLOP a token)\n"
        "computed GFLOP/s: the FLOPs each trainer actually computed per second\n"
        "MFU, HFU: the model and computed GFLOP/s as shares of the float32 and bfloat16 peaks"
    )
    print()
    header = (
        f"  {'trainer':<26} {'precision':<13} {'tokens/s':>8} {'vs base':>7} {'model':>7} "
        f"{'computed':>8} {'MFU fp32':>8} {'MFU bf16':>8} {'HFU fp32':>8} {'HFU bf16':>8} "
        f"{'last loss':>9} {'eval loss':>9} "
        f"{'recall':>6}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    baseline = runs[0]
    for index, run in enumerate(runs):
        rate = run.tokens_per_second(plan)
        modelled, computed = rate * model_flops / tokens / 1e9, run.computed_gflops()
        shares = [
            f"{gflops / p:8.1%}" if p is not None else f"{'-':>8}"
            for gflops in (modelled, computed)
            for p in (peak[torch.float32], peak[torch.bfloat16])
        ]
        name = run.name + (" (prod)" if index == 1 else "")
        print(
            f"  {name:<26} {run.precision:<13} {rate:8.0f} {run.speedup_over(baseline):6.2f}x "
            f"{modelled:7.1f} {computed:8.1f} {' '.join(shares)} "
            f"{run.losses[-1]:9.4f} {run.eval_loss:9.4f} "
            f"{f'{run.recalled}/{N_EXAMPLES}':>6}"
        )
    for run in runs[1:]:
        change = run.eval_loss / baseline.eval_loss - 1
        print(
            f"  {run.name} ({run.precision}): eval loss {change:+.2%}, facts recalled "
            f"{run.recalled - baseline.recalled:+d} vs the textbook loop"
        )
    if len(played.seed_losses) > 1:
        _report_seed_losses(runs[1], played.seed_losses)
    for run in runs[1:]:
        new, seen = run.steps_by_novelty()
        if new and seen:
            on_new, on_seen = run.speedup_over(baseline, new), run.speedup_over(baseline, seen)
            print(
                f"  {run.name} ({run.precision}): {on_new:.2f}x on the {len(new)} steps with "
                f"examples new to it, {on_seen:.2f}x on the {len(seen)} with only examples seen "
                "before (the layers below the adapters skipped)"
            )
    print()
    print(
        "  last loss: cross-entropy on the last step's batch; eval loss: on all examples after\n"
        "  training, float32, each adapter on the float32 base as served (a bf16 trainer's own\n"
        "  copy of the base is rounded). Both loops use the same lr schedule and gradient\n"
        "  clipping: their losses should differ by rounding only (packed vs padded sums, bf16).\n"
        "  recall: the taught facts whose value the greedy answer to the trained question names\n"
        f"  (answers cut at {RECALL_TOKENS} tokens); the base model without an adapter recalls "
        f"{played.recalled_by_base}/{N_EXAMPLES}."
    )


if __name__ == "__main__":
    sys.exit(main())
