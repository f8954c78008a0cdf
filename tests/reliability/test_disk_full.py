"""A full disk (``ENOSPC``) during a checkpoint, ``metrics.json`` and a report page.

Real file systems where possible: a small tmpfs (root only; skipped with the reason
otherwise) is filled with a filler file, and freeing it lets a re-run resume. The
``metrics.json`` case and a second report-page case inject the fault through
``$DML_STUDY_INJECT_ENOSPC`` (read by :mod:`dml_study.atomic_io`), which needs no root.
Each checks: one ``error:`` line with the file, bytes needed and free and the resume step;
no temporary file left; nothing claiming success; and a re-run that finishes.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
from reliability_helpers import REFERENCE_EPOCHS, one_error_line, run_train_cli, temp_files

from dml_study.atomic_io import INJECT_ENOSPC_ENV
from dml_study.errors import EXIT_DISK_FULL, EXIT_NOT_WRITABLE, DiskFullError
from dml_study.training import StopRequested, train
from dml_study.training.checkpoint import read_checkpoint
from dml_study.training.run_dir import RunDirectory

RETRIEVAL_KEYS = ("R@1", "R@2", "R@4", "MAP@R", "RP", "NMI")
_SIZES = re.compile(r"needs ~([\d.]+) MB, ([\d.]+) MB free on (\S+) \(tmpfs\)")


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_then_free_space_and_resume(
    tmpfs, cub_root: Path, tiny_config, reference_run
):
    fs = tmpfs(256 * 10**6)
    results = fs.path / "results"
    recipe = {"run_name": "full", "epochs": REFERENCE_EPOCHS, "checkpoint_every_steps": 1}
    with pytest.raises(StopRequested):  # steps 1-2 written: last.pt = 2, prev.pt = 1
        train(tiny_config(**recipe, results_dir=str(results), stop_after_steps=2))
    rd = RunDirectory.for_run(results, "full")
    size = rd.last_checkpoint.stat().st_size
    filler = fs.fill(leave_free=size // 2)  # step 3's checkpoint cannot be written

    out = run_train_cli(cub_root, results, **recipe)
    assert out.returncode == EXIT_DISK_FULL, out.stderr
    line = one_error_line(out.stderr, f"disk full writing {rd.last_checkpoint}: ",
                          "free space and re-run the same command: it resumes from step 2",
                          "in all: last.pt, prev.pt and the one being written")
    needed, free, mount = _SIZES.search(line).groups()
    assert float(needed) == pytest.approx(size / 1e6, abs=0.15)  # step 3's ≈ step 2's size
    total = float(re.search(r"checkpoints need ~([\d.]+) MB in all", line).group(1))
    assert total == pytest.approx(3 * float(needed), abs=0.15)
    assert float(free) == pytest.approx(fs.free() / 1e6, abs=0.15)
    assert mount == str(fs.path)
    # Nothing half-written, nothing claiming success, both checkpoints intact.
    assert temp_files(results) == []
    assert not rd.metrics.exists() and '"R@1"' not in out.stdout
    assert read_checkpoint(rd.last_checkpoint)["global_step"] == 2
    assert read_checkpoint(rd.prev_checkpoint)["global_step"] == 1

    filler.unlink()  # free space, re-run: resumes from step 2 and ends as if never stopped
    resumed = train(tiny_config(**recipe, results_dir=str(results)))
    assert resumed.resumed and rd.metrics.is_file()
    for key in RETRIEVAL_KEYS:
        assert resumed.metrics[key] == reference_run.metrics[key], key
    np.testing.assert_array_equal(np.load(rd.proxies), np.load(reference_run.run_dir.proxies))


@pytest.mark.slow
def test_disk_full_writing_metrics_json_claims_nothing_and_a_rerun_finishes(
    cub_root: Path, tmp_path: Path, tiny_config
):
    results = tmp_path / "results"
    rd = RunDirectory.for_run(results, "m")
    out = run_train_cli(cub_root, results, env={INJECT_ENOSPC_ENV: "*/metrics.json"},
                        run_name="m", epochs=1)
    assert out.returncode == EXIT_DISK_FULL, out.stderr
    one_error_line(out.stderr, f"disk full writing {rd.metrics}: needs ~",
                   "it resumes from step 5", f"injected by ${INJECT_ENOSPC_ENV}")
    assert not rd.metrics.exists() and temp_files(results) == []
    assert '"R@1"' not in out.stdout  # no metrics printed as if the run had finished

    # The re-run resumes after the last epoch, evaluates again and writes metrics.json.
    resumed = train(tiny_config(run_name="m", epochs=1, results_dir=str(results)))
    assert resumed.resumed
    history = rd.read_json("history.json")
    assert [resumed.metrics[k] for k in RETRIEVAL_KEYS] == [history[-1][k]
                                                             for k in RETRIEVAL_KEYS]
    assert rd.read_json("metrics.json")["R@1"] == resumed.metrics["R@1"]


def _executed_notebook(path: Path, text_bytes: int) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Results\n\n" + "word " * (text_bytes // 5))]
    nbformat.write(nb, path)
    return path


@pytest.mark.parametrize("how", ["tmpfs", "injected"])
def test_disk_full_writing_a_report_page_keeps_the_previous_page(
    how: str, tmpfs, tmp_path: Path, monkeypatch
):
    from dml_study.study.report.pages import render_notebook

    notebook = _executed_notebook(tmp_path / "01_results.ipynb", 300_000)
    expected = render_notebook(notebook, tmp_path / "reference.html").stat().st_size
    if how == "tmpfs":
        fs = tmpfs(2 * 10**6)
        site = fs.path / "site"
    else:
        site = tmp_path / "site"
        monkeypatch.setenv(INJECT_ENOSPC_ENV, "*.html")
    site.mkdir()
    page = site / "01_results.html"
    page.write_text("<p>the previous report</p>\n")
    if how == "tmpfs":
        fs.fill(leave_free=expected // 3)

    with pytest.raises(DiskFullError) as info:
        render_notebook(notebook, page)
    message = str(info.value)
    assert message.startswith(f"disk full writing {page}: needs ~")
    needed = float(re.search(r"needs ~([\d.]+) kB", message).group(1)) * 1e3
    assert needed == pytest.approx(expected, rel=0.01)
    assert page.read_text() == "<p>the previous report</p>\n"  # untouched
    assert temp_files(site) == []


@pytest.mark.slow
def test_read_only_results_directory_is_one_line(tmpfs, cub_root: Path):
    fs = tmpfs(10**6, options="ro")
    out = run_train_cli(cub_root, fs.path / "results", run_name="ro", epochs=1)
    assert out.returncode == EXIT_NOT_WRITABLE, out.stderr
    one_error_line(out.stderr, f"read-only file system: {fs.path / 'results'}", "--results_dir")
