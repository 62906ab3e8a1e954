"""The training queue's plan: priority by kind and age, the new-example limit, replay at its
ratio, and contributor caps over the whole run (selftune.data.queue)."""

from __future__ import annotations

import datetime as dt
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from selftune.config import QueueSettings
from selftune.data.queue import Candidate, plan_run, priority_of

NOW = dt.datetime(2026, 12, 7, 12, tzinfo=dt.UTC)


def _candidate(
    i: int, user: str = "ana", source: str = "correction", hours: float = 0
) -> Candidate:
    return Candidate(i, user, source, NOW - dt.timedelta(hours=hours))


def _settings(**values: object) -> QueueSettings:
    return QueueSettings.model_validate(values)


def test_corrections_go_before_datasets_and_newer_before_older() -> None:
    pool = [
        _candidate(1, source="submitted"),
        _candidate(2, source="correction", hours=48),
        _candidate(3, source="correction"),
        _candidate(4, source="import"),
        _candidate(5, source="rating"),
    ]
    plan = plan_run(pool, set(), _settings(), NOW)
    assert [c.id for c in plan.new] == [3, 2, 5, 1, 4]


def test_priority_halves_with_each_half_life() -> None:
    queue = _settings(recency_half_life_hours=10)
    fresh, old = _candidate(1), _candidate(2, hours=20)
    assert priority_of(fresh, queue, NOW) == 4.0
    assert math.isclose(priority_of(old, queue, NOW), 1.0)
    # a week-old correction still goes before a fresh import by default
    assert priority_of(_candidate(3, hours=168), _settings(), NOW) > priority_of(
        _candidate(4, source="import"), _settings(), NOW
    )


def test_new_examples_past_the_limit_wait_for_the_next_run() -> None:
    pool = [_candidate(i, hours=i) for i in range(1, 11)]
    plan = plan_run(pool, set(), _settings(max_new_examples=4), NOW)
    assert [c.id for c in plan.new] == [1, 2, 3, 4]
    assert plan.left_out == {i: "waiting" for i in range(5, 11)}


def test_replay_takes_the_ratio_and_at_least_the_minimum_spread_over_history() -> None:
    learned = set(range(1, 201))
    pool = [_candidate(i) for i in range(1, 211)]  # 200 learned, 10 new
    plan = plan_run(pool, learned, _settings(replay_ratio=3, replay_min=5), NOW)
    assert len(plan.new) == 10 and len(plan.replay) == 30
    assert all(c.id in learned for c in plan.replay)
    ids = sorted(c.id for c in plan.replay)
    assert ids[0] < 50 and ids[-1] > 150  # drawn over the whole history, not the newest
    assert sum(r == "not_replayed" for r in plan.left_out.values()) == 170
    # the minimum: everything learned is replayed while fewer than replay_min exist
    small = plan_run(pool[:30] + pool[200:], set(range(1, 31)), _settings(), NOW)
    assert len(small.replay) == 30
    # the same store gives the same run
    again = plan_run(pool, learned, _settings(replay_ratio=3, replay_min=5), NOW)
    assert again.replay == plan.replay


def test_a_flood_from_one_user_is_held_to_its_share_of_the_run() -> None:
    honest = [_candidate(i, user="ana") for i in range(1, 7)]
    learned_before = [_candidate(i, user="ana", hours=100) for i in range(7, 37)]
    flood = [_candidate(i, user="mallory", source="submitted") for i in range(100, 1100)]
    plan = plan_run(
        honest + learned_before + flood, {c.id for c in learned_before}, _settings(), NOW
    )
    shares = plan.shares()
    assert shares["mallory"] <= 0.5
    assert {c.id for c in honest} <= {c.id for c in plan.new}  # the corrections all train
    taken = sum(c.user == "mallory" for c in plan.new)
    assert taken == 36  # as many as ana's 6 new and 30 replayed examples, no more
    assert sum(r in ("user_share", "waiting") for r in plan.left_out.values()) == 1000 - taken
    # five honest users and a stricter share: the flood gets a fifth at most
    others = [_candidate(i, user=f"user{i % 5}") for i in range(2000, 2050)]
    stricter = plan_run(others + flood, set(), _settings(max_user_share=0.2), NOW)
    assert 0 < stricter.shares()["mallory"] <= 0.2


def test_one_user_alone_is_not_capped() -> None:
    pool = [_candidate(i) for i in range(1, 61)]
    plan = plan_run(pool, set(), _settings(max_user_share=0.1), NOW)
    assert len(plan.new) == 60 and not plan.left_out


@settings(max_examples=60, deadline=None)
@given(
    users=st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=80),
    learned_share=st.floats(0, 1),
    share=st.sampled_from([0.25, 0.4, 0.5, 0.75, 1.0]),
)
def test_no_user_ever_exceeds_the_share_when_several_contribute(
    users: list[str], learned_share: float, share: float
) -> None:
    pool = [_candidate(i, user=u, hours=i % 7) for i, u in enumerate(users, start=1)]
    learned = {c.id for c in pool[: int(len(pool) * learned_share)]}
    plan = plan_run(pool, learned, _settings(max_user_share=share, replay_min=8), NOW)
    chosen = [*plan.new, *plan.replay]
    assert len({c.id for c in chosen}) == len(chosen)
    assert set(plan.left_out).isdisjoint({c.id for c in chosen})
    assert len(chosen) + len(plan.left_out) == len(pool)
    if len(set(users)) > 1:
        assert all(value <= share + 1e-9 for value in plan.shares().values())
