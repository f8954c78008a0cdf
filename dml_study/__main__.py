"""Command line: ``python -m dml_study --version`` and ``python -m dml_study env``."""

from __future__ import annotations

import argparse
import json
import sys

from dml_study import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dml_study", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dml_study {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("env", help="print the provenance record (versions, device, threads, commit)")
    args = parser.parse_args(argv)
    if args.command == "env":
        from dml_study.env import environment_report

        print(json.dumps(environment_report(), indent=2))
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
