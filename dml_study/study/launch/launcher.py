"""Launchers: train the study grid's missing runs, in parallel or on a SLURM cluster.

The study runner trains every missing run of the grid *before* it executes the study
notebooks (``03_ablations`` keeps its training cell, which then finds every run finished).
How the runs are trained is the launcher's business (registry in the timm style):

- ``local`` (:class:`~dml_study.study.launch.local.LocalLauncher`): up to ``max_parallel``
  runs at once on this machine, devices assigned round-robin, CPU threads split.
- ``slurm`` (:class:`~dml_study.study.launch.slurm.SlurmLauncher`): one SLURM job per run
  through submitit (a job array), requeued on timeout or preemption.

Whatever the launcher, one run is one :class:`~dml_study.study.launch.task.RunTask` executed
by :func:`~dml_study.study.launch.task.execute_run` (:mod:`~dml_study.study.launch.task`):
claim the run (:mod:`~dml_study.study.launch.run_claims`), execute ``02_train`` with papermill
into ``results/<study>/runs/<run_name>.ipynb`` (the run's own log is
``results/<study>/runs/<run_name>.log``), release the claim. Training resumes from the run
directory's checkpoint when there is one, so a requeued or retried run continues where it
stopped. A failed run does not stop the others: :func:`launch_grid` collects every outcome,
records it in ``results/<study>/launch.json`` (status, job id, executed notebook, traceback)
and :class:`GridFailedError` names every failed run; a re-run retries only those, because
finished runs (``metrics.json``) are reused.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from dml_study.study.launch.run_claims import live_claim
from dml_study.study.launch.task import (
    RunResult,
    RunTask,
    execute_run,
    make_task,
    read_launch_state,
    record_results,
    wait_for_run,
)
from dml_study.study.plan.config import LAUNCHERS, StudyConfig
from dml_study.study.plan.grid import (
    RunSpec,
    expand_grid,
    is_finished,
    unique_runs,
)
from dml_study.study.tiers.notebooks import Progress
from dml_study.typed_fields import did_you_mean

# --------------------------------------------------------------------------- registry


class Launcher(Protocol):
    """Trains a batch of runs; see :func:`create_launcher`."""

    name: str

    def launch(
        self,
        config: StudyConfig,
        tasks: Sequence[RunTask],
        *,
        wait: bool = True,
        on_result: Callable[[RunResult], None] | None = None,
    ) -> list[RunResult]:
        """Train ``tasks``; with ``wait=False`` return after submitting (status ``submitted``)."""
        ...


def list_launchers() -> list[str]:
    """Names accepted by :func:`create_launcher`."""
    return list(LAUNCHERS)


def is_launcher(name: str) -> bool:
    """True when ``name`` is a launcher."""
    return name in LAUNCHERS


def create_launcher(name: str, **kwargs: Any) -> Launcher:
    """A launcher by name: ``local`` (``max_parallel``, ``devices``, ``threads_per_run``) or
    ``slurm`` (``slurm``: a :class:`~dml_study.study.plan.config.SlurmConfig`)."""
    if name == "local":
        from dml_study.study.launch.local import LocalLauncher

        return LocalLauncher(**kwargs)
    if name == "slurm":
        from dml_study.study.launch.slurm import SlurmLauncher

        return SlurmLauncher(**kwargs)
    raise ValueError(f"unknown launcher {name!r}{did_you_mean(name, LAUNCHERS)}; launchers: "
                     f"{', '.join(LAUNCHERS)}")


def launcher_from_config(config: StudyConfig, name: str | None = None) -> Launcher:
    """The launcher ``config.execution`` describes (``name`` overrides its ``launcher``)."""
    execution = config.execution
    name = name or execution.launcher
    if name == "slurm":
        return create_launcher("slurm", slurm=execution.slurm)
    return create_launcher(name, max_parallel=execution.max_parallel,
                           devices=execution.devices, threads_per_run=execution.threads_per_run)


class InProcessLauncher:
    """Trains the tasks one after another in this process (``02_train`` through papermill).

    What a notebook uses to train missing runs of its grid (:func:`run_grid`); each run is
    claimed exactly as by the other launchers (:func:`~dml_study.study.launch.task.execute_run`).
    """

    name = "notebook"

    def launch(
        self,
        config: StudyConfig,
        tasks: Sequence[RunTask],
        *,
        wait: bool = True,
        on_result: Callable[[RunResult], None] | None = None,
    ) -> list[RunResult]:
        """Train ``tasks`` here (``wait`` is ignored: the runs end with this call)."""
        results = []
        for task in tasks:
            result = execute_run(task)
            if on_result is not None:
                on_result(result)
            results.append(result)
        return results


# --------------------------------------------------------------------------- the grid


class GridFailedError(RuntimeError):
    """Runs of the grid failed; the message names each with its notebook and traceback."""

    def __init__(self, failed: Sequence[RunResult]) -> None:
        self.failed = list(failed)
        super().__init__(describe_failures(self.failed))


def describe_failures(failed: Sequence[RunResult], traceback_lines: int = 12) -> str:
    """Every failed run: its error, executed notebook, log and the end of its traceback."""
    lines = [f"{len(failed)} run(s) failed (a re-run retries only these):"]
    for res in failed:
        lines.append(f"- {res.run_name}" + (f" (job {res.job_id})" if res.job_id else ""))
        lines.append(f"    error: {res.error}")
        if res.executed_notebook:
            lines.append(f"    executed notebook: {res.executed_notebook}")
        if res.log:
            lines.append(f"    log: {res.log}")
        if res.traceback:
            tail = res.traceback.strip().splitlines()[-traceback_lines:]
            lines += ["    traceback (last lines):", *(f"      {ln}" for ln in tail)]
    return "\n".join(lines)


@dataclass
class GridReport:
    """Outcome of :func:`launch_grid`: one :class:`RunResult` per distinct run."""

    results: list[RunResult]
    seconds: float = 0.0

    def with_status(self, *status: str) -> list[RunResult]:
        return [r for r in self.results if r.status in status]

    @property
    def failed(self) -> list[RunResult]:
        return self.with_status("failed")

    @property
    def unfinished(self) -> list[RunResult]:
        """Submitted or held elsewhere, not finished yet (``wait=False``)."""
        return self.with_status("submitted", "claimed")


def launch_grid(
    config: StudyConfig,
    launcher: Launcher | None = None,
    specs: Iterable[RunSpec] | None = None,
    *,
    wait: bool = True,
    progress: bool = True,
    stream: TextIO | None = None,
    raise_on_failure: bool = True,
) -> GridReport:
    """Train every missing run of the grid with ``launcher`` (default: the study's).

    Finished runs are reused. With ``wait`` the call returns when every run has finished or
    failed, also runs another launcher was training; without it, after submitting.
    Raises :class:`GridFailedError` naming every failed run (after all the others finished)
    unless ``raise_on_failure`` is false.
    """
    from dml_study.study.tiers.frozen_batched import run_frozen_tier  # imports torch

    launcher = launcher or launcher_from_config(config)
    stream = stream or sys.stdout
    started = time.perf_counter()
    runs = unique_runs(specs if specs is not None else expand_grid(config))
    # Frozen-tier runs are seconds each on cached features: trained here, in-process, first
    # (a launcher's process and kernel per run would cost more than the run itself).
    frozen = [s for s in runs if s.tier == "frozen"]
    frozen_done = {o.run_name: RunResult(o.run_name, o.status, o.seconds) for o in
                   run_frozen_tier(config, frozen, stream=stream if progress else None)}
    runs = [s for s in runs if s.tier != "frozen"]
    done = {s.run_name: RunResult(s.run_name, "reused") for s in runs
            if is_finished(config.results_dir, s.run_name)}
    todo = [s for s in runs if s.run_name not in done]
    bar = Progress(len(runs), "grid", stream=stream, enabled=progress)
    bar.done = len(done)
    bar.log(f"{len(runs)} fine-tuned runs, {len(done)} already finished, {len(todo)} to train "
            f"({launcher.name} launcher)")

    def report(res: RunResult) -> None:
        if res.status in ("trained", "failed", "reused"):
            bar.step(_describe(res))
        else:
            bar.log(_describe(res))

    tasks = [make_task(config, s, launcher=launcher.name) for s in todo]
    while tasks:
        results = launcher.launch(config, tasks, wait=wait, on_result=report)
        record_results(config, results, launcher.name)
        done.update({r.run_name: r for r in results})
        claimed = [r for r in results if r.status == "claimed"]
        if not (wait and claimed):
            break
        _wait_for_claims(config, [r.run_name for r in claimed], bar)
        tasks = [t for t in tasks if t.run_name in {r.run_name for r in claimed}]
    grid = GridReport(list(frozen_done.values()) + [done[s.run_name] for s in runs],
                      time.perf_counter() - started)
    failed = grid.failed
    bar.log(f"grid done in {grid.seconds:.0f} s: {len(grid.with_status('trained'))} trained, "
            f"{len(grid.with_status('reused'))} reused, {len(failed)} failed, "
            f"{len(grid.unfinished)} unfinished")
    if failed and raise_on_failure:
        raise GridFailedError(failed)
    return grid


def run_grid(
    config: StudyConfig,
    specs: Iterable[RunSpec] | None = None,
    *,
    progress: bool = True,
    stream: TextIO | None = None,
) -> list[RunResult]:
    """Train every run of the grid that is not finished yet, one after another, here.

    :func:`launch_grid` with the :class:`InProcessLauncher`: finished runs are reused, a run
    another launcher is training is waited for, the executed copy of each training notebook
    goes to ``results/<study>/runs/<run_name>.ipynb``. When runs fail, the first failure is
    raised after the others ran (e.g.
    :class:`~dml_study.study.tiers.notebooks.NotebookExecutionError` naming the run's
    executed notebook and failing cell). The study runner trains the grid *before* the
    notebooks with the study's launcher, so inside ``03_ablations`` every run is reused.
    """
    report = launch_grid(config, InProcessLauncher(), specs, progress=progress, stream=stream,
                         raise_on_failure=False)
    if report.failed:
        first = report.failed[0]
        raise first.exception or RuntimeError(first.error)
    return report.results


def _describe(res: RunResult) -> str:
    job = f" [job {res.job_id}]" if res.job_id else ""
    if res.status == "trained":
        return f"{res.run_name}{job}: trained in {res.seconds:.0f} s"
    if res.status == "reused":
        return f"{res.run_name}: finished earlier, reused"
    if res.status == "failed":
        return f"{res.run_name}{job}: FAILED ({(res.error or '').splitlines()[0]}); see {res.log}"
    if res.status == "claimed":
        return f"{res.run_name}: being trained by {res.holder}; waiting for it"
    return f"{res.run_name}{job}: {res.status}"


def _wait_for_claims(config: StudyConfig, names: Sequence[str], bar: Progress) -> None:
    """Block until no live claim holds any of ``names``."""
    for name in names:
        wait_for_run(config.results_dir, name)
    bar.log(f"{len(names)} run(s) released by the other launcher")


# --------------------------------------------------------------------------- run states


@dataclass(frozen=True)
class RunStatus:
    """One row of ``--list-runs``."""

    run_name: str
    state: str  # "finished" | "running" | "pending" | "failed"
    job_id: str | None
    cells: tuple[str, ...]
    detail: str = ""


def run_states(config: StudyConfig, job_state: Callable[[str, str], str | None] | None = None,
               *, skip_untuned: bool = False) -> list[RunStatus]:
    """State of every run of the grid, from the run directories, claims and ``launch.json``.

    ``finished``: ``metrics.json`` exists. ``running``: a live claim holds it (or its SLURM
    job runs). ``failed``: its last attempt failed. ``pending``: not started (or a SLURM job
    waiting in the queue). ``job_state(launcher, job_id)`` asks the scheduler (optional).
    ``skip_untuned``: leave out tuned cells whose search has no ``chosen.json`` yet (their
    run names are not known before it).
    """
    specs = expand_grid(config, skip_untuned=skip_untuned)
    state = read_launch_state(config)
    rows: list[RunStatus] = []
    for spec in unique_runs(specs):
        cells = tuple(sorted({s.label for s in specs if s.run_name == spec.run_name}))
        last = state.get(spec.run_name, {})
        job_id = last.get("job_id")
        holder = live_claim(config.results_dir, spec.run_name)
        scheduler = job_state(last.get("launcher", ""), job_id) if job_state and job_id else None
        if is_finished(config.results_dir, spec.run_name):
            status, detail = "finished", ""
        elif holder is not None:
            status, detail = "running", holder.describe()
            job_id = holder.job_id or job_id
        elif scheduler in ("RUNNING", "COMPLETING", "CONFIGURING"):
            status, detail = "running", f"scheduler: {scheduler}"
        elif scheduler in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "SUSPENDED"):
            status, detail = "pending", f"scheduler: {scheduler}"
        elif last.get("status") == "failed" or scheduler in ("FAILED", "TIMEOUT", "CANCELLED",
                                                            "OUT_OF_MEMORY", "NODE_FAIL"):
            status = "failed"
            detail = last.get("executed_notebook") or last.get("log") or str(scheduler or "")
        else:
            status, detail = "pending", ""
        rows.append(RunStatus(spec.run_name, status, job_id, cells, detail))
    return rows


__all__ = [
    "GridFailedError",
    "GridReport",
    "Launcher",
    "RunStatus",
    "create_launcher",
    "is_launcher",
    "launch_grid",
    "list_launchers",
    "run_states",
]

