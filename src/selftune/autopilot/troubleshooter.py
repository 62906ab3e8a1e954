"""The troubleshooter: diagnoses each training job and the served model from the figures they
record, and applies fixes in order, never around the gate.

A diagnosis names what went wrong with the figures that show it; a fix is a retry of the job
with a changed recipe (lower learning rate, smaller batch, more replay, a larger rank), a
rollback of the last promotion, or, when the fixes for one problem run out, switching its
trigger off with an alert. Each is an event (``autopilot_diagnosis``, ``autopilot_fix``,
``autopilot_alert``), so the timeline tells the story. A retry is an ordinary training job
under the same gate: a fix can only make a candidate that passes it, never serve one that did
not.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import statistics
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from selftune.autopilot.control import alert, apply, current
from selftune.config import AutopilotSettings, Settings
from selftune.registry.versions import RegistryError, rollback, serving_target
from selftune.store.db import Database
from selftune.store.jobs import add_job
from selftune.store.schema import (
    AliasChange,
    Event,
    Feedback,
    Interaction,
    Job,
    Version,
    as_utc,
)

__all__ = [
    "AUTOPILOT",
    "Diagnosis",
    "after_training_job",
    "diagnose_job",
    "served_regression",
    "watch_served",
]

AUTOPILOT = "autopilot"  # the user the autopilot's jobs and actions are recorded under

# A gradient norm this many times the run's median is a spike.
_SPIKE = 10.0
# New-material loss that fell by less than this share over a run made no progress.
_NO_PROGRESS = 0.1
# The gate's rules that more replay can satisfy (what the model knew), and the new material's.
_FORGETTING = frozenset({"retention", "regression loss", "forgetting"})
_NEW_MATERIAL = "new material"
# What no recipe can fix: the data or the base are wrong, and a person must look.
_NO_RETRY = frozenset({"loss_above_uniform", "labels_not_masked"})


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """What went wrong, a sentence saying so, and the figures that show it."""

    kind: str
    detail: str
    figures: dict[str, Any]


def diagnose_job(
    job: Job, metrics: dict[str, Any] | None, refusals_in_row: int, config: AutopilotSettings
) -> list[Diagnosis]:
    """Everything wrong with a finished training job: ``metrics`` are its version's training
    figures (None: no version was made), ``refusals_in_row`` the gate refusals that ended the
    latest training jobs, this one's included."""
    found: list[Diagnosis] = []
    result = job.result or {}
    error = job.error or ""
    if job.status == "failed":
        if "diverged" in result or "training diverged" in error:
            found.append(Diagnosis("non_finite_loss", error, result.get("diverged", {})))
        elif "out of memory" in error.lower() or "MemoryError" in error:
            found.append(Diagnosis("out_of_memory", error, {}))
        if not result.get("adapter", {}).get("finite", True):
            found.append(Diagnosis("bad_adapter", error, result["adapter"]))
        return found
    if metrics:
        found += _training_figures(metrics)
    gate = result.get("gate") or {}
    if gate and not gate.get("passed", True):
        found += _gate_figures(gate, metrics or {}, refusals_in_row, config)
    return found


def _training_figures(metrics: dict[str, Any]) -> list[Diagnosis]:
    found: list[Diagnosis] = []
    losses = [float(x) for x in metrics.get("losses", [])]
    new_losses = [float(x) for x in metrics.get("new_material_losses", [])]
    norms = [float(x) for x in metrics.get("grad_norms", [])]
    limit = metrics.get("initial_loss_limit")
    if new_losses and limit is not None and new_losses[0] > float(limit):
        # Before any update, so no learning rate did this: the base or the labels are wrong.
        found.append(
            Diagnosis(
                "loss_above_uniform",
                f"the new material's loss at the first step, {new_losses[0]:.2f}, is above "
                f"ln(vocabulary) = {float(limit):.2f}, what guessing uniformly scores: the "
                "base model, its tokenizer or the examples' labels are wrong",
                {"first_loss": new_losses[0], "limit": limit},
            )
        )
    if len(losses) >= 3 and losses[-1] > 2 * losses[0]:
        found.append(
            Diagnosis(
                "exploding_loss",
                f"the loss rose from {losses[0]:.3f} to {losses[-1]:.3f}",
                {"first_loss": losses[0], "last_loss": losses[-1]},
            )
        )
    if len(norms) >= 4:
        median = statistics.median(norms)
        peak = max(norms)
        if median > 0 and peak > _SPIKE * median:
            found.append(
                Diagnosis(
                    "gradient_spike",
                    f"a gradient norm of {peak:.3g} against a median of {median:.3g}",
                    {"peak": peak, "median": median, "step": norms.index(peak) + 1},
                )
            )
    if len(new_losses) >= 3 and new_losses[0] > 0:
        fell = (new_losses[0] - new_losses[-1]) / new_losses[0]
        if fell < _NO_PROGRESS:
            found.append(
                Diagnosis(
                    "no_progress",
                    f"the new material's loss went from {new_losses[0]:.3f} to "
                    f"{new_losses[-1]:.3f} in {len(new_losses)} steps",
                    {"first": new_losses[0], "last": new_losses[-1], "steps": len(new_losses)},
                )
            )
    share = metrics.get("supervised_share")
    if share is not None and float(share) >= 0.99:
        found.append(
            Diagnosis(
                "labels_not_masked",
                f"{float(share):.0%} of the training tokens carry a loss: the prompts are "
                "trained on too, not only the answers",
                {"supervised_share": share},
            )
        )
    adapter = metrics.get("adapter") or {}
    if adapter.get("b_norm") == 0:
        found.append(
            Diagnosis(
                "bad_adapter", "the adapter's B matrices are all zero: it changes nothing", adapter
            )
        )
    return found


def _gate_figures(
    gate: dict[str, Any], metrics: dict[str, Any], refusals_in_row: int, config: AutopilotSettings
) -> list[Diagnosis]:
    found: list[Diagnosis] = []
    rules = list(gate.get("decided_by", []))
    figures = gate.get("figures", {})
    found.append(
        Diagnosis(
            "gate_refused",
            f"the gate refused the candidate ({gate.get('reason', '')}); "
            f"{refusals_in_row} refusal(s) in a row",
            {"rules": rules, "in_a_row": refusals_in_row},
        )
    )
    new_loss, served_loss = figures.get("new_loss_candidate"), figures.get("new_loss_current")
    train_losses = [float(x) for x in metrics.get("new_material_losses", [])]
    if (
        figures.get("heldout_examples")
        and new_loss is not None
        and served_loss is not None
        and new_loss > served_loss
        and len(train_losses) >= 2
        and train_losses[-1] < train_losses[0]
    ):
        found.append(
            Diagnosis(
                "overfitting",
                f"the held-out loss rose ({served_loss:.3f} to {new_loss:.3f}) while the "
                f"training loss fell ({train_losses[0]:.3f} to {train_losses[-1]:.3f})",
                {"heldout_before": served_loss, "heldout_after": new_loss},
            )
        )
    return found


def _fix(
    diagnoses: list[Diagnosis], recipe: dict[str, Any], config: AutopilotSettings
) -> tuple[str, dict[str, Any]] | None:
    """The next fix for these diagnoses, given the recipe the job trained with: a description
    and the overrides of the retry; None where no retry can help."""
    kinds = {d.kind for d in diagnoses}
    if kinds & _NO_RETRY:
        return None
    lr = float(recipe.get("learning_rate", 0.0))
    if kinds & {"non_finite_loss", "exploding_loss", "gradient_spike", "bad_adapter"}:
        lower = lr * config.learning_rate_factor
        return f"lower the learning rate from {lr:g} to {lower:g}", {"learning_rate": lower}
    if "out_of_memory" in kinds:
        batch = int(recipe.get("batch_size", 2))
        replay = int(recipe.get("replay_per_step", 0))
        smaller = max(replay + 1, batch // 2)
        if smaller >= batch:
            return None
        return f"shrink the batch from {batch} to {smaller} sequences", {"batch_size": smaller}
    if "overfitting" in kinds:
        lower = lr * 0.5
        return f"halve the learning rate to {lower:g} (overfitting)", {"learning_rate": lower}
    refused = next((d for d in diagnoses if d.kind == "gate_refused"), None)
    if refused is None:
        return None
    rules = set(refused.figures["rules"])
    if rules & _FORGETTING:
        weight = float(recipe.get("replay_weight", 1.0)) * 2
        replay = int(recipe.get("replay_per_step", 0)) + 1
        return (
            f"raise the replay share: weight {weight:g}, {replay} replayed sequences a step",
            {"replay_weight": weight, "replay_per_step": replay},
        )
    if _NEW_MATERIAL in rules:  # learned too little: LoRA's capacity, then (hybrid) more of it
        rank = int(recipe.get("rank", 8)) * 2
        alpha = float(recipe.get("alpha", 16.0)) * 2
        return f"a larger LoRA rank, {rank}", {"rank": rank, "alpha": alpha}
    return None


def after_training_job(settings: Settings, db: Database, job_id: int) -> list[int]:
    """Diagnose the finished training job ``job_id`` and apply the next fix: the ids of the
    jobs queued (a retry), if any."""
    with db.read() as session:
        config = current(settings, session)
        job = session.get(Job, job_id)
        if not (config.enabled and config.troubleshoot) or job is None or job.kind != "train":
            return []
        version_id = (job.result or {}).get("version_id")
        version = session.get(Version, version_id) if version_id else None
        metrics = dict(version.train_metrics or {}) if version is not None else None
        diagnoses = diagnose_job(job, metrics, _refusals_in_row(session), config)
        params = dict(job.params or {})
    if (job.result or {}).get("promoted"):  # served: only what no gate can see matters
        diagnoses = [d for d in diagnoses if d.kind in _NO_RETRY]
    if not diagnoses:
        return []
    chain = [*params.get("chain", []), job_id]
    recipe = {**(metrics or {}).get("config", {}), **(job.result or {}).get("config", {})}
    if not recipe:
        recipe = _recipe_of(settings)
    recipe.update(params.get("overrides", {}))
    fix = _fix(diagnoses, recipe, config)
    with db.write() as session:
        session.add(
            Event(
                kind="autopilot_diagnosis",
                payload={
                    "job_id": job_id,
                    "diagnoses": [dataclasses.asdict(d) for d in diagnoses],
                },
            )
        )
        if (job.result or {}).get("promoted"):
            return []  # served: whatever was odd, the gate found it better
        fixes_so_far = len(chain) - 1
        if fix is None or fixes_so_far >= config.max_fixes:
            _give_up(settings, session, config, params, diagnoses, chain, fix is None)
            return []
        what, overrides = fix
        retry = add_job(
            session,
            "train",
            AUTOPILOT,
            {
                "reason": f"autopilot: retry of job {job_id}: {what}",
                "origin": "troubleshooter",
                "trigger": params.get("trigger"),
                "chain": chain,
                "overrides": {**params.get("overrides", {}), **overrides},
            },
        )
        session.add(
            Event(
                kind="autopilot_fix",
                payload={
                    "job_id": job_id,
                    "fix": what,
                    "overrides": overrides,
                    "retry_job_id": retry.id,
                    "because": [d.kind for d in diagnoses],
                    "attempt": fixes_so_far + 1,
                },
            )
        )
        return [retry.id]


def _recipe_of(settings: Settings) -> dict[str, Any]:
    """The recipe fields a fix changes, as the settings give them."""
    train = settings.train
    return {
        "learning_rate": train.learning_rate,
        "batch_size": train.batch_size,
        "replay_per_step": train.replay_per_step,
        "replay_weight": train.replay_weight,
        "rank": train.lora_rank,
        "alpha": train.lora_alpha,
    }


def _give_up(
    settings: Settings,
    session: Session,
    config: AutopilotSettings,
    params: dict[str, Any],
    diagnoses: list[Diagnosis],
    chain: list[int],
    no_fix: bool,
) -> None:
    """No fix left: switch the trigger that started this off, and alert."""
    trigger = params.get("trigger")
    switched = None
    if trigger and getattr(config, f"{_TRIGGER_FIELDS.get(trigger, '')}", False):
        switched = _TRIGGER_FIELDS[trigger]
    why = "no fix applies" if no_fix else f"{len(chain) - 1} fixes did not help"
    message = (
        f"training keeps failing ({', '.join(d.kind for d in diagnoses)}) and {why}"
        + (f"; the {trigger} trigger is switched off" if switched else "")
        + ". Look at the jobs' figures (GET /api/jobs/{id}); switch it on again with "
        "PATCH /api/settings/autopilot once the cause is fixed."
    )
    alert(session, message, jobs=chain, diagnoses=[d.kind for d in diagnoses])
    if switched:
        apply(settings, session, {switched: False}, actor=AUTOPILOT, reason=message)


_TRIGGER_FIELDS = {
    "time": "time_trigger",
    "volume": "volume_trigger",
    "quality": "quality_trigger",
    "failures": "failure_trigger",
    "patterns": "pattern_trigger",
}


def _refusals_in_row(session: Session) -> int:
    """Gate refusals that ended the latest finished training jobs, newest first."""
    count = 0
    for result in session.scalars(
        select(Job.result)
        .where(Job.kind == "train", Job.status == "succeeded")
        .order_by(Job.id.desc())
        .limit(20)
    ):
        if (result or {}).get("promoted"):
            break
        count += 1
    return count


def served_regression(session: Session, config: AutopilotSettings) -> Diagnosis | None:
    """The served version's feedback since its promotion, if it is bad enough, and worse enough
    than its parent's, to roll it back."""
    served = serving_target(session).version_id
    if served is None:
        return None
    change = session.scalar(select(AliasChange).order_by(AliasChange.id.desc()).limit(1))
    if change is None or change.version_id != served:
        return None
    since = as_utc(change.created_at)
    now_rate, now_n = _negative_rate(session, served, since)
    if now_n < config.rollback_min_ratings or now_rate < config.rollback_negative_rate:
        return None
    parent_rate, parent_n = _negative_rate(session, change.previous_version_id, None)
    if now_rate - parent_rate < config.rollback_margin:
        return None
    return Diagnosis(
        "served_regression",
        f"{now_rate:.0%} of {now_n} ratings of the served version since its promotion were "
        f"negative, against {parent_rate:.0%} of {parent_n} for the version before it",
        {
            "version_id": served,
            "negative_rate": round(now_rate, 4),
            "ratings": now_n,
            "parent_version_id": change.previous_version_id,
            "parent_negative_rate": round(parent_rate, 4),
            "parent_ratings": parent_n,
        },
    )


def _negative_rate(
    session: Session, version_id: int | None, since: dt.datetime | None
) -> tuple[float, int]:
    """Share of negative ratings of the answers ``version_id`` gave (None: the base), and how
    many ratings there were."""
    query = (
        select(func.count(), func.sum(case((Feedback.rating < 0, 1), else_=0)))
        .select_from(Feedback)
        .join(Interaction, Interaction.id == Feedback.interaction_id)
    )
    query = query.where(
        Interaction.version_id.is_(None)
        if version_id is None
        else Interaction.version_id == version_id
    )
    if since is not None:
        query = query.where(Feedback.created_at > since)
    total, negatives = session.execute(query).one()
    if not total:
        return 0.0, 0
    return float(negatives or 0) / total, int(total)


def watch_served(settings: Settings, db: Database) -> int | None:
    """Roll back a promotion whose feedback regressed (:func:`served_regression`); the id of
    the version rolled back, if any."""
    with db.read() as session:
        config = current(settings, session)
        if not (config.enabled and config.troubleshoot):
            return None
        diagnosis = served_regression(session, config)
    if diagnosis is None:
        return None
    with db.write() as session:
        if served_regression(session, config) is None:  # someone acted meanwhile
            return None
        session.add(
            Event(
                kind="autopilot_diagnosis", payload={"diagnoses": [dataclasses.asdict(diagnosis)]}
            )
        )
        try:
            rollback(session, actor=AUTOPILOT, reason=f"autopilot: {diagnosis.detail}")
        except RegistryError as exc:
            alert(session, f"could not roll back: {exc}", **diagnosis.figures)
            return None
        session.add(
            Event(
                kind="autopilot_fix",
                payload={
                    "fix": "roll back the last promotion",
                    "because": [diagnosis.kind],
                    **diagnosis.figures,
                },
            )
        )
    version_id: int = diagnosis.figures["version_id"]
    return version_id
