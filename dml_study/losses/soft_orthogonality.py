r"""Soft Orthogonality (SO) regulariser on a proxy matrix.

Sources: the penalty is the "soft orthogonality" regulariser of Bansal, Chen & Wang, "Can we
gain more from orthogonality regularizations in training deep networks?" (NeurIPS 2018), there
applied to weight matrices; Saberi-Movahed et al., "Deep Metric Learning with Soft Orthogonal
Proxies" (arXiv:2306.13055, 2023) apply it to the proxies of a proxy-based DML loss (Proxy
Anchor), which is what this module does:

.. math::

    R_{\mathrm{SO}}(P) = \lambda \,\bigl\lVert \hat P \hat P^{\top} - I_C \bigr\rVert_F^2,
    \qquad \hat P_c = P_c / \lVert P_c \rVert_2,

with :math:`P \in \mathbb{R}^{C \times d}` (one proxy per row). Variants:

* ``gram="classes"`` penalises :math:`\hat P \hat P^\top` (C × C, pairwise proxy cosines);
  ``gram="dims"`` penalises :math:`\hat P^\top \hat P - I_d` (d × d, decorrelated dimensions).
* ``normalize=False`` uses the raw proxies instead of :math:`\hat P`.
* ``reduction="sum"`` is the squared Frobenius norm (the form of both papers); ``"mean"``
  divides it by the number of ordered off-diagonal pairs :math:`n(n-1)` of the n × n Gram
  matrix. With ``normalize=True`` the diagonal of :math:`\hat P \hat P^\top - I` is exactly
  zero, so ``"mean"`` is the mean squared cosine over off-diagonal pairs (for unnormalised
  proxies the diagonal residual is still included in the numerator).
* ``reduction="excess_mean"``: the mean above its floor (below),
  :math:`(\lVert \hat P \hat P^\top - I\rVert_F^2 - F)\,/\,n(n-1)`.

**Positive floor when C > d.** :math:`\hat P \hat P^\top` has rank ≤ d, so it cannot equal
:math:`I_C` when C > d. With unit rows :math:`\lVert \hat P \hat P^\top - I\rVert_F^2 =
\lVert \hat P^\top \hat P\rVert_F^2 - C \ge \operatorname{tr}(\hat P^\top \hat P)^2/d - C =
C^2/d - C` (Cauchy–Schwarz on the eigenvalues of :math:`\hat P^\top \hat P`, which sum to C),
with equality exactly for tight frames (:math:`\hat P^\top \hat P = (C/d) I_d`). So
:math:`F(C, d) = \max(0, C^2/d - C)`; for SOP (C = 11,318, d = 384) F ≈ 322,268.
For ``gram="dims"`` the same argument gives
:math:`\lVert \hat P^\top \hat P - I_d\rVert_F^2 \ge (C-d)^2/d` (see :func:`so_floor`).

**Why ``excess_mean`` is the form whose λ means the same on every benchmark.** With
``"sum"`` the penalty grows like C²: at a random (kaiming) initialisation
:math:`E\lVert\hat P\hat P^\top - I\rVert_F^2 = C(C-1)/d`, i.e. ≈ 26 on CUB (C = 100) but
≈ 333,600 on SOP, against a Proxy Anchor loss of order 10 on both; and on SOP almost all of
it is the floor F, which no arrangement of the proxies can remove. Dividing by the number of
pairs gives the mean squared cosine between two proxies, a quantity in [0, 1] for every C and
d; subtracting the floor first makes 0 mean "the best arrangement that exists for this C and
d" (orthogonal proxies when C ≤ d, a tight frame when C > d) on every benchmark. So
λ·excess_mean reads "λ times the mean squared proxy cosine in excess of the achievable
minimum". The floor is a constant, so the *gradient* of ``excess_mean`` equals that of
``"mean"``: per proxy it is :math:`\frac{4}{C(C-1)}\sum_{j}\cos_{ij}\,\partial\cos_{ij}/
\partial p_i`, an average over the other proxies divided by C, which scales with C like the
Proxy Anchor negative term (an average over all C proxies). :mod:`dml_study.losses.so_scale`
measures both terms at initialisation on the four benchmarks' C and d (README table).

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
REDUCTIONS = ("sum", "mean", "excess_mean")
METHODS = ("auto", "brute", "factorized")

Gram = Literal["classes", "dims"]
Reduction = Literal["sum", "mean", "excess_mean"]
Method = Literal["auto", "brute", "factorized"]


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(valid)}")


def so_floor(num_proxies: int, dim: int, gram: Gram = "classes") -> float:
    """Minimum of the SO residual over C × d proxy matrices with unit rows.

    ``gram="classes"``: ``‖P̂P̂ᵀ − I_C‖²_F ≥ max(0, C²/d − C)``; ``gram="dims"``:
    ``‖P̂ᵀP̂ − I_d‖²_F ≥ (C − d)²/d``. Both follow from the d eigenvalues of P̂ᵀP̂ summing to C
    (Cauchy–Schwarz) and are reached exactly by tight frames (P̂ᵀP̂ = (C/d)·I_d), or, for the
    classes Gram with C ≤ d, by orthonormal rows.
    """
    _check_choice("so_gram", gram, GRAMS)
    c, d = int(num_proxies), int(dim)
    if c < 1 or d < 1:
        raise ValueError(f"need num_proxies >= 1 and dim >= 1, got {c}, {d}")
    if gram == "classes":
        return max(0.0, c * c / d - c)
    return (c - d) ** 2 / d


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
        reduction: ``"sum"`` (squared Frobenius norm), ``"mean"`` (divided by n(n−1)) or
            ``"excess_mean"`` ((value − floor) / n(n−1), the floor only for normalised
            proxies, where it is a bound); see the module docstring for why.
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

    def floor(self, proxies: Tensor) -> float:
        """The floor F of :meth:`residual` for this matrix shape (0 for unnormalised proxies,
        for which no such bound holds)."""
        if not self.normalize:
            return 0.0
        c, d = proxies.shape
        return so_floor(c, d, self.gram)

    def reduce(self, residual: Tensor, proxies: Tensor) -> Tensor:
        """Apply the reduction to an unweighted :meth:`residual` of ``proxies``."""
        if self.reduction == "sum":
            return residual
        n = proxies.shape[0] if self.gram == "classes" else proxies.shape[1]
        if self.reduction == "excess_mean":
            residual = residual - self.floor(proxies)
        return residual / max(n * (n - 1), 1)

    def forward(self, proxies: Tensor) -> Tensor:
        return self.lam * self.reduce(self.residual(proxies), proxies)
