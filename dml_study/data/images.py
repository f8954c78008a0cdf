"""Robust image decoding: every image comes out as an RGB ``PIL.Image``.

Grayscale, palette, CMYK, 16-bit and images with transparency are converted (transparent
pixels are composited on white, which is what a viewer shows for icons and product shots).
A file that cannot be decoded raises :class:`CorruptImageError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dml_study.errors import EXIT_DATA, UserFacingError


class CorruptImageError(OSError, UserFacingError):
    """An image file that cannot be decoded (truncated, not an image, unreadable).

    A :class:`~dml_study.errors.UserFacingError`: a command line prints its message as one
    line and exits with code 3 (data).
    """

    exit_code = EXIT_DATA


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited on a white background."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        # Palette images may carry transparency in info; RGBA keeps it for compositing.
        image = image.convert("RGBA")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        top = max(float(arr.max()), 1.0)
        return Image.fromarray((arr / top * 255.0).round().astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, F


def load_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully into an RGB image, or raise :class:`CorruptImageError`."""
    try:
        with Image.open(path) as image:
            image.load()  # force full decoding: truncated JPEGs fail here, not later
            return to_rgb(image)
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CorruptImageError(
            f"cannot decode image {path}: {err}. Re-download/replace the file, or drop "
            f"unreadable images with a warning: on_corrupt='skip' (get_dataset; training "
            f"config data.on_corrupt, CLI --on_corrupt skip, notebook overrides)"
        ) from err
