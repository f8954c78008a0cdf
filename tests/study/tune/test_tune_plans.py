"""The study file's tuning section and the searches it plans."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from study_helpers import write_fake_chosen
from tune_helpers import tiny_tuning_study

from dml_study.study.plan.config import StudyConfigError, load_study_config, study_config_from_dict
from dml_study.study.plan.grid import expand_grid
from dml_study.study.plan.smoke import SMOKE_TUNING_TRIALS, smoke_study_dict
from dml_study.study.tune import plan_searches

REPO = Path(__file__).resolve().parents[3]


def _raw(tmp_path: Path, **kw) -> dict:
    return yaml.safe_load(tiny_tuning_study(tmp_path, **kw).read_text())


def _load(raw: dict):
    return study_config_from_dict(raw)


def test_both_study_files_load_with_equal_budgets_and_a_plan_per_dataset_and_arm():
    embedded = load_study_config(REPO / "studies" / "embedded.yaml")
    plans = plan_searches(embedded)
    frozen = [p for p in plans if p.tier == "frozen"]
    assert {p.budget for p in frozen} == {24} and len(frozen) == 10  # 5 arms x 2 datasets
    # compute scope: no fine-tuned searches on embedded (paper.yaml keeps them)
    assert [p for p in plans if p.tier == "fine-tuned"] == []
    checks = plan_searches(embedded, budget_check=True)
    assert {(p.dataset, p.arm, p.budget) for p in checks} == {
        (d, f"frozen_so/{v}", 48) for d in ("icons", "glyphs") for v in ("no_so", "so")}
    assert all(p.directory.parts[-3] == "tuning-2x" for p in checks)
    assert {p.dataset for p in frozen} == {"icons", "glyphs"}
    assert all(p.epochs == 15 for p in frozen)
    paper = load_study_config(REPO / "studies" / "paper.yaml")
    plans = plan_searches(paper)
    assert {p.budget for p in plans} == {50}
    assert {tuple(p.validation.fold_ids) for p in plans} == {(0, 1, 2, 3)}
    assert {p.dataset for p in plans} == {"cub200", "cars196", "sop", "inshop"}


def test_a_plan_trains_the_grids_cell_with_the_arms_fixed_parameters(tmp_path):
    config = load_study_config(REPO / "studies" / "embedded.yaml",
                               results_dir=str(tmp_path / "results"))
    write_fake_chosen(config)
    write_fake_chosen(config, budget_check=True)
    cells = {(s.group, s.variant, s.dataset): s for s in expand_grid(config)
             if s.seed == 0 and s.protocol == "preset"}
    for plan in plan_searches(config):
        assert (plan.group, plan.variant, plan.dataset) in cells, plan.label
        cell = dict(cells[(plan.group, plan.variant, plan.dataset)].params)
        cell.pop("seed")
        if not plan.fixed:
            assert plan.base == cell, plan.label
    constant = plan_searches(config, arms=["frozen_margin/constant"], datasets=["glyphs"])[0]
    assert constant.base["overrides"]["loss.params"] == {"mapping": "constant", "m_min": 0.0}
    assert constant.base["embedding_dim"] == 128 and constant.base["loss"] == "adaptive_margin"


def test_filters_and_trials_override(tmp_path):
    config = _load(_raw(tmp_path))
    plans = plan_searches(config, arms=["frozen_so/so"], trials=7)
    assert [(p.arm, p.budget) for p in plans] == [("frozen_so/so", 7)]
    assert plans[0].directory == config.results_dir / "tiny" / "tuning" / "icons" / \
        "frozen_so.so"
    with pytest.raises(StudyConfigError, match=r"'frozen_so/sos'.*did you mean 'frozen_so/so'"):
        plan_searches(config, arms=["frozen_so/sos"])
    with pytest.raises(StudyConfigError, match=r"no arm is tuned on 'glyphs'"):
        plan_searches(config, datasets=["glyphs"])


def test_equal_budgets_per_claim_error_names_the_claim_and_the_arms(tmp_path):
    raw = _raw(tmp_path)
    raw["tuning"]["arms"][1]["trials"] = 12
    with pytest.raises(StudyConfigError, match=r"claim 'so_r1' compares frozen_so/no_so \(4 "
                       r"trials on icons\), frozen_so/so \(12 trials on icons\)"):
        _load(raw)
    raw = _raw(tmp_path)
    del raw["tuning"]["arms"][1]
    with pytest.raises(StudyConfigError, match=r"claim 'so_r1' compares .*frozen_so/so "
                                               r"\(not tuned\)"):
        _load(raw)
    raw = _raw(tmp_path)
    raw["tuning"]["arms"][1]["trials"] = 4  # explicitly equal: fine
    _load(raw)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t["arms"][0].update(group="frozen_s"),
     r"'frozen_s' is not a group.*did you mean 'frozen_so'"),
    (lambda t: t["arms"][0].update(variant="noso"),
     r"'noso' is not a variant.*did you mean 'no_so'"),
    (lambda t: t["arms"][0]["space"].pop("head_lr_mult"),
     r"every arm searches lr, proxy_lr_mult and head_lr_mult.*missing head_lr_mult"),
    (lambda t: t["arms"][0]["space"].update(epochs={"low": 1, "high": 9, "int": True}),
     r"'epochs' \(schedule.epochs\) is not searched"),
    (lambda t: t["arms"][0].update(fixed={"optim.lr": 1e-3}),
     r"'lr' and 'optim.lr' are the same key"),
    (lambda t: t.update(sampeler={}), r"unknown key\(s\) 'sampeler'.*did you mean 'sampler'"),
    (lambda t: t["sampler"].update(name="cmaes"), r"sampler.name.*valid: tpe, random"),
    (lambda t: t["validation"].update(fold_ids=[4]), r"fold_ids: \[4\] outside 0..3"),
    (lambda t: t.update(trials={"frozn": 3}), r"did you mean 'frozen'"),
    (lambda t: t.update(objective="MAPR"), r"objective.*did you mean 'MAP@R'"),
    (lambda t: t["arms"].append(copy.deepcopy(t["arms"][0])), r"listed twice"),
])
def test_bad_tuning_sections_are_refused_with_the_key_path(tmp_path, edit, message):
    raw = _raw(tmp_path)
    edit(raw["tuning"])
    with pytest.raises(StudyConfigError, match=message):
        _load(raw)


def test_smoke_study_keeps_arms_and_spaces_and_shrinks_the_budget(tmp_path):
    raw = yaml.safe_load((REPO / "studies" / "paper.yaml").read_text())
    out = smoke_study_dict(raw, tmp_path, REPO)
    tuning = out["tuning"]
    assert tuning["trials"] == {"frozen": SMOKE_TUNING_TRIALS, "fine-tuned": SMOKE_TUNING_TRIALS}
    assert tuning["validation"]["fold_ids"] == [0] and tuning["pruner"] == {"name": "none"}
    assert [a["space"] for a in tuning["arms"]] == [a["space"] for a in raw["tuning"]["arms"]]
    assert raw["tuning"]["trials"]["fine-tuned"] == 50  # the original is untouched
    out.pop("root")
    plans = plan_searches(study_config_from_dict(out, root=REPO))
    assert {p.budget for p in plans} == {SMOKE_TUNING_TRIALS}
    assert all(p.base["image_size"] == 32 for p in plans)  # the tiny recipe
