r"""Fused batched kernels of the frozen tier's ``mode="fast"``: the losses with hand-derived
backward passes.

:mod:`dml_study.study.tiers.frozen_batched` trains R runs at once. Its default ``mode="exact"``
runs the sequential trainer's own operations slice by slice, so it is bit-identical, but then
it also runs all of autograd's elementwise passes: about 25 over the (B, C) cosine logits for
Proxy Anchor (masking, concatenation, log-sum-exp and their backward) and about 15 over the
(C, d) proxies for each of the two normalisations (cosine logits and SO). With C = 1,200
classes those passes, not the matrix products, are most of a step. The functions here compute
the same losses with a handful of passes each; they agree with the loss modules to float32
rounding (the tests compare them with :mod:`dml_study.losses` and with autograd), not to the
bit.

Every function takes the R runs stacked on the first dimension; per-run hyperparameters are
Python floats (one value for every run) or ``(R, 1, 1)`` tensors.

**Row normalisation** (:class:`NormalizeRows`): ``y = x / max(‖x‖, ε)`` with
``∂x = (g − y (y·g)) / ‖x‖`` where ``‖x‖ > ε`` (the Jacobian of ``x/‖x‖`` is
``(I − y yᵀ)/‖x‖``) and ``g / ε`` where the norm is clamped: 3 passes instead of autograd's ~10.

**Proxy Anchor** (:class:`ProxyAnchorFromCosines`), from the cosines ``s`` (R, B, C): the
negative term of class c is ``log(1 + Σ_{b: y_b ≠ c} e^{ℓ_bc})`` with ``ℓ_bc = α (s_bc + δ)``,
computed as ``m_c + log(e^{−m_c} + Σ_b e^{ℓ_bc − m_c})`` with ``m_c = max(0, max_b ℓ_bc)``
(stable for any α); the positive term of class c is the same over the batch samples of class c
with ``ℓ_b = −α (s_{b y_b} − δ)``, gathered by label (one positive per sample) and summed per
class with ``scatter_add``. The loss is ``Σ_c pos_c / |P⁺| + Σ_c neg_c / C``. Its gradient is
a softmax over each class's terms: ``∂loss/∂s_bc = (α / C) e^{ℓ_bc − m_c} / z_c`` at the
negatives (``z_c`` the argument of the log) and ``−(α / |P⁺|) e^{ℓ_b − m_{y_b}} / z_{y_b}`` at
the positive: one pass over (R, B, C).

**Soft Orthogonality** (:class:`GramResidual`): ``f(A) = ‖A Aᵀ − I‖²_F`` for A = P̂ (Gram over
classes) or P̂ᵀ (over dimensions), brute (``A Aᵀ``) or factorised
(``‖AᵀA‖² − 2‖A‖² + n``) as the module chooses, with
``∇f = 4 (A Aᵀ − I) A = 4 A (AᵀA − I)``: ``df = 2⟨AAᵀ − I, dA Aᵀ + A dAᵀ⟩ =
4⟨(AAᵀ − I) A, dA⟩`` (the Gram residual is symmetric). One batched product forward, one back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

#: ``F.normalize``'s default ε.
NORMALIZE_EPS = 1e-12


def _as_rows(value: float | Tensor, ndim: int) -> float | Tensor:
    """A per-run ``(R, 1, 1)`` tensor reshaped to ``(R,) + (1,) * (ndim - 1)``."""
    if isinstance(value, Tensor):
        return value.reshape(value.shape[0], *([1] * (ndim - 1)))
    return value


class NormalizeRows(torch.autograd.Function):
    """``x / max(‖x‖₂, ε)`` over the last dimension (``F.normalize(x, dim=-1)``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, eps: float = NORMALIZE_EPS) -> Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        clamped = norm.clamp_min(eps)
        y = x / clamped
        ctx.save_for_backward(y, clamped, norm > eps)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        y, clamped, unclamped = ctx.saved_tensors
        dot = torch.linalg.vecdot(y, grad, dim=-1).unsqueeze(-1)
        return torch.addcmul(grad, y, dot * unclamped, value=-1.0).div_(clamped), None


def normalize_rows(x: Tensor) -> Tensor:
    """:class:`NormalizeRows` applied to ``x``."""
    return NormalizeRows.apply(x)


class ProxyAnchorFromCosines(torch.autograd.Function):
    """Proxy Anchor loss of every run (R,) from its cosine logits (R, B, C) and labels
    (R, B); α and δ are floats or per-run ``(R, 1, 1)`` tensors (module docstring)."""

    @staticmethod
    def forward(ctx: Any, cos: Tensor, labels: Tensor, alpha: float | Tensor,
                margin: float | Tensor) -> Tensor:
        runs, _, classes = cos.shape
        index = labels.unsqueeze(2)
        # negatives: l_bc = alpha (s_bc + delta), the positive entry of each row excluded
        logits = torch.add(cos, margin).mul_(alpha)
        logits.scatter_(2, index, float("-inf"))
        neg_max = logits.amax(dim=1).clamp_min_(0.0)  # (R, C)
        neg_exp = logits.sub_(neg_max.unsqueeze(1)).exp_()  # in place: (R, B, C)
        neg_z = torch.exp(-neg_max).add_(neg_exp.sum(dim=1))
        neg_term = neg_max + torch.log(neg_z)
        # positives: l_b = -alpha (s_{b y_b} - delta), one per sample, summed per class
        alpha_b, margin_b = _as_rows(alpha, 2), _as_rows(margin, 2)
        pos_logit = (cos.gather(2, index).squeeze(2) - margin_b) * (-alpha_b)  # (R, B)
        pos_max = cos.new_zeros(runs, classes).scatter_reduce_(
            1, labels, pos_logit, reduce="amax", include_self=True)
        pos_exp = torch.exp(pos_logit - pos_max.gather(1, labels))
        pos_z = torch.exp(-pos_max).scatter_add_(1, labels, pos_exp)
        pos_term = pos_max + torch.log(pos_z)
        with_pos = torch.zeros(runs, classes, dtype=torch.bool).scatter_(1, labels, True)
        num_with_pos = with_pos.sum(dim=1).clamp_min(1).to(cos.dtype)
        ctx.save_for_backward(labels, neg_exp, neg_z, pos_exp, pos_z, num_with_pos)
        ctx.alpha, ctx.classes = alpha, classes
        return pos_term.sum(dim=1) / num_with_pos + neg_term.sum(dim=1) / classes

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        labels, neg_exp, neg_z, pos_exp, pos_z, num_with_pos = ctx.saved_tensors
        alpha = ctx.alpha
        scale = _as_rows(alpha, 3) * (grad / ctx.classes).view(-1, 1, 1)  # (R, 1, 1)
        grad_cos = neg_exp.mul_(scale / neg_z.unsqueeze(1))  # zero at the positives
        pos_grad = pos_exp / pos_z.gather(1, labels) * (grad / num_with_pos).unsqueeze(1)
        grad_cos.scatter_add_(2, labels.unsqueeze(2),
                              (pos_grad * (-_as_rows(alpha, 2))).unsqueeze(2))
        return grad_cos, None, None, None


def proxy_anchor_from_cosines(
    cos: Tensor, labels: Tensor, alpha: float | Tensor, margin: float | Tensor
) -> Tensor:
    """:class:`ProxyAnchorFromCosines` of ``cos`` (R, B, C) and ``labels`` (R, B)."""
    return ProxyAnchorFromCosines.apply(cos, labels, alpha, margin)


class GramResidual(torch.autograd.Function):
    """``‖A Aᵀ − I‖²_F`` of every slice of ``a`` (S, n, k), as (S,); ``factorized`` uses the
    k × k Gram matrix (``‖AᵀA‖² − 2‖A‖² + n``), else the n × n one. The gradient is one
    batched product with the (scaled) smaller residual: ``4 A (AᵀA − I)`` or
    ``4 (AAᵀ − I) A``."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, factorized: bool) -> Tensor:
        n = a.shape[1]
        if factorized:
            gram = torch.bmm(a.transpose(1, 2), a)  # (S, k, k)
            residual = gram.pow(2).sum(dim=(1, 2)) - 2.0 * a.pow(2).sum(dim=(1, 2)) + n
        else:
            gram = torch.bmm(a, a.transpose(1, 2))
        gram.diagonal(dim1=1, dim2=2).sub_(1.0)  # AᵀA − I or A Aᵀ − I
        if not factorized:
            residual = gram.pow(2).sum(dim=(1, 2))
        ctx.save_for_backward(a, gram)
        ctx.factorized = factorized
        return residual

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        a, gram = ctx.saved_tensors
        scaled = gram * (4.0 * grad).view(-1, 1, 1)
        if ctx.factorized:
            return torch.bmm(a, scaled), None
        return torch.bmm(scaled, a), None


def gram_residual(a: Tensor, factorized: bool) -> Tensor:
    """:class:`GramResidual` of ``a`` (S, n, k)."""
    return GramResidual.apply(a, factorized)
