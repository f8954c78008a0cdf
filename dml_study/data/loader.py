"""DataLoader construction that works the same with 0 or N worker processes."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.utils.data


def build_dataloader(
    dataset: torch.utils.data.Dataset,
    batch_sampler: Iterable[list[int]] | None = None,
    batch_size: int | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    shuffle: bool = False,
    seed: int = 0,
) -> torch.utils.data.DataLoader:
    """A DataLoader for ``dataset`` either from a batch sampler or from ``batch_size``.

    With workers, they are persistent (no re-spawn each epoch, so a decoded cache and
    imported modules survive) and each gets a deterministic torch seed derived from ``seed``
    through a dedicated generator, so random augmentations are reproducible. ``shuffle``
    is only for the ``batch_size`` path; samplers carry their own seeded order.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if batch_sampler is not None and (batch_size is not None or shuffle):
        raise ValueError("pass either batch_sampler or batch_size/shuffle, not both")
    if batch_sampler is None and batch_size is None:
        raise ValueError("pass a batch_sampler or a batch_size")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    kwargs: dict = {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "generator": generator,
    }
    if num_workers > 0:
        kwargs["persistent_workers"] = True
        kwargs["prefetch_factor"] = 2
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False, **kwargs
    )
