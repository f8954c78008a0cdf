"""The study: the grid of runs, two tiers, the claims scorecard and the rendered report.

One subpackage per concern; imports point one way, each layer asking only those before it
(``tests/test_import_cycles.py`` keeps it so)::

    plan  →  tiers  →  launch  →  analysis  →  report  →  pipeline

- :mod:`~dml_study.study.plan` — the study file (:func:`load_study_config`) and the grid of
  runs it describes (:func:`expand_grid`, :class:`RunSpec`, :func:`make_run_name`).
- :mod:`~dml_study.study.tiers` — training one run: the frozen-backbone tier in-process, the
  fine-tuned tier as ``02_train`` executed by papermill (:func:`execute_notebook`).
- :mod:`~dml_study.study.launch` — training the grid's missing runs: local or SLURM
  launchers, run claims, workers (:func:`run_grid`).
- :mod:`~dml_study.study.analysis` — tables, paired statistics, the claims scorecard.
- :mod:`~dml_study.study.report` — figures, pages, the index, the browser page check.
- :mod:`~dml_study.study.pipeline` — a whole study: grid, notebooks, report, published
  atomically.

This module is a thin facade over the names notebooks and scripts use most. Command line:
``python -m dml_study.study --config studies/embedded.yaml [--launcher local|slurm]
[--max-parallel N] [--no-wait] [--collect] [--list-runs]``.
"""

from dml_study.study.launch.launcher import run_grid
from dml_study.study.plan.config import StudyConfig, StudyConfigError, load_study_config
from dml_study.study.plan.grid import RunSpec, expand_grid, make_run_name
from dml_study.study.tiers.notebooks import NotebookExecutionError, execute_notebook

__all__ = [
    "NotebookExecutionError",
    "RunSpec",
    "StudyConfig",
    "StudyConfigError",
    "execute_notebook",
    "expand_grid",
    "load_study_config",
    "make_run_name",
    "run_grid",
]
