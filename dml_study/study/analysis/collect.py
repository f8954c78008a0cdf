"""Gather finished training runs (``results/runs/<run_name>/``) into pandas tables.

A run directory (:class:`~dml_study.training.run_dir.RunDirectory`) is written by
:func:`dml_study.training.train` (through ``02_train``) or the frozen tier: ``config.yaml``,
``metrics.json`` (flat final metrics plus an ``"untrained"`` baseline; its presence marks
the run finished), ``history.json`` (:class:`~dml_study.training.history.History`),
``proxies.npy``, ``proxies_init.npy``, ``test_embeddings.npz`` and ``provenance.json``.
Paths and the finished test are the run directory's; the config is read by the leaf names
of the training parameters, so these helpers keep working when the config nests sections.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from dml_study.study.plan.config import STUDY_TRAIN_PARAMETERS
from dml_study.study.plan.grid import RunSpec
from dml_study.training.history import History
from dml_study.training.run_dir import RunDirectory, run_split, runs_root
from dml_study.typed_fields import flatten

#: Columns describing a run's configuration, in display order.
PARAM_COLUMNS: tuple[str, ...] = (
    "dataset",
    "loss",
    "so_lambda",
    "so_gram",
    "so_normalize",
    "so_reduction",
    "proxy_init",
    "embedding_dim",
    "backbone",
    "pretrained",
    "image_size",
    "epochs",
    "batch_size",
    "lr",
    "seed",
)


def finished_run_dirs(results_dir: str | Path) -> list[Path]:
    """Run directories under ``<results_dir>/runs`` that hold ``metrics.json``, sorted."""
    runs = runs_root(results_dir)
    if not runs.is_dir():
        return []
    return sorted(p for p in runs.iterdir() if RunDirectory(p).is_finished())


def load_metrics(path: str | Path) -> dict[str, float]:
    """Final metrics of a run, flat; the untrained baseline as ``untrained/<metric>``.

    The best epoch is ``best/<metric>`` in a validation run (chosen on validation MAP@R)
    and ``best_test_selected/<metric>`` in a test run (chosen on test R@1); a
    ``metrics.json`` written before the split was recorded is a test run, so its ``best``
    is read as ``best_test_selected`` (:func:`~dml_study.training.run_dir.best_epoch_metrics`).
    The split itself is :func:`run_split_of`.
    """
    raw = RunDirectory(path).read_json("metrics.json")
    if "split" not in raw and "best" in raw:
        raw["best_test_selected"] = raw.pop("best")
    flat: dict[str, float] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update({f"{key}/{k}": v for k, v in value.items() if _is_number(v)})
        elif _is_number(value) or value is None:
            flat[key] = float("nan") if value is None else float(value)
    return flat


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_run_config(path: str | Path) -> dict[str, Any]:
    """The run's ``config.yaml`` as a nested dict (empty when absent)."""
    file = RunDirectory(path).config
    if not file.is_file():
        return {}
    return yaml.safe_load(file.read_text(encoding="utf-8")) or {}


def run_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """Training parameters found in a (possibly nested) run config, by leaf name.

    The first occurrence of each leaf named like a training parameter wins (``loss.name``
    and ``model.backbone`` style layouts are both understood).
    """
    found: dict[str, Any] = {}
    for path, value in flatten(config).items():
        parts = path.split(".")
        leaf = parts[-1]
        if leaf == "name" and len(parts) >= 2 and parts[-2] in ("loss", "dataset"):
            leaf = parts[-2]
        if leaf in STUDY_TRAIN_PARAMETERS and leaf not in found:
            found[leaf] = value
    for key in ("run_name",):
        found.pop(key, None)
    return found


def run_recipe(params: dict[str, Any]) -> str:
    """``"full"`` for runs that follow the published recipe, else ``"cpu"`` (CPU-sized).

    The published recipe is an ImageNet-pretrained DeiT at 224 px on one of the four
    benchmarks; anything smaller (the icons dataset, a tiny backbone, a few epochs at
    low resolution) is a CPU-sized run whose numbers are not comparable to the papers'.
    """
    from dml_study.data.registry import list_datasets

    backbone = str(params.get("backbone") or "")
    full = (
        params.get("dataset") in list_datasets(kind="benchmark")
        and backbone.startswith("deit")
        and bool(params.get("pretrained", False))
        and int(params.get("image_size") or 0) >= 224
    )
    return "full" if full else "cpu"


def run_split_of(path: str | Path) -> str:
    """``"validation"`` or ``"test"``: what the run evaluated (``metrics.json["split"]``)."""
    return run_split(RunDirectory(path).read_json("metrics.json"))


def run_tier(path: str | Path) -> str:
    """``"frozen"`` for frozen-backbone runs (``metrics.json`` says so), else ``"fine-tuned"``."""
    raw = RunDirectory(path).read_json("metrics.json")
    return str(raw.get("tier", "fine-tuned"))


def collect_runs(results_dir: str | Path) -> pd.DataFrame:
    """One row per finished run: run name, parameters, recipe, tier, split, metrics
    (fractions)."""
    rows = []
    for path in finished_run_dirs(results_dir):
        params = run_parameters(load_run_config(path))
        row: dict[str, Any] = {"run_name": path.name}
        row.update({k: params.get(k) for k in PARAM_COLUMNS})
        row["recipe"] = run_recipe(params)
        row["tier"] = run_tier(path)
        row["split"] = run_split_of(path)
        _add_metrics(row, load_metrics(path))
        rows.append(row)
    columns = ["run_name", *PARAM_COLUMNS, "recipe", "tier", "split"]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows)
    return frame[[*columns, *[c for c in frame.columns if c not in columns]]]


def _add_metrics(row: dict[str, Any], metrics: dict[str, float]) -> None:
    """Add metric columns; a metrics key that names a parameter (``epochs``) is prefixed."""
    for key, value in metrics.items():
        row[f"metrics/{key}" if key in row else key] = value


#: Columns of a grid cell besides its parameters: which cell, and how its values were set
#: (``protocol``: preset / tuned; ``lr_factor``: an lr-grid cell's factor, else NaN).
CELL_COLUMNS: tuple[str, ...] = ("group", "variant", "seed", "tier", "protocol", "lr_factor",
                                 "base_variant", "run_name")


def _cell(spec: RunSpec) -> dict[str, Any]:
    return {"group": spec.group, "variant": spec.variant, "seed": spec.seed,
            "tier": spec.tier, "protocol": spec.protocol,
            "lr_factor": float("nan") if spec.lr_factor is None else float(spec.lr_factor),
            "base_variant": spec.base_variant, "run_name": spec.run_name}


def grid_results(specs: Iterable[RunSpec], results_dir: str | Path) -> pd.DataFrame:
    """One row per grid cell (group, variant, seed, protocol) with its parameters and
    metrics.

    Cells whose run has not finished are left out; the ``finished`` count of
    :func:`grid_status` says how many. A group with ``protocols: [preset, tuned]`` has a row
    per protocol of each (variant, seed): group or filter by ``protocol`` before comparing.
    """
    rows = []
    for spec in specs:
        run = RunDirectory.for_run(results_dir, spec.run_name)
        if not run.is_finished():
            continue
        row: dict[str, Any] = _cell(spec)
        row.update({k: spec.params.get(k) for k in PARAM_COLUMNS if k != "seed"})
        _add_metrics(row, load_metrics(run.path))
        rows.append(row)
    if not rows:  # keep the columns so that filtering an empty table still works
        return pd.DataFrame(columns=[*CELL_COLUMNS, *PARAM_COLUMNS[:-1]])
    return pd.DataFrame(rows)


def grid_status(specs: Iterable[RunSpec], results_dir: str | Path) -> pd.DataFrame:
    """Per group: cells, distinct runs and how many of them are finished."""
    rows = []
    for spec in specs:
        done = RunDirectory.for_run(results_dir, spec.run_name).is_finished()
        rows.append({"group": spec.group, "run_name": spec.run_name, "finished": done})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.groupby("group", sort=False).agg(
        cells=("run_name", "size"), runs=("run_name", "nunique"), finished=("finished", "sum")
    )


@dataclass(frozen=True)
class RunArtifacts:
    """Arrays and logs of one finished run, for the proxy analysis."""

    run_name: str
    path: Path
    metrics: dict[str, float]
    params: dict[str, Any]
    history: pd.DataFrame
    proxies: np.ndarray
    proxies_init: np.ndarray | None
    embeddings: np.ndarray | None
    labels: np.ndarray | None


def load_history(path: str | Path) -> pd.DataFrame:
    """The run's per-epoch log (:meth:`History.load`: one row per record of ``history.json``;
    empty when the run has none)."""
    return pd.DataFrame(History.load(RunDirectory(path)).records)


def load_test_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """``(embeddings, labels)`` from ``test_embeddings.npz`` (``None`` when absent).

    For query/gallery datasets (In-Shop) the query split is used.
    """
    file = RunDirectory(path).test_embeddings
    if not file.is_file():
        return None
    with np.load(file) as data:
        keys = set(data.files)
        for emb_key, lab_key in (
            ("embeddings", "labels"),
            ("test_embeddings", "test_labels"),
            ("query_embeddings", "query_labels"),
        ):
            if emb_key in keys and lab_key in keys:
                return np.asarray(data[emb_key]), np.asarray(data[lab_key])
    raise KeyError(f"{file}: no embeddings/labels arrays; arrays: {sorted(keys)}")


def load_run(results_dir: str | Path, run_name: str) -> RunArtifacts:
    """Everything the proxy analysis needs from one finished run."""
    run = RunDirectory.for_run(results_dir, run_name)
    if not run.is_finished():
        raise FileNotFoundError(f"run {run_name} is not finished: no {run.metrics}")
    path = run.path
    test = load_test_embeddings(path)
    init = run.proxies_init
    return RunArtifacts(
        run_name=run_name,
        path=path,
        metrics=load_metrics(path),
        params=run_parameters(load_run_config(path)),
        history=load_history(path),
        proxies=np.load(run.proxies),
        proxies_init=np.load(init) if init.is_file() else None,
        embeddings=None if test is None else test[0],
        labels=None if test is None else test[1],
    )


def grid_histories(specs: Iterable[RunSpec], results_dir: str | Path) -> pd.DataFrame:
    """Per-epoch histories of the finished cells of ``specs``, stacked (one row per epoch).

    Columns: :data:`CELL_COLUMNS` (``group, variant, seed, tier, protocol, lr_factor,
    base_variant, run_name``), ``dataset`` and the history's columns (``epoch``, loss terms,
    ``R@1``, ``MAP@R``, ``orth_*``...).
    """
    frames = []
    for spec in specs:
        run = RunDirectory.for_run(results_dir, spec.run_name)
        if not run.is_finished():
            continue
        history = load_history(run.path)
        if history.empty:
            continue
        frames.append(history.assign(**_cell(spec), dataset=spec.dataset))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
