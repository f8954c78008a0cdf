"""Claims per protocol and the robustness claim, on hand-built run directories."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps
from study_helpers import HAS_SPLITS, load_raw_study, tuned_study_raw, write_fake_chosen

from dml_study.study.analysis import claims as C
from dml_study.study.analysis import robustness as R
from dml_study.study.plan.grid import expand_grid, lr_grid_cells
from dml_study.training.history import History
from dml_study.training.run_dir import RunDirectory

#: R@1 of the tuned cells by (arm, lr factor): no SO works at its tuned lr only, SO at all
#: three (within 1 pp); factor 1 is the tuned cell itself (shared run).
TUNED_R1 = {("no_so", 0.1): 0.30, ("no_so", 1.0): 0.50, ("no_so", 10.0): 0.35,
            ("so", 0.1): 0.495, ("so", 1.0): 0.50, ("so", 10.0): 0.492}


def r1_of(spec) -> float:
    """The hand-built final R@1 of a cell (see the constants)."""
    if spec.protocol == "preset":  # preset: SO +2 pp on every seed
        return 0.40 + 0.01 * spec.seed + (0.02 if spec.base_variant == "so" else 0.0)
    value = TUNED_R1.get((spec.base_variant, spec.lr_factor or 1.0), 0.45) + 0.01 * spec.seed
    if (spec.base_variant, spec.lr_factor, spec.seed) == ("so", 0.1, 1):
        value = 0.48 + 0.01  # seed 1: SO 2 pp below its best at the smallest lr
    if spec.protocol == "tuned-2x" and spec.base_variant == "so":
        value += 0.03  # the larger budget's choice: SO +3 pp
    return value


def write_runs(config, skip=()) -> list:
    """A finished run directory for every cell of the grid (``skip``: run names left out)."""
    rng = np.random.default_rng(0)
    specs = expand_grid(config)
    for spec in specs:
        if spec.run_name in skip:
            continue
        path = RunDirectory.for_run(config.results_dir, spec.run_name).path
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "proxies.npy", rng.normal(size=(5, 8)))
        final = r1_of(spec)
        epochs = int(spec.params.get("epochs") or 6)
        History({"epoch": e, "R@1": final * e / epochs} for e in range(epochs + 1)).save(
            RunDirectory(path))
        (path / "metrics.json").write_text(json.dumps({"R@1": final, "MAP@R": final / 2}))
    return specs


@pytest.fixture
def study(tmp_path):
    raw = tuned_study_raw(tmp_path)
    raw["claims"].append({"name": "early", "group": "g", "baseline": "no_so",
                          "treatment": "so", "metric": "at_epoch:3:R@1"})
    config = load_raw_study(raw)
    write_fake_chosen(config, epochs=4)
    write_fake_chosen(config, epochs=2, only=lambda p: p.arm == "g/so" and p.dataset == "glyphs")
    write_fake_chosen(config, budget_check=True, epochs=4, values=lambda p: {"lr": 0.02})
    return config


def test_one_row_per_dataset_and_protocol_with_the_epoch_it_comes_from(study):
    specs = write_runs(study)
    rows = [r for r in C.scorecard(study) if r["name"] == "r1"]
    assert [(r["dataset"], r["protocol"]) for r in rows] == [
        ("icons", "preset"), ("icons", "tuned"), ("glyphs", "preset"), ("glyphs", "tuned")]
    by = {(r["dataset"], r["protocol"]): r for r in rows}
    preset, tuned = by[("icons", "preset")], by[("icons", "tuned")]
    assert preset["epoch"] == "final" and preset["epoch_selection"] == "fixed"
    assert preset["epochs"] == {"no_so": 6, "so": 6} and "trials" not in preset
    assert preset["effect"] == pytest.approx(2.0) and preset["verdict"] == "supported"
    assert preset["seeds"] == 2 and preset["split"] == "test"
    assert tuned["epoch"] == "final = validation-selected 4"
    assert tuned["epochs"] == {"no_so": 4, "so": 4} and tuned["epoch_selection"] == "validation"
    assert tuned["trials"] == {"no_so": 4, "so": 4}
    assert tuned["seeds"] == 3 and tuned["effect"] == pytest.approx(0.0)
    assert tuned["verdict"] == "inconclusive"
    glyphs = by[("glyphs", "tuned")]
    assert glyphs["epoch"] == "final = validation-selected 4 (no_so), 2 (so)"
    assert glyphs["epochs"] == {"no_so": 4, "so": 2}
    # the budget check's cells are not scorecard rows (budget_check_verdicts reports them)
    assert {r["protocol"] for r in C.scorecard(study)} == {"preset", "tuned"}
    assert any(s.protocol == "tuned-2x" for s in specs)
    rows_2x = C.claim_rows(study, study.claims[0], protocols=("tuned-2x",))
    assert [(r["dataset"], r["protocol"]) for r in rows_2x] == [("icons", "tuned-2x")]
    assert rows_2x[0]["effect"] == pytest.approx(3.0)
    table = C.scorecard_table(C.scorecard(study))
    assert {"protocol", "epoch"} <= set(table.columns)


def test_an_epoch_the_tuned_schedule_does_not_have_is_not_measured(study):
    write_runs(study)
    rows = {(r["dataset"], r["protocol"]): r for r in C.scorecard(study)
            if r["name"] == "early"}
    assert rows[("icons", "preset")]["epoch"] == "epoch 3"
    assert rows[("icons", "tuned")]["epoch"] == "epoch 3 (of validation-selected 4)"
    assert rows[("icons", "tuned")]["effect"] is not None
    short = rows[("glyphs", "tuned")]
    assert short["effect"] is None and short["seeds"] == 0
    assert short["verdict"] == "inconclusive"
    assert "not measured: epoch 3 does not exist (so trains 2 epochs)" in short["note"]


def test_lrs_within_and_mean_drop_by_hand():
    grid = {0.1: 0.30, 0.316: 0.49, 1.0: 0.50, 3.16: 0.491, 10.0: 0.20}
    assert R.lrs_within(grid, 1.0) == 3  # 0.49 is exactly 1 pp below: counts
    assert R.lrs_within(grid, 0.5) == 1
    assert R.lrs_within(grid, 100.0) == 5
    assert R.mean_drop(grid) == pytest.approx((0.20 + 0.01 + 0.0 + 0.009 + 0.30) / 5)
    assert R.robustness_value(grid, "lrs_within:1:R@1") == 3.0
    assert R.parse_metric("mean_drop:MAP@R") == ("mean_drop", None, "MAP@R")
    with pytest.raises(R.RobustnessError, match="lrs_within:<pp>:<metric>"):
        R.parse_metric("within:1")


def test_robustness_claim_is_the_paired_difference_of_per_seed_counts(study):
    write_runs(study)
    (row,) = [r for r in C.scorecard(study) if r["name"] == "robust"]
    # seed 0: SO 3 lrs within 1 pp, no SO 1; seed 1: SO 2 (0.49 is 2 pp below 0.51), no SO 1
    diffs = np.array([2.0, 1.0])
    half = sps.t.ppf(0.975, 1) * diffs.std(ddof=1) / math.sqrt(2)
    assert row["protocol"] == "tuned" and row["dataset"] == "icons"
    assert row["seeds"] == 2 and row["lr_factors"] == [0.1, 1.0, 10.0]
    assert row["effect"] == pytest.approx(1.5)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(1.5 - half), pytest.approx(1.5 + half))
    assert row["baseline_mean"] == pytest.approx(1.0) and row["treatment_mean"] == 2.5
    assert row["epoch"] == "final = validation-selected 4" and row["unit"] == "lrs"
    assert row["verdict"] == "inconclusive"  # two seeds: t(1) makes the CI wide
    values = C.paired_values(study, study.claims[1])
    assert list(values["effect"]) == [2.0, 1.0] and set(values["protocol"]) == {"tuned"}


def test_an_incomplete_lr_grid_leaves_its_seed_out_with_a_note(study):
    specs = expand_grid(study)
    (gone,) = [s.run_name for s in specs if s.group == "grid" and s.seed == 1
               and s.base_variant == "so" and s.lr_factor == 10.0]
    write_runs(study, skip={gone})
    (row,) = [r for r in C.scorecard(study) if r["name"] == "robust"]
    assert row["seeds"] == 1 and row["effect"] == pytest.approx(2.0)
    assert "undefined on seed(s) [1] (left out): an incomplete lr grid" in row["note"]


def test_lr_grid_tables_for_the_heatmap(study):
    write_runs(study)
    frame = R.lr_grid_frame(study)
    assert len(frame) == 2 * 3 * 2  # arms x factors x seeds
    assert set(frame["split"]) == {"test"}
    lr = {(r.arm, r.lr_factor): r.lr for r in frame.itertuples()}
    assert lr[("so", 10.0)] == pytest.approx(10 * lr[("so", 1.0)])
    means = R.lr_grid_means(frame)
    row = means[(means["arm"] == "no_so") & (means["lr_factor"] == 1.0)].iloc[0]
    assert row["R@1"] == pytest.approx(100 * (0.50 + 0.51) / 2) and row["seeds"] == 2
    table = R.robustness_table(study, splits=("test",))
    by_arm = {r.arm: r for r in table.itertuples()}
    assert by_arm["so"].mean == 2.5 and by_arm["so"]._7 == "3, 2"  # "per seed"
    assert by_arm["no_so"].mean == 1.0


@pytest.mark.skipif(not HAS_SPLITS, reason="needs contract A (dml_study.data.splits)")
def test_the_validation_grid_is_read_from_its_own_runs(study):
    write_runs(study)
    for spec in lr_grid_cells(study, split="validation"):
        path = RunDirectory.for_run(study.results_dir, spec.run_name).path
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "proxies.npy", np.zeros((5, 8)))
        (path / "metrics.json").write_text(json.dumps(
            {"R@1": 0.6, "MAP@R": 0.3, "split": "validation"}))
    frame = R.lr_grid_frame(study, split="validation")
    assert len(frame) == 12 and set(frame["R@1"]) == {0.6}
    table = R.robustness_table(study)
    assert set(table["split"]) == {"validation", "test"}
    assert set(table[table["split"] == "validation"]["mean"]) == {3.0}  # a flat grid


def test_the_headline_pairs_the_tuned_cells_of_the_first_dataset(study):
    """Not the preset and tuned runs of a seed together, nor icons' and glyphs' (the paper
    smoke study crashed on that: two rows per seed and arm)."""
    from dml_study.study.report.index import _headline_text, headline

    write_runs(study)
    result = headline(study)
    assert (result["dataset"], result["protocol"]) == ("icons", "tuned")
    r1 = result["metrics"]["R@1"]
    assert r1["n"] == 3  # tuned_seeds
    assert r1["mean_difference"] == pytest.approx(0.0)  # the preset cells differ by +2 pp
    assert "tuned protocol: each arm at its tuned values" in _headline_text(study, result)
