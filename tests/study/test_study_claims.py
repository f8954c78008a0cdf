"""The claims scorecard on synthetic run directories: pairing by seed, CI, verdict."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from dml_study.study.analysis import claims as C
from dml_study.study.analysis.stats import VERDICTS, mean_ci, verdict_from_ci
from dml_study.study.plan.config import StudyConfigError, study_config_from_dict
from dml_study.study.plan.grid import expand_grid
from dml_study.training.history import History
from dml_study.training.run_dir import RunDirectory


def _config(tmp_path: Path, claims: list[dict], seeds=(0, 1, 2, 3)) -> object:
    raw = {
        "name": "synthetic",
        "results_dir": str(tmp_path / "results"),
        "train": {"dataset": "icons", "embedding_dim": 8},
        "groups": [{"name": "g", "seeds": list(seeds), "tier": "frozen",
                    "variants": {"base": {"so_lambda": 0.0}, "treat": {"so_lambda": 0.1}}}],
        "headline": {"group": "g", "baseline": "base", "treatment": "treat"},
        "claims": claims,
    }
    return study_config_from_dict(raw, root=tmp_path)


def _write_run(path: Path, r1: float, history_r1: list[float], proxies: np.ndarray,
               class_recall: np.ndarray | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "proxies.npy", proxies)
    History({"epoch": e, "R@1": r} for e, r in enumerate(history_r1)).save(RunDirectory(path))
    if class_recall is not None:
        np.save(path / "train_class_recall.npy", class_recall)
    (path / "metrics.json").write_text(json.dumps({"R@1": r1, "MAP@R": r1 / 2}))


def _fill(config, values: dict[tuple[str, int], float], proxies=None) -> None:
    rng = np.random.default_rng(0)
    for spec in expand_grid(config):
        key = (spec.variant, spec.seed)
        if key not in values:
            continue  # an unfinished run
        p = proxies if proxies is not None else rng.normal(size=(5, 8))
        _write_run(RunDirectory.for_run(config.results_dir, spec.run_name).path, values[key],
                   [0.30, 0.30 + 0.5 * (values[key] - 0.30), values[key]], p)


R1_CLAIM = {"name": "r1", "claim": "treat improves R@1", "group": "g", "baseline": "base",
            "treatment": "treat", "metric": "R@1"}


def test_effect_and_ci_are_paired_by_seed_and_match_scipy(tmp_path):
    config = _config(tmp_path, [R1_CLAIM])
    base = {0: 0.40, 1: 0.50, 2: 0.45, 3: 0.42}
    gain = {0: 0.010, 1: 0.012, 2: 0.008, 3: 0.011}
    values = {("base", s): v for s, v in base.items()}
    values.update({("treat", s): base[s] + gain[s] for s in base})
    _fill(config, values)
    (row,) = C.scorecard(config)
    diffs = 100 * np.array([gain[s] for s in sorted(gain)])
    half = sps.t.ppf(0.975, 3) * diffs.std(ddof=1) / math.sqrt(4)
    assert row["seeds"] == 4
    assert row["effect"] == pytest.approx(diffs.mean())
    assert row["ci_low"] == pytest.approx(diffs.mean() - half)
    assert row["ci_high"] == pytest.approx(diffs.mean() + half)
    # Unpaired, the seed-to-seed spread (10 pp) would swamp the +1 pp gain.
    assert row["verdict"] == "supported"
    assert (row["paper"], row["dataset"], row["tier"], row["unit"]) == ("SO", "icons", "frozen",
                                                                       "pp")
    assert row["regime"] == "C<d"  # 5 proxies in 8 dimensions


def test_seeds_missing_in_one_arm_are_dropped(tmp_path):
    config = _config(tmp_path, [R1_CLAIM])
    values = {("base", s): 0.4 + 0.01 * s for s in range(4)}
    values.update({("treat", s): 0.4 + 0.01 * s + 0.02 for s in (0, 2, 3)})
    _fill(config, values)
    (row,) = C.scorecard(config)
    assert row["seeds"] == 3
    assert row["effect"] == pytest.approx(2.0)
    assert row["ci_low"] == row["ci_high"] == pytest.approx(2.0)  # identical differences


@pytest.mark.parametrize(("low", "high", "direction", "verdict"), [
    (0.1, 0.5, "increase", "supported"),
    (-0.5, -0.1, "increase", "contradicted"),
    (-0.1, 0.5, "increase", "inconclusive"),
    (0.0, 0.5, "increase", "inconclusive"),  # a CI touching 0 holds 0
    (-0.5, -0.1, "decrease", "supported"),
    (0.1, 0.5, "decrease", "contradicted"),
    (-0.5, -0.1, "any", "supported"),
    (0.1, 0.5, "any", "supported"),
    (-0.1, 0.1, "any", "inconclusive"),
    (float("nan"), float("nan"), "increase", "inconclusive"),
])
def test_verdict_follows_the_ci(low, high, direction, verdict):
    assert verdict_from_ci(low, high, direction) == verdict


def test_verdict_rejects_unknown_direction():
    with pytest.raises(ValueError, match="direction"):
        verdict_from_ci(0.1, 0.2, "up")


def test_a_contradicted_and_an_inconclusive_claim(tmp_path):
    worse = {**R1_CLAIM, "name": "worse"}
    config = _config(tmp_path, [worse])
    values = {("base", s): 0.5 for s in range(4)}
    values.update({("treat", s): 0.5 - 0.01 - 0.001 * s for s in range(4)})
    _fill(config, values)
    assert C.scorecard(config)[0]["verdict"] == "contradicted"
    noisy = {("treat", s): 0.5 + d for s, d in enumerate((0.02, -0.02, 0.01, -0.012))}
    _fill(config, {**values, **noisy})
    row = C.scorecard(config)[0]
    assert row["ci_low"] < 0 < row["ci_high"] and row["verdict"] == "inconclusive"


def test_epochs_to_fraction_of_the_gain():
    history = pd.DataFrame({"epoch": [0, 1, 2, 3, 4], "R@1": [0.30, 0.28, 0.36, 0.395, 0.40]})
    # gain 0.10; 90 % of it is reached at 0.39 -> epoch 3; 50 % at 0.35 -> epoch 2
    assert C.epochs_to_fraction(history, 0.9) == 3
    assert C.epochs_to_fraction(history, 0.5) == 2
    flat = pd.DataFrame({"epoch": [0, 1, 2], "R@1": [0.3, 0.29, 0.3]})
    assert math.isnan(C.epochs_to_fraction(flat, 0.9))


def test_convergence_and_proxy_claims(tmp_path):
    conv = {**R1_CLAIM, "name": "conv", "metric": "epochs_to:0.9:R@1", "direction": "decrease",
            "scale": 1.0, "unit": "epochs"}
    cos = {**R1_CLAIM, "name": "cos", "metric": "proxies/mean_abs_cos",
           "direction": "decrease", "scale": 1.0, "unit": "|cos|"}
    config = _config(tmp_path, [conv, cos])
    values = {(v, s): 0.4 + 0.01 * s for v in ("base", "treat") for s in range(4)}
    _fill(config, values, proxies=np.eye(5, 8) + 0.1)
    rows = {r["name"]: r for r in C.scorecard(config)}
    assert rows["conv"]["effect"] == 0.0 and rows["conv"]["verdict"] == "inconclusive"
    assert rows["cos"]["effect"] == pytest.approx(0.0)


def test_motivation_correlation_over_seeds(tmp_path):
    claim = {"name": "mot", "group": "g", "kind": "correlation", "baseline": "base",
             "metric": "spearman:nearest_proxy_cos:train_R@1", "direction": "decrease",
             "scale": 1.0, "unit": "rho"}
    config = _config(tmp_path, [claim])
    rng = np.random.default_rng(1)
    for spec in expand_grid(config):
        if spec.variant != "base":
            continue
        proxies = rng.normal(size=(12, 8))
        from dml_study.study.analysis.per_class import nearest_proxy_cosine

        recall = 1.0 - nearest_proxy_cosine(proxies) + 0.01 * rng.normal(size=12)
        _write_run(RunDirectory.for_run(config.results_dir, spec.run_name).path, 0.5, [0.3, 0.5],
                   proxies, class_recall=recall)
    (row,) = C.scorecard(config)
    assert row["seeds"] == 4 and row["effect"] < -0.8
    assert row["verdict"] == "supported"
    assert row["regime"] == "C>d"


def test_an_undefined_correlation_is_kept_as_an_inconclusive_row(tmp_path):
    # Per-class R@1 constant on every seed (tiny smoke data): rho is undefined, not dropped.
    claim = {"name": "mot", "group": "g", "kind": "correlation", "baseline": "base",
             "metric": "spearman:nearest_proxy_cos:train_R@1", "direction": "decrease"}
    config = _config(tmp_path, [claim])
    rng = np.random.default_rng(2)
    undefined = []
    for spec in expand_grid(config):
        if spec.variant == "base":
            recall = np.ones(12) if spec.seed < 2 else rng.uniform(size=12)
            if spec.seed < 2:
                undefined.append(spec.seed)
            path = RunDirectory.for_run(config.results_dir, spec.run_name).path
            _write_run(path, 0.5, [0.3, 0.5], rng.normal(size=(12, 8)), class_recall=recall)
    (row,) = C.scorecard(config)
    assert row["seeds"] == 2 and row["verdict"] in VERDICTS
    assert f"undefined on seed(s) {undefined}" in row["note"]
    for spec in expand_grid(config):
        if spec.variant == "base":
            path = RunDirectory.for_run(config.results_dir, spec.run_name).path
            _write_run(path, 0.5, [0.3, 0.5], rng.normal(size=(12, 8)), class_recall=np.ones(12))
    (row,) = C.scorecard(config)
    assert row["seeds"] == 0 and row["effect"] is None and row["verdict"] == "inconclusive"


def test_missing_class_recall_names_the_fix(tmp_path):
    claim = {"name": "mot", "group": "g", "kind": "correlation", "baseline": "base",
             "direction": "decrease"}
    config = _config(tmp_path, [claim])
    _fill(config, {("base", 0): 0.5})
    with pytest.raises(C.ClaimError, match="frozen-tier"):
        C.scorecard(config)


def test_write_claims_is_valid_json_with_the_interface_keys(tmp_path):
    config = _config(tmp_path, [R1_CLAIM])
    _fill(config, {("base", 0): 0.5, ("treat", 0): 0.6})  # one seed: no CI
    path = C.write_claims(config)
    rows = json.loads(path.read_text())
    assert path == tmp_path / "results" / "synthetic" / "claims.json"
    keys = {"claim", "paper", "dataset", "regime", "tier", "metric", "unit", "effect",
            "ci_low", "ci_high", "seeds", "verdict"}
    assert keys <= set(rows[0])
    assert rows[0]["ci_low"] is None and rows[0]["verdict"] == "inconclusive"
    assert "n = 1: no CI" in rows[0]["note"]


def test_claim_config_errors_name_the_key_and_suggest(tmp_path):
    with pytest.raises(StudyConfigError, match=r"direction.*did you mean 'increase'"):
        _config(tmp_path, [{**R1_CLAIM, "direction": "increse"}])
    with pytest.raises(StudyConfigError, match=r"treatment.*'tret'.*did you mean 'treat'"):
        _config(tmp_path, [{**R1_CLAIM, "treatment": "tret"}])
    with pytest.raises(StudyConfigError, match=r"group.*'h' is not a group"):
        _config(tmp_path, [{**R1_CLAIM, "group": "h"}])


def test_mean_ci_matches_scipy():
    values = [0.1, 0.3, 0.2, 0.25]
    mean, low, high = mean_ci(values)
    ref = sps.t.interval(0.95, 3, loc=np.mean(values), scale=sps.sem(values))
    assert mean == pytest.approx(np.mean(values))
    assert (low, high) == pytest.approx(ref)


def test_one_claim_over_several_groups_gives_a_row_per_group(tmp_path):
    raw = {
        "name": "two", "results_dir": str(tmp_path / "results"),
        "train": {"embedding_dim": 8},
        "groups": [{"name": f"g_{d}", "seeds": [0, 1], "base": {"dataset": d},
                    "variants": {"base": {"so_lambda": 0.0}, "treat": {"so_lambda": 0.1}}}
                   for d in ("icons", "cub200")],
        "headline": {"group": "g_icons", "baseline": "base", "treatment": "treat"},
        "claims": [{**R1_CLAIM, "group": "g_icons", "groups": ["g_cub200"]}],
    }
    config = study_config_from_dict(raw, root=tmp_path)
    _fill(config, {(v, s): 0.4 + 0.01 * s + (0.02 if v == "treat" else 0.0)
                   for v in ("base", "treat") for s in (0, 1)})
    rows = C.scorecard(config)
    assert [(r["dataset"], r["group"]) for r in rows] == [("icons", "g_icons"),
                                                         ("cub200", "g_cub200")]
    assert all(r["tier"] == "fine-tuned" and r["effect"] == pytest.approx(2.0) for r in rows)


def test_regimes():
    assert C.regime(171, 384) == "C<d"   # icons at 384-d, CUB/Cars with DeiT-S
    assert C.regime(171, 128) == "C>d"   # icons at the preset's 128-d
    assert C.regime(1200, 128) == "C>>d"  # glyphs, SOP/In-Shop


def test_rows_name_the_seeds_an_arm_lacks_and_a_single_pair_has_no_ci(tmp_path):
    config = _config(tmp_path, [R1_CLAIM])
    # treat misses seeds 1 and 3, base misses 2: only seed 0 is paired.
    _fill(config, {("base", 0): 0.40, ("base", 1): 0.5, ("base", 3): 0.45, ("treat", 0): 0.42,
                   ("treat", 2): 0.47})
    (row,) = C.scorecard(config)
    assert row["seeds"] == 1 and row["effect"] == pytest.approx(2.0)
    assert row["ci_low"] is None and row["ci_high"] is None
    assert row["verdict"] == "inconclusive"
    assert row["note"] == ("base: no finished run at seed(s) [2]; treat: no finished run at "
                           "seed(s) [1, 3]; n = 1: no CI")
    table = C.scorecard_table([row])
    assert table.loc[0, "95% CI"] == "n = 1: no CI"  # stats.format_estimate


MOTIVATION_CLAIM = {"name": "mot", "group": "g", "kind": "correlation", "baseline": "base",
                    "metric": "spearman:nearest_proxy_cos:train_R@1", "direction": "decrease",
                    "scale": 1.0, "unit": "rho"}


def test_a_group_without_finished_runs_still_has_its_row_saying_so(tmp_path):
    config = _config(tmp_path, [R1_CLAIM, MOTIVATION_CLAIM], seeds=(0, 1))
    (paired, correlation) = C.scorecard(config)
    for row in (paired, correlation):
        assert row["effect"] is None and row["seeds"] == 0 and row["verdict"] == "inconclusive"
        assert row["regime"] == "–" and row["classes"] is None
    assert paired["note"] == ("base: no finished run at seed(s) [0, 1]; treat: no finished run "
                              "at seed(s) [0, 1]; no effect: no seed has a finished run in "
                              "every arm")
    assert correlation["note"].startswith("base: no finished run at seed(s) [0, 1]; no effect")
    # The rows pass the index's schema check (claims.json is what the index reads).
    from dml_study.study.report.index import load_claims

    C.write_claims(config)
    assert len(load_claims(config.study_dir)) == 2


def test_an_arm_finished_at_no_seed_of_the_other_gives_an_effectless_row(tmp_path):
    config = _config(tmp_path, [R1_CLAIM], seeds=(0, 1))
    _fill(config, {("base", 0): 0.40, ("treat", 1): 0.42})
    (row,) = C.scorecard(config)
    assert row["effect"] is None and row["regime"] == "C<d"
    assert row["note"].endswith("no effect: no seed has a finished run in every arm")


def test_headline_panels_name_their_protocol_and_put_tuned_first():
    """An unlabelled preset panel read as the headline (glyphs: +4.5 pp against a baseline
    whose lr makes it collapse); every panel names its protocol, tuned before preset."""
    values = pd.DataFrame({
        "dataset": ["icons", "icons", "glyphs", "glyphs", "icons", "icons"],
        "tier": ["frozen", "frozen", "frozen", "frozen", "fine-tuned", "frozen"],
        "protocol": ["preset", "preset", "preset", "tuned", "preset", "tuned"],
        "seed": [0, 1, 0, 0, 0, 0],
        "effect": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    })
    out = C.with_panels(values)
    assert list(dict.fromkeys(out["panel"])) == [
        "icons · frozen\ntuned", "icons · frozen\npreset", "glyphs · frozen\ntuned",
        "glyphs · frozen\npreset", "icons · fine-tuned\npreset"]
    assert list(out["effect"]) == [6.0, 1.0, 2.0, 4.0, 3.0, 5.0]  # rows travel with labels
    assert C.with_panels(values.iloc[:0]).empty


def test_headline_figure_tick_labels_do_not_overlap():
    """The five panels of the embedded study's headline, as drawn: no two tick labels touch
    ("glyphs · frozen" ran into "icons · fine-tuned" at a fixed 1.8 in a panel)."""
    import matplotlib

    matplotlib.use("Agg")
    from dml_study.study.report import plots

    rows = [{"dataset": d, "tier": t, "protocol": p, "seed": s, "effect": 0.1 * s,
             "ci_low": -1.0, "ci_high": 1.0}
            for d, t, p in [("icons", "frozen", "preset"), ("glyphs", "frozen", "preset"),
                            ("icons", "frozen", "tuned"), ("glyphs", "frozen", "tuned"),
                            ("icons", "fine-tuned", "preset")] for s in range(5)]
    import matplotlib.pyplot as plt

    with plt.rc_context():
        plots.setup()  # the report's theme: 11 pt tick labels
        fig = plots.paired_effects(C.with_panels(pd.DataFrame(rows)), "pp", "headline")
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        boxes = sorted((t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels()),
                       key=lambda b: b.x0)
    assert len(boxes) == 5
    gap = 0.1 * fig.dpi  # a reader needs a space between two labels, not just no overlap
    for a, b in itertools.pairwise(boxes):
        assert b.x0 - a.x1 >= gap, (a, b)
