"""Base class for proxy-based losses: proxy ownership, initialisation, regulariser, logging.

Every loss in :mod:`dml_study.losses` owns its class proxies as one ``nn.Parameter`` (C × d),
computes its main term in :meth:`ProxyLoss.compute`, and adds an optional proxy regulariser
(Soft Orthogonality). The value of each term of the last forward is kept in ``last_terms`` so
the trainer can log them uniformly; ``param_groups()`` lets it give proxies their own learning
rate (Proxy Anchor trains proxies with a 100× larger learning rate than the backbone).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from dml_study.losses.soft_orthogonality import SoftOrthogonality

#: Proxy initialisations of :func:`init_proxies`: the one list (config and study ask here).
PROXY_INITS: tuple[str, ...] = ("kaiming", "orthogonal", "normal")
#: The same names for type checkers (a ``Literal`` cannot be built from a tuple statically).
ProxyInit = Literal["kaiming", "orthogonal", "normal"]


def list_proxy_inits() -> list[str]:
    """Valid ``proxy_init`` names, in :data:`PROXY_INITS` order."""
    return list(PROXY_INITS)


def is_proxy_init(name: object) -> bool:
    """Whether ``name`` is a valid ``proxy_init``."""
    return name in PROXY_INITS


def init_proxies(
    num_classes: int, embedding_dim: int, method: ProxyInit = "kaiming", seed: int = 0
) -> Tensor:
    """Initial proxy matrix (C × d) from an explicit seeded generator.

    ``"kaiming"`` is ``kaiming_normal_(mode="fan_out")`` as in the official Proxy Anchor code;
    ``"orthogonal"`` gives (semi-)orthonormal rows when C ≤ d (orthonormal columns otherwise);
    ``"normal"`` is a standard normal draw.
    """
    if method not in PROXY_INITS:
        raise ValueError(f"proxy_init={method!r} is not valid; choose one of {list(PROXY_INITS)}")
    if num_classes < 1 or embedding_dim < 1:
        raise ValueError(
            f"num_classes and embedding_dim must be >= 1, got {num_classes}, {embedding_dim}"
        )
    generator = torch.Generator().manual_seed(seed)
    proxies = torch.empty(num_classes, embedding_dim)
    if method == "kaiming":
        nn.init.kaiming_normal_(proxies, mode="fan_out", generator=generator)
    elif method == "orthogonal":
        nn.init.orthogonal_(proxies, generator=generator)
    else:
        nn.init.normal_(proxies, generator=generator)
    return proxies


class ProxyLoss(nn.Module):
    """A loss with learnable class proxies and an optional proxy regulariser.

    Subclasses set ``name`` (the registry key of :func:`~dml_study.losses.create_loss`),
    ``short_name`` (the loss's tag in study run names, e.g. ``pa``), ``title`` (for tables)
    and implement :meth:`compute` (the main term). ``forward`` returns
    the total ``compute(...) + regularizer(proxies)`` and records
    ``last_terms = {"loss": total, <name>: main, "so": penalty}`` as Python floats ("so" is
    0.0 when no regulariser or λ = 0, so logs have the same keys in every run).
    """

    name: str = "proxy_loss"
    short_name: str = ""
    title: str = ""

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        proxy_init: ProxyInit = "kaiming",
        regularizer: SoftOrthogonality | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.embedding_dim = int(embedding_dim)
        self.proxies = nn.Parameter(init_proxies(num_classes, embedding_dim, proxy_init, seed))
        self.regularizer = regularizer
        self.last_terms: dict[str, float] = {}

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Main loss term (scalar). Implemented by subclasses."""
        raise NotImplementedError

    def _validate(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"embeddings must have shape (B, {self.embedding_dim}), "
                f"got {tuple(embeddings.shape)}"
            )
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"labels must have shape ({embeddings.shape[0]},), got {tuple(labels.shape)}"
            )
        labels = labels.to(device=embeddings.device, dtype=torch.long)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes - 1}], got range "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        return labels

    def regularization(self) -> Tensor:
        """The regulariser's value on the current proxies (zero tensor when disabled)."""
        if self.regularizer is None or self.regularizer.lam == 0.0:
            return self.proxies.new_zeros(())
        return self.regularizer(self.proxies)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        labels = self._validate(embeddings, labels)
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()
        # Losses with α = 32 exponentials are computed in full precision even when the model
        # runs under mixed precision (autocast would otherwise run the cosine matmul in half).
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            main = self.compute(embeddings, labels)
            so = self.regularization()
        total = main + so.to(main.dtype)
        self.last_terms = {"loss": float(total.detach()), self.name: float(main.detach()),
                           "so": float(so.detach())}
        return total

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups owned by the loss (the proxies)."""
        return [{"name": "proxies", "params": [self.proxies]}]

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}"
