"""Run directory states, atomic writes, checkpoints and RNG state round trips."""

from __future__ import annotations

import csv
import json
import os
import random

import numpy as np
import pytest
import torch

from dml_study.training import RunDirectory, RunExistsError, RunState
from dml_study.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from dml_study.training.run_dir import (
    atomic_write_csv,
    atomic_write_json,
    atomic_write_with,
    default_results_dir,
)


def test_states_and_overwrite_protection(tmp_path):
    rd = RunDirectory.for_run(tmp_path, "r1")
    assert rd.path == tmp_path / "runs" / "r1"
    assert rd.state() is RunState.NEW
    assert rd.prepare(overwrite=False) is RunState.NEW and rd.checkpoints.is_dir()
    save_checkpoint(rd.last_checkpoint, {"x": 1})
    assert rd.prepare(overwrite=False) is RunState.RESUMABLE
    atomic_write_json(rd.metrics, {"R@1": 0.5})
    assert rd.state() is RunState.FINISHED
    with pytest.raises(RunExistsError, match=r"finished run .*overwrite=True"):
        rd.prepare(overwrite=False)
    assert rd.metrics.is_file()
    assert rd.prepare(overwrite=True) is RunState.NEW
    assert not rd.metrics.exists() and not rd.last_checkpoint.exists()


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})

    def failing(fh):
        fh.write(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write_with(target, failing)
    assert json.loads(target.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["a.json"]  # no temp file left behind


def test_csv_has_union_of_columns(tmp_path):
    path = tmp_path / "h.csv"
    atomic_write_csv(path, [{"epoch": 0, "R@1": 0.1}, {"epoch": 1, "loss": 2.0, "R@1": 0.3}])
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["epoch", "R@1", "loss"]
    assert rows[0]["loss"] == "" and rows[1]["loss"] == "2.0"


def test_json_handles_numpy(tmp_path):
    atomic_write_json(tmp_path / "n.json", {"a": np.float32(0.5), "b": np.arange(2)})
    assert json.loads((tmp_path / "n.json").read_text()) == {"a": 0.5, "b": [0, 1]}


def test_checkpoint_round_trip_and_version_check(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 2}
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["epoch"] == 2 and torch.equal(loaded["model"]["w"], torch.arange(3.0))
    torch.save({"version": 99}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="format version 99"):
        load_checkpoint(tmp_path / "old.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip():
    torch.manual_seed(1)
    random.seed(1)
    state = rng_state()
    a = (torch.rand(3), random.random(), np.random.rand())  # noqa: NPY002 - global state test
    set_rng_state(state)
    b = (torch.rand(3), random.random(), np.random.rand())  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_default_results_dir_env_and_checkout(monkeypatch, tmp_path):
    monkeypatch.setenv("DML_RESULTS_DIR", str(tmp_path))
    assert default_results_dir() == tmp_path
    monkeypatch.delenv("DML_RESULTS_DIR")
    assert default_results_dir().name == "results"
    assert (default_results_dir().parent / "pyproject.toml").is_file()


def test_history_round_trips_through_the_run_directory(tmp_path):
    from dml_study.training.history import History
    from dml_study.training.run_dir import runs_root

    rd = RunDirectory.for_run(tmp_path, "r")
    assert rd.path == runs_root(tmp_path) / "r" == tmp_path / "runs" / "r"
    assert History.load(rd).records == []  # no history yet
    rd.path.mkdir(parents=True)
    History([{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25, "R@1": 0.9}]).save(rd)
    assert History.load(rd).records == [{"epoch": 1, "loss": 0.5},
                                        {"epoch": 2, "loss": 0.25, "R@1": 0.9}]
    assert not rd.is_finished()
    rd.metrics.write_text("{}")
    assert rd.is_finished() and rd.state() is RunState.FINISHED


def test_best_record_uses_the_splits_metric_and_the_earliest_of_ties():
    from dml_study.training.run_dir import best_epoch_metrics, best_record

    records = [{"epoch": 1, "R@1": 0.9, "MAP@R": 0.2}, {"epoch": 2, "R@1": 0.5, "MAP@R": 0.4},
               {"epoch": 3}, {"epoch": 4, "R@1": 0.9, "MAP@R": 0.4}]
    assert best_record(records, "validation")["epoch"] == 2  # MAP@R; 4 ties, 2 is earlier
    assert best_record(records, "test")["epoch"] == 1  # R@1
    assert best_record([{"epoch": 1}], "test") is None
    # metrics.json: best in validation runs, best_test_selected in test runs, legacy best
    assert best_epoch_metrics({"split": "validation", "best": {"epoch": 2}}) == {"epoch": 2}
    assert best_epoch_metrics({"split": "test", "best_test_selected": {"epoch": 1}}) == {
        "epoch": 1}
    assert best_epoch_metrics({"best": {"epoch": 3}}) == {"epoch": 3}  # before "split"
    assert best_epoch_metrics({"split": "test", "best": {"epoch": 3}}) == {}
