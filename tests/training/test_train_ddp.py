"""DDP on CPU (gloo, 2 processes, torchrun) equals single-process training on the global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dml_study.data.splits import FORBID_TEST_ENV
from dml_study.training import train

pytestmark = pytest.mark.slow


def _cli_args(overrides: dict) -> list[str]:
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    return args


def test_ddp_two_gloo_processes_match_single_process(tiny_config, tmp_path):
    # Augmentation off: the per-sample seeds are layout independent, but a sample repeated
    # across the two ranks' halves of one global batch would count its repeats differently.
    common = {"epochs": 2, "augment": False, "checkpoint_every_steps": 0, "nmi": False,
              "train_class_recall": True}
    single = train(tiny_config(run_name="single", batch_size=32, **common))

    cfg = tiny_config(run_name="ddp", batch_size=16, **common)  # 2 ranks x 16 = 32 global
    overrides = {k: v for k, v in cfg.flat().items() if v is not None}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "dml_study.train", *_cli_args(overrides)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    run = tmp_path / "results" / "runs" / "ddp"
    metrics = json.loads((run / "metrics.json").read_text())
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["world_size"] == 2
    history = json.loads((run / "history.json").read_text())
    # Same number of optimiser steps: the two ranks split each global batch.
    assert [h["step"] for h in history] == [h["step"] for h in single.history]
    # Same loss on the same global batches, up to float summation order.
    np.testing.assert_allclose(
        [h["loss"] for h in history[1:]], [h["loss"] for h in single.history[1:]], rtol=1e-4
    )
    np.testing.assert_allclose(
        np.load(run / "proxies.npy"), np.load(single.run_dir.proxies), atol=1e-4
    )
    for key in ("R@1", "R@2", "R@4", "MAP@R"):
        assert metrics[key] == pytest.approx(single.metrics[key], abs=1e-3), key
    assert metrics["untrained"] == pytest.approx(single.untrained, abs=1e-6)
    # Rank 0 gathered the embeddings of the whole (sharded) test set.
    emb = np.load(run / "test_embeddings.npz")
    single_emb = np.load(single.run_dir.test_embeddings)
    np.testing.assert_array_equal(emb["labels"], single_emb["labels"])
    np.testing.assert_allclose(emb["embeddings"], single_emb["embeddings"], atol=1e-3)
    # ... and of the whole training set for the per-class R@1 (a collective pass).
    recall = np.load(run / "train_class_recall.npy")
    single_recall = np.load(single.run_dir.train_class_recall)
    assert recall.shape == single_recall.shape
    assert np.nanmean(recall) == pytest.approx(np.nanmean(single_recall), abs=0.02)


def test_ddp_validation_run_cuts_the_same_split_on_every_rank(tiny_config, tmp_path):
    # Both ranks cut the folds themselves (no communication); the trainer checks that they
    # agree, and the result equals the single-process validation run. Under the guard, so
    # neither rank may open the test split.
    common = {"epochs": 1, "augment": False, "nmi": False, "split": "validation",
              "val_fold": 3, "val_seed": 5}
    single = train(tiny_config(run_name="single-val", batch_size=32, **common))
    cfg = tiny_config(run_name="ddp-val", batch_size=16, **common)
    overrides = {k: v for k, v in cfg.flat().items() if v is not None}
    env = {**os.environ, "OMP_NUM_THREADS": "1", FORBID_TEST_ENV: "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "dml_study.train", *_cli_args(overrides)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "results" / "runs" / "ddp-val"
    assert json.loads((run / "validation_classes.json").read_text()) == json.loads(
        single.run_dir.validation_classes.read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "validation" and metrics["best"]["epoch"] == 1
    for key in ("R@1", "MAP@R"):
        assert metrics[key] == pytest.approx(single.metrics[key], abs=1e-3), key
    emb = np.load(run / "validation_embeddings.npz")
    np.testing.assert_array_equal(emb["labels"], np.load(single.run_dir.validation_embeddings)
                                  ["labels"])
