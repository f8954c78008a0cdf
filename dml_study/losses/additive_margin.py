r"""Normalised-softmax / additive-margin (CosFace-style) proxy loss.

.. math::

    \ell(x, y) = -\log \frac{e^{s(\cos\theta_{y} - m)}}
        {e^{s(\cos\theta_{y} - m)} + \sum_{j \ne y} e^{s \cos\theta_{j}}},
    \qquad \cos\theta_j = \frac{x^\top p_j}{\lVert x\rVert\,\lVert p_j\rVert},

averaged over the batch. With m = 0 this is the normalised softmax of Zhai & Wu,
"Classification is a Strong Baseline for Deep Metric Learning" (BMVC 2019; temperature
σ = 1/s = 0.05); with m > 0 it is the additive-margin softmax of Wang et al., "CosFace: Large
Margin Cosine Loss for Deep Face Recognition" (CVPR 2018) / "Additive Margin Softmax for Face
Verification" (IEEE SPL 2018).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from dml_study.losses.base import ProxyInit, ProxyLoss
from dml_study.losses.soft_orthogonality import SoftOrthogonality


def cosine_logits(embeddings: Tensor, proxies: Tensor) -> Tensor:
    """Cosine similarities (B, C) between L2-normalised embeddings and proxies."""
    return F.normalize(embeddings, dim=1) @ F.normalize(proxies, dim=1).T.to(embeddings.dtype)


def margin_cross_entropy(
    cos: Tensor, labels: Tensor, scale: float, margins: Tensor | float
) -> Tensor:
    """Mean cross-entropy of ``s · (cos + margins)``.

    ``margins`` is a scalar or a (B, C) tensor *added* to the logits: the CosFace margin is
    ``−m`` at the positive entry, the adaptive margins are ``+m_{y,j}`` at negative entries.
    """
    return F.cross_entropy(scale * (cos + margins), labels)


class AdditiveMarginLoss(ProxyLoss):
    """CosFace-style additive-margin softmax over proxies (formula in the module docstring).

    Args:
        num_classes, embedding_dim: proxy matrix shape (C × d).
        scale: s (default 20, i.e. the normalised-softmax temperature 0.05).
        margin: m ≥ 0 subtracted from the positive cosine (default 0.1; 0 = normalised softmax).
        proxy_init, regularizer, seed: see :class:`ProxyLoss`.
    """

    name = "additive_margin"
    short_name = "am"
    title = "Additive margin"

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        scale: float = 20.0,
        margin: float = 0.1,
        proxy_init: ProxyInit = "kaiming",
        regularizer: SoftOrthogonality | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(num_classes, embedding_dim, proxy_init, regularizer, seed)
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.scale = float(scale)
        self.margin = float(margin)

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cos = cosine_logits(embeddings, self.proxies)
        if self.margin == 0.0:
            return margin_cross_entropy(cos, labels, self.scale, 0.0)
        pos_margin = -self.margin * F.one_hot(labels, self.num_classes).to(cos.dtype)
        return margin_cross_entropy(cos, labels, self.scale, pos_margin)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}, margin={self.margin}"


class NormSoftmaxLoss(AdditiveMarginLoss):
    """Normalised softmax (Zhai & Wu, BMVC 2019): :class:`AdditiveMarginLoss` with m = 0."""

    name = "normsoftmax"
    short_name = "ns"
    title = "Normalised softmax"

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        scale: float = 20.0,
        proxy_init: ProxyInit = "kaiming",
        regularizer: SoftOrthogonality | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(num_classes, embedding_dim, scale, 0.0, proxy_init, regularizer, seed)
