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
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selftune.artifacts import GGUF_ADAPTER
from selftune.atomic import atomic_directory
from selftune.config import Settings
from selftune.data.curation import active_examples
from selftune.data.tokenize import TokenizedExample, first_answer_tokens, tokenize_chat
from selftune.engines.base import AdapterRef, EvaluatingEngine
from selftune.evaluation.gate import GateFigures, GatePolicy, decide
from selftune.evaluation.heldout import heldout_recall
from selftune.evaluation.probes import ProbeSet, build_probe_set, generate_answers
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
from selftune.store.schema import TrainingExample, Version, VersionExample
from selftune.training.device import resolve_device, resolve_quantization, use_bf16, use_compile
from selftune.training.frozen_layers import FrozenLayers
from selftune.training.packing import pack
from selftune.training.trainer import (
    ProgressFn,
    ReplayReference,
    TrainConfig,
    TrainResult,
    train_lora,
    warm_replay,
)

__all__ = ["JobCancelled", "JobLost", "NoTrainingData", "TrainingContext", "run_training_job"]

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
    # The examples' states below the adapted layers: the replay prompts' serve every job.
    frozen_layers: FrozenLayers = dataclasses.field(default_factory=FrozenLayers)
    # Cleared when compiling failed under train.compile = 'auto': jobs then train uncompiled
    # rather than fail.
    compile_works: bool = True
    # The batches whose compiled training step is still to be built (see compile_next); None:
    # not listed yet.
    _to_compile: list[list[TokenizedExample]] | None = None

    @property
    def probes(self) -> ProbeSet:
        if self._probes is None:
            key = hashlib.sha256(
                f"{self.source.fingerprint}:{self.engine.name}:{self.engine.default_template}".encode()
            ).hexdigest()[:12]
            self._probes = build_probe_set(self.engine, self.settings.cache_dir, key)
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

    def train(
        self, new: list[TokenizedExample], config: TrainConfig, progress: ProgressFn | None = None
    ) -> tuple[Any, TrainResult]:
        """:func:`train_lora` on ``new`` with the replay set, and what this worker keeps about
        the base between jobs (its replay distributions, the states below the adapters).

        A compiled run that fails runs again uncompiled. If that works, compiling was at fault
        (inductor's failures to build arrive as ``TorchDynamoException``, but a compiled
        kernel's as it runs need not): later runs skip it, under train.compile = 'auto'; 'on'
        insists, so the error stands. If it fails too, its own error says what went wrong.
        """
        try:
            return self._train_lora(new, config, progress)
        except JobCancelled:
            raise
        except Exception as error:
            if not config.compile or self.settings.train.compile == "on":
                raise
            log.warning("a compiled training run failed (%s); running it again uncompiled", error)
            trained = self._train_lora(new, dataclasses.replace(config, compile=False), progress)
            log.warning(
                "torch.compile failed, so training runs uncompiled (1.15x slower); set "
                "train.compile = 'off' to skip trying",
                exc_info=error,
            )
            self.compile_works = False
            return trained

    def _train_lora(
        self, new: list[TokenizedExample], config: TrainConfig, progress: ProgressFn | None
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
        replay_top_k=settings.train.replay_top_k,
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


def split_heldout(
    examples: list[TrainingExample], fraction: float, seed: int
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """Deterministic split by a hash of each example id: (train, heldout)."""
    if len(examples) < 2 or fraction <= 0:
        return examples, []
    n_heldout = max(1, round(len(examples) * fraction))
    ranked = sorted(examples, key=lambda e: hashlib.sha256(f"{seed}:{e.id}".encode()).hexdigest())
    heldout = {e.id for e in ranked[:n_heldout]}
    return [e for e in examples if e.id not in heldout], [e for e in examples if e.id in heldout]


def _tokenize(ctx: TrainingContext, chats: list[list[dict[str, Any]]]) -> list[TokenizedExample]:
    template = ctx.engine.default_template
    tok = ctx.engine.tokenizer
    return [tokenize_chat(tok, chat, template, ctx.settings.train.max_seq_len) for chat in chats]


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
    ctx: TrainingContext, job_id: int, report: Report, *, worker_id: str
) -> dict[str, Any]:
    """Run job ``job_id``, which ``worker_id`` claimed. Raises :class:`JobLost` if the job stops
    being this worker's before its version is registered (nothing is kept) or promoted (the
    version keeps its figures and is not served)."""
    clock = _StageClock()
    dataset = _build_dataset(ctx, report)
    config = ctx.train_config()
    clock.lap("dataset")
    model, train_metrics = _train(ctx, dataset.train_set, config, report)
    clock.lap("train")
    name, path = _save_adapter(ctx, model, report)
    del model  # its memory back before the candidate is loaded to be evaluated
    candidate = _register_version(
        ctx, dataset, name, path, train_metrics, job_id=job_id, worker_id=worker_id
    )
    clock.lap("save")
    evaluation = _evaluate(ctx, dataset, candidate, report)
    decision = _gate(ctx.settings, evaluation.figures)
    clock.lap("evaluate")
    not_promoted = _promote(
        ctx, dataset, candidate, evaluation, decision, report, job_id=job_id, worker_id=worker_id
    )
    clock.lap("gate")
    log.info("job %s: version %s gate %s", job_id, name, decision["reason"])
    if not_promoted:
        log.warning("job %s: %s", job_id, not_promoted)
    return {
        "version_id": candidate.version_id,
        "version": name,
        "promoted": decision["passed"] and not_promoted is None,
        "not_promoted": not_promoted,  # why a version that passed its gate is not served
        "gate": decision,
        "seconds": clock.laps,
    }


@dataclasses.dataclass(frozen=True)
class _Dataset:
    """What a job trains on and is judged on, and what was served when it started."""

    current: ServingTarget  # the candidate's parent, and what the gate compares it with
    train_rows: list[TrainingExample]
    heldout_rows: list[TrainingExample]
    train_set: list[TokenizedExample]
    heldout_set: list[TokenizedExample]
    probes: ProbeSet


def _build_dataset(ctx: TrainingContext, report: Report) -> _Dataset:
    """The curated examples, split into train and held-out and tokenized, with the version
    served now: the job judges its candidate against that one, whatever is served later."""
    settings = ctx.settings
    report(0.01, "building dataset")
    with ctx.db.read() as session:
        examples = active_examples(session)
        current = serving_target(session)
    needed = settings.train.min_new_examples
    if len(examples) < needed:
        raise NoTrainingData(
            f"{len(examples)} curated examples, need {needed}: rate answers or send corrections "
            "with POST /api/feedback first"
        )
    train_rows, heldout_rows = split_heldout(
        examples, settings.train.heldout_fraction, settings.train.seed
    )
    return _Dataset(
        current=current,
        train_rows=train_rows,
        heldout_rows=heldout_rows,
        train_set=_tokenize(ctx, [e.messages for e in train_rows]),
        heldout_set=_tokenize(ctx, [e.messages for e in heldout_rows]),
        probes=ctx.probes,  # built on a worker's first job: its time counts as the dataset's
    )


def _train(
    ctx: TrainingContext, train_set: list[TokenizedExample], config: TrainConfig, report: Report
) -> tuple[Any, dict[str, Any]]:
    """The trained PEFT model, and its training figures as the version keeps them."""

    def on_step(step: int, total: int, loss: float) -> None:
        report(0.05 + 0.75 * step / total, f"training step {step}/{total} loss {loss:.3f}")

    report(0.05, "training")
    model, result = ctx.train(train_set, config, on_step)
    if config.compile and not ctx.compile_works:  # it failed and trained again uncompiled
        config = dataclasses.replace(config, compile=False)
    return model, {
        "losses": [round(x, 5) for x in result.losses],
        "new_material_losses": [round(x, 5) for x in result.new_losses],
        "seconds": round(result.seconds, 2),
        "step_seconds": [round(x, 3) for x in result.step_seconds],
        "tokens": result.tokens,
        "tokens_per_second": round(result.tokens_per_second, 1),
        "steps": len(result.losses),
        "stopped_early": result.stopped_early,
        "config": dataclasses.asdict(config),
    }


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
            for rows, role in ((dataset.train_rows, "train"), (dataset.heldout_rows, "heldout")):
                for row in rows:
                    session.add(VersionExample(version_id=version.id, example_id=row.id, role=role))
            version_id = version.id
    if not still_ours:
        shutil.rmtree(path)  # nothing refers to it; the run that holds the job saves its own
        raise JobLost(f"job {job_id} stopped being this worker's while it trained; {name} dropped")
    return AdapterRef(version_id, name, path)


@dataclasses.dataclass(frozen=True)
class _Evaluation:
    """The gate's figures for a candidate, and its answers to the questions the base knew."""

    figures: GateFigures
    regression_answers: list[dict[str, Any]]  # {prompt, answer, kept}: the version's eval_metrics


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
    # With no held-out example (a single one in all), the new material is judged in-sample.
    judged = dataset.heldout_set or dataset.train_set
    engine = ctx.engine
    known = dataset.probes.known
    answers = generate_answers(  # an answer ends once it has the expected word
        engine,
        [item.prompt for item in known],
        candidate,
        _RETENTION_TOKENS,
        until=[item.answered_by for item in known],
    )
    kept = sum(item.answered_by(a) for item, a in zip(known, answers, strict=True))
    judged_chats = [row.messages for row in dataset.heldout_rows or dataset.train_rows]
    recall_now = heldout_recall(engine, judged_chats, serving)
    recall_new = heldout_recall(engine, judged_chats, candidate)
    figures = GateFigures(
        new_recall_current=recall_now,
        new_recall_candidate=recall_new,
        new_loss_current=round(engine.answer_nll(judged, serving), 4),
        new_loss_candidate=round(engine.answer_nll(judged, candidate), 4),
        regression_loss_current=ctx.regression_loss(serving),
        regression_loss_candidate=ctx.regression_loss(candidate),
        retention_candidate=round(kept / len(answers), 4) if answers else 1.0,
        heldout_examples=len(dataset.heldout_set),
        regression_questions=len(answers),
    )
    regression_answers = [
        {"prompt": item.prompt, "answer": a, "kept": item.answered_by(a)}
        for item, a in zip(known, answers, strict=True)
    ]
    return _Evaluation(figures, regression_answers)


def _gate(settings: Settings, figures: GateFigures) -> dict[str, Any]:
    """The gate's decision on the figures, under the settings' policy."""
    policy = GatePolicy(
        min_improvement=settings.gate.min_improvement,
        regression_tolerance=settings.gate.regression_tolerance,
        min_retention=settings.gate.min_answer_retention,
    )
    return decide(figures, policy)


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
        self.laps[stage] = round(now - self._last, 3)
        self._last = now
