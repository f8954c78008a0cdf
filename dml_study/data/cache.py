"""In-memory cache of decoded, resized images (uint8 arrays).

On CPU, JPEG decoding of full-resolution benchmark images dominates an epoch. Decoding
every image once, shrinking its shorter side to ``size`` (256 covers the 224 crop of the
standard transforms) and keeping the uint8 array makes later epochs decode-free. The arrays
are plain numpy buffers held by the dataset, so DataLoader workers started by ``fork``
share them copy-on-write instead of duplicating them.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .images import load_rgb


def resize_shorter(image: Image.Image, size: int | None) -> Image.Image:
    """Shrink so the shorter side is ``size`` (never enlarges; ``None`` keeps the image)."""
    if size is None:
        return image
    w, h = image.size
    short = min(w, h)
    if short <= size:
        return image
    scale = size / short
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(new, Image.Resampling.BILINEAR, reducing_gap=2.0)


class DecodedImageCache:
    """Resized RGB images of a dataset as uint8 ``(H, W, 3)`` arrays, indexed like the dataset."""

    def __init__(self, arrays: Sequence[np.ndarray], size: int | None) -> None:
        self.arrays = list(arrays)
        self.size = size

    @classmethod
    def build(
        cls,
        paths: Sequence[Path],
        size: int | None = 256,
        num_threads: int = 2,
        progress: bool = True,
        desc: str = "decode",
    ) -> DecodedImageCache:
        """Decode and resize every image of ``paths`` (threads: PIL releases the GIL)."""
        if size is not None and size < 1:
            raise ValueError(f"cache size must be positive or None, got {size}")

        def decode(path: Path) -> np.ndarray:
            return np.asarray(resize_shorter(load_rgb(path), size), dtype=np.uint8)

        with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
            arrays = list(
                tqdm(pool.map(decode, paths), total=len(paths), desc=desc, disable=not progress)
            )
        return cls(arrays, size)

    def __len__(self) -> int:
        return len(self.arrays)

    @property
    def nbytes(self) -> int:
        """Memory held by the decoded pixels."""
        return sum(a.nbytes for a in self.arrays)

    def get(self, i: int) -> Image.Image:
        """The cached image ``i`` as an RGB PIL image (a cheap wrapper, no decoding)."""
        return Image.fromarray(self.arrays[i], mode="RGB")
