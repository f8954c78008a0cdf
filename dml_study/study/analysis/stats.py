"""Statistics over seeds: mean ± std tables and the paired "SO vs no SO" comparison.

Runs of the two arms share their seeds (same data order, same initial weights apart from
the regulariser), so the comparison is *paired*: we test the per-seed differences
``treatment − baseline`` with a paired t-test and give two confidence intervals for their
mean, the t interval and a percentile bootstrap (seeded, so the report is reproducible).
With three seeds both intervals are wide; they are reported to show exactly that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps


def mean_std_table(
    frame: pd.DataFrame, by: str | Sequence[str], metrics: Sequence[str]
) -> pd.DataFrame:
    """Mean, sample std (ddof=1) and count of each metric per group of ``by``.

    Columns are a two-level index ``(metric, "mean" | "std" | "n")``; a group with one
    run has std NaN (a single seed says nothing about spread).
    """
    by = [by] if isinstance(by, str) else list(by)
    missing = [m for m in [*by, *metrics] if m not in frame.columns]
    if missing:
        raise KeyError(f"columns {missing} not in the table; columns: {list(frame.columns)}")
    grouped = frame.groupby(by, sort=False)[list(metrics)]
    table = grouped.agg(["mean", "std", "count"])
    return table.rename(columns={"count": "n"}, level=1)


def format_mean_std(mean: float, std: float | None, scale: float = 100.0, digits: int = 1) -> str:
    """``"61.2 ± 1.3"`` (scaled, e.g. fractions to percent); std NaN/None shows the mean only."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{mean * scale:.{digits}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {std * scale:.{digits}f}"
    return text



#: The minus sign of displayed numbers (U+2212, as wide as "+"; CSV and JSON keep floats).
MINUS = "\u2212"


def _finite(value: float | None) -> bool:
    """Whether ``value`` is a finite number (``None``, NaN and ±inf are not)."""
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def interval_decimals(low: float | None, high: float | None, significant: int = 2,
                      max_decimals: int = 12) -> int | None:
    """Decimals to show an estimate and its interval ``[low, high]`` with.

    Enough that the half-width ``h = (high − low) / 2`` keeps ``significant`` significant
    digits: ``significant − 1 − ⌊log₁₀ h⌋`` decimals (at least 0). Then the two ends
    differ by ``2h ≥ 2·10^(significant−1)`` units of the last decimal, so the interval
    never collapses to one number: a ``|cos|`` effect with ``h = 0.00095`` gets 5 decimals
    (``−0.20290 [−0.20384, −0.20195]``), an R@1 effect with ``h = 0.37`` pp gets 2. ``None``
    when the interval is undefined (NaN, ``None``: fewer than two seeds) or has zero width.
    """
    if not (_finite(low) and _finite(high)) or high <= low:
        return None
    half = (high - low) / 2
    return max(0, min(max_decimals, significant - 1 - math.floor(math.log10(half))))


def significant_decimals(value: float | None, significant: int = 3,
                         max_decimals: int = 12) -> int:
    """Decimals that show ``value`` with ``significant`` significant digits (0 for 0)."""
    if not _finite(value) or value == 0:
        return 0
    magnitude = float(f"{abs(value):.12g}")  # 9.999999999999998 (= 100 · 0.1) counts as 10
    return max(0, min(max_decimals, significant - 1 - math.floor(math.log10(magnitude))))


def format_signed(value: float | None, decimals: int) -> str:
    """``value`` with its sign (``+4.52``, ``−0.07`` with a true minus); ``–`` when undefined."""
    if not _finite(value):
        return "–"
    return f"{value:+.{decimals}f}".replace("-", MINUS)


def format_estimate(estimate: float | None, low: float | None, high: float | None,
                    n: int | None = None) -> tuple[str, str]:
    """An effect and its confidence interval as display text: ``("−0.07", "[−0.29, +0.16]")``.

    The one formatting rule of the report's effects (scorecard, headline, notebook tables):
    decimals from :func:`interval_decimals`, so the interval shows its width. Without an
    interval the estimate keeps 3 significant digits and the interval text says why:
    ``"n = 1: no CI"`` (fewer than two seeds), ``"no CI"`` (undefined, e.g. a correlation of
    constant values) or, for a zero-width interval, both ends (which are equal).
    """
    decimals = interval_decimals(low, high)
    if decimals is not None:
        return (format_signed(estimate, decimals),
                f"[{format_signed(low, decimals)}, {format_signed(high, decimals)}]")
    digits = significant_decimals(estimate)
    if _finite(low) and _finite(high):  # zero width: every seed gave the same difference
        return (format_signed(estimate, digits),
                f"[{format_signed(low, digits)}, {format_signed(high, digits)}]")
    if n is not None and n < 2:
        return format_signed(estimate, digits), f"n = {n}: no CI"
    return format_signed(estimate, digits), "no CI"

def formatted_table(
    frame: pd.DataFrame,
    by: str | Sequence[str],
    metrics: Sequence[str],
    scale: float = 100.0,
    digits: int = 1,
) -> pd.DataFrame:
    """:func:`mean_std_table` rendered as ``"mean ± std"`` strings plus a seed count column."""
    table = mean_std_table(frame, by, metrics)
    out = pd.DataFrame(index=table.index)
    for metric in metrics:
        out[metric] = [
            format_mean_std(m, s, scale, digits)
            for m, s in zip(table[(metric, "mean")], table[(metric, "std")], strict=True)
        ]
    out["seeds"] = table[(metrics[0], "n")].astype(int)
    return out


@dataclass(frozen=True)
class PairedComparison:
    """Treatment minus baseline over paired seeds for one metric."""

    metric: str
    n: int
    baseline_mean: float
    baseline_std: float
    treatment_mean: float
    treatment_std: float
    mean_difference: float
    std_difference: float
    t_statistic: float
    p_value: float
    t_ci_low: float
    t_ci_high: float
    bootstrap_ci_low: float
    bootstrap_ci_high: float
    confidence: float

    def to_dict(self) -> dict[str, float | int | str]:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)


def paired_comparison(
    baseline: Sequence[float],
    treatment: Sequence[float],
    metric: str = "",
    confidence: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
) -> PairedComparison:
    """Paired t-test and confidence intervals for ``mean(treatment − baseline)``.

    ``baseline[i]`` and ``treatment[i]`` must come from the same seed. The bootstrap
    resamples the per-seed differences with a generator seeded by ``seed``. With fewer
    than two pairs the test and intervals are NaN.
    """
    a = np.asarray(baseline, dtype=float)
    b = np.asarray(treatment, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two equally long 1-D sequences, got shapes {a.shape}, {b.shape}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    diff = b - a
    n = int(diff.size)
    nan = float("nan")
    t_stat = p_value = t_low = t_high = boot_low = boot_high = nan
    std_diff = float(diff.std(ddof=1)) if n > 1 else nan
    if n > 1:
        mean = float(diff.mean())
        # Float round-off makes "identical" differences differ by ~1e-17: treat as no spread.
        if std_diff > 1e-12 * max(1.0, abs(mean)):
            test = sps.ttest_rel(b, a)
            t_stat, p_value = float(test.statistic), float(test.pvalue)
            half = sps.t.ppf(0.5 + confidence / 2, df=n - 1) * std_diff / math.sqrt(n)
            t_low, t_high = mean - half, mean + half
        else:  # identical differences: no spread, the interval is the point itself
            t_low = t_high = mean
        boot_low, boot_high = bootstrap_mean_ci(diff, confidence, n_resamples, seed)
    return PairedComparison(
        metric=metric,
        n=n,
        baseline_mean=float(a.mean()) if n else nan,
        baseline_std=float(a.std(ddof=1)) if n > 1 else nan,
        treatment_mean=float(b.mean()) if n else nan,
        treatment_std=float(b.std(ddof=1)) if n > 1 else nan,
        mean_difference=float(diff.mean()) if n else nan,
        std_difference=std_diff,
        t_statistic=t_stat,
        p_value=p_value,
        t_ci_low=t_low,
        t_ci_high=t_high,
        bootstrap_ci_low=boot_low,
        bootstrap_ci_high=boot_high,
        confidence=confidence,
    )


def bootstrap_mean_ci(
    values: Sequence[float], confidence: float = 0.95, n_resamples: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (scipy, seeded generator).

    Percentile rather than BCa: BCa's jackknife acceleration is undefined for the
    handful of seeds a study has.
    """
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        return float("nan"), float("nan")
    if np.allclose(data, data[0], rtol=0.0, atol=1e-12):
        return float(data.mean()), float(data.mean())
    result = sps.bootstrap(
        (data,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_frame(
    frame: pd.DataFrame,
    variant_column: str,
    baseline: str,
    treatment: str,
    metric: str,
    pair_on: str = "seed",
) -> pd.DataFrame:
    """Rows of the two arms aligned on ``pair_on``: columns ``baseline``, ``treatment``.

    Seeds present in only one arm are dropped (they cannot be paired).
    """
    arms = {}
    for role, name in (("baseline", baseline), ("treatment", treatment)):
        rows = frame[frame[variant_column] == name]
        if rows.empty:
            valid = sorted(frame[variant_column].unique())
            raise KeyError(f"no rows with {variant_column} == {name!r}; values: {valid}")
        arms[role] = rows.set_index(pair_on)[metric]
    return pd.concat(arms, axis=1, join="inner").sort_index()


def compare_arms(
    frame: pd.DataFrame,
    variant_column: str,
    baseline: str,
    treatment: str,
    metrics: Sequence[str],
    confidence: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
) -> pd.DataFrame:
    """:func:`paired_comparison` for each metric, one row per metric."""
    rows = []
    for metric in metrics:
        paired = paired_frame(frame, variant_column, baseline, treatment, metric)
        rows.append(
            paired_comparison(
                paired["baseline"].to_numpy(),
                paired["treatment"].to_numpy(),
                metric=metric,
                confidence=confidence,
                n_resamples=n_resamples,
                seed=seed,
            ).to_dict()
        )
    return pd.DataFrame(rows).set_index("metric")


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` and its Student-t confidence interval ``(mean, low, high)``.

    With fewer than two values the interval is NaN; with zero spread it is the point.
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(data.mean())
    if data.size < 2:
        return mean, float("nan"), float("nan")
    sd = float(data.std(ddof=1))
    half = sps.t.ppf(0.5 + confidence / 2, df=data.size - 1) * sd / math.sqrt(data.size)
    return mean, mean - half, mean + half


#: Verdicts of the claims scorecard.
VERDICTS: tuple[str, ...] = ("supported", "contradicted", "inconclusive")


def verdict_from_ci(ci_low: float, ci_high: float, direction: str = "increase") -> str:
    """Verdict on a claimed effect from its confidence interval (not from the point estimate).

    ``direction`` is the claimed sign of the effect: ``"increase"`` (> 0), ``"decrease"``
    (< 0) or ``"any"`` (≠ 0). The verdict is ``"inconclusive"`` exactly when the CI holds
    0 (or is undefined); otherwise ``"supported"`` when the CI lies on the claimed side and
    ``"contradicted"`` when it lies on the other side.
    """
    if direction not in ("increase", "decrease", "any"):
        raise ValueError(f"direction must be increase, decrease or any; got {direction!r}")
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)) or ci_low <= 0.0 <= ci_high:
        return "inconclusive"
    positive = ci_low > 0.0
    if direction == "any" or positive == (direction == "increase"):
        return "supported"
    return "contradicted"
