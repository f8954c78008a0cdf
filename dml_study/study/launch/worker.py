"""Worker process of the launchers: ``python -m dml_study.study.launch.worker TASK RESULT``.

:func:`run_worker` starts one (the launchers call it); :func:`main` is the worker.

Reads a :class:`~dml_study.study.launch.task.RunTask` from the JSON file ``TASK``, trains the
run with :func:`~dml_study.study.launch.task.execute_run` (its output, the kernel's included,
goes to this process's stdout: the run's log; the kernel process's own stderr only when the
run fails) and writes the
:class:`~dml_study.study.launch.task.RunResult` to ``RESULT`` atomically. Exit status 0 when the
result was written, whether the run trained or failed.

On SIGTERM, SIGINT or SIGUSR2 (a launcher stopping, a SLURM job preempted) the worker kills
its descendants: the papermill kernel runs in its own session and would otherwise keep
training after the worker is gone. Then it exits, releasing the run's claim; the run's
checkpoint lets the next attempt resume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from dml_study.training.run_dir import RunDirectory, RunState

if TYPE_CHECKING:
    from dml_study.study.launch.task import RunResult, RunTask


def run_worker(
    task: RunTask, on_start: Callable[[subprocess.Popen], None] | None = None
) -> RunResult:
    """Train ``task`` in a worker process (its output goes to ``task.log``); its result.

    The log holds one training of the run: a run that starts from scratch replaces any
    earlier log (e.g. the committed log of a previous regeneration of the study), a run that
    resumes from its checkpoint (a requeued or retried job) continues the log after a line
    saying so. ``on_start`` receives the worker's :class:`subprocess.Popen` (to stop it on
    preemption). A worker that dies without writing its result yields a ``failed`` result
    with the end of the log as traceback.
    """
    from dml_study.study.launch.task import RunResult

    log = Path(task.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    resuming = log.is_file() and RunDirectory.for_run(task.results_dir, task.run_name).state() \
        is RunState.RESUMABLE
    with tempfile.TemporaryDirectory(prefix="dml-run-") as tmp:
        task_file, result_file = Path(tmp) / "task.json", Path(tmp) / "result.json"
        task_file.write_text(json.dumps(task.to_json()), encoding="utf-8")
        with log.open("a" if resuming else "w", encoding="utf-8") as out:
            if resuming:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                out.write(f"\n--- {stamp}: resuming {task.run_name} {RESUME_MARK}\n")
                out.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", "dml_study.study.launch.worker", str(task_file),
                 str(result_file)],
                stdout=out, stderr=subprocess.STDOUT, cwd=task.cwd,
                env={**os.environ, **task.env},
            )
            if on_start is not None:
                on_start(proc)
            code = proc.wait()
        if result_file.is_file():
            return RunResult.from_json(json.loads(result_file.read_text(encoding="utf-8")))
    tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:])
    return RunResult(task.run_name, "failed", executed_notebook=task.executed, log=str(log),
                     job_id=task.job_id, error=f"worker process exited with status {code}",
                     traceback=tail)


#: The end of the line that starts a resumed attempt in a run's log.
RESUME_MARK = "from its checkpoint ---"

def kill_descendants(timeout: float = 10.0) -> None:
    """Terminate (then kill) every process this one started, recursively."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def _stop(signum: int, _frame: FrameType | None) -> None:
    print(f"launch_worker: caught {signal.Signals(signum).name}; stopping the run", flush=True)
    kill_descendants()
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    from dml_study.atomic_io import atomic_write_json
    from dml_study.study.launch.task import RunTask, execute_run

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m dml_study.study.launch.worker TASK.json RESULT.json",
              file=sys.stderr)
        return 2
    task = RunTask.from_json(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    # SIGTERM: a launcher stopping; SIGINT: Ctrl-C; SIGUSR2: SLURM's preemption/timeout
    # warning, which reaches every process of the job step.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
        signal.signal(signum, _stop)
    print(f"launch_worker: run {task.run_name} ({task.label})", flush=True)
    result = execute_run(task, stdout=sys.stdout)
    atomic_write_json(argv[1], result.to_json())
    print(f"launch_worker: run {task.run_name} {result.status} in {result.seconds:.0f} s",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
