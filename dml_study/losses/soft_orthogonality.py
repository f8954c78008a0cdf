r"""Soft Orthogonality (SO) regulariser on a proxy matrix.

The penalty (Bansal et al., "Can we gain more from orthogonality regularizations in training
deep CNNs?", NeurIPS 2018, applied here to the proxies of a proxy-based DML loss) is

.. math::

    R_{\mathrm{SO}}(P) = \lambda \,\bigl\lVert \hat P \hat P^{\top} - I_C \bigr\rVert_F^2,
    \qquad \hat P_c = P_c / \lVert P_c \rVert_2,

with :math:`P \in \mathbb{R}^{C \times d}` (one proxy per row). Variants:

* ``gram="classes"`` penalises :math:`\hat P \hat P^\top` (C × C, pairwise proxy cosines);
  ``gram="dims"`` penalises :math:`\hat P^\top \hat P - I_d` (d × d, decorrelated dimensions).
* ``normalize=False`` uses the raw proxies instead of :math:`\hat P`.
* ``reduction="sum"`` is the squared Frobenius norm; ``"mean"`` divides it by the number of
  ordered off-diagonal pairs :math:`n(n-1)` of the n × n Gram matrix. With ``normalize=True``
  the diagonal of :math:`\hat P \hat P^\top - I` is exactly zero, so ``"mean"`` is the mean
  squared cosine over off-diagonal pairs (for unnormalised proxies the diagonal residual is
  still included in the numerator).

**Positive floor when C > d.** :math:`\hat P \hat P^\top` has rank ≤ d, so it cannot equal
:math:`I_C` when C > d. With unit rows :math:`\lVert \hat P \hat P^\top - I\rVert_F^2 =
\lVert \hat P^\top \hat P\rVert_F^2 - C \ge \operatorname{tr}(\hat P^\top \hat P)^2/d - C =
C^2/d - C`, with equality exactly for tight frames (:math:`\hat P^\top \hat P = (C/d) I_d`).
For SOP (C = 11,318, d = 384) the floor is ≈ 322,260, so report the penalty *relative* to this
floor (see :func:`dml_study.losses.stats.orthogonality_stats`).

**Memory.** For an n × k matrix A, :math:`\lVert A A^\top - I_n\rVert_F^2 = \lVert A^\top A
\rVert_F^2 - 2 \lVert A\rVert_F^2 + n`, which needs only a k × k Gram matrix. The factorised
path is chosen automatically when n > k, so SOP's 11,318 proxies never build a C × C matrix
(O(C·d + d²) memory instead of O(C²)).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

GRAMS = ("classes", "dims")
REDUCTIONS = ("sum", "mean")
METHODS = ("auto", "brute", "factorized")

Gram = Literal["classes", "dims"]
Reduction = Literal["sum", "mean"]
Method = Literal["auto", "brute", "factorized"]


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(valid)}")


def gram_residual_sq_brute(a: Tensor) -> Tensor:
    """``‖A Aᵀ − I‖²_F`` by building the n × n Gram matrix (reference path)."""
    gram = a @ a.T
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return (gram - eye).pow(2).sum()


def gram_residual_sq_factorized(a: Tensor) -> Tensor:
    """``‖A Aᵀ − I‖²_F = ‖AᵀA‖²_F − 2‖A‖²_F + n`` using only the k × k Gram matrix."""
    small = a.T @ a
    return small.pow(2).sum() - 2.0 * a.pow(2).sum() + a.shape[0]


class SoftOrthogonality(torch.nn.Module):
    """Callable SO penalty ``λ · ‖P̂P̂ᵀ − I‖²_F`` on a proxy matrix (C × d); see module doc.

    Args:
        lam: weight λ ≥ 0 (0 disables the penalty but still returns a zero tensor).
        gram: ``"classes"`` (C × C Gram of proxies) or ``"dims"`` (d × d Gram of dimensions).
        normalize: L2-normalise the proxies (rows) first.
        reduction: ``"sum"`` (squared Frobenius norm) or ``"mean"`` (divided by n(n−1)).
        method: ``"auto"`` picks the factorised path when the Gram side n exceeds the other
            side k (it is then cheaper in time and memory); ``"brute"``/``"factorized"`` force one.
    """

    def __init__(
        self,
        lam: float = 0.0,
        gram: Gram = "classes",
        normalize: bool = True,
        reduction: Reduction = "sum",
        method: Method = "auto",
    ) -> None:
        super().__init__()
        _check_choice("so_gram", gram, GRAMS)
        _check_choice("so_reduction", reduction, REDUCTIONS)
        _check_choice("method", method, METHODS)
        if lam < 0:
            raise ValueError(f"so_lambda must be >= 0, got {lam}")
        self.lam = float(lam)
        self.gram = gram
        self.normalize = normalize
        self.reduction = reduction
        self.method = method

    def extra_repr(self) -> str:
        return (
            f"lam={self.lam}, gram={self.gram!r}, normalize={self.normalize}, "
            f"reduction={self.reduction!r}, method={self.method!r}"
        )

    def _matrix(self, proxies: Tensor) -> Tensor:
        if proxies.dim() != 2:
            raise ValueError(
                f"proxies must be a 2-D (C, d) matrix, got shape {tuple(proxies.shape)}"
            )
        p = F.normalize(proxies, dim=1) if self.normalize else proxies
        # The Gram side is the row index of `a`: classes -> P̂ (C × d), dims -> P̂ᵀ (d × C).
        return p if self.gram == "classes" else p.T

    def residual(self, proxies: Tensor) -> Tensor:
        """Unweighted, unreduced ``‖AAᵀ − I‖²_F`` (A = P̂ or P̂ᵀ)."""
        a = self._matrix(proxies)
        n, k = a.shape
        use_factorized = self.method == "factorized" or (self.method == "auto" and n > k)
        if use_factorized:
            return gram_residual_sq_factorized(a)
        return gram_residual_sq_brute(a)

    def forward(self, proxies: Tensor) -> Tensor:
        value = self.residual(proxies)
        if self.reduction == "mean":
            n = proxies.shape[0] if self.gram == "classes" else proxies.shape[1]
            value = value / max(n * (n - 1), 1)
        return self.lam * value
