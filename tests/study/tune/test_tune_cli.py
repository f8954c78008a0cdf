"""``python -m dml_study.study tune`` on a tiny frozen study with generated features.

Real frozen-tier training (``train_frozen`` through the batch seam, run directories, per-epoch
reports, median pruning); only contract A's steps are stood in (``tune_helpers``).
"""

from __future__ import annotations

import importlib.util
import json
import time

import optuna
import pytest
from optuna.trial import TrialState
from tune_helpers import standin_trainer_factory, tiny_tuning_study

from dml_study.study.__main__ import main as study_main
from dml_study.study.plan.config import load_study_config
from dml_study.study.tune import plan_searches
from dml_study.study.tune.cli import cli
from dml_study.study.tune.storage import open_storage
from dml_study.training.run_dir import RunDirectory

HAS_SPLITS = importlib.util.find_spec("dml_study.data.splits") is not None


def _tune(study, *args):
    return cli(["--config", str(study), "--quiet", *args], make_trainer=standin_trainer_factory)


def test_tune_a_tiny_frozen_study_then_resume_and_extend(tmp_path, capsys):
    study = tiny_tuning_study(tmp_path, trials=4, pruner="median", batch=2)
    began = time.perf_counter()
    assert _tune(study) == 0
    seconds = time.perf_counter() - began
    out = capsys.readouterr().out
    assert "frozen_so/no_so" in out and "4/4" in out and "tuning results:" in out
    config = load_study_config(study)
    for plan in plan_searches(config):
        files = {p.name for p in plan.directory.iterdir()}
        assert {"journal.log", "space.json", "trials.csv", "chosen.json",
                "validation_classes.json"} <= files
        chosen = json.loads((plan.directory / "chosen.json").read_text())
        assert chosen["complete"] and chosen["n_trials"] == 4 and 1 <= chosen["epochs"] <= 4
        assert set(chosen["params"]) >= {"lr", "proxy_lr_mult", "head_lr_mult"}
        trials = optuna.load_study(study_name=plan.study_name,
                                   storage=open_storage(plan.journal)).get_trials()
        best = trials[chosen["trial"]]
        run = RunDirectory.for_run(config.results_dir, best.user_attrs["run_names"][0])
        history = json.loads(run.history_json.read_text())
        assert max(r["MAP@R"] for r in history[1:]) == pytest.approx(chosen["value"])
        assert json.loads(run.metrics.read_text())["tier"] == "frozen"
    summary = json.loads((config.results_dir / "tiny" / "tuning" / "summary.json").read_text())
    assert [s["n_trials"] for s in summary["searches"]] == [4, 4]
    assert seconds < 60, f"tiny tuning took {seconds:.0f} s"
    # a re-run trains nothing; --trials 6 continues both searches to 6
    journals = {p.study_name: p.journal.read_bytes() for p in plan_searches(config)}
    assert _tune(study) == 0
    assert {p.study_name: p.journal.read_bytes() for p in plan_searches(config)} == journals
    assert _tune(study, "--trials", "6", "--arms", "frozen_so/no_so") == 0
    plan = plan_searches(config, arms=["frozen_so/no_so"])[0]
    states = [t.state for t in optuna.load_study(
        study_name=plan.study_name, storage=open_storage(plan.journal)).get_trials()]
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == 6
    capsys.readouterr()
    assert _tune(study, "--status", "--trials", "6") == 0
    status = capsys.readouterr().out
    assert "icons frozen_so/no_so" in status and "6/6 counted" in status and "4/6 counted" in status


def test_bad_options_and_study_files_are_one_line_errors(tmp_path, capsys):
    study = tiny_tuning_study(tmp_path)
    assert _tune(study, "--arms", "frozen_so/sos") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'frozen_so/so'" in err
    text = study.read_text().replace("startup_trials: 2", "startup_trials: -1")
    study.write_text(text)
    assert _tune(study) == 2
    assert "sampler.startup_trials: must be >= 0" in capsys.readouterr().err


def test_the_study_command_dispatches_tune(tmp_path, capsys):
    study = tiny_tuning_study(tmp_path)
    assert study_main(["tune", "--config", str(study), "--status"]) == 0
    assert "not started (budget 4)" in capsys.readouterr().out


@pytest.mark.skipif(HAS_SPLITS, reason="contract A (dml_study.data.splits) is present")
def test_without_the_validation_split_tuning_refuses_in_one_line(tmp_path, capsys):
    study = tiny_tuning_study(tmp_path)
    assert cli(["--config", str(study), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: tuning needs the class-disjoint validation split")
    assert not list((tmp_path / "results").rglob("journal.log"))  # nothing was started
