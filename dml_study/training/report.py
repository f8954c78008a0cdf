"""Tables and figures for the ``02_train`` notebook (logic here, the notebook only calls it).

- :func:`run_or_load`: train a config, or load the stored results of a finished run.
- :func:`config_table`, :func:`metrics_table`: pandas tables of the resolved config and of
  final/best/untrained metrics.
- :func:`plot_sample_batch`: the first training batch exactly as the trainer draws it.
- :func:`plot_training_curves`: loss terms, SO penalty, proxy orthogonality and retrieval
  metrics per epoch.
- :func:`plot_proxy_similarity`: cosine-similarity heatmaps of the proxies before/after.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.ticker import MaxNLocator
from torchvision.utils import make_grid

from dml_study.config import ExperimentConfig
from dml_study.study.analysis.per_class import cosine_matrix
from dml_study.training.run_dir import RunDirectory, RunState, best_epoch_metrics, run_split

#: Metric columns in display order (those present are shown).
METRIC_ORDER = ("R@1", "R@2", "R@4", "R@8", "R@10", "R@16", "R@20", "R@30", "R@32", "R@40",
                "R@100", "R@1000", "MAP@R", "RP", "NMI")


@dataclass
class RunRecord:
    """A finished run as stored on disk."""

    run_dir: RunDirectory
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    trained_now: bool

    @property
    def split(self) -> str:
        """``"test"`` or ``"validation"`` (what the run's metrics were measured on)."""
        return run_split(self.metrics)

    @property
    def final(self) -> dict[str, float]:
        return {k: v for k, v in self.metrics.items() if k in METRIC_ORDER}


def load_record(run_dir: RunDirectory, trained_now: bool = False) -> RunRecord:
    """Read config, metrics and history of a finished run directory."""
    import yaml

    return RunRecord(
        run_dir=run_dir,
        config=yaml.safe_load(run_dir.config.read_text()),
        metrics=json.loads(run_dir.metrics.read_text()),
        history=json.loads(run_dir.history_json.read_text()),
        trained_now=trained_now,
    )


def run_or_load(config: ExperimentConfig) -> RunRecord:
    """Train ``config`` unless its run directory already holds a finished run.

    A finished run is never retrained (or overwritten) unless ``run.overwrite`` is set; its
    stored results are returned, so re-executing the notebook is cheap and idempotent.
    """
    from dml_study.training.engine import train

    name = config.run.run_name or config.default_run_name()
    run_dir = RunDirectory.for_run(config.run.results_dir, name)
    if run_dir.state() is RunState.FINISHED and not config.run.overwrite:
        return load_record(run_dir)
    result = train(config)
    return load_record(result.run_dir, trained_now=True)


def config_table(config: ExperimentConfig) -> pd.DataFrame:
    """The resolved config as a two-column table (``key``, ``value``)."""
    rows = [(k, v if not isinstance(v, list | dict) else str(v)) for k, v in config.flat().items()]
    return pd.DataFrame(rows, columns=["key", "value"]).set_index("key")


def metrics_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """Rows = metrics; columns = untrained / final / best epoch (in %) and the final −
    untrained gain.

    The best-epoch column says how it was chosen: ``"best (validation)"`` in a
    ``data.split: validation`` run (by validation MAP@R), ``"best (test-selected)"`` in a
    test run (by test R@1, Proxy Anchor's reporting protocol: not a legitimate estimate).
    """
    best = "best (validation)" if run_split(metrics) == "validation" else "best (test-selected)"
    columns = {"untrained": metrics.get("untrained") or {}, "final": metrics,
               best: best_epoch_metrics(metrics)}
    keys = [k for k in METRIC_ORDER if k in metrics]
    table = pd.DataFrame(
        {name: [100 * float(src[k]) if k in src else np.nan for k in keys]
         for name, src in columns.items()},
        index=keys,
    )
    table["gain"] = table["final"] - table["untrained"]
    table.index.name = "metric (%)"
    return table.round(2)


def _denormalised_grid(images: torch.Tensor, nrow: int) -> np.ndarray:
    grid = make_grid(images, nrow=nrow, padding=2, pad_value=1.0)
    return grid.permute(1, 2, 0).clamp(0, 1).numpy()


def sample_batch(
    config: ExperimentConfig, max_images: int = 32, train_set: Any = None
) -> tuple[torch.Tensor, list[str]]:
    """The first training batch (epoch 0) as the trainer draws it, before normalisation.

    Uses the same sampler and per-sample augmentation seeds as the trainer, with mean 0 /
    std 1 so the images display as they are.
    """
    from dml_study.data.transforms import model_transforms
    from dml_study.training.pipeline import (
        EpochBatches,
        SeededAugmentation,
        build_batch_sampler,
        load_datasets,
    )

    if train_set is None:
        train_set, _ = load_datasets(config, progress=False)
    identity = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    train_tf, _ = model_transforms(config, identity)
    batches = EpochBatches(build_batch_sampler(config, train_set.labels, 0, 1), config.run.seed)
    batches.set_position(0, 0)
    keys = next(iter(batches))[:max_images]
    view = SeededAugmentation(train_set, train_tf)
    items = [view[key] for key in keys]
    images = torch.stack([img for img, _ in items])
    names = [train_set.class_names[label] for _, label in items]
    return images, names


def plot_sample_batch(
    config: ExperimentConfig, max_images: int = 32, nrow: int = 8, train_set: Any = None
):
    """Figure of the first training batch with its class names."""
    images, names = sample_batch(config, max_images, train_set)
    fig, ax = plt.subplots(figsize=(nrow * 1.3, (len(images) + nrow - 1) // nrow * 1.4))
    ax.imshow(_denormalised_grid(images, nrow))
    ax.set_axis_off()
    m = max(1, config.data.m_per_class)
    classes = list(dict.fromkeys(names))
    ax.set_title(
        f"first training batch ({m} per class): " + ", ".join(classes[:8])
        + (" ..." if len(classes) > 8 else ""),
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def history_frame(history: list[dict[str, Any]]) -> pd.DataFrame:
    """History records as a DataFrame indexed by epoch (epoch 0 = untrained)."""
    return pd.DataFrame(history).set_index("epoch")


def plot_training_curves(history: list[dict[str, Any]], split: str = "test"):
    """2×2 panel: loss terms, SO penalty, proxy orthogonality, retrieval metrics per epoch
    (of the ``split`` the run evaluates: ``"test"`` or ``"validation"``)."""
    frame = history_frame(history)
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    trained = frame[frame.index > 0]
    skip = {"loss", "so", "grad_norm"}
    main_terms = [
        c for c in trained.columns
        if c not in skip and not c.startswith(("lr_", "orth_", "R@", "time", "img"))
        and c not in METRIC_ORDER and c not in {"step", "backbone_trainable"}
    ]
    for column in ["loss", *main_terms]:
        if column in trained:
            sns.lineplot(x=trained.index, y=trained[column], marker="o", ax=axes[0, 0],
                         label=column)
    axes[0, 0].set(title="loss terms (epoch mean)", xlabel="epoch", ylabel="loss")
    if "so" in trained:
        sns.lineplot(x=trained.index, y=trained["so"], marker="o", ax=axes[0, 1], color="C3",
                     label="λ·SO (in the loss)")
    if "orth_so_frobenius" in frame:
        # The unweighted ‖P̂P̂ᵀ−I‖² is informative also when λ = 0 (no penalty applied).
        twin = axes[0, 1].twinx()
        sns.lineplot(x=frame.index, y=frame["orth_so_frobenius"], marker="s", ax=twin,
                     color="C7", label="‖P̂P̂ᵀ−I‖² (right)", legend=False)
        twin.set_ylabel("‖P̂P̂ᵀ−I‖²")
        twin.grid(False)
    axes[0, 1].set(title="Soft Orthogonality", xlabel="epoch", ylabel="λ·SO")
    for column, label in (("orth_mean_abs_cos", "mean |cos|"), ("orth_max_abs_cos", "max |cos|")):
        if column in frame:
            sns.lineplot(x=frame.index, y=frame[column], marker="o", ax=axes[1, 0], label=label)
    axes[1, 0].set(title="proxy orthogonality (off-diagonal cosine)", xlabel="epoch",
                   ylabel="|cos|")
    for column in ("R@1", "MAP@R", "NMI"):
        if column in frame:
            values = frame[column].dropna()
            sns.lineplot(x=values.index, y=100 * values, marker="o", ax=axes[1, 1], label=column)
    axes[1, 1].set(title=f"{split} retrieval (epoch 0 = untrained)", xlabel="epoch", ylabel="%")
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def plot_proxy_similarity(run_dir: RunDirectory, max_classes: int = 40):
    """Cosine similarity of the first ``max_classes`` proxies, before and after training."""
    matrices = {}
    if run_dir.proxies_init.is_file():
        matrices["initial proxies"] = cosine_matrix(np.load(run_dir.proxies_init)[:max_classes])
    matrices["trained proxies"] = cosine_matrix(np.load(run_dir.proxies)[:max_classes])
    fig, axes = plt.subplots(1, len(matrices), figsize=(5.5 * len(matrices), 4.8))
    axes = np.atleast_1d(axes)
    for ax, (title, sim) in zip(axes, matrices.items(), strict=True):
        off = sim[~np.eye(len(sim), dtype=bool)]
        sns.heatmap(sim, vmin=-1, vmax=1, cmap="vlag", square=True, ax=ax,
                    xticklabels=False, yticklabels=False, cbar_kws={"shrink": 0.8})
        ax.set_title(f"{title}: mean |cos| off-diag {np.abs(off).mean():.3f}")
    fig.tight_layout()
    return fig


def summary(record: RunRecord) -> dict[str, Any]:
    """The notebook's machine-readable output (also printed as its last cell)."""
    untrained = record.metrics.get("untrained") or {}
    return {
        "run_dir": str(record.run_dir.path),
        "trained_now": record.trained_now,
        "final": record.final,
        "untrained": {k: v for k, v in untrained.items() if k in METRIC_ORDER},
        "split": run_split(record.metrics),
        "best_epoch": best_epoch_metrics(record.metrics).get("epoch"),
        "train_time_s": record.metrics.get("train_time_s"),
    }


def save_figure(fig, path: str | Path) -> None:
    """Save a figure next to the run (PNG, 120 dpi)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
