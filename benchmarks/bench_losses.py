"""Forward+backward time of every loss, and peak memory of Soft Orthogonality.

Run: ``.venv/bin/python benchmarks/bench_losses.py [--repeats 5] [--threads 1] [--no-memory]``.

Timing: median wall time of ``loss(emb, labels).backward()`` (gradients to embeddings and
proxies) after one warm-up call, at B = 180, d = 384 and C = 100 / 11,318 (SOP's number of
training classes). pytorch-metric-learning's ``ProxyAnchorLoss`` is measured in the same run as
the reference; the ratio column is time / PML time.

Memory: peak resident-set growth of one SO forward+backward on C = 11,318 proxies, brute
(builds the C × C Gram matrix) vs factorised (d × d only). Each measurement runs in a fresh
subprocess and reads the kernel's peak RSS of that process (``VmHWM``) before and after the
computation, so the delta is the extra memory the computation touched. tracemalloc would miss
it (torch allocates outside Python's allocator) and the torch profiler reports per-op
allocations rather than a peak.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

B, D = 180, 384
SIZES = (100, 11318)


def _inputs(num_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, D, generator=gen)
    # m-per-class style batch: 4 images per class, 45 classes present.
    classes = torch.randperm(num_classes, generator=gen)[: B // 4]
    labels = classes.repeat_interleave(4)
    return emb, labels


def _losses(num_classes: int) -> dict[str, torch.nn.Module]:
    from pytorch_metric_learning.losses import ProxyAnchorLoss as PMLProxyAnchor

    from dml_study.losses import create_loss

    text = torch.randn(num_classes, 384, generator=torch.Generator().manual_seed(1)).numpy()
    return {
        "pml_proxy_anchor (reference)": PMLProxyAnchor(num_classes, D),
        "proxy_anchor": create_loss("proxy_anchor", num_classes, D),
        "proxy_anchor + SO (auto)": create_loss("proxy_anchor", num_classes, D, so_lambda=1e-3),
        "normsoftmax": create_loss("normsoftmax", num_classes, D),
        "additive_margin": create_loss("additive_margin", num_classes, D),
        "adaptive_margin": create_loss("adaptive_margin", num_classes, D, text_embeddings=text),
    }


def _time_interleaved(fns: dict[str, object], repeats: int) -> dict[str, float]:
    """Median time of each callable, measured round-robin so that every loss sees the same
    background load (the machine is shared; ratios are more stable than absolute times)."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _loss_step(loss: torch.nn.Module, emb: torch.Tensor, labels: torch.Tensor):
    def step() -> None:
        e = emb.clone().requires_grad_(True)
        loss.zero_grad(set_to_none=True)
        loss(e, labels).backward()

    return step


def _so_step(method: str, proxies: torch.nn.Parameter):
    from dml_study.losses import SoftOrthogonality

    so = SoftOrthogonality(1.0, method=method)

    def step() -> None:
        proxies.grad = None
        so(proxies).backward()

    return step


def time_table(repeats: int) -> list[tuple[int, str, float, float]]:
    rows = []
    for num_classes in SIZES:
        emb, labels = _inputs(num_classes)
        steps = {name: _loss_step(loss, emb, labels) for name, loss in _losses(num_classes).items()}
        proxies = torch.nn.Parameter(torch.randn(num_classes, D))
        for method in ("brute", "factorized"):
            steps[f"SO alone ({method})"] = _so_step(method, proxies)
        reps = repeats if num_classes <= 1000 else max(2, repeats // 2)
        times = _time_interleaved(steps, reps)
        ref = times["pml_proxy_anchor (reference)"]
        rows += [(num_classes, name, t, t / ref) for name, t in times.items()]
    return rows


def _peak_rss_mib() -> float:
    """Peak RSS of this process: VmHWM (Linux) or ru_maxrss.

    VmHWM belongs to the address space, which execve replaces, so a child starts from its own
    baseline; ru_maxrss is inherited across execve (it would report the parent's peak)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def so_memory_worker(method: str, num_classes: int) -> dict:
    # Warm up on a tiny matrix first so one-time costs (BLAS/thread pools, autograd engine)
    # are not counted as the computation's memory.
    _so_step(method, torch.nn.Parameter(torch.randn(8, 4)))()
    proxies = torch.nn.Parameter(torch.randn(num_classes, D))
    step = _so_step(method, proxies)
    before = _peak_rss_mib()
    start = time.perf_counter()
    step()
    return {
        "method": method,
        "peak_delta_mib": _peak_rss_mib() - before,
        "seconds": time.perf_counter() - start,
    }


def memory_table(num_classes: int) -> list[dict]:
    out = []
    for method in ("brute", "factorized"):
        cmd = [sys.executable, __file__, "--so-memory-worker", method]
        cmd += ["--classes", str(num_classes)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared machine, preempted worker "
        "threads make small kernels ~100x slower and the numbers meaningless)",
    )
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--so-memory-worker", choices=["brute", "factorized"])
    parser.add_argument("--classes", type=int, default=11318)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.so_memory_worker:
        print(json.dumps(so_memory_worker(args.so_memory_worker, args.classes)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, B={B}, d={D}")
    print(f"{'C':>6}  {'loss':<30} {'fwd+bwd ms':>11} {'/ PML PA':>9}")
    for num_classes, name, t, ratio in time_table(args.repeats):
        print(f"{num_classes:>6}  {name:<30} {t * 1e3:>11.2f} {ratio:>9.2f}")
    if not args.no_memory:
        c = args.classes
        print(f"\nSoft Orthogonality peak memory, C={c}, d={D} (fresh process, peak-RSS delta)")
        print(f"{'method':<12} {'peak MiB':>9} {'seconds':>8}")
        for row in memory_table(c):
            print(f"{row['method']:<12} {row['peak_delta_mib']:>9.1f} {row['seconds']:>8.2f}")
        print(f"(a C × C float32 matrix alone is {c * c * 4 / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
