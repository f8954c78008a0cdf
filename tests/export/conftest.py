"""Fixtures of the export tests: one tiny fine-tuned run (trained once per session) and its
export. The recipe is the training tests' (a 32-px DeiT with patch 8, random init, on a
CUB-layout fixture): a few seconds on CPU, a real ``checkpoints/last.pt`` with RNG states."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fixture_datasets import write_cub_fixture

from dml_study.config import ExperimentConfig, load_config


def tiny_config(data_root: Path, results_dir: Path, **overrides) -> ExperimentConfig:
    values = {
        "data_root": str(data_root), "results_dir": str(results_dir),
        "backbone": "deit_tiny_patch16_224", "pretrained": False, "set_img_size": True,
        "patch_size": 8, "image_size": 32, "embedding_dim": 16, "batch_size": 32,
        "m_per_class": 4, "epochs": 2, "lr": 1e-3, "num_workers": 0, "eval_batch_size": 64,
        "ks": [1, 2, 4], "schedule": "cosine", "freeze_backbone_epochs": 1, "quiet": True,
        "nmi": False, "run_name": "tiny",
    }
    return load_config("cub200", **{**values, **overrides})


@pytest.fixture(scope="session")
def cub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cub_fixture(tmp_path_factory.mktemp("cub"), num_classes=16, images_per_class=6)


@pytest.fixture(scope="session")
def trained_run(cub_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """``(config, run directory)`` of a finished tiny run."""
    from dml_study.training import train

    config = tiny_config(cub_root, tmp_path_factory.mktemp("results"))
    result = train(config)
    return config, result.run_dir


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run exported once (tests that change it work on a copy)."""
    from dml_study.export import export_run

    out = tmp_path_factory.mktemp("exports") / "tiny"
    export_run(trained_run[1].path, out)
    return out


@pytest.fixture
def export_copy(exported: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(exported, target)
    return target
