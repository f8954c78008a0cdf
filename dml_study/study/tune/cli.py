"""Command line: ``python -m dml_study.study tune --config STUDY`` (and ``make tune``).

Runs one search per (dataset, arm) of the study's ``tuning`` section, one after another,
each until its budget of trials is spent, with a progress bar per search and a summary
table at the end; writes ``results/<study>/tuning/`` (docs/tuning.md). Re-running continues
where it stopped: finished searches are skipped, an interrupted one resumes from its journal
(interrupted trials are trained again with the same parameters). A second ``tune`` on the
same study joins as a parallel worker (the budget still holds exactly).

  --arms frozen_so/no_so frozen_so/so     only these arms
  --datasets glyphs                       only these datasets
  --trials 48                             every arm's budget (e.g. twice the study's)
  --batch 4                               frozen trials asked and trained at once
  --launcher local --max-parallel 2       fine-tuned trials: 2 worker processes at once
  --launcher slurm --slurm partition=gpu  fine-tuned trials: a SLURM job array per batch
  --status                                print every search's state, train nothing
  --budget-check                          the searches of tuning.budget_check with k times
                                          the trials, into results/<study>/tuning-<k>x/
                                          (continued from tuning/: the committed choice
                                          stays as it is)
  --smoke                                 tiny searches on the tiny CPU recipe (see --smoke
                                          of python -m dml_study.study)

Exit status (the codes of dml_study/errors.py): 0 when every search is complete; 1 when
trials keep failing; 2 for a bad study file or option; 3 for a missing dataset; 4 for a full
disk (free space, re-run: it resumes); 5 for a damaged journal; 7 for a results directory
that cannot be written; 130 (SIGINT) / 143 (SIGTERM) when interrupted (the trials in flight
are enqueued again). Each is one ``error:`` line (--debug adds the traceback). A journal in
use by another ``tune`` is not an error (no exit 6): the second process joins as a worker.

When every search a group's lr grid reads is complete (a group with ``lr_factors`` and
``tuned_from``, the robustness claim), the grid's validation runs are trained too
(:mod:`dml_study.study.tune.robustness`, under the test-split guard).
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import yaml

from dml_study.errors import (
    DatasetMissingError,
    DiskFullError,
    UsageError,
    UserFacingError,
    is_disk_full,
    one_line,
    run_cli,
    translate,
)
from dml_study.study.plan.config import (
    LAUNCHERS,
    StudyConfig,
    StudyConfigError,
    build_slurm_config,
    load_study_config,
)
from dml_study.study.plan.tuned import TUNING_DIRNAME
from dml_study.study.tune.plans import SearchPlan, plan_searches, tuning_dir
from dml_study.study.tune.storage import RESUME_NOTE

#: ``make_trainer(config, plan, launcher) -> TrialTrainer``: how the CLI trains a plan's
#: trials (tests pass a stand-in; the default is :func:`default_trainer`).
TrainerFactory = Callable[[StudyConfig, SearchPlan, Any], Any]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dml_study.study tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="studies/embedded.yaml",
                        help="study file with a 'tuning' section (default: %(default)s)")
    parser.add_argument("--arms", nargs="+", metavar="GROUP/VARIANT",
                        help="tune only these arms (default: every arm of 'tuning')")
    parser.add_argument("--datasets", nargs="+", metavar="NAME",
                        help="tune only on these datasets")
    parser.add_argument("--trials", type=int, metavar="N",
                        help="budget of every arm (default: the study file's)")
    parser.add_argument("--batch", type=int, metavar="N",
                        help="frozen-tier trials asked and trained at once (default: the "
                             "study's tuning.batch_trials)")
    parser.add_argument("--launcher", choices=LAUNCHERS,
                        help="how fine-tuned trials are trained (default: execution.launcher)")
    parser.add_argument("--max-parallel", type=int, metavar="N",
                        help="local launcher: fine-tuned trials trained at once")
    parser.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of execution.slurm (repeatable)")
    parser.add_argument("--status", action="store_true",
                        help="print every search's state (trials done, best) and exit")
    parser.add_argument("--budget-check", action="store_true",
                        help="run tuning.budget_check's searches with k times the trials "
                             "into results/<study>/tuning-<k>x/ (docs/tuning.md)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny searches with the tiny CPU recipe (checks data + pipeline)")
    parser.add_argument("--results-dir", metavar="DIR",
                        help="write searches and runs under DIR (with --smoke: "
                             "<results_dir>/smoke)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def load_config(args: argparse.Namespace) -> StudyConfig:
    """The study of ``--config`` (derived for ``--smoke`` / ``--results-dir``), with the
    command line's launcher options applied."""
    config = load_study_config(args.config)
    if args.smoke or args.results_dir:
        from dml_study.study.plan.smoke import derived_study_file

        results_dir = args.results_dir or config.results_dir / "smoke"
        config = load_study_config(derived_study_file(args.config, results_dir,
                                                      smoke=args.smoke))
    execution = config.execution
    changes: dict[str, Any] = {}
    if args.launcher is not None:
        changes["launcher"] = args.launcher
    if args.max_parallel is not None:
        if args.max_parallel < 1:
            raise StudyConfigError(f"--max-parallel must be >= 1, got {args.max_parallel}")
        changes["max_parallel"] = args.max_parallel
    if args.slurm:
        overrides = {}
        for item in args.slurm:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise StudyConfigError(f"--slurm {item!r}: expected KEY=VALUE, e.g. partition=gpu")
            overrides[key.strip()] = yaml.safe_load(value)
        changes["slurm"] = build_slurm_config(execution.slurm, overrides, "--slurm")
    if changes:
        config = dataclasses.replace(config, execution=dataclasses.replace(execution, **changes))
    return config


def default_trainer(config: StudyConfig, plan: SearchPlan, launcher: Any) -> Any:
    """The project's trainer of a plan's tier (:mod:`dml_study.study.tune.trainers`)."""
    from dml_study.study.tune.trainers import FineTunedTrialTrainer, FrozenTrialTrainer

    if plan.tier == "frozen":
        return FrozenTrialTrainer(config)
    return FineTunedTrialTrainer(config, launcher, group=plan.group, variant=plan.variant,
                                 directory=plan.directory)


def batch_size(config: StudyConfig, plan: SearchPlan, args: argparse.Namespace) -> int:
    """Trials asked at once: ``--batch`` / ``tuning.batch_trials`` for frozen arms; the
    launcher's parallelism (``max_parallel``, SLURM ``array_parallelism``) for fine-tuned."""
    if plan.tier == "frozen":
        batch = args.batch if args.batch is not None else config.tuning.batch_trials
        if batch < 1:
            raise StudyConfigError(f"--batch must be >= 1, got {batch}")
        return batch
    if config.execution.launcher == "slurm":
        return config.execution.slurm.array_parallelism
    return config.execution.max_parallel


def _translate(exc: BaseException, context: dict[str, Any]) -> UserFacingError | None:
    """One-line errors of the tune command: :func:`dml_study.errors.translate` (the shared
    faults), with what the tune command knows added. ``context``: ``results_dir`` (where it
    writes), ``dataset`` and ``data_root`` (of the search under way)."""
    from dml_study.data.base import DatasetLayoutError
    from dml_study.study.tiers.frozen import FrozenTierError

    if isinstance(exc, StudyConfigError | FrozenTierError):
        return UsageError(one_line(exc))
    if is_disk_full(exc):
        err = DiskFullError.from_exception(exc)
        if err.path is None and context.get("results_dir") is not None:
            err = DiskFullError(context["results_dir"], note=err.note)
        if err.resume is None:
            err.resume = RESUME_NOTE
        return err
    layout = next((e for e in _chain(exc) if isinstance(e, DatasetLayoutError)), None)
    if layout is not None:
        return missing_dataset(layout, context.get("dataset"), context.get("data_root"))
    return translate(exc, dataset=context.get("dataset"), data_root=context.get("data_root"))


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def missing_dataset(exc: BaseException, dataset: str | None, data_root: Any) -> UserFacingError:
    """The missing-dataset line of the tune command (exit 3): what is missing, where it was
    looked for, how to get it, and the two ways to point the study at it."""
    from dml_study.data.layout import resolve_data_root

    reason = str(exc)
    for marker in ("Expected layout", "Layout:"):
        reason = reason.split(marker, 1)[0]
    name = dataset or "NAME"
    root = resolve_data_root(data_root)
    return DatasetMissingError(
        f"dataset {name} not found: {one_line(reason).rstrip('. ')}; get it with "
        f"`python -m dml_study.data download {name} --root {root}`, or set the study file's "
        "data_root (or $DML_DATA_ROOT) to the folder that holds it; no trial was started"
    )


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is (a trial is interrupted as by Ctrl-C)."""


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise _Terminated(f"signal {signal.Signals(signum).name}")


def main(argv: list[str] | None = None, *, make_trainer: TrainerFactory | None = None,
         context: dict[str, Any] | None = None) -> int:
    """The ``tune`` command (``argv`` without the ``tune`` word); ``context`` receives the
    ``results_dir`` it writes to and the ``dataset``/``data_root`` of the search under way
    (for the one-line errors of :func:`cli`)."""
    import optuna

    args = build_parser().parse_args(argv)
    config = load_config(args)
    if context is not None:
        context["results_dir"] = config.results_dir
    check = config.tuning.budget_check if config.tuning is not None else None
    if args.budget_check and check is None:
        print(f"{config.source or config.name}: no tuning.budget_check section; nothing to do")
        return 0
    plans = plan_searches(config, arms=args.arms, datasets=args.datasets, trials=args.trials,
                          budget_check=args.budget_check)
    dirname = check.dirname if args.budget_check else TUNING_DIRNAME
    if args.status:
        return _status(config, plans, dirname)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from dml_study.study.launch.launcher import launcher_from_config
    from dml_study.study.tune.budget_check import continue_from_committed
    from dml_study.study.tune.results import write_summary
    from dml_study.study.tune.robustness import train_validation_grids
    from dml_study.study.tune.search import Search

    make_trainer = make_trainer or default_trainer
    launcher = launcher_from_config(config) if any(p.tier != "frozen" for p in plans) else None
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    outcomes = []
    frozen_trainer = None
    try:
        for plan in plans:
            if context is not None:
                context.update(_data_of(plan))
            if plan.tier == "frozen":
                frozen_trainer = frozen_trainer or make_trainer(config, plan, launcher)
                trainer = frozen_trainer
            else:
                trainer = make_trainer(config, plan, launcher)
            trainer.check(plan)
            if args.budget_check:
                continue_from_committed(config, plan)
            with _Bar(plan, enabled=not args.quiet) as bar:
                search = Search(plan, trainer, batch=batch_size(config, plan, args),
                                progress=bar.update)
                outcomes.append(search.run())
            write_summary(config, dirname)
        grids = [] if args.budget_check else train_validation_grids(
            config, launcher, stream=None if args.quiet else sys.stderr)
    except KeyboardInterrupt as exc:
        print(f"\ninterrupted: the trials in flight were enqueued again; re-run the same "
              f"command to resume ({tuning_dir(config, dirname)})", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, _Terminated) else signal.SIGINT)
    except DiskFullError as err:  # raised by atomic writes, which cannot know how we resume
        if err.resume is None:
            err.resume = RESUME_NOTE
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(summary_table(outcomes))
    for line in grids:
        print(line)
    print(f"tuning results: {tuning_dir(config, dirname)}")
    return 0


def _data_of(plan: SearchPlan) -> dict[str, Any]:
    """``{"dataset", "data_root"}`` of ``plan``'s runs (for the missing-dataset line)."""
    from dml_study.study.plan.grid import experiment_config

    try:
        data = experiment_config({**plan.base, "seed": plan.train_seed}).data
    except Exception:  # the trial's own error says more
        return {"dataset": plan.dataset, "data_root": None}
    return {"dataset": data.dataset, "data_root": data.data_root}


class _Bar:
    """A tqdm bar of one search: trials counted out of the budget, best value so far."""

    def __init__(self, plan: SearchPlan, enabled: bool) -> None:
        self.plan, self.enabled, self.bar = plan, enabled, None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.plan.budget, desc=self.plan.label, unit="trial",
                            file=sys.stderr, dynamic_ncols=True, leave=True)
        return self

    def update(self, counted: int, budget: int, best: float | None) -> None:
        if self.bar is None:
            return
        self.bar.total = budget
        self.bar.n = counted
        if best is not None:
            self.bar.set_postfix_str(f"best {self.plan.objective} {best:.4f}", refresh=False)
        self.bar.refresh()

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def summary_table(outcomes: list[Any]) -> str:
    """One line per search: trials done / budget, pruned, failed, best value, its epochs and
    parameters."""
    header = (f"{'dataset':10s} {'arm':28s} {'tier':10s} {'trials':>7s} {'pruned':>6s} "
              f"{'failed':>6s} {'value':>7s} {'R@1':>6s} {'epochs':>6s}  params")
    lines = [header, "-" * len(header)]
    for o in outcomes:
        chosen = o.chosen or {}
        value = "-" if not chosen else f"{chosen['value']:.4f}"
        r1 = "-" if chosen.get("r_at_1") is None else f"{chosen['r_at_1']:.3f}"
        params = " ".join(f"{k}={_fmt(v)}" for k, v in (chosen.get("params") or {}).items())
        lines.append(f"{o.plan.dataset:10s} {o.plan.arm:28s} {o.plan.tier:10s} "
                     f"{o.counted:>3d}/{o.plan.budget:<3d} {o.pruned:>6d} {o.failed:>6d} "
                     f"{value:>7s} {r1:>6s} {chosen.get('epochs', '-')!s:>6s}  {params}")
    return "\n".join(lines)


def _status(config: StudyConfig, plans: list[SearchPlan], dirname: str = TUNING_DIRNAME) -> int:
    from dml_study.study.tune.results import read_chosen

    for plan in plans:
        chosen = read_chosen(plan.directory)
        if not plan.journal.is_file():
            print(f"{plan.label:44s} not started (budget {plan.budget})")
            continue
        import optuna

        from dml_study.study.tune.storage import open_storage

        trials = optuna.load_study(study_name=plan.study_name,
                                   storage=open_storage(plan.journal)).get_trials(deepcopy=False)
        states = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
        done = states["COMPLETE"] + states["PRUNED"]
        best = "-" if chosen is None else f"{chosen['value']:.4f} (trial {chosen['trial']})"
        print(f"{plan.label:44s} {done}/{plan.budget} counted, {states['RUNNING']} running, "
              f"{states['WAITING']} waiting, {states['FAIL']} failed; best {best}")
    print(f"tuning results: {tuning_dir(config, dirname)}")
    return 0


def cli(argv: list[str] | None = None, *, make_trainer: TrainerFactory | None = None) -> int:
    """:func:`main` through :func:`dml_study.errors.run_cli` (one-line errors, exit codes)."""
    context: dict[str, Any] = {}
    return run_cli(lambda a: main(a, make_trainer=make_trainer, context=context), argv,
                   translate=lambda exc: _translate(exc, context))


if __name__ == "__main__":
    sys.exit(cli())
