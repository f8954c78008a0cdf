"""Shared fixtures of the training tests: a tiny CUB-layout dataset and a tiny DeiT config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fixture_datasets import write_cub_fixture

from dml_study.config import ExperimentConfig, load_config

#: 40 classes (20 train / 20 test) x 8 images: hard enough that a random tiny ViT is imperfect.
FIXTURE_CLASSES = 40
FIXTURE_IMAGES = 8


def tiny_overrides(data_root: Path, results_dir: Path) -> dict[str, Any]:
    """A tiny DeiT (32 px, patch 8, random init) on the fixture: a few seconds per run on CPU."""
    return {
        "data_root": str(data_root),
        "results_dir": str(results_dir),
        "backbone": "deit_tiny_patch16_224",
        "pretrained": False,
        "set_img_size": True,
        "patch_size": 8,
        "image_size": 32,
        "embedding_dim": 32,
        "batch_size": 32,
        "m_per_class": 4,
        "epochs": 3,
        "lr": 1e-3,
        "num_workers": 0,
        "eval_batch_size": 128,
        "every_n_epochs": 1,
        "ks": [1, 2, 4],
        "schedule": "cosine",
        "freeze_backbone_epochs": 1,
        "quiet": True,
    }


@pytest.fixture(scope="session")
def cub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cub_fixture(
        tmp_path_factory.mktemp("cub"), num_classes=FIXTURE_CLASSES, images_per_class=FIXTURE_IMAGES
    )


@pytest.fixture
def tiny_config(cub_root: Path, tmp_path: Path):
    """``tiny_config(**overrides) -> ExperimentConfig`` writing runs under ``tmp_path``."""

    def make(**overrides: Any) -> ExperimentConfig:
        return load_config("cub200", **{**tiny_overrides(cub_root, tmp_path / "results"),
                                        **overrides})

    return make
