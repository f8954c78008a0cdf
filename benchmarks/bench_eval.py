"""Benchmark: ``dml_study.evaluation.evaluate`` vs pytorch-metric-learning's AccuracyCalculator.

Builds SOP-sized synthetic clustered embeddings (default 60,502 x 384, 11,316 classes with
2-12 images each, seeded) and measures, each side in its own subprocess so that peak RSS is
that side's alone:

- ours, the metrics PML also computes: R@1, MAP@R, R-Precision (one faiss search);
- PML ``AccuracyCalculator`` on the same data: precision_at_1, mean_average_precision_at_r,
  r_precision (``k="max_bin_count"``), then NMI in a second call (same faiss k-means:
  20 iterations, same seed), timed separately;
- ours, the full SOP evaluation: R@1/10/100/1000, MAP@R, R-Precision and NMI.

It prints wall times, peak RSS, the speed-up ratios and whether the shared numbers agree.
Peak RSS is the worker's ``ru_maxrss`` (includes the Python interpreter, torch/faiss imports
and the embeddings themselves); the RSS before the timed call is printed next to it.

    python benchmarks/bench_eval.py                        # SOP size (several minutes)
    python benchmarks/bench_eval.py --n 6000 --classes 1100  # quick run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SOP_N, SOP_CLASSES, SOP_DIM = 60_502, 11_316, 384
MIN_PER_CLASS, MAX_PER_CLASS = 2, 12
SOP_KS = (1, 10, 100, 1000)


def class_sizes(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """``classes`` sizes in [2, 12] summing to ``n``, skewed towards small classes like SOP."""
    if not MIN_PER_CLASS * classes <= n <= MAX_PER_CLASS * classes:
        raise SystemExit(
            f"--n must be between {MIN_PER_CLASS}*classes and {MAX_PER_CLASS}*classes "
            f"({MIN_PER_CLASS * classes}..{MAX_PER_CLASS * classes}); got {n}"
        )
    sizes = np.full(classes, MIN_PER_CLASS)
    weights = rng.exponential(size=classes)
    while (left := n - sizes.sum()) > 0:
        room = sizes < MAX_PER_CLASS
        p = np.where(room, weights, 0.0)
        picks = rng.choice(classes, size=left, p=p / p.sum())
        sizes += np.bincount(picks, minlength=classes)
        sizes = np.minimum(sizes, MAX_PER_CLASS)
    return sizes


def make_data(n: int, classes: int, dim: int, noise: float, seed: int):
    """L2-normalised float32 embeddings around random class centres, shuffled, and labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), class_sizes(n, classes, rng))
    labels = labels[rng.permutation(n)]
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    x = centres[labels]
    x += noise * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels.astype(np.int64)


def _rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(side: str, data: Path, seed: int) -> dict:
    """Run one side on the saved data; return times, metrics and memory."""
    x = np.load(data / "x.npy")
    y = np.load(data / "y.npy")
    out: dict = {}
    if side.startswith("ours"):
        from dml_study.evaluation import evaluate

        full = side == "ours-full"
        out["rss_before_mb"] = _rss_mb()
        t = time.perf_counter()
        result = evaluate(x, y, ks=SOP_KS if full else (1,), nmi=full, seed=seed)
        out["seconds"] = time.perf_counter() - t
        out["metrics"] = result.to_dict()
        out["excluded"] = result.excluded_queries
    elif side == "pml":
        import torch
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
        from pytorch_metric_learning.utils.inference import FaissKMeans

        calc = AccuracyCalculator(
            include=("precision_at_1", "mean_average_precision_at_r", "r_precision", "NMI"),
            k="max_bin_count",
            device=torch.device("cpu"),
            kmeans_func=FaissKMeans(niter=20, seed=seed),
        )
        out["rss_before_mb"] = _rss_mb()
        t = time.perf_counter()
        retrieval = calc.get_accuracy(
            x, y, include=("precision_at_1", "mean_average_precision_at_r", "r_precision")
        )
        out["seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        nmi = calc.get_accuracy(x, y, include=("NMI",))
        out["nmi_seconds"] = time.perf_counter() - t
        out["metrics"] = {
            "R@1": retrieval["precision_at_1"],
            "MAP@R": retrieval["mean_average_precision_at_r"],
            "RP": retrieval["r_precision"],
            "NMI": nmi["NMI"],
        }
    else:
        raise SystemExit(f"unknown worker side {side!r}; valid: ours-overlap, ours-full, pml")
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def run_worker(side: str, data: Path, seed: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--data", str(data), "--seed", str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker {side} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_report(args, ours, full, pml) -> None:
    rows = [
        ("ours: R@1, MAP@R, RP", ours["seconds"], ours),
        ("PML:  P@1, MAP@R, RP", pml["seconds"], pml),
        ("ours: R@1/10/100/1000, MAP@R, RP, NMI", full["seconds"], full),
        ("PML:  P@1, MAP@R, RP + NMI (2 calls)", pml["seconds"] + pml["nmi_seconds"], pml),
    ]
    print(
        f"\nSynthetic SOP-like embeddings: {args.n} x {args.dim}, {args.classes} classes "
        f"(2-12 per class), noise {args.noise}, seed {args.seed}; self-retrieval."
    )
    print(f"{'run':<40} {'wall s':>8} {'peak RSS MB':>12} {'RSS before MB':>14}")
    for name, seconds, info in rows:
        print(
            f"{name:<40} {seconds:8.1f} {info['peak_rss_mb']:12.0f} {info['rss_before_mb']:14.0f}"
        )
    print(f"PML NMI call alone: {pml['nmi_seconds']:.1f} s")
    print(
        f"speed-up, same metrics (PML / ours):            {pml['seconds'] / ours['seconds']:.2f}x"
    )
    total_pml = pml["seconds"] + pml["nmi_seconds"]
    print(f"speed-up, ours full vs PML overlap + NMI:       {total_pml / full['seconds']:.2f}x")
    print(f"\n{'metric':<8} {'ours':>12} {'ours full':>12} {'PML':>12} {'|diff|':>10}")
    for key in ("R@1", "MAP@R", "RP", "NMI"):
        a = ours["metrics"].get(key, full["metrics"][key])
        diff = max(abs(a - pml["metrics"][key]), abs(full["metrics"][key] - pml["metrics"][key]))
        print(
            f"{key:<8} {a:12.8f} {full['metrics'][key]:12.8f} {pml['metrics'][key]:12.8f} "
            f"{diff:10.2e}"
        )
    for k in SOP_KS[1:]:
        print(f"R@{k:<6} {'':>12} {full['metrics'][f'R@{k}']:12.8f}")
    same = (
        all(
            abs(full["metrics"][key] - pml["metrics"][key]) <= 1e-6
            for key in ("R@1", "MAP@R", "RP")
        )
        and abs(ours["metrics"]["MAP@R"] - pml["metrics"]["MAP@R"]) <= 1e-6
    )
    print(
        f"shared retrieval metrics equal to 1e-6: {same}; "
        f"NMI equal: {abs(full['metrics']['NMI'] - pml['metrics']['NMI']) <= 1e-9}; "
        f"queries excluded (lone): {full['excluded']}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=SOP_N, help="number of embeddings")
    parser.add_argument("--classes", type=int, default=SOP_CLASSES, help="number of classes")
    parser.add_argument("--dim", type=int, default=SOP_DIM, help="embedding dimension")
    parser.add_argument("--noise", type=float, default=2.0, help="within-class noise scale")
    parser.add_argument("--seed", type=int, default=0, help="data and k-means seed")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.data, args.seed)))
        return
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        data = Path(tmp)
        x, y = make_data(args.n, args.classes, args.dim, args.noise, args.seed)
        np.save(data / "x.npy", x)
        np.save(data / "y.npy", y)
        del x, y
        results = {}
        for side in ("ours-overlap", "pml", "ours-full"):
            print(f"running {side} ...", file=sys.stderr, flush=True)
            results[side] = run_worker(side, data, args.seed)
    print_report(args, results["ours-overlap"], results["ours-full"], results["pml"])


if __name__ == "__main__":
    main()
