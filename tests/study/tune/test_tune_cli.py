"""``python -m dml_study.study tune`` on a tiny frozen study with generated features.

The package's own trainer end to end: the frozen tier's real version-2 feature cache (a
generated ``-train.npz``, ``tune_helpers.write_train_features``), ``extract_features`` cutting
it into each fold's classes, ``train_frozen`` through the batch seam under the test-split
guard, run directories, per-epoch reports, median pruning; and the command's one-line errors
from a real command line (a subprocess).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from tune_helpers import TRAIN_CLASSES, tiny_tuning_study, write_train_features

from dml_study.data.splits import validation_split
from dml_study.errors import EXIT_DAMAGED, EXIT_DATA, EXIT_DISK_FULL, EXIT_USAGE
from dml_study.study.__main__ import main as study_main
from dml_study.study.plan.config import load_study_config
from dml_study.study.tune import plan_searches
from dml_study.study.tune.cli import cli
from dml_study.study.tune.storage import open_storage
from dml_study.training.run_dir import RunDirectory

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty ``$DML_STUDY_CACHE`` (the feature files a test writes go there)."""
    root = tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("DML_STUDY_CACHE", str(root))
    return root


def _tune(study, *args):
    return cli(["--config", str(study), "--quiet", *args])


def test_tune_a_tiny_frozen_study_then_resume_and_extend(tmp_path, cache, capsys):
    study = tiny_tuning_study(tmp_path, trials=4, pruner="median", batch=2)
    [features] = write_train_features(study, cache)
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
        metrics = json.loads(run.metrics.read_text())
        assert metrics["tier"] == "frozen" and metrics["split"] == "validation"
        assert metrics["best"]["MAP@R"] == pytest.approx(chosen["value"])
        assert metrics["best"]["epoch"] == chosen["epochs"]
        # the run trained on the kept classes of fold 0 and evaluated the held-out ones
        kept, held_out = validation_split(np.arange(TRAIN_CLASSES), 4, 0, 0)
        assert metrics["num_classes"] == len(kept) == 12
        record = json.loads(run.validation_classes.read_text())
        assert record["validation_labels"] == held_out.tolist()
        assert record["train_labels"] == kept.tolist()
        assert json.loads((plan.directory / "validation_classes.json").read_text()) == record
        labels = np.load(run.validation_embeddings)["labels"]
        assert sorted(set(labels.tolist())) == list(range(len(held_out)))
    assert sorted(p.name for p in features.parent.iterdir()) == [features.name]  # no test file
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


# --------------------------------------------------------------------------- one-line errors


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_a_missing_dataset_is_one_line_before_any_trial(tmp_path, cache, capsys):
    study = tiny_tuning_study(tmp_path, dataset="cub200", data_root=str(tmp_path / "nowhere"))
    assert _tune(study) == EXIT_DATA
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: dataset cub200 not found")
    assert f"python -m dml_study.data download cub200 --root {tmp_path / 'nowhere'}" in line
    assert "data_root" in line and "no trial was started" in line
    assert not list(tmp_path.rglob("journal.log"))  # nothing was started


@pytest.mark.parametrize("target", ["journal.log", "metrics.json"])
def test_a_full_disk_is_one_line_and_the_rerun_completes(target, tmp_path, cache, capsys,
                                                        monkeypatch):
    study = tiny_tuning_study(tmp_path, trials=2, epochs=2)
    write_train_features(study, cache)
    monkeypatch.setenv("DML_STUDY_INJECT_ENOSPC", target)
    assert _tune(study) == EXIT_DISK_FULL
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: disk full writing ") and f"/{target}: needs ~" in line
    assert "free space and re-run the same command: every search resumes from its journal" \
        in line and "injected by $DML_STUDY_INJECT_ENOSPC" in line
    monkeypatch.delenv("DML_STUDY_INJECT_ENOSPC")
    assert _tune(study) == 0
    for plan in plan_searches(load_study_config(study)):
        trials = optuna.load_study(study_name=plan.study_name,
                                   storage=open_storage(plan.journal)).get_trials()
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 2
        assert not [t for t in trials if t.state == TrialState.RUNNING]


def test_a_damaged_journal_is_one_line(tmp_path, cache, capsys):
    study = tiny_tuning_study(tmp_path, trials=1, epochs=1)
    write_train_features(study, cache)
    assert _tune(study, "--arms", "frozen_so/no_so") == 0
    journal = plan_searches(load_study_config(study))[0].journal
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0] + b"garbage\n" + b"".join(lines[1:]))
    capsys.readouterr()
    assert _tune(study) == EXIT_DAMAGED
    line = _one_line(capsys.readouterr().err)
    assert f"tuning journal {journal} cannot be replayed" in line and "git checkout --" in line


@pytest.mark.slow
def test_the_one_line_errors_from_the_real_command_line(tmp_path):
    """Each fault through ``python -m dml_study.study tune`` in its own process: the line
    and the exit code of dml_study/errors.py."""
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), "DML_STUDY_CACHE": str(cache)}
    env.pop("DML_STUDY_INJECT_ENOSPC", None)

    def tune(study, **extra):
        proc = subprocess.run([sys.executable, "-m", "dml_study.study", "tune", "--config",
                               str(study), "--quiet"], cwd=REPO, env={**env, **extra},
                              capture_output=True, text=True, timeout=600, check=False)
        return proc.returncode, proc.stderr

    bad = tmp_path / "bad"
    study = tiny_tuning_study(bad)
    study.write_text(study.read_text().replace("name: tpe", "name: tpee"))
    code, err = tune(study)
    assert code == EXIT_USAGE and "did you mean 'tpe'" in _one_line(err)

    missing = tiny_tuning_study(tmp_path / "missing", dataset="cub200",
                                data_root=str(tmp_path / "nowhere"))
    code, err = tune(missing)
    assert code == EXIT_DATA and "dataset cub200 not found" in _one_line(err)

    study = tiny_tuning_study(tmp_path / "full", trials=1, epochs=1)
    write_train_features(study, cache)
    code, err = tune(study, DML_STUDY_INJECT_ENOSPC="journal.log")
    assert code == EXIT_DISK_FULL and "journal.log: needs ~" in _one_line(err)

    code, err = tune(study)
    assert code == 0, err[-2000:]
    # A journal started for another search: the study file's search changed since.
    original = study.read_text()
    assert original.count("    epochs: 1\n") == 1
    study.write_text(original.replace("    epochs: 1\n", "    epochs: 2\n"))
    code, err = tune(study)
    line = _one_line(err)
    assert code == EXIT_USAGE and "changed in the study file since its journal" in line
    assert "journal.log" in line and "move" in line and "away" in line
    study.write_text(original)
    journal = plan_searches(load_study_config(study))[0].journal
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0] + b"garbage\n" + b"".join(lines[1:]))
    code, err = tune(study)
    assert code == EXIT_DAMAGED and "cannot be replayed" in _one_line(err)
