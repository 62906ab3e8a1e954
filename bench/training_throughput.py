"""Training throughput: selftune's LoRA trainer against a textbook PEFT loop, and the CPU's peak.

Run with ``make bench`` (or ``python -m bench.training_throughput``). Learning latency is mostly
training time, so this benchmark answers whether the trainer uses the machine well, in one run so
that every figure is measured under the same (often shared, noisy) load:

1. The machine's matrix-multiply peak: ``torch.matmul`` GFLOP/s in float32 and bfloat16 on the
   default model's MLP shape at 2048 tokens (2048x576 @ 576x1536), a large square one, and the
   MLP shape at one training batch of tokens (256 rows), best of a few repeats with torch's
   default thread count, measured before, between and after the trainers. The best shape of each
   dtype is its "peak".
2. Tokens per second (non-pad tokens) of ``train_lora`` with the production ``TrainConfig``
   (``train_config(load_settings())``), against a textbook baseline: transformers + PEFT
   ``get_peft_model`` with the same rank/alpha/targets, float32, AdamW, and the plain loop
   ``loss = model(**batch).loss; loss.backward(); opt.step(); opt.zero_grad()``. Both see the
   same batches of the same tokenized chats, with the same batch size, steps and seed; the first
   steps are warm-up and not timed. The selftune trainer also runs in the other precision
   (float32 if production autocasts to bf16), so the table shows what autocast itself buys.
   Replay is off (an empty replay list): the baseline has no KL term, and with replay the trainer
   would do extra work per token that the baseline does not.
3. Achieved FLOP/s as a share of the measured peaks. With LoRA the frozen weights get no
   gradient, so a token costs 2N FLOPs forward plus 2N backward (gradient w.r.t. activations
   only), where N counts the weights of every frozen linear layer; the adapters are trained
   fully (forward, activation and weight gradients): 6 * N_lora. The LM head is needed only at
   the positions that carry a loss (the answers' tokens): a trainer that computes it everywhere
   does work that is not counted. So ``training FLOPs = tokens * (4 * N_body + 6 * N_lora) +
   loss_positions * 4 * N_head``; attention scores (<2% at these lengths) and elementwise work
   are left out, so the shares are slight underestimates. Tokens are the non-pad ones: padding
   costs compute but is not useful work.
4. The loss after the same steps, on the last batch and over all examples, so that speed never
   silently costs quality.

The machine is shared: another process computing at the same time oversubscribes the cores and
can slow single steps tenfold. So the trainers run interleaved, twice when time allows, each
reported by its faster run and by its median step, and the output says how much CPU other
processes took meanwhile.
"""

from __future__ import annotations

import dataclasses
import os
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from selftune.config import load_settings
from selftune.data.tokenize import IGNORE_INDEX, TokenizedExample, tokenize_chat
from selftune.models.base import load_model, load_tokenizer, materialize, resolve_base_model
from selftune.models.templates import resolve_template
from selftune.training.pipeline import train_config
from selftune.training.trainer import TrainConfig, collate, train_lora, use_bf16

# The trainer's own batch plan: the baseline must see exactly the batches the trainer sees.
# Private, so a change of its signature breaks this benchmark loudly rather than silently.
from selftune.training.trainer import _batches as trainer_batches

BATCH_SIZE = 4
WARMUP_STEPS = 2  # not timed: first calls allocate buffers and pick kernels
TIMED_STEPS = 10
N_EXAMPLES = 32
# (m, k, n): the model's MLP shape at 2048 tokens, a large square one, and the MLP shape at one
# training batch's worth of tokens (the ceiling the trainer's matmuls can actually reach).
PEAK_SHAPES = ((2048, 576, 1536), (2048, 2048, 2048), (256, 576, 1536))
PEAK_REPEATS = 5
ROUNDS = 2  # each trainer runs this often, interleaved; the fastest run is reported
ROUND_BUDGET_S = 100.0  # a first round slower than this (a busy machine) skips the second

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


@dataclasses.dataclass(frozen=True)
class Peak:
    dtype: torch.dtype
    shape: tuple[int, int, int]
    gflops: float


@dataclasses.dataclass(frozen=True)
class WeightCounts:
    body: int  # frozen linear weights but the LM head's
    head: int  # the LM head's
    lora: int  # trained adapter weights
    loss_share: float  # positions that carry a loss, per non-pad token


@dataclasses.dataclass(frozen=True)
class Run:
    """One trainer's figures. ``step_ends`` are perf_counter times at the end of each step."""

    name: str
    precision: str
    step_ends: list[float]
    step_tokens: list[int]
    last_loss: float
    eval_loss: float

    @property
    def step_rates(self) -> list[float]:
        """Tokens/s of each timed step (the warm-up steps left out)."""
        return [
            self.step_tokens[i] / (self.step_ends[i] - self.step_ends[i - 1])
            for i in range(WARMUP_STEPS, len(self.step_ends))
        ]

    @property
    def tokens_per_second(self) -> float:
        """The median step's rate: a step slowed by another process's burst does not count."""
        return statistics.median(self.step_rates)


def matmul_peaks() -> list[Peak]:
    """Best-of-N ``torch.matmul`` GFLOP/s per dtype and shape: the ceiling training can reach.

    Measured again between and after the training rounds, keeping the best: a burst from another
    process during one measurement would otherwise understate the peak and flatter the trainers.
    """
    peaks = []
    for dtype in (torch.float32, torch.bfloat16):
        for m, k, n in PEAK_SHAPES:
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            torch.matmul(a, b)  # warm-up: oneDNN picks and caches its kernel
            best = float("inf")
            for _ in range(PEAK_REPEATS):
                started = time.perf_counter()
                torch.matmul(a, b)
                best = min(best, time.perf_counter() - started)
            peaks.append(Peak(dtype, (m, k, n), 2 * m * k * n / best / 1e9))
    return peaks


def build_examples(tokenizer: Any, template: str, max_len: int) -> list[TokenizedExample]:
    """Short synthetic Q/A chats about made-up people, rendered as training would render them."""
    rng = random.Random(0)
    examples = []
    for name in _NAMES:
        for question, answer, values in _FACTS:
            value = rng.choice(values)
            chat = [
                {"role": "user", "content": question.format(n=name)},
                {"role": "assistant", "content": answer.format(n=name, v=value)},
            ]
            examples.append(tokenize_chat(tokenizer, chat, template, max_len))
    return examples[:N_EXAMPLES]


def _loss_positions(example: TokenizedExample) -> int:
    """Positions whose next token carries a loss: where the LM head is needed."""
    return sum(label != IGNORE_INDEX for label in example.labels[1:])


def linear_weights(model: torch.nn.Module) -> int:
    """Weights of every ``nn.Linear`` (the LM head included): the matmul work per token / 2."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


@torch.no_grad()
def eval_loss(model: Any, examples: Sequence[TokenizedExample], pad_id: int) -> float:
    """Token-weighted cross-entropy on the answers of all examples, float32, no autocast."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), 8):
        inputs = collate(examples[start : start + 8], pad_id)
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        logits = logits.logits[:, :-1].float()
        labels = inputs["labels"][:, 1:]
        total += float(
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
        )
        count += int((labels != IGNORE_INDEX).sum())
    return total / count


def run_selftune(
    base_dir: Path,
    examples: Sequence[TokenizedExample],
    config: TrainConfig,
    step_tokens: list[int],
    pad_id: int,
) -> Run:
    """``train_lora`` as the pipeline calls it; steps are timed through its progress callback."""
    step_ends: list[float] = []
    model, result = train_lora(
        base_dir,
        examples,
        [],
        config,
        pad_id=pad_id,
        progress=lambda _step, _total, _loss: step_ends.append(time.perf_counter()),
    )
    if result.tokens != sum(step_tokens):  # proves the baseline's batches are the trainer's
        raise RuntimeError(f"trainer saw {result.tokens} tokens, expected {sum(step_tokens)}")
    precision = "bf16 autocast" if config.bf16 else "float32"
    return Run(
        "train_lora",
        precision,
        step_ends,
        step_tokens,
        result.new_losses[-1],
        eval_loss(model, examples, pad_id),
    )


def run_baseline(
    base_dir: Path,
    examples: Sequence[TokenizedExample],
    config: TrainConfig,
    batches: Sequence[Sequence[int]],
    step_tokens: list[int],
    pad_id: int,
) -> Run:
    """The textbook loop: PEFT LoRA, float32, AdamW, the model's own loss.

    AdamW keeps torch's defaults, the lr is constant and gradients are not clipped: what a first
    implementation looks like. It sees the trainer's batches, collated by the same code.
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config.seed)  # as train_lora does before loading: same adapter init
    model = get_peft_model(
        load_model(base_dir),
        LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,  # type: ignore[arg-type]  # PEFT accepts floats
            target_modules=list(config.target_modules),
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    model.train()
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate
    )
    step_ends: list[float] = []
    losses: list[float] = []
    for ids in batches:
        batch = collate([examples[i] for i in ids], pad_id)
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
        step_ends.append(time.perf_counter())
    return Run(
        "textbook PEFT loop",
        "float32",
        step_ends,
        step_tokens,
        losses[-1],
        eval_loss(model, examples, pad_id),
    )


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait; guest time is already inside user
    return sum(fields) - idle, sum(fields)


class CpuShare:
    """Share of the machine's CPU time used by other processes between start and ``other()``.

    Another process computing at the same time oversubscribes the cores and can slow steps by
    10x or more (OpenMP threads wait on each other), so the table says when that happened.
    """

    def __init__(self) -> None:
        self._busy, self._total = _busy_jiffies()
        self._own = sum(os.times()[:2])

    def other(self) -> float | None:
        busy, total = _busy_jiffies()
        if total <= self._total:
            return None
        own = (sum(os.times()[:2]) - self._own) * os.sysconf("SC_CLK_TCK")
        return max(0.0, (busy - self._busy - own) / (total - self._total))


def main() -> int:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    settings = load_settings()
    base_dir = materialize(resolve_base_model(settings.base_model), settings.cache_dir)
    tokenizer = load_tokenizer(base_dir)
    pad_id = tokenizer.pad_token_id or 0
    template = resolve_template(settings.chat_template or None, tokenizer.chat_template)
    examples = build_examples(tokenizer, template, settings.max_seq_len)

    production = dataclasses.replace(
        train_config(settings),
        batch_size=BATCH_SIZE,
        steps=WARMUP_STEPS + TIMED_STEPS,
        replay_per_step=0,
        stop_loss=0.0,  # every step runs: the baseline does not stop early
    )
    other = dataclasses.replace(production, bf16=not production.bf16)
    batches = [new for new, _replay in trainer_batches(len(examples), 0, production)]
    step_tokens = [sum(len(examples[i].input_ids) for i in ids) for ids in batches]
    padded = sum(BATCH_SIZE * max(len(examples[i].input_ids) for i in ids) for ids in batches)
    probe = load_model(base_dir)
    n_frozen = linear_weights(probe)
    n_lora = sum(
        production.rank * (m.in_features + m.out_features)
        for name, m in probe.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in production.target_modules
    )
    n_head = probe.get_output_embeddings().weight.numel()
    del probe
    timed = [i for ids in batches[WARMUP_STEPS:] for i in ids]
    loss_share = sum(_loss_positions(examples[i]) for i in timed) / sum(
        len(examples[i].input_ids) for i in timed
    )
    flops_per_token = round(4 * (n_frozen - n_head) + 6 * n_lora + loss_share * 4 * n_head)

    print(f"training throughput (base model {base_dir.name}, {torch.get_num_threads()} threads)")
    print("measuring (trainers interleaved, each's fastest run kept):", flush=True)
    cpu = CpuShare()
    started = time.perf_counter()
    peaks = matmul_peaks()
    print(f"  matmul peaks {time.perf_counter() - started:.0f}s", flush=True)
    trainers: list[tuple[str, Callable[[], Run]]] = [
        (
            "baseline",
            lambda: run_baseline(base_dir, examples, production, batches, step_tokens, pad_id),
        ),
        ("selftune", lambda: run_selftune(base_dir, examples, production, step_tokens, pad_id)),
    ]
    if use_bf16("auto"):
        trainers.append(
            ("selftune-other", lambda: run_selftune(base_dir, examples, other, step_tokens, pad_id))
        )
    else:
        # Without native bf16 (AVX-512 BF16 or AMX) torch emulates it: a step takes 20-30x
        # longer (33 s instead of 1.3 s measured on an AVX2-only EPYC), so the run is skipped.
        print("  this CPU has no native bf16: the bf16 trainer run is skipped", flush=True)
    rounds: dict[str, list[Run]] = {label: [] for label, _ in trainers}
    for round_ in range(ROUNDS):
        round_started = time.perf_counter()
        for label, fn in trainers if round_ % 2 == 0 else trainers[::-1]:
            started = time.perf_counter()
            rounds[label].append(fn())
            print(f"  {label} {time.perf_counter() - started:.0f}s", flush=True)
        peaks = [_best_peak(a, b) for a, b in zip(peaks, matmul_peaks(), strict=True)]
        if time.perf_counter() - round_started > ROUND_BUDGET_S:
            print("  (machine busy: no further rounds, to keep the benchmark short)")
            break
    contention = cpu.other()
    runs = [max(rounds[label], key=lambda run: run.tokens_per_second) for label, _ in trainers]
    counts = WeightCounts(n_frozen - n_head, n_head, n_lora, loss_share)
    _report(peaks, runs, production, step_tokens, padded, counts, flops_per_token)
    if contention is not None:
        note = ": figures unreliable, rerun on a quiet machine" if contention > 0.1 else ""
        print(f"other processes used {contention:.0%} of the CPUs during the run{note}")
    print("reproduce: make bench  (or .venv/bin/python -m bench.training_throughput)")
    return 0


def _best_peak(a: Peak, b: Peak) -> Peak:
    return a if a.gflops >= b.gflops else b


def _report(
    peaks: Sequence[Peak],
    runs: Sequence[Run],
    config: TrainConfig,
    step_tokens: Sequence[int],
    padded: int,
    counts: WeightCounts,
    flops_per_token: int,
) -> None:
    """Print the peaks, the set-up, and one table row per trainer (the first is the baseline)."""
    peak_fp32 = max(p.gflops for p in peaks if p.dtype == torch.float32)
    peak_bf16 = max(p.gflops for p in peaks if p.dtype == torch.bfloat16)
    print()
    print(
        f"matmul peak (torch.matmul, best of {PEAK_REPEATS} at each of several points in the run):"
    )
    for p in peaks:
        m, k, n = p.shape
        dtype = str(p.dtype).removeprefix("torch.")
        print(f"  {dtype:<9} {f'{m}x{k} @ {k}x{n}':<22} {p.gflops:7.1f} GFLOP/s")
    print(f"  peak used below: float32 {peak_fp32:.0f}, bfloat16 {peak_bf16:.0f} GFLOP/s")
    if not use_bf16("auto"):
        print("  (no native bf16 on this CPU: torch emulates it; the bf16 peak is no ceiling)")
    print()
    print(
        f"LoRA r={config.rank} alpha={config.alpha:g} on {','.join(config.target_modules)}\n"
        f"lr {config.learning_rate:g}; batch {BATCH_SIZE} from {N_EXAMPLES} synthetic Q/A chats; "
        f"{TIMED_STEPS} timed steps after {WARMUP_STEPS} warm-up; seed {config.seed}\n"
        "replay: none (an empty replay list, so no KL term in either trainer)\n"
        f"{sum(step_tokens[WARMUP_STEPS:])} non-pad tokens timed; padding is "
        f"{1 - sum(step_tokens) / padded:.0%} of the computed positions\n"
        f"FLOPs/token = 4*N_body + 6*N_lora + loss share * 4*N_head = 4*{counts.body / 1e6:.1f}M"
        f" + 6*{counts.lora / 1e6:.2f}M + {counts.loss_share:.2f} * 4*{counts.head / 1e6:.1f}M "
        f"= {flops_per_token / 1e9:.3f} GFLOP\n"
        "  (N_body: the frozen linear layers but the LM head; attention scores and elementwise "
        "work left out)\n"
        "tokens/s: the median timed step's non-pad tokens per second"
    )
    print()
    header = (
        f"  {'trainer':<21} {'precision':<13} {'tokens/s':>8} {'vs base':>7} {'GFLOP/s':>7} "
        f"{'%fp32pk':>7} {'%bf16pk':>7} {'last loss':>9} {'eval loss':>9}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    baseline = runs[0]
    for index, run in enumerate(runs):
        gflops = run.tokens_per_second * flops_per_token / 1e9
        name = run.name + (" (prod)" if index == 1 else "")
        print(
            f"  {name:<21} {run.precision:<13} {run.tokens_per_second:8.0f} "
            f"{run.tokens_per_second / baseline.tokens_per_second:6.2f}x {gflops:7.1f} "
            f"{gflops / peak_fp32:7.1%} {gflops / peak_bf16:7.1%} "
            f"{run.last_loss:9.3f} {run.eval_loss:9.3f}"
        )
    print()
    print(
        "  last loss: cross-entropy on the last step's batch; eval loss: on all examples after\n"
        "  training, float32. The textbook loop has no lr warm-up or gradient clipping, so its\n"
        "  losses differ slightly."
    )


if __name__ == "__main__":
    sys.exit(main())
