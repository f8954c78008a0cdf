"""Reading committed searches (analysis.tuning, report.tuning_plots): the trace table, budgets per
claim, and their figures, on searches run with the fake trainer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from tune_helpers import FakeTrainer, tiny_tuning_study

from dml_study.study.analysis.tuning import (
    best_so_far,
    claim_budgets,
    read_trials,
    searches_table,
    trials_frame,
)
from dml_study.study.plan.config import load_study_config
from dml_study.study.report.figures import read_index
from dml_study.study.report.tuning_plots import (
    lr_heatmap,
    save_tuning_figures,
    search_traces,
)
from dml_study.study.tune import plan_searches
from dml_study.study.tune.search import Search


def _tuned(root: Path, trials: int = 8):
    config = load_study_config(tiny_tuning_study(root, trials=trials, pruner="median",
                                                 epochs=5))
    for plan in plan_searches(config):
        Search(plan, FakeTrainer(diverge_trials=[5])).run()
    return config


def test_best_so_far_skips_pruned_and_failed_trials():
    values = pd.Series([0.2, np.nan, 0.1, 0.4, np.nan, 0.3])
    states = pd.Series(["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE", "FAIL", "COMPLETE"])
    assert list(best_so_far(values, states)) == [0.2, 0.2, 0.2, 0.4, 0.4, 0.4]
    assert np.isnan(best_so_far(pd.Series([np.nan]), pd.Series(["PRUNED"]))[0])


def test_trials_frame_and_searches_table_follow_the_committed_files(tmp_path):
    config = _tuned(tmp_path)
    trials = trials_frame(config)
    assert set(trials["arm"]) == {"frozen_so/no_so", "frozen_so/so"}
    for arm, part in trials.groupby("arm"):
        part = part.sort_values("number")
        directory = config.results_dir / "tiny" / "tuning" / "icons" / arm.replace("/", ".")
        raw = read_trials(directory)
        assert len(part) == len(raw) == 8
        assert (np.diff(part["best_so_far"].dropna()) >= 0).all()
        done = part[part["state"] == "COMPLETE"]
        assert part["best_so_far"].iloc[-1] == done["value"].max()
        chosen = json.loads((directory / "chosen.json").read_text())
        assert part.loc[part["chosen"], "number"].tolist() == [chosen["trial"]]
        assert part["pruned"].sum() == (part["state"] == "PRUNED").sum()
        assert part.loc[part["number"] == 5, "diverged"].item()
    assert trials["pruned"].any(), "the median rule pruned some trials of the fake curves"
    table = searches_table(config)
    assert list(table["trials"]) == [8, 8] and table["complete"].all()
    assert set(table["epochs"]) <= set(range(1, 6)) and (table["trained epochs"] == 5).all()
    assert table["values"].str.contains("lr=").all()
    budgets = claim_budgets(config)
    assert budgets.to_dict("records") == [{
        "claim": "so_r1", "dataset": "icons", "group": "frozen_so",
        "arms": "frozen_so/no_so, frozen_so/so", "trials": "8, 8", "budgets": "8, 8",
        "equal": True}]


def test_claim_budgets_flag_unequal_trials(tmp_path):
    config = _tuned(tmp_path, trials=4)
    (plan,) = plan_searches(config, arms=["frozen_so/so"], trials=5)
    Search(plan, FakeTrainer()).run()
    (row,) = claim_budgets(config).to_dict("records")
    assert row["trials"] == "4, 5" and row["equal"] is False


def test_trace_figures_are_saved_into_the_index(tmp_path):
    config = _tuned(tmp_path)
    trials = trials_frame(config)
    fig = search_traces(trials)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["frozen_so/no_so (8 trials)",
                                                  "frozen_so/so (8 trials)"]
    study_dir = tmp_path / "study"
    (png,) = save_tuning_figures(study_dir, trials)
    assert png.name == "search_trace_icons_frozen.png" and png.stat().st_size > 1000
    assert [e["file"] for e in read_index(study_dir)] == ["figures/search_trace_icons_frozen.png"]


def test_lr_heatmap_has_a_panel_per_dataset_and_split_with_the_means():
    rows = [{"split": split, "dataset": d, "arm": arm, "lr_factor": f, "R@1": r, "seeds": 3}
            for split in ("validation", "test") for d in ("icons", "glyphs")
            for arm, base in (("no_so", 40.0), ("so", 45.0))
            for f, r in ((0.1, base - 5), (1.0, base), (10.0, base - 10))]
    fig = lr_heatmap(pd.DataFrame(rows))
    titles = sorted(ax.get_title() for ax in fig.axes if ax.get_title())
    assert titles == sorted(f"{d} · {s} (3 seeds)" for d in ("icons", "glyphs")
                            for s in ("validation", "test"))
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"45.0", "35.0", "30.0"} <= texts
    empty = lr_heatmap(pd.DataFrame(columns=["split", "dataset", "arm", "lr_factor", "R@1",
                                             "seeds"]))
    assert "no finished lr-grid runs" in {t.get_text() for ax in empty.axes for t in ax.texts}
