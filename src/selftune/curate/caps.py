"""Contributor caps: no single user or source makes up more than a set share of a training run.

One contributor who submits many chats (or one source, such as an import) would otherwise steer
what the model learns, by accident or on purpose (data poisoning). The cap is a share of the run
actually selected, so it holds however small the run ends up.

Selection is greedy in priority order (newest first by default): an example is taken unless its
user or source already has its share of the run. The run's size is the largest for which that
greedy pass keeps every share of what it selected, found by bisection; when the whole set
already keeps every share, nothing is left out.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from selftune.curate.example import Example

__all__ = ["CappedRun", "cap_contributors"]


@dataclasses.dataclass(frozen=True)
class CappedRun:
    """The examples selected for a run, in priority order, and those left out with why:
    ``"user_share"`` or ``"source_share"`` (their user or source had its full share of the run),
    ``"run_size"`` (neither had, but a larger run would have broken some share)."""

    selected: list[Example]
    left_out: list[tuple[Example, str]]


def _greedy(
    ordered: Sequence[Example], size: int, user_cap: int, source_cap: int
) -> tuple[list[Example], list[tuple[Example, str]]]:
    users: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    selected: list[Example] = []
    left_out: list[tuple[Example, str]] = []
    for example in ordered:
        if users[example.contributor] >= user_cap:
            left_out.append((example, "user_share"))
        elif sources[example.source] >= source_cap:
            left_out.append((example, "source_share"))
        elif len(selected) == size:
            left_out.append((example, "run_size"))
        else:
            users[example.contributor] += 1
            sources[example.source] += 1
            selected.append(example)
    return selected, left_out


def cap_contributors(
    examples: Sequence[Example],
    max_share: float,
    *,
    max_source_share: float | None = None,
    priority: Callable[[Example], Any] = lambda example: -example.created,
) -> CappedRun:
    """Select a run from ``examples`` in which no contributor has more than ``max_share`` of the
    examples and no source more than ``max_source_share`` (``max_share`` when None).

    ``priority`` orders the candidates, lowest first (default: newest first); ties keep the
    input order. A share that no selection can keep (three sources and a 0.2 source share)
    selects nothing and leaves every example out with its reason."""
    source_share = max_share if max_source_share is None else max_source_share
    for name, share in (("max_share", max_share), ("max_source_share", source_share)):
        if not 0 < share <= 1:
            raise ValueError(f"{name} must be in (0, 1], not {share}")
    ordered = sorted(examples, key=priority)

    def run_of(size: int) -> tuple[list[Example], list[tuple[Example, str]]]:
        # A small epsilon keeps 0.3 * 10 from rounding down to 2.
        user_cap = math.floor(max_share * size + 1e-9)
        source_cap = math.floor(source_share * size + 1e-9)
        return _greedy(ordered, size, user_cap, source_cap)

    def keeps_shares(selected: list[Example]) -> bool:
        """Whether no contributor or source exceeds its share of the run actually selected
        (a pass asked for ``size`` may select fewer: two users at half each fill no odd size)."""
        n = len(selected)
        users = Counter(e.contributor for e in selected)
        sources = Counter(e.source for e in selected)
        return (
            max(users.values(), default=0) <= max_share * n + 1e-9
            and max(sources.values(), default=0) <= source_share * n + 1e-9
        )

    best = run_of(len(ordered))
    if len(best[0]) == len(ordered):
        return CappedRun(*best)
    # Whether a pass asked for a size keeps the shares is (close to) monotone in the size:
    # bisect for the largest that does.
    low, high = 0, len(ordered)  # low keeps them, high does not
    best = run_of(0)
    while high - low > 1:
        middle = (low + high) // 2
        candidate = run_of(middle)
        if keeps_shares(candidate[0]):
            low, best = middle, candidate
        else:
            high = middle
    return CappedRun(*best)
