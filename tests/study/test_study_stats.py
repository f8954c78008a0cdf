"""Statistics over seeds, checked against hand computations and scipy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from dml_study.study.analysis.stats import (
    bootstrap_mean_ci,
    compare_arms,
    format_mean_std,
    formatted_table,
    mean_std_table,
    paired_comparison,
)

BASE = [0.60, 0.62, 0.58]
TREAT = [0.63, 0.66, 0.60]


def test_paired_comparison_matches_hand_computation():
    c = paired_comparison(BASE, TREAT, "R@1", confidence=0.95, n_resamples=2000, seed=0)
    diff = np.array(TREAT) - np.array(BASE)  # 0.03, 0.04, 0.02
    mean, sd, n = diff.mean(), diff.std(ddof=1), 3
    t = mean / (sd / math.sqrt(n))
    assert c.mean_difference == pytest.approx(0.03)
    assert c.std_difference == pytest.approx(0.01)
    assert c.t_statistic == pytest.approx(t)
    assert c.p_value == pytest.approx(2 * sps.t.sf(abs(t), df=n - 1))
    half = sps.t.ppf(0.975, df=2) * sd / math.sqrt(n)
    assert (c.t_ci_low, c.t_ci_high) == pytest.approx((mean - half, mean + half))
    assert c.baseline_mean == pytest.approx(0.60) and c.treatment_std == pytest.approx(0.03)
    # The bootstrap resamples 3 values: its interval lies within their range.
    assert 0.02 - 1e-12 <= c.bootstrap_ci_low <= mean <= c.bootstrap_ci_high <= 0.04 + 1e-12


def test_bootstrap_is_seeded_and_matches_a_numpy_percentile_bootstrap():
    values = np.random.default_rng(0).normal(0.3, 0.1, size=12)
    first = bootstrap_mean_ci(values, 0.9, 20000, seed=3)
    assert first == bootstrap_mean_ci(values, 0.9, 20000, seed=3)
    assert bootstrap_mean_ci(values, 0.9, 300, seed=3) != bootstrap_mean_ci(values, 0.9, 300, 4)
    rng = np.random.default_rng(123)
    means = values[rng.integers(0, len(values), size=(20000, len(values)))].mean(axis=1)
    reference = np.percentile(means, [5, 95])
    assert first == pytest.approx(tuple(reference), abs=0.01)


def test_identical_differences_give_a_point_interval_and_no_test():
    c = paired_comparison([0.5, 0.6, 0.7], [0.6, 0.7, 0.8])
    assert c.mean_difference == pytest.approx(0.1)
    assert c.t_ci_low == pytest.approx(0.1) and c.bootstrap_ci_high == pytest.approx(0.1)
    assert math.isnan(c.p_value)


def test_single_pair_gives_nan_intervals():
    c = paired_comparison([0.5], [0.6])
    assert c.n == 1 and c.mean_difference == pytest.approx(0.1)
    assert math.isnan(c.p_value) and math.isnan(c.bootstrap_ci_low)


def test_unequal_lengths_are_rejected():
    with pytest.raises(ValueError, match="equally long"):
        paired_comparison([0.1, 0.2], [0.1])


def _frame() -> pd.DataFrame:
    rows = [("no_so", s, b) for s, b in enumerate(BASE)] + [
        ("so", s, t) for s, t in enumerate(TREAT)]
    frame = pd.DataFrame(rows, columns=["variant", "seed", "R@1"])
    return frame.sample(frac=1.0, random_state=0)  # pairing must not rely on row order


def test_compare_arms_pairs_by_seed():
    table = compare_arms(_frame(), "variant", "no_so", "so", ["R@1"], n_resamples=500)
    assert table.loc["R@1", "mean_difference"] == pytest.approx(0.03)
    assert table.loc["R@1", "n"] == 3
    with pytest.raises(KeyError, match="values"):
        compare_arms(_frame(), "variant", "none", "so", ["R@1"])


def test_mean_std_table_and_formatting():
    table = mean_std_table(_frame(), "variant", ["R@1"])
    assert table.loc["so", ("R@1", "mean")] == pytest.approx(np.mean(TREAT))
    assert table.loc["so", ("R@1", "std")] == pytest.approx(np.std(TREAT, ddof=1))
    assert table.loc["so", ("R@1", "n")] == 3
    shown = formatted_table(_frame(), "variant", ["R@1"])
    assert shown.loc["so", "R@1"] == "63.0 ± 3.0" and shown.loc["so", "seeds"] == 3
    assert format_mean_std(0.5, float("nan")) == "50.0"
    with pytest.raises(KeyError, match="MAP@R"):
        mean_std_table(_frame(), "variant", ["MAP@R"])
