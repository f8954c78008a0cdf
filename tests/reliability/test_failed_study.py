"""A failed study never overwrites the previous report and always names notebook and cell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_helpers import subprocess_env, write_notebook, write_study

from dml_study.study.pipeline.runner import publish_study_dir, run_study, stage_study_dir
from dml_study.study.plan.config import load_study_config
from dml_study.study.plan.grid import expand_grid
from dml_study.study.tiers.notebooks import NotebookExecutionError


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _study(tmp_path: Path, fail: bool, **overrides) -> Path:
    notebooks = tmp_path / "notebooks"
    write_notebook(notebooks / "a.ipynb", "study_config = None", "print('a ran')")
    body = "raise RuntimeError('boom in b')" if fail else "print('b ran')"
    write_notebook(notebooks / "b.ipynb", "study_config = None", "x = 1", body)
    return write_study(tmp_path, notebooks=["a.ipynb", "b.ipynb"], **{"groups": [], **overrides})


def test_failed_rerun_leaves_the_previous_report_untouched(tmp_path: Path):
    config = load_study_config(_study(tmp_path, fail=False))
    run_study(config, progress=False)
    study = config.study_dir
    before = _snapshot(study)
    assert {"a.ipynb", "b.ipynb", "a.html", "b.html", "index.html", "summary.json",
            "README.md"} <= set(before)

    config = load_study_config(_study(tmp_path, fail=True))
    with pytest.raises(NotebookExecutionError) as info:
        run_study(config, progress=False)
    assert info.value.notebook.name == "b.ipynb" and info.value.cell_index == 2
    assert "boom in b" in str(info.value)
    assert _snapshot(study) == before  # the committed study is not overwritten

    # The failed attempt is kept for inspection, and its own index agrees with its files.
    staging = tmp_path / "results" / "tiny.staging"
    assert info.value.output == staging / "b.ipynb"
    assert "boom in b" in (staging / "b.ipynb").read_text()
    assert "| failed |" in (staging / "README.md").read_text()

    # A successful run replaces the report and removes the staging directory.
    config = load_study_config(_study(tmp_path, fail=False, title="second"))
    run_study(config, progress=False)
    assert not staging.exists()
    assert "second" in (study / "README.md").read_text()


def test_headline_errors_do_not_mask_the_notebook_error(tmp_path: Path):
    """The issue's case: a value error in ``train`` breaks the headline after a failure."""
    path = _study(tmp_path, fail=True, groups=[{
        "name": "so_vs_none", "description": "", "seeds": [0],
        "variants": {"no_so": {"so_lambda": 0.0}, "so": {"so_lambda": 0.1}}}],
        train={"dataset": "cub200", "epochs": 0})
    config = load_study_config(path)
    lines: list[str] = []

    class Stream:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    with pytest.raises(NotebookExecutionError, match=r"b\.ipynb failed in cell 2"):
        run_study(config, html=False, stream=Stream())  # type: ignore[arg-type]
    assert not config.study_dir.exists()  # nothing claims success
    assert any("left untouched" in line for line in lines)


def test_cli_exits_nonzero_naming_notebook_and_cell(tmp_path: Path):
    path = _study(tmp_path, fail=True)
    out = subprocess.run([sys.executable, "-m", "dml_study.study", "--config", str(path),
                          "--no-html", "--quiet"], capture_output=True, text=True,
                         env=subprocess_env(), timeout=600)
    assert out.returncode == 1
    assert "b.ipynb failed in cell 2" in out.stderr and "boom in b" in out.stderr


def test_publish_replaces_and_a_crash_between_renames_is_recovered(tmp_path: Path):
    config = load_study_config(_study(tmp_path, fail=False))
    final = config.study_dir
    final.mkdir(parents=True)
    (final / "old.txt").write_text("old")
    staging = stage_study_dir(config)
    assert (staging / "old.txt").read_text() == "old"  # a copy: only= runs keep the rest
    (staging / "new.txt").write_text("new")
    publish_study_dir(staging, final)
    assert sorted(os.listdir(final)) == ["new.txt", "old.txt"] and not staging.exists()

    # Killed after the first rename of a later publish: the next run restores the report.
    os.replace(final, final.with_name("tiny.previous"))
    stage_study_dir(config)
    assert (final / "new.txt").is_file()


def test_a_full_regeneration_stages_only_the_run_records_and_tuning(tmp_path: Path):
    groups = [{"name": "g", "description": "one cell", "seeds": [0],
               "variants": {"no_so": {"so_lambda": 0.0}}}]
    config = load_study_config(_study(tmp_path, fail=False, groups=groups,
                                      headline={"group": "g", "baseline": "no_so",
                                                "treatment": "no_so"}))
    final = config.study_dir
    (final / "runs").mkdir(parents=True)
    current = expand_grid(config)[0].run_name
    (final / "runs" / f"{current}.log").write_text("log of the previous regeneration")
    (final / "runs" / f"{current}.ipynb").write_text("{}")
    # a run renamed since (its settings changed): its records go with the old pages
    (final / "runs" / "old-run-s0-0123abcd.log").write_text("a run no longer in the grid")
    (final / "runs" / "old-run-s0-0123abcd.html").write_text("<html>")
    (final / "launch.json").write_text(json.dumps({"study": config.name, "runs": {
        current: {"status": "trained"}, "old-run-s0-0123abcd": {"status": "trained"}}}))
    (final / "tuning").mkdir()
    (final / "tuning" / "chosen.json").write_text("{}")
    (final / "tuning-2x").mkdir()  # the budget check's searches (make tune --budget-check)
    (final / "tuning-2x" / "chosen.json").write_text("{}")
    (final / "tuning-old").mkdir()  # not a budget check's name: a previous output
    (final / "figures").mkdir()
    (final / "figures" / "gone.png").write_bytes(b"png")
    (final / "claims.json").write_text("[]")
    staging = stage_study_dir(config, full=True)
    assert sorted(os.listdir(staging)) == ["launch.json", "runs", "tuning", "tuning-2x"]
    assert sorted(os.listdir(staging / "runs")) == [f"{current}.ipynb", f"{current}.log"]
    assert list(json.loads((staging / "launch.json").read_text())["runs"]) == [current]
    staging = stage_study_dir(config)  # a partial re-run (only=) keeps every page
    assert sorted(os.listdir(staging)) == ["claims.json", "figures", "launch.json", "runs",
                                           "tuning", "tuning-2x", "tuning-old"]
    assert len(os.listdir(staging / "runs")) == 4


def test_a_run_log_is_replaced_by_a_fresh_run_and_continued_by_a_resumed_one(tmp_path: Path):
    from dml_study.study.launch.task import RunTask
    from dml_study.study.launch.worker import run_worker

    log = tmp_path / "study" / "runs" / "r.log"
    log.parent.mkdir(parents=True)
    log.write_text("committed output of a previous regeneration\n")
    task = RunTask(run_name="r", label="g/v, seed 0", notebook="missing.ipynb",
                   executed=str(log.with_suffix(".ipynb")), log=str(log), parameters={},
                   results_dir=str(tmp_path / "results"), cwd=str(tmp_path))
    run_worker(task)  # fails (no notebook), but writes its own log
    assert "previous regeneration" not in log.read_text()
    checkpoint = tmp_path / "results" / "runs" / "r" / "checkpoints" / "last.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"state")
    first = log.read_text()
    run_worker(task)
    text = log.read_text()
    assert text.startswith(first) and "resuming r from its checkpoint" in text
