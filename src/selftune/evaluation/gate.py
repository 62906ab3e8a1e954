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
  (greedy); it must be at least ``min_retention``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["GateFigures", "GatePolicy", "decide"]


@dataclasses.dataclass(frozen=True)
class GatePolicy:
    min_improvement: float
    regression_tolerance: float
    min_retention: float


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


def decide(figures: GateFigures, policy: GatePolicy) -> dict[str, Any]:
    """The gate's decision with every figure and the reasons, as stored on the version."""
    reasons = []
    recall_now, recall_new = figures.new_recall_current, figures.new_recall_candidate
    improvement = figures.new_loss_current - figures.new_loss_candidate
    if recall_now is not None and recall_new is not None and recall_new != recall_now:
        if not recall_new > recall_now:
            reasons.append(
                f"new material: held-out answers recall {recall_new:.0%} of what was taught, "
                f"the served version {recall_now:.0%}"
            )
    elif recall_new == 0:
        reasons.append("new material: held-out answers recall none of what was taught")
    elif not improvement >= policy.min_improvement:
        reasons.append(
            f"new material: loss fell by {improvement:.3f}, needs {policy.min_improvement:.3f}"
        )
    limit = figures.regression_loss_current * (1 + policy.regression_tolerance)
    if not figures.regression_loss_candidate <= limit:
        reasons.append(
            f"regression: loss {figures.regression_loss_candidate:.3f} above the limit {limit:.3f}"
        )
    if not figures.retention_candidate >= policy.min_retention:
        reasons.append(
            f"regression: {figures.retention_candidate:.0%} of known answers kept, needs "
            f"{policy.min_retention:.0%}"
        )
    passed = not reasons
    return {
        "passed": passed,
        "reason": "better on new material, no regression" if passed else "; ".join(reasons),
        "figures": dataclasses.asdict(figures),
        "policy": dataclasses.asdict(policy),
    }
