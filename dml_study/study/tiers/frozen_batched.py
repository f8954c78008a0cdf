r"""The batched frozen tier: R frozen-tier runs trained as one computation.

A frozen-tier run (:func:`dml_study.study.tiers.frozen.train_frozen`) trains a linear head and the
proxies on cached backbone features: about 0.1 GFLOP per step, so a step costs what PyTorch
spends *dispatching* its few hundred small operations, not arithmetic, and the second core
idles. :func:`train_frozen_batch` trains R runs at once: the heads and proxies are stacked
(``(R, d, F)``, ``(R, d)``, ``(R, C, d)``) and every operation of a step runs once for all
runs, as batched matrix products (``torch.bmm``) and elementwise operations on stacked
tensors, so the dispatch cost is paid once per step instead of once per run.

**What a run keeps.** Everything that defines it: its seed and initialisation (built by the
sequential trainer's own :func:`~dml_study.study.tiers.frozen.init_frozen_run`, one run after the
other, so the same RNG calls happen in the same order), its own m-per-class sampler seeded by
its seed, its own views per epoch (``view_of`` from ``(seed, epoch, 7)``), optimiser
hyperparameters and schedule, loss terms and their hyperparameters (Proxy Anchor α and δ,
the margins and scale of the softmax losses, the adaptive margins of its text source, the
Soft Orthogonality λ, Gram, normalisation and reduction), gradient clipping, history records,
per-epoch evaluation and its own run directory, written by the sequential trainer's own
:func:`~dml_study.study.tiers.frozen.write_frozen_run` (same files, same JSON keys).

**Which runs share a batch** (:func:`batch_key`): the same features, head shape (Identity or
``Linear(F, d)`` with the same d), loss family (Proxy Anchor, or the softmax family:
normalised softmax / additive / adaptive margin), batch size, m per class and epochs; so the
stacked tensors have one shape and every run has the same number of steps. Hyperparameters
may differ run by run (a tuning batch): learning rates and their multipliers, weight decay,
betas, ε, schedule shape, clipping, α, δ, margins, scale, λ and the SO form.

**Two modes.** ``mode="exact"`` (the default) runs the sequential arithmetic, below;
``mode="fast"`` computes the same losses with the fused kernels of
:mod:`dml_study.study.tiers.frozen_fused` and torch's fused AdamW (fewer passes over memory, the
same training up to float32 rounding; :class:`BatchedFrozenTrainer`).

**Exactly the sequential arithmetic** (``mode="exact"``). Every batched operation is the one
the sequential trainer runs, applied to each run's slice:

* matrix products are batched ``bmm`` calls with the operand layouts of the sequential
  ``mm`` (a custom autograd function, :class:`_BatchedMM`, reproduces the backward formulas
  :func:`torch.mm` picks by operand layout), so every slice calls the same GEMM;
* reductions run over the same contiguous extents (a row of a stacked tensor is the
  sequential tensor); the softmax losses' batch mean is :func:`torch.nn.functional.nll_loss`
  on each run's slice, as in :func:`~torch.nn.functional.cross_entropy`;
* hyperparameters equal in every run of a batch are passed as the same Python scalars;
  those that differ become per-run ``float32`` tensors (an IEEE product or sum of the same
  two ``float32`` numbers, so the same bits);
* the optimiser *is* :class:`torch.optim.AdamW`: one instance whose parameter groups hold,
  for each run, views of the stacked tensors (runs with equal hyperparameters share a group),
  so each run's update is torch's own AdamW code on a tensor of the sequential shape; the
  schedule is :func:`~dml_study.training.optim.lr_factor` per group (a
  :class:`~torch.optim.lr_scheduler.LambdaLR` with one factor per group);
* gradient clipping is :func:`torch.nn.utils.clip_grad_norm_`'s arithmetic per run
  (``_foreach_norm`` of the run's gradients, their norm, ``max_norm / (norm + 1e-6)``
  clamped to 1);
* loss terms are accumulated in float64 in step order, as the sequential ``float`` sums.

``tests/study/test_study_frozen_batched.py`` checks the result against the sequential
trainer, run by run: with one thread (torch and faiss) in both, every history value, metric,
proxy and embedding is **bit-identical**. With more threads it is not: torch splits one
run's GEMM between the threads, but a batched GEMM by runs, so a product sums in another
order (float32 rounding; ``docs/frozen-tier.md`` has the measured differences, the ``fast``
mode's and why they are safe for the study's verdicts).

**Evaluation.** After every epoch the test features (converted to float32 once per batch,
not once per evaluation) are embedded by every run's slice of the stacked head, and each run
is scored by :func:`dml_study.evaluation.evaluate` (the exact faiss search in its canonical
tie order, and the same metric code), so per-epoch metrics are those of the sequential
trainer.

**A run that fails.** A non-finite loss ends that run only: it is dropped from the backward
pass from that step on (its slice gets no gradient, the other runs are untouched: no operation
mixes runs), nothing of it is written beyond the prepared directory (no ``metrics.json``, so
the study does not count it as finished), and :class:`BatchedRunsFailed` names it after the
other runs of the batch have been written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dml_study import determinism
from dml_study.config import ExperimentConfig
from dml_study.evaluation import evaluate
from dml_study.losses import ProxyLoss, orthogonality_stats
from dml_study.losses.adaptive_margin import AdaptiveMarginLoss
from dml_study.losses.additive_margin import AdditiveMarginLoss
from dml_study.losses.proxy_anchor import ProxyAnchorLoss, log1p_sum_exp_masked
from dml_study.losses.soft_orthogonality import SoftOrthogonality, so_floor
from dml_study.study.plan.config import StudyConfig
from dml_study.study.plan.grid import (
    RunOutcome,
    RunSpec,
    frozen_feature_settings,
    is_finished,
    unique_runs,
)
from dml_study.study.tiers.frozen import (
    FeatureSettings,
    FrozenFeatures,
    FrozenTierError,
    _say,
    extract_features,
    features_key,
    frozen_run_config,
    init_frozen_run,
    train_frozen,
    train_frozen_runs,
    write_frozen_run,
)
from dml_study.study.tiers.frozen_fused import (
    gram_residual,
    normalize_rows,
    proxy_anchor_from_cosines,
)
from dml_study.training.history import History
from dml_study.training.optim import lr_factor
from dml_study.training.run_dir import RunDirectory

#: Runs trained together at most (memory: about 4 × (F·d + d + C·d) floats per run for the
#: parameters, gradients and AdamW moments, 8 MB for icons' 1280 × 384 head).
DEFAULT_MAX_RUNS = 32
#: ``mode`` of :class:`BatchedFrozenTrainer`: bit-identical to the sequential trainer, or
#: fused kernels (float32-rounding differences).
MODES = ("exact", "fast")


class BatchedRunsFailed(FrozenTierError):
    """Some runs of a batch failed (non-finite loss); the others were written.

    Attributes:
        failures: ``{run directory name: message}`` of the failed runs.
        metrics: ``{run directory name: metrics}`` of the runs that finished.
    """

    def __init__(self, failures: dict[str, str], metrics: dict[str, dict[str, Any]]):
        self.failures, self.metrics = dict(failures), dict(metrics)
        names = "; ".join(f"{name}: {msg}" for name, msg in failures.items())
        super().__init__(f"{len(failures)} frozen-tier run(s) failed ({names})")

    def __reduce__(self) -> tuple[Any, ...]:  # raised in a worker process, re-raised here
        return (type(self), (self.failures, self.metrics))


# --------------------------------------------------------------------------- grouping


def loss_family(loss: type[ProxyLoss] | ProxyLoss) -> str | None:
    """``"proxy_anchor"`` or ``"softmax"`` (the batched loss that trains ``loss``); ``None``
    for a loss class without a batched form (such runs are trained sequentially)."""
    cls = loss if isinstance(loss, type) else type(loss)
    if cls is ProxyAnchorLoss:
        return "proxy_anchor"
    if cls is AdaptiveMarginLoss or (issubclass(cls, AdditiveMarginLoss)
                                      and cls.compute is AdditiveMarginLoss.compute):
        return "softmax"
    return None


def batch_key(config: ExperimentConfig, features: FrozenFeatures) -> tuple[Any, ...] | None:
    """What runs must share to be trained in one batch; ``None`` when ``config`` cannot be.

    The key holds the features, the head (``"identity"`` or its embedding size), the loss
    family (:func:`loss_family`), batch size, m per class and epochs: equal keys give equal
    tensor shapes and step counts. Everything else may differ between the runs of a batch.
    """
    from dml_study.losses.registry import LOSSES

    family = loss_family(LOSSES[config.loss.name]) if config.loss.name in LOSSES else None
    if family is None:
        return None
    dim = config.model.embedding_dim
    head = "identity" if dim is None or dim == features.feature_dim else int(dim)
    d = config.data
    return (features.key, head, family, d.batch_size, d.m_per_class, config.schedule.epochs)


def group_runs(
    keys: Sequence[Any], max_runs: int = DEFAULT_MAX_RUNS
) -> list[list[int]]:
    """Indices of ``keys`` grouped into batches of equal key, at most ``max_runs`` each.

    Batches keep the first-appearance order of their keys, and the runs their order; a
    ``None`` key (not batchable) gets a batch of its own.
    """
    if max_runs < 1:
        raise ValueError(f"max_runs must be >= 1, got {max_runs}")
    order: dict[Any, list[int]] = {}
    singles: list[list[int]] = []
    for i, key in enumerate(keys):
        if key is None:
            singles.append([i])
            order[("__single__", i)] = singles[-1]
        else:
            order.setdefault(key, []).append(i)
    batches: list[list[int]] = []
    for members in order.values():
        batches.extend(members[s:s + max_runs] for s in range(0, len(members), max_runs))
    return batches


# --------------------------------------------------------------------------- batched ops


def _column_major(t: Tensor) -> bool:
    """Whether each (n, k) slice of ``t`` is column-major, by the test of torch's ``mm``
    backward (``strides[0] == 1 and strides[1] == sizes[0]``)."""
    return t.stride(1) == 1 and t.stride(2) == t.shape[1]


class _BatchedMM(torch.autograd.Function):
    r"""``a @ b`` per run, ``(R, n, k) × (R, k, m) → (R, n, m)``, with the backward of
    :func:`torch.mm` on every slice.

    torch's ``mm`` backward picks its formula by the layout of each operand
    (``mm_mat1_backward`` / ``mm_mat2_backward`` in ``FunctionsManual.cpp``): for a
    column-major ``a`` it computes ``∂a = (b @ Gᵀ)ᵀ``, else ``G @ bᵀ``; for a column-major
    ``b``, ``∂b = (Gᵀ @ a)ᵀ``, else ``aᵀ @ G``. ``bmm``'s own backward always computes
    ``G @ bᵀ`` and ``aᵀ @ G``: the same numbers mathematically, a different GEMM call for a
    column-major operand (``A @ Bᵀ`` products: the cosine logits, the SO Gram matrices), so
    possibly different bits. Mirroring the choice keeps every slice on the sequential GEMM.
    """

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(a, b)
        return torch.bmm(a, b)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        a, b = ctx.saved_tensors
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = (torch.bmm(b, grad.transpose(1, 2)).transpose(1, 2) if _column_major(a)
                      else torch.bmm(grad, b.transpose(1, 2)))
        if ctx.needs_input_grad[1]:
            grad_b = (torch.bmm(grad.transpose(1, 2), a).transpose(1, 2) if _column_major(b)
                      else torch.bmm(a.transpose(1, 2), grad))
        return grad_a, grad_b


def _sum_each(x: Tensor) -> Tensor:
    """``x[r].sum()`` for every run r, as (R,): one reduction over the run dimensions (the
    same summation order per slice as the sequential full ``sum()`` with one thread; the
    per-slice alternative, ``torch.stack([t.sum() for t in x.unbind(0)])``, changes the
    order in which autograd accumulates the gradients of the SO factorised residual)."""
    return x.sum(dim=tuple(range(1, x.dim())))


class _Linear(torch.autograd.Function):
    r"""``x @ Wᵀ + b`` per run (``x`` (R, B, F), ``W`` (R, d, F), ``b`` (R, d)): the
    sequential ``F.linear`` (``addmm(b, x, Wᵀ)``) on every slice, with its backward
    ``∂W = Gᵀ @ x`` and ``∂b = Σ_rows G``; ``x`` (cached features) gets no gradient."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, Tensor]:
        (x,) = ctx.saved_tensors
        return None, torch.bmm(grad.transpose(1, 2), x), grad.sum(1)


def _per_run(values: Sequence[float]) -> float | Tensor:
    """One Python float when every run has the same value (the sequential scalar), else a
    ``(R, 1, 1)`` float32 tensor (the same float32 numbers, broadcast per run)."""
    first = values[0]
    if all(v == first for v in values):
        return float(first)
    return torch.tensor([float(v) for v in values], dtype=torch.float32).view(-1, 1, 1)


def _flat(value: float | Tensor) -> float | Tensor:
    """A per-run ``(R, 1, 1)`` tensor as ``(R,)`` (scalars unchanged)."""
    return value.view(-1) if isinstance(value, Tensor) else value


def _cosine(embeddings: Tensor, proxies: Tensor) -> Tensor:
    """:func:`~dml_study.losses.additive_margin.cosine_logits` per run: (R, B, C)."""
    return _BatchedMM.apply(F.normalize(embeddings, dim=2),
                            F.normalize(proxies, dim=2).transpose(1, 2))


class _BatchedLoss:
    """The main loss term of R runs of one loss family (:meth:`compute` → (R,))."""

    def __init__(self, losses: Sequence[ProxyLoss]):
        self.losses = list(losses)
        self.num_classes = losses[0].num_classes

    def compute(self, embeddings: Tensor, labels: Tensor, proxies: Tensor) -> Tensor:
        """``mode="exact"``: the loss modules' operations, slice by slice."""
        raise NotImplementedError

    def from_cosines(self, cos: Tensor, labels: Tensor) -> Tensor:
        """``mode="fast"``: the same loss from the cosine logits (R, B, C), fused."""
        raise NotImplementedError


class _BatchedProxyAnchor(_BatchedLoss):
    """:meth:`ProxyAnchorLoss.compute` per run, with each run's α and δ."""

    def __init__(self, losses: Sequence[ProxyLoss]):
        super().__init__(losses)
        self.alpha = _per_run([loss.alpha for loss in losses])
        self.margin = _per_run([loss.margin for loss in losses])

    def compute(self, embeddings: Tensor, labels: Tensor, proxies: Tensor) -> Tensor:
        cos = _cosine(embeddings, proxies)  # (R, B, C)
        pos_mask = F.one_hot(labels, self.num_classes).bool()
        neg_mask = ~pos_mask
        pos_term = log1p_sum_exp_masked(-self.alpha * (cos - self.margin), pos_mask, dim=1)
        neg_term = log1p_sum_exp_masked(self.alpha * (cos + self.margin), neg_mask, dim=1)
        num_with_pos = pos_mask.any(dim=1).sum(dim=1).clamp_min(1)
        return pos_term.sum(dim=1) / num_with_pos + neg_term.sum(dim=1) / self.num_classes

    def from_cosines(self, cos: Tensor, labels: Tensor) -> Tensor:
        return proxy_anchor_from_cosines(cos, labels, self.alpha, self.margin)


class _BatchedSoftmax(_BatchedLoss):
    """The softmax family per run: ``cross_entropy(s · (cos + margins), y)`` with each run's
    scale s and margins (:class:`AdditiveMarginLoss`: ``−m`` at the positive, none for
    m = 0; :class:`AdaptiveMarginLoss`: its own ``margins(labels)``)."""

    def __init__(self, losses: Sequence[ProxyLoss]):
        super().__init__(losses)
        self.scale = _per_run([loss.scale for loss in losses])
        adaptive = [isinstance(loss, AdaptiveMarginLoss) for loss in losses]
        self.kind = ("adaptive" if all(adaptive) else "additive" if not any(adaptive)
                     else "mixed")
        if self.kind == "additive":
            self.margin = [loss.margin for loss in losses]
            self.neg_margin = _per_run([-m for m in self.margin])

    def _margins(self, labels: Tensor, dtype: torch.dtype) -> Tensor | float:
        if self.kind == "additive":
            if all(m == 0.0 for m in self.margin):
                return 0.0
            one_hot = F.one_hot(labels, self.num_classes).to(dtype)
            if isinstance(self.neg_margin, float):
                return self.neg_margin * one_hot
            return self.neg_margin * one_hot  # (R,1,1) × (R,B,C)
        rows = []
        for loss, y in zip(self.losses, labels, strict=True):
            if isinstance(loss, AdaptiveMarginLoss):
                rows.append(loss.margins(y).to(dtype))
            elif loss.margin == 0.0:
                rows.append(torch.zeros(y.shape[0], self.num_classes, dtype=dtype))
            else:
                rows.append(-loss.margin * F.one_hot(y, self.num_classes).to(dtype))
        return torch.stack(rows)

    def compute(self, embeddings: Tensor, labels: Tensor, proxies: Tensor) -> Tensor:
        cos = _cosine(embeddings, proxies)
        logits = self.scale * (cos + self._margins(labels, cos.dtype))
        # F.cross_entropy is nll_loss(log_softmax(x, 1), y): the softmax rows are
        # independent (one batched call); the batch mean is nll_loss's own sum per run.
        log_prob = torch.log_softmax(logits, dim=2)
        return torch.stack([F.nll_loss(lp, y) for lp, y in zip(log_prob, labels, strict=True)])

    def _margin_tables(self) -> tuple[Tensor, Tensor]:
        """Every run's margins as a (C, C) table (row y: the margins of a sample of class y),
        the distinct tables stacked (T·C, C), and each run's first row in that stack."""
        classes = self.num_classes
        tables: list[Tensor] = []
        first_row: list[int] = []
        with torch.no_grad():
            for loss in self.losses:
                if isinstance(loss, AdaptiveMarginLoss):
                    table = loss.margins(torch.arange(classes)).float()
                else:
                    table = torch.eye(classes) * -loss.margin
                same = next((i for i, t in enumerate(tables) if torch.equal(t, table)), None)
                if same is None:
                    tables.append(table)
                    same = len(tables) - 1
                first_row.append(same * classes)
        return torch.cat(tables), torch.tensor(first_row).view(-1, 1)

    def from_cosines(self, cos: Tensor, labels: Tensor) -> Tensor:
        if not hasattr(self, "_tables"):
            self._tables, self._first_row = self._margin_tables()
        margins = self._tables.index_select(0, (self._first_row + labels).view(-1))
        logits = self.scale * (cos + margins.view_as(cos))
        log_prob = torch.log_softmax(logits, dim=2)
        return -log_prob.gather(2, labels.unsqueeze(2)).squeeze(2).mean(dim=1)


_FAMILIES: dict[str, type[_BatchedLoss]] = {
    "proxy_anchor": _BatchedProxyAnchor,
    "softmax": _BatchedSoftmax,
}


class _BatchedSO:
    """Soft Orthogonality of the runs with λ > 0 (zero for the others, as the sequential
    ``ProxyLoss.regularization``), in sub-batches of equal form (Gram, normalisation,
    reduction, method); :meth:`SoftOrthogonality.forward` per run."""

    def __init__(self, losses: Sequence[ProxyLoss]):
        self.num_runs = len(losses)
        forms: dict[tuple[Any, ...], list[int]] = {}
        regs: list[SoftOrthogonality | None] = [loss.regularizer for loss in losses]
        for r, reg in enumerate(regs):
            if reg is not None and reg.lam != 0.0:
                forms.setdefault((reg.gram, reg.normalize, reg.reduction, reg.method), []).append(r)
        self.groups = [
            (form, torch.tensor(runs), _flat(_per_run([regs[r].lam for r in runs])))
            for form, runs in forms.items()
        ]

    def __call__(self, proxies: Tensor) -> Tensor:
        out = proxies.new_zeros(self.num_runs)
        for (gram, normalize, reduction, method), runs, lam in self.groups:
            p = proxies.index_select(0, runs)
            p = F.normalize(p, dim=2) if normalize else p
            a = p if gram == "classes" else p.transpose(1, 2)
            n, k = a.shape[1], a.shape[2]
            if method == "factorized" or (method == "auto" and n > k):
                small = _BatchedMM.apply(a.transpose(1, 2), a)
                residual = _sum_each(small.pow(2)) - 2.0 * _sum_each(a.pow(2)) + n
            else:
                gram_matrix = _BatchedMM.apply(a, a.transpose(1, 2))
                residual = _sum_each((gram_matrix - torch.eye(n, dtype=a.dtype)).pow(2))
            if reduction != "sum":
                if reduction == "excess_mean":
                    c, d = proxies.shape[1], proxies.shape[2]
                    residual = residual - (so_floor(c, d, gram) if normalize else 0.0)
                residual = residual / max(n * (n - 1), 1)
            out = out.index_copy(0, runs, lam * residual)
        return out

    def fused(self, proxies: Tensor, normalized: Tensor) -> Tensor:
        """``mode="fast"``: the same terms with :func:`~dml_study.study.tiers.frozen_fused.
        gram_residual` (hand-derived gradient) on the normalised proxies shared with the
        cosine logits (``normalized``) or, unnormalised, on ``proxies``."""
        out = proxies.new_zeros(self.num_runs)
        for (gram, normalize, reduction, method), runs, lam in self.groups:
            p = (normalized if normalize else proxies).index_select(0, runs)
            a = p if gram == "classes" else p.transpose(1, 2)
            n, k = a.shape[1], a.shape[2]
            residual = gram_residual(a, method == "factorized" or (method == "auto" and n > k))
            if reduction != "sum":
                if reduction == "excess_mean":
                    c, d = proxies.shape[1], proxies.shape[2]
                    residual = residual - (so_floor(c, d, gram) if normalize else 0.0)
                residual = residual / max(n * (n - 1), 1)
            out = out.index_copy(0, runs, lam * residual)
        return out


# --------------------------------------------------------------------------- the trainer


@dataclass
class _Run:
    """One run of a batch: its config, directory, modules and bookkeeping."""

    config: ExperimentConfig
    run_dir: RunDirectory
    head: nn.Module
    loss: ProxyLoss
    dim: int
    sampler: Any
    proxies_init: np.ndarray
    history: History
    untrained: dict[str, float] | None = None
    failure: str | None = None


class _StackedParameters:
    """The stacked heads and proxies of R runs and the AdamW that trains them.

    ``weight`` (R, d, F), ``bias`` (R, d) and ``proxies`` (R, C, d) are leaves of the
    batched graph. The optimiser's parameters are *views* of them, one per run and
    tensor (``weight[r]`` has the shape and layout of run r's ``nn.Linear.weight``), made
    leaves with their own ``.grad`` views; so :class:`torch.optim.AdamW` updates the stacked
    storage with exactly the arithmetic it applies to a sequential run.
    """

    def __init__(self, runs: Sequence[_Run], steps_per_epoch: int, fused: bool = False):
        self.runs = runs
        self.fused = fused
        linear = [isinstance(run.head, nn.Linear) for run in runs]
        if any(linear) != all(linear):
            raise FrozenTierError("a batch mixes Identity and Linear heads: group by batch_key")
        self.linear = all(linear)
        with torch.no_grad():
            stack = lambda ts: torch.stack([t.detach() for t in ts]).clone()  # noqa: E731
            self.proxies = stack([run.loss.proxies for run in runs]).requires_grad_(True)
            self.weight = self.bias = None
            if self.linear:
                self.weight = stack([run.head.weight for run in runs]).requires_grad_(True)
                self.bias = stack([run.head.bias for run in runs]).requires_grad_(True)
        self.leaves = [t for t in (self.weight, self.bias, self.proxies) if t is not None]
        # per run: the optimiser's views in the sequential trainer's group order
        self.views: list[list[Tensor]] = []
        for r in range(len(runs)):
            views = [leaf.detach()[r].requires_grad_(True) for leaf in self.leaves]
            self.views.append(views)
        self.optimizer, self.scheduler, self.group_of = self._optimizer(steps_per_epoch)

    def _optimizer(
        self, steps: int
    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR, list[dict[str, int]]]:
        """AdamW with one group per distinct (name, lr, AdamW hyperparameters, schedule);
        ``group_of[r]`` maps run r's group names (``head``, ``proxies``) to group indices."""
        groups: list[dict[str, Any]] = []
        factors: list[Callable[[int], float]] = []
        index: dict[tuple[Any, ...], int] = {}
        group_of: list[dict[str, int]] = []
        for run, views in zip(self.runs, self.views, strict=True):
            o, s = run.config.optim, run.config.schedule
            named = ([("head", views[:2], o.lr * o.head_lr_mult)] if self.linear else [])
            named.append(("proxies", views[-1:], o.lr * o.proxy_lr_mult))
            mine: dict[str, int] = {}
            for name, params, lr in named:
                key = (name, lr, o.weight_decay, tuple(o.betas), o.eps,
                       repr(s), steps)
                if key not in index:
                    index[key] = len(groups)
                    groups.append({"name": name, "params": [], "lr": lr,
                                   "weight_decay": o.weight_decay, "betas": tuple(o.betas),
                                   "eps": o.eps})
                    factors.append(lr_factor(s, steps))
                groups[index[key]]["params"].extend(params)
                mine[name] = index[key]
            group_of.append(mine)
        # exact: torch's AdamW for-loop arithmetic (foreach = the same kernels per tensor, as
        # the sequential default on CPU); fused: torch's one-pass AdamW kernel (rounds the
        # first moment as β₁m + (1 − β₁)g instead of lerp: not the same bits)
        optimizer = torch.optim.AdamW(groups, **({"fused": True} if self.fused
                                                 else {"foreach": True}))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
        return optimizer, scheduler, group_of

    def zero_grad(self) -> None:
        for leaf in self.leaves:
            leaf.grad = None

    def link_grads(self) -> None:
        """Point every run's optimiser views at its slice of the stacked gradients."""
        for r, views in enumerate(self.views):
            for view, leaf in zip(views, self.leaves, strict=True):
                view.grad = leaf.grad[r]

    def lrs(self, r: int) -> dict[str, float]:
        """Run r's current learning rates as :func:`~dml_study.training.optim.group_lrs`."""
        groups = self.optimizer.param_groups
        return {f"lr_{name}": groups[g]["lr"] for name, g in self.group_of[r].items()}

    @torch.no_grad()
    def write_back(self, r: int) -> None:
        """Copy run r's trained slice into its own head and loss modules."""
        run = self.runs[r]
        run.loss.proxies.copy_(self.proxies[r])
        if self.linear:
            run.head.weight.copy_(self.weight[r])
            run.head.bias.copy_(self.bias[r])

    @torch.no_grad()
    @torch.inference_mode()
    def test_embeddings(self, test: Tensor) -> list[Tensor]:
        """Every run's embeddings of the test features (M, d): ``F.linear`` on its slice of
        the stacked head, the sequential trainer's product (a batched product over an
        expanded (R, M, F) copy of the features would cost R × M × F floats of memory)."""
        if not self.linear:
            return [test] * len(self.runs)
        return [F.linear(test, w, b) for w, b in zip(self.weight, self.bias, strict=True)]


def _clip_grad_norms(
    stacked: _StackedParameters, max_norms: Sequence[float | None]
) -> Tensor | None:
    """Per-run :func:`torch.nn.utils.clip_grad_norm_`; returns the (R,) total norms (or
    ``None`` when no run clips). Runs without clipping are scaled by exactly 1."""
    if all(m is None for m in max_norms):
        return None
    grads = [view.grad for views in stacked.views for view in views]
    per_tensor = torch._foreach_norm(grads, 2.0)
    width = len(stacked.leaves)
    norms = torch.stack([
        torch.linalg.vector_norm(torch.stack(per_tensor[r * width:(r + 1) * width]), 2.0)
        for r in range(len(max_norms))
    ])
    # clip_grad_norm_ computes ``max_norm / (total_norm + 1e-6)``: a Python float over a
    # tensor, which torch evaluates as ``reciprocal(total_norm + 1e-6) * max_norm``.
    limit = torch.tensor([1.0 if m is None else float(m) for m in max_norms])
    coef = torch.clamp((norms + 1e-6).reciprocal() * limit, max=1.0)
    coef = torch.where(torch.tensor([m is None for m in max_norms]), 1.0, coef)
    for leaf in stacked.leaves:
        leaf.grad.mul_(coef.view(-1, *([1] * (leaf.dim() - 1))))
    return norms


def _clip_grad_norms_fused(
    stacked: _StackedParameters, max_norms: Sequence[float | None]
) -> Tensor | None:
    """:func:`_clip_grad_norms` with one norm per stacked tensor and run (``mode="fast"``:
    the same norms up to float32 summation order)."""
    if all(m is None for m in max_norms):
        return None
    squares = sum(torch.linalg.vector_norm(leaf.grad, dim=tuple(range(1, leaf.dim()))) ** 2
                  for leaf in stacked.leaves)
    norms = torch.sqrt(squares)
    limit = torch.tensor([1.0 if m is None else float(m) for m in max_norms])
    coef = torch.clamp(limit / (norms + 1e-6), max=1.0)
    coef = torch.where(torch.tensor([m is None for m in max_norms]), 1.0, coef)
    for leaf in stacked.leaves:
        leaf.grad.mul_(coef.view(-1, *([1] * (leaf.dim() - 1))))
    return norms


def _check_batch(runs: Sequence[_Run], features: FrozenFeatures) -> int:
    keys = {batch_key(run.config, features) for run in runs}
    if len(keys) != 1 or None in keys:
        raise FrozenTierError(
            f"runs of one batch must share batch_key (features, head, loss family, batch "
            f"size, m per class, epochs); got {len(keys)} different keys: group them with "
            "dml_study.study.tiers.frozen_batched.group_runs"
        )
    steps = {len(run.sampler) for run in runs}
    if len(steps) != 1:
        raise FrozenTierError(f"runs of one batch differ in steps per epoch: {sorted(steps)}")
    return steps.pop()


class BatchedFrozenTrainer:
    """R frozen-tier runs of one batch (equal :func:`batch_key`) as one computation.

    :func:`train_frozen_batch` is the usual entry point; the class exposes the pieces
    (:meth:`epoch_batches`, :meth:`train_step`, :meth:`evaluate`) for tests and
    ``benchmarks/bench_frozen.py``. Building it initialises every run exactly as the
    sequential trainer does (:func:`~dml_study.study.tiers.frozen.init_frozen_run`, run by run).

    ``mode`` (:data:`MODES`): ``"exact"`` runs the sequential trainer's arithmetic on every
    run's slice (bit-identical runs); ``"fast"`` computes the losses with the fused kernels
    of :mod:`dml_study.study.tiers.frozen_fused` (the proxies normalised once for the cosines and
    SO), one norm per stacked tensor for clipping and torch's fused AdamW: the same
    training up to float32 rounding (the tolerance is measured in ``docs/frozen-tier.md``).
    """

    def __init__(
        self,
        configs: Sequence[ExperimentConfig],
        features: FrozenFeatures,
        run_dirs: Sequence[RunDirectory],
        *,
        mode: str = "exact",
    ):
        from dml_study.training.pipeline import build_batch_sampler

        if mode not in MODES:
            raise FrozenTierError(f"unknown batched mode {mode!r}; choose one of {list(MODES)}")
        self.mode = mode
        if len(configs) != len(run_dirs) or not configs:
            raise ValueError(f"need one run directory per config, got {len(configs)} configs "
                             f"and {len(run_dirs)} directories")
        self.features = features
        self.runs: list[_Run] = []
        for config, run_dir in zip(configs, run_dirs, strict=True):
            head, loss, dim = init_frozen_run(config, features)  # the sequential initialisation
            sampler = build_batch_sampler(config, features.train_labels, 0, 1)
            self.runs.append(_Run(config, run_dir, head, loss, dim, sampler,
                                  loss.proxies.detach().numpy().copy(), History()))
        self.steps = _check_batch(self.runs, features)
        losses = [run.loss for run in self.runs]
        self.main_loss = _FAMILIES[loss_family(losses[0])](losses)
        self.so_loss = _BatchedSO(losses)
        self.stacked = _StackedParameters(self.runs, self.steps, fused=mode == "fast")
        self.max_norms = [run.config.optim.grad_clip_norm for run in self.runs]
        self.alive = torch.ones(len(self.runs), dtype=torch.bool)
        views = features.train_views
        self.num_views, self.num_train = int(views.shape[0]), int(views.shape[1])
        # (V·N, F) float32: row v·N + i is view v of training image i (float16 → float32 is
        # exact, so these are the numbers the sequential trainer converts batch by batch).
        self.flat_views = torch.from_numpy(np.ascontiguousarray(
            views.reshape(self.num_views * self.num_train, -1), dtype=np.float32))
        self.test = torch.from_numpy(np.asarray(features.test, dtype=np.float32))

    @property
    def num_runs(self) -> int:
        return len(self.runs)

    def epoch_batches(self, epoch: int) -> tuple[Tensor, Tensor]:
        """Rows of :attr:`flat_views` and labels of every step of ``epoch``, shape
        (steps, R, B): each run's own sampler order and views (``view_of`` from
        ``(seed, epoch, 7)``, as the sequential trainer)."""
        shape = (self.steps, self.num_runs, self.runs[0].config.data.batch_size)
        order = np.empty(shape, dtype=np.int64)
        rows = np.empty(shape, dtype=np.int64)
        for r, run in enumerate(self.runs):
            run.sampler.set_epoch(epoch)
            view_of = np.random.default_rng([run.config.run.seed, epoch, 7]).integers(
                self.num_views, size=self.num_train)
            batches = np.asarray(list(run.sampler), dtype=np.int64)
            order[:, r] = batches
            rows[:, r] = view_of[batches] * self.num_train + batches
        labels = np.asarray(self.features.train_labels)[order]
        return torch.from_numpy(rows), torch.from_numpy(labels)

    def forward(self, rows: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(total, main, so)`` of every run, each (R,), on the batch ``rows`` (R, B)."""
        stacked = self.stacked
        batch = self.flat_views.index_select(0, rows.reshape(-1)).view(
            self.num_runs, rows.shape[1], -1)
        if stacked.linear:
            embeddings = _Linear.apply(batch, stacked.weight, stacked.bias)
        else:
            embeddings = batch
        if self.mode == "exact":
            main = self.main_loss.compute(embeddings, labels, stacked.proxies)
            so = self.so_loss(stacked.proxies)
        else:
            proxies = normalize_rows(stacked.proxies)
            cos = torch.bmm(normalize_rows(embeddings), proxies.transpose(1, 2))
            main = self.main_loss.from_cosines(cos, labels)
            so = self.so_loss.fused(stacked.proxies, proxies)
        return main + so, main, so

    def train_step(self, rows: Tensor, labels: Tensor) -> tuple[Tensor, Tensor | None]:
        """One optimiser step of every live run; returns the (R, 3) float64 loss terms
        ``(loss, main, so)`` and the (R,) gradient norms before clipping (``None`` when no
        run clips). Runs whose loss is not finite are marked dead (:attr:`alive`) first and
        get no gradient from this step on."""
        total, main, so = self.forward(rows, labels)
        finite = torch.isfinite(total.detach())
        if not bool(finite[self.alive].all()):
            self.alive &= finite
        stacked = self.stacked
        stacked.zero_grad()
        if bool(self.alive.any()):
            torch.where(self.alive, total, torch.zeros_like(total)).sum().backward()
            stacked.link_grads()
            clip = _clip_grad_norms if self.mode == "exact" else _clip_grad_norms_fused
            norms = clip(stacked, self.max_norms)
            stacked.optimizer.step()
        else:
            norms = None
        stacked.scheduler.step()
        terms = torch.stack([total, main, so], dim=1).detach().to(torch.float64)
        return terms, norms

    def evaluate(self, last: bool) -> list[dict[str, float] | None]:
        """Test metrics of every live run (``None`` for a dead one): its test embeddings
        (:meth:`_StackedParameters.test_embeddings`), then
        :func:`dml_study.evaluation.evaluate` per run, with NMI
        when ``last`` and the run's ``eval.nmi``."""
        embeddings = self.stacked.test_embeddings(self.test)
        out: list[dict[str, float] | None] = []
        for r, run in enumerate(self.runs):
            if not bool(self.alive[r]):
                out.append(None)
                continue
            c = run.config
            result = evaluate(embeddings[r].numpy(), self.features.test_labels,
                              ks=c.eval.ks or (1, 2, 4, 8), nmi=last and c.eval.nmi,
                              seed=c.run.seed)
            out.append({k: float(v) for k, v in result.to_dict().items() if v is not None})
        return out

    def orth(self, r: int) -> dict[str, float]:
        """Run r's proxy orthogonality statistics, as the sequential history logs them."""
        stats = orthogonality_stats(self.stacked.proxies[r].detach())
        return {f"orth_{k}": float(v) for k, v in stats.items()}

    def run(self, *, stream: TextIO | None = None) -> None:
        """Train every run for its epochs, filling each run's history (and ``failure``)."""
        runs, steps = self.runs, self.steps
        for r, metrics in enumerate(self.evaluate(last=False)):
            runs[r].untrained = metrics
            runs[r].history.append({"epoch": 0, "step": 0, **self.orth(r), **metrics})
        epochs = runs[0].config.schedule.epochs
        step = 0
        for epoch in range(epochs):
            epoch_start = time.perf_counter()
            rows, labels = self.epoch_batches(epoch)
            sums = torch.zeros(self.num_runs, 3, dtype=torch.float64)  # loss, main, so
            norm_sums = torch.zeros(self.num_runs, dtype=torch.float64)
            for s in range(steps):
                was_alive = self.alive.clone()
                terms, norms = self.train_step(rows[s], labels[s])
                step += 1
                for r in torch.nonzero(was_alive & ~self.alive).flatten().tolist():
                    runs[r].failure = (f"non-finite loss at epoch {epoch + 1}, step {step} of "
                                       f"run {runs[r].run_dir.path.name}: lower optim.lr or "
                                       "the loss scale")
                    _say(stream, f"{runs[r].run_dir.path.name}: failed ({runs[r].failure})")
                if not bool(self.alive.any()):
                    return
                sums += terms
                if norms is not None:
                    norm_sums += norms.to(torch.float64)
            results = self.evaluate(last=epoch + 1 == epochs)
            seconds = (time.perf_counter() - epoch_start) / self.num_runs
            for r, run in enumerate(runs):
                if run.failure is not None:
                    continue
                record: dict[str, Any] = {"epoch": epoch + 1, "step": step}
                if self.max_norms[r] is not None:
                    record["grad_norm"] = float(norm_sums[r]) / steps
                loss, main, so = sums[r].tolist()
                record.update({"loss": loss / steps, run.loss.name: main / steps,
                               "so": so / steps})
                record.update(self.stacked.lrs(r))
                record.update(self.orth(r))
                record.update(results[r])
                record["time_s"] = seconds  # this run's share of the batch's epoch
                run.history.append(record)


def train_frozen_batch(
    configs: Sequence[ExperimentConfig],
    features: FrozenFeatures,
    run_dirs: Sequence[RunDirectory],
    *,
    tier_info: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
    provenance: dict[str, Any] | None = None,
    stream: TextIO | None = None,
    mode: str = "exact",
) -> list[dict[str, Any]]:
    """Train the runs ``configs`` (one batch: equal :func:`batch_key`) on ``features`` at once.

    Writes every run directory as :func:`~dml_study.study.tiers.frozen.train_frozen` does and
    returns the metrics of each run, in order. ``tier_info`` (one dict for all runs, or one
    per run) is merged into each ``metrics.json``; ``train_time_s`` and the history's
    ``time_s`` are each run's equal share of the batch's time. Raises
    :class:`~dml_study.training.errors.RunExistsError` (before training) when a run directory
    holds a finished run (unless ``run.overwrite``), and :class:`BatchedRunsFailed` after
    writing the other runs when some runs had a non-finite loss. ``mode``: see
    :class:`BatchedFrozenTrainer`.
    """
    if len(configs) != len(run_dirs) or not configs:
        raise ValueError(f"need one run directory per config, got {len(configs)} configs "
                         f"and {len(run_dirs)} directories")
    infos = ([tier_info] * len(configs) if tier_info is None or isinstance(tier_info, dict)
             else list(tier_info))
    for config in configs:
        if features.split != config.data.split:
            raise FrozenTierError(
                f"a run has data.split={config.data.split!r} but the batch's features "
                f"{features.key} are for split {features.split!r}"
            )
    started = time.perf_counter()
    determinism.apply()  # one thread, pinned kernels: as the sequential trainer
    for config, run_dir in zip(configs, run_dirs, strict=True):
        run_dir.prepare(config.run.overwrite)
    trainer = BatchedFrozenTrainer(configs, features, run_dirs, mode=mode)
    trainer.run(stream=stream)
    share = (time.perf_counter() - started) / trainer.num_runs
    finished: dict[str, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for r, run in enumerate(trainer.runs):
        if run.failure is not None:
            continue
        trainer.stacked.write_back(r)
        metrics = write_frozen_run(
            run.config, features, run.run_dir, run.head, run.loss, run.dim, run.history,
            run.untrained, run.proxies_init, time.perf_counter() - share,
            tier_info=infos[r], provenance=provenance)
        finished[run.run_dir.path.name] = metrics
        out.append(metrics)
    failures = {run.run_dir.path.name: run.failure for run in trainer.runs
                if run.failure is not None}
    if failures:
        raise BatchedRunsFailed(failures, finished)
    return out


# --------------------------------------------------------------------------- grid


def train_frozen_runs_batched(
    items: Iterable[tuple[str, ExperimentConfig, FeatureSettings]],
    results_dir: str | Path,
    *,
    stream: TextIO | None = None,
    max_runs: int = DEFAULT_MAX_RUNS,
    mode: str = "exact",
    workers: int = 1,
) -> list[tuple[str, float]]:
    """:func:`dml_study.study.tiers.frozen.train_frozen_runs`, batched: the unfinished runs are
    grouped by :func:`batch_key` (at most ``max_runs`` a batch) and each batch is trained by
    :func:`train_frozen_batch`; runs without a batched loss are trained sequentially.

    Features are extracted (or found in the cache) once per dataset/backbone/settings, here.
    With ``workers`` > 1 and more than one batch, the batches are trained by that many
    worker processes (spawned; each one thread under the numerical profile, as here), so a
    run's bits do not depend on ``workers``: a run's arithmetic never mixes with another
    run's, whichever batch or process it is in (``tests/study/test_study_frozen_batched.py``
    holds that). Returns ``(run_name, seconds)`` of the runs trained now (a batch's time
    shared equally among its runs), in the order of the batches. The first failed batch
    raises (:class:`BatchedRunsFailed`) after its other runs were written; with workers,
    batches not started yet are cancelled, those under way finish.
    """
    from dml_study.env import environment_report

    todo = [(name, config, settings) for name, config, settings in items
            if not RunDirectory.for_run(results_dir, name).metrics.is_file()]
    by_features: dict[str, list[tuple[str, ExperimentConfig, FeatureSettings]]] = {}
    for item in todo:
        by_features.setdefault(features_key(item[1], item[2]), []).append(item)
    provenance: dict[str, Any] | None = None
    jobs: list[_BatchJob] = []
    done: list[tuple[str, float]] = []
    in_process = workers <= 1 or len(todo) <= 1
    try:
        for key, members in by_features.items():
            began = time.perf_counter()
            features = extract_features(members[0][1], members[0][2])
            _say(stream, f"frozen features {key}: {time.perf_counter() - began:.0f} s")
            if provenance is None:
                provenance = environment_report()
            keys = [batch_key(config, features) for _, config, _ in members]
            batches = [_BatchJob([members[i] for i in batch], keys[batch[0]] is None)
                       for batch in group_runs(keys, max_runs)]
            _WORKER_FEATURES.clear()  # one dataset's features in memory at a time
            _WORKER_FEATURES[key] = features
            if not in_process:
                jobs += batches
                continue
            for job in batches:
                names, seconds = _train_job(job, results_dir, provenance, mode, stream)
                done += [(name, seconds) for name in names]
                _say_batch(stream, names, seconds)
            del features
        if len(jobs) == 1:  # one batch: no process to spawn, its features are still here
            names, seconds = _train_job(jobs[0], results_dir, provenance or {}, mode, stream)
            _say_batch(stream, names, seconds)
            return [(name, seconds) for name in names]
    finally:
        _WORKER_FEATURES.clear()
    if jobs:
        assert provenance is not None
        done = _train_jobs_in_workers(jobs, results_dir, provenance, mode, workers, stream)
    return done


@dataclass
class _BatchJob:
    """One batch of :func:`train_frozen_runs_batched`: its runs, and whether it is a single
    run without a batched loss (trained by the sequential trainer)."""

    runs: list[tuple[str, ExperimentConfig, FeatureSettings]]
    single: bool


#: The features a worker process of :func:`_train_jobs_in_workers` holds: the last dataset's
#: (the batches are handed out dataset by dataset, so a worker mostly reloads nothing).
_WORKER_FEATURES: dict[str, FrozenFeatures] = {}


def _train_job(job: _BatchJob, results_dir: str | Path, provenance: dict[str, Any], mode: str,
               stream: TextIO | None = None) -> tuple[list[str], float]:
    """Train one batch (features from the cache); returns its run names and the seconds a run."""
    _, config0, settings0 = job.runs[0]
    key = features_key(config0, settings0)
    if key not in _WORKER_FEATURES:
        _WORKER_FEATURES.clear()
        _WORKER_FEATURES[key] = extract_features(config0, settings0)
    features = _WORKER_FEATURES[key]
    began = time.perf_counter()
    dirs = [RunDirectory.for_run(results_dir, name) for name, _, _ in job.runs]
    infos = [{"features": settings.identity()} for _, _, settings in job.runs]
    if job.single:
        train_frozen(config0, features, dirs[0], provenance=provenance, tier_info=infos[0])
    else:
        train_frozen_batch([c for _, c, _ in job.runs], features, dirs, tier_info=infos,
                           provenance=provenance, stream=stream, mode=mode)
    return [name for name, _, _ in job.runs], (time.perf_counter() - began) / len(job.runs)


def _end_with_parent(parent: int, interval: float = 1.0) -> None:
    """Worker initializer: end this process when its parent, the study, is gone.

    A process pool's worker holds both ends of its call queue, so a parent killed with
    SIGKILL never gives it end-of-file: it would wait for the next batch forever. A daemon
    thread polls the parent's pid and exits hard; the batch under way is lost, which loses
    nothing (a run's ``metrics.json``, its finished marker, is written last, atomically).
    """
    import os
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def _say_batch(stream: TextIO | None, names: list[str], seconds: float) -> None:
    _say(stream, f"{len(names)} frozen-tier run(s) trained in one batch in "
                 f"{seconds * len(names):.1f} s ({seconds:.1f} s a run): " + ", ".join(names))


def _train_jobs_in_workers(jobs: list[_BatchJob], results_dir: str | Path,
                           provenance: dict[str, Any], mode: str, workers: int,
                           stream: TextIO | None) -> list[tuple[str, float]]:
    """:func:`_train_job` for every job in ``workers`` spawned processes (see
    :func:`train_frozen_runs_batched`). Spawned, not forked: a fork of a process whose torch
    and OpenMP thread pools already started can deadlock."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    workers = min(workers, len(jobs))
    _say(stream, f"frozen tier: {len(jobs)} batches in {workers} worker processes")
    context = multiprocessing.get_context("spawn")
    results: dict[int, tuple[list[str], float]] = {}
    import os

    with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                             initializer=_end_with_parent, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(_train_job, job, results_dir, provenance, mode): i
                   for i, job in enumerate(jobs)}
        pending = set(futures)
        failure: BaseException | None = None
        while pending:
            # each batch is announced as it ends (FIRST_EXCEPTION would wait for all)
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                if future.exception() is not None:
                    failure = failure or future.exception()
                    continue
                results[futures[future]] = future.result()
                _say_batch(stream, *results[futures[future]])
            if failure is not None:
                for future in pending:
                    future.cancel()
                wait(pending)  # batches under way finish and are written
                for future in pending:
                    if not future.cancelled() and future.exception() is None:
                        results[futures[future]] = future.result()
                break
    if failure is not None:
        raise failure
    done: list[tuple[str, float]] = []
    for i in sorted(results):
        names, seconds = results[i]
        done += [(name, seconds) for name in names]
    return done


def run_frozen_tier(
    config: StudyConfig, specs: Iterable[RunSpec], *, stream: TextIO | None = None
) -> list[RunOutcome]:
    """Train the frozen-tier runs of ``specs`` in this process (no notebook per run).

    Finished runs are reused; features are extracted once per dataset and backbone. The
    study file's ``frozen.batch_mode`` says how: ``exact`` / ``fast`` batches of at most
    ``frozen.batch_runs`` runs (:func:`train_frozen_runs_batched`, in ``frozen.workers``
    processes, default ``execution.max_parallel``) or ``sequential``
    (:func:`~dml_study.study.tiers.frozen.train_frozen_runs`, the reference).
    """
    specs = unique_runs(specs)
    if not specs:
        return []
    todo = [s for s in specs if not is_finished(config.results_dir, s.run_name)]
    if stream is not None:
        print(f"frozen tier: {len(specs)} runs, {len(specs) - len(todo)} already finished, "
              f"{len(todo)} to train", file=stream, flush=True)
    items = [(s.run_name, frozen_run_config(config, s),
              frozen_feature_settings(config, s.dataset)) for s in todo]
    mode = config.frozen.batch_mode
    if mode == "sequential":
        trained = dict(train_frozen_runs(items, config.results_dir, stream=stream))
    else:
        workers = config.frozen.workers or config.execution.max_parallel
        trained = dict(train_frozen_runs_batched(items, config.results_dir, stream=stream,
                                                 max_runs=config.frozen.batch_runs, mode=mode,
                                                 workers=workers))
    return [RunOutcome(s.run_name, "trained" if s.run_name in trained else "reused",
                       trained.get(s.run_name, 0.0), None) for s in specs]
