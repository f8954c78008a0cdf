"""Run a whole study: train the grid, execute its notebooks in order, render, write the index.

``run_study`` first trains every missing run of the ablation grid through a launcher
(:mod:`dml_study.study.launch.launcher`: ``local`` with ``max_parallel`` runs at once, or
``slurm``), then executes every notebook of the study with papermill (``03_ablations``'s
training cell finds every run finished), renders each executed notebook to HTML with
nbconvert, and writes ``results/<study>/{index.html, README.md, summary.json}``. Progress
is printed as plain lines.

Failures: failed grid runs do not stop the other runs; when the grid is done the study
stops before the notebooks, the index lists every failed run, and
:class:`~dml_study.study.launch.launcher.GridFailedError` names each with its executed notebook
and traceback.
``wait=False`` returns after submitting the grid (SLURM); ``collect=True`` trains nothing
and renders the notebooks from the runs that have finished.

Everything is written into a staging directory, ``results/<study>.staging/`` (a copy of the
previous results, so ``only=`` re-runs keep the other notebooks' pages); it replaces
``results/<study>/`` only when every notebook succeeded and the report was written. A
failing notebook (or a failed grid) stops the study: the previous ``results/<study>/``
stays untouched (a committed study is never overwritten by a failed run), the staging
directory keeps the executed copy with the traceback in the failing cell and an index
recording the failure, and :class:`~dml_study.study.tiers.notebooks.NotebookExecutionError`
names the notebook and cell — nothing raised while writing that index can mask it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from dml_study.errors import UserFacingError
from dml_study.study.launch.launcher import (
    GridFailedError,
    GridReport,
    Launcher,
    describe_failures,
    launch_grid,
)
from dml_study.study.pipeline.errors import StudyBusyError, StudyUsageError
from dml_study.study.plan.config import STAGING_ENV, STAGING_SUFFIX, StudyConfig
from dml_study.study.report.index import NotebookRecord, StudyRecord, headline, write_reports
from dml_study.study.report.pages import render_html
from dml_study.study.report.readme import update_project_readme
from dml_study.study.tiers.notebooks import NotebookExecutionError, execute_notebook

TRAIN_PARAMETER = "train"


def notebook_parameters(
    config: StudyConfig, notebook: str, collect: bool = False
) -> dict[str, object]:
    """Parameters a study notebook is executed with: the study file, plus overrides.

    With ``collect`` a notebook that can train the grid is told not to (``train=False``).
    """
    if config.source is None:
        raise ValueError("run_study needs a config loaded from a file (load_study_config)")
    parameters = {"study_config": str(config.source),
                  **config.notebook_parameters.get(notebook, {})}
    if collect and _declares(config.notebook_path(notebook), TRAIN_PARAMETER):
        parameters[TRAIN_PARAMETER] = False
    return parameters


def _declares(notebook: Path, parameter: str) -> bool:
    import papermill

    return parameter in papermill.inspect_notebook(str(notebook))


def run_study(
    config: StudyConfig,
    only: Sequence[str] | None = None,
    *,
    html: bool | None = None,
    progress: bool = True,
    stream: TextIO | None = None,
    launcher: Launcher | None = None,
    wait: bool = True,
    collect: bool = False,
) -> StudyRecord | None:
    """Train the grid, execute the study's notebooks (or the ``only`` subset), write the report.

    The grid is trained first (with ``launcher``, default: the study's ``execution``
    section) when a selected notebook trains it; ``collect`` skips training. Returns the
    :class:`StudyRecord` also written to ``summary.json``, or ``None`` when ``wait=False``
    left runs unfinished (nothing rendered yet). Raises :class:`GridFailedError` or
    :class:`NotebookExecutionError` after recording the failure in the staging directory's
    index; ``results/<study>/`` then still holds the previous (successful) results.
    """
    stream = stream or sys.stdout
    html = config.execution.html if html is None else html
    notebooks = list(config.notebooks)
    if only:
        unknown = sorted(set(only) - set(notebooks))
        if unknown:
            raise StudyUsageError(f"unknown notebook(s) {unknown}; study notebooks: {notebooks}")
        notebooks = [nb for nb in notebooks if nb in only]
    for notebook in notebooks:
        if not config.notebook_path(notebook).is_file():
            raise StudyUsageError(
                f"study notebook {config.notebook_path(notebook)} is missing: restore it (git "
                f"checkout) or remove it from notebooks: in {config.source or 'the study file'}"
            )
    record = StudyRecord(name=config.name, title=config.title, environment=_environment())
    started = time.perf_counter()

    def say(message: str) -> None:
        if progress:
            elapsed = time.perf_counter() - started
            print(f"[study {config.name} | {elapsed:6.0f} s] {message}", file=stream, flush=True)

    grid = None
    if config.groups and not collect and any(
        _declares(config.notebook_path(nb), TRAIN_PARAMETER) for nb in notebooks
    ):
        # Runs live in results/runs/ and their executed notebooks in results/<study>/runs/:
        # a run's record, never the report, which is only replaced after success below.
        say("training the grid")
        grid = launch_grid(config, launcher, wait=wait, progress=progress, stream=stream,
                           raise_on_failure=False)
        if grid.unfinished and not grid.failed:
            say(f"{len(grid.unfinished)} run(s) not finished yet (submitted or trained "
                "elsewhere); render the report later with --collect")
            return None
    with study_lock(config):
        return _render_study(config, notebooks, record, grid, say, html=html,
                             progress=progress, stream=stream, collect=collect,
                             full=not only, started=started)


def _render_study(
    config: StudyConfig, notebooks: list[str], record: StudyRecord, grid: GridReport | None,
    say: Any, *, html: bool, progress: bool, stream: TextIO, collect: bool, full: bool,
    started: float,
) -> StudyRecord:
    """Stage, execute the notebooks, write the report and publish it (under the study lock)."""
    final_dir = config.study_dir
    staging = stage_study_dir(config, full=full)
    say(f"{len(notebooks)} notebook(s) -> {final_dir} (staged in {staging})")
    failure: GridFailedError | NotebookExecutionError | None = None
    with staging_env(config):
        if grid is not None and grid.failed:
            # The index lists the failed runs (per-run outcomes: results/<study>/launch.json).
            record.notebooks.append(_grid_record(config, grid))
            say(f"{len(grid.failed)} grid run(s) FAILED; the notebooks were not executed")
            failure = GridFailedError(grid.failed)
        for position, notebook in enumerate([] if failure else notebooks, start=1):
            say(f"({position}/{len(notebooks)}) executing {notebook}")
            nb_record = _execute_one(config, notebook, html, stream if progress else None,
                                     collect)
            record.notebooks.append(nb_record)
            if nb_record.error is not None:
                say(f"({position}/{len(notebooks)}) {notebook} FAILED")
                failure = nb_record.exception  # type: ignore[assignment]
                break
            say(f"({position}/{len(notebooks)}) {notebook} done in {nb_record.seconds:.0f} s")
        record.seconds = time.perf_counter() - started
        if failure is None:
            record.headline = headline(config)
            write_reports(config, record, html=html)
        else:
            _write_failure_reports(config, record, say, html)
    if failure is not None:
        say(f"previous results in {final_dir} left untouched; this attempt is kept in {staging}")
        raise failure
    publish_study_dir(staging, final_dir)
    try:  # the README shows the published scorecard; a bad block must not undo the study
        if update_project_readme(config.root, final_dir / "claims.json"):
            say("README.md: scorecard block updated from claims.json")
    except UserFacingError as exc:
        say(f"README.md not updated: {exc}")
    say(f"finished in {record.seconds / 60:.1f} min; report: {final_dir / 'index.html'}")
    return record


def lock_file(config: StudyConfig) -> Path:
    """``<results>/runs/.study-<name>.lock``: held while a study's report is staged and
    published (under ``runs/``, which is never committed)."""
    return config.runs_dir / f".study-{config.name}.lock"


@contextlib.contextmanager
def study_lock(config: StudyConfig) -> Iterator[None]:
    """One process at a time stages and publishes a study's report.

    Two regenerations of one study at once would share ``results/<study>.staging/``: each
    would delete the other's pages. An exclusive :func:`fcntl.flock` on :func:`lock_file`
    (released by the operating system however the holder dies, ``kill -9`` included) makes
    the second fail at once, naming the holder (:class:`StudyBusyError`, exit 6). Training
    the grid is not under this lock: runs are claimed one by one
    (:mod:`~dml_study.study.launch.run_claims`), so two processes can share a grid.
    """
    import fcntl
    import json
    import socket

    from dml_study.training.lock import describe_holder, read_holder

    path = lock_file(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StudyBusyError(
            f"the report of study {config.name} ({config.study_dir}) is being written by "
            f"{describe_holder(read_holder(path))} (lock {path}); wait for it to finish, then "
            "re-run the same command: finished runs are reused"
        ) from None
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)[:500]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def staging_dir(config: StudyConfig) -> Path:
    """``<results>/<study>.staging``: where a study run writes until it has succeeded."""
    return config.results_dir / f"{config.name}{STAGING_SUFFIX}"


@contextlib.contextmanager
def staging_env(config: StudyConfig) -> Iterator[Path]:
    """Point ``config.study_dir`` (here and in notebook kernels) at the staging directory."""
    previous = os.environ.get(STAGING_ENV)
    os.environ[STAGING_ENV] = config.name
    try:
        yield staging_dir(config)
    finally:
        if previous is None:
            os.environ.pop(STAGING_ENV, None)
        else:
            os.environ[STAGING_ENV] = previous


#: What a full regeneration keeps of the previous study directory: the records of the
#: grid's runs (executed ``02_train`` notebooks and logs, written while the grid trains),
#: the launch records and the tuning searches (inputs of the study, not outputs of its
#: notebooks), the budget check's larger searches included (``tuning-<k>x``, see
#: :func:`kept_on_regeneration`). Everything else (pages, figures, claims, index) is
#: rewritten whole.
KEPT_ON_REGENERATION: tuple[str, ...] = ("runs", "launch.json", "tuning", "slurm")


def kept_on_regeneration(name: str) -> bool:
    """Whether a full regeneration keeps the study directory's entry ``name``: one of
    :data:`KEPT_ON_REGENERATION` or a budget check's searches (``tuning-2x``, ...)."""
    return name in KEPT_ON_REGENERATION or re.fullmatch(r"tuning-\d+x", name) is not None


def stage_study_dir(config: StudyConfig, full: bool = False) -> Path:
    """A fresh staging directory holding a copy of the current study directory.

    ``full`` (a regeneration of every notebook) copies only :data:`KEPT_ON_REGENERATION`,
    so no page, figure or table of the previous regeneration survives unless this one
    writes it again; otherwise (``only=`` a subset of notebooks) everything is copied and
    the other notebooks' pages stay.
    """
    final_dir, staging = config.study_dir, staging_dir(config)
    _recover_interrupted_publish(final_dir)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    if final_dir.is_dir():
        for entry in sorted(final_dir.iterdir()):
            if full and not kept_on_regeneration(entry.name):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, staging / entry.name, symlinks=True)
            else:
                shutil.copy2(entry, staging / entry.name, follow_symlinks=False)
    if full:
        try:
            prune_stale_run_records(config, staging)
        except ValueError:  # a grid that cannot be expanded: its error is reported later
            pass
    return staging


#: Files of a run's record in ``results/<study>/runs/``: ``<run name><suffix>``.
RUN_RECORD_SUFFIXES: tuple[str, ...] = (".ipynb", ".html", ".log")


def prune_stale_run_records(config: StudyConfig, study_dir: Path) -> list[str]:
    """Drop from ``study_dir`` the records of runs no longer in the study's grid.

    A run whose settings changed gets a new name (its hash), so the old name's executed
    notebook, page, log and ``launch.json`` entry would otherwise outlive the regeneration
    that replaced them. Kept: every cell of the grid and, with a ``tuning`` section, the
    lr grid's validation cells. Returns the run names dropped.
    """
    from dml_study.study.launch.task import RUN_STATE_FILE, read_state_file, write_state_file
    from dml_study.study.plan.grid import expand_grid, lr_grid_cells

    names = {s.run_name for s in expand_grid(config)}
    if config.tuning is not None:
        names |= {s.run_name for s in lr_grid_cells(config, split="validation")}
    dropped: set[str] = set()
    runs = study_dir / "runs"
    if runs.is_dir():
        for entry in runs.iterdir():
            stem, suffix = os.path.splitext(entry.name)
            if entry.is_file() and suffix in RUN_RECORD_SUFFIXES and stem not in names:
                entry.unlink()
                dropped.add(stem)
    state = study_dir / RUN_STATE_FILE
    if state.is_file():
        study, records = read_state_file(state)
        kept = {name: record for name, record in records.items() if name in names}
        if len(kept) != len(records):
            dropped |= set(records) - set(kept)
            write_state_file(state, study, kept)
    return sorted(dropped)


def publish_study_dir(staging: Path, final_dir: Path) -> None:
    """Replace ``final_dir`` by ``staging`` (two renames; a crash between them is undone
    by :func:`_recover_interrupted_publish` at the next run)."""
    previous = final_dir.with_name(final_dir.name + ".previous")
    if previous.exists():
        shutil.rmtree(previous)
    if final_dir.exists():
        os.replace(final_dir, previous)
    os.replace(staging, final_dir)
    shutil.rmtree(previous, ignore_errors=True)


def _recover_interrupted_publish(final_dir: Path) -> None:
    """A process killed between the two renames of :func:`publish_study_dir`: restore."""
    previous = final_dir.with_name(final_dir.name + ".previous")
    if previous.is_dir() and not final_dir.exists():
        os.replace(previous, final_dir)


def _write_failure_reports(
    config: StudyConfig, record: StudyRecord, say, html: bool
) -> None:
    """Index of a failed attempt (in staging); its own errors are reported, never raised."""
    try:
        record.headline = headline(config)
    except Exception as exc:  # must not mask the notebook error
        say(f"(headline not computed: {type(exc).__name__}: {exc})")
    try:
        write_reports(config, record, html=html, published=False)
    except Exception as exc:  # must not mask the notebook error
        say(f"(report of the failed attempt not written: {type(exc).__name__}: {exc})")


def _grid_record(config: StudyConfig, grid: GridReport) -> NotebookRecord:
    """The failed grid's line in the index, naming every failed run."""
    counts = {s: len(grid.with_status(s)) for s in ("trained", "reused", "failed")}
    name = (f"{config.train_notebook} × {len(grid.results)} runs ({counts['trained']} trained, "
            f"{counts['reused']} reused, {counts['failed']} failed)")
    return NotebookRecord(name, "failed", grid.seconds, None, describe_failures(grid.failed))


def _execute_one(
    config: StudyConfig, notebook: str, html: bool, stdout: TextIO | None, collect: bool = False
) -> NotebookRecord:
    output = config.study_dir / notebook
    started = time.perf_counter()
    stream_output = stdout if config.execution.stream_output else None
    try:
        execute_notebook(
            config.notebook_path(notebook),
            output,
            notebook_parameters(config, notebook, collect),
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
    """What the index and README footer say the study ran on. ``threads`` is the count the
    runs compute with: the numerical profile's (:func:`dml_study.determinism.threads`, which
    every run applies) when it is on, else this process's torch threads, which would
    otherwise depend on whether an in-process frozen tier had already applied the profile."""
    from dml_study import determinism
    from dml_study.env import environment_report

    report = environment_report()
    threads = determinism.threads() if determinism.enabled() else report.get("torch_threads")
    numerics = report.get("determinism") or {}
    return {
        "git_commit": report.get("git_commit"),
        "device": report.get("device"),
        "torch": report.get("packages", {}).get("torch"),
        "threads": threads,
        "platform": report.get("platform"),
        "python": report.get("python"),
        "cpu": determinism.cpu_name(numerics.get("cpu")),
        "profile": numerics.get("profile"),
        "unsupported": list(numerics.get("unsupported") or []),
    }
