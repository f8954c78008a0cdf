"""End to end with the real validation split (contract A): the tuner never reads the test split.

Skipped until ``dml_study.data.splits`` (issue #19 part 1, another branch) is merged; then
the package's own trainers run every trial: the frozen tier on the embedded icons dataset,
the fine-tuned tier (``02_train`` through the local launcher) in the paper study's smoke
form on official-layout fixtures. While the tuner runs, every dataset split opened and every
feature file loaded is recorded: no test / query / gallery split and no test feature file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from fixture_datasets import write_cub_fixture
from tune_helpers import tiny_tuning_study

splits = pytest.importorskip(
    "dml_study.data.splits",
    reason="contract A of issue #19 (the validation split, dml_study.data.splits) is not in "
           "this checkout yet: the end-to-end tuning tests run once it is merged")

from dml_study.study.plan.config import load_study_config  # noqa: E402
from dml_study.study.tune import plan_searches  # noqa: E402
from dml_study.study.tune.cli import cli  # noqa: E402
from dml_study.study.tune.trainers import FrozenTrialTrainer  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def opened(monkeypatch):
    """Every ``(dataset, split)`` opened and every ``.npz`` loaded while the test runs."""
    import dml_study.data
    import dml_study.data.registry

    seen: dict[str, list] = {"splits": [], "npz": []}
    real_get, real_load = dml_study.data.registry.get_dataset, np.load

    def get_dataset(name, split="train", *args, **kwargs):
        seen["splits"].append((name, split))
        return real_get(name, split, *args, **kwargs)

    def load(path, *args, **kwargs):
        seen["npz"].append(str(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(dml_study.data.registry, "get_dataset", get_dataset)
    monkeypatch.setattr(dml_study.data, "get_dataset", get_dataset)
    monkeypatch.setattr(np, "load", load)
    return seen


@pytest.mark.slow
def test_frozen_tuning_on_icons_never_opens_the_test_split(tmp_path, opened, monkeypatch):
    test_classes = FrozenTrialTrainer.test_class_names  # read once, before the tuner runs
    names = test_classes(FrozenTrialTrainer(load_study_config(tiny_tuning_study(tmp_path))),
                         "icons")
    monkeypatch.setattr(FrozenTrialTrainer, "test_class_names", lambda self, d: names)
    opened["splits"].clear()
    study = tiny_tuning_study(tmp_path, trials=3, epochs=3, pruner="median")
    assert cli(["--config", str(study), "--quiet"]) == 0
    assert opened["splits"] and {split for _, split in opened["splits"]} == {"train"}
    assert not [p for p in opened["npz"] if p.endswith("-test.npz")]
    for plan in plan_searches(load_study_config(study)):
        chosen = json.loads((plan.directory / "chosen.json").read_text())
        assert chosen["complete"] and chosen["n_trials"] == 3
        validation = json.loads((plan.directory / "validation_classes.json").read_text())
        assert validation["split"] == "validation" and validation["fold"] == 0
        assert not set(validation["validation_classes"]) & names
        assert not set(validation["validation_classes"]) & set(validation["train_classes"])


@pytest.mark.slow
def test_paper_smoke_tunes_fine_tuned_arms_on_fixtures(tmp_path):
    data = write_cub_fixture(tmp_path / "data", num_classes=16, images_per_class=4)
    out = tmp_path / "smoke"
    env = {**os.environ, "PYTHONPATH": str(REPO), "DML_DATA_ROOT": str(data)}
    proc = subprocess.run(
        [sys.executable, "-m", "dml_study.study", "tune", "--config",
         str(REPO / "studies" / "paper.yaml"), "--smoke", "--results-dir", str(out), "--quiet",
         "--arms", "cub200_so/no_so", "cub200_so/so"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1500, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for arm in ("cub200_so.no_so", "cub200_so.so"):
        directory = out / "paper" / "tuning" / "cub200" / arm
        chosen = json.loads((directory / "chosen.json").read_text())
        assert chosen["complete"] and chosen["tier"] == "fine-tuned" and chosen["epochs"] == 1
        validation = json.loads((directory / "validation_classes.json").read_text())
        assert validation["split"] == "validation"
        smoke = yaml.safe_load((out / "paper.smoke.yaml").read_text())
        assert smoke["tuning"]["trials"]["fine-tuned"] == 2
