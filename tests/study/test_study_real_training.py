"""The study with the real ``02_train`` notebook on a tiny CUB fixture (integration)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from fixture_datasets import write_cub_fixture
from study_helpers import write_study

from dml_study.study.analysis.collect import load_run
from dml_study.study.pipeline.runner import run_study
from dml_study.study.plan.config import load_study_config
from dml_study.study.plan.grid import expand_grid


@pytest.mark.slow
def test_ablations_and_analysis_with_the_real_training_notebook(tmp_path: Path, repo_root: Path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for name in ("02_train.ipynb", "03_ablations.ipynb", "04_proxy_analysis.ipynb"):
        (notebooks / name).write_bytes((repo_root / "notebooks" / name).read_bytes())
    data_root = write_cub_fixture(tmp_path / "data", num_classes=12, images_per_class=6)
    train = {
        "dataset": "cub200", "backbone": "efficientnet_lite0", "pretrained": True,
        "image_size": 32, "embedding_dim": 16, "epochs": 2, "batch_size": 24,
        "m_per_class": 4, "lr": 1e-3, "device": "cpu", "num_workers": 0, "quiet": True,
    }
    config = load_study_config(write_study(
        tmp_path, notebooks=["03_ablations.ipynb", "04_proxy_analysis.ipynb"],
        train_notebook="02_train.ipynb", train=train, data_root=str(data_root),
        analysis={"seed": 0, "tsne_max_points": 40, "tsne_perplexity": 5.0}))
    record = run_study(config, html=False, progress=False)
    assert [n.status for n in record.notebooks] == ["ok", "ok"]

    for spec in expand_grid(config):
        run = load_run(config.results_dir, spec.run_name)
        assert 0.0 <= run.metrics["R@1"] <= 1.0 and "untrained/R@1" in run.metrics
        assert run.params["so_lambda"] == spec.params["so_lambda"]
        assert run.proxies.shape == run.proxies_init.shape == (6, 16)  # 6 training classes
        assert run.embeddings is not None and len(run.embeddings) == len(run.labels)
        assert {"orth_so_frobenius", "orth_effective_rank"} <= set(run.history.columns)
        executed = nbformat.read(config.executed_runs_dir / f"{spec.run_name}.ipynb", 4)
        assert executed.metadata["papermill"]["parameters"]["run_name"] == spec.run_name
    summary = json.loads((config.study_dir / "summary.json").read_text())
    assert summary["headline"]["metrics"]["R@1"]["n"] == 1
    # 04 drew the orthogonality curves from the real history (not the "no statistics" note).
    analysis = nbformat.read(config.study_dir / "04_proxy_analysis.ipynb", 4)
    text = json.dumps([c.get("outputs", []) for c in analysis.cells])
    assert "log no orthogonality statistics" not in text
