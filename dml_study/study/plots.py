"""Seaborn figure helpers for the study notebooks (one function per figure kind).

Each helper takes tidy pandas tables or arrays and returns the matplotlib ``Figure`` so
notebooks stay free of plotting code. :func:`setup` fixes the style and a modest
resolution so the rendered HTML stays small.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure


def setup(dpi: int = 80) -> None:
    """Seaborn theme, figure resolution and PNG output for inline figures."""
    sns.set_theme(style="whitegrid", context="notebook")
    plt.rcParams["figure.dpi"] = dpi
    plt.rcParams["savefig.dpi"] = dpi
    try:  # inside a kernel: embed PNG only (no SVG/PDF duplicates in the notebook)
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")
    except ImportError:  # pragma: no cover - plain Python, nothing to configure
        pass


def _percent(frame: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    out = frame.copy()
    for metric in metrics:
        out[metric] = 100 * out[metric]
    return out


def metric_vs_param(
    frame: pd.DataFrame, param: str, metrics: Sequence[str], title: str = ""
) -> Figure:
    """One panel per metric: mean (± std over seeds, if several) against ``param``.

    A parameter spanning decades with a zero (the SO weight λ) gets a symmetric-log
    axis, so λ = 0 and λ = 1e-3 … 1 are all visible.
    """
    data = _percent(frame, metrics)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    values = pd.to_numeric(data[param], errors="coerce")
    positive = values[values > 0]
    for ax, metric in zip(axes[0], metrics, strict=True):
        sns.lineplot(data=data, x=param, y=metric, marker="o", errorbar="sd", ax=ax)
        if len(positive) and positive.max() / positive.min() >= 100:
            ax.set_xscale("symlog", linthresh=float(positive.min()))
        ax.set_ylabel(f"{metric} (%)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def paired_seeds(
    frame: pd.DataFrame, variant_column: str, order: Sequence[str], metrics: Sequence[str]
) -> Figure:
    """Per metric: each seed's value in each arm, joined by a line (the paired design)."""
    data = _percent(frame, metrics)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        wide = data.pivot_table(index="seed", columns=variant_column, values=metric)
        wide = wide[[c for c in order if c in wide.columns]]
        for _, row in wide.iterrows():
            ax.plot(range(len(row)), row.to_numpy(), color="0.6", linewidth=1, zorder=1)
        sns.pointplot(data=data, x=variant_column, y=metric, order=list(wide.columns),
                      errorbar="sd", ax=ax, color="C0", zorder=2)
        sns.stripplot(data=data, x=variant_column, y=metric, order=list(wide.columns),
                      ax=ax, color="C1", size=6, zorder=3)
        ax.set_ylabel(f"{metric} (%)")
        ax.set_xlabel("")
    fig.tight_layout()
    return fig


def grouped_bars(frame: pd.DataFrame, x: str, metric: str, title: str = "") -> Figure:
    """Bar per ``x`` value of ``metric`` (mean, error bar = std over seeds)."""
    data = _percent(frame, [metric])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * data[x].nunique() + 2), 3.4))
    sns.barplot(data=data, x=x, y=metric, errorbar="sd", ax=ax, color="C0")
    ax.set_ylabel(f"{metric} (%)")
    ax.tick_params(axis="x", rotation=30)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def cosine_heatmaps(matrices: Mapping[str, np.ndarray], max_classes: int = 64) -> Figure:
    """Side-by-side heatmaps of proxy cosine matrices (first ``max_classes`` classes).

    One shared colour bar (−1 … 1) so that every panel keeps the same size.
    """
    n = len(matrices)
    fig, axes = plt.subplots(1, n + 1, figsize=(3.4 * n + 0.6, 3.4), squeeze=False,
                             gridspec_kw={"width_ratios": [1.0] * n + [0.06]})
    for ax, (title, matrix) in zip(axes[0][:n], matrices.items(), strict=True):
        sub = np.asarray(matrix)[:max_classes, :max_classes]
        sns.heatmap(sub, vmin=-1, vmax=1, cmap="vlag", square=True, ax=ax,
                    xticklabels=False, yticklabels=False, cbar=False)
        ax.set_title(title, fontsize=10)
    fig.colorbar(axes[0][0].collections[0], cax=axes[0][n])
    fig.tight_layout()
    return fig


def distributions(
    frame: pd.DataFrame, value: str, hue: str, title: str = "", xlabel: str | None = None
) -> Figure:
    """Overlaid density-normalised histograms of ``value`` per ``hue`` group."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    sns.histplot(data=frame, x=value, hue=hue, stat="density", common_norm=False,
                 element="step", bins=40, ax=ax)
    ax.set_xlabel(xlabel or value)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def training_curves(frame: pd.DataFrame, hue: str = "model") -> Figure:
    """One panel per quantity of a long ``epoch, quantity, value, <hue>`` table."""
    quantities = list(dict.fromkeys(frame["quantity"]))
    fig, axes = plt.subplots(1, len(quantities), figsize=(4.0 * len(quantities), 3.2),
                             squeeze=False)
    for ax, quantity in zip(axes[0], quantities, strict=True):
        part = frame[frame["quantity"] == quantity]
        sns.lineplot(data=part, x="epoch", y="value", hue=hue, marker="o", ax=ax)
        ax.set_title(quantity, fontsize=10)
        ax.set_ylabel("")
    fig.tight_layout()
    return fig


def tsne_panels(maps: Mapping[str, pd.DataFrame]) -> Figure:
    """t-SNE maps side by side: embeddings coloured by class, proxies as black crosses."""
    fig, axes = plt.subplots(1, len(maps), figsize=(4.6 * len(maps), 4.4), squeeze=False)
    for ax, (title, coords) in zip(axes[0], maps.items(), strict=True):
        points = coords[coords["kind"] == "embedding"]
        proxies = coords[coords["kind"] == "proxy"]
        ax.scatter(points["x"], points["y"], c=points["label"] % 20, cmap="tab20", s=6,
                   alpha=0.7, linewidths=0)
        ax.scatter(proxies["x"], proxies["y"], marker="x", c="black", s=18, linewidths=1,
                   label="proxies")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def images_per_class(frame: pd.DataFrame) -> Figure:
    """Histogram of images per class, one panel per split (columns ``split, images``)."""
    splits = list(dict.fromkeys(frame["split"]))
    fig, axes = plt.subplots(1, len(splits), figsize=(3.8 * len(splits), 3.0), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        sns.histplot(frame[frame["split"] == split]["images"], discrete=True, ax=ax)
        ax.set_title(split, fontsize=10)
        ax.set_xlabel("images per class")
    fig.tight_layout()
    return fig


def image_grid(
    images: Sequence[Sequence[Any]], row_titles: Sequence[str], inches: float = 0.9
) -> Figure:
    """Grid of PIL images: one row per class (titled with the class name).

    ``inches`` per image keeps small datasets (64-px icons) near their native size.
    """
    rows = len(images)
    cols = max((len(r) for r in images), default=1)
    fig, axes = plt.subplots(rows, cols, figsize=(inches * cols, (inches + 0.15) * rows),
                             squeeze=False)
    for r, (row, title) in enumerate(zip(images, row_titles, strict=True)):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                ax.imshow(row[c])
        axes[r][0].set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    return fig
