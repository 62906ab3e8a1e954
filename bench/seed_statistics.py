"""How sure a comparison over a few seeds is: the mean of paired changes and its 95% interval.

Two trainers trained on the same seeds (the same adapter start and batch order) end a few tenths
of a percent apart, either way round depending on the seed, while the final loss itself moves
several percent from seed to seed. One seed's change is a draw from that spread; the mean over
several, with Student's t interval around it, says whether the trainers differ at all and, when
the interval holds zero, by at most how much.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence

__all__ = ["MeanChange", "t_quantile"]


def _t_density(x: float, df: int) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))


def _t_cdf_above_median(x: float, df: int, intervals: int = 2000) -> float:
    """P(0 < T < x) by Simpson's rule: the density is smooth and x is at most a few dozen."""
    h = x / intervals
    inner = sum((4 if i % 2 else 2) * _t_density(i * h, df) for i in range(1, intervals))
    return h / 3 * (_t_density(0.0, df) + inner + _t_density(x, df))


def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile (above one half) of Student's t with ``df`` degrees of
    freedom, to about 4 digits: 0.975 and 7 give 2.365."""
    if not 0.5 <= probability < 1 or df < 1:
        raise ValueError("need 0.5 <= probability < 1 and df >= 1")
    target, low, high = probability - 0.5, 0.0, 1.0
    while _t_cdf_above_median(high, df) < target:
        high *= 2
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if _t_cdf_above_median(middle, df) < target else (low, middle)
    return (low + high) / 2


@dataclasses.dataclass(frozen=True)
class MeanChange:
    """The mean of relative changes measured in pairs (one per seed), with its 95% interval."""

    changes: tuple[float, ...]
    mean: float
    low: float | None  # the interval; None with a single change
    high: float | None

    @classmethod
    def of(cls, changes: Sequence[float]) -> MeanChange:
        if not changes:
            raise ValueError("no changes to summarise")
        mean = statistics.fmean(changes)
        if len(changes) < 2:
            return cls(tuple(changes), mean, None, None)
        half = t_quantile(0.975, len(changes) - 1) * statistics.stdev(changes)
        half /= math.sqrt(len(changes))
        return cls(tuple(changes), mean, mean - half, mean + half)

    @property
    def verdict(self) -> str:
        """'lower' or 'higher' when the interval excludes zero, else 'equal within noise'."""
        if self.low is None or self.high is None:
            return "one seed: no interval"
        if self.high < 0:
            return "lower"
        if self.low > 0:
            return "higher"
        return "equal within noise"

    def __str__(self) -> str:
        if self.low is None or self.high is None:
            return f"{self.mean:+.2%} (one seed)"
        return (
            f"mean {self.mean:+.2%}, 95% interval {self.low:+.2%} to {self.high:+.2%} over "
            f"{len(self.changes)} seeds: {self.verdict}"
        )
