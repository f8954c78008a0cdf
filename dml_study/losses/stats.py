"""Orthogonality statistics of a proxy matrix, for logging and the proxy-analysis notebook."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dml_study.losses.soft_orthogonality import gram_residual_sq_factorized, so_floor


def orthogonality_stats(proxies: Tensor | np.ndarray, chunk: int = 2048) -> dict[str, float]:
    """Statistics of the L2-normalised proxies P̂ (C × d).

    Returns ``mean_abs_cos`` / ``max_abs_cos`` over off-diagonal pairs, ``so_frobenius`` =
    ‖P̂P̂ᵀ − I‖²_F (factorised, no C × C matrix), ``so_floor`` = max(0, C²/d − C) (the minimum
    for unit rows), ``so_mean`` = so_frobenius / C(C−1) (mean squared off-diagonal cosine),
    ``so_excess_mean`` = (so_frobenius − so_floor) / C(C−1) (the ``excess_mean`` SO reduction:
    0 for the best arrangement that exists for this C and d), ``effective_rank`` =
    exp(entropy of the normalised singular values) (Roy &
    Vetterli, 2007), and ``num_proxies``, ``dim``. Off-diagonal cosines are computed in row
    chunks so C = 11,318 stays cheap in memory.
    """
    p = torch.as_tensor(np.asarray(proxies) if isinstance(proxies, np.ndarray) else proxies)
    p = F.normalize(p.detach().to(torch.float64).cpu(), dim=1)
    if p.dim() != 2:
        raise ValueError(f"proxies must be 2-D (C, d), got shape {tuple(p.shape)}")
    c, d = p.shape
    abs_sum, abs_max = 0.0, 0.0
    for start in range(0, c, chunk):
        block = (p[start : start + chunk] @ p.T).abs()
        rows = torch.arange(start, min(start + chunk, c))
        block[rows - start, rows] = 0.0
        abs_sum += float(block.sum())
        abs_max = max(abs_max, float(block.max()))
    pairs = c * (c - 1)
    sv = torch.linalg.svdvals(p)
    prob = sv / sv.sum()
    entropy = -(prob[prob > 0] * prob[prob > 0].log()).sum()
    frobenius = float(gram_residual_sq_factorized(p))
    floor = so_floor(c, d)
    return {
        "mean_abs_cos": abs_sum / pairs if pairs else 0.0,
        "max_abs_cos": abs_max,
        "so_frobenius": frobenius,
        "so_floor": floor,
        "so_mean": frobenius / pairs if pairs else 0.0,
        "so_excess_mean": (frobenius - floor) / pairs if pairs else 0.0,
        "effective_rank": float(entropy.exp()),
        "num_proxies": float(c),
        "dim": float(d),
    }
