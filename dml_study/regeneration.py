"""Checking a regeneration: the profile in effect here, and two results directories compared.

A study regenerated on another machine should give the same bits as the committed one
(:mod:`dml_study.determinism`). Two checks, from the command line::

    python -m dml_study.regeneration report                      # the profile in effect here
    python -m dml_study.regeneration compare results/ /tmp/regen/results

``report`` prints :func:`dml_study.determinism.determinism_report` (exit status 1 when a
setting of the profile is not in effect). ``compare`` lists, for every finished run of
either directory, ``identical`` or the first key whose value differs (``metrics.json``,
then every record of ``history.json``; timing keys excepted), exactly or to ``--digits``
significant digits; exit status 1 when any run differs.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from dml_study import determinism

#: Keys of ``metrics.json`` / ``history.json`` that measure time, not results.
TIMING_KEYS = frozenset({"train_time_s", "time_s", "img_per_s"})


def _significant(value: float, digits: int) -> float:
    return float(f"{value:.{digits - 1}e}")


def _first_difference(a: Any, b: Any, digits: int | None, where: str = "") -> str | None:
    """Where ``a`` and ``b`` (JSON values) first differ (``None``: equal, or equal to
    ``digits`` significant digits when given)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key in TIMING_KEYS:
                continue
            if key not in a or key not in b:
                return f"{where}{key}: only in {'the first' if key in a else 'the second'}"
            found = _first_difference(a[key], b[key], digits, f"{where}{key}.")
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where.rstrip('.')}: {len(a)} vs {len(b)} entries"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _first_difference(x, y, digits, f"{where}{i}.")
            if found is not None:
                return found
        return None
    if isinstance(a, float) and isinstance(b, float) and digits is not None:
        if _significant(a, digits) == _significant(b, digits):
            return None
    return None if a == b else f"{where.rstrip('.')}: {a!r} vs {b!r}"


def compare_runs(
    first: str | os.PathLike[str], second: str | os.PathLike[str], digits: int | None = None
) -> dict[str, str | None]:
    """Run name -> first difference between two results directories (``None``: identical).

    Compares ``metrics.json`` and ``history.json`` of every finished run (a directory with
    ``metrics.json`` under ``<dir>/runs/`` or ``<dir>/``), timing keys excepted, exactly or
    to ``digits`` significant digits. Runs finished in only one directory are reported too.
    """
    import json
    from pathlib import Path

    def finished(root: Path) -> dict[str, Path]:
        base = root / "runs" if (root / "runs").is_dir() else root
        return {p.parent.name: p.parent for p in sorted(base.glob("*/metrics.json"))}

    runs_a, runs_b = finished(Path(first)), finished(Path(second))
    out: dict[str, str | None] = {}
    for name in sorted(set(runs_a) | set(runs_b)):
        if name not in runs_a or name not in runs_b:
            out[name] = f"finished only in {first if name in runs_a else second}"
            continue
        for file in ("metrics.json", "history.json"):
            a = json.loads((runs_a[name] / file).read_text(encoding="utf-8"))
            b = json.loads((runs_b[name] / file).read_text(encoding="utf-8"))
            found = _first_difference(a, b, digits)
            if found is not None:
                out[name] = f"{file}: {found}"
                break
        else:
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m dml_study.regeneration [report | compare A B [--digits N]]``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m dml_study.regeneration",
        description="The numerical profile in effect here (report; exit 1 when a setting that "
                    "this CPU supports is not pinned), or the runs of two results directories "
                    "compared.")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("report", help="print the profile in effect as JSON (the default)")
    cmp_ = sub.add_parser("compare", help="compare the finished runs of two results dirs")
    cmp_.add_argument("first")
    cmp_.add_argument("second")
    cmp_.add_argument("--digits", type=int, default=None,
                      help="equal to this many significant digits (default: exactly)")
    args = parser.parse_args(argv)
    if args.command == "compare":
        result = compare_runs(args.first, args.second, args.digits)
        for name, difference in result.items():
            print(f"{name}: {'identical' if difference is None else difference}")
        differing = sum(d is not None for d in result.values())
        print(f"{len(result) - differing} of {len(result)} runs identical"
              + (f" to {args.digits} significant digits" if args.digits else ""))
        return int(differing > 0)
    report = determinism.apply()
    print(json.dumps(report, indent=2))
    return int(bool(report["unpinned"]))


if __name__ == "__main__":
    from dml_study.errors import run_cli

    sys.exit(run_cli(main))
