"""The ``local`` launcher: up to ``max_parallel`` runs at once on this machine.

Each run is a worker process (:mod:`dml_study.study.launch.worker`) that executes
``02_train`` for it, writing its output to ``results/<study>/runs/<run_name>.log``. Run
``i`` of the ``max_parallel`` slots gets device ``devices[i % len(devices)]`` (round-robin;
e.g. ``cuda:0,cuda:1``), so concurrent runs never share a GPU when there are as many GPUs
as slots. On CPU each run gets ``threads_per_run`` threads (default: the numerical
profile's fixed count, 1, see :mod:`dml_study.determinism`; ``cores // max_parallel`` with
the profile off) through ``OMP_NUM_THREADS``, which torch reads at import.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from dml_study.study.launch.task import RunResult, RunTask, default_threads, worker_env
from dml_study.study.launch.worker import run_worker
from dml_study.study.plan.config import StudyConfig


class LocalLauncher:
    """Runs ``max_parallel`` worker processes at a time (a thread waits on each)."""

    name = "local"

    def __init__(self, max_parallel: int = 1, devices: Sequence[str] = (),
                 threads_per_run: int | None = None) -> None:
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
        self.max_parallel = max_parallel
        self.devices = tuple(devices)
        self.threads_per_run = threads_per_run or default_threads(max_parallel)

    def slot_task(self, task: RunTask, slot: int) -> RunTask:
        """``task`` pinned to the device and threads of ``slot``."""
        parameters = dict(task.parameters)
        if self.devices:
            parameters["device"] = self.devices[slot % len(self.devices)]
        return replace(task, parameters=parameters,
                       env={**task.env, **worker_env(self.threads_per_run)})

    def launch(
        self,
        config: StudyConfig,
        tasks: Sequence[RunTask],
        *,
        wait: bool = True,
        on_result: Callable[[RunResult], None] | None = None,
    ) -> list[RunResult]:
        """Train ``tasks`` (``wait`` is ignored: local runs end with this call)."""
        slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.max_parallel):
            slots.put(slot)
        lock = threading.Lock()

        def one(task: RunTask) -> RunResult:
            slot = slots.get()
            try:
                result = run_worker(self.slot_task(task, slot))
            finally:
                slots.put(slot)
            if on_result is not None:
                with lock:
                    on_result(result)
            return result

        with ThreadPoolExecutor(self.max_parallel, thread_name_prefix="run") as pool:
            return list(pool.map(one, tasks))

