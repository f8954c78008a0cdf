"""Collecting finished runs from their directories into tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from dml_study.study.analysis.collect import (
    collect_runs,
    finished_run_dirs,
    load_metrics,
    load_run,
    run_parameters,
    run_recipe,
)

# The nested layout of dml_study.config.ExperimentConfig.to_yaml().
NESTED = {
    "data": {"dataset": "cub200", "image_size": 224, "batch_size": 180},
    "model": {"backbone": "deit_small_distilled_patch16_224", "pretrained": True,
              "embedding_dim": 384},
    "loss": {"name": "proxy_anchor", "so_lambda": 0.1, "so_gram": "classes",
             "proxy_init": "kaiming"},
    "optim": {"lr": 3e-5},
    "schedule": {"name": "cosine", "epochs": 60, "warmup_epochs": 0.0},
    "run": {"seed": 2, "run_name": "x"},
}


def _run(root: Path, name: str, config: dict, metrics: dict | None) -> Path:
    path = root / "runs" / name
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_run_parameters_reads_nested_config_by_leaf_name():
    params = run_parameters(NESTED)
    assert params["dataset"] == "cub200" and params["loss"] == "proxy_anchor"
    assert params["epochs"] == 60 and params["seed"] == 2 and params["lr"] == 3e-5
    assert "run_name" not in params and "name" not in params


def test_recipe_separates_full_recipe_from_cpu_sized_runs():
    assert run_recipe(run_parameters(NESTED)) == "full"
    assert run_recipe({**run_parameters(NESTED), "dataset": "icons"}) == "cpu"
    assert run_recipe({**run_parameters(NESTED), "image_size": 64}) == "cpu"
    assert run_recipe({**run_parameters(NESTED), "backbone": "efficientnet_lite0"}) == "cpu"


def test_metrics_flatten_nested_baselines(tmp_path: Path):
    path = _run(tmp_path, "a", NESTED, {"R@1": 0.7, "MAP@R": 0.3, "NMI": None,
                                        "untrained": {"R@1": 0.2}, "best": {"epoch": 3},
                                        "epochs": 60, "note": "text"})
    metrics = load_metrics(path)
    assert metrics["R@1"] == 0.7 and metrics["untrained/R@1"] == 0.2
    # written before the split was recorded: a test run, its "best" was test-selected
    assert metrics["best_test_selected/epoch"] == 3 and np.isnan(metrics["NMI"])
    assert "best/epoch" not in metrics and "note" not in metrics


def test_metrics_keep_a_validation_runs_best_and_name_a_test_runs_best(tmp_path: Path):
    val = _run(tmp_path, "v", NESTED, {"R@1": 0.7, "split": "validation",
                                       "best": {"epoch": 2, "MAP@R": 0.4}})
    test = _run(tmp_path, "t", NESTED, {"R@1": 0.7, "split": "test",
                                        "best_test_selected": {"epoch": 5, "R@1": 0.8}})
    assert load_metrics(val)["best/MAP@R"] == 0.4
    assert load_metrics(test)["best_test_selected/epoch"] == 5
    table = collect_runs(tmp_path).set_index("run_name")
    assert table.loc["v", "split"] == "validation" and table.loc["t", "split"] == "test"


def test_collect_runs_lists_only_finished_runs(tmp_path: Path):
    _run(tmp_path, "done", NESTED, {"R@1": 0.7, "epochs": 60})
    _run(tmp_path, "running", NESTED, None)
    assert [p.name for p in finished_run_dirs(tmp_path)] == ["done"]
    table = collect_runs(tmp_path)
    assert list(table["run_name"]) == ["done"]
    row = table.iloc[0]
    assert row["recipe"] == "full" and row["so_lambda"] == 0.1 and row["R@1"] == 0.7
    assert row["epochs"] == 60 and row["metrics/epochs"] == 60
    assert collect_runs(tmp_path / "empty").empty


def test_load_run_reads_arrays_and_history(tmp_path: Path):
    path = _run(tmp_path, "r", NESTED, {"R@1": 0.5})
    np.save(path / "proxies.npy", np.eye(3, 4))
    np.save(path / "proxies_init.npy", np.ones((3, 4)))
    np.savez(path / "test_embeddings.npz", embeddings=np.zeros((5, 4)), labels=np.arange(5),
             class_names=np.array(list("abcde")))
    (path / "history.json").write_text(json.dumps([{"epoch": 0, "orth_effective_rank": 1.0}]))
    run = load_run(tmp_path, "r")
    assert run.proxies.shape == (3, 4) and run.proxies_init.sum() == 12
    assert run.embeddings.shape == (5, 4) and list(run.labels) == [0, 1, 2, 3, 4]
    assert list(run.history.columns) == ["epoch", "orth_effective_rank"]
    with pytest.raises(FileNotFoundError, match="not finished"):
        load_run(tmp_path, "missing")


def test_history_is_the_trainers_history_json(tmp_path: Path):
    from dml_study.study.analysis.collect import load_history
    from dml_study.training.history import History
    from dml_study.training.run_dir import RunDirectory

    run = RunDirectory(tmp_path / "r")
    run.path.mkdir()
    (run.path / "history.csv").write_text("epoch,loss\n1,0.5\n")  # a copy for people only
    assert load_history(run.path).empty
    History([{"epoch": 1, "loss": 0.5, "R@1": 0.7}]).save(run)
    assert load_history(run.path).to_dict("records") == [{"epoch": 1, "loss": 0.5, "R@1": 0.7}]
