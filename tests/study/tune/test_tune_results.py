"""The committed files of a search: chosen.json, trials.csv, space.json, validation classes."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from tune_helpers import FakeTrainer, tiny_tuning_study

from dml_study.study.plan.config import load_study_config
from dml_study.study.tune import plan_searches
from dml_study.study.tune.results import (
    SearchChangedError,
    ValidationLeakError,
    check_space,
    chosen_record,
    summary_record,
    trial_rows,
    validation_record,
)
from dml_study.study.tune.search import Search

DIST = {"lr": FloatDistribution(1e-3, 1e-1, log=True),
        "proxy_lr_mult": FloatDistribution(1.0, 100.0, log=True),
        "head_lr_mult": FloatDistribution(1.0, 10.0, log=True)}


def _plan(root: Path, arm: str = "frozen_so/no_so", **kw):
    config = load_study_config(tiny_tuning_study(root, **kw))
    return config, plan_searches(config, arms=[arm])[0]


def _trial(number, state, value, epoch, lr=1e-2, **attrs):
    trial = create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                         params={"lr": lr, "proxy_lr_mult": 10.0, "head_lr_mult": 2.0},
                         distributions=DIST,
                         user_attrs={"best_epoch": epoch, "R@1": 0.5, "slot": number, **attrs},
                         intermediate_values={1: value} if value is not None else None)
    trial.number = number
    return trial


def test_chosen_is_the_best_complete_trial_with_its_best_epoch(tmp_path):
    _, plan = _plan(tmp_path, trials=5)
    trials = [
        _trial(0, TrialState.COMPLETE, 0.30, 2),
        _trial(1, TrialState.PRUNED, 0.90, 1),  # pruned: never chosen, even if higher
        _trial(2, TrialState.COMPLETE, 0.45, 3, lr=2e-2),
        _trial(3, TrialState.COMPLETE, 0.45, 4),  # a tie: the earlier trial wins
        _trial(4, TrialState.FAIL, None, 0),
    ]
    chosen = chosen_record(plan, trials)
    assert (chosen["trial"], chosen["epochs"], chosen["value"]) == (2, 3, 0.45)
    assert chosen["params"] == {"lr": 2e-2, "proxy_lr_mult": 10.0, "head_lr_mult": 2.0}
    assert (chosen["n_trials"], chosen["budget"], chosen["complete"]) == (4, 5, False)
    assert chosen["metric"] == "MAP@R" and chosen["r_at_1"] == 0.5
    assert chosen["validation"] == {"folds": 4, "fold_ids": [0], "seed": 0}
    train = chosen["train_parameters"]
    assert (train["lr"], train["epochs"], train["overrides"]["proxy_lr_mult"]) == (2e-2, 3, 10.0)
    diverged = [_trial(0, TrialState.COMPLETE, 0.9, 2, diverged="nan")]
    assert chosen_record(plan, diverged) is None


def test_chosen_params_carry_the_arms_fixed_parameters(tmp_path):
    fixed_arm = {"group": "frozen_so", "variant": "so", "fixed": {"so_gram": "dims"},
                 "space": {"lr": {"low": 1e-3, "high": 1e-1, "log": True},
                           "proxy_lr_mult": {"low": 1.0, "high": 100.0, "log": True},
                           "head_lr_mult": {"low": 1.0, "high": 10.0, "log": True}}}
    root = tmp_path / "f"
    path = tiny_tuning_study(root)
    raw = yaml.safe_load(path.read_text())
    raw["tuning"]["arms"][1] = fixed_arm
    path.write_text(yaml.safe_dump(raw))
    plan = plan_searches(load_study_config(path), arms=["frozen_so/so"])[0]
    chosen = chosen_record(plan, [_trial(0, TrialState.COMPLETE, 0.3, 2)])
    assert chosen["params"] == {"so_gram": "dims", "lr": 1e-2, "proxy_lr_mult": 10.0,
                                "head_lr_mult": 2.0}
    assert chosen["train_parameters"]["so_gram"] == "dims"


def test_a_real_search_writes_every_file_and_the_summary(tmp_path):
    config, plan = _plan(tmp_path, trials=4)
    outcome = Search(plan, FakeTrainer()).run()
    files = sorted(p.name for p in plan.directory.iterdir() if p.is_file())
    # no lock or heartbeat left behind; no validation_classes.json: the fake runs have none
    assert files == ["chosen.json", "journal.log", "space.json", "trials.csv"]
    with (plan.directory / "trials.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["number"]) for r in rows] == [0, 1, 2, 3]
    assert set(rows[0]) >= {"number", "state", "value", "R@1", "best_epoch", "lr",
                            "proxy_lr_mult", "head_lr_mult", "run_name", "seconds"}
    chosen = json.loads((plan.directory / "chosen.json").read_text())
    best = max(rows, key=lambda r: float(r["value"]))
    assert chosen["trial"] == int(best["number"]) == outcome.best.number
    assert chosen["epochs"] == int(best["best_epoch"]) and chosen["complete"]
    summary = summary_record(config)
    assert summary["searches"][0]["n_trials"] == 4 and summary["searches"][0]["value"] == \
        pytest.approx(chosen["value"])


def test_a_search_resumed_with_another_space_is_refused(tmp_path):
    _, plan = _plan(tmp_path, trials=2)
    Search(plan, FakeTrainer()).run()
    changed = dataclasses.replace(plan, epochs=9)
    with pytest.raises(SearchChangedError, match=r"epochs changed .* move .* away"):
        check_space(changed, has_trials=True)
    more = dataclasses.replace(plan, budget=5)  # a larger budget continues the search
    check_space(more, has_trials=True)
    assert Search(more, FakeTrainer()).run().counted == 5


def _write_validation(run_dir: Path, train=(0, 2, 3, 5, 6, 7), validation=(1, 4), **over):
    """A run's ``validation_classes.json`` (contract A's format; class ids and names)."""
    record = {"split": "validation", "folds": 4, "fold": 0, "seed": 0,
              "train_classes": [f"class {c}" for c in train],
              "validation_classes": [f"class {c}" for c in validation],
              "train_labels": list(train), "validation_labels": list(validation), **over}
    run_dir.mkdir(parents=True)
    (run_dir / "validation_classes.json").write_text(json.dumps(record))
    return record


def test_validation_classes_are_copied_and_checked_against_the_training_split(tmp_path):
    import numpy as np

    from dml_study.data.splits import validation_split

    _, plan = _plan(tmp_path)
    training = np.arange(8)
    kept, held_out = validation_split(training, 4, 0, 0)
    runs = plan.results_dir / "runs"

    def check(name, ids=training, **record):
        trial = _trial(0, TrialState.COMPLETE, 0.3, 2, run_names=[name])
        written = _write_validation(runs / name, **{"train": tuple(kept.tolist()),
                                                    "validation": tuple(held_out.tolist()),
                                                    **record})
        return written, validation_record(plan, [trial], ids)

    written, record = check("ok")
    assert record == written
    # glyph names need not be unique: equal names of different classes are no leak
    written, record = check("same-names", train_classes=["x"] * 6, validation_classes=["x"] * 2)
    assert record == written
    assert check("lazy", ids=lambda: training)[1] is not None  # ids computed when needed
    assert check("unknown-ids", ids=None)[1] is not None  # the record alone is consistent
    with pytest.raises(ValidationLeakError, match=r"classes \[\d\] are both trained on"):
        check("overlap", train=(*kept.tolist(), int(held_out[0])))
    with pytest.raises(ValidationLeakError, match=r"class ids \[9\] are not classes of the "
                                                  r"training split"):
        check("test-class", validation=(int(held_out[0]), 9))  # e.g. a test class's id
    with pytest.raises(ValidationLeakError, match="not fold 0 of 4"):
        check("other-fold", train=tuple(held_out.tolist()) + tuple(kept[2:].tolist()),
              validation=tuple(kept[:2].tolist()))
    with pytest.raises(ValidationLeakError, match="split 'test'"):
        check("test-run", split="test")
    with pytest.raises(ValidationLeakError, match=r"folds/fold/seed .* differ"):
        check("seed", seed=3)
    with pytest.raises(ValidationLeakError, match="no list of class ids 'validation_labels'"):
        check("old-format", validation_labels=None)


def test_trials_csv_rows_name_interrupted_and_diverged_trials(tmp_path):
    _, plan = _plan(tmp_path)
    rows = trial_rows(plan, [
        _trial(0, TrialState.FAIL, None, 0, interrupted=True),
        _trial(1, TrialState.COMPLETE, 0.0, 1, diverged="FrozenTierError: non-finite loss",
               retry_of=0),
    ])
    assert rows[0]["note"] == "interrupted (re-enqueued)" and rows[0]["value"] == ""
    assert rows[1]["note"].startswith("diverged") and rows[1]["retry_of"] == 0
    assert optuna.__version__
