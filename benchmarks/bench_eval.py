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


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return usage.ru_utime + usage.ru_stime


class _Stopwatch:
    """Accumulates the wall time spent inside a wrapped callable."""

    def __init__(self, fn):
        self.fn = fn
        self.seconds = 0.0

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t


def _timed(out: dict, prefix: str, fn):
    """Call ``fn()``; record wall and CPU seconds under ``prefix``; return its result."""
    cpu, wall = _cpu_seconds(), time.perf_counter()
    result = fn()
    out[f"{prefix}seconds"] = time.perf_counter() - wall
    out[f"{prefix}cpu_seconds"] = _cpu_seconds() - cpu
    return result


def worker(side: str, data: Path, seed: int) -> dict:
    """Run one side on the saved data; return times, metrics and memory."""
    import faiss

    x = np.load(data / "x.npy")
    y = np.load(data / "y.npy")
    out: dict = {}
    if side.startswith("ours"):
        from dml_study.evaluation import evaluate

        # Instrumentation only: time our exact kNN (the faiss IndexFlatIP searches).
        knn_clock = _Stopwatch(faiss.IndexFlatIP.search)
        faiss.IndexFlatIP.search = lambda self, *a, **kw: knn_clock(self, *a, **kw)
        full = side == "ours-full"
        out["rss_before_mb"] = _rss_mb()
        result = _timed(
            out, "", lambda: evaluate(x, y, ks=SOP_KS if full else (1,), nmi=full, seed=seed)
        )
        out["knn_seconds"] = knn_clock.seconds
        out["metrics"] = result.to_dict()
        out["excluded"] = result.excluded_queries
    elif side == "pml":
        import torch
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
        from pytorch_metric_learning.utils.inference import FaissKMeans, FaissKNN

        knn_clock = _Stopwatch(FaissKNN())  # PML's default kNN, timed
        calc = AccuracyCalculator(
            include=("precision_at_1", "mean_average_precision_at_r", "r_precision", "NMI"),
            k="max_bin_count",
            device=torch.device("cpu"),
            knn_func=knn_clock,
            kmeans_func=FaissKMeans(niter=20, seed=seed),
        )
        out["rss_before_mb"] = _rss_mb()
        retrieval = _timed(
            out,
            "",
            lambda: calc.get_accuracy(
                x, y, include=("precision_at_1", "mean_average_precision_at_r", "r_precision")
            ),
        )
        out["knn_seconds"] = knn_clock.seconds
        nmi = _timed(out, "nmi_", lambda: calc.get_accuracy(x, y, include=("NMI",)))
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
    pml_total = {
        "seconds": pml["seconds"] + pml["nmi_seconds"],
        "cpu_seconds": pml["cpu_seconds"] + pml["nmi_cpu_seconds"],
        "knn_seconds": pml["knn_seconds"],
    }
    rows = [
        ("ours: R@1, MAP@R, RP", ours, ours),
        ("PML:  P@1, MAP@R, RP", pml, pml),
        ("ours: R@1/10/100/1000, MAP@R, RP, NMI", full, full),
        ("PML:  P@1, MAP@R, RP + NMI (2 calls)", pml_total, pml),
    ]
    print(
        f"\nSynthetic SOP-like embeddings: {args.n} x {args.dim}, {args.classes} classes "
        f"(2-12 per class), noise {args.noise}, seed {args.seed}; self-retrieval."
    )
    print(
        f"{'run':<40} {'wall s':>8} {'CPU s':>8} {'kNN s':>8} {'other s':>8} "
        f"{'peak RSS MB':>12} {'RSS before':>11}"
    )
    for name, t, mem in rows:
        other = t["seconds"] - t["knn_seconds"]
        print(
            f"{name:<40} {t['seconds']:8.1f} {t['cpu_seconds']:8.1f} {t['knn_seconds']:8.1f} "
            f"{other:8.1f} {mem['peak_rss_mb']:12.0f} {mem['rss_before_mb']:11.0f}"
        )
    print(
        "kNN s = time inside the faiss exact search (ours: IndexFlatIP, k = K_max + 2; "
        "PML: FaissKNN/IndexFlatL2, k = max_bin_count); other s = everything else "
        "(for the NMI rows mostly k-means)."
    )
    print(f"PML NMI call alone: {pml['nmi_seconds']:.1f} s wall")
    for label, a, b in (
        ("same metrics", pml, ours),
        ("ours full vs PML overlap + NMI", pml_total, full),
    ):
        print(
            f"speed-up, {label} (PML / ours): wall {a['seconds'] / b['seconds']:.2f}x, "
            f"CPU {a['cpu_seconds'] / b['cpu_seconds']:.2f}x"
        )
    ours_other = ours["seconds"] - ours["knn_seconds"]
    pml_other = pml["seconds"] - pml["knn_seconds"]
    print(
        f"outside the kNN search, same metrics: PML {pml_other:.1f} s vs ours "
        f"{ours_other:.1f} s ({pml_other / max(ours_other, 1e-9):.0f}x)"
    )
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
