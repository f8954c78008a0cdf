"""``export_run``: a finished run directory → an export directory (format in
:mod:`dml_study.models.exported`).

The export is written into a private temporary directory next to ``OUT`` and renamed into
place, so ``OUT`` is either the complete new export or (on any error) what it was before. An
existing ``OUT`` is replaced only with ``overwrite=True`` and only when it is an export (holds
``export.json``) or empty; any other directory is refused rather than deleted.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dml_study import __version__
from dml_study.atomic_io import atomic_write_bytes, atomic_write_json, atomic_write_text
from dml_study.env import package_version
from dml_study.errors import EXIT_USAGE
from dml_study.export.card import render_card
from dml_study.export.licences import backbone_licence, dataset_licence
from dml_study.export.run import RunWeights, Which, load_run
from dml_study.models.exported import (
    CARD_FILE,
    CONFIG_FILE,
    EXPORT_FORMAT,
    HASHED_FILES,
    MANIFEST_FILE,
    MODEL_FILE,
    PROXIES_FILE,
    ExportDamagedError,
    ExportedModel,
    ExportError,
    file_sha256,
    read_export,
)

#: Metric keys copied from ``metrics.json`` into the export (Recall@K are ``R@<k>``).
_METRIC_NAMES = ("MAP@R", "RP", "NMI")


class ExportExistsError(ExportError, FileExistsError):
    """``OUT`` exists and is not an export to replace."""

    exit_code = EXIT_USAGE


def _metric_values(record: dict[str, Any] | None) -> dict[str, float]:
    if not record:
        return {}
    return {k: float(v) for k, v in record.items()
            if (k.startswith("R@") or k in _METRIC_NAMES) and isinstance(v, int | float)}


def _metrics(rw: RunWeights) -> dict[str, Any]:
    """Final, best and untrained metrics with the epoch and split each was measured on."""
    from dml_study.data import dataset_protocol

    m = rw.metrics
    protocol = dataset_protocol(rw.config.data.dataset)
    split = "test" if protocol == "self" else "query vs gallery"
    final_epoch = int(m.get("epochs", rw.config.schedule.epochs))
    # The selected epoch: by validation MAP@R in a validation run, by test R@1 in a test run
    # (``best_test_selected``; the card says how optimistic that is).
    from dml_study.training.run_dir import best_epoch_metrics

    best = best_epoch_metrics(m)
    out = {
        "split": split,
        "protocol": protocol,
        "ks": list(rw.config.eval.ks or []),
        "final": {"epoch": final_epoch, **_metric_values(m)},
        "best": {"epoch": best.get("epoch"), **_metric_values(best)},
        "untrained": {"epoch": 0, **_metric_values(m.get("untrained"))},
    }
    out["exported"] = dict(out["final"] if rw.which == "final" else out["best"])
    return out


def _class_names(rw: RunWeights) -> dict[str, Any] | None:
    """The training classes (rows of the proxies), when the dataset can be read here."""
    from dml_study.data import dataset_info, get_dataset

    d = rw.config.data
    kw: dict[str, Any] = {"progress": False}
    if dataset_info(d.dataset).kind == "embedded":
        kw["build"] = False
    try:
        train = get_dataset(d.dataset, "train", d.data_root, **kw)
    except Exception:  # optional: the card then says the class names are unknown
        return None
    if train.num_classes != len(rw.proxies):
        return None
    return {"split": "train", "names": list(train.class_names),
            "display_names": list(train.display_names),
            "raw_names": list(train.raw_class_names)}


def _dataset(rw: RunWeights) -> dict[str, Any]:
    """Name, kind, protocol, homepage and test-split size (from ``test_embeddings.npz``)."""
    from dml_study.data import dataset_info

    info = dataset_info(rw.config.data.dataset)
    out: dict[str, Any] = {"name": info.name, "kind": info.kind, "protocol": info.protocol,
                           "source": info.source_url, "train_classes": len(rw.proxies)}
    path = rw.run_dir.test_embeddings
    if path.is_file():
        with np.load(path) as data:
            if "labels" in data:
                out["test_images"] = len(data["labels"])
                out["test_classes"] = len(np.unique(data["labels"]))
    return out


def _dataset_manifest(dataset: str) -> dict[str, Any] | None:
    """``manifest.json`` of an embedded dataset in the cache (``None`` when not built)."""
    from dml_study.data import dataset_info

    info = dataset_info(dataset)
    if info.embedded is None:
        return None
    module = importlib.import_module(f"dml_study.data.{info.embedded}")
    try:
        return module.read_manifest(module.dataset_dir(None))
    except Exception:  # optional: the licences then list the builder's packages
        return None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def build_manifest(rw: RunWeights, files: dict[str, str]) -> dict[str, Any]:
    """``export.json`` of ``rw`` (``files``: name → sha256)."""
    config = rw.config
    d = config.data
    return _plain({
        "format": EXPORT_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "name": rw.run_dir.path.name,
        "source": {
            "run_dir": str(rw.run_dir.path.resolve()), "run_name": rw.run_dir.path.name,
            "tier": rw.tier, "weights": rw.which, "epoch": rw.epoch,
            "epochs": config.schedule.epochs, "checkpoint": rw.checkpoint,
        },
        "architecture": rw.architecture.to_dict(),
        "data_config": dict(rw.embedder.data_config),
        "preprocessing": {
            "image_size": d.image_size,
            "resize_ratio": d.resize_ratio,
            "resize": round(d.image_size * d.resize_ratio),
            "pre_resize_shorter": rw.pre_resize_shorter,
            "channels_last": rw.channels_last,
            "batch_size": d.eval_batch_size,
            "transform": "RGB (transparency on white) → [shrink the shorter side to "
                         "pre_resize_shorter] → Resize(resize) → CenterCrop(image_size) → "
                         "ToTensor → Normalize(data_config mean, std)",
        },
        "proxies": {"num_classes": int(rw.proxies.shape[0]), "dim": int(rw.proxies.shape[1])},
        "classes": _class_names(rw),
        "dataset": _dataset(rw),
        "loss": {"name": config.loss.name, "so_lambda": config.loss.so_lambda,
                 "params": dict(config.loss.params)},
        "metrics": _metrics(rw),
        "licences": {"backbone": backbone_licence(config.model),
                     "dataset": dataset_licence(d.dataset, _dataset_manifest(d.dataset))},
        "provenance": rw.provenance,
        "versions": {"dml_study": __version__, **{name: package_version(name) for name in
                                                  ("torch", "timm", "safetensors", "numpy")}},
        "files": files,
    })


def _safetensors_bytes(tensors: dict[str, Any], metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    try:
        return save(plain, metadata=metadata)
    except RuntimeError as err:  # tensors sharing memory (tied weights)
        raise ExportDamagedError(
            f"the model has tensors sharing memory ({err}); safetensors stores each tensor "
            "once: untie them before exporting"
        ) from err


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportExistsError(f"{out} exists and is a file; choose a directory for the export")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST_FILE).is_file():
            raise ExportExistsError(
                f"{out} is a non-empty directory that is not an export; choose a new or empty "
                "directory (it is never deleted)")
        if not overwrite:
            raise ExportExistsError(f"{out} already holds an export; pass --overwrite to "
                                    "replace it")


def export_run(
    run_dir: str | Path, out: str | Path, weights: Which = "final", overwrite: bool = False
) -> ExportedModel:
    """Export the finished run in ``run_dir`` to the directory ``out``; returns it, read back
    and checked (:func:`~dml_study.models.exported.read_export`).

    ``weights``: ``"final"`` (``checkpoints/last.pt``, the weights ``metrics.json`` and
    ``test_embeddings.npz`` report; default) or ``"best"`` (``checkpoints/best.pt``, the
    epoch of the best *test* R@1 — selected on the test split, so its numbers are optimistic).
    """
    out = Path(out).expanduser()
    _prepare_out(out, overwrite)
    rw = load_run(run_dir, weights)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        meta = {"format": "pt", "dml_study_export": str(EXPORT_FORMAT),
                "timm_architecture": rw.architecture.timm_architecture}
        atomic_write_bytes(tmp / MODEL_FILE,
                           _safetensors_bytes(rw.embedder.state_dict(), meta))
        atomic_write_bytes(tmp / PROXIES_FILE,
                           _safetensors_bytes({"proxies": rw.proxies}, {"format": "pt"}))
        atomic_write_bytes(tmp / CONFIG_FILE, rw.run_dir.config.read_bytes())
        files = {name: file_sha256(tmp / name) for name in HASHED_FILES}
        manifest = build_manifest(rw, files)
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
        atomic_write_text(tmp / CARD_FILE, render_card(manifest, rw.config))
        tmp.chmod(0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return read_export(out)
