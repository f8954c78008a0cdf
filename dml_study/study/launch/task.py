"""One run of the grid as a task: :class:`RunTask`, :func:`execute_run` and their records.

Whatever the launcher (:mod:`dml_study.study.launch.launcher`), one run is one :class:`RunTask`
executed by :func:`execute_run`, in this process or in a worker
(:mod:`~dml_study.study.launch.worker`): claim the run
(:mod:`~dml_study.study.launch.run_claims`), execute ``02_train`` with papermill into
``results/<study>/runs/<run_name>.ipynb``, release the claim. The outcome is a
:class:`RunResult`; ``results/<study>/launch.json`` records the last one of every run.
This module imports no launcher, so the launchers, the worker and
:func:`dml_study.study.plan.grid.run_grid` can all build on it without an import cycle.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
import traceback
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from dml_study.atomic_io import atomic_write_json
from dml_study.study.launch.run_claims import ClaimInfo, live_claim, try_claim
from dml_study.study.plan.config import StudyConfig
from dml_study.study.tiers.notebooks import NotebookExecutionError, execute_notebook
from dml_study.training.run_dir import RunDirectory

if TYPE_CHECKING:
    from dml_study.study.plan.grid import RunSpec

#: Seconds between two looks at a run another launcher is training.
POLL_SECONDS = 5.0


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class RunTask:
    """Everything a worker needs to train one run (JSON-serialisable, picklable)."""

    run_name: str
    label: str  # "<group>/<variant>, seed <seed>" for messages
    notebook: str
    executed: str
    log: str
    parameters: dict[str, Any]
    results_dir: str
    cwd: str
    kernel_name: str = "python3"
    cell_timeout: int | None = None
    launcher: str = "local"
    job_id: str | None = None
    #: Environment variables set for the run (threads, visible devices).
    env: dict[str, str] = field(default_factory=dict)
    #: A command run (under the claim) before the notebook, e.g. ``torchrun`` training the
    #: run on several GPUs; the notebook then finds the run finished and reports it.
    pre_command: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunTask:
        return cls(**{**data, "pre_command": tuple(data.get("pre_command") or ())})


@dataclass
class RunResult:
    """What became of one run.

    ``status``: ``trained`` | ``reused`` (finished earlier) | ``failed`` | ``claimed``
    (another launcher holds it) | ``submitted`` (a SLURM job not waited for).
    """

    run_name: str
    status: str
    seconds: float = 0.0
    executed_notebook: str | None = None
    log: str | None = None
    job_id: str | None = None
    error: str | None = None
    traceback: str | None = None
    holder: str | None = None
    #: The failure itself, for callers that re-raise it (not serialised).
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "exception"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        return cls(**{k: v for k, v in data.items() if k != "exception"})


def make_task(
    config: StudyConfig,
    spec: RunSpec,
    *,
    launcher: str = "local",
    device: str | None = None,
    env: dict[str, str] | None = None,
) -> RunTask:
    """The task training ``spec`` with ``config``'s training notebook.

    ``device`` replaces the run's ``device`` parameter (not part of the run's identity).
    """
    parameters = spec.notebook_parameters(config.results_dir)
    if device is not None:
        parameters["device"] = device
    executed = config.executed_runs_dir / f"{spec.run_name}.ipynb"
    return RunTask(
        run_name=spec.run_name,
        label=f"{spec.group}/{spec.variant}, seed {spec.seed}",
        notebook=str(config.notebook_path(config.train_notebook)),
        executed=str(executed),
        log=str(executed.with_suffix(".log")),
        parameters=parameters,
        results_dir=str(config.results_dir),
        cwd=str(config.root),  # relative data paths (./data) resolve as on the command line
        kernel_name=config.execution.kernel_name,
        cell_timeout=config.execution.cell_timeout,
        launcher=launcher,
        env=dict(env or {}),
    )


def execute_run(task: RunTask, stdout: TextIO | None = None) -> RunResult:
    """Train one run: claim it, execute the training notebook, release it.

    Never raises for a failing run: the failure (message, traceback from the executed
    notebook) is in the returned :class:`RunResult`. ``stdout`` receives the kernel's
    output live (the run's log when called by a worker process).

    The kernel process's own stderr (ipykernel's and zmq's start-up and shut-down lines,
    written by races, see :func:`~dml_study.study.tiers.notebooks.execute_notebook`) goes to
    a temporary file, not to ``stdout``: a run's log says the same on every regeneration.
    A run that fails gets that text appended to ``stdout`` after a header, since a
    kernel that died says why there.
    """
    started = time.perf_counter()
    results_dir = Path(task.results_dir)
    run = RunDirectory.for_run(results_dir, task.run_name)

    def result(status: str, **kw: Any) -> RunResult:
        kw = {"executed_notebook": task.executed, "log": task.log, "job_id": task.job_id, **kw}
        return RunResult(task.run_name, status, time.perf_counter() - started, **kw)

    if run.is_finished():
        return result("reused", executed_notebook=None)
    claim = try_claim(results_dir, task.run_name, launcher=task.launcher, job_id=task.job_id)
    if isinstance(claim, ClaimInfo):
        return result("claimed", executed_notebook=None, holder=claim.describe())
    with claim.start_heartbeat():
        if run.is_finished():  # finished while we were claiming
            return result("reused", executed_notebook=None)
        with tempfile.TemporaryDirectory(prefix="dml-kernel-") as tmp:
            kernel_stderr = Path(tmp) / "kernel-stderr.log"
            try:
                if task.pre_command:
                    subprocess.run(list(task.pre_command), cwd=task.cwd, check=True,
                                   stdout=stdout, stderr=subprocess.STDOUT if stdout else None)
                execute_notebook(
                    task.notebook, task.executed, task.parameters, kernel_name=task.kernel_name,
                    cwd=task.cwd, cell_timeout=task.cell_timeout, stdout=stdout,
                    kernel_stderr=kernel_stderr,
                )
            except NotebookExecutionError as exc:
                _show_kernel_stderr(kernel_stderr, stdout)
                return result("failed", error=str(exc),
                              traceback=notebook_traceback(task.executed), exception=exc)
            except Exception as exc:  # one run's failure must not stop the grid
                _show_kernel_stderr(kernel_stderr, stdout)
                return result("failed", error=f"{type(exc).__name__}: {exc}",
                              traceback=traceback.format_exc(), exception=exc)
    if not run.is_finished():
        message = (f"{Path(task.notebook).name} finished for run {task.run_name} but wrote no "
                   f"{run.metrics}")
        return result("failed", error=message, exception=RuntimeError(message))
    return result("trained")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


#: The header above a failed run's kernel stderr in its log.
KERNEL_STDERR_HEADER = "--- the kernel process's stderr ---"


def _show_kernel_stderr(path: Path, stdout: TextIO | None) -> None:
    """Append the kernel's stderr at ``path`` (if any) to ``stdout`` after a header."""
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    if stdout is not None and text.strip():
        stdout.write(f"{KERNEL_STDERR_HEADER}\n{text.rstrip()}\n")
        stdout.flush()


def notebook_traceback(executed: str | Path) -> str | None:
    """The traceback stored in an executed notebook's failing cell (ANSI colours removed)."""
    import nbformat

    try:
        book = nbformat.read(executed, as_version=4)
    except (OSError, ValueError):
        return None
    for cell in book.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return _ANSI.sub("", "\n".join(output.get("traceback", [])))
    return None


def wait_for_run(results_dir: Path, run_name: str, poll: float = POLL_SECONDS) -> None:
    """Block until no live claim holds ``run_name`` (its holder finished, failed or died)."""
    while live_claim(results_dir, run_name) is not None:
        time.sleep(poll)


def worker_env(threads: int | None) -> dict[str, str]:
    """Environment of a run: the numerical profile with ``threads`` CPU threads.

    :func:`dml_study.determinism.pinned_env`: the library settings that give the same bits
    on every machine, and the thread variables (torch reads ``OMP_NUM_THREADS`` at import,
    so the kernel of ``02_train`` starts with ``torch.get_num_threads() == threads``).
    """
    from dml_study.determinism import pinned_env

    return pinned_env(threads)


def default_threads(max_parallel: int) -> int | None:
    """CPU threads per run when ``max_parallel`` runs share this machine.

    Under the numerical profile, its fixed count (:func:`dml_study.determinism.threads`,
    1), whatever the machine's cores: the bits of a run depend on its thread count. With
    the profile off, the cores split between the runs (None: 1 run, all cores).
    """
    from dml_study import determinism

    if determinism.enabled():
        return determinism.threads()
    if max_parallel <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // max_parallel)


# --------------------------------------------------------------------------- records


#: The launch records' file name in a study directory.
RUN_STATE_FILE = "launch.json"


def launch_state_path(config: StudyConfig) -> Path:
    """``results/<study>/launch.json``: the last known outcome and job id of every run."""
    return config.study_dir / RUN_STATE_FILE


def read_state_file(path: Path) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """The study name and the ``run name -> last recorded outcome`` of a ``launch.json``."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); delete it to start afresh") from None
    return raw.get("study"), dict(raw.get("runs", {}))


def write_state_file(path: Path, study: str | None, runs: dict[str, dict[str, Any]]) -> None:
    """Write a ``launch.json`` (atomically)."""
    atomic_write_json(path, {"study": study, "runs": runs})


def read_launch_state(config: StudyConfig) -> dict[str, dict[str, Any]]:
    """Run name -> its last recorded :class:`RunResult` fields (empty when none)."""
    path = launch_state_path(config)
    return read_state_file(path)[1] if path.is_file() else {}


def record_results(config: StudyConfig, results: Iterable[RunResult], launcher: str) -> None:
    """Merge ``results`` into ``launch.json`` (atomically)."""
    runs = read_launch_state(config)
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    for res in results:
        runs[res.run_name] = {**res.to_json(), "launcher": launcher, "updated": now}
    write_state_file(launch_state_path(config), config.name, runs)
