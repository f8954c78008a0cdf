"""Command line: ``python -m dml_study.study --config studies/embedded.yaml``.

Executes the study's notebooks in order and writes ``results/<study>/``. ``--list-runs``
prints the ablation grid (run names, finished or not) without running anything.
``--smoke`` runs the whole grid and every notebook with a tiny CPU recipe (minutes; checks
the data root and the pipeline, see :mod:`dml_study.study.smoke`); ``--results-dir DIR``
writes runs and report under DIR instead of the study's ``results_dir``.
Exit status 1 with the failing notebook and cell when a notebook fails.
"""

from __future__ import annotations

import argparse
import sys

from dml_study.study.config import StudyConfigError, load_study_config
from dml_study.study.notebooks import NotebookExecutionError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dml_study.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="studies/embedded.yaml",
                        help="study file (default: %(default)s)")
    parser.add_argument("--only", nargs="+", metavar="NOTEBOOK",
                        help="execute only these notebooks of the study (e.g. 05_results.ipynb)")
    parser.add_argument("--no-html", action="store_true", help="skip the nbconvert HTML pages")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--list-runs", action="store_true",
                        help="print the ablation grid's runs and whether they are finished")
    parser.add_argument("--smoke", action="store_true",
                        help="whole grid and every notebook with a tiny CPU recipe (1 epoch, "
                        "DeiT-Tiny without pretrained weights, 32 px): checks data + pipeline")
    parser.add_argument("--results-dir", metavar="DIR",
                        help="write runs and report under DIR (default: the study's "
                        "results_dir; with --smoke: <results_dir>/smoke)")
    args = parser.parse_args(argv)
    try:
        config = load_study_config(args.config)
        if args.smoke or args.results_dir:
            from dml_study.study.smoke import derived_study_file

            results_dir = args.results_dir or config.results_dir / "smoke"
            config = load_study_config(
                derived_study_file(args.config, results_dir, smoke=args.smoke)
            )
    except StudyConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.list_runs:
        return _list_runs(config)
    if args.smoke:
        from dml_study.study.smoke import check_data

        try:
            check_data(config)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: smoke check of the data root failed: {exc}", file=sys.stderr)
            return 2
    from dml_study.study.runner import run_study

    try:
        run_study(config, only=args.only, html=not args.no_html, progress=not args.quiet)
    except NotebookExecutionError as exc:
        print(f"\nstudy {config.name} stopped: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _list_runs(config) -> int:
    from dml_study.study.grid import expand_grid, is_finished, unique_runs

    specs = expand_grid(config)
    runs = unique_runs(specs)
    for spec in runs:
        cells = [f"{s.group}/{s.variant}" for s in specs if s.run_name == spec.run_name]
        state = "finished" if is_finished(config.results_dir, spec.run_name) else "missing"
        print(f"{spec.run_name:48s} {state:8s} {', '.join(sorted(set(cells)))}")
    print(f"{len(runs)} runs for {len(specs)} grid cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
