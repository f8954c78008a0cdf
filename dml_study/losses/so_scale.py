r"""How large is the Soft Orthogonality term against the Proxy Anchor loss at initialisation?

``python -m dml_study.losses.so_scale [--lambda-sum 0.1] [--lambda-excess 1000] [--seed 0]``
prints (and ``--markdown`` formats) one row per benchmark, computed from each benchmark's
real number of training classes C (the ``EXPECTED`` counts of its loader) and its preset's
embedding size d, batch size and m-per-class. No data is needed:

* proxies: the official kaiming-normal initialisation (:func:`dml_study.losses.init_proxies`);
* embeddings: one batch of i.i.d. Gaussian vectors (an untrained model's embeddings are not
  class-separated either), labelled by m-per-class sampling of the preset
  (``batch_size / m_per_class`` distinct classes, ``m_per_class`` images each);
* SO at init in each form (``sum`` = ‖P̂P̂ᵀ − I‖²_F, ``mean``, ``excess_mean``), its floor
  max(0, C²/d − C), the Proxy Anchor loss, and the gradient norms each term puts on the proxy
  matrix (‖∇_P λ·SO‖ / ‖∇_P PA‖), which is what decides whether the penalty swamps the loss.

The README's λ table is this command's output (``--markdown``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass

import torch

from dml_study.data.registry import dataset_info, list_datasets
from dml_study.losses.proxy_anchor import ProxyAnchorLoss
from dml_study.losses.soft_orthogonality import REDUCTIONS, SoftOrthogonality, so_floor

#: The published benchmarks (the data registry's ``kind == "benchmark"`` datasets).
BENCHMARKS: tuple[str, ...] = tuple(list_datasets(kind="benchmark"))


def benchmark_shape(dataset: str) -> tuple[int, int, int, int]:
    """(C training classes, d, batch size, m per class) of a benchmark's preset."""
    from dml_study.config import load_config

    if dataset not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {dataset!r}; choose one of {list(BENCHMARKS)}")
    num_classes = dataset_info(dataset).expected["train"][1]
    config = load_config(dataset)
    dim = int(config.model.embedding_dim)
    return num_classes, dim, config.data.batch_size, config.data.m_per_class


@dataclass(frozen=True)
class ScaleRow:
    """SO and Proxy Anchor at initialisation on one benchmark (values at λ = 1 unless named)."""

    dataset: str
    num_classes: int
    dim: int
    floor: float
    so_sum: float
    so_mean: float
    so_excess_mean: float
    proxy_anchor: float
    #: ‖∇_P SO‖ / ‖∇_P PA‖ at λ = 1, per form.
    grad_ratio_sum: float
    grad_ratio_mean: float
    #: λ_sum·SO_sum / PA and λ_excess·SO_excess_mean / PA: the value ratios at the study's λs.
    value_ratio_sum: float
    value_ratio_excess: float
    #: The same for the gradients on the proxies.
    grad_ratio_at_lambda_sum: float
    grad_ratio_at_lambda_excess: float


def _batch_labels(num_classes: int, batch_size: int, m: int, gen: torch.Generator) -> torch.Tensor:
    m = max(1, m)
    classes = torch.randperm(num_classes, generator=gen)[: batch_size // m]
    return classes.repeat_interleave(m)


def measure(
    dataset: str, lambda_sum: float = 0.1, lambda_excess: float = 1000.0, seed: int = 0
) -> ScaleRow:
    """One :class:`ScaleRow` for ``dataset`` (float64, CPU; SOP takes a few seconds)."""
    c, d, batch, m = benchmark_shape(dataset)
    gen = torch.Generator().manual_seed(seed)
    pa = ProxyAnchorLoss(c, d, seed=seed).double()  # kaiming-normal proxies, as in training
    proxies = pa.proxies
    labels = _batch_labels(c, batch, m, gen)
    embeddings = torch.randn(len(labels), d, generator=gen, dtype=torch.float64)
    pa_value = pa.compute(embeddings, labels)
    pa_f = float(pa_value.detach())
    pa_g = float(torch.autograd.grad(pa_value, proxies)[0].norm())
    values, grads = {}, {}
    for reduction in REDUCTIONS:
        so = SoftOrthogonality(1.0, reduction=reduction)(proxies)
        values[reduction] = float(so.detach())
        grads[reduction] = float(torch.autograd.grad(so, proxies)[0].norm())
    return ScaleRow(
        dataset=dataset, num_classes=c, dim=d, floor=so_floor(c, d),
        so_sum=values["sum"], so_mean=values["mean"], so_excess_mean=values["excess_mean"],
        proxy_anchor=pa_f,
        grad_ratio_sum=grads["sum"] / pa_g, grad_ratio_mean=grads["mean"] / pa_g,
        value_ratio_sum=lambda_sum * values["sum"] / pa_f,
        value_ratio_excess=lambda_excess * values["excess_mean"] / pa_f,
        grad_ratio_at_lambda_sum=lambda_sum * grads["sum"] / pa_g,
        grad_ratio_at_lambda_excess=lambda_excess * grads["excess_mean"] / pa_g,
    )


def markdown(rows: list[ScaleRow], lambda_sum: float, lambda_excess: float) -> str:
    """The README table."""
    head = (
        "| dataset | C | d | floor max(0, C²/d−C) | SO sum | SO mean | SO excess_mean | "
        f"PA at init | {lambda_sum:g}·SO_sum / PA | {lambda_excess:g}·SO_excess / PA | "
        f"grad ratio, sum λ={lambda_sum:g} | grad ratio, excess λ={lambda_excess:g} |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r.dataset} | {r.num_classes:,} | {r.dim} | {r.floor:,.0f} | {r.so_sum:,.1f} | "
        f"{r.so_mean:.2e} | {r.so_excess_mean:.2e} | {r.proxy_anchor:.2f} | "
        f"{r.value_ratio_sum:,.2f} | {r.value_ratio_excess:.3f} | "
        f"{r.grad_ratio_at_lambda_sum:,.2f} | {r.grad_ratio_at_lambda_excess:.3f} |"
        for r in rows
    ]
    return head + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dml_study.losses.so_scale", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--datasets", nargs="+", default=list(BENCHMARKS), choices=BENCHMARKS)
    parser.add_argument("--lambda-sum", type=float, default=0.1,
                        help="λ of the plain Frobenius form to compare (default %(default)s)")
    parser.add_argument("--lambda-excess", type=float, default=1000.0,
                        help="λ of the excess_mean form (default %(default)s, studies/paper.yaml)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print the README table")
    args = parser.parse_args(argv)
    rows = [measure(ds, args.lambda_sum, args.lambda_excess, args.seed) for ds in args.datasets]
    if args.markdown:
        print(markdown(rows, args.lambda_sum, args.lambda_excess))
    else:
        import pandas as pd

        with pd.option_context("display.width", 200, "display.max_columns", None):
            print(pd.DataFrame([asdict(r) for r in rows]).set_index("dataset").T)
    return 0


if __name__ == "__main__":
    sys.exit(main())
