"""Run a whole study: execute its notebooks in order, render them, write the index.

``run_study`` executes every notebook of the study with papermill (``03_ablations``
in turn executes ``02_train`` once per missing grid run), renders each executed notebook
to HTML with nbconvert, and writes ``results/<study>/{index.html, README.md,
summary.json}``. Progress is printed as plain lines. A failing notebook stops the study:
its executed copy (with the traceback in the failing cell) is kept, the index records the
failure, and :class:`~dml_study.study.notebooks.NotebookExecutionError` names the
notebook and cell.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from dml_study.study.config import StudyConfig
from dml_study.study.notebooks import NotebookExecutionError, execute_notebook, render_html
from dml_study.study.report import NotebookRecord, StudyRecord, headline, write_reports


def notebook_parameters(config: StudyConfig, notebook: str) -> dict[str, object]:
    """Parameters a study notebook is executed with: the study file, plus overrides."""
    if config.source is None:
        raise ValueError("run_study needs a config loaded from a file (load_study_config)")
    return {"study_config": str(config.source), **config.notebook_parameters.get(notebook, {})}


def run_study(
    config: StudyConfig,
    only: Sequence[str] | None = None,
    *,
    html: bool | None = None,
    progress: bool = True,
    stream: TextIO | None = None,
) -> StudyRecord:
    """Execute the study's notebooks (or the ``only`` subset) and write its report.

    Returns the :class:`StudyRecord` also written to ``summary.json``. Raises
    :class:`NotebookExecutionError` after recording the failure in the index.
    """
    stream = stream or sys.stdout
    html = config.execution.html if html is None else html
    notebooks = list(config.notebooks)
    if only:
        unknown = sorted(set(only) - set(notebooks))
        if unknown:
            raise ValueError(f"unknown notebook(s) {unknown}; study notebooks: {notebooks}")
        notebooks = [nb for nb in notebooks if nb in only]
    for notebook in notebooks:
        if not config.notebook_path(notebook).is_file():
            raise FileNotFoundError(f"study notebook {config.notebook_path(notebook)} is missing")
    record = StudyRecord(name=config.name, title=config.title, environment=_environment())
    config.study_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def say(message: str) -> None:
        if progress:
            elapsed = time.perf_counter() - started
            print(f"[study {config.name} | {elapsed:6.0f} s] {message}", file=stream, flush=True)

    say(f"{len(notebooks)} notebook(s) -> {config.study_dir}")
    try:
        for position, notebook in enumerate(notebooks, start=1):
            say(f"({position}/{len(notebooks)}) executing {notebook}")
            nb_record = _execute_one(config, notebook, html, stream if progress else None)
            record.notebooks.append(nb_record)
            if nb_record.error is not None:
                # Stop the study; the index written below records which cell broke.
                say(f"({position}/{len(notebooks)}) {notebook} FAILED")
                raise nb_record.exception
            say(f"({position}/{len(notebooks)}) {notebook} done in {nb_record.seconds:.0f} s")
    finally:
        record.seconds = time.perf_counter() - started
        record.headline = headline(config)
        _readme, index = write_reports(config, record, html=html)
    say(f"finished in {record.seconds / 60:.1f} min; report: {index}")
    return record


def _execute_one(
    config: StudyConfig, notebook: str, html: bool, stdout: TextIO | None
) -> NotebookRecord:
    output = config.study_dir / notebook
    started = time.perf_counter()
    stream_output = stdout if config.execution.stream_output else None
    try:
        execute_notebook(
            config.notebook_path(notebook),
            output,
            notebook_parameters(config, notebook),
            kernel_name=config.execution.kernel_name,
            cwd=config.root,  # relative data paths (./data) resolve as on the command line
            cell_timeout=config.execution.cell_timeout,
            stdout=stream_output,
        )
    except NotebookExecutionError as exc:
        seconds = time.perf_counter() - started
        failed = NotebookRecord(notebook, "failed", seconds, _render(output, html), str(exc))
        failed.exception = exc
        return failed
    seconds = time.perf_counter() - started
    return NotebookRecord(notebook, "ok", seconds, _render(output, html))


def _render(executed: Path, html: bool) -> str | None:
    if not html or not executed.is_file():
        return None
    return render_html(executed).name


def _environment() -> dict[str, object]:
    from dml_study.env import environment_report

    report = environment_report()
    return {
        "git_commit": report.get("git_commit"),
        "device": report.get("device"),
        "torch": report.get("packages", {}).get("torch"),
        "threads": report.get("torch_threads"),
        "platform": report.get("platform"),
        "python": report.get("python"),
    }
