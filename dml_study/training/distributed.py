"""Distributed data parallel (DDP) helpers: process-group set-up and gathers.

The trainer runs unchanged as a single process or under ``torchrun --nproc_per_node=N``
(env ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``); the backend is NCCL on CUDA and gloo on CPU.

Why the loss sees the *global* batch: a proxy loss such as Proxy Anchor is not a mean of
per-sample terms (each proxy's log-sum-exp pools over all samples of the batch), so averaging
per-rank losses would not equal the loss of the global batch. Instead every rank all-gathers
the embeddings (differentiably) and labels and computes the identical global loss ``L``.

Gradient bookkeeping, for N ranks with local embeddings ``z_r``:

* ``torch.distributed.nn.functional.all_gather`` is differentiable; its backward sums, over
  ranks, the gradient each rank computed for the slice ``z_r``. All ranks computed the same
  ``L``, so rank r receives ``N · ∂L/∂z_r``, and its backbone gradient is ``N · (∂L/∂z_r)
  (∂z_r/∂θ)``.
* DDP averages gradients over ranks: ``(1/N) Σ_r N (∂L/∂z_r)(∂z_r/∂θ) = Σ_r (∂L/∂z_r)
  (∂z_r/∂θ) = ∂L/∂θ`` — exactly the single-process gradient on the global batch.
* The proxies (inside the DDP-wrapped module) get ``∂L/∂P`` directly on every rank (identical,
  since all ranks see the same global batch); DDP's average of N equal values is ``∂L/∂P``,
  and the SO penalty, a function of ``P`` only, is likewise counted once.

So single-process training with batch ``N·B`` and DDP with ``B`` per rank follow the same
trajectory up to floating-point summation order (and BatchNorm statistics, which DDP computes
per rank).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` → ``cuda:<local_rank>`` when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"run.device={name!r} but CUDA is not available; use 'cpu' or 'auto'")
    return device


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group described by torchrun's env variables (no-op without them)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size == 1:
        return DistContext(device=dev)
    initialized_here = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        initialized_here = True
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=dev,
        initialized_here=initialized_here,
    )


def shutdown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def gather_for_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, ctx: DistContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global batch on every rank: differentiable gather of embeddings, plain gather of labels.

    Requires equal per-rank batch sizes (the batch samplers use ``drop_last``).
    """
    if not ctx.distributed:
        return embeddings, labels
    from torch.distributed.nn.functional import all_gather as differentiable_all_gather

    all_embeddings = torch.cat(differentiable_all_gather(embeddings), dim=0)
    label_list = [torch.empty_like(labels) for _ in range(ctx.world_size)]
    dist.all_gather(label_list, labels)
    return all_embeddings, torch.cat(label_list, dim=0)


def gather_to_main(array: np.ndarray, ctx: DistContext) -> list[np.ndarray] | None:
    """Per-rank arrays collected on rank 0 (``None`` on other ranks)."""
    if not ctx.distributed:
        return [array]
    out: list[np.ndarray] | None = [None] * ctx.world_size if ctx.is_main else None  # type: ignore[list-item]
    dist.gather_object(array, out, dst=0)
    return out


def all_gather_objects(obj: object, ctx: DistContext) -> list[object]:
    """Every rank's ``obj`` on every rank."""
    if not ctx.distributed:
        return [obj]
    out: list[object] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, ctx: DistContext) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(value: float, ctx: DistContext) -> float:
    """Sum of a Python float over ranks."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if ctx.device.type == "cuda":
        t = t.to(ctx.device)
    dist.all_reduce(t)
    return float(t.item())
