"""``embed``: run a model over a data loader and collect float32 embeddings and labels."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from tqdm.auto import tqdm


def _split_batch(batch: object) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) from a batch given as a tuple/list or a dict with those keys."""
    if isinstance(batch, dict):
        try:
            return batch["images"], batch["labels"]
        except KeyError:
            raise ValueError(
                f"dict batches need keys 'images' and 'labels'; got {sorted(batch)}"
            ) from None
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(
        "the loader must yield (images, labels) pairs (extra items are ignored); "
        f"got {type(batch).__name__}"
    )


def embed(
    model: torch.nn.Module,
    loader: Iterable,
    device: str | torch.device = "cpu",
    amp: bool | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed every batch of ``loader`` with ``model``.

    The model runs in eval mode under ``torch.inference_mode`` (no autograd memory); its
    previous train/eval mode is restored afterwards, also on error.

    Args:
        model: maps an image batch (B, ...) to embeddings (B, d).
        loader: yields ``(images, labels)`` (or ``(images, labels, ...)``, or dicts with
            ``"images"`` and ``"labels"``), e.g. a ``torch.utils.data.DataLoader``.
        device: where the model runs; images are moved there.
        amp: bfloat16 autocast. ``None`` = on for CUDA devices. Ignored off CUDA, where
            bf16 autocast is slow on most CPUs and would change the numbers.
        progress: show a tqdm progress bar.

    Returns:
        ``(embeddings, labels)``: (N, d) float32 (not normalised) and (N,) int64 arrays, in
        loader order.
    """
    device = torch.device(device)
    use_amp = device.type == "cuda" and (amp is None or amp)
    was_training = model.training
    chunks: list[np.ndarray] = []
    label_chunks: list[np.ndarray] = []
    model.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc="embed", disable=not progress, leave=False):
                images, labels = _split_batch(batch)
                images = images.to(device, non_blocking=True)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                    out = model(images)
                if out.ndim != 2 or out.shape[0] != images.shape[0]:
                    raise ValueError(
                        f"the model must return (batch, dim) embeddings; got shape "
                        f"{tuple(out.shape)} for a batch of {images.shape[0]}"
                    )
                chunks.append(out.float().cpu().numpy())
                label_chunks.append(torch.as_tensor(labels).reshape(-1).cpu().numpy())
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError("the loader yielded no batches")
    embeddings = np.concatenate(chunks).astype(np.float32, copy=False)
    labels_out = np.concatenate(label_chunks).astype(np.int64, copy=False)
    if len(labels_out) != len(embeddings):
        raise ValueError(
            f"the loader yielded {len(labels_out)} labels for {len(embeddings)} images"
        )
    return embeddings, labels_out
