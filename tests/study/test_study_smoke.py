"""Smoke mode of the paper study, and the issue #15 command, on official-layout fixtures.

The fixtures have 8 training classes of 2 images per benchmark, smaller than the presets'
m-per-class (4 on CUB and Cars): such classes must train (topped up with replacement), and a
DeiT must follow a 32-px ``image_size``. Eight, because a smoke search holds out one of two
validation folds and the 4 classes left must fill a smoke batch (8 images, 2 per class).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixture_datasets import (
    write_cars_fixture,
    write_cub_fixture,
    write_inshop_fixture,
    write_sop_fixture,
)
from study_helpers import write_fake_chosen

from dml_study.study.analysis.stats import VERDICTS
from dml_study.study.plan.config import StudyConfigError, load_study_config
from dml_study.study.plan.grid import expand_grid, unique_runs
from dml_study.study.plan.smoke import (
    SMOKE_MAX_SEEDS,
    SMOKE_OVERRIDES,
    SMOKE_TITLE,
    SMOKE_TRAIN,
    derived_study_file,
    smoke_study_dict,
)

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "studies" / "paper.yaml"


def _all_fixtures(root: Path) -> Path:
    for write in (write_cub_fixture, write_cars_fixture, write_sop_fixture, write_inshop_fixture):
        write(root, num_classes=16, images_per_class=2)
    return root


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    env.pop("DML_DATA_ROOT", None)
    env.update(extra)
    return env


def _cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dml_study.study", *args], cwd=cwd, env=_env(**env),
        capture_output=True, text=True, check=False,
    )


# ----------------------------------------------------------------------------- fast


def test_smoke_dict_applies_the_tiny_recipe_everywhere_and_keeps_the_grid(tmp_path):
    raw = yaml.safe_load(PAPER.read_text())
    out = smoke_study_dict(raw, tmp_path, REPO)
    assert out["results_dir"] == str(tmp_path) and out["root"] == str(REPO)
    assert out["title"].startswith(SMOKE_TITLE)
    for key, value in SMOKE_TRAIN.items():
        assert out["train"][key] == value
    assert out["train"]["overrides"] == SMOKE_OVERRIDES
    assert out["train"]["so_reduction"] == "excess_mean"  # study settings are kept
    names = [g["name"] for g in raw["groups"]]
    assert [g["name"] for g in out["groups"]] == names  # every group ...
    for before, after in zip(raw["groups"], out["groups"], strict=True):
        assert after["seeds"] == before["seeds"][:SMOKE_MAX_SEEDS]
        assert after.get("sweep") == before.get("sweep")  # ... every sweep value ...
        assert set(after.get("variants", {})) == set(before.get("variants", {}))  # ... variant
        for name, params in after.get("variants", {}).items():
            if "overrides" in before["variants"][name]:
                # a variant's own overrides (the margin mapping) survive, smoke keys added
                assert params["overrides"]["loss.params"] == \
                    before["variants"][name]["overrides"]["loss.params"]
                assert params["overrides"]["eval.every_n_epochs"] == 1
    assert raw["train"]["backbone"] == "deit_small_distilled_patch16_224"  # input untouched


def test_smoke_refuses_a_sweep_over_a_key_it_fixes(tmp_path):
    raw = {"name": "x", "groups": [{"name": "g", "sweep": {"image_size": [32, 64]}}]}
    with pytest.raises(StudyConfigError, match=r"sweeps \['image_size'\]"):
        smoke_study_dict(raw, tmp_path, REPO)


def test_derived_file_is_a_valid_study_with_every_group(tmp_path):
    path = derived_study_file(PAPER, tmp_path / "out", smoke=True)
    assert path == (tmp_path / "out" / "paper.smoke.yaml")
    config = load_study_config(path)
    original = load_study_config(PAPER)
    assert config.results_dir == (tmp_path / "out").resolve()
    assert config.notebooks_dir == original.notebooks_dir and config.root == original.root
    assert [g.name for g in config.groups] == [g.name for g in original.groups]
    write_fake_chosen(config)  # the tuned cells' values (--smoke tunes first)
    specs = expand_grid(config)
    assert {(s.group, s.variant, s.protocol) for s in specs} >= {
        (s.group, s.variant, s.protocol) for s in expand_grid(original, skip_untuned=True)
    }
    assert all(s.params["backbone"] == "deit_tiny_patch16_224" for s in specs)
    assert len(unique_runs(s for s in specs if s.protocol == "preset")) == 40
    # tuned: 7 groups' arms (16) x 2 smoke seeds; the CUB lr grid: 2 arms x 3 factors x 2
    # seeds, its factor-1 cells shared with the tuned cub200_so runs
    tuned = [s for s in specs if s.protocol == "tuned"]
    assert len(unique_runs(tuned)) == 16 * 2 + 2 * 2 * 2
    assert {s.lr_factor for s in tuned if s.group == "cub200_lr_grid"} == {0.1, 1.0, 10.0}
    plain = derived_study_file(PAPER, tmp_path / "plain", smoke=False)
    assert load_study_config(plain).results_dir == (tmp_path / "plain").resolve()
    assert load_study_config(plain).train == original.train


def test_paper_yaml_has_lambda_sweeps_and_adaptive_arms_on_the_benchmarks():
    config = load_study_config(PAPER)
    assert config.train["so_reduction"] == "excess_mean"
    sweeps = {g.base["dataset"] for g in config.groups if "so_lambda" in g.sweep}
    assert sweeps == {"cub200", "cars196", "sop", "inshop"}
    arms = {g.base["dataset"]: g for g in config.groups if g.base.get("loss") == "adaptive_margin"}
    assert set(arms) == {"cub200", "cars196", "inshop"}
    for group in arms.values():
        assert len(group.seeds) == 3
        mappings = {v["overrides"]["loss.params"]["mapping"] for v in group.variants.values()}
        assert mappings == {"inverse", "matched_constant"}
    sources = {g.base["dataset"] for g in arms.values() for v in g.variants.values()
               if v["overrides"]["loss.params"].get("text_source") == "glove"}
    assert sources == {"cub200", "cars196"}
    # The SO groups record per-class train R@1 for the motivation claim.
    for group in config.groups:
        if group.name.endswith(("_so", "_lambda")):
            assert group.base["overrides"] == {"eval.train_class_recall": True}, group.name
    claims = {c.name: c for c in config.claims}
    assert claims["so_motivation"].kind == "correlation"
    assert claims["adaptive_text_source"].baseline == "adaptive_glove"
    assert len(unique_runs(expand_grid(config, skip_untuned=True))) == 56  # the preset cells
    # the tuned protocol (issue #19.7) on every group with tuned arms, 5 seeds
    tuned = {g.name for g in config.groups if "tuned" in g.protocols}
    assert tuned == {a.group for a in config.tuning.arms} | {"cub200_lr_grid"}
    assert all(len(config.group(g).protocol_seeds("tuned")) >= 5 for g in tuned
               if g != "cub200_lr_grid")
    assert claims["so_lr_robustness"].kind == "robustness"


def test_smoke_cli_lists_runs_and_fails_fast_without_data(tmp_path):
    listed = _cli("--config", str(PAPER), "--smoke", "--results-dir", str(tmp_path / "o"),
                  "--list-runs", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    # before the smoke searches, the tuned cells cannot be named: listed as not yet known
    assert "40 runs for 48 grid cells" in listed.stdout
    assert "not listed: the tuned cells of 16 search(es)" in listed.stdout
    empty = tmp_path / "nodata"
    empty.mkdir()
    failed = _cli("--config", str(PAPER), "--smoke", "--results-dir", str(tmp_path / "o"),
                  cwd=tmp_path, DML_DATA_ROOT=str(empty))
    assert failed.returncode == 3  # a data error (dml_study.errors.EXIT_DATA)
    assert "smoke check of the data root failed" in failed.stderr
    assert "CUB_200_2011" in failed.stderr
    assert not (tmp_path / "o" / "runs").exists()  # nothing trained


# ----------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_issue15_train_notebook_command_on_two_image_classes(tmp_path):
    """The exact command of issue #15: a 224-px DeiT at 32 px, preset m=4 > 2-image classes."""
    data = write_cars_fixture(tmp_path / "data", num_classes=8, images_per_class=2)
    out = tmp_path / "out.ipynb"
    result = subprocess.run(
        [sys.executable, "-m", "papermill", str(REPO / "notebooks" / "02_train.ipynb"),
         str(out), "-p", "dataset", "cars196", "-p", "backbone", "deit_tiny_patch16_224",
         "-p", "pretrained", "False", "-p", "image_size", "32", "-p", "epochs", "1",
         "-p", "batch_size", "16"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
        env=_env(DML_DATA_ROOT=str(data), DML_RESULTS_DIR=str(tmp_path / "results")),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "results" / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "metrics.json").is_file()
    assert "m_per_class=4 is larger than the smallest" in out.read_text()


@pytest.mark.slow
def test_paper_smoke_study_finishes_on_all_four_official_layouts(tmp_path):
    data = _all_fixtures(tmp_path / "data")
    out = tmp_path / "out"
    result = _cli("--config", str(PAPER), "--smoke", "--results-dir", str(out), "--quiet",
                  cwd=tmp_path, DML_DATA_ROOT=str(data))
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    index = out / "paper" / "index.html"
    assert index.is_file()
    assert SMOKE_TITLE in index.read_text(encoding="utf-8")
    for notebook in ("01_data", "03_ablations", "04_proxy_analysis", "05_results"):
        assert (out / "paper" / f"{notebook}.ipynb").is_file(), notebook
    finished = [p for p in (out / "runs").iterdir() if (p / "metrics.json").is_file()]
    assert len(finished) == 40
    claims = json.loads((out / "paper" / "claims.json").read_text())
    motivation = [r for r in claims if r["name"] == "so_motivation"]
    assert {r["dataset"] for r in motivation} == {"cub200", "cars196", "sop", "inshop"}
    text = [r for r in claims if r["name"] == "adaptive_text_source"]
    assert {r["dataset"] for r in text} == {"cub200", "cars196"}
    # Tiny smoke data make every training class retrieve perfectly: rho is then undefined
    # and the row says so (the real study has a spread).
    assert all(r["seeds"] <= 2 and r["verdict"] in VERDICTS for r in motivation)
    assert all(r["seeds"] == 2 and r["verdict"] in VERDICTS for r in text)


def test_smoke_searches_use_at_most_two_validation_folds():
    """Two folds: the fixtures' 8 training classes leave 4 fit classes, one smoke batch's."""
    from dml_study.study.plan.smoke import SMOKE_VALIDATION_FOLDS, smoke_tuning_dict

    tiny = smoke_tuning_dict({"validation": {"folds": 4, "fold_ids": [0, 1, 2, 3], "seed": 0}})
    assert tiny["validation"] == {"folds": SMOKE_VALIDATION_FOLDS, "fold_ids": [0], "seed": 0}
    assert smoke_tuning_dict({"validation": {"folds": 2}})["validation"]["folds"] == 2
