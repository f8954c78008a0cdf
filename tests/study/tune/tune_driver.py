"""``python tests/study/tune/tune_driver.py --config STUDY ...``: the real ``tune`` command in
a real process, with the frozen trainer's contract-A steps stood in (``tune_helpers``).

What the fault tests start and kill. Everything but the stand-in trainer is the command's
own code path (:func:`dml_study.study.tune.cli.cli`: parsing, one-line errors, exit codes).
"""

from __future__ import annotations

import sys

from tune_helpers import standin_trainer_factory

from dml_study.study.tune.cli import cli

if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:], make_trainer=standin_trainer_factory))
