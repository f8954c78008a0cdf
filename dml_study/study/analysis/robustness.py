r"""Learning-rate robustness as its own claim (issue #19 part 5): how wide is the lr range that
works?

The preset result suggested that SO lets a too-high learning rate work rather than raising
the ceiling. An lr grid measures that directly. For each arm ``a`` (no SO, SO at its tuned
λ), each seed ``s`` and each factor ``f`` of the group's ``lr_factors`` (log-spaced, e.g.
:math:`10^{-1}, 10^{-1/2}, 1, 10^{1/2}, 10`: two decades), the cell trains the arm's tuned
values with its lr multiplied by ``f`` (:mod:`dml_study.study.plan.tuned`), for the arm's
validation-selected epochs. Let :math:`v_{a,s}(f)` be the final-epoch metric of that run
(R@1, as a fraction) and :math:`v^*_{a,s} = \max_f v_{a,s}(f)` the arm's own best over the grid.

**The metric** (:func:`lrs_within`), per arm and seed:

.. math::

    N_\delta(a, s) = \bigl|\{\, f : v_{a,s}(f) \ge v^*_{a,s} - \delta \,\}\bigr|,

the number of grid lrs within :math:`\delta` percentage points of the arm's own best
(``lrs_within:1:R@1``: δ = 1 pp). The claim is the mean over seeds of
:math:`N_\delta(\text{SO}, s) - N_\delta(\text{no SO}, s)`, paired by seed, with the paired
t-CI every claim of the scorecard uses, ``direction: increase``. Why this metric:

* **Robustness, not the ceiling.** Each arm is compared with its own best, so an arm that is
  better everywhere by a constant gets the same count; the headline claims measure the
  ceiling, this one how far the lr may move before it costs. This separates the two readings
  of the preset result.
* **A width on the log-lr axis.** With ``K`` factors evenly spaced in log over ``D`` decades,
  :math:`(N_\delta - 1)\cdot D/(K-1)` is the width in decades of the lr range that works
  (when the working lrs are contiguous, as for the unimodal curves seen so far); for the
  study's grid (K = 5, D = 2) every extra lr is half a decade.
* **δ = 1 pp is the noise of one run.** In the frozen tier the seed-to-seed standard
  deviation of a paired R@1 difference is 0.3 pp (icons) to 0.5 pp (glyphs)
  (``results/embedded/claims.json``, preset ``so_r1``: ``sd_difference`` over 10 seeds), so
  two runs 1 pp apart are 2–3 such deviations apart: a point within 1 pp of the best cannot
  be told from the best with one seed, a point further below can.
* **Per seed, paired.** One seed's grid shares its head and proxy initialisation and its
  batches across lrs and arms; pairing by seed removes that variation as in every paired
  claim. The maximum over ``K`` noisy values is biased upwards by the noise, the same for
  both arms (same ``K``, same noise level), so the difference stays fair.
* **Centred on each arm's own tuned lr.** Factor 1 is each arm's ``chosen.json``: both arms
  are measured around their optimum, all other hyperparameters at their tuned values (no
  arm is handicapped by the other's learning rate).

The count is coarse (an integer from 1 to K); :func:`mean_drop` is its continuous companion,
the mean over the grid of :math:`v^*_{a,s} - v_{a,s}(f)` in pp (``mean_drop:R@1``: the mean
cost of not knowing the best lr within a decade either way; smaller is more robust,
``direction: decrease``).

The same statistics on the validation runs of the grid (``split="validation"``, trained by
``tune``; the mean over the validation folds of the final-epoch validation metric) are shown
beside the test ones (:func:`lr_grid_frame`, :func:`robustness_table`,
:func:`dml_study.study.report.tuning_plots.lr_heatmap`); the scorecard row is the test one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dml_study.study.plan.config import StudyConfig
from dml_study.study.plan.grid import RunSpec, lr_grid_cells, lr_grid_groups
from dml_study.training.run_dir import RunDirectory

#: Metrics of an lr-grid cell that the heatmap and tables show (fractions).
GRID_METRICS: tuple[str, ...] = ("R@1", "MAP@R")


class RobustnessError(ValueError):
    """A robustness metric that cannot be read; the message names it and the valid forms."""


def parse_metric(metric: str) -> tuple[str, float | None, str]:
    """``("lrs_within", δ in pp, base metric)`` or ``("mean_drop", None, base metric)``."""
    parts = metric.split(":")
    if len(parts) == 3 and parts[0] == "lrs_within":
        return "lrs_within", float(parts[1]), parts[2]
    if len(parts) == 2 and parts[0] == "mean_drop":
        return "mean_drop", None, parts[1]
    raise RobustnessError(f"robustness metric {metric!r}: expected lrs_within:<pp>:<metric> "
                          "(e.g. lrs_within:1:R@1) or mean_drop:<metric> (e.g. mean_drop:R@1)")


def lrs_within(values: Mapping[float, float], delta_pp: float) -> int:
    """:math:`N_\\delta`: grid points whose value (a fraction) is within ``delta_pp``
    percentage points of the best (module docstring). A tiny tolerance absorbs float
    round-off, so a point exactly ``delta_pp`` below the best counts."""
    if not values:
        raise RobustnessError("no lr-grid values")
    best = max(values.values())
    return int(sum(v >= best - delta_pp / 100.0 - 1e-12 for v in values.values()))


def mean_drop(values: Mapping[float, float]) -> float:
    """Mean over the grid of (best − value), as a fraction (the claim's ``scale`` makes pp)."""
    if not values:
        raise RobustnessError("no lr-grid values")
    best = max(values.values())
    return float(np.mean([best - v for v in values.values()]))


def robustness_value(values: Mapping[float, float], metric: str) -> float:
    """The statistic ``metric`` (:func:`parse_metric`) of one arm's grid at one seed."""
    kind, delta, _ = parse_metric(metric)
    return float(lrs_within(values, delta)) if kind == "lrs_within" else mean_drop(values)


# --------------------------------------------------------------------------- run values


def final_value(path: Path, metric: str) -> float | None:
    """The run's final ``metric`` (``metrics.json``; a validation run's is its final
    validation epoch's); ``None`` when absent or not finite."""
    from dml_study.study.analysis.collect import load_metrics

    value = load_metrics(path).get(metric)
    return float(value) if value is not None and math.isfinite(value) else None


def grid_values(results_dir: Path, specs: Iterable[RunSpec], metric: str
                ) -> dict[int, dict[float, float]]:
    """``{seed: {lr factor: value}}`` of one arm's finished cells (the mean over folds of a
    validation grid's runs; a factor is left out until every fold has finished)."""
    runs: dict[tuple[int, float], list[float | None]] = {}
    for spec in specs:
        run = RunDirectory.for_run(results_dir, spec.run_name)
        value = final_value(run.path, metric) if run.is_finished() else None
        runs.setdefault((spec.seed, float(spec.lr_factor)), []).append(value)
    out: dict[int, dict[float, float]] = {}
    for (seed, factor), values in runs.items():
        if values and all(v is not None for v in values):
            out.setdefault(seed, {})[factor] = float(np.mean(values))
    return out


def arm_values(results_dir: Path, specs: Iterable[RunSpec], metric: str
               ) -> tuple[dict[int, float], list[int]]:
    """The robustness statistic ``metric`` per seed of one arm's cells, and the seeds left
    out because their grid is incomplete (a run missing or with a non-finite value)."""
    specs = list(specs)
    _, _, base = parse_metric(metric)
    factors = {float(s.lr_factor) for s in specs}
    values = grid_values(results_dir, specs, base)
    seeds = sorted({s.seed for s in specs})
    out = {seed: robustness_value(values[seed], metric) for seed in seeds
           if set(values.get(seed, {})) == factors}
    return out, [s for s in seeds if s not in out and s in values]


# --------------------------------------------------------------------------- tables


def lr_grid_frame(config: StudyConfig, split: str = "test") -> pd.DataFrame:
    """One row per finished lr-grid cell: ``group, dataset, tier, arm, lr_factor, lr, seed,
    split`` and the final :data:`GRID_METRICS` (fractions; validation: mean over folds).

    Cells of arms without a ``chosen.json`` are left out (nothing is raised), so the report
    shows what exists.
    """
    specs = lr_grid_cells(config, split=split)
    rows = []
    keys = dict.fromkeys((s.group, s.dataset, s.base_variant) for s in specs)
    for group, dataset, arm in keys:
        cells = [s for s in specs if (s.group, s.dataset, s.base_variant) == (group, dataset, arm)]
        lrs = {float(s.lr_factor): s.params.get("lr") for s in cells}
        per_metric = {m: grid_values(config.results_dir, cells, m) for m in GRID_METRICS}
        seeds = sorted({seed for v in per_metric.values() for seed in v})
        for seed in seeds:
            for factor in sorted(lrs):
                row: dict[str, Any] = {
                    "group": group, "dataset": dataset, "tier": cells[0].tier, "arm": arm,
                    "lr_factor": factor, "lr": lrs[factor], "seed": seed, "split": split,
                }
                row.update({m: per_metric[m].get(seed, {}).get(factor, np.nan)
                            for m in GRID_METRICS})
                if not all(np.isnan(row[m]) for m in GRID_METRICS):
                    rows.append(row)
    columns = ["group", "dataset", "tier", "arm", "lr_factor", "lr", "seed", "split",
               *GRID_METRICS]
    return pd.DataFrame(rows, columns=columns)


def lr_grid_means(frame: pd.DataFrame, metric: str = "R@1") -> pd.DataFrame:
    """Mean ``metric`` (%) over seeds per (split, dataset, arm, lr factor), with ``seeds``."""
    if frame.empty:
        return pd.DataFrame(columns=["split", "dataset", "arm", "lr_factor", metric, "seeds"])
    grouped = frame.dropna(subset=[metric]).groupby(
        ["split", "dataset", "arm", "lr_factor"], sort=False)[metric]
    out = grouped.agg(["mean", "size"]).reset_index()
    out[metric] = 100.0 * out.pop("mean")
    return out.rename(columns={"size": "seeds"})


def robustness_table(config: StudyConfig, metric: str = "lrs_within:1:R@1",
                     splits: tuple[str, ...] = ("validation", "test")) -> pd.DataFrame:
    """Per split, dataset and arm of every lr grid: the robustness statistic ``metric`` per
    seed (mean and the seeds), e.g. the number of grid lrs within 1 pp of the arm's best."""
    rows = []
    for split in splits:
        specs = lr_grid_cells(config, split=split)
        for group in lr_grid_groups(config):
            cells = [s for s in specs if s.group == group.name]
            for dataset, arm in dict.fromkeys((s.dataset, s.base_variant) for s in cells):
                values, incomplete = arm_values(
                    config.results_dir,
                    [s for s in cells if (s.dataset, s.base_variant) == (dataset, arm)], metric)
                if not values:
                    continue
                rows.append({"split": split, "group": group.name, "dataset": dataset,
                             "arm": arm, "metric": metric,
                             "mean": float(np.mean(list(values.values()))),
                             "per seed": ", ".join(f"{values[s]:g}" for s in sorted(values)),
                             "seeds": len(values), "incomplete seeds": len(incomplete)})
    return pd.DataFrame(rows, columns=["split", "group", "dataset", "arm", "metric", "mean",
                                       "per seed", "seeds", "incomplete seeds"])
