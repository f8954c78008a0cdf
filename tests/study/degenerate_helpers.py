"""Tiny frozen-tier studies on generated features, for the degenerate-study and fault tests.

A study of :func:`write_frozen_study` runs the real frozen tier
(:mod:`dml_study.study.tiers.frozen`) and the real study notebooks on a CUB fixture in the
official layout (:func:`fixture_datasets.write_cub_fixture`, real JPEGs the gallery can show).
No backbone runs: :func:`write_synthetic_features` puts generated "backbone features" where
the frozen tier's feature cache expects them (``$DML_STUDY_CACHE/frozen_features/``), built
from the dataset's own labels and the tier's seeded per-class subsets, so extraction is a
cache hit and a run trains in well under a second.

Imported by name (``from degenerate_helpers import write_frozen_study``), like
``study_helpers``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]

#: Notebooks of the degenerate studies (01_data is the dataset's, not the grid's business).
REPORT_NOTEBOOKS = ["03_ablations.ipynb", "04_proxy_analysis.ipynb", "05_results.ipynb"]

CLAIMS = [
    {"name": "so_r1", "claim": "SO improves retrieval (R@1)", "group": "frozen_so",
     "baseline": "no_so", "treatment": "so", "metric": "R@1"},
    {"name": "so_mean_abs_cos", "claim": "SO makes the proxies more orthogonal",
     "group": "frozen_so", "baseline": "no_so", "treatment": "so",
     "metric": "proxies/mean_abs_cos", "direction": "decrease", "scale": 1.0, "unit": "|cos|"},
    {"name": "so_convergence", "claim": "SO converges faster", "group": "frozen_so",
     "baseline": "no_so", "treatment": "so", "metric": "epochs_to:0.9:R@1",
     "direction": "decrease", "scale": 1.0, "unit": "epochs"},
    {"name": "so_motivation", "claim": "close proxies retrieve worse", "group": "frozen_so",
     "kind": "correlation", "baseline": "no_so",
     "metric": "spearman:nearest_proxy_cos:train_R@1", "direction": "decrease", "scale": 1.0,
     "unit": "rho"},
]


def copy_notebooks(root: Path, names: list[str] | None = None) -> Path:
    """The repository's study notebooks copied to ``root/notebooks``."""
    notebooks = root / "notebooks"
    notebooks.mkdir(parents=True, exist_ok=True)
    for name in names or REPORT_NOTEBOOKS:
        shutil.copy(REPO / "notebooks" / name, notebooks / name)
    return notebooks


def write_frozen_study(root: Path, data_root: Path, **overrides: Any) -> Path:
    """``root/studies/degenerate.yaml``: one frozen group (no SO vs SO) on the CUB fixture.

    ``overrides`` replace top-level keys (``groups``, ``claims``, ``headline``, ...).
    """
    study: dict[str, Any] = {
        "name": "degenerate",
        "title": "degenerate study",
        "datasets": ["cub200"],
        "data_root": str(data_root),
        "notebooks_dir": "notebooks",
        "notebooks": REPORT_NOTEBOOKS,
        "train_notebook": "02_train.ipynb",
        "train": {"dataset": "cub200", "loss": "proxy_anchor", "device": "cpu",
                  "quiet": True},
        "groups": [{
            "name": "frozen_so", "tier": "frozen", "datasets": ["cub200"],
            "description": "no SO vs SO", "seeds": [0],
            "variants": {"no_so": {"so_lambda": 0.0}, "so": {"so_lambda": 0.1}},
        }],
        "headline": {"group": "frozen_so", "baseline": "no_so", "treatment": "so"},
        "claims": CLAIMS,
        "frozen": {"views": 2, "train": {"epochs": 2, "batch_size": 8, "m_per_class": 2},
                   "datasets": {"cub200": {"embedding_dim": 8}},
                   "features": {"cub200": {"max_test_per_class": 5}}},
        "analysis": {"seed": 0, "tsne_max_points": 60, "tsne_perplexity": 5.0},
        "stats": {"bootstrap_resamples": 200},
        "execution": {"figure_dpi": 50, "stream_output": False},
    }
    study.update(overrides)
    path = root / "studies" / "degenerate.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(study, sort_keys=False, allow_unicode=True))
    return path


def _sample(rng: np.random.Generator, centres: np.ndarray, noise: float, labels: np.ndarray,
            offset: int, views: int | None = None) -> np.ndarray:
    """Class centre (row ``label + offset``) plus Gaussian noise, float16 like the cache."""
    dim = centres.shape[1]
    shape = (len(labels), dim) if views is None else (views, len(labels), dim)
    return (centres[labels + offset] + noise * rng.normal(size=shape)).astype(np.float16)


def write_synthetic_features(config: Any, feature_dim: int = 16, noise: float = 0.7) -> list[Path]:
    """Generated features in the frozen tier's cache for every dataset of the frozen groups.

    Each class has a random centre; an image's features are its class centre plus noise,
    so heads learn something in two epochs. Per-class subsets and ``test_indices`` follow
    :func:`dml_study.data.splits.subset_per_class` exactly as extraction does, into the
    feature cache's two files (``-train.npz``, ``-test.npz``).
    """
    from dml_study.atomic_io import atomic_write_with
    from dml_study.data import get_dataset
    from dml_study.data.splits import subset_per_class
    from dml_study.study.plan.grid import expand_grid, frozen_feature_settings
    from dml_study.study.tiers.frozen import (
        cached_test_indices,
        feature_cache_path,
        frozen_run_config,
    )

    written = []
    for spec in expand_grid(config):
        if spec.tier != "frozen":
            continue
        run_config = frozen_run_config(config, spec)
        settings = frozen_feature_settings(config, spec.dataset)
        paths = {part: feature_cache_path(run_config, settings, part=part)
                 for part in ("train", "test")}
        if all(p.is_file() for p in paths.values()):
            continue
        splits = {split: get_dataset(spec.dataset, split, data_root=config.data_root,
                                     progress=False)
                  for split in ("train", "test")}
        rng = np.random.default_rng(0)
        seed = settings.feature_seed
        train, test = splits["train"], splits["test"]
        train_idx = subset_per_class(train.labels, settings.max_train_per_class, seed)
        test_idx = cached_test_indices(test.labels, settings)
        centres = rng.normal(size=(train.num_classes + test.num_classes, feature_dim))

        train_labels, test_labels = train.labels[train_idx], test.labels[test_idx]
        parts = {
            "train": {
                "train_views": _sample(rng, centres, noise, train_labels, 0, settings.views),
                "train_eval": _sample(rng, centres, noise, train_labels, 0),
                "train_labels": train_labels.astype(np.int64),
                "class_names": np.asarray(list(train.class_names)),
            },
            "test": {
                "test": _sample(rng, centres, noise, test_labels, train.num_classes),
                "test_labels": test_labels.astype(np.int64),
                "test_indices": test_idx.astype(np.int64),
            },
        }
        for part, arrays in parts.items():
            paths[part].parent.mkdir(parents=True, exist_ok=True)
            atomic_write_with(paths[part], lambda fh, a=arrays: np.savez(fh, **a))
            written.append(paths[part])
    return written


#: The groups of :func:`write_degenerate_study` beside ``frozen_so`` (one seed): a group
#: whose arms lack runs at some seeds, one with no finished run, and one with one arm.
DEGENERATE_GROUPS = [
    {"name": "partial", "tier": "frozen", "datasets": ["cub200"], "seeds": [0, 1, 2],
     "description": "arms missing at some seeds",
     "variants": {"base": {"so_lambda": 0.01}, "treat": {"so_lambda": 0.02}}},
    {"name": "empty", "tier": "frozen", "datasets": ["cub200"], "seeds": [0, 1],
     "description": "no finished run",
     "variants": {"base": {"so_lambda": 0.03}, "treat": {"so_lambda": 0.04}}},
    {"name": "single", "tier": "frozen", "datasets": ["cub200"], "seeds": [0],
     "description": "one arm", "variants": {"only": {"so_lambda": 0.05}}},
]

DEGENERATE_CLAIMS = [
    {"name": "partial_r1", "claim": "treat improves R@1 (partial)", "group": "partial",
     "baseline": "base", "treatment": "treat", "metric": "R@1"},
    {"name": "empty_r1", "claim": "treat improves R@1 (empty)", "group": "empty",
     "baseline": "base", "treatment": "treat", "metric": "R@1"},
    {"name": "single_motivation", "claim": "close proxies retrieve worse (one arm)",
     "group": "single", "kind": "correlation", "baseline": "only",
     "metric": "spearman:nearest_proxy_cos:train_R@1", "direction": "decrease", "scale": 1.0,
     "unit": "rho"},
]

#: Runs removed after training: (group, variant, seed).
REMOVED_RUNS = [("partial", "treat", 1), ("partial", "base", 2), ("empty", "base", 0),
                ("empty", "base", 1), ("empty", "treat", 0), ("empty", "treat", 1)]


def write_degenerate_study(root: Path, data_root: Path) -> Path:
    """Every degenerate case in one study: ``frozen_so`` at one seed, :data:`DEGENERATE_GROUPS`
    and their claims; the headline is the one-arm group (baseline = treatment)."""
    groups = [{"name": "frozen_so", "tier": "frozen", "datasets": ["cub200"], "seeds": [0],
               "description": "no SO vs SO, one seed",
               "variants": {"no_so": {"so_lambda": 0.0}, "so": {"so_lambda": 0.1}}},
              *DEGENERATE_GROUPS]
    return write_frozen_study(root, data_root, groups=groups, claims=CLAIMS + DEGENERATE_CLAIMS,
                              headline={"group": "single", "baseline": "only",
                                        "treatment": "only"})


def remove_runs(config: Any, removed: list[tuple[str, str, int]] = REMOVED_RUNS) -> list[str]:
    """Delete the run directories of ``removed`` cells (as if they never finished)."""
    from dml_study.study.plan.grid import expand_grid

    names = [s.run_name for s in expand_grid(config) if (s.group, s.variant, s.seed) in removed]
    for name in names:
        shutil.rmtree(config.runs_dir / name)
    return names


def train_grid(config: Any) -> None:
    """Train the study's (frozen) grid here, quietly, on its synthetic features."""
    import io

    from dml_study.study.launch.launcher import launch_grid

    write_synthetic_features(config)
    launch_grid(config, progress=False, stream=io.StringIO())
