"""Wall time of training part of the embedded grid: one run at a time vs two at once.

Trains the first ``--runs`` distinct runs of ``studies/embedded.yaml`` (default 4: the
headline arms at seeds 0 and 1) from scratch twice, each time into a fresh temporary
results directory, back to back:

- sequential: the local launcher with ``--max-parallel 1`` (each run uses every core), and
- parallel: ``--max-parallel 2`` with ``--threads-per-run 1`` (each run one core),

and prints both wall times and their ratio (> 1: parallel is faster). The runs are the
study's real runs (real ``02_train`` notebooks, the preset's epochs), so this takes
minutes. On a shared machine the absolute times are noisy; the ratio of two back-to-back
measurements less so.

    python benchmarks/bench_launch.py [--runs 4] [--epochs N] [--parallel-first]
                                      [--study studies/embedded.yaml]

On a machine shared with other CPU-bound jobs the comparison favours the parallel grid:
the scheduler shares the cores per process, so two runs get more of the machine than one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

from dml_study.study.launch.launcher import launch_grid
from dml_study.study.launch.local import LocalLauncher
from dml_study.study.plan.config import load_study_config
from dml_study.study.plan.grid import expand_grid, unique_runs

ROOT = Path(__file__).resolve().parents[1]


def timed_grid(study: Path, runs: int, launcher: LocalLauncher, epochs: int | None) -> float:
    """Seconds to train the first ``runs`` runs of ``study`` from scratch with ``launcher``."""
    with tempfile.TemporaryDirectory(prefix="bench-launch-") as tmp:
        config = load_study_config(study, results_dir=tmp)
        if epochs is not None:
            config = dataclasses.replace(config, train={**config.train, "epochs": epochs})
        specs = unique_runs(expand_grid(config))[:runs]
        started = time.perf_counter()
        grid = launch_grid(config, launcher, specs=specs, progress=True)
        seconds = time.perf_counter() - started
        assert [r.status for r in grid.results] == ["trained"] * len(specs), grid.results
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=ROOT / "studies" / "embedded.yaml")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=None,
                        help="train each run this many epochs (default: the preset's)")
    parser.add_argument("--parallel-first", action="store_true",
                        help="time the parallel grid first (to check for drift in the load)")
    args = parser.parse_args()
    from dml_study.data import get_dataset

    get_dataset("icons", "train")  # build the dataset cache before timing anything
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the start")
    legs = {
        "sequential": LocalLauncher(max_parallel=1),
        "parallel": LocalLauncher(max_parallel=2, threads_per_run=1),
    }
    order = ["parallel", "sequential"] if args.parallel_first else ["sequential", "parallel"]
    seconds = {}
    for leg in order:
        seconds[leg] = timed_grid(args.study, args.runs, legs[leg], args.epochs)
        print(f"load average {os.getloadavg()[0]:.1f} after the {leg} grid")
    sequential, parallel = seconds["sequential"], seconds["parallel"]
    epochs = f", {args.epochs} epoch(s) each" if args.epochs else ""
    print(f"{args.runs} runs of {args.study.name}{epochs}: sequential {sequential:.0f} s, "
          f"--max-parallel 2 (1 thread each) {parallel:.0f} s; speed-up "
          f"{sequential / parallel:.2f}x (load average {os.getloadavg()[0]:.1f} at the end)")


if __name__ == "__main__":
    main()
