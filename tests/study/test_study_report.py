"""The study index: headline numbers computed from finished runs, README and HTML."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from PIL import Image
from study_helpers import write_study

from dml_study.study.plan.config import load_study_config
from dml_study.study.plan.grid import expand_grid
from dml_study.study.report.index import (
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
    table = headline_table(summary).set_index("metric")
    assert table.loc["R@1", "no_so (%, mean ± std)"] == "52.0 ± 2.0"
    assert table.loc["R@1", "Δ (pp)"] == "+5.0"
    assert table.loc["MAP@R", "so (%, mean ± std)"] == "28.5 ± 1.3"
    assert table.loc["R@1", "95% t CI (pp)"].startswith("[")


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
    assert "[03_ablations](03_ablations.html)" in text
    assert "failed in cell 3" in text and "Wall time: 2.1 min" in text
    # Every run is listed with the grid cells it serves; none was executed by this study
    # (no runs/*.ipynb), so no run links to a page that does not exist.
    runs = [line for line in text.splitlines() if line.startswith("| cub200")]
    assert len(runs) == 6 and not any("(runs/" in line for line in runs)
    assert any("so_vs_none/so | 56.0 | 28.0 |" in line for line in runs)
    html = index.read_text()
    assert "href='03_ablations.html'" in html and "52.0 ± 2.0" in html
    # A table, not a pandas frame: no index row, no empty header cell.
    assert "<th></th>" not in html and "<thead><tr><th class='text'>metric</th>" in html
    summary = json.loads((config.study_dir / "summary.json").read_text())
    assert summary["notebooks"][1]["status"] == "failed"


def _write_run_notebook(config, name: str, text: str) -> None:
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_markdown_cell(text)]
    config.executed_runs_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(book, config.executed_runs_dir / f"{name}.ipynb")


def test_index_shows_claims_then_figures_then_headline_and_links_run_pages(tmp_path: Path):
    config = _config(tmp_path)
    run = expand_grid(config)[0].run_name
    _write_run_notebook(config, run, f"run written at {tmp_path}/results/runs/{run}")
    out = config.study_dir
    (out / "claims.json").write_text(json.dumps([
        {"claim": "SO raises R@1", "paper": "SO", "dataset": "cub200", "regime": "C<d",
         "tier": "frozen", "metric": "R@1", "unit": "pp", "effect": 5.0, "ci_low": 1.04,
         "ci_high": 8.96, "seeds": 3, "verdict": "supported", "note": "tiny"},
        {"claim": "faster", "paper": "adaptive", "dataset": "cub200", "regime": "C>>d",
         "tier": "fine-tuned", "metric": "steps to 90%", "unit": "steps", "effect": -120.0,
         "ci_low": -250.0, "ci_high": 10.0, "seeds": 3, "verdict": "inconclusive"}]))
    (out / "figures").mkdir()
    Image.new("RGB", (4, 3), "white").save(out / "figures" / "a.png")
    (out / "figures" / "index.json").write_text(json.dumps(
        [{"file": "figures/a.png", "title": "Headline per seed", "caption": "R@1 (%)"}]))
    record = StudyRecord(name="tiny", title="tiny study", headline=headline(config),
                         environment={"git_commit": "abc"})
    readme, index = write_reports(config, record)
    html = index.read_text()
    order = [html.index(s) for s in ("<h2>Claims", "<h2>Figures", "<h2>Headline",
                                     "<h2>Training runs")]
    assert order == sorted(order)
    # The scorecard: one row per claim, a column per dataset × tier, digits from the CI.
    assert "<span class='estimate'>+5.0</span> <span class='ci'>[+1.0, +9.0]</span>" in html
    assert "<span class='estimate'>−120</span> <span class='ci'>[−250, +10]</span>" in html
    assert "class='estimate-cell verdict-supported text'" in html
    assert "cub200 · frozen<br>C&lt;d" in html and "cub200 · fine-tuned<br>C&gt;&gt;d" in html
    assert "<dt>SO raises R@1</dt><dd>SO raises R@1. Note: tiny</dd>" in html
    assert "href='claims.csv'" in html and (out / "claims.csv").is_file()
    assert "<img src='figures/a.png' alt='Headline per seed'>" in html
    assert f"href='runs/{run}.html'" in html
    page = (out / "runs" / f"{run}.html").read_text()
    assert "href='../index.html'" in page and "<script" not in page
    # The executed notebook and its page hold no absolute path of this machine.
    assert str(tmp_path) not in page
    assert str(tmp_path) not in (out / "runs" / f"{run}.ipynb").read_text()
    text = readme.read_text()
    assert text.index("## Claims") < text.index("![Headline per seed](figures/a.png)")
    assert text.index("## Figures") < text.index("## Headline")
    assert f"[{run}](runs/{run}.html)" in text
    assert ("| claim | paper | unit | cub200 · frozen · C\\<d | cub200 · fine-tuned · C>>d |"
            in text)
    assert "| SO raises R@1 | SO | pp | +5.0 [+1.0, +9.0] ✓ supported | – |" in text


@pytest.mark.parametrize(("name", "content", "message"), [
    ("claims.json", "{not json", "not valid JSON"),
    ("claims.json", json.dumps([{"claim": "x"}]), "claim 0 lacks paper"),
    ("claims.json", json.dumps([{**dict.fromkeys(
        ("claim", "paper", "dataset", "regime", "tier", "metric", "unit"), "x"),
        "effect": 1.0, "ci_low": 0.0, "ci_high": 2.0, "seeds": 3, "verdict": "maybe"}]),
     "verdict 'maybe'"),
    ("figures/index.json", json.dumps([{"file": "figures/none.png", "title": "t"}]),
     "does not exist"),
    ("figures/index.json", json.dumps([{"file": "/etc/x.png", "title": "t"}]),
     "must be relative"),
])
def test_malformed_claims_or_figures_are_clear_errors(tmp_path: Path, name, content, message):
    config = _config(tmp_path)
    path = config.study_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        write_reports(config, StudyRecord(name="tiny", title="t"))


def test_index_still_links_notebooks_executed_by_an_earlier_run(tmp_path: Path):
    config = load_study_config(write_study(
        tmp_path, notebooks=["03_ablations.ipynb", "05_results.ipynb"]))
    out = config.study_dir
    out.mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(), out / "03_ablations.ipynb")
    record = StudyRecord(name="tiny", title="t",
                         notebooks=[NotebookRecord("05_results.ipynb", "ok", 2.0, None)])
    readme, _index = write_reports(config, record)
    text = readme.read_text()
    assert "| 05_results.ipynb | ok | 2 s | – |" in text
    assert ("| [03_ablations](03_ablations.html) | earlier run | – | "
            "[03_ablations.ipynb](03_ablations.ipynb) |") in text


def test_report_is_rendered_again_from_disk_without_executing(tmp_path: Path, capsys):
    from dml_study.study.report.index import main

    config = _config(tmp_path)
    with pytest.raises(FileNotFoundError, match="run the study first"):
        main(["--config", str(config.source)])
    write_reports(config, StudyRecord(
        name="tiny", title="tiny study", seconds=60.0,
        notebooks=[NotebookRecord("03_ablations.ipynb", "ok", 50.0, None)]))
    (config.study_dir / "index.html").unlink()
    assert main(["--config", str(config.source)]) == 0
    html = (config.study_dir / "index.html").read_text()
    assert "52.0 ± 2.0" in html and "Wall time: 1.0 min" in html and "50 s" in html


def test_prune_stale_runs_removes_only_runs_outside_the_grid(tmp_path):
    from dml_study.study.plan.grid import expand_grid, unique_runs
    from dml_study.study.report.index import prune_stale_runs

    config = load_study_config(write_study(tmp_path))
    runs = config.study_dir / "runs"
    runs.mkdir(parents=True)
    current = unique_runs(expand_grid(config))[0].run_name
    keep = [runs / f"{current}.{ext}" for ext in ("ipynb", "html", "log")]
    stale = [runs / f"old-run-1234abcd.{ext}" for ext in ("ipynb", "html", "log")]
    other = runs / "notes.txt"
    for path in (*keep, *stale, other):
        path.write_text("x")
    assert prune_stale_runs(config) == sorted(stale)
    assert all(p.exists() for p in (*keep, other)) and not any(p.exists() for p in stale)
