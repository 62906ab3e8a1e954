"""The mean of per-seed changes and its 95% interval (bench.seed_statistics)."""

from __future__ import annotations

import pytest

from bench.seed_statistics import MeanChange, t_quantile


@pytest.mark.parametrize(
    ("df", "expected"),  # Student's t tables, 97.5th percentile
    [(1, 12.706), (2, 4.303), (7, 2.365), (30, 2.042), (100, 1.984)],
)
def test_t_quantile_matches_the_tables(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)


def test_t_quantile_rejects_what_it_cannot_give() -> None:
    with pytest.raises(ValueError):
        t_quantile(0.4, 5)
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)


def test_interval_is_the_mean_plus_minus_t_times_the_standard_error() -> None:
    change = MeanChange.of([0.001, 0.002, 0.003, 0.002])
    sd = 0.001 * (2 / 3) ** 0.5  # sample standard deviation of the four
    assert change.mean == pytest.approx(0.002)
    assert change.low == pytest.approx(0.002 - 3.182 * sd / 2, rel=1e-3)
    assert change.high == pytest.approx(0.002 + 3.182 * sd / 2, rel=1e-3)


def test_verdicts() -> None:
    assert MeanChange.of([0.004, 0.005, 0.006]).verdict == "higher"
    assert MeanChange.of([-0.004, -0.005, -0.006]).verdict == "lower"
    noisy = MeanChange.of([-0.0042, 0.0086, 0.0024, -0.0033])
    assert noisy.verdict == "equal within noise"
    assert "95% interval" in str(noisy) and "over 4 seeds" in str(noisy)
    single = MeanChange.of([0.003])
    assert (single.low, single.high) == (None, None)
    assert single.verdict == "one seed: no interval"
    with pytest.raises(ValueError):
        MeanChange.of([])
