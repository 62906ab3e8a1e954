"""One training job from start to finish: dataset, train, save, evaluate, gate, promote.

The candidate is evaluated from its saved artifact, loaded the way the server loads it, against
the version served at the time the job started.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from selftune.artifacts import GGUF_ADAPTER
from selftune.atomic import atomic_directory
from selftune.config import Settings
from selftune.data.augment import answered_subject, augmented_chats
from selftune.data.curation import active_examples
from selftune.data.neighbours import neighbour_questions
from selftune.data.queue import Candidate, lineage_examples, plan_run
from selftune.data.tokenize import TokenizedExample, first_answer_tokens, tokenize_chat
from selftune.engines.base import AdapterRef, EvaluatingEngine
from selftune.evaluation.gate import GateFigures, GatePolicy, decide
from selftune.evaluation.heldout import HeldoutResult, judge_heldout
from selftune.evaluation.probes import (
    ProbeSet,
    RegressionItem,
    build_probe_set,
    generate_answers,
)
from selftune.export.gguf_adapter import AdapterExportError, export_gguf_adapter
from selftune.models.base import BaseModelSource
from selftune.registry.versions import (
    AliasMoved,
    ServingTarget,
    next_version_name,
    promote_gated,
    serving_target,
)
from selftune.store import jobs
from selftune.store.db import Database
from selftune.store.jobs import JobCancelled, JobFailed, JobLost
from selftune.store.schema import TrainingExample, Version, VersionExample, as_utc, utcnow
from selftune.training.device import resolve_device, resolve_quantization, use_bf16, use_compile
from selftune.training.frozen_layers import FrozenLayers
from selftune.training.null_space import NullSpace
from selftune.training.packing import pack
from selftune.training.trainer import (
    ProgressFn,
    ReplayReference,
    TrainConfig,
    TrainingDiverged,
    TrainResult,
    train_lora,
    warm_replay,
)

__all__ = [
    "RECIPE_OVERRIDES",
    "JobCancelled",
    "JobLost",
    "NoTrainingData",
    "TrainingContext",
    "run_training_job",
    "with_overrides",
]

log = logging.getLogger(__name__)

# Regression answers are checked on this many tokens: the expected word comes early.
_RETENTION_TOKENS = 24

Report = Callable[[float, str], None]  # (progress 0..1, stage); raises JobCancelled


class NoTrainingData(JobFailed):
    """Too few curated examples to train on."""


@dataclasses.dataclass
class TrainingContext:
    """What a worker keeps between jobs: settings, store, the base model loaded once."""

    settings: Settings
    db: Database
    source: BaseModelSource
    base_dir: Path
    engine: EvaluatingEngine
    _probes: ProbeSet | None = None
    # Regression-set loss of the versions already measured, by version id (None: the base).
    # Versions never change once written and the probes are fixed, so each is measured once.
    _regression_losses: dict[int | None, float] = dataclasses.field(default_factory=dict)
    # The base model's distributions on the replay prompts: the same for every job.
    replay_reference: ReplayReference = dataclasses.field(default_factory=ReplayReference)
    # The LoRA layers' null spaces of the replay set's inputs (training.null_space).
    null_space: NullSpace = dataclasses.field(default_factory=NullSpace)
    # The examples' states below the adapted layers: the replay prompts' serve every job.
    frozen_layers: FrozenLayers = dataclasses.field(default_factory=FrozenLayers)
    # Cleared when compiling failed under train.compile = 'auto': jobs then train uncompiled
    # rather than fail.
    compile_works: bool = True
    # The batches whose compiled training step is still to be built (see compile_next); None:
    # not listed yet.
    _to_compile: list[list[TokenizedExample]] | None = None
    # The base's answers to neighbour prompts, by prompt: a job re-trains earlier examples.
    _neighbour_answers: dict[str, str] = dataclasses.field(default_factory=dict)
    _replay_loss_base: float | None = None

    @property
    def probes(self) -> ProbeSet:
        if self._probes is None:
            key = hashlib.sha256(
                f"{self.source.fingerprint}:{self.engine.name}:{self.engine.default_template}".encode()
            ).hexdigest()[:12]
            self._probes = build_probe_set(
                self.engine,
                self.settings.cache_dir,
                key,
                self.settings.train.replay_subjects,
                min_margin=self.settings.gate.min_known_margin,
                max_seq_len=self.settings.train.max_seq_len,
            )
        return self._probes

    @property
    def regression_set(self) -> list[TokenizedExample]:
        return _tokenize(self, [_qa(r.prompt, r.base_answer) for r in self.probes.regression])

    @property
    def replay_set(self) -> list[TokenizedExample]:
        """The base's answers to the replay prompts, each cut to its first tokens.

        Measured on the teaching scenario: the KL on the first 16 answer tokens kept every
        answer the base knew on 3 seeds of 3, as the whole answers (up to 32 tokens) did, and
        made a step 1.29x faster (181 positions instead of 220). 12 tokens lost one known answer
        on one seed of two, and so did 3 replay prompts a step instead of 4.
        """
        chats = [_qa(p, a) for p, a in self.probes.replay]
        cut = self.settings.train.replay_answer_tokens
        return [first_answer_tokens(example, cut) for example in _tokenize(self, chats)]

    def neighbour_set(self, rows: list[TrainingExample]) -> list[TokenizedExample]:
        """The base's own answers to the neighbour prompts of the examples' last questions
        (:func:`neighbour_questions`), cut as the replay set's are, to hold while training."""
        count = self.settings.train.neighbour_subjects
        prompts: dict[str, None] = {}  # in order, once each
        for row in rows:
            question = _last_user_text(row.messages)
            prompts.update(dict.fromkeys(neighbour_questions(question, count) if question else ()))
        cut = self.settings.train.replay_answer_tokens
        missing = [p for p in prompts if p not in self._neighbour_answers]
        if missing:
            answers = generate_answers(self.engine, missing, None, cut)
            self._neighbour_answers.update(zip(missing, answers, strict=True))
        chats = [_qa(p, self._neighbour_answers[p]) for p in prompts if self._neighbour_answers[p]]
        return [first_answer_tokens(example, cut) for example in _tokenize(self, chats)]

    @property
    def pad_id(self) -> int:
        pad: int | None = self.engine.tokenizer.pad_token_id
        return pad or 0

    def regression_loss(self, adapter: AdapterRef | None) -> float:
        """Answer loss on the regression set under ``adapter``, measured once per version."""
        key = adapter.version_id if adapter is not None else None
        if key not in self._regression_losses:
            loss = self.engine.answer_nll(self.regression_set, adapter)
            self._regression_losses[key] = round(loss, 4)
        return self._regression_losses[key]

    def replay_loss(self, adapter: AdapterRef | None) -> float | None:
        """Answer loss on the replay set under ``adapter`` (None: the base, measured once)."""
        replay = self.replay_set
        if not replay:
            return None
        if adapter is not None:
            return round(self.engine.answer_nll(replay, adapter), 4)
        if self._replay_loss_base is None:
            self._replay_loss_base = round(self.engine.answer_nll(replay, None), 4)
        return self._replay_loss_base

    def train(
        self,
        new: list[TokenizedExample],
        config: TrainConfig,
        progress: ProgressFn | None = None,
        neighbours: list[TokenizedExample] | None = None,
    ) -> tuple[Any, TrainResult]:
        """:func:`train_lora` on ``new`` with the replay set, and what this worker keeps about
        the base between jobs (its replay distributions, the states below the adapters).

        A compiled run that fails runs again uncompiled. If that works, compiling was at fault
        (inductor's failures to build arrive as ``TorchDynamoException``, but a compiled
        kernel's as it runs need not): later runs skip it, under train.compile = 'auto'; 'on'
        insists, so the error stands. If it fails too, its own error says what went wrong.
        """
        try:
            return self._train_lora(new, config, progress, neighbours or [])
        except JobCancelled:
            raise
        except Exception as error:
            if not config.compile or self.settings.train.compile == "on":
                raise
            log.warning("a compiled training run failed (%s); running it again uncompiled", error)
            uncompiled = dataclasses.replace(config, compile=False)
            trained = self._train_lora(new, uncompiled, progress, neighbours or [])
            log.warning(
                "torch.compile failed, so training runs uncompiled (1.15x slower); set "
                "train.compile = 'off' to skip trying",
                exc_info=error,
            )
            self.compile_works = False
            return trained

    def _train_lora(
        self,
        new: list[TokenizedExample],
        config: TrainConfig,
        progress: ProgressFn | None,
        neighbours: list[TokenizedExample],
    ) -> tuple[Any, TrainResult]:
        return train_lora(
            self.base_dir,
            new,
            self.replay_set,
            config,
            pad_id=self.pad_id,
            progress=progress,
            reference=self.replay_reference,
            frozen=self.frozen_layers,
            neighbours=neighbours,
            null_space=self.null_space,
        )

    def train_config(self) -> TrainConfig:
        """The settings' :func:`train_config`, uncompiled where compiling failed here, and
        under train.compile = 'auto' until :meth:`compile_next` has compiled the step: a job
        that comes first trains at once (1.15x slower) instead of compiling for 30-60 s a batch
        shape. Under 'on' it compiles what it needs itself."""
        config = train_config(self.settings, self.base_dir)
        pending = self.settings.train.compile == "auto" and self._to_compile != []
        if config.compile and (pending or not self.compile_works):
            return dataclasses.replace(config, compile=False)
        return config

    def warm_up(self, *, compile_step: bool = True) -> None:
        """What the first job would otherwise compute: the probe answers, the base's figures,
        its distributions on the replay prompts and their states below the adapted layers;
        with ``compile_step``, the compiled training step too (a worker leaves that to
        :meth:`compile_next` while it has no job, so that none waits for it)."""
        self.regression_loss(None)
        warm_replay(
            self.base_dir,
            self.replay_set,
            self.pad_id,
            self.train_config(),
            self.replay_reference,
            self.frozen_layers,
        )
        while compile_step and self.compile_next():
            pass

    @property
    def compile_pending(self) -> bool:
        """Whether :meth:`compile_next` may have a batch shape left to compile."""
        config = train_config(self.settings, self.base_dir)
        return config.compile and self.compile_works and self._to_compile != []

    def compile_next(self) -> bool:
        """Compile the training step for the next batch shape not compiled yet; returns whether
        there was one. The shapes: replay examples packed in one row (a small job's batch),
        then enough of them for several rows (a larger job's).

        Each shape is its own graph: a row count of 1 is compiled as a constant, other counts
        as a variable. On 2 CPU cores each took 30-60 s (the kernels cached on disk help
        little: most of it is tracing); a job that had to compile the second would stop for
        that long mid-training.
        """
        if not self.compile_pending:
            return False
        config = train_config(self.settings, self.base_dir)
        if self._to_compile is None:
            replay = self.replay_set  # nothing to compile on without it: jobs compile
            n_new = max(1, config.batch_size - config.replay_per_step)
            shapes = [replay[:n_new], _more_than_a_row(replay, self.pad_id)] if replay else []
            self._to_compile = shapes
        if not self._to_compile:
            return False
        new = self._to_compile[0]
        started = time.perf_counter()
        step = dataclasses.replace(config, steps=1, batch_size=len(new) + config.replay_per_step)
        try:
            self.train(new, step)
        except Exception:
            if self.settings.train.compile == "on":
                raise
            # Training itself fails, compiled or not: the jobs meet the same error and their
            # records say what it was; the worker stays up to take them.
            log.exception("warming up the training step failed, and not because of compiling")
            self._to_compile = []
            return True
        self._to_compile.pop(0)
        if self.compile_works:
            log.info(
                "compiled the training step for %d-row batches in %.0f s",
                pack(new, self.pad_id).input_ids.shape[0],
                time.perf_counter() - started,
            )
        return True


def _more_than_a_row(examples: list[TokenizedExample], pad_id: int) -> list[TokenizedExample]:
    """The first examples, repeated if need be, up to the fewest that pack into two rows."""
    chosen: list[TokenizedExample] = []
    for example in itertools.cycle(examples):  # each adds a token at least: this ends
        chosen.append(example)
        if len(chosen) > 1 and pack(chosen, pad_id).input_ids.shape[0] > 1:
            return chosen
    raise AssertionError("unreachable")


def train_config(settings: Settings, base_dir: Path) -> TrainConfig:
    """The trainer's configuration from the settings, the device and precision resolved."""
    device = resolve_device(settings.train.device)
    return TrainConfig(
        rank=settings.train.lora_rank,
        alpha=settings.train.lora_alpha,
        target_modules=tuple(settings.train.lora_target_modules),
        layers=_top_layers(base_dir, settings.train.lora_top_layers),
        learning_rate=settings.train.learning_rate,
        steps=settings.train.steps,
        batch_size=settings.train.batch_size,
        replay_per_step=settings.train.replay_per_step,
        replay_weight=settings.train.replay_weight,
        warmup_steps=settings.train.warmup_steps,
        replay_top_k=settings.train.replay_top_k,
        neighbours_per_step=settings.train.neighbours_per_step,
        null_space_energy=settings.train.null_space_energy,
        seed=settings.train.seed,
        bf16=use_bf16(settings.train.precision, device),
        onednn_products=settings.train.onednn_products,
        device=device,
        quantize_base=resolve_quantization(settings.train.quantization, device, base_dir),
        compile=use_compile(settings.train.compile, device),
        stop_loss=settings.train.stop_loss,
        stop_replay_kl=settings.train.stop_replay_kl,
        stop_patience=settings.train.stop_patience,
    )


def job_shape(settings: Settings, n_examples: int) -> tuple[int, int]:
    """A job's optimizer steps and sequences a step, for ``n_examples`` new examples.

    train.steps of train.batch_size where that passes over them train.min_epochs times; with
    more material, first more new examples a step (up to train.max_batch_size sequences: one
    large step costs less than several small ones), then more steps (up to train.max_steps).
    """
    train = settings.train
    steps, new_per_step = train.steps, train.batch_size - train.replay_per_step
    passes = train.min_epochs * n_examples
    if passes <= steps * new_per_step:
        return steps, train.batch_size
    new_per_step = max(
        new_per_step, min(train.max_batch_size - train.replay_per_step, -(-passes // steps))
    )
    steps = max(steps, min(-(-passes // new_per_step), train.max_steps))
    return steps, new_per_step + train.replay_per_step


def split_heldout(
    examples: list[TrainingExample], fraction: float, seed: int
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """Deterministic split by a hash of each example id: (train, heldout).

    An example is held out only while another about the same subject stays to be trained on
    (:func:`_subject_of`): a fact taught once, held out, is never learned, and the gate then
    refused a job for not recalling what it was never shown. With none to hold out, the
    gate judges the new material in-sample."""
    if len(examples) < 2 or fraction <= 0:
        return examples, []
    n_heldout = max(1, round(len(examples) * fraction))
    ranked = sorted(examples, key=lambda e: hashlib.sha256(f"{seed}:{e.id}".encode()).hexdigest())
    left = Counter(_subject_of(e.messages) for e in examples)
    heldout: set[int] = set()
    for example in ranked:
        subject = _subject_of(example.messages)
        if len(heldout) == n_heldout:
            break
        if left[subject] > 1:
            heldout.add(example.id)
            left[subject] -= 1
    return [e for e in examples if e.id not in heldout], [e for e in examples if e.id in heldout]


def _subject_of(messages: list[dict[str, Any]]) -> str:
    """What a chat teaches about: the longest name in its last question that its answer names
    too, else the question itself (normalized)."""
    question = _last_user_text(messages)
    answer = next(
        (str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "assistant"),
        "",
    )
    subject = answered_subject(question, answer) or question
    return " ".join(subject.lower().split())


def _tokenize(ctx: TrainingContext, chats: list[list[dict[str, Any]]]) -> list[TokenizedExample]:
    template = ctx.engine.default_template
    tok = ctx.engine.tokenizer
    return [tokenize_chat(tok, chat, template, ctx.settings.train.max_seq_len) for chat in chats]


def _with_rewordings(
    settings: Settings, chats: list[list[dict[str, Any]]]
) -> list[list[dict[str, Any]]]:
    """The chats, and with ``train.augment`` each one's further wordings (data.augment)."""
    if not settings.train.augment:
        return chats
    seen = {json.dumps(chat, sort_keys=True) for chat in chats}
    extra: dict[str, list[dict[str, Any]]] = {}
    for chat in chats:
        for more in augmented_chats(chat):
            extra.setdefault(json.dumps(more, sort_keys=True), more)
    return chats + [chat for key, chat in extra.items() if key not in seen]


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last user turn ("" if none, or not plain text)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return ""


def _qa(prompt: str, answer: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def _top_layers(base_dir: Path, share: float) -> tuple[int, ...]:
    """Indices of the top ``share`` of the base's decoder layers; () for all of them."""
    if share >= 1:
        return ()
    n_layers = int(json.loads((base_dir / "config.json").read_text())["num_hidden_layers"])
    count = max(1, round(n_layers * share))
    return tuple(range(n_layers - count, n_layers))


def run_training_job(
    ctx: TrainingContext,
    job_id: int,
    report: Report,
    *,
    worker_id: str,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run job ``job_id``, which ``worker_id`` claimed. Raises :class:`JobLost` if the job stops
    being this worker's before its version is registered (nothing is kept) or promoted (the
    version keeps its figures and is not served). ``overrides``: recipe fields this job changes
    (:data:`RECIPE_OVERRIDES`; the troubleshooter's retries), under the same gate."""
    clock = _StageClock()
    dataset = _build_dataset(ctx, report)
    config = with_overrides(ctx.train_config(), overrides or {})
    clock.lap("dataset")
    attempts: list[dict[str, Any]] = []
    while True:
        model, train_metrics = _train(ctx, dataset, config, report, attempt=len(attempts) + 1)
        clock.lap("train")
        name, path = _save_adapter(ctx, model, report)
        del model  # its memory back before the candidate is loaded to be evaluated
        candidate = _register_version(
            ctx, dataset, name, path, train_metrics, job_id=job_id, worker_id=worker_id
        )
        clock.lap("save")
        evaluation = _evaluate(ctx, dataset, candidate, report)
        decision = _gate(ctx.settings, evaluation)
        decision["narrowly_known"] = [  # right in the base by a hair: not counted (see probes)
            {"question": item.prompt, "base_answer": item.base_answer, "margin": item.margin}
            for item in dataset.probes.narrowly_known
        ]
        clock.lap("evaluate")
        not_promoted = _promote(
            ctx,
            dataset,
            candidate,
            evaluation,
            decision,
            report,
            job_id=job_id,
            worker_id=worker_id,
        )
        clock.lap("gate")
        log.info("job %s: version %s gate %s", job_id, name, decision["reason"])
        attempts.append(
            {"version": name, "passed": decision["passed"], "reason": decision["reason"]}
        )
        stronger = _second_attempt(ctx.settings, config, decision, len(attempts))
        if stronger is None:
            break
        log.info(
            "job %s: %s refused for what it forgot; training again, replay held harder",
            job_id,
            name,
        )
        config = stronger
    if not_promoted:
        log.warning("job %s: %s", job_id, not_promoted)
    return {
        "version_id": candidate.version_id,
        "version": name,
        "promoted": decision["passed"] and not_promoted is None,
        "not_promoted": not_promoted,  # why a version that passed its gate is not served
        "gate": decision,
        "attempts": attempts,  # each candidate trained, in order; the last is the result's
        "queue": dataset.queue,  # what the training queue took (lineage: GET /api/versions)
        "seconds": clock.laps,
    }


# The recipe fields a job may change (the troubleshooter's fixes); batch_size caps the
# sequences a step, which job_shape otherwise sizes to the material.
RECIPE_OVERRIDES = frozenset(
    {"learning_rate", "batch_size", "replay_per_step", "replay_weight", "rank", "alpha"}
)


def with_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """``config`` with a job's recipe changes; raises JobFailed naming one it cannot make."""
    unknown = sorted(set(overrides) - RECIPE_OVERRIDES)
    if unknown:
        raise JobFailed(
            f"a training job cannot change {', '.join(unknown)}; it can change "
            f"{', '.join(sorted(RECIPE_OVERRIDES))}"
        )
    try:
        return dataclasses.replace(config, **overrides)
    except (TypeError, ValueError) as exc:
        raise JobFailed(f"the job's recipe changes {overrides} are not possible: {exc}") from exc


# Rules a stronger hold on what the model knew can satisfy: not the new material's.
_FORGETTING_RULES = frozenset({"retention", "regression loss", "forgetting"})


def _second_attempt(
    settings: Settings, config: TrainConfig, decision: dict[str, Any], attempts: int
) -> TrainConfig | None:
    """The recipe of a second attempt where the first candidate learned the new material but
    was refused for what it forgot (train.second_attempt): the replay KL weighs 4x and twice the
    neighbour prompts join each step. The gate stays as it is; None: no second attempt."""
    refused_by = set(decision.get("decided_by", ()))
    if not settings.train.second_attempt or attempts > 1 or not refused_by:
        return None
    if not refused_by <= _FORGETTING_RULES:
        return None
    return dataclasses.replace(
        config,
        replay_weight=config.replay_weight * 4,
        neighbours_per_step=max(2, config.neighbours_per_step * 2),
    )


@dataclasses.dataclass(frozen=True)
class _Dataset:
    """What a job trains on and is judged on, and what was served when it started."""

    current: ServingTarget  # the candidate's parent, and what the gate compares it with
    train_rows: list[TrainingExample]  # new material, held-out examples left out
    replay_rows: list[TrainingExample]  # learned by the served version's lineage, replayed
    heldout_rows: list[TrainingExample]
    # The new material judged in-sample when none is held out: the examples the served version
    # never saw (all of them when there are none such).
    new_rows: list[TrainingExample]
    queue: dict[str, Any]  # what the training queue selected and left out, in counts
    train_set: list[TokenizedExample]
    heldout_set: list[TokenizedExample]
    neighbour_set: list[TokenizedExample]  # held to the base while training (data.neighbours)
    probes: ProbeSet


def _build_dataset(ctx: TrainingContext, report: Report) -> _Dataset:
    """The examples the training queue selects (``selftune.data.queue``), split into train and
    held-out and tokenized, with the version served now: the job judges its candidate against
    that one, whatever is served later."""
    settings = ctx.settings
    report(0.01, "building dataset")
    with ctx.db.read() as session:
        examples = active_examples(session)
        current = serving_target(session)
        learned = lineage_examples(session, current.version_id)
    needed = settings.train.min_new_examples
    if len(examples) < needed:
        raise NoTrainingData(
            f"{len(examples)} curated examples, need {needed}: rate answers or send corrections "
            "with POST /api/feedback first"
        )
    plan = plan_run(
        (Candidate(e.id, e.user_id, e.source, as_utc(e.created_at)) for e in examples),
        learned,
        settings.queue,
        utcnow(),
    )
    by_id = {e.id: e for e in examples}
    # The gate judges what this job adds: the examples the served version never saw. Drawn
    # from all of them, the held-out example was often an earlier fact's, which the served
    # version already knew, so versions that learned none of their new facts passed. With
    # nothing new, the run retrains what it replays and is judged on that.
    new_rows = [by_id[c.id] for c in plan.new] or [by_id[c.id] for c in plan.replay]
    replay_rows = [by_id[c.id] for c in plan.replay] if plan.new else []
    if not new_rows:
        raise NoTrainingData(
            f"the training queue selected none of {len(examples)} curated examples ("
            f"{dict(Counter(plan.left_out.values()))}): see GET /api/queue/stats"
        )
    _, heldout_rows = split_heldout(new_rows, settings.train.heldout_fraction, settings.train.seed)
    held = {e.id for e in heldout_rows}
    new_rows = [e for e in new_rows if e.id not in held]
    train_rows = [*new_rows, *replay_rows]
    return _Dataset(
        current=current,
        train_rows=new_rows,
        replay_rows=replay_rows,
        heldout_rows=heldout_rows,
        new_rows=new_rows,
        queue={
            "new": len(plan.new),
            "replayed": len(plan.replay),
            "left_out": dict(sorted(Counter(plan.left_out.values()).items())),
            "user_shares": {user: round(share, 4) for user, share in plan.shares().items()},
        },
        train_set=_tokenize(ctx, _with_rewordings(settings, [e.messages for e in train_rows])),
        heldout_set=_tokenize(ctx, [e.messages for e in heldout_rows]),
        # Made from every example, held-out ones too: what must not change is no secret.
        neighbour_set=ctx.neighbour_set(train_rows + heldout_rows),
        probes=ctx.probes,  # built on a worker's first job: its time counts as the dataset's
    )


def _train(
    ctx: TrainingContext, dataset: _Dataset, config: TrainConfig, report: Report, attempt: int = 1
) -> tuple[Any, dict[str, Any]]:
    """The trained PEFT model, and its training figures as the version keeps them."""

    label = "training" if attempt == 1 else "second attempt, replay held harder: training"

    def on_step(step: int, total: int, loss: float, grad_norm: float) -> None:
        stage = f"{label} step {step}/{total} loss {loss:.3f} grad {grad_norm:.3f}"
        report(0.05 + 0.75 * step / total, stage)

    report(0.05, label)
    steps, batch_size = job_shape(ctx.settings, len(dataset.train_set))
    if config.batch_size < ctx.settings.train.batch_size:  # a job's cap (with_overrides)
        batch_size = max(config.replay_per_step + 1, min(batch_size, config.batch_size))
    config = dataclasses.replace(config, steps=steps, batch_size=batch_size)
    try:
        model, result = ctx.train(dataset.train_set, config, on_step, dataset.neighbour_set)
    except TrainingDiverged as exc:
        raise JobFailed(
            str(exc),
            {
                "diverged": {"step": exc.step, "loss": str(exc.loss)},
                "config": dataclasses.asdict(config),
            },
        ) from exc
    if config.compile and not ctx.compile_works:  # it failed and trained again uncompiled
        config = dataclasses.replace(config, compile=False)
    health = _adapter_health(model)
    if not health["finite"]:
        raise JobFailed(
            "training diverged: the adapter's weights are not finite numbers; train with a "
            "lower train.learning_rate",
            {"adapter": health, "config": dataclasses.asdict(config)},
        )
    return model, {
        "losses": [round(x, 5) for x in result.losses],
        "new_material_losses": [round(x, 5) for x in result.new_losses],
        "grad_norms": [round(x, 4) for x in result.grad_norms],
        "seconds": round(result.seconds, 2),
        "step_seconds": [round(x, 3) for x in result.step_seconds],
        "tokens": result.tokens,
        "tokens_per_second": round(result.tokens_per_second, 1),
        "steps": len(result.losses),
        "stopped_early": result.stopped_early,
        "neighbour_prompts": len(dataset.neighbour_set),
        # The troubleshooter's figures: a loss above ln(vocabulary) at the start diverges, a
        # share of 1 means the prompts' tokens are trained on too (labels not masked).
        "initial_loss_limit": round(math.log(len(ctx.engine.tokenizer)), 4),
        "supervised_share": _supervised_share(dataset.train_set),
        "adapter": health,
        "attempt": attempt,  # 2: trained again after the first candidate forgot too much
        "config": dataclasses.asdict(config),
    }


def _supervised_share(examples: Sequence[TokenizedExample]) -> float:
    """The share of the new examples' tokens that carry a loss: the answers' share."""
    total = sum(len(example.labels) for example in examples)
    return round(sum(e.n_loss_tokens for e in examples) / total, 4) if total else 0.0


def _adapter_health(model: Any) -> dict[str, Any]:
    """Whether the trained adapter's weights are finite, and the norm of its LoRA B matrices
    (0: it changes nothing, as when every update was lost)."""
    finite, squares = True, 0.0
    for name, param in model.named_parameters():
        if "lora_" not in name:
            continue
        data = param.detach().float()
        finite = finite and bool(torch.isfinite(data).all())
        if "lora_B" in name:
            squares += float(data.pow(2).sum())
    norm = math.sqrt(squares) if math.isfinite(squares) else float("inf")
    return {"finite": finite, "b_norm": round(norm, 6) if math.isfinite(norm) else None}


def _save_adapter(ctx: TrainingContext, model: Any, report: Report) -> tuple[str, Path]:
    """Write the adapter to the next version's folder, whole or not at all: (name, path)."""
    report(0.82, "saving")
    with ctx.db.write() as session:
        name = next_version_name(session, ctx.settings.versions_dir)
    path = ctx.settings.versions_dir / name
    metadata: dict[str, Any] = {"version": name, "base": ctx.source.location}
    with atomic_directory(path, metadata) as tmp:
        model.save_pretrained(tmp)  # the PEFT folder, for PEFT, vLLM and LoRAX users
        metadata["gguf_adapter"] = _export_gguf(tmp, ctx.base_dir)
    return name, path


def _register_version(
    ctx: TrainingContext,
    dataset: _Dataset,
    name: str,
    path: Path,
    train_metrics: dict[str, Any],
    *,
    job_id: int,
    worker_id: str,
) -> AdapterRef:
    """Record the saved adapter as a version with the examples it saw, in the transaction that
    checks the job is still this worker's; if it is not, drop the folder and raise JobLost."""
    with ctx.db.write() as session:
        still_ours = jobs.holds(session, job_id, worker_id)
        if still_ours:
            version = Version(
                name=name,
                base_model=ctx.source.location,
                base_fingerprint=ctx.source.fingerprint,
                parent_id=dataset.current.version_id,
                job_id=job_id,
                path=str(path.resolve()),
                chat_template=ctx.engine.default_template,
                train_metrics=train_metrics,
            )
            session.add(version)
            session.flush()
            roles = (
                (dataset.train_rows, "train"),
                (dataset.replay_rows, "replay"),
                (dataset.heldout_rows, "heldout"),
            )
            for rows, role in roles:
                for row in rows:
                    session.add(VersionExample(version_id=version.id, example_id=row.id, role=role))
            version_id = version.id
    if not still_ours:
        shutil.rmtree(path)  # nothing refers to it; the run that holds the job saves its own
        raise JobLost(f"job {job_id} stopped being this worker's while it trained; {name} dropped")
    return AdapterRef(version_id, name, path)


@dataclasses.dataclass(frozen=True)
class _Evaluation:
    """The gate's figures for a candidate, its answers to the questions the base knew, and what
    the gate shows it decided on."""

    figures: GateFigures
    regression_answers: list[dict[str, Any]]  # {prompt, answer, kept}: the version's eval_metrics
    # {question, served_answer, candidate_answer, served_kept}: known answers the candidate lost
    changed_known_answers: list[dict[str, Any]]
    # {question, expected_terms, served_answer, candidate_answer, served_recall, recall}
    heldout: list[dict[str, Any]]


def _evaluate(
    ctx: TrainingContext, dataset: _Dataset, candidate: AdapterRef, report: Report
) -> _Evaluation:
    """Measure the candidate, loaded from its saved folder, beside the version served when the
    job started: the new material (held out, or in-sample if none is), the regression set and
    the answers the base knew."""
    report(0.86, "evaluating")
    current = dataset.current
    serving = (
        AdapterRef(current.version_id, current.name, current.path)
        if current.version_id is not None and current.path is not None
        else None
    )
    # With no held-out example (a single new one), the new material is judged in-sample.
    judged_rows = dataset.heldout_rows or dataset.new_rows
    judged = dataset.heldout_set or _tokenize(ctx, [row.messages for row in judged_rows])
    engine = ctx.engine
    known = dataset.probes.known
    answers = _known_answers(engine, known, candidate)
    kept = [item.answered_by(a) for item, a in zip(known, answers, strict=True)]
    judged_chats = [row.messages for row in judged_rows]
    recall_now = judge_heldout(engine, judged_chats, serving)
    recall_new = judge_heldout(engine, judged_chats, candidate)
    figures = GateFigures(
        new_recall_current=recall_now.recall,
        new_recall_candidate=recall_new.recall,
        new_loss_current=round(engine.answer_nll(judged, serving), 4),
        new_loss_candidate=round(engine.answer_nll(judged, candidate), 4),
        regression_loss_current=ctx.regression_loss(serving),
        regression_loss_candidate=ctx.regression_loss(candidate),
        retention_candidate=round(sum(kept) / len(answers), 4) if answers else 1.0,
        heldout_examples=len(dataset.heldout_set),
        regression_questions=len(answers),
        **_forgetting(ctx, dataset, candidate),
    )
    regression_answers = [
        {"prompt": item.prompt, "answer": a, "kept": k}
        for item, a, k in zip(known, answers, kept, strict=True)
    ]
    lost = [(item, a) for item, a, k in zip(known, answers, kept, strict=True) if not k]
    return _Evaluation(
        figures,
        regression_answers,
        _changed_known_answers(engine, lost, serving),
        _heldout_answers(recall_now, recall_new),
    )


def _forgetting(
    ctx: TrainingContext, dataset: _Dataset, candidate: AdapterRef
) -> dict[str, float | None]:
    """The candidate's answer loss on the base's own answers against the base's: on the replay
    set (once per worker for the base) and on this job's neighbour prompts."""
    neighbours = dataset.neighbour_set

    def neighbour_loss(adapter: AdapterRef | None) -> float | None:
        return round(ctx.engine.answer_nll(neighbours, adapter), 4) if neighbours else None

    return {
        "replay_loss_base": ctx.replay_loss(None),
        "replay_loss_candidate": ctx.replay_loss(candidate),
        "neighbour_loss_base": neighbour_loss(None),
        "neighbour_loss_candidate": neighbour_loss(candidate),
    }


def _known_answers(
    engine: EvaluatingEngine, items: Sequence[RegressionItem], adapter: AdapterRef | None
) -> list[str]:
    """Greedy answers under ``adapter`` to the regression questions ``items``, each ending once
    it has the expected word."""
    return generate_answers(
        engine,
        [item.prompt for item in items],
        adapter,
        _RETENTION_TOKENS,
        until=[item.answered_by for item in items],
    )


def _changed_known_answers(
    engine: EvaluatingEngine,
    lost: Sequence[tuple[RegressionItem, str]],
    serving: AdapterRef | None,
) -> list[dict[str, Any]]:
    """The known questions the candidate answers wrongly, with the answer of the version served
    when the job started beside the candidate's: the base's cached answer, or a served
    version's own, generated as the candidate's was. ``served_kept``: whether the served
    version answered it correctly (the base does, by definition of known)."""
    items = [item for item, _ in lost]
    if serving is None:
        served = [item.base_answer for item in items]
    else:
        served = _known_answers(engine, items, serving) if items else []
    return [
        {
            "question": item.prompt,
            "served_answer": served_answer,
            "candidate_answer": answer,
            "served_kept": item.answered_by(served_answer),
        }
        for (item, answer), served_answer in zip(lost, served, strict=True)
    ]


def _heldout_answers(served: HeldoutResult, candidate: HeldoutResult) -> list[dict[str, Any]]:
    """Each judged example of the new material: what the served version and the candidate
    answered, and how much of the key terms each recalled."""
    return [
        {
            "question": new.question,
            "expected_terms": list(new.expected_terms),
            "served_answer": now.answer,
            "candidate_answer": new.answer,
            "served_recall": now.recall,
            "recall": new.recall,
        }
        for now, new in zip(served.items, candidate.items, strict=True)
    ]


def _gate(settings: Settings, evaluation: _Evaluation) -> dict[str, Any]:
    """The gate's decision on the evaluation's figures, under the settings' policy, with the
    answers it was made on. (Arguments passed by position: tests wrap ``decide``.)"""
    policy = GatePolicy(
        min_improvement=settings.gate.min_improvement,
        regression_tolerance=settings.gate.regression_tolerance,
        min_retention=settings.gate.min_answer_retention,
        forgetting_tolerance=settings.gate.forgetting_tolerance,
    )
    return decide(evaluation.figures, policy, evaluation.changed_known_answers, evaluation.heldout)


def _promote(
    ctx: TrainingContext,
    dataset: _Dataset,
    candidate: AdapterRef,
    evaluation: _Evaluation,
    decision: dict[str, Any],
    report: Report,
    *,
    job_id: int,
    worker_id: str,
) -> str | None:
    """Store the gate's decision on the version and, if it passed and the job is still this
    worker's, serve it, unless the alias moved since the job started: returns why not then.
    Raises JobLost, the figures kept, if the job stopped being this worker's."""
    report(0.97, "gate")
    with ctx.db.write() as session:
        still_ours = jobs.holds(session, job_id, worker_id)
        saved = session.get(Version, candidate.version_id)
        assert saved is not None
        saved.gate = decision
        saved.eval_metrics = {"regression_answers": evaluation.regression_answers}
        not_promoted: str | None = None
        if decision["passed"] and still_ours:
            try:
                promote_gated(
                    session,
                    candidate.version_id,
                    dataset.current.version_id,
                    actor=f"job {job_id}",
                    reason="gate passed",
                )
            except AliasMoved as moved:
                not_promoted = str(moved)
    if not still_ours:
        name = candidate.name
        raise JobLost(
            f"job {job_id} stopped being this worker's while it evaluated {name}: {name} keeps "
            f"its gate's figures ({decision['reason']}) but was not promoted"
        )
    return not_promoted


def _export_gguf(peft_dir: Path, base_dir: Path) -> str | None:
    """The same adapter as a GGUF LoRA for llama.cpp (``--lora``), where the base supports it."""
    base_config = json.loads((base_dir / "config.json").read_text())
    try:
        export_gguf_adapter(peft_dir, base_config, peft_dir / GGUF_ADAPTER)
    except AdapterExportError as exc:
        log.warning("no GGUF adapter for this version: %s", exc)
        return None
    return GGUF_ADAPTER


class _StageClock:
    """Seconds spent in each stage, for the job's result and the latency benchmark."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = round(self.laps.get(stage, 0.0) + now - self._last, 3)
        self._last = now
