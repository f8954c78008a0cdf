"""Benchmark: frozen-tier runs per core-second, batched against sequential, in one run.

For each dataset (default: icons and glyphs with the embedded study's frozen settings,
``studies/embedded.yaml``: icons 384-d, glyphs 128-d on its per-class feature subset) it takes
the first runs of the ``frozen_so`` group (no SO and SO alternating, seeds 0, 1, ...) and
trains, round after round and interleaved so that the load of a shared machine affects every
variant alike:

* ``sequential@T`` — :func:`dml_study.study.tiers.frozen.train_frozen`, one run after the
  other, with T torch/faiss threads: the study trains its frozen runs this way, in its own
  process with torch's default thread count (the number of cores, 2 here);
* ``batched-<mode>`` — :func:`dml_study.study.tiers.frozen_batched.train_frozen_batch`, all
  runs in one batch (1 thread), ``mode`` exact (bit-identical) or fast (fused kernels).

Each variant trains whole runs (initialisation, every epoch's training and evaluation, the
run directory), with fewer epochs than the study's 15 (``--epochs``) to keep the benchmark to
minutes. Two figures per variant, the best (max) of the rounds:

* ``runs/core-s (wall)`` = runs / (wall seconds × threads);
* ``runs/CPU-s`` = runs / (user + system CPU seconds of the process): on a shared machine the
  time the process was descheduled does not count, which makes it the steadier figure.

The ratios batched / sequential are taken within the run. ``uptime`` is printed at the start
and the end.

**The float32 floor** (printed per dataset, measured in the same run): what a run could cost
if every one of its floating-point operations ran at the speed of one large float32 matrix
product on one core. Its operations are counted, not estimated: one training step of the
batch under :class:`torch.utils.flop_counter.FlopCounterMode` (every ``bmm``/``baddbmm``,
forward and backward), plus each evaluation's test embedding (``2·M·F·d``) and exact kNN
search (``2·M²·d``, faiss, outside torch's counter), times the run's steps and evaluations.
The peak is the best of five ``torch.mm`` calls of a (4096 × F) · (F × d) product on one
thread, under the same numerical profile. ``floor s/run`` = operations / peak; the largest
speed-up any float32 trainer could show against a sequential reference is that
reference's core-seconds per run over the floor.

    python benchmarks/bench_frozen.py                          # icons and glyphs, 2 epochs
    python benchmarks/bench_frozen.py --datasets icons --runs 16 --epochs 3 --rounds 3
    python benchmarks/bench_frozen.py --seq-threads 1          # skip the 2-thread reference
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import dml_study  # noqa: F401  (first: its numerical profile pins OpenBLAS before faiss loads)

# isort: split
import faiss
import torch
from torch.utils.flop_counter import FlopCounterMode

from dml_study.config import replace
from dml_study.study.plan.config import load_study_config
from dml_study.study.plan.grid import (
    expand_grid,
    frozen_feature_settings,
    unique_runs,
)
from dml_study.study.tiers import frozen
from dml_study.study.tiers import frozen_batched as fb
from dml_study.study.tiers.frozen import frozen_run_config
from dml_study.training.pipeline import build_batch_sampler
from dml_study.training.run_dir import RunDirectory

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def study_runs(study_file: Path, dataset: str, count: int, epochs: int):
    """The first ``count`` frozen_so runs of ``dataset`` (no_so/so alternating by seed)."""
    study = load_study_config(study_file)
    specs = [s for s in unique_runs(expand_grid(study))
             if s.tier == "frozen" and s.dataset == dataset and s.group == "frozen_so"
             and s.protocol == "preset"]
    specs.sort(key=lambda s: (s.seed, s.variant))
    if len(specs) < count:
        raise SystemExit(f"{dataset}: the study has {len(specs)} frozen_so runs, asked {count}")
    configs = [replace(frozen_run_config(study, s), **{"schedule.epochs": epochs})
               for s in specs[:count]]
    began = time.perf_counter()
    features = frozen.extract_features(configs[0], frozen_feature_settings(study, dataset))
    return configs, features, time.perf_counter() - began


def sgemm_peak(rows: int, inner: int, cols: int, repeats: int = 5) -> float:
    """Float32 GFLOP/s of the best of ``repeats`` ``torch.mm`` calls of a (rows × inner) ·
    (inner × cols) product on one thread."""
    set_threads(1)
    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - began)
    return 2.0 * rows * inner * cols / best / 1e9


def float32_floor(configs, features, epochs: int, tmp: str) -> dict[str, float]:
    """Floating-point operations of one run (mean over ``configs``) and the seconds they take
    at this core's float32 matrix-product peak (see the module docstring)."""
    names = [f"flops-{i}" for i in range(len(configs))]
    trainer = fb.BatchedFrozenTrainer(
        [replace(c, **{"run.results_dir": tmp, "run.run_name": n}) for n, c in
         zip(names, configs, strict=True)], features,
        [RunDirectory.for_run(tmp, n) for n in names], mode="fast")
    rows, labels = trainer.epoch_batches(0)
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(rows[0], labels[0])
    step = counter.get_total_flops() / len(configs)
    test, dim, width = len(features.test_labels), configs[0].model.embedding_dim, \
        features.feature_dim
    head = 0 if dim is None or dim == width else 2 * test * width * dim
    evaluation = head + 2 * test * test * (dim or width)
    total = epochs * trainer.steps * step + (epochs + 1) * evaluation
    peak = sgemm_peak(4096, width, dim or width)
    return {"step_gflop": step / 1e9, "eval_gflop": evaluation / 1e9,
            "run_gflop": total / 1e9, "peak_gflops": peak, "floor_s": total / 1e9 / peak}


def measure(train, runs: int, threads: int) -> dict[str, float]:
    set_threads(threads)
    wall, cpu = time.perf_counter(), cpu_seconds()
    train()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return {"wall_s": wall, "cpu_s": cpu, "runs": runs, "threads": threads,
            "runs_per_core_s": runs / (wall * threads), "runs_per_cpu_s": runs / cpu}


def bench_dataset(args: argparse.Namespace, dataset: str) -> dict:
    configs, features, extract_s = study_runs(args.study, dataset, args.runs, args.epochs)
    print(f"\n{dataset}: features {features.key} ({features.train_views.shape[1]} train x "
          f"{features.train_views.shape[0]} views, {len(features.test_labels)} test, "
          f"C = {features.num_classes}, F = {features.feature_dim}; loaded in {extract_s:.0f} s); "
          f"d = {configs[0].model.embedding_dim}, {args.epochs} epochs of "
          f"{len(build_batch_sampler(configs[0], features.train_labels, 0, 1))} steps; batch of "
          f"{args.runs} runs, sequential reference {args.seq_runs} runs", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        floor = float32_floor(configs, features, args.epochs, tmp)
    print(f"  operations per run: {floor['step_gflop'] * 1e3:.0f} MFLOP a training step, "
          f"{floor['eval_gflop']:.2f} GFLOP an evaluation, {floor['run_gflop']:.1f} GFLOP a run; "
          f"one core's float32 peak {floor['peak_gflops']:.0f} GFLOP/s (torch.mm): "
          f"floor {floor['floor_s']:.2f} s/run", flush=True)
    results: dict[str, list[dict[str, float]]] = {}
    for rnd in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            def at(name: str, config):
                return replace(config, **{"run.results_dir": tmp, "run.run_name": name})

            for threads in args.seq_threads:
                def seq(threads: int = threads, rnd: int = rnd) -> None:
                    for i, config in enumerate(configs[:args.seq_runs]):
                        name = f"seq{threads}-{rnd}-{i}"
                        frozen.train_frozen(at(name, config), features,
                                            RunDirectory.for_run(tmp, name))
                results.setdefault(f"sequential@{threads}", []).append(
                    measure(seq, args.seq_runs, threads))
            for mode in args.modes:
                def bat(mode: str = mode, rnd: int = rnd) -> None:
                    names = [f"{mode}-{rnd}-{i}" for i in range(len(configs))]
                    fb.train_frozen_batch([at(n, c) for n, c in zip(names, configs, strict=True)],
                                          features,
                                          [RunDirectory.for_run(tmp, n) for n in names],
                                          mode=mode)
                results.setdefault(f"batched-{mode}", []).append(
                    measure(bat, len(configs), args.batched_threads))
        line = ", ".join(f"{k} {v[-1]['runs_per_cpu_s']:.3f}" for k, v in results.items())
        print(f"  round {rnd + 1}/{args.rounds} runs/CPU-s: {line}", flush=True)
    best = {k: {"runs_per_core_s": max(r["runs_per_core_s"] for r in v),
                "runs_per_cpu_s": max(r["runs_per_cpu_s"] for r in v),
                "min_wall_s_per_run": min(r["wall_s"] / r["runs"] for r in v),
                "threads": v[0]["threads"]} for k, v in results.items()}
    print(f"  {'variant':16s} {'threads':>7s} {'s/run (wall)':>13s} {'runs/core-s':>12s} "
          f"{'runs/CPU-s':>11s}")
    for k, b in best.items():
        print(f"  {k:16s} {b['threads']:7d} {b['min_wall_s_per_run']:13.2f} "
              f"{b['runs_per_core_s']:12.4f} {b['runs_per_cpu_s']:11.4f}")
    for ref in [k for k in best if k.startswith("sequential")]:
        for k in [k for k in best if k.startswith("batched")]:
            print(f"  {k} / {ref}: {best[k]['runs_per_core_s'] / best[ref]['runs_per_core_s']:.2f}x"
                  f" runs/core-s (wall), "
                  f"{best[k]['runs_per_cpu_s'] / best[ref]['runs_per_cpu_s']:.2f}x runs/CPU-s")
    for ref in [k for k in best if k.startswith("sequential")]:
        core_s = 1.0 / best[ref]["runs_per_core_s"]
        print(f"  at the float32 floor: {core_s / floor['floor_s']:.2f}x {ref} "
              f"({core_s:.2f} core-s/run over {floor['floor_s']:.2f} s/run)")
    return {"rounds": results, "best": best, "epochs": args.epochs, "runs": args.runs,
            "float32_floor": floor}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", type=Path, default=ROOT / "studies" / "embedded.yaml")
    parser.add_argument("--datasets", nargs="+", default=["icons", "glyphs"])
    parser.add_argument("--runs", type=int, default=8, help="runs in the batch")
    parser.add_argument("--seq-runs", type=int, default=2,
                        help="runs of the sequential reference (even: as many SO as no-SO runs)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (study: 15)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=list(fb.MODES), choices=fb.MODES)
    parser.add_argument("--seq-threads", type=int, nargs="+", default=[1, os.cpu_count() or 1],
                        help="thread counts of the sequential reference (the study: all cores)")
    parser.add_argument("--batched-threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args()
    args.seq_threads = list(dict.fromkeys(args.seq_threads))
    start = uptime()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, faiss {faiss.__version__}\nstart: {start}", flush=True)
    report = {"machine": {"cores": os.cpu_count(), "torch": torch.__version__,
                          "uptime_start": start}}
    for dataset in args.datasets:
        report[dataset] = bench_dataset(args, dataset)
    report["machine"]["uptime_end"] = end = uptime()
    print(f"\nend: {end}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
