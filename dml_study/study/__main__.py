"""Command line: ``python -m dml_study.study --config studies/embedded.yaml``.

Trains the ablation grid's missing runs, then executes the study's notebooks in order and
writes ``results/<study>/``. How runs are trained (study file: ``execution``; overridable
here):

  --launcher local --max-parallel 2                   two runs at once on this machine
  --launcher local --max-parallel 4 --devices cuda:0,cuda:1,cuda:2,cuda:3
  --launcher slurm --slurm partition=gpu --slurm time_min=720 [--no-wait]

``--list-runs`` prints every run of the grid as pending / running / finished / failed
with its job id and the cells it serves (``group/variant``, `` (tuned)`` for the tuned
protocol's), without running anything. ``--collect`` trains nothing and renders the
report from the runs that have finished (e.g. after ``--no-wait``).
``--smoke`` runs the whole grid and every notebook with a tiny CPU recipe (minutes; checks
the data root and the pipeline, see :mod:`dml_study.study.plan.smoke`; tiny searches of the
``tuning`` section first, so the tuned cells have their values); ``--results-dir DIR``
writes runs and report under DIR instead of the study's ``results_dir``.
``tune --config STUDY [...]`` runs the study's equal-budget hyperparameter searches instead
(:mod:`dml_study.study.tune.cli`; ``make tune``).
A fault prints one line, ``error: <cause, file and fix>`` (``--debug`` or
``DML_STUDY_DEBUG=1`` adds the traceback), and exits with the code of :mod:`dml_study.errors`
(see :mod:`dml_study.study.pipeline.errors`): 1 a grid run or notebook failed (named: run
and log, or notebook, cell and executed copy), 2 the study file or an option, 3 a missing
dataset or a corrupt image, 4 disk full, 6 a run or the study's report held by another live
process, 130 interrupted. A re-run retries only what failed: finished runs are reused and
the previous report stays until the new one is complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import yaml

from dml_study.study.plan.config import (
    LAUNCHERS,
    StudyConfig,
    StudyConfigError,
    build_slurm_config,
    load_study_config,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dml_study.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="--debug: show the traceback of a fault as well")
    parser.add_argument("--config", default="studies/embedded.yaml",
                        help="study file (default: %(default)s)")
    parser.add_argument("--only", nargs="+", metavar="NOTEBOOK",
                        help="execute only these notebooks of the study (e.g. 05_results.ipynb)")
    parser.add_argument("--no-html", action="store_true", help="skip the nbconvert HTML pages")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--list-runs", action="store_true",
                        help="print the grid's runs: pending / running / finished / failed, "
                             "with job ids")
    parser.add_argument("--smoke", action="store_true",
                        help="whole grid and every notebook with a tiny CPU recipe (1 epoch, "
                        "DeiT-Tiny without pretrained weights, 32 px): checks data + pipeline")
    parser.add_argument("--results-dir", metavar="DIR",
                        help="write runs and report under DIR (default: the study's "
                        "results_dir; with --smoke: <results_dir>/smoke)")
    grid = parser.add_argument_group("training the grid (default: the study's execution section)")
    grid.add_argument("--launcher", choices=LAUNCHERS,
                      help="local: runs on this machine, --max-parallel at a time; slurm: one "
                           "SLURM job per run through submitit (a job array)")
    grid.add_argument("--max-parallel", type=int, metavar="N",
                      help="local launcher: train up to N runs at once")
    grid.add_argument("--devices", metavar="D1,D2,...",
                      help="local launcher: devices assigned round-robin to concurrent runs, "
                           "e.g. cuda:0,cuda:1 (default: the study's train.device)")
    grid.add_argument("--threads-per-run", type=int, metavar="T",
                      help="local launcher: CPU threads of each run (default: cores / N)")
    grid.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                      help="override a key of execution.slurm (repeatable), e.g. "
                           "partition=gpu, account=proj, time_min=720, gpus_per_run=4")
    grid.add_argument("--no-wait", action="store_true",
                      help="slurm launcher: return after submitting the grid; render later "
                           "with --collect (local runs always finish first)")
    grid.add_argument("--collect", action="store_true",
                      help="train nothing: render the notebooks and report from finished runs")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``study`` command through :func:`dml_study.errors.run_cli`: a fault prints one
    ``error:`` line naming cause, file and fix and exits with its code
    (:mod:`dml_study.study.pipeline.errors`); ``--debug`` adds the traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["tune"]:  # python -m dml_study.study tune --config STUDY (docs/tuning.md)
        from dml_study.study.tune.cli import cli

        return cli(argv[1:])
    from dml_study.errors import run_cli
    from dml_study.study.pipeline.errors import translate

    context: dict[str, StudyConfig] = {}
    return run_cli(lambda args: run(args, context), argv,
                   translate=lambda exc: translate(exc, context.get("config")))


def run(argv: list[str] | None, context: dict[str, StudyConfig] | None = None) -> int:
    """The ``study`` command without the one-line error handling (faults are raised);
    ``context`` receives the loaded ``config`` for :func:`main`'s error lines."""
    from dml_study.study.pipeline.errors import StudyDataError, StudyUsageError

    parser = build_parser()
    args = parser.parse_args(argv)
    config = load_study_config(args.config)
    if args.smoke or args.results_dir:
        from dml_study.study.plan.smoke import derived_study_file

        results_dir = args.results_dir or config.results_dir / "smoke"
        config = load_study_config(derived_study_file(args.config, results_dir, smoke=args.smoke))
    config = apply_execution_overrides(config, args)
    if context is not None:
        context["config"] = config
    if args.list_runs:
        try:
            return _list_runs(config)
        except StudyConfigError as exc:  # e.g. a chosen.json tuned for another config
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.smoke:
        from dml_study.study.plan.smoke import check_data

        try:
            check_data(config)
        except (FileNotFoundError, ValueError) as exc:
            raise StudyDataError(f"smoke check of the data root failed: {exc}") from exc
        if not args.collect:
            code = _smoke_tune(config, quiet=args.quiet)
            if code:
                return code
    unknown = sorted(set(args.only or ()) - set(config.notebooks))
    if unknown:
        raise StudyUsageError(f"--only {' '.join(unknown)}: not a notebook of the study "
                              f"{config.source}; its notebooks: {', '.join(config.notebooks)}")
    from dml_study.study.pipeline.runner import run_study

    try:
        run_study(config, only=args.only, html=not args.no_html, progress=not args.quiet,
                  wait=not args.no_wait, collect=args.collect)
    except KeyboardInterrupt:
        print(f"\ninterrupted: re-run the same command to continue; finished runs are reused "
              f"and the previous report in {config.study_dir} is untouched", file=sys.stderr)
        return 130
    return 0


def _smoke_tune(config: StudyConfig, quiet: bool = False) -> int:
    """``--smoke``: the derived study's tiny searches first (``tune``, then ``tune
    --budget-check`` when the study has one), so its tuned cells find their ``chosen.json``.

    Returns ``tune``'s exit status when it fails (0 otherwise, or when the study tunes nothing).
    """
    tuned = any(p != "preset" for g in config.groups for p in g.protocols)
    if config.tuning is None or not config.tuning.arms or not tuned:
        return 0
    from dml_study.study.tune.cli import cli as tune_cli

    base = ["--config", str(config.source), *(["--quiet"] if quiet else [])]
    if not quiet:
        print(f"[study {config.name}] --smoke: the tiny searches first (tune)", flush=True)
    code = tune_cli(base)
    if code == 0 and config.tuning.budget_check is not None:
        code = tune_cli([*base, "--budget-check"])
    if code:
        print(f"study {config.name} stopped: the smoke searches failed (exit {code})",
              file=sys.stderr)
    return code


def apply_execution_overrides(config: StudyConfig, args: argparse.Namespace) -> StudyConfig:
    """``config`` with the command line's launcher options applied to ``execution``."""
    execution = config.execution
    changes: dict[str, object] = {}
    if args.launcher is not None:
        changes["launcher"] = args.launcher
    if args.max_parallel is not None:
        if args.max_parallel < 1:
            raise StudyConfigError(f"--max-parallel must be >= 1, got {args.max_parallel}")
        changes["max_parallel"] = args.max_parallel
    if args.devices:
        changes["devices"] = tuple(d.strip() for d in args.devices.split(",") if d.strip())
    if args.threads_per_run is not None:
        if args.threads_per_run < 1:
            raise StudyConfigError(f"--threads-per-run must be >= 1, got {args.threads_per_run}")
        changes["threads_per_run"] = args.threads_per_run
    if args.slurm:
        overrides = {}
        for item in args.slurm:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise StudyConfigError(f"--slurm {item!r}: expected KEY=VALUE, e.g. partition=gpu")
            overrides[key.strip()] = yaml.safe_load(value)
        changes["slurm"] = build_slurm_config(execution.slurm, overrides, "--slurm")
    if not changes:
        return config
    return dataclasses.replace(config, execution=dataclasses.replace(execution, **changes))


def _list_runs(config: StudyConfig) -> int:
    from dml_study.study.launch.launcher import run_states
    from dml_study.study.launch.slurm import scheduler_state
    from dml_study.study.plan.grid import expand_grid, untuned_searches
    from dml_study.study.plan.tuned import TUNING_DIRNAME, tune_command

    rows = run_states(config, job_state=lambda launcher, job: scheduler_state(config, launcher,
                                                                              job),
                      skip_untuned=True)
    for row in rows:
        job = row.job_id or "-"
        detail = f"  ({row.detail})" if row.detail else ""
        print(f"{row.run_name:48s} {row.state:8s} {job:>12s}  {', '.join(row.cells)}{detail}")
    counts = {s: sum(r.state == s for r in rows) for s in ("finished", "running", "pending",
                                                           "failed")}
    print(f"{len(rows)} runs for {len(expand_grid(config, skip_untuned=True))} grid cells: "
          + ", ".join(f"{n} {s}" for s, n in counts.items()))
    missing = untuned_searches(config)
    if missing:
        commands = {tune_command(config, budget_check=p.parents[2].name != TUNING_DIRNAME)
                    for p in missing}
        print(f"not listed: the tuned cells of {len(missing)} search(es) without a complete "
              f"chosen.json (run {' and '.join(sorted(commands))} first)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
