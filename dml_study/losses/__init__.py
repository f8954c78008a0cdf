"""Proxy-based metric-learning losses: Proxy Anchor (Kim et al., CVPR 2020), normalised
softmax / additive margin, adaptive additive margin (text-derived per-negative margins;
Fehervari & Macedo, arXiv:2006.14693), and the Soft Orthogonality regulariser on proxies
(Saberi-Movahed et al., arXiv:2306.13055; the penalty of Bansal et al., NeurIPS 2018).
Build them with :func:`create_loss`; :func:`mean_margin` gives the constant margin with the
same mean as an adaptive one; ``python -m dml_study.losses.so_scale`` measures SO against
Proxy Anchor at initialisation on the four benchmarks."""

from dml_study.losses.adaptive_margin import AdaptiveMarginLoss, TextDistanceTable, mean_margin
from dml_study.losses.additive_margin import AdditiveMarginLoss, NormSoftmaxLoss
from dml_study.losses.base import (
    PROXY_INITS,
    ProxyLoss,
    init_proxies,
    is_proxy_init,
    list_proxy_inits,
)
from dml_study.losses.proxy_anchor import ProxyAnchorLoss
from dml_study.losses.registry import (
    LOSSES,
    create_loss,
    create_loss_from_config,
    is_loss,
    list_losses,
)
from dml_study.losses.soft_orthogonality import SoftOrthogonality
from dml_study.losses.stats import orthogonality_stats

__all__ = [
    "LOSSES",
    "PROXY_INITS",
    "AdaptiveMarginLoss",
    "AdditiveMarginLoss",
    "NormSoftmaxLoss",
    "ProxyAnchorLoss",
    "ProxyLoss",
    "SoftOrthogonality",
    "TextDistanceTable",
    "create_loss",
    "create_loss_from_config",
    "init_proxies",
    "is_loss",
    "is_proxy_init",
    "list_losses",
    "list_proxy_inits",
    "mean_margin",
    "orthogonality_stats",
]
