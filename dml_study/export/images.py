"""Embedding images with an export: ``python -m dml_study.embed`` and its embeddings file.

**Preprocessing** is the run's own evaluation pipeline, read from the export: decode to RGB
(transparency composited on white, :func:`dml_study.data.images.load_rgb`); when the run
used the decoded-image cache, shrink the shorter side to ``pre_resize_shorter`` as that cache
did (:func:`dml_study.data.cache.resize_shorter`; never enlarges); then the trainer's eval
transform, :func:`dml_study.data.transforms.model_transforms` of the export's config and
``data_config`` (Resize, CenterCrop, ToTensor, Normalize). The network runs on CPU in eval
mode, in the memory format the run evaluated in (channels-last for CNNs), in batches of the
run's ``eval_batch_size``: embedding a run's test split in its dataset order reproduces the
run's ``test_embeddings.npz`` bit for bit (``tests/export``).

**The embeddings file** is a NumPy ``.npz`` (no pickle: every array is numeric or a
fixed-width unicode string), chosen over parquet because the project already reads and writes
``.npz`` (``test_embeddings.npz``) and needs no new dependency:

==================  ==========================================================================
``embeddings``      (N, d) float32, as the model outputs them (not normalised; search and the
                    metrics normalise)
``paths``           (N,) absolute path of each image
``labels``          (N,) the image's class when known: its parent folder's name
                    (``DIR/<class>/<image>``, the ImageFolder convention), or the dataset's
                    raw class name with ``--dataset``
``model_sha256``    sha256 of the export's ``model.safetensors`` (search refuses to mix models)
``export``          the export directory
``format``          :data:`EMBEDDINGS_FORMAT`
==================  ==========================================================================
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data

from dml_study.errors import EXIT_DAMAGED, EXIT_DATA, EXIT_USAGE, UserFacingError
from dml_study.models import Embedder, create_embedder
from dml_study.models.exported import ExportedModel, read_export

#: Version of the embeddings file layout.
EMBEDDINGS_FORMAT = 1
#: File suffixes taken as images when a directory is walked (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class ImagesError(UserFacingError):
    """No images where the user pointed, or an unreadable embeddings file."""

    exit_code = EXIT_DATA


class EmbeddingsFileError(UserFacingError):
    """An embeddings file that is not one ``python -m dml_study.embed`` wrote."""

    exit_code = EXIT_DAMAGED


class ModelMismatchError(UserFacingError):
    """Embeddings made by two different models would be compared."""

    exit_code = EXIT_USAGE


def load_embedder(path: str | Path, **options: Any) -> Embedder:
    """The exported network, built with the export's own architecture (eval mode, CPU).

    ``options`` are ``create_embedder``'s freezing options (``freeze_bn``, ...).
    Equivalent to ``create_embedder(**architecture, weights=path)``.
    """
    export = read_export(path)
    kwargs = export.architecture.create_embedder_kwargs()
    return create_embedder(**kwargs, **options, weights=export.path).eval()


def list_images(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """``(absolute path, label)`` of every image among ``inputs``, in a stable order.

    An input is an image file or a directory, walked recursively (symlinks followed) with
    its images in the order of their path components (``a/x.png`` before ``a-b/y.png``, as
    the embedded datasets order them); inputs keep their command-line order and an image
    met twice is kept once. The label is the image's parent folder's name.
    """
    seen: set[Path] = set()
    out: list[tuple[Path, str]] = []
    for item in inputs:
        root = Path(item).expanduser()
        if root.is_file():
            found = [root]
        elif root.is_dir():
            found = []
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                dirnames.sort()
                found += [Path(dirpath, f) for f in filenames
                          if Path(f).suffix.lower() in IMAGE_SUFFIXES]
            found.sort(key=lambda p: p.relative_to(root).parts)
        else:
            raise ImagesError(f"{root} does not exist: give image files or directories")
        for path in found:
            resolved = path.resolve()
            if resolved not in seen:
                seen.add(resolved)
                out.append((resolved, path.parent.name))
    if not out:
        raise ImagesError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) under {', '.join(map(str, inputs))}")
    return out


def dataset_images(name: str, split: str, data_root: str | None = None) -> list[tuple[Path, str]]:
    """``(path, raw class name)`` of a registered dataset's split, in the dataset's order
    (the order its run embedded it in)."""
    from dml_study.data import get_dataset

    try:
        ds = get_dataset(name, split, data_root, progress=False)
    except (ValueError, FileNotFoundError) as err:
        raise ImagesError(f"cannot load {name}/{split}: {err}") from err
    return [(Path(p).resolve(), ds.raw_class_names[int(y)])
            for p, y in zip(ds.paths, ds.labels, strict=True)]


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], transform: Callable[[Any], torch.Tensor],
                 pre_resize: int | None):
        self.paths, self.transform, self.pre_resize = list(paths), transform, pre_resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from dml_study.data.cache import resize_shorter
        from dml_study.data.images import load_rgb

        image = load_rgb(self.paths[i])
        if self.pre_resize is not None:
            image = resize_shorter(image, self.pre_resize)
        return self.transform(image), i


def eval_transform(export: ExportedModel) -> Callable[[Any], torch.Tensor]:
    """The run's evaluation transform (``model_transforms`` of its config and data_config)."""
    import yaml

    from dml_study.config import config_from_dict
    from dml_study.data.transforms import model_transforms
    from dml_study.models.exported import CONFIG_FILE

    config = config_from_dict(yaml.safe_load((export.path / CONFIG_FILE).read_text("utf-8")))
    return model_transforms(config, export.data_config)[1]


def embed_paths(
    export: ExportedModel,
    paths: Sequence[Path],
    model: Embedder | None = None,
    batch_size: int | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """(N, d) float32 embeddings of ``paths`` with the export's model and preprocessing."""
    from dml_study.data import build_dataloader
    from dml_study.evaluation import embed

    pre = export.preprocessing
    model = model if model is not None else load_embedder(export.path)
    if pre.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    dataset = _Images(paths, eval_transform(export), pre.get("pre_resize_shorter"))
    loader = build_dataloader(dataset, batch_size=batch_size or int(pre.get("batch_size", 256)),
                              num_workers=num_workers)
    try:
        emb, _ = embed(model, loader, "cpu", progress=progress)
    except OSError as err:  # CorruptImageError names the file
        raise ImagesError(str(err)) from err
    return emb


@dataclass(frozen=True)
class EmbeddingsFile:
    """The contents of an embeddings ``.npz`` (see the module docstring)."""

    embeddings: np.ndarray
    paths: list[str]
    labels: list[str]
    model_sha256: str
    export: str

    def __len__(self) -> int:
        return len(self.paths)

    def check_model(self, sha256: str, what: str) -> None:
        """Raise :class:`ModelMismatchError` unless made by the model with ``sha256``."""
        if self.model_sha256 != sha256:
            raise ModelMismatchError(
                f"{what} was embedded by another model (model sha256 {self.model_sha256[:12]}"
                f"…, export {self.export}) than the export given ({sha256[:12]}…); embed "
                "both with the same export")


def write_embeddings(path: str | Path, result: EmbeddingsFile) -> Path:
    """Write ``result`` atomically as ``.npz`` (the suffix is added when missing)."""
    from dml_study.atomic_io import atomic_write_with

    path = Path(path).expanduser()
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays = {
        "embeddings": np.asarray(result.embeddings, dtype=np.float32),
        "paths": np.asarray(result.paths, dtype=str),
        "labels": np.asarray(result.labels, dtype=str),
        "model_sha256": np.asarray(result.model_sha256),
        "export": np.asarray(result.export),
        "format": np.asarray(EMBEDDINGS_FORMAT),
    }
    atomic_write_with(path, lambda fh: np.savez(fh, **arrays))
    return path


def read_embeddings(path: str | Path) -> EmbeddingsFile:
    """Read a file written by :func:`write_embeddings` (pickle disabled)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ImagesError(f"embeddings file {path} does not exist; write one with "
                          "`python -m dml_study.embed OUT --images DIR --out FILE`")
    keys = ("embeddings", "paths", "labels", "model_sha256", "export", "format")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data]
            if missing:
                raise EmbeddingsFileError(
                    f"{path} is not a dml_study embeddings file (no {', '.join(missing)}); "
                    "write one with `python -m dml_study.embed`")
            if int(data["format"]) != EMBEDDINGS_FORMAT:
                raise EmbeddingsFileError(f"{path} has embeddings format {int(data['format'])}, "
                                          f"expected {EMBEDDINGS_FORMAT}; embed again")
            emb = np.asarray(data["embeddings"], dtype=np.float32)
            paths, labels = [str(p) for p in data["paths"]], [str(x) for x in data["labels"]]
            sha, export = str(data["model_sha256"]), str(data["export"])
    except (OSError, ValueError) as err:
        raise EmbeddingsFileError(f"cannot read {path}: {err}") from err
    if emb.ndim != 2 or len(emb) != len(paths) or len(labels) != len(paths):
        raise EmbeddingsFileError(f"{path}: {emb.shape} embeddings for {len(paths)} paths")
    return EmbeddingsFile(emb, paths, labels, sha, export)


def embed_images(
    export_path: str | Path,
    images: Sequence[tuple[Path, str]],
    batch_size: int | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> EmbeddingsFile:
    """Embed ``(path, label)`` pairs (from :func:`list_images` / :func:`dataset_images`)."""
    export = read_export(export_path)
    paths = [p for p, _ in images]
    emb = embed_paths(export, paths, batch_size=batch_size, num_workers=num_workers,
                      progress=progress)
    return EmbeddingsFile(emb, [str(p) for p in paths], [lab for _, lab in images],
                          export.model_sha256, str(export.path.resolve()))
