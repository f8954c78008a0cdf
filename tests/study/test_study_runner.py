"""The study runner end to end: notebooks in order, HTML, index, reuse, failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from fixture_datasets import write_cub_fixture
from study_helpers import write_notebook, write_study

from dml_study.study.__main__ import main
from dml_study.study.launch.launcher import run_grid
from dml_study.study.pipeline.runner import run_study
from dml_study.study.plan.config import load_study_config
from dml_study.study.plan.grid import expand_grid
from dml_study.study.tiers.notebooks import NotebookExecutionError

ALL = ["01_data.ipynb", "03_ablations.ipynb", "04_proxy_analysis.ipynb", "05_results.ipynb"]


@pytest.mark.slow
def test_study_runs_every_notebook_on_a_two_cell_grid_and_reuses_runs(fake_project: Path):
    """All four study notebooks execute (01 on a CUB fixture, 02 faked), then a re-run reuses."""
    data_root = write_cub_fixture(fake_project / "data", num_classes=6, images_per_class=4)
    config = load_study_config(write_study(
        fake_project, notebooks=ALL, data_root=str(data_root),
        analysis={"seed": 0, "tsne_max_points": 40, "tsne_perplexity": 5.0}))
    record = run_study(config, progress=False)

    assert [n.notebook for n in record.notebooks] == ALL
    assert all(n.status == "ok" for n in record.notebooks)
    study = config.study_dir
    for name in ALL:
        executed = nbformat.read(study / name, as_version=4)
        # Passed relative to the project root (the kernels' working directory): results/
        # holds no absolute path of the machine that ran the study.
        assert executed.metadata["papermill"]["parameters"]["study_config"] == "studies/tiny.yaml"
        html = (study / name).with_suffix(".html")
        assert html.is_file()
        if name != "05_results.ipynb":  # 05 is tables only
            assert "<img" in html.read_text()
    # Two grid cells -> two runs, trained through the (fake) training notebook.
    specs = expand_grid(config)
    for spec in specs:
        assert (config.runs_dir / spec.run_name / "metrics.json").is_file()
        assert (config.executed_runs_dir / f"{spec.run_name}.ipynb").is_file()
    # The headline in the index: fake SO adds exactly 10 points of R@1.
    summary = json.loads((study / "summary.json").read_text())
    r1 = summary["headline"]["metrics"]["R@1"]
    assert r1["mean_difference"] == pytest.approx(0.1) and r1["n"] == 1
    readme = (study / "README.md").read_text()
    assert "| R@1 | 50.0 | 60.0 | +10.0 |" in readme
    index = (study / "index.html").read_text()
    assert "03_ablations.html" in index and "+10.0" in index

    # Re-running trains nothing: every run is reused and its files are untouched.
    stamps = {s.run_name: os.stat(config.runs_dir / s.run_name / "metrics.json").st_mtime_ns
              for s in specs}
    outcomes = run_grid(config, progress=False)
    assert {o.status for o in outcomes} == {"reused"}
    assert stamps == {s.run_name: os.stat(config.runs_dir / s.run_name / "metrics.json")
                      .st_mtime_ns for s in specs}


def test_failing_notebook_stops_the_study_and_is_recorded(tmp_path: Path):
    notebooks = tmp_path / "notebooks"
    write_notebook(notebooks / "a.ipynb", "study_config = None", "x = 1")
    write_notebook(notebooks / "b.ipynb", "study_config = None",
                   "import math", "value = math.sqrt(-1)  # domain error")
    write_notebook(notebooks / "c.ipynb", "study_config = None", "open('ran_c', 'w')")
    config = load_study_config(write_study(
        tmp_path, notebooks=["a.ipynb", "b.ipynb", "c.ipynb"], groups=[]))
    with pytest.raises(NotebookExecutionError) as info:
        run_study(config, html=False, progress=False)
    error = info.value
    assert error.notebook.name == "b.ipynb" and error.cell_index == 2
    assert error.first_line == "value = math.sqrt(-1)  # domain error"
    assert not (notebooks / "ran_c").exists()  # the study stopped at b
    # The failed attempt stays in the staging directory; results/<study>/ is not touched.
    staging = config.results_dir / f"{config.name}.staging"
    assert not config.study_dir.exists()
    assert (staging / "b.ipynb").is_file()  # executed copy kept with the error
    summary = json.loads((staging / "summary.json").read_text())
    assert [(n["notebook"], n["status"]) for n in summary["notebooks"]] == [
        ("a.ipynb", "ok"), ("b.ipynb", "failed")]
    assert "cell 2" in (staging / "README.md").read_text()


@pytest.mark.slow
def test_cli_exits_nonzero_naming_the_failing_cell(tmp_path: Path):
    write_notebook(tmp_path / "notebooks" / "b.ipynb", "study_config = None",
                   "raise RuntimeError('boom')")
    path = write_study(tmp_path, notebooks=["b.ipynb"], groups=[])
    out = subprocess.run(
        [sys.executable, "-m", "dml_study.study", "--config", str(path), "--no-html"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 1
    assert "b.ipynb failed in cell 1" in out.stderr and "RuntimeError: boom" in out.stderr
    assert "(1/1) executing b.ipynb" in out.stdout


def test_cli_lists_runs_and_rejects_bad_config(tmp_path: Path, capsys):
    path = write_study(tmp_path)
    assert main(["--config", str(path), "--list-runs"]) == 0
    out = capsys.readouterr().out
    assert "2 runs for 2 grid cells" in out
    assert sum(" pending " in line for line in out.splitlines()) == 2
    bad = write_study(tmp_path, colour="blue")
    assert main(["--config", str(bad)]) == 2
    assert "'colour'" in capsys.readouterr().err
