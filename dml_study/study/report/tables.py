"""Result tables for ``05_results``: our runs per configuration beside published numbers.

:func:`run_page` gives the link to a run's rendered page, for tables that name runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from dml_study.study.analysis.published import published_results
from dml_study.study.analysis.stats import format_mean_std

#: Columns that identify a configuration (seeds are averaged over).
CONFIG_COLUMNS: tuple[str, ...] = (
    "recipe",
    "backbone",
    "loss",
    "so_lambda",
    "so_gram",
    "so_normalize",
    "proxy_init",
    "embedding_dim",
    "image_size",
    "epochs",
)


def run_page(study_dir: str | Path, run_name: str) -> str | None:
    """Link (relative to ``study_dir``) to the page of a run executed by the study, or None.

    The rendered page ``runs/<run>.html`` when it exists, else the executed notebook
    ``runs/<run>.ipynb``; ``None`` when this study did not execute the run (it reused a run
    finished earlier, whose notebook lives with the study that trained it).
    """
    for suffix in (".html", ".ipynb"):
        if (Path(study_dir) / "runs" / f"{run_name}{suffix}").is_file():
            return f"runs/{run_name}{suffix}"
    return None


def configuration_summary(
    runs: pd.DataFrame, dataset: str, metrics: Sequence[str] = ("R@1", "MAP@R")
) -> pd.DataFrame:
    """Our finished runs of ``dataset``, one row per configuration: mean ± std over seeds."""
    part = runs[runs["dataset"] == dataset]
    metrics = [m for m in metrics if m in part.columns]
    if part.empty:
        return pd.DataFrame(columns=[*CONFIG_COLUMNS, *metrics, "seeds"])
    keys = [c for c in CONFIG_COLUMNS if c in part.columns]
    # groupby drops NaN keys by default; None-valued settings are still configurations.
    grouped = part.fillna({k: "–" for k in keys}).astype({k: str for k in keys})
    rows = []
    for values, group in grouped.groupby(keys, sort=True):
        row = dict(zip(keys, values, strict=True))
        for metric in metrics:
            row[metric] = format_mean_std(group[metric].mean(), group[metric].std(ddof=1))
        row["seeds"] = len(group)
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_table(
    runs: pd.DataFrame, dataset: str, metric: str = "R@1"
) -> pd.DataFrame:
    """One table for ``dataset``: published entries, then ours, with ``metric`` in %.

    Published values that could not be verified show as "not verified" (beside the number
    when one is quoted).
    """
    rows = []
    for entry in published_results(dataset):
        if entry.metric != metric:
            continue
        rows.append({
            "source": "published",
            "method": entry.method,
            "backbone": entry.backbone,
            "recipe": "paper",
            metric: "not verified" if entry.value is None
            else f"{entry.value:.1f}" + ("" if entry.verified else " (not verified)"),
            "seeds": "–",
            "reference": entry.source or entry.note,
        })
    summary = configuration_summary(runs, dataset, [metric])
    for _, row in summary.iterrows():
        so = "" if row["so_lambda"] in ("–", "0.0", "0") else f" + SO (λ={row['so_lambda']})"
        rows.append({
            "source": "this study",
            "method": f"{row['loss']}{so}",
            "backbone": row["backbone"],
            "recipe": row["recipe"],
            metric: row.get(metric, "–"),
            "seeds": row["seeds"],
            "reference": f"d={row['embedding_dim']}, {row['epochs']} epochs, "
                         f"{row['image_size']} px, init {row['proxy_init']}",
        })
    return pd.DataFrame(rows)
