"""The budgeted search loop on a fake trainer: determinism, resume, failures, pruning, folds."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tune_helpers import FakeTrainer, fake_value, tiny_tuning_study

from dml_study.study.plan.config import ValidationConfig, load_study_config
from dml_study.study.tune import plan_searches
from dml_study.study.tune.objective import score
from dml_study.study.tune.search import MAX_CONSECUTIVE_FAILURES, Search, SearchFailedError
from dml_study.study.tune.storage import SLOT_ATTR, WORKER_ATTR, open_storage


def _plan(root: Path, *, trials: int = 8, arm: str = "frozen_so/no_so", **kw):
    config = load_study_config(tiny_tuning_study(root, trials=trials, **kw))
    return plan_searches(config, arms=[arm])[0]


def _trials(plan):
    study = optuna.load_study(study_name=plan.study_name, storage=open_storage(plan.journal))
    return study.get_trials(deepcopy=False)


def _counted_by_slot(plan) -> dict[int, dict]:
    out = {}
    for t in _trials(plan):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            slot = t.user_attrs[SLOT_ATTR]
            assert slot not in out, f"slot {slot} counted twice"
            out[slot] = dict(t.params)
    return out


def _run(plan, trainer=None, batch=1):
    return Search(plan, trainer or FakeTrainer(), batch=batch).run()


def test_same_seed_same_parameter_sequence_other_seed_another(tmp_path):
    plans = [_plan(tmp_path / name) for name in ("a", "b")]
    for plan in plans:
        outcome = _run(plan)
        assert outcome.counted == 8 and outcome.failed == 0
    first, second = (_counted_by_slot(p) for p in plans)
    assert first == second and len(first) == 8
    assert len({round(v["lr"], 12) for v in first.values()}) == 8  # 8 distinct trials
    other = dataclasses.replace(_plan(tmp_path / "c"), sampler=dataclasses.replace(
        plans[0].sampler, seed=1))
    _run(other)
    assert _counted_by_slot(other) != first


def test_tpe_models_the_results_after_the_random_start(tmp_path):
    plan = _plan(tmp_path, trials=16)  # startup_trials: 2
    _run(plan)
    values = [t.value for t in sorted(_trials(plan), key=lambda t: t.number)]
    assert sum(values[8:]) / 8 > sum(values[:8]) / 8  # later trials are better on average


@pytest.mark.parametrize(("batch", "crash_after"), [(1, 3), (3, 4), (3, 6)])
def test_an_interrupted_search_resumes_to_the_same_trials_without_duplicates(
        tmp_path, batch, crash_after):
    reference = _plan(tmp_path / "ref")
    _run(reference, batch=batch)
    plan = _plan(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        _run(plan, FakeTrainer(crash_after=crash_after), batch=batch)
    interrupted = [t for t in _trials(plan) if t.state == TrialState.FAIL]
    waiting = [t for t in _trials(plan) if t.state == TrialState.WAITING]
    assert interrupted and len(waiting) == len(interrupted)
    assert all(t.user_attrs["interrupted"] for t in interrupted)
    outcome = _run(plan, batch=batch)
    assert outcome.counted == 8
    assert _counted_by_slot(plan) == _counted_by_slot(reference)  # same trials, by slot
    retries = [t for t in _trials(plan) if "retry_of" in t.user_attrs]
    assert sorted(t.user_attrs["retry_of"] for t in retries) == [t.number for t in interrupted]
    assert all(t.state == TrialState.COMPLETE for t in retries)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_running_trial_of_a_dead_worker_is_failed_and_retried_with_its_params(tmp_path):
    plan = _plan(tmp_path, trials=3)
    storage = open_storage(plan.journal)
    study = optuna.create_study(study_name=plan.study_name, storage=storage,
                                direction="maximize")
    orphan = study.ask()
    orphan.suggest_float("lr", 1e-3, 1e-1, log=True)
    orphan.set_user_attr(WORKER_ATTR, {"host": __import__("socket").gethostname(),
                                       "pid": _dead_pid(), "started": 1.0})
    orphan.set_user_attr(SLOT_ATTR, 0)
    lost_lr = orphan.params["lr"]
    outcome = _run(plan)
    assert outcome.counted == 3 and outcome.failed == 1
    trials = _trials(plan)
    assert trials[0].state == TrialState.FAIL
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 0)
    assert retry.params["lr"] == lost_lr and retry.user_attrs[SLOT_ATTR] == 0


def test_a_running_trial_of_a_live_worker_is_left_alone(tmp_path):
    plan = _plan(tmp_path, trials=1)
    storage = open_storage(plan.journal)
    study = optuna.create_study(study_name=plan.study_name, storage=storage,
                                direction="maximize")
    live = study.ask()
    live.set_user_attr(WORKER_ATTR, {"host": __import__("socket").gethostname(),
                                     "pid": __import__("os").getpid(), "started": None})
    live.set_user_attr(SLOT_ATTR, 0)
    search = Search(plan, FakeTrainer(), poll_seconds=0.01)
    assert search._ask(search_worker := {"host": "x", "pid": 1}) == []  # all slots in flight
    assert search_worker and _trials(plan)[0].state == TrialState.RUNNING


def test_failed_runs_free_their_slot_for_new_parameters_and_repeated_failures_stop(tmp_path):
    plan = _plan(tmp_path, trials=4)
    outcome = _run(plan, FakeTrainer(fail_trials=[1]))
    assert outcome.counted == 4 and outcome.failed == 1
    trials = _trials(plan)
    assert trials[1].state == TrialState.FAIL and "simulated failure" in trials[1].user_attrs[
        "error"]
    slot1 = [t for t in trials if t.user_attrs[SLOT_ATTR] == 1]
    assert len(slot1) == 2 and slot1[0].params != slot1[1].params  # attempt 1: new params
    plan = _plan(tmp_path / "b", trials=6)
    with pytest.raises(SearchFailedError, match=r"3 trials failed in a row.*resumes"):
        _run(plan, FakeTrainer(fail_trials=range(MAX_CONSECUTIVE_FAILURES)))


def test_a_diverged_trial_counts_with_value_zero(tmp_path):
    plan = _plan(tmp_path, trials=3)
    _run(plan, FakeTrainer(diverge_trials=[0]))
    trials = _trials(plan)
    assert trials[0].state == TrialState.COMPLETE and trials[0].value == 0.0
    assert "non-finite" in trials[0].user_attrs["diverged"]


def test_pruned_trials_count_toward_the_budget(tmp_path):
    plan = _plan(tmp_path, trials=10, pruner="median")
    outcome = _run(plan, FakeTrainer(epochs=6))
    assert outcome.counted == 10 and outcome.pruned >= 1
    pruned = [t for t in _trials(plan) if t.state == TrialState.PRUNED]
    assert all(t.user_attrs["pruned_epoch"] < 6 for t in pruned)
    assert all(len(t.intermediate_values) == t.user_attrs["pruned_epoch"] for t in pruned)


def test_the_objective_is_the_best_epoch_of_the_mean_over_folds(tmp_path):
    plan = _plan(tmp_path, trials=2, folds=(0, 2), epochs=5)
    trainer = FakeTrainer(epochs=plan.epochs)
    _run(plan, trainer)
    assert [r.fold for r in trainer.trained] == [0, 2, 0, 2]
    for trial in _trials(plan):
        runs = [r for r in trainer.trained if r.trial == trial.number]
        curves = [[fake_value(r.params, e, 5) for e in range(1, 6)] for r in runs]
        means = [sum(v) / 2 for v in zip(*curves, strict=True)]
        assert trial.value == pytest.approx(max(means))
        assert trial.user_attrs["best_epoch"] == means.index(max(means)) + 1
        assert set(trial.intermediate_values) == set(range(1, 11))  # fold i at i * 5 + epoch


def test_score_by_hand():
    fold0 = [{"epoch": 1, "MAP@R": 0.2, "R@1": 0.5}, {"epoch": 2, "MAP@R": 0.4, "R@1": 0.6},
             {"epoch": 3, "MAP@R": 0.4, "R@1": 0.9}]
    fold1 = [{"epoch": 1, "MAP@R": 0.3, "R@1": 0.4}, {"epoch": 2, "MAP@R": 0.2, "R@1": 0.5},
             {"epoch": 3, "MAP@R": 0.4, "R@1": 0.7}]
    best = score([fold0, fold1], "MAP@R")
    assert (best.epoch, best.value, best.r_at_1) == (3, pytest.approx(0.4), pytest.approx(0.8))
    tie = score([fold0], "MAP@R")
    assert tie.epoch == 2  # ties go to the earliest epoch
    assert score([fold0, fold1[:1]], "MAP@R").epoch == 1  # only epochs both folds evaluated
    assert score([[]], "MAP@R") is None
    assert ValidationConfig().fold_ids == (0,)


def test_two_workers_on_one_journal_spend_exactly_the_budget(tmp_path):
    plan = _plan(tmp_path, trials=9)
    searches = [Search(plan, FakeTrainer(), poll_seconds=0.01) for _ in range(2)]
    outcomes = [None, None]

    def work(i):
        outcomes[i] = searches[i].run()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(o is not None and o.counted == 9 for o in outcomes)
    assert sum(o.told_here for o in outcomes) == 9
    assert sorted(_counted_by_slot(plan)) == list(range(9))


def test_a_batch_interrupted_while_telling_is_finished_before_the_next_block(tmp_path,
                                                                             monkeypatch):
    reference = _plan(tmp_path / "ref")
    _run(reference, batch=3)
    plan = _plan(tmp_path / "run")
    told = []
    original = Search._tell

    def tell_then_die(self, trial, *args):
        if len(told) == 4:  # slot 3 of the second block told, slots 4 and 5 not
            raise KeyboardInterrupt("killed while telling")
        told.append(trial.number)
        return original(self, trial, *args)

    monkeypatch.setattr(Search, "_tell", tell_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(plan, batch=3)
    monkeypatch.setattr(Search, "_tell", original)
    assert len([t for t in _trials(plan) if t.state == TrialState.WAITING]) == 2
    _run(plan, batch=3)
    assert _counted_by_slot(plan) == _counted_by_slot(reference)
