"""Figures of the tuned protocol: search traces and the lr-robustness heatmap.

Like :mod:`~dml_study.study.report.plots`, each function takes a tidy table from the analysis
(:func:`dml_study.study.analysis.tuning.trials_frame`,
:func:`dml_study.study.analysis.robustness.lr_grid_means`) and returns the ``Figure``;
:func:`save_tuning_figures` saves them into the study's figure index
(:func:`dml_study.study.report.figures.save_figure`), so the index shows them.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dml_study.study.report.figures import save_figure
from dml_study.study.report.plots import TITLE_SIZE

#: Panels per row of a search-trace figure.
TRACE_COLUMNS = 3


def search_traces(trials: pd.DataFrame, title: str = "") -> Figure:
    """Small multiples, one panel per search (arm) of ``trials`` (one dataset and tier):
    each trial's objective against its number, the best so far as a step line, the chosen
    trial circled, pruned trials as ``×`` on the axis (a pruned trial has no value: it was
    stopped below the median) and diverged ones (value 0) as red ``▼``."""
    arms = list(dict.fromkeys(trials["arm"]))
    cols = min(TRACE_COLUMNS, max(1, len(arms)))
    rows = int(np.ceil(len(arms) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False,
                             sharey=True)
    objective = str(trials["objective"].iloc[0]) if len(trials) else "objective"
    for ax, arm in zip(axes.flat, arms, strict=False):
        part = trials[trials["arm"] == arm].sort_values("number")
        done = part[(part["state"] == "COMPLETE") & ~part["diverged"]]
        ax.scatter(done["number"], 100 * done["value"], s=14, color="C0", zorder=3,
                   label="trial")
        ax.step(part["number"], 100 * part["best_so_far"], where="post", color="C1",
                label="best so far")
        chosen = part[part["chosen"]]
        ax.scatter(chosen["number"], 100 * chosen["value"], s=80, facecolors="none",
                   edgecolors="C3", linewidths=1.5, zorder=4, label="chosen")
        pruned = part[part["pruned"]]
        if len(pruned):
            ax.scatter(pruned["number"], np.zeros(len(pruned)), marker="x", color="0.45",
                       transform=ax.get_xaxis_transform(), clip_on=False, zorder=4,
                       label=f"pruned ({len(pruned)})")
        diverged = part[part["diverged"]]
        if len(diverged):
            ax.scatter(diverged["number"], np.zeros(len(diverged)), marker="v", color="C3",
                       transform=ax.get_xaxis_transform(), clip_on=False, zorder=4,
                       label=f"diverged ({len(diverged)})")
        counted = int(part["state"].isin(("COMPLETE", "PRUNED")).sum())
        ax.set_title(f"{arm} ({counted} trials)", fontsize=TITLE_SIZE)
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes.flat[len(arms):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"validation {objective} (%)")
    if arms:
        axes.flat[0].legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=TITLE_SIZE + 1)
    fig.tight_layout()
    return fig


def lr_heatmap(means: pd.DataFrame, metric: str = "R@1",
               splits: tuple[str, ...] = ("validation", "test"), title: str = "") -> Figure:
    """The lr-robustness heatmap: one panel per (dataset, split), rows the arms, columns
    the lr factors (× each arm's tuned lr), colour and number the mean ``metric`` (%) over
    seeds (:func:`dml_study.study.analysis.robustness.lr_grid_means`). Each panel has its
    own colour scale, so the shape across lrs reads within a panel."""
    datasets = list(dict.fromkeys(means["dataset"])) if len(means) else []
    shown = [s for s in splits if s in set(means.get("split", []))]
    fig, axes = plt.subplots(max(1, len(datasets)), max(1, len(shown)),
                             figsize=(4.4 * max(1, len(shown)), 2.1 + 0.9 * max(1, len(datasets))),
                             squeeze=False)
    for i, dataset in enumerate(datasets):
        for j, split in enumerate(shown):
            ax = axes[i, j]
            part = means[(means["dataset"] == dataset) & (means["split"] == split)]
            table = part.pivot(index="arm", columns="lr_factor", values=metric)
            arms = list(dict.fromkeys(part["arm"]))
            table = table.reindex(index=arms)
            values = table.to_numpy(dtype=float)
            image = ax.imshow(values, aspect="auto", cmap="viridis")
            for (r, c), value in np.ndenumerate(values):
                if np.isfinite(value):
                    colour = "black" if value > np.nanmean(values) else "white"
                    ax.text(c, r, f"{value:.1f}", ha="center", va="center", fontsize=9,
                            color=colour)
            ax.set_xticks(range(table.shape[1]), [f"×{f:g}" for f in table.columns])
            ax.set_yticks(range(table.shape[0]), table.index)
            ax.set_xlabel("lr / tuned lr")
            seeds = int(part["seeds"].min()) if len(part) else 0
            ax.set_title(f"{dataset} · {split} ({seeds} seeds)", fontsize=TITLE_SIZE)
            fig.colorbar(image, ax=ax, label=f"{metric} (%)", shrink=0.9)
            ax.grid(False)
    if not datasets:
        axes[0, 0].set_axis_off()
        axes[0, 0].text(0.5, 0.5, "no finished lr-grid runs", ha="center", va="center")
    if title:
        fig.suptitle(title, fontsize=TITLE_SIZE + 1)
    fig.tight_layout()
    return fig


def save_tuning_figures(study_dir: str | Path, trials: pd.DataFrame) -> list[Path]:
    """Save one search-trace figure per (dataset, tier) of ``trials`` into the study's
    figure index (``figures/search_trace_<dataset>_<tier>.png``); the paths written."""
    paths = []
    if trials.empty:
        return paths
    for (dataset, tier), part in trials.groupby(["dataset", "tier"], sort=False):
        fig = search_traces(part, title=f"Searches on {dataset}, {tier} tier")
        paths.append(save_figure(
            study_dir, fig, f"search_trace_{dataset}_{tier}",
            f"Search traces: {dataset}, {tier} tier",
            "Validation objective of every trial against its number (TPE, fixed seed, equal "
            "budgets), the best so far, the chosen trial (circled), pruned trials (×) and "
            "diverged ones (▼) on the axis."))
        plt.close(fig)
    return paths
