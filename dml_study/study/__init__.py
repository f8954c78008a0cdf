"""The study: numbered notebooks, the ablation grid, statistics and the rendered report.

- :mod:`~dml_study.study.config` — :class:`StudyConfig` loaded from ``studies/<name>.yaml``.
- :mod:`~dml_study.study.grid` — ablation groups → run specs with stable names; executes
  ``02_train`` for every missing run (finished runs are reused).
- :mod:`~dml_study.study.launch` — launchers that train the grid's missing runs before
  the notebooks: ``local`` (:mod:`~dml_study.study.launch_local`, ``--max-parallel N``)
  and ``slurm`` (:mod:`~dml_study.study.launch_slurm`, submitit job arrays, requeue on
  preemption); claim files (:mod:`~dml_study.study.launch_claims`) keep two launchers
  from training the same run; one run is a task (:mod:`~dml_study.study.launch_task`)
  that every launcher and the worker (:mod:`~dml_study.study.launch_worker`) execute alike.
- :mod:`~dml_study.study.runner` — trains the grid, executes a study's notebooks in order
  (papermill), renders HTML (nbconvert) and writes ``results/<study>/index.html`` and
  ``README.md``.
- :mod:`~dml_study.study.report` (front page: claims, figures, headline, links),
  :mod:`~dml_study.study.pages` (self-contained pages, math as MathML),
  :mod:`~dml_study.study.machine_paths` (no absolute paths in ``results/``),
  :mod:`~dml_study.study.pagecheck` (file scan + headless-Chromium check of the pages),
  :mod:`~dml_study.study.nbtidy` (notebooks in the form JupyterLab saves).
- :mod:`~dml_study.study.collect`, :mod:`~dml_study.study.stats`,
  :mod:`~dml_study.study.tables`, :mod:`~dml_study.study.published` — tables: runs,
  mean ± std over seeds, paired SO-vs-no-SO tests, published reference numbers.
- :mod:`~dml_study.study.frozen` — the frozen-backbone tier: head + proxies trained on
  cached backbone features, many seeds in seconds, normal run directories.
- :mod:`~dml_study.study.claims` — the claims scorecard (``results/<study>/claims.json``):
  every claim of the two papers as a paired effect with a 95 % CI and a verdict;
  :mod:`~dml_study.study.figures` — ``results/<study>/figures/index.json``.
- :mod:`~dml_study.study.analysis`, :mod:`~dml_study.study.plots`,
  :mod:`~dml_study.study.dataview` — what the notebooks compute and draw.

Command line: ``python -m dml_study.study --config studies/embedded.yaml [--launcher
local|slurm] [--max-parallel N] [--no-wait] [--collect] [--list-runs]``.
"""

from dml_study.study.config import StudyConfig, StudyConfigError, load_study_config
from dml_study.study.grid import RunSpec, expand_grid, make_run_name
from dml_study.study.launch import run_grid
from dml_study.study.notebooks import NotebookExecutionError, execute_notebook

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
