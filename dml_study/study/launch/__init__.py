"""Launching runs: the grid's missing runs trained on this machine or on a SLURM cluster.

This subpackage owns how runs get trained, not what a run is: the launcher registry and the
grid driver (:mod:`~dml_study.study.launch.launcher`: ``create_launcher``, ``run_grid``,
``launch_grid``, ``run_states``), one run as a task every launcher executes alike
(:mod:`~dml_study.study.launch.task`), the launchers themselves (:mod:`~.local`: up to N
runs at once; :mod:`~.slurm`: submitit job arrays, requeue on preemption), the worker
process a task runs in (:mod:`~.worker`) and the claim files that keep two launchers from
training the same run (:mod:`~.run_claims`). It imports the plan and the tiers, never the
analysis or the report.
"""

from dml_study.study.launch.launcher import (
    GridFailedError,
    create_launcher,
    is_launcher,
    launch_grid,
    list_launchers,
    run_grid,
    run_states,
)

__all__ = [
    "GridFailedError",
    "create_launcher",
    "is_launcher",
    "launch_grid",
    "list_launchers",
    "run_grid",
    "run_states",
]
