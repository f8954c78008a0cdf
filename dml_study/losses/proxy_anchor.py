r"""Proxy Anchor loss (Kim, Kim, Cho, Kwak, "Proxy Anchor Loss for Deep Metric Learning",
CVPR 2020).

.. math::

    \ell(X) = \frac{1}{|P^+|} \sum_{p \in P^+}
        \log\Bigl(1 + \sum_{x \in X_p^+} e^{-\alpha (s(x, p) - \delta)}\Bigr)
      + \frac{1}{|P|} \sum_{p \in P}
        \log\Bigl(1 + \sum_{x \in X_p^-} e^{\alpha (s(x, p) + \delta)}\Bigr)

with :math:`s` the cosine similarity, :math:`P` all proxies, :math:`P^+` the proxies with at
least one positive in the batch, :math:`X_p^{+}` / :math:`X_p^{-}` the batch embeddings of /
not of class p; defaults α = 32, δ = 0.1 and kaiming-normal (fan_out) proxy initialisation as
in the official code. Each ``log(1 + Σ exp)`` is a log-sum-exp over the masked column with an
extra zero logit, so it is stable for large α and vectorised over classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dml_study.losses.additive_margin import cosine_logits
from dml_study.losses.base import ProxyInit, ProxyLoss
from dml_study.losses.soft_orthogonality import SoftOrthogonality


def log1p_sum_exp_masked(logits: Tensor, mask: Tensor, dim: int = 0) -> Tensor:
    """``log(1 + Σ_{mask} exp(logits))`` along ``dim``, stably (empty mask → 0)."""
    masked = logits.masked_fill(~mask, float("-inf"))
    zero = torch.zeros_like(masked.narrow(dim, 0, 1))
    return torch.logsumexp(torch.cat([masked, zero], dim=dim), dim=dim)


class ProxyAnchorLoss(ProxyLoss):
    """Proxy Anchor loss (formula in the module docstring).

    Args:
        num_classes: number of proxies C.
        embedding_dim: d.
        alpha: scale α (default 32).
        margin: δ (default 0.1).
        proxy_init: ``"kaiming"`` (official), ``"orthogonal"`` or ``"normal"``.
        regularizer: optional :class:`SoftOrthogonality` added to the loss.
        seed: seed of the proxy initialisation.
    """

    name = "proxy_anchor"
    short_name = "pa"
    title = "Proxy Anchor"

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        alpha: float = 32.0,
        margin: float = 0.1,
        proxy_init: ProxyInit = "kaiming",
        regularizer: SoftOrthogonality | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(num_classes, embedding_dim, proxy_init, regularizer, seed)
        self.alpha = float(alpha)
        self.margin = float(margin)

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cos = cosine_logits(embeddings, self.proxies)  # (B, C)
        pos_mask = F.one_hot(labels, self.num_classes).bool()
        neg_mask = ~pos_mask
        pos_term = log1p_sum_exp_masked(-self.alpha * (cos - self.margin), pos_mask, dim=0)
        neg_term = log1p_sum_exp_masked(self.alpha * (cos + self.margin), neg_mask, dim=0)
        num_with_pos = pos_mask.any(dim=0).sum().clamp_min(1)
        # Proxies without positives contribute log(1 + 0) = 0 to pos_term, so summing over all
        # proxies and dividing by |P+| is the average over P+.
        return pos_term.sum() / num_with_pos + neg_term.sum() / self.num_classes

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}, margin={self.margin}"
