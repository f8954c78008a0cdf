"""Train a small frozen-tier or fine-tuned run and print the digest of everything it wrote.

Run as a script by ``test_determinism.py``, once per environment (thread counts, kernel
choices), because the libraries read those settings when the process starts:

    python determinism_probe.py frozen RESULTS_DIR
    python determinism_probe.py finetuned RESULTS_DIR DATA_ROOT

The digest (one JSON line) holds the final metrics, the history's metric records (every
epoch) and a SHA-1 of every array of the run directory (proxies, embeddings, train-class
recall), plus the process's :func:`dml_study.determinism.determinism_report`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

import dml_study  # noqa: F401 - first: pins the numerical profile before torch initialises

#: Files of a run directory compared bit for bit (arrays) or value for value (JSON).
ARRAY_FILES = ("proxies.npy", "proxies_init.npy", "test_embeddings.npz", "train_class_recall.npy")
_METRIC_PREFIXES = ("R@", "MAP@R", "RP", "NMI", "loss", "so", "orth_")


def frozen_features(classes: int = 24, per_class: int = 6, dim: int = 1280, views: int = 2):
    """Synthetic cached features shaped like the study's (EfficientNet-Lite0: 1280-d, fp16)."""
    from dml_study.study.tiers.frozen import FrozenFeatures

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2 * classes, dim))
    labels = np.repeat(np.arange(classes), per_class)

    def sample(offset: int, n_views: int | None = None) -> np.ndarray:
        shape = (len(labels), dim) if n_views is None else (n_views, len(labels), dim)
        return (centres[labels + offset] + 4.0 * rng.normal(size=shape)).astype(np.float16)

    return FrozenFeatures(
        train_views=sample(0, views), train_eval=sample(0), train_labels=labels,
        test=sample(classes), test_labels=labels,
        class_names=tuple(f"class {i}" for i in range(classes)), key="synthetic",
    )


def run_frozen(results: Path) -> Path:
    """A frozen-tier run of the study's icons recipe (384-d head, SO) on synthetic features."""
    from dml_study.config import load_config
    from dml_study.study.tiers.frozen import train_frozen
    from dml_study.training.run_dir import RunDirectory

    config = load_config("icons", embedding_dim=384, epochs=3, batch_size=32, m_per_class=2,
                         so_lambda=0.1, results_dir=str(results), run_name="probe-frozen")
    run = RunDirectory.for_run(results, "probe-frozen")
    train_frozen(config, frozen_features(), run)
    return run.path


def run_finetuned(results: Path, data_root: Path) -> Path:
    """A fine-tuned run: pretrained EfficientNet-Lite0 (convolutions trained from step 1)."""
    from dml_study.config import load_config
    from dml_study.training import train

    config = load_config(
        "cub200", data_root=str(data_root), results_dir=str(results), run_name="probe-ft",
        backbone="efficientnet_lite0", pretrained=True, image_size=32, embedding_dim=32,
        epochs=2, batch_size=32, m_per_class=4, lr=1e-3, num_workers=0, eval_batch_size=128,
        every_n_epochs=1, ks=[1, 2, 4], freeze_backbone_epochs=0, so_lambda=0.1, quiet=True,
    )
    return train(config).run_dir.path


def digest(run_dir: Path) -> dict:
    """Metrics, per-epoch metric records and array hashes of a finished run directory."""
    from dml_study.determinism import determinism_report

    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    records = history["records"] if isinstance(history, dict) else history
    epochs = [{k: v for k, v in r.items() if k.startswith(_METRIC_PREFIXES)} for r in records]
    arrays = {}
    for name in ARRAY_FILES:
        path = run_dir / name
        if path.is_file():
            data = np.load(path)
            parts = [data[k] for k in sorted(data.files)] if path.suffix == ".npz" else [data]
            arrays[name] = hashlib.sha1(
                b"".join(np.ascontiguousarray(a).tobytes() for a in parts)
            ).hexdigest()
    drop = {"train_time_s"}
    return {
        "metrics": {k: v for k, v in metrics.items() if k not in drop},
        "epochs": epochs,
        "arrays": arrays,
        "determinism": determinism_report(),
    }


def main(argv: list[str]) -> int:
    kind, results = argv[0], Path(argv[1])
    run_dir = run_frozen(results) if kind == "frozen" else run_finetuned(results, Path(argv[2]))
    print(json.dumps(digest(run_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
