"""The autopilot's triggers and the troubleshooter's choice of fix, on made-up figures."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from selftune.autopilot.triggers import Activity, Correction, fired
from selftune.autopilot.troubleshooter import Diagnosis, _fix, _training_figures
from selftune.config import AutopilotSettings

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
CONFIG = AutopilotSettings()


def activity(**changes: Any) -> Activity:
    values: dict[str, Any] = {
        "now": NOW,
        "last_run": NOW - dt.timedelta(minutes=5),
        "waiting": 1,
        "new_since_run": 1,
        "oldest_new": NOW - dt.timedelta(minutes=1),
        "newest_activity": NOW - dt.timedelta(minutes=1),
        "ratings": (),
        "ratings_since_run": (),
        "corrections": (),
    }
    return Activity(**{**values, **changes})


def names(config: AutopilotSettings, figures: Activity) -> list[str]:
    return [firing.trigger for firing in fired(config, figures)]


def test_nothing_fires_without_new_material() -> None:
    quiet = activity(new_since_run=0, ratings=(-1,) * 20, ratings_since_run=(-1,) * 5)
    assert names(CONFIG, quiet) == []
    assert names(CONFIG, activity()) == []


def test_volume_fires_at_its_threshold() -> None:
    assert names(CONFIG, activity(new_since_run=2)) == []
    [firing] = fired(CONFIG, activity(new_since_run=3))
    assert firing.trigger == "volume" and firing.figures == {"new_examples": 3, "threshold": 3}


def test_failures_count_the_negative_ratings_in_a_row_since_the_last_run() -> None:
    assert names(CONFIG, activity(ratings_since_run=(-1, -1, 1, -1))) == []
    assert names(CONFIG, activity(ratings_since_run=(-1, -1, -1, 1))) == ["failures"]


def test_quality_judges_a_full_enough_window_of_ratings() -> None:
    assert names(CONFIG, activity(ratings=(-1,) * 9)) == []  # fewer than quality_min_ratings
    half = (-1, 1) * 5
    assert names(CONFIG, activity(ratings=half)) == []  # 50% is not above 50%
    mostly_bad = (-1, -1, 1) * 4
    assert names(CONFIG, activity(ratings=mostly_bad)) == ["quality"]
    # Only the last quality_window ratings count: old praise does not hide new trouble.
    assert names(CONFIG, activity(ratings=(-1,) * 15 + (1,) * 30)) == ["quality"]


def test_time_fires_after_its_interval_since_the_last_run_or_the_oldest_new_example() -> None:
    later = activity(last_run=NOW - dt.timedelta(minutes=61))
    assert names(CONFIG, later) == ["time"]
    never = activity(last_run=None, oldest_new=NOW - dt.timedelta(minutes=30))
    assert names(CONFIG, never) == []
    assert names(CONFIG, activity(last_run=None, oldest_new=NOW - dt.timedelta(hours=2))) == [
        "time"
    ]


def test_patterns_group_similar_questions_by_text_or_embedding() -> None:
    same = (
        Correction("What is the capital of Veloria?"),
        Correction("what is the CAPITAL of veloria"),
    )
    assert names(CONFIG, activity(corrections=same)) == ["patterns"]
    different = (Correction("What is the capital of Veloria?"), Correction("Who wrote Hamlet?"))
    assert names(CONFIG, activity(corrections=different)) == []
    near = (
        Correction("Capital of Veloria?", (1.0, 0.0)),
        Correction("Which city is Veloria's capital?", (0.9, 0.43589)),
    )
    assert names(CONFIG, activity(corrections=near)) == ["patterns"]
    far = (Correction("a", (1.0, 0.0)), Correction("b", (0.0, 1.0)))
    assert names(CONFIG, activity(corrections=far)) == []


def test_each_trigger_has_its_switch() -> None:
    off = AutopilotSettings(volume_trigger=False, failure_trigger=False)
    busy = activity(new_since_run=5, ratings_since_run=(-1,) * 3)
    assert names(CONFIG, busy) == ["failures", "volume"]
    assert names(off, busy) == []


RECIPE = {"learning_rate": 1e-3, "batch_size": 7, "replay_per_step": 3, "replay_weight": 1.0}


def diagnosis(kind: str, **figures: Any) -> Diagnosis:
    return Diagnosis(kind, kind, figures)


@pytest.mark.parametrize(
    ("kinds", "overrides"),
    [
        (["non_finite_loss"], {"learning_rate": pytest.approx(1e-4)}),
        (["gradient_spike", "no_progress"], {"learning_rate": pytest.approx(1e-4)}),
        (["out_of_memory"], {"batch_size": 4}),
        (["overfitting"], {"learning_rate": pytest.approx(5e-4)}),
    ],
)
def test_the_fix_follows_the_diagnosis(kinds: list[str], overrides: dict[str, Any]) -> None:
    fix = _fix([diagnosis(kind) for kind in kinds], RECIPE, CONFIG)
    assert fix is not None and fix[1] == overrides


def test_a_refusal_for_forgetting_raises_the_replay_and_one_for_learning_the_rank() -> None:
    forgot = _fix([diagnosis("gate_refused", rules=["retention"])], RECIPE, CONFIG)
    assert forgot is not None and forgot[1] == {"replay_weight": 2.0, "replay_per_step": 4}
    learned_nothing = _fix(
        [diagnosis("gate_refused", rules=["new material"])], {**RECIPE, "rank": 8}, CONFIG
    )
    assert learned_nothing is not None and learned_nothing[1] == {"rank": 16, "alpha": 32.0}


def test_no_retry_for_what_a_recipe_cannot_fix() -> None:
    for kind in ("labels_not_masked", "loss_above_uniform"):
        assert _fix([diagnosis(kind), diagnosis("non_finite_loss")], RECIPE, CONFIG) is None
    tiny = {**RECIPE, "batch_size": 4}  # half of 4 is no more than replay_per_step + 1
    assert _fix([diagnosis("out_of_memory")], tiny, CONFIG) is None


def test_training_figures_show_spikes_rising_loss_and_unmasked_labels() -> None:
    figures = {
        "losses": [2.0, 2.5, 3.0, 4.5],
        "new_material_losses": [2.0, 2.0, 1.95, 1.99],
        "grad_norms": [0.1, 0.1, 0.12, 5.0],
        "initial_loss_limit": 10.8,
        "supervised_share": 1.0,
        "adapter": {"finite": True, "b_norm": 0.0},
    }
    kinds = {d.kind for d in _training_figures(figures)}
    assert kinds == {
        "exploding_loss",
        "gradient_spike",
        "no_progress",
        "labels_not_masked",
        "bad_adapter",
    }
    healthy = {
        "losses": [2.0, 1.0, 0.5, 0.1],
        "new_material_losses": [2.0, 1.0, 0.5, 0.1],
        "grad_norms": [1.0, 0.8, 0.6, 0.5],
        "initial_loss_limit": 10.8,
        "supervised_share": 0.4,
        "adapter": {"finite": True, "b_norm": 0.3},
    }
    assert _training_figures(healthy) == []
