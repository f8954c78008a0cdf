"""The ``slurm`` launcher: one SLURM job per grid run, submitted as a job array by submitit.

Resources come from the study's ``execution.slurm`` section
(:class:`~dml_study.study.plan.config.SlurmConfig`, overridable with ``--slurm key=value``) and
map onto :meth:`submitit.AutoExecutor.update_parameters`: ``partition``, ``account``,
``qos``, ``constraint``, ``time_min``, ``gpus_per_run`` (``gpus_per_node``),
``cpus_per_run`` (``cpus_per_task``), ``mem_gb``, ``array_parallelism``, ``setup`` and
``additional`` (further ``#SBATCH`` options). submitit's files (sbatch script, pickles,
stdout/stderr per job) go to ``results/<study>/slurm/<job id>/``.

Each job runs :class:`SlurmRunJob`, a :class:`submitit.helpers.Checkpointable`: on a
timeout or preemption signal it stops its worker (kernel included) and asks submitit to
requeue the job (at most ``max_requeues`` timeouts); the requeued job executes ``02_train``
again and the trainer resumes from the run's ``checkpoints/last.pt``. With
``gpus_per_run > 1`` the job trains with ``torchrun --standalone --nproc_per_node=G -m
dml_study.train`` (DDP) and the notebook then reports the finished run.

``cluster: local`` runs the same jobs as local processes (submitit's LocalExecutor,
requeue included), which is how this path is tested without a cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import submitit
import yaml

from dml_study.study.launch.task import RunResult, RunTask, read_launch_state, worker_env
from dml_study.study.launch.worker import run_worker
from dml_study.study.plan.config import SlurmConfig, StudyConfig

#: Scheduler states in which a job will still produce its run.
LIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING",
                         "COMPLETING", "SUSPENDED", "RESIZING"})


class SlurmRunJob(submitit.helpers.Checkpointable):
    """The callable of one job: trains one :class:`RunTask` in a worker process."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None

    def __call__(self, task: RunTask) -> RunResult:
        job_id = str(submitit.JobEnvironment().job_id)
        task = replace(task, job_id=job_id)
        return run_worker(task, on_start=self._started)

    def _started(self, proc: subprocess.Popen) -> None:
        self._proc = proc

    def checkpoint(self, task: RunTask) -> submitit.helpers.DelayedSubmission:
        """Stop the worker (it kills its kernel, releases the claim) and requeue the job.

        Nothing else to save: the trainer checkpoints the run directory itself, and the
        requeued job resumes from ``checkpoints/last.pt``.
        """
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)
        return super().checkpoint(task)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_proc": None}


def stop_process(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGTERM ``proc``, wait up to ``timeout`` s for it to exit, then SIGKILL it.

    Runs inside a signal handler that interrupted ``proc.wait()``, which holds the Popen's
    wait lock, so ``proc.wait`` here would deadlock; ``os.waitpid`` reaps it directly.
    """
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:  # already reaped
            return
        if pid:
            return
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(proc.pid, 0)


def torchrun_command(parameters: dict[str, Any], gpus: int) -> tuple[str, ...]:
    """``torchrun`` training a run with ``parameters`` on ``gpus`` GPUs of one node (DDP).

    The trainer's ``batch_size`` is per process under DDP, so the run's (global) batch ``B``
    is split: each of the ``G`` processes gets ``B / G``; the recipe, and so the run, stay
    the same. ``B`` must be a multiple of ``G × m_per_class``.
    """
    from dml_study.study.plan.grid import resolved_config

    resolved = resolved_config(parameters)
    batch, m = resolved["data.batch_size"], resolved["data.m_per_class"]
    if batch % (gpus * m):
        raise ValueError(
            f"run {parameters.get('run_name')}: batch {batch} cannot be split over {gpus} GPUs "
            f"in whole classes of {m} images; use gpus_per_run dividing {batch // m}, or "
            "gpus_per_run: 1"
        )
    args = ["torchrun", "--standalone", f"--nproc_per_node={gpus}", "-m", "dml_study.train"]
    flat = {k: v for k, v in parameters.items() if k != "overrides"}
    flat.update(parameters.get("overrides") or {})
    flat["batch_size"] = batch // gpus
    for key, value in flat.items():
        if value is not None:
            text = value if isinstance(value, str) else yaml.safe_dump(
                value, default_flow_style=True).strip().removesuffix("\n...")
            args += [f"--{key}", text]
    return tuple(args)


class SlurmLauncher:
    """Submits runs as a submitit job array and (optionally) waits for them."""

    name = "slurm"

    def __init__(self, slurm: SlurmConfig | None = None, poll_seconds: float = 10.0) -> None:
        self.slurm = slurm or SlurmConfig()
        self.poll_seconds = poll_seconds

    def executor(self, config: StudyConfig) -> submitit.AutoExecutor:
        """The submitit executor of ``config``'s jobs, with this launcher's resources."""
        s = self.slurm
        executor = submitit.AutoExecutor(
            folder=job_folder(config) / "%j", cluster=s.cluster,
            slurm_max_num_timeout=s.max_requeues, local_max_num_timeout=s.max_requeues,
        )
        parameters: dict[str, Any] = {
            "name": f"dml-{config.name}",
            "timeout_min": s.time_min,
            "nodes": 1,
            "tasks_per_node": 1,
            "cpus_per_task": s.cpus_per_run,
            "slurm_array_parallelism": s.array_parallelism,
            "slurm_setup": list(s.setup),
            "slurm_additional_parameters": dict(s.additional),
        }
        if s.gpus_per_run:
            parameters["gpus_per_node"] = s.gpus_per_run
        if s.mem_gb is not None:
            parameters["mem_gb"] = s.mem_gb
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(s, key) is not None:
                parameters[f"slurm_{key}"] = getattr(s, key)
        executor.update_parameters(**parameters)
        return executor

    def job_task(self, task: RunTask) -> RunTask:
        """``task`` as one job runs it: its threads, GPU device, ``torchrun`` for several GPUs."""
        parameters = dict(task.parameters)
        gpus = self.slurm.gpus_per_run
        if gpus:
            parameters["device"] = "cuda"  # the job sees only its own GPUs
        pre_command = torchrun_command(parameters, gpus) if gpus > 1 else ()
        return replace(task, launcher=self.name, parameters=parameters, pre_command=pre_command,
                       env={**task.env, **worker_env(self.slurm.cpus_per_run)})

    def launch(
        self,
        config: StudyConfig,
        tasks: Sequence[RunTask],
        *,
        wait: bool = True,
        on_result: Callable[[RunResult], None] | None = None,
    ) -> list[RunResult]:
        """Submit ``tasks`` (skipping runs whose earlier job is still queued or running)."""
        live = self._live_jobs(config, tasks)
        fresh = [self.job_task(t) for t in tasks if t.run_name not in live]
        executor = self.executor(config)
        jobs: dict[str, submitit.Job] = dict(live)
        if fresh:
            submitted = executor.map_array(SlurmRunJob(), fresh)
            jobs.update({t.run_name: job for t, job in zip(fresh, submitted, strict=True)})
        by_name = {t.run_name: t for t in tasks}
        if not wait:
            results = [RunResult(name, "submitted", job_id=str(job.job_id),
                                 log=by_name[name].log) for name, job in jobs.items()]
            for res in results:
                if on_result:
                    on_result(res)
            return results
        names = {id(job): name for name, job in jobs.items()}
        results: list[RunResult] = []
        for job in submitit.helpers.as_completed(list(jobs.values()),
                                                 poll_frequency=self.poll_seconds):
            res = job_result(job, by_name[names[id(job)]])
            results.append(res)
            if on_result:
                on_result(res)
        return results

    def _live_jobs(self, config: StudyConfig, tasks: Sequence[RunTask]) -> dict[str, Any]:
        """Jobs of an earlier ``--no-wait`` submission that are still queued or running."""
        if self.slurm.cluster == "local" or shutil.which("sacct") is None:
            return {}
        state = read_launch_state(config)
        live = {}
        for task in tasks:
            last = state.get(task.run_name, {})
            if last.get("launcher") == self.name and last.get("job_id"):
                job = submitit.SlurmJob(job_folder(config) / "%j", last["job_id"])
                if job.state in LIVE_STATES:
                    live[task.run_name] = job
        return live


def job_result(job: submitit.Job, task: RunTask) -> RunResult:
    """The job's :class:`RunResult`, or a ``failed`` one naming the job's stderr."""
    try:
        return job.result()
    except Exception as exc:  # a failed job is a failed run
        message = str(exc).strip().splitlines()
        return RunResult(task.run_name, "failed", executed_notebook=task.executed,
                         log=str(job.paths.stderr), job_id=str(job.job_id),
                         error=f"job {job.job_id}: {message[0] if message else type(exc).__name__}",
                         traceback=str(exc))


def job_folder(config: StudyConfig) -> Path:
    """submitit's folder of the study's jobs: ``results/<study>/slurm``."""
    return config.study_dir / "slurm"


def scheduler_state(config: StudyConfig, launcher: str, job_id: str | None) -> str | None:
    """SLURM's state of a job (``RUNNING``, ``PENDING``, ...), ``None`` when unknown."""
    if launcher != "slurm" or not job_id or shutil.which("sacct") is None:
        return None
    try:
        return submitit.SlurmJob(job_folder(config) / "%j", job_id).state
    except Exception:  # a scheduler that does not answer: unknown
        return None
