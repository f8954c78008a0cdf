"""The tuned protocol in the grid: tuned cells from chosen.json, errors, lr grids, budget check."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from study_helpers import (
    HAS_SPLITS,
    TUNED_VARIANTS,
    load_raw_study,
    tuned_study_raw,
    write_fake_chosen,
)

from dml_study.config import config_from_parameters
from dml_study.errors import EXIT_USAGE
from dml_study.study.plan.config import StudyConfigError, load_study_config
from dml_study.study.plan.grid import (
    cell_parameters,
    expand_grid,
    frozen_tier_identity,
    headline_runs,
    lr_grid_cells,
    make_run_name,
    unique_runs,
    untuned_searches,
)
from dml_study.study.plan.smoke import smoke_study_dict
from dml_study.study.plan.tuned import (
    MissingTunedValuesError,
    StaleTunedValuesError,
    apply_values,
    final_split_parameters,
)

REPO = Path(__file__).resolve().parents[3]

def _values(plan):
    # distinct values per arm and dataset, so a mix-up between searches shows
    lr = {"icons": 2e-3, "glyphs": 3e-3}[plan.dataset] * (2 if plan.variant == "so" else 1)
    return {"lr": lr}


def test_tuned_cells_are_the_variant_with_the_chosen_values_epochs_and_the_test_split(tmp_path):
    config = load_raw_study(tuned_study_raw(tmp_path))
    write_fake_chosen(config, values=_values, epochs=4)
    write_fake_chosen(config, budget_check=True, values=_values, epochs=4)
    specs = expand_grid(config)
    group = config.group("g")
    tuned = [s for s in specs if s.group == "g" and s.protocol == "tuned"]
    preset = [s for s in specs if s.group == "g" and s.protocol == "preset"]
    assert {(s.dataset, s.variant, s.seed) for s in tuned} == {
        (d, v, seed) for d in ("icons", "glyphs") for v in ("no_so", "so") for seed in (0, 1, 2)}
    assert {s.seed for s in preset} == {0, 1}
    for spec in tuned:
        chosen = json.loads((config.results_dir / "syn" / "tuning" / spec.dataset /
                             f"g.{spec.variant}" / "chosen.json").read_text())
        cell, tier = cell_parameters(config, group, spec.dataset, TUNED_VARIANTS[spec.variant],
                                     spec.seed)
        expected = apply_values(cell, chosen["params"])
        expected["epochs"] = 4
        expected.update(final_split_parameters())
        assert spec.params == expected
        assert spec.run_name == make_run_name(expected, tier=tier)
        assert spec.lr_factor is None and spec.base_variant == spec.variant
        resolved = config_from_parameters(spec.params)
        assert resolved.schedule.epochs == 4 and resolved.optim.lr == chosen["params"]["lr"]
        assert resolved.optim.proxy_lr_mult == chosen["params"]["proxy_lr_mult"]
        assert spec.label == f"g/{spec.variant} (tuned)"
    # the preset cells are exactly the cells before the tuned protocol existed
    for spec in preset:
        cell, tier = cell_parameters(config, group, spec.dataset, TUNED_VARIANTS[spec.variant],
                                     spec.seed)
        assert spec.params == cell and spec.run_name == make_run_name(cell, tier=tier)
        assert spec.label == f"g/{spec.variant}"
    # tuned and preset cells never share a run (other lr, other epochs)
    assert not {s.run_name for s in tuned} & {s.run_name for s in preset}
    assert headline_runs(config, 0)[0].protocol == "preset"
    assert headline_runs(config, 2, protocol="tuned")[1].protocol == "tuned"


def test_a_chosen_mapping_entry_merges_into_the_variants_loss_params(tmp_path):
    config = load_raw_study(tuned_study_raw(tmp_path))
    write_fake_chosen(config)
    write_fake_chosen(config, budget_check=True)
    (spec,) = [s for s in expand_grid(config) if s.group == "m"]
    assert spec.params["overrides"]["loss.params"] == {
        "mapping": "constant", "scale": 16.0, "m_min": 0.0, "m_max": 0.25}
    assert spec.params["loss"] == "adaptive_margin"


def test_missing_chosen_files_are_one_error_naming_each_file_and_the_command(tmp_path):
    config = load_raw_study(tuned_study_raw(tmp_path))
    with pytest.raises(MissingTunedValuesError) as info:
        expand_grid(config)
    message = str(info.value)
    assert "results/syn/tuning/icons/g.no_so/chosen.json (missing)" in message
    assert "tuning/glyphs/g.so/chosen.json (missing)" in message and "and 3 more" in message
    assert "run `python -m dml_study.study tune --config studies/syn.yaml` and `python -m " \
        "dml_study.study tune --config studies/syn.yaml --budget-check` first" in message
    assert info.value.exit_code == EXIT_USAGE and isinstance(info.value, StudyConfigError)
    # skip_untuned: the preset cells, nothing else; untuned_searches names the files
    preset = expand_grid(config, skip_untuned=True)
    assert {s.protocol for s in preset} == {"preset"}
    assert len(untuned_searches(config)) == 7  # g: 2 datasets x 2, m, 2x on icons (grid reads g)
    # one missing arm: only that one is named
    write_fake_chosen(config, only=lambda p: p.arm != "m/constant")
    write_fake_chosen(config, budget_check=True)
    with pytest.raises(MissingTunedValuesError, match=r"1 search\(es\).*m\.constant"):
        expand_grid(config)


def test_an_incomplete_search_or_a_file_of_another_arm_is_refused(tmp_path):
    config = load_raw_study(tuned_study_raw(tmp_path))
    write_fake_chosen(config)
    write_fake_chosen(config, budget_check=True)
    write_fake_chosen(config, complete=False, only=lambda p: p.arm == "g/so")
    with pytest.raises(MissingTunedValuesError, match=r"incomplete: 3 of 4 trials"):
        expand_grid(config)
    write_fake_chosen(config)
    path = config.results_dir / "syn" / "tuning" / "glyphs" / "g.no_so" / "chosen.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "dataset": "icons"}))
    with pytest.raises(MissingTunedValuesError, match="about icons g/no_so, not this search"):
        expand_grid(config)


def test_a_choice_tuned_for_another_cell_is_stale(tmp_path):
    raw = tuned_study_raw(tmp_path)
    config = load_raw_study(raw)
    write_fake_chosen(config)
    write_fake_chosen(config, budget_check=True)
    assert expand_grid(config)
    raw["groups"][0]["variants"] = {**TUNED_VARIANTS,
                                    "no_so": {"so_lambda": 0.0, "embedding_dim": 16}}
    with pytest.raises(StaleTunedValuesError, match=r"g/no_so \(tuned\).*embedding_dim"):
        expand_grid(load_raw_study(raw))
    # a result-neutral key (the device) is not a change
    raw = tuned_study_raw(tmp_path)
    raw["train"]["device"] = "cuda"
    raw["train"]["quiet"] = True
    assert expand_grid(load_raw_study(raw))


def test_lr_grid_cells_scale_the_tuned_lr_and_share_factor_1_with_the_tuned_runs(tmp_path):
    config = load_raw_study(tuned_study_raw(tmp_path))
    write_fake_chosen(config, values=_values)
    write_fake_chosen(config, budget_check=True, values=_values)
    specs = expand_grid(config)
    grid = [s for s in specs if s.group == "grid"]
    assert {(s.base_variant, s.lr_factor, s.seed) for s in grid} == {
        (v, f, seed) for v in ("no_so", "so") for f in (0.1, 1.0, 10.0) for seed in (0, 1)}
    tuned = {(s.variant, s.seed): s for s in specs
             if s.group == "g" and s.protocol == "tuned" and s.dataset == "icons"}
    for spec in grid:
        assert spec.variant == f"{spec.base_variant}@lr×{spec.lr_factor:g}"
        assert spec.protocol == "tuned"
        base = tuned[(spec.base_variant, spec.seed)]
        assert spec.params["lr"] == pytest.approx(base.params["lr"] * spec.lr_factor)
        assert spec.params["so_lambda"] == base.params["so_lambda"]
        assert (spec.run_name == base.run_name) == (spec.lr_factor == 1.0)
    assert lr_grid_cells(config) == grid
    if HAS_SPLITS:
        validation = lr_grid_cells(config, split="validation")
        assert len(validation) == len(grid)  # one fold (fold_ids [0])
        for spec, test in zip(validation, grid, strict=True):
            assert spec.split == "validation" and spec.params["val_fold"] == 0
            assert spec.run_name != test.run_name
            tier = frozen_tier_identity(config, "icons")
            assert spec.run_name == make_run_name(spec.params, tier=tier)


def test_lr_grid_cells_leave_out_datasets_with_an_untuned_arm(tmp_path):
    config = load_raw_study(tuned_study_raw(tmp_path))
    write_fake_chosen(config, only=lambda p: p.arm == "g/no_so")
    assert lr_grid_cells(config) == []
    write_fake_chosen(config)
    assert len(lr_grid_cells(config)) == 12


def test_budget_check_cells_read_the_larger_search(tmp_path):
    config = load_raw_study(tuned_study_raw(tmp_path))
    write_fake_chosen(config, values=_values)
    write_fake_chosen(config, budget_check=True, values=lambda p: {"lr": 7e-3})
    specs = expand_grid(config)
    check = [s for s in specs if s.protocol == "tuned-2x"]
    assert {(s.group, s.dataset, s.variant, s.seed) for s in check} == {
        ("g", "icons", v, seed) for v in ("no_so", "so") for seed in (0, 1, 2)}
    assert {s.params["lr"] for s in check} == {7e-3}
    assert (config.results_dir / "syn" / "tuning-2x" / "icons" / "g.so" / "chosen.json").is_file()
    # the same values as the committed search: the same runs
    write_fake_chosen(config, budget_check=True, values=_values)
    again = expand_grid(config)
    names = {(s.variant, s.seed): s.run_name for s in again
             if s.protocol == "tuned" and s.group == "g" and s.dataset == "icons"}
    assert all(names[(s.variant, s.seed)] == s.run_name for s in again
               if s.protocol == "tuned-2x")
    assert len(unique_runs(again)) < len(again)


def test_the_study_file_checks_protocols_and_robustness_claims(tmp_path):
    raw = tuned_study_raw(tmp_path)
    bad = copy.deepcopy(raw)
    bad["groups"][0]["protocols"] = ["preset", "tunde"]
    with pytest.raises(StudyConfigError, match=r"protocols: invalid value 'tunde'.*did you mean"):
        load_raw_study(bad)
    bad = copy.deepcopy(raw)
    bad["tuning"]["arms"] = bad["tuning"]["arms"][1:]
    bad["tuning"]["budget_check"]["arms"] = ["g/so"]
    bad["claims"] = []
    with pytest.raises(StudyConfigError, match=r"variant 'no_so' read the tuned arm g/no_so"):
        load_raw_study(bad)
    bad = copy.deepcopy(raw)
    bad["tuning"]["arms"][2]["datasets"] = ["glyphs"]
    with pytest.raises(StudyConfigError, match=r"m/constant is not tuned on icons"):
        load_raw_study(bad)
    bad = copy.deepcopy(raw)
    bad["groups"][2]["tuned_from"] = "gg"
    with pytest.raises(StudyConfigError, match=r"tuned_from: 'gg' is not a group.*'g'"):
        load_raw_study(bad)
    bad = copy.deepcopy(raw)
    del bad["tuning"]
    with pytest.raises(StudyConfigError, match="'tuned' reads the tuned arms"):
        load_raw_study(bad)
    bad = copy.deepcopy(raw)
    bad["groups"][2]["lr_factors"] = [1.0]
    with pytest.raises(StudyConfigError, match="needs 'lr_factors' \\(at least 2"):
        load_raw_study(bad)
    bad = copy.deepcopy(raw)
    bad["groups"][2]["lr_factors"] = [1.0, -1.0]
    with pytest.raises(StudyConfigError, match="distinct positive numbers"):
        load_raw_study(bad)
    bad = copy.deepcopy(raw)
    bad["claims"][1]["metric"] = "lrs_within:R@1"
    with pytest.raises(StudyConfigError, match="lrs_within:<pp>:<metric>"):
        load_raw_study(bad)
    bad = copy.deepcopy(raw)
    bad["groups"][1]["tuned_seeds"] = [0]
    bad["groups"][1]["protocols"] = ["preset"]
    with pytest.raises(StudyConfigError, match="tuned_seeds: the group has no tuned protocol"):
        load_raw_study(bad)
    bad = copy.deepcopy(raw)
    bad["tuning"]["budget_check"]["arms"] = ["g/so"]
    with pytest.raises(StudyConfigError, match=r"claim 'r1' compares g/no_so, g/so; check"):
        load_raw_study(bad)


def test_budget_equality_holds_for_the_arms_an_lr_grid_reads(tmp_path):
    raw = tuned_study_raw(tmp_path)
    raw["claims"] = [raw["claims"][1]]  # only the robustness claim on the lr grid
    raw["tuning"]["arms"][1]["trials"] = 6
    raw["tuning"]["budget_check"] = None
    del raw["tuning"]["budget_check"]
    with pytest.raises(StudyConfigError, match=r"claim 'robust' compares g/no_so \(4 trials"):
        load_raw_study(raw)


def test_smoke_keeps_protocols_and_trims_tuned_seeds_and_lr_grids(tmp_path):
    raw = tuned_study_raw(tmp_path)
    raw["groups"][2]["lr_factors"] = [0.1, 0.316, 1.0, 3.16, 10.0]
    out = smoke_study_dict(raw, tmp_path / "smoke", REPO)
    groups = {g["name"]: g for g in out["groups"]}
    assert groups["g"]["protocols"] == ["preset", "tuned"]
    assert groups["g"]["tuned_seeds"] == [0, 1]
    assert groups["grid"]["lr_factors"] == [0.1, 1.0, 10.0]
    assert out["tuning"]["budget_check"] == raw["tuning"]["budget_check"]


def test_embedded_tuned_grid_is_frozen_only_with_the_seeds(tmp_path):
    """Compute scope: embedded tunes the frozen tier only (fine-tuned searches: paper.yaml)."""
    config = load_study_config(REPO / "studies" / "embedded.yaml",
                               results_dir=str(tmp_path / "results"))
    assert "so_vs_none_glyphs" not in {g.name for g in config.groups}
    assert tuple(config.group("so_vs_none").protocols) == ("preset",)
    write_fake_chosen(config)
    write_fake_chosen(config, budget_check=True)
    specs = expand_grid(config)
    assert {s.protocol for s in specs if s.tier != "frozen"} == {"preset"}
    for group in config.groups:
        if "tuned" in group.protocols and not group.lr_factors:
            assert group.tier == "frozen", group.name
            seeds = {s.seed for s in specs if s.group == group.name and s.protocol == "tuned"}
            assert len(seeds) >= 10, group.name
    robust = [s for s in specs if s.group == "frozen_lr_grid"]
    assert {s.lr_factor for s in robust} == {0.1, 0.316, 1.0, 3.16, 10.0}
    assert len(robust) == 2 * 2 * 5 * 3
    frozen_tuned = {s.run_name for s in specs if s.group == "frozen_so" and s.protocol == "tuned"}
    shared = [s for s in robust if s.run_name in frozen_tuned]
    assert {s.lr_factor for s in shared} == {1.0} and len(shared) == 12
    assert {s.protocol for s in specs if s.group == "frozen_so"} == {"preset", "tuned",
                                                                     "tuned-2x"}


def test_a_study_without_an_lr_grid_has_no_lr_grid_cells_on_either_split(tmp_path):
    """03_ablations asks every study for both splits; one with no tuning section at all
    (a tiny or degenerate study) must get no cells, not an assertion."""
    from study_helpers import write_study

    from dml_study.study.plan.config import load_study_config
    from dml_study.study.plan.grid import lr_grid_cells

    config = load_study_config(write_study(tmp_path))
    assert config.tuning is None
    assert lr_grid_cells(config, "test") == [] and lr_grid_cells(config, "validation") == []


def test_the_grid_is_built_once_per_config_until_a_search_writes_its_choice(tmp_path,
                                                                             monkeypatch):
    """``expand_grid`` is asked once per claim and figure of a notebook: the grid is cached
    per config, and a ``chosen.json`` written (a search finished, a value changed) rebuilds
    it, so no cell carries stale tuned values."""
    import os

    from dml_study.study.plan import grid

    config = load_raw_study(tuned_study_raw(tmp_path))
    write_fake_chosen(config, values=_values, epochs=4)
    write_fake_chosen(config, budget_check=True, values=_values, epochs=4)
    built = []
    group_cells = grid._group_cells
    monkeypatch.setattr(grid, "_group_cells", lambda *a: built.append(1) or group_cells(*a))
    first = expand_grid(config)
    count = len(built)
    second = expand_grid(config)
    assert second == first and second is not first and len(built) == count  # not rebuilt
    second.clear()
    assert expand_grid(config) == first  # a caller's change to its list is its own
    again = load_raw_study(tuned_study_raw(tmp_path))  # another config object: built anew
    assert expand_grid(again) == first and len(built) == 2 * count
    write_fake_chosen(config, values=lambda plan: {"lr": 0.5}, epochs=4)  # a new choice
    path = config.results_dir / "syn" / "tuning" / "icons" / "g.so" / "chosen.json"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    rebuilt = expand_grid(config)
    assert len(built) == 3 * count
    assert {s.params.get("lr") for s in rebuilt
            if s.protocol == "tuned" and s.lr_factor in (None, 1.0)} == {0.5}
