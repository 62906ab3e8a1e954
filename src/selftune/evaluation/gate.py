"""The promotion gate: better on the new material, not worse on what the model knew.

Figures compared, candidate against the version served now:
- ``new_recall``: on held-out examples of the new material, the share of each target answer's
  key terms that the model's greedy answer contains (see :mod:`selftune.evaluation.recall`).
  The candidate must recall more than the served version; where both recall equally (and not
  nothing), or no example has key terms, ``new_loss`` decides.
- ``new_loss``: mean loss per answer token on the same examples; when it decides, the candidate
  must be lower by at least ``min_improvement``.
- ``regression_loss``: the same on the base model's own answers to the regression questions; the
  candidate may be at most ``regression_tolerance`` (relative) higher.
- ``retention``: of the regression questions the base model answers correctly, the share the
  candidate still answers correctly
  (greedy); it must be at least ``min_retention``. An answer counts as correct when it mentions
  an expected answer whole (:func:`selftune.evaluation.matching.mentions`).

The decision keeps what it was made on: one entry per rule (``rules``: whether it held and a
sentence why), the rules that refused the candidate (``decided_by``), the known answers the
candidate changed (``changed_known_answers``) and each held-out example's answers (``heldout``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["GateFigures", "GatePolicy", "decide"]


@dataclasses.dataclass(frozen=True)
class GatePolicy:
    min_improvement: float
    regression_tolerance: float
    min_retention: float
    forgetting_tolerance: float = float("inf")


@dataclasses.dataclass(frozen=True)
class GateFigures:
    new_recall_current: float | None
    new_recall_candidate: float | None
    new_loss_current: float
    new_loss_candidate: float
    regression_loss_current: float
    regression_loss_candidate: float
    retention_candidate: float
    heldout_examples: int
    regression_questions: int
    # Forgetting, against the base: answer loss on the replay set (the base's answers to general
    # prompts) and on this job's neighbour prompts (data.neighbours); None where not measured.
    replay_loss_base: float | None = None
    replay_loss_candidate: float | None = None
    neighbour_loss_base: float | None = None
    neighbour_loss_candidate: float | None = None


def decide(
    figures: GateFigures,
    policy: GatePolicy,
    changed_known_answers: Sequence[Mapping[str, Any]] = (),
    heldout: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The gate's decision with every figure and the reasons, as stored on the version.

    ``changed_known_answers``: the known regression questions the candidate no longer answers
    correctly (``{"question", "served_answer", "candidate_answer"}``); ``heldout``: each judged
    example of the new material with both versions' answers and recall. Both are stored as
    given, so the decision shows what it was made on; a refusal for retention names the
    questions. ``rules`` says, for each rule, whether it held and why; ``decided_by`` names the
    rules that refused the candidate (empty when it passed).
    """
    changed = [dict(item) for item in changed_known_answers]
    rules = [
        _new_material(figures, policy),
        _regression_loss(figures, policy),
        _retention(figures, policy, changed),
        _forgetting(figures, policy),
    ]
    reasons = [reason for _, reason in rules if reason is not None]
    passed = not reasons
    return {
        "passed": passed,
        "reason": "better on new material, no regression" if passed else "; ".join(reasons),
        "figures": dataclasses.asdict(figures),
        "policy": dataclasses.asdict(policy),
        "rules": [rule for rule, _ in rules],
        "decided_by": [rule["rule"] for rule, reason in rules if reason is not None],
        "changed_known_answers": changed,
        "heldout": [dict(item) for item in heldout],
    }


_Rule = tuple[dict[str, Any], str | None]  # ({"rule", "passed", "detail"}, the refusal's reason)


def _rule(name: str, refusal: str | None, detail: str) -> _Rule:
    return {"rule": name, "passed": refusal is None, "detail": detail}, refusal


def _new_material(figures: GateFigures, policy: GatePolicy) -> _Rule:
    """Recall on the held-out examples decides where it differs; else the loss, if any was
    recalled (or nothing could be)."""
    name = "new material"
    now, new = figures.new_recall_current, figures.new_recall_candidate
    improvement = figures.new_loss_current - figures.new_loss_candidate
    if now is not None and new is not None and new != now:
        detail = f"held-out recall {new:.0%} vs served {now:.0%}"
        refusal = None
        if not new > now:
            refusal = (
                f"new material: held-out answers recall {new:.0%} of what was taught, "
                f"the served version {now:.0%}"
            )
        return _rule(name, refusal, detail)
    if new == 0:
        detail = "held-out recall 0% vs served 0%: neither answer contains what was taught"
        return _rule(name, "new material: held-out answers recall none of what was taught", detail)
    why = (
        f"held-out recall {new:.0%} for both, so the loss decides"
        if new is not None
        else "no held-out example has key terms to recall, so the loss decides"
    )
    detail = (
        f"{why}: held-out loss fell by {improvement:.3f} "
        f"({figures.new_loss_current:.3f} to {figures.new_loss_candidate:.3f}), "
        f"needs {policy.min_improvement:.3f}"
    )
    refusal = None
    if not improvement >= policy.min_improvement:
        refusal = (
            f"new material: loss fell by {improvement:.3f}, needs {policy.min_improvement:.3f}"
        )
    return _rule(name, refusal, detail)


def _regression_loss(figures: GateFigures, policy: GatePolicy) -> _Rule:
    limit = figures.regression_loss_current * (1 + policy.regression_tolerance)
    candidate = figures.regression_loss_candidate
    detail = (
        f"regression loss {candidate:.3f} vs served {figures.regression_loss_current:.3f}, "
        f"limit {limit:.3f} (+{policy.regression_tolerance:.0%})"
    )
    refusal = None
    if not candidate <= limit:
        refusal = f"regression: loss {candidate:.3f} above the limit {limit:.3f}"
    return _rule("regression loss", refusal, detail)


def _retention(figures: GateFigures, policy: GatePolicy, changed: list[dict[str, Any]]) -> _Rule:
    known = figures.regression_questions
    kept = figures.retention_candidate
    if known == 0:
        detail = "no regression question has a known answer to keep"
    elif changed:
        detail = (
            f"{len(changed)} of {known} known answers changed (see changed_known_answers): "
            f"{kept:.0%} kept, needs {policy.min_retention:.0%}"
        )
    else:
        detail = f"{kept:.0%} of {known} known answers kept, needs {policy.min_retention:.0%}"
    refusal = None
    if not kept >= policy.min_retention:
        refusal = f"regression: {kept:.0%} of known answers kept, needs {policy.min_retention:.0%}"
        if changed:
            questions = ", ".join(repr(str(item.get("question", ""))) for item in changed)
            refusal += f" (changed: {questions})"
    return _rule("retention", refusal, detail)


def _forgetting(figures: GateFigures, policy: GatePolicy) -> _Rule:
    """The candidate's loss on the base's own answers (replay and neighbour prompts) may be at
    most ``forgetting_tolerance`` (relative) above the base's."""
    measured = [
        (name, base, candidate)
        for name, base, candidate in (
            ("replay", figures.replay_loss_base, figures.replay_loss_candidate),
            ("neighbour", figures.neighbour_loss_base, figures.neighbour_loss_candidate),
        )
        if base is not None and candidate is not None
    ]
    if not measured:
        return _rule("forgetting", None, "not measured")
    parts, refusals = [], []
    for name, base, candidate in measured:
        limit = base * (1 + policy.forgetting_tolerance)
        parts.append(f"{name} loss {candidate:.3f} vs base {base:.3f} (limit {limit:.3f})")
        if not candidate <= limit:
            refusals.append(f"forgetting: {name} loss {candidate:.3f} above the limit {limit:.3f}")
    return _rule("forgetting", "; ".join(refusals) or None, "; ".join(parts))
