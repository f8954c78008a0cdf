r"""Adaptive additive-margin loss with per-negative margins from text distances.

Reconstruction of Fehervari & Macedo, "Adaptive Additive Classification-based Loss for Deep
Metric Learning" (arXiv:2006.14693, 2020): the normalised softmax with a separate additive
margin for every negative proxy of every sample,

.. math::

    \ell(x, y) = -\log \frac{e^{s \cos\theta_{y}}}
        {e^{s \cos\theta_{y}} + \sum_{j \ne y} e^{s (\cos\theta_{j} + m_{y,j})}},
    \qquad m_{y,j} = f\bigl(\tilde d(y, j)\bigr) \in [m_{\min}, m_{\max}],

where :math:`\tilde d(y, j) \in [0, 1]` is the cosine distance between the text embeddings of
the class names y and j, min–max normalised over all off-diagonal class pairs. With a constant
margin :math:`m_{y,j} = m` this is exactly the CosFace loss with margin m (softmax is invariant
to a shift of all logits), and with m = 0 the normalised softmax.

The paper does not publish its mapping f, so it is a parameter here:

* ``"inverse"`` (default): :math:`m_{y,j} = m_{\max} - (m_{\max} - m_{\min})\,\tilde d(y,j)`:
  classes whose names are *close* in text get the *largest* margin. Rationale: the margin is
  the separation the loss demands; semantically close classes (two gull species) are the
  visually confusable hard negatives, so they are where a larger separation pays off, while
  already-distant classes (a gull and a car) need little. This is the direction of the
  adaptive margins of the face / fine-grained literature, where harder class pairs get larger
  margins.
* ``"linear"``: :math:`m_{y,j} = m_{\min} + (m_{\max} - m_{\min})\,\tilde d(y,j)`: far classes
  get the largest margin, i.e. the embedding keeps the text modality's semantic layout.
* ``"constant"``: :math:`m_{y,j} = m_{\max}` (a CosFace control with the same machinery).
* ``"matched_constant"``: :math:`m_{y,j} = \bar m`, the mean of the ``match_mapping``
  margins (default ``"inverse"``) over all ordered class pairs (:func:`mean_margin`). This is
  the control of an adaptive arm: a constant additive margin (CosFace, since a constant
  margin on the negatives is the same loss as ``−m`` on the positive) with the *same mean
  margin*, so a difference between the two arms is due to how the margin is distributed over
  class pairs, not to its overall size.

**Equal mean margin.** :math:`\bar m = \frac{1}{C(C-1)}\sum_{y \ne j} m_{y,j}` weights
every class equally (each class is a row of C − 1 negatives). Because the mappings are affine
in the normalised distance, :math:`\bar m = f(\bar d)` with :math:`\bar d` the mean
normalised text distance, computed in row chunks (no C × C matrix for SOP-sized C).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dml_study.losses.additive_margin import cosine_logits, margin_cross_entropy
from dml_study.losses.base import ProxyInit, ProxyLoss
from dml_study.losses.soft_orthogonality import SoftOrthogonality

MAPPINGS = ("inverse", "linear", "constant", "matched_constant")
Mapping = Literal["inverse", "linear", "constant", "matched_constant"]
#: Mappings whose mean a ``"matched_constant"`` margin can match.
ADAPTIVE_MAPPINGS = ("inverse", "linear", "constant")


def map_distances_to_margins(
    normalized_distance: Tensor, m_min: float, m_max: float, mapping: Mapping
) -> Tensor:
    """Apply the documented mapping f to distances already normalised to [0, 1]."""
    if mapping == "inverse":
        return m_max - (m_max - m_min) * normalized_distance
    if mapping == "linear":
        return m_min + (m_max - m_min) * normalized_distance
    if mapping == "constant":
        return torch.full_like(normalized_distance, m_max)
    if mapping == "matched_constant":
        raise ValueError(
            "mapping='matched_constant' has no per-pair formula: its margin is mean_margin(...) "
            "of another mapping; use AdaptiveMarginLoss(mapping='matched_constant')"
        )
    raise ValueError(f"mapping={mapping!r} is not valid; choose one of {list(MAPPINGS)}")


def _offdiag_range_from_embeddings(emb: Tensor, chunk: int = 2048) -> tuple[float, float]:
    """Min and max off-diagonal cosine distance of unit rows, in chunks (no C × C matrix).

    ``emb`` is float64 (see :meth:`TextDistanceTable.rows`)."""
    lo, hi = float("inf"), float("-inf")
    n = emb.shape[0]
    for start in range(0, n, chunk):
        block = 1.0 - emb[start : start + chunk] @ emb.T  # (chunk, C)
        rows = torch.arange(start, min(start + chunk, n))
        block[rows - start, rows] = float("nan")  # exclude the diagonal from min/max
        lo = min(lo, float(torch.nan_to_num(block, nan=float("inf")).min()))
        hi = max(hi, float(torch.nan_to_num(block, nan=float("-inf")).max()))
    return lo, hi


class TextDistanceTable(nn.Module):
    """Normalised class-to-class text distances, served row-wise for a batch of labels.

    Built either from class text embeddings (C × k; rows of the distance matrix are computed on
    the fly from the embeddings, so C = 11,318 classes need O(C·k) memory) or from a full
    precomputed distance matrix (C × C).
    """

    def __init__(
        self,
        text_embeddings: np.ndarray | Tensor | None = None,
        text_distances: np.ndarray | Tensor | None = None,
    ) -> None:
        super().__init__()
        if (text_embeddings is None) == (text_distances is None):
            raise ValueError(
                "give exactly one of text_embeddings (C × k) or text_distances (C × C)"
            )
        if text_embeddings is not None:
            emb = torch.as_tensor(np.asarray(text_embeddings), dtype=torch.float32)
            if emb.dim() != 2:
                raise ValueError(f"text_embeddings must be 2-D (C, k), got {tuple(emb.shape)}")
            # float64 from here on: a float32 matmul rounds differently with the number of
            # rows it is given (BLAS picks kernels by shape and CPU), so a class pair's margin
            # would depend on the batch it appears in and on the machine. In float64 those
            # differences (~1e-16) vanish when the scaled distance is rounded to float32.
            emb = F.normalize(emb.to(torch.float64), dim=1)
            lo, hi = _offdiag_range_from_embeddings(emb)
            # Derived from the config (class names), so not saved in checkpoints.
            self.register_buffer("embeddings", emb, persistent=False)
            self.distances = None
        else:
            dist = torch.as_tensor(np.asarray(text_distances), dtype=torch.float64)
            if dist.dim() != 2 or dist.shape[0] != dist.shape[1]:
                raise ValueError(f"text_distances must be square (C, C), got {tuple(dist.shape)}")
            off = ~torch.eye(dist.shape[0], dtype=torch.bool)
            lo = float(dist[off].min()) if off.any() else 0.0
            hi = float(dist[off].max()) if off.any() else 0.0
            self.register_buffer("distances", dist, persistent=False)
            self.embeddings = None
        self.lo, self.hi = lo, hi

    @property
    def num_classes(self) -> int:
        source = self.embeddings if self.embeddings is not None else self.distances
        return int(source.shape[0])

    def rows(self, labels: Tensor) -> Tensor:
        """Distances (B, C) of each label's class to every class, min–max scaled to [0, 1].

        When all off-diagonal distances are equal the scaled distance is 0 everywhere. Rows
        computed from embeddings are float64; callers round them to their own dtype.
        """
        if self.embeddings is not None:
            raw = 1.0 - self.embeddings[labels] @ self.embeddings.T  # float64, see __init__
        else:
            raw = self.distances[labels]
        span = self.hi - self.lo
        if span <= 0:
            return torch.zeros_like(raw)
        return ((raw - self.lo) / span).clamp(0.0, 1.0)


def mean_normalized_distance(table: TextDistanceTable, chunk: int = 2048) -> float:
    """Mean min–max-normalised text distance over ordered class pairs y ≠ j (chunked)."""
    c = table.num_classes
    if c < 2:
        raise ValueError(f"a mean over class pairs needs >= 2 classes, got {c}")
    total = 0.0
    for start in range(0, c, chunk):
        labels = torch.arange(start, min(start + chunk, c))
        rows = table.rows(labels).to(torch.float64)
        rows[torch.arange(len(labels)), labels] = 0.0  # exclude y = j
        total += float(rows.sum())
    return total / (c * (c - 1))


def mean_margin(
    text: TextDistanceTable | np.ndarray | Tensor,
    m_min: float = 0.05,
    m_max: float = 0.25,
    mapping: Mapping = "inverse",
    *,
    distances: bool = True,
) -> float:
    r"""Mean adaptive margin :math:`\bar m = \frac{1}{C(C-1)}\sum_{y\ne j} m_{y,j}`.

    Args:
        text: a :class:`TextDistanceTable`, or a C × C matrix of raw text distances
            (``distances=True``, default) or C × k class text embeddings (``distances=False``);
            distances are min–max normalised over off-diagonal pairs exactly as in the loss.
        m_min, m_max, mapping: as in :class:`AdaptiveMarginLoss` (``"inverse"``, ``"linear"``
            or ``"constant"``).

    Returns the margin a constant-margin control needs to have the same mean margin as the
    adaptive arm (what ``mapping="matched_constant"`` uses).
    """
    if mapping not in ADAPTIVE_MAPPINGS:
        raise ValueError(
            f"mapping={mapping!r}: mean_margin needs one of {list(ADAPTIVE_MAPPINGS)}"
        )
    if not isinstance(text, TextDistanceTable):
        text = (TextDistanceTable(text_distances=text) if distances
                else TextDistanceTable(text_embeddings=text))
    mean_d = torch.tensor(mean_normalized_distance(text), dtype=torch.float64)
    return float(map_distances_to_margins(mean_d, m_min, m_max, mapping))


class AdaptiveMarginLoss(ProxyLoss):
    """Normalised softmax with per-negative margins ``m_{y,j} = f(d̃_text(y, j))``.

    Args:
        num_classes, embedding_dim: proxy matrix shape.
        text_embeddings: class-name embeddings (C × k), e.g. from
            :func:`dml_study.losses.text.class_name_embeddings`; or
        text_distances: a precomputed C × C distance matrix (exactly one of the two).
        scale: s (default 20).
        m_min, m_max: margin range (defaults 0.05, 0.25).
        mapping: ``"inverse"`` (close names → large margin; default), ``"linear"``,
            ``"constant"`` or ``"matched_constant"``; see the module docstring.
        match_mapping: the mapping whose mean margin ``"matched_constant"`` uses.
        proxy_init, regularizer, seed: see :class:`ProxyLoss`.
    """

    name = "adaptive_margin"
    short_name = "ada"
    title = "Adaptive margin"

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        text_embeddings: np.ndarray | Tensor | None = None,
        text_distances: np.ndarray | Tensor | None = None,
        scale: float = 20.0,
        m_min: float = 0.05,
        m_max: float = 0.25,
        mapping: Mapping = "inverse",
        match_mapping: Mapping = "inverse",
        proxy_init: ProxyInit = "kaiming",
        regularizer: SoftOrthogonality | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(num_classes, embedding_dim, proxy_init, regularizer, seed)
        if mapping not in MAPPINGS:
            raise ValueError(f"mapping={mapping!r} is not valid; choose one of {list(MAPPINGS)}")
        if not 0.0 <= m_min <= m_max:
            raise ValueError(f"need 0 <= m_min <= m_max, got m_min={m_min}, m_max={m_max}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.table = TextDistanceTable(text_embeddings, text_distances)
        if self.table.num_classes != num_classes:
            raise ValueError(
                f"text embeddings/distances cover {self.table.num_classes} classes but "
                f"num_classes={num_classes}"
            )
        self.scale = float(scale)
        self.m_min, self.m_max = float(m_min), float(m_max)
        self.mapping: Mapping = mapping
        if match_mapping not in ADAPTIVE_MAPPINGS:
            raise ValueError(
                f"match_mapping={match_mapping!r} is not valid; choose one of "
                f"{list(ADAPTIVE_MAPPINGS)}"
            )
        self.match_mapping: Mapping = match_mapping
        #: The constant margin of ``"matched_constant"`` (None for the other mappings).
        self.matched_margin: float | None = (
            mean_margin(self.table, self.m_min, self.m_max, match_mapping)
            if mapping == "matched_constant" else None
        )

    def average_margin(self) -> float:
        r"""The mean margin :math:`\bar m` over ordered class pairs ``y ≠ j`` of this loss.

        Equal for an adaptive arm and its ``"matched_constant"`` control (recorded in both
        runs' ``metrics.json`` as ``mean_margin``).
        """
        if self.matched_margin is not None:
            return self.matched_margin
        return mean_margin(self.table, self.m_min, self.m_max, self.mapping)

    def margins(self, labels: Tensor) -> Tensor:
        """Additive margins (B, C): ``m_{y_b, j}`` at negatives, exactly 0 at the positive."""
        dist = self.table.rows(labels).to(self.proxies.dtype)  # float64 → rounded once
        if self.matched_margin is not None:
            margins = torch.full_like(dist, self.matched_margin)
        else:
            margins = map_distances_to_margins(dist, self.m_min, self.m_max, self.mapping)
        return margins.masked_fill(F.one_hot(labels, self.num_classes).bool(), 0.0)

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cos = cosine_logits(embeddings, self.proxies)
        margins = self.margins(labels).to(device=cos.device, dtype=cos.dtype)
        return margin_cross_entropy(cos, labels, self.scale, margins)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, scale={self.scale}, m_min={self.m_min}, "
            f"m_max={self.m_max}, mapping={self.mapping!r}"
            + (f", matched_margin={self.matched_margin:.4f}" if self.matched_margin is not None
               else "")
        )
