"""The budget check: the committed search continued to k x its trials, elsewhere."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from tune_helpers import FakeTrainer, tiny_tuning_study

from dml_study.study.analysis.tuning import budget_check_table, searches_table, trials_frame
from dml_study.study.plan.config import StudyConfigError, load_study_config
from dml_study.study.tune import plan_searches
from dml_study.study.tune.budget_check import BudgetCheckNotReadyError, continue_from_committed
from dml_study.study.tune.cli import main
from dml_study.study.tune.search import Search
from dml_study.study.tune.storage import SLOT_ATTR, open_storage


def _config(root: Path, trials: int = 4, check: bool = True):
    path = tiny_tuning_study(root, trials=trials)
    raw = yaml.safe_load(path.read_text())
    if check:
        raw["tuning"]["budget_check"] = {"arms": ["frozen_so/no_so", "frozen_so/so"]}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_study_config(path)


def _by_slot(plan) -> dict[int, dict]:
    study = optuna.load_study(study_name=plan.study_name, storage=open_storage(plan.journal))
    return {t.user_attrs[SLOT_ATTR]: dict(t.params) for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}


def test_the_larger_search_continues_the_committed_one_and_leaves_it_as_it_is(tmp_path):
    config = _config(tmp_path)
    (committed,) = plan_searches(config, arms=["frozen_so/no_so"])
    Search(committed, FakeTrainer()).run()
    chosen_before = (committed.directory / "chosen.json").read_bytes()
    (larger,) = plan_searches(config, arms=["frozen_so/no_so"], budget_check=True)
    assert larger.budget == 8 and larger.directory.parts[-3] == "tuning-2x"
    assert continue_from_committed(config, larger) == larger.journal
    trainer = FakeTrainer()
    outcome = Search(larger, trainer).run()
    assert outcome.counted == 8 and len(trainer.trained) == 4  # only the 4 new trials
    assert (committed.directory / "chosen.json").read_bytes() == chosen_before
    # exactly the search a fresh 8-trial run would have made
    fresh = dataclasses.replace(larger, directory=tmp_path / "fresh")
    Search(fresh, FakeTrainer()).run()
    assert _by_slot(larger) == _by_slot(fresh)
    assert {k: v for k, v in _by_slot(larger).items() if k < 4} == _by_slot(committed)
    # a second call does not copy again (the larger search resumes from its own journal)
    assert continue_from_committed(config, larger) is None
    table = budget_check_table(config)
    row = table[(table["arm"] == "frozen_so/no_so")].iloc[0]
    assert (row["trials"], row["trials (2x)"]) == (4, 8)
    chosen_2x = json.loads((larger.directory / "chosen.json").read_text())
    assert row["moved"] == (chosen_2x["trial"] != json.loads(chosen_before)["trial"])
    assert table[table["arm"] == "frozen_so/so"]["trials (2x)"].isna().all()  # not run yet
    searches = searches_table(config, "tuning-2x")
    assert list(searches["trials"]) == [8] and bool(searches["complete"].iloc[0])


def test_a_budget_check_needs_the_committed_search_complete(tmp_path):
    config = _config(tmp_path)
    (larger,) = plan_searches(config, arms=["frozen_so/so"], budget_check=True)
    with pytest.raises(BudgetCheckNotReadyError, match=r"is not complete; run `python -m"):
        continue_from_committed(config, larger)


def test_the_command_runs_the_check_and_says_so_without_a_section(tmp_path, capsys):
    config = _config(tmp_path)
    factory = lambda c, p, launcher: FakeTrainer()  # noqa: E731
    assert main(["--config", str(config.source), "--quiet"], make_trainer=factory) == 0
    assert main(["--config", str(config.source), "--quiet", "--budget-check"],
                make_trainer=factory) == 0
    out = capsys.readouterr().out
    assert "tuning-2x" in out
    summary = json.loads((config.results_dir / "tiny" / "tuning-2x" / "summary.json").read_text())
    assert {s["n_trials"] for s in summary["searches"]} == {8}
    trials = trials_frame(config, "tuning-2x")
    assert len(trials) == 16 and set(trials["arm"]) == {"frozen_so/no_so", "frozen_so/so"}
    plain = _config(tmp_path / "plain", check=False)
    assert main(["--config", str(plain.source), "--budget-check"], make_trainer=factory) == 0
    assert "no tuning.budget_check section; nothing to do" in capsys.readouterr().out
    with pytest.raises(StudyConfigError, match=r"no 'tuning\.budget_check' section"):
        plan_searches(plain, budget_check=True)
