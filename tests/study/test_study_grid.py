"""Grid expansion: stable run names, shared cells train once, finished runs are reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from study_helpers import needs_splits, write_fake_chosen, write_study

from dml_study.config import run_identity
from dml_study.study.plan.config import load_study_config
from dml_study.study.plan.grid import (
    expand_grid,
    experiment_config,
    headline_runs,
    is_finished,
    make_run_name,
    resolved_config,
    unique_runs,
)

PARAMS = {"dataset": "icons", "loss": "proxy_anchor", "so_lambda": 0.1, "embedding_dim": 128,
          "epochs": 4, "seed": 0}


def test_run_name_is_stable_and_independent_of_key_order():
    reordered = dict(reversed(list(PARAMS.items())))
    assert make_run_name(PARAMS) == make_run_name(reordered)


def test_resolved_names_fill_in_the_preset():
    preset = resolved_config({"dataset": "icons"})
    explicit = {**PARAMS, "epochs": preset["schedule.epochs"], "lr": preset["optim.lr"]}
    implicit = {**PARAMS, "epochs": None, "lr": None}
    assert make_run_name(explicit) == make_run_name(implicit)
    # Any setting of the resolved config counts, also ones the study file does not name.
    tweaked = {**implicit, "overrides": {"optim.proxy_lr_mult": 7.0}}
    assert make_run_name(tweaked) != make_run_name(implicit)
    assert make_run_name({**implicit, "epochs": preset["schedule.epochs"] + 1}) != \
        make_run_name(implicit)


def test_run_name_changes_with_any_identity_parameter():
    names = {make_run_name({**PARAMS, key: value}) for key, value in
             [("so_lambda", 0.2), ("epochs", 5), ("seed", 1), ("so_gram", "dims"),
              ("embedding_dim", 64), ("lr", 0.01)]}
    assert len(names) == 6 and make_run_name(PARAMS) not in names


def test_run_name_ignores_device_workers_verbosity_and_data_location():
    other = {**PARAMS, "device": "cuda", "num_workers": 8, "quiet": False, "data_root": "/d"}
    assert make_run_name(other) == make_run_name(PARAMS)
    assert "run.device" not in run_identity(experiment_config(other))


def test_integer_and_float_lambda_name_the_same_run():
    assert make_run_name({**PARAMS, "so_lambda": 0}) == make_run_name({**PARAMS, "so_lambda": 0.0})


@needs_splits
def test_embedded_grid_shares_cells_and_fits_the_budget(repo_root: Path, tmp_path: Path):
    config = load_study_config(repo_root / "studies" / "embedded.yaml",
                               results_dir=str(tmp_path / "results"))
    write_fake_chosen(config)  # the tuned cells read results/embedded/tuning/ (make tune)
    write_fake_chosen(config, budget_check=True)
    specs = expand_grid(config)
    runs = unique_runs(specs)
    # budget: fine-tuned runs (~1 min each) are few; frozen runs (seconds each) are many
    preset = unique_runs(s for s in specs if s.protocol == "preset")
    assert len([r for r in preset if r.tier == "fine-tuned"]) <= 10
    # tuned: frozen tier only on this machine (the fine-tuned searches are in paper.yaml)
    assert not [r for r in runs if r.tier == "fine-tuned" and r.protocol == "tuned"]
    assert len([r for r in runs if r.tier == "frozen" and r.protocol == "tuned"]) >= 100
    assert len(runs) < len(specs)
    by_cell = {(s.group, s.dataset, s.variant, s.seed): s.run_name for s in specs
               if s.protocol == "preset"}
    # lambda = 0 of the sweep is the no-SO arm at the same seed; lambda = 0.1 is the SO arm.
    for dataset in ("icons", "glyphs"):
        for seed in (0, 1, 2):
            assert (by_cell[("frozen_lambda", dataset, "so_lambda=0", seed)]
                    == by_cell[("frozen_so", dataset, "no_so", seed)])
            assert (by_cell[("frozen_lambda", dataset, "so_lambda=0.1", seed)]
                    == by_cell[("frozen_so", dataset, "so", seed)])
    headline = [s for s in specs if s.group == "so_vs_none" and s.protocol == "preset"]
    assert sorted({s.seed for s in headline}) == [0, 1, 2, 3, 4]
    assert len({s.run_name for s in headline}) == 10


def test_spec_params_layer_train_base_variant_and_seed(tmp_path: Path):
    groups = [{"name": "g", "seeds": [3, 4], "base": {"so_lambda": 0.5, "epochs": 7},
               "variants": {"a": {}, "b": {"epochs": 9}}}]
    config = load_study_config(write_study(
        tmp_path, groups=groups, headline={"group": "g", "baseline": "a", "treatment": "b"}))
    specs = {(s.variant, s.seed): s for s in expand_grid(config)}
    assert len(specs) == 4
    assert specs[("a", 3)].params == {"dataset": "cub200", "epochs": 7, "quiet": True,
                                      "so_lambda": 0.5, "seed": 3}
    assert specs[("b", 4)].params["epochs"] == 9
    parameters = specs[("b", 4)].notebook_parameters(tmp_path / "results")
    assert parameters["run_name"] == specs[("b", 4)].run_name
    assert parameters["results_dir"] == str(tmp_path / "results")


def test_sweep_variants_are_named_after_values(tmp_path: Path):
    groups = [{"name": "lam", "sweep": {"so_lambda": [0.0, 0.001, 1.0]}}]
    config = load_study_config(write_study(
        tmp_path, groups=groups,
        headline={"group": "lam", "baseline": "so_lambda=0", "treatment": "so_lambda=1"}))
    assert [s.variant for s in expand_grid(config)] == [
        "so_lambda=0", "so_lambda=0.001", "so_lambda=1"]


def test_headline_runs_and_finished_marker(tmp_path: Path):
    config = load_study_config(write_study(tmp_path))
    baseline, treatment = headline_runs(config)
    assert (baseline.variant, treatment.variant) == ("no_so", "so")
    assert not is_finished(config.results_dir, baseline.run_name)
    run = config.runs_dir / baseline.run_name
    run.mkdir(parents=True)
    assert not is_finished(config.results_dir, baseline.run_name)  # a started run is not done
    (run / "metrics.json").write_text(json.dumps({"R@1": 0.5}))
    assert is_finished(config.results_dir, baseline.run_name)
    with pytest.raises(ValueError, match="seeds: \\[0\\]"):
        headline_runs(config, seed=5)


def test_the_train_notebook_declares_exactly_the_train_parameters(repo_root: Path):
    import nbformat

    from dml_study.config import TRAIN_PARAMETERS
    from dml_study.notebook_params import assigned_names

    book = nbformat.read(repo_root / "notebooks" / "02_train.ipynb", as_version=4)
    cell = next(c for c in book.cells if "parameters" in c.metadata.get("tags", []))
    assert tuple(assigned_names(cell.source)) == TRAIN_PARAMETERS
    # ... and builds its config with the study's function
    assert any("config_from_parameters(" in c.source for c in book.cells)


def test_study_config_is_the_notebook_config():
    from dml_study.config import ConfigError, config_from_parameters

    params = {**PARAMS, "overrides": {"optim.head_lr_mult": 2.0}}
    config = experiment_config(params)
    assert config == config_from_parameters(params)
    assert config.optim.head_lr_mult == 2.0
    assert config.run.run_name == config.default_run_name()  # as 02_train names a lone run
    with pytest.raises(ConfigError, match=r"unknown training parameter.*'so_lamda'"):
        experiment_config({"dataset": "icons", "so_lamda": 0.1})


def test_run_names_use_the_loss_classes_short_names():
    from dml_study.losses import LOSSES

    for name, cls in LOSSES.items():
        run = make_run_name({**PARAMS, "loss": name})
        assert run.split("-")[1] == cls.short_name
    assert "-ada-" in make_run_name({**PARAMS, "loss": "adaptive_margin"})


def test_run_name_hashes_are_pinned():
    # Fixed by the run directories already trained: a change here renames (retrains) them.
    # (Last changed by the config key eval.train_class_recall: a new key is a new identity.)
    assert make_run_name(PARAMS) == "icons-pa-so0.1-d128-s0-b4707910"
    adaptive = {**PARAMS, "loss": "adaptive_margin", "dataset": "glyphs",
                "proxy_init": "orthogonal"}
    assert make_run_name(adaptive) == "glyphs-ada-so0.1-orthogonal-d128-s0-25cc9085"


def test_one_list_of_result_neutral_keys():
    from dml_study.config import (
        IDENTITY_NEUTRAL_KEYS,
        RESULT_NEUTRAL_KEYS,
        RESUME_MUTABLE_KEYS,
        dotted_keys,
    )
    from dml_study.training import engine

    assert engine.RESUME_MUTABLE_KEYS is RESUME_MUTABLE_KEYS
    assert RESULT_NEUTRAL_KEYS == IDENTITY_NEUTRAL_KEYS & RESUME_MUTABLE_KEYS
    assert IDENTITY_NEUTRAL_KEYS | RESUME_MUTABLE_KEYS <= set(dotted_keys())
    # where a run lives and what it is called never change on resume
    assert not {"data.data_root", "run.run_name"} & RESUME_MUTABLE_KEYS
    assert {"run.run_name", "run.results_dir", "run.device", "data.num_workers", "run.quiet",
            "data.data_root"} <= IDENTITY_NEUTRAL_KEYS
    # a parameter outside the identity does not rename the run; one inside does
    assert make_run_name({**PARAMS, "device": "cuda", "num_workers": 8}) == make_run_name(PARAMS)
    assert make_run_name({**PARAMS, "overrides": {"run.compile": True}}) != make_run_name(PARAMS)
