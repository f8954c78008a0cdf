"""End to end with the real validation split (contract A): the tuner never reads the test split.

The package's own trainers run every trial: the frozen tier on the embedded icons dataset
(features extracted from its training images into a fresh cache), the fine-tuned tier
(``02_train`` through the local launcher) in the paper study's smoke form on official-layout
fixtures. While the frozen tuner runs, every dataset split opened and every feature file
loaded is recorded: only the training split, and no test feature file (``…-test.npz``),
neither during the trials nor when the validation classes are checked afterwards.
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

from dml_study.data.splits import validation_split
from dml_study.paths import cache_root
from dml_study.study.plan.config import load_study_config
from dml_study.study.tune import plan_searches
from dml_study.study.tune.cli import cli
from dml_study.training.run_dir import RunDirectory

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def opened(monkeypatch):
    """Every ``(dataset, split)`` opened and every ``.npz`` loaded while the test runs."""
    import dml_study.data
    import dml_study.data.registry

    seen: dict[str, list] = {"splits": [], "records": [], "npz": []}
    real_get, real_load = dml_study.data.registry.get_dataset, np.load
    real_records = dml_study.data.registry._records

    def records(name, split, *args, **kwargs):  # what any loader path lists
        seen["records"].append(split)
        return real_records(name, split, *args, **kwargs)

    def get_dataset(name, split="train", *args, **kwargs):
        seen["splits"].append((name, split))
        return real_get(name, split, *args, **kwargs)

    def load(path, *args, **kwargs):
        seen["npz"].append(str(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(dml_study.data.registry, "get_dataset", get_dataset)
    monkeypatch.setattr(dml_study.data, "get_dataset", get_dataset)
    monkeypatch.setattr(dml_study.data.registry, "_records", records)
    monkeypatch.setattr(np, "load", load)
    return seen


@pytest.fixture
def icons_cache(tmp_path, monkeypatch):
    """A fresh ``$DML_STUDY_CACHE`` holding (a link to) the built icons dataset only, so the
    tuner extracts its frozen features itself."""
    shared = cache_root()
    built = sorted(shared.glob("icons-*/manifest.json"))
    if not built:
        pytest.skip(f"the embedded icons dataset is not built in {shared} "
                    "(python -m dml_study.data.icons build)")
    root = tmp_path / "cache"
    root.mkdir()
    (root / built[0].parent.name).symlink_to(built[0].parent)
    monkeypatch.setenv("DML_STUDY_CACHE", str(root))
    return root


@pytest.mark.slow
def test_frozen_tuning_on_icons_never_opens_the_test_split(tmp_path, icons_cache, opened):
    study = tiny_tuning_study(tmp_path, trials=3, epochs=3, pruner="median",
                              features={"max_train_per_class": 6})
    assert cli(["--config", str(study), "--quiet"]) == 0
    assert opened["splits"] and {split for _, split in opened["splits"]} == {"train"}
    assert set(opened["records"]) == {"train"}
    assert opened["npz"] and all(p.endswith("-train.npz") for p in opened["npz"])
    files = sorted(p.name for p in (icons_cache / "frozen_features").iterdir())
    assert len(files) == 1 and files[0].endswith("-train.npz")  # no test features extracted
    from dml_study.data import get_dataset

    training_ids = np.unique(get_dataset("icons", "train").labels)
    kept, held_out = validation_split(training_ids, 4, 0, 0)
    config = load_study_config(study)
    for plan in plan_searches(config):
        chosen = json.loads((plan.directory / "chosen.json").read_text())
        assert chosen["complete"] and chosen["n_trials"] == 3
        validation = json.loads((plan.directory / "validation_classes.json").read_text())
        assert validation["split"] == "validation" and validation["fold"] == 0
        assert validation["validation_labels"] == held_out.tolist()
        assert validation["train_labels"] == kept.tolist()
        run = RunDirectory.for_run(config.results_dir, _best_run(plan, chosen))
        metrics = json.loads(run.metrics.read_text())
        assert metrics["split"] == "validation" and metrics["num_classes"] == len(kept)


def _best_run(plan, chosen) -> str:
    import optuna

    from dml_study.study.tune.storage import open_storage

    trials = optuna.load_study(study_name=plan.study_name,
                               storage=open_storage(plan.journal)).get_trials()
    return trials[chosen["trial"]].user_attrs["run_names"][0]


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
