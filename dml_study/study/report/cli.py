"""``python -m dml_study.study.report``: render a study's report again, or the README's scorecard.

::

    python -m dml_study.study.report --config studies/embedded.yaml   # pages, index, README block
    python -m dml_study.study.report --readme                         # README.md's scorecard blocks
    python -m dml_study.study.report --readme --check                 # exit 1 when a block is stale

``--config`` re-renders every page and the index from what is on disk (nothing is executed,
:func:`dml_study.study.report.index.main`) and then the project README's scorecard block
of that study. ``--readme [FILE]`` (default ``README.md``) regenerates every scorecard block
of FILE from the ``claims.json`` it names (:mod:`~dml_study.study.report.readme`); with
``--check`` it only reports blocks that disagree with their file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dml_study.errors import EXIT_USAGE, UserFacingError, run_cli
from dml_study.study.report.readme import (
    ReadmeOutOfDate,
    readme_problems,
    update_project_readme,
    update_readme,
)


class ReportUsageError(UserFacingError):
    """A README that does not exist, or options that do not go together."""

    exit_code = EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """Render the report again (``--config``) or the README's scorecard (``--readme``)."""
    parser = argparse.ArgumentParser(prog="python -m dml_study.study.report",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="the study file: render its report again")
    parser.add_argument("--readme", nargs="?", const=Path("README.md"), type=Path,
                        metavar="FILE", help="regenerate FILE's scorecard blocks "
                                             "(default README.md)")
    parser.add_argument("--check", action="store_true",
                        help="with --readme: change nothing, exit 1 when a block is stale")
    args = parser.parse_args(argv)
    if args.readme is None:
        if args.check:
            raise ReportUsageError("--check goes with --readme (python -m "
                                   "dml_study.study.report --readme --check)")
        if args.config is None:
            parser.error("give --config STUDY (render the report) or --readme [FILE]")
        from dml_study.study.plan.config import load_study_config
        from dml_study.study.report.index import main as render

        try:
            status = render(["--config", str(args.config)])
        except FileNotFoundError as exc:  # no summary.json: the study never ran
            raise ReportUsageError(str(exc)) from exc
        config = load_study_config(args.config)
        if status == 0 and update_project_readme(config.root, config.study_dir / "claims.json"):
            print(f"README.md: scorecard block of {config.name} updated")
        return status
    readme = args.readme
    if not readme.is_file():
        raise ReportUsageError(f"{readme} does not exist; give the README with the scorecard "
                               "markers: --readme path/to/README.md")
    if args.check:
        problems = readme_problems(readme)
        if problems:
            raise ReadmeOutOfDate("; ".join(problems))
        print(f"{readme}: every scorecard block agrees with its claims.json")
        return 0
    changed = update_readme(readme)
    print(f"{readme}: scorecard block(s) {'updated' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
