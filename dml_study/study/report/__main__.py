"""``python -m dml_study.study.report --config STUDY``: render the pages and index again."""

import sys

from dml_study.study.report.index import main

if __name__ == "__main__":
    sys.exit(main())
