"""``python -m dml_study.study.report``: render the pages and index again, or the README's
scorecard (see :mod:`dml_study.study.report.cli`)."""

import sys

from dml_study.errors import run_cli
from dml_study.study.report.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
