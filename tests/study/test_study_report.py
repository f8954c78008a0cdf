"""The study index: headline numbers computed from finished runs, README and HTML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_study

from dml_study.study.config import load_study_config
from dml_study.study.grid import expand_grid
from dml_study.study.report import (
    NotebookRecord,
    StudyRecord,
    headline,
    headline_table,
    runs_table,
    write_reports,
)

R1 = {("no_so", 0): 0.50, ("no_so", 1): 0.52, ("no_so", 2): 0.54,
      ("so", 0): 0.55, ("so", 1): 0.56, ("so", 2): 0.60}


def _config(tmp_path: Path):
    groups = [{"name": "so_vs_none", "seeds": [0, 1, 2],
               "variants": {"no_so": {"so_lambda": 0.0}, "so": {"so_lambda": 0.1}}}]
    config = load_study_config(write_study(tmp_path, groups=groups))
    for spec in expand_grid(config):
        run = config.runs_dir / spec.run_name
        run.mkdir(parents=True)
        r1 = R1[(spec.variant, spec.seed)]
        (run / "metrics.json").write_text(json.dumps({"R@1": r1, "MAP@R": r1 / 2}))
    return config


def test_headline_is_the_paired_comparison_of_the_finished_runs(tmp_path: Path):
    summary = headline(_config(tmp_path))
    r1 = summary["metrics"]["R@1"]
    assert r1["n"] == 3
    assert r1["baseline_mean"] == pytest.approx(0.52)
    assert r1["treatment_mean"] == pytest.approx(0.57)
    assert r1["mean_difference"] == pytest.approx(0.05)
    assert r1["bootstrap_ci_low"] <= 0.05 <= r1["bootstrap_ci_high"]
    table = headline_table(summary)
    assert table.loc["R@1", "no_so (mean ± std)"] == "52.0 ± 2.0"
    assert table.loc["R@1", "Δ (pp)"] == "+5.0"
    assert table.loc["MAP@R", "so (mean ± std)"] == "28.5 ± 1.3"


def test_headline_is_none_without_runs(tmp_path: Path):
    config = load_study_config(write_study(tmp_path))
    assert headline(config) is None
    assert runs_table(config)["R@1"].tolist() == ["missing", "missing"]


def test_reports_link_notebooks_and_show_the_headline(tmp_path: Path):
    config = _config(tmp_path)
    record = StudyRecord(
        name="tiny", title="tiny study", seconds=125.0, headline=headline(config),
        notebooks=[NotebookRecord("03_ablations.ipynb", "ok", 100.0, "03_ablations.html"),
                   NotebookRecord("04_proxy_analysis.ipynb", "failed", 5.0, None,
                                  error="04_proxy_analysis.ipynb failed in cell 3")],
        environment={"git_commit": "abc", "device": "cpu", "torch": "2", "threads": 2},
    )
    readme, index = write_reports(config, record)
    text = readme.read_text()
    assert "| R@1 | 52.0 ± 2.0 | 57.0 ± 2.6 | +5.0 |" in text
    assert "[03_ablations.html](03_ablations.html)" in text
    assert "failed in cell 3" in text and "Wall time: 2.1 min" in text
    # Every run is listed with the grid cells it serves and a link to its executed notebook.
    runs = [line for line in text.splitlines() if line.startswith("| [cub200")]
    assert len(runs) == 6 and all("(runs/" in line for line in runs)
    assert any("so_vs_none/so | 56.0 | 28.0 |" in line for line in runs)
    html = index.read_text()
    assert "href='03_ablations.html'" in html and "52.0 ± 2.0" in html
    summary = json.loads((config.study_dir / "summary.json").read_text())
    assert summary["notebooks"][1]["status"] == "failed"
