"""Image transforms for deep metric learning, following the literature's protocol.

Train: ``RandomResizedCrop(image_size)`` + horizontal flip; eval: ``Resize(image_size * 256/224)``
+ ``CenterCrop(image_size)``; both followed by ``ToTensor`` and normalisation with either the
ImageNet statistics or the backbone's own ``pretrained_cfg`` (via timm's ``data_config``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

if TYPE_CHECKING:
    from dml_study.config import ExperimentConfig

IMAGENET_MEAN: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)  # type: ignore[assignment]
IMAGENET_STD: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)  # type: ignore[assignment]

_INTERPOLATIONS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def _interpolation(name: str) -> InterpolationMode:
    try:
        return _INTERPOLATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown interpolation {name!r}; valid choices: {sorted(_INTERPOLATIONS)}"
        ) from None


def build_transforms(
    train: bool,
    image_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resize_ratio: float = 256 / 224,
    interpolation: str = "bilinear",
    crop_scale: tuple[float, float] = (0.08, 1.0),
) -> T.Compose:
    """The standard DML transform pipeline (PIL image in, normalised float tensor out).

    Args:
        train: random crop + flip (training) or resize + centre crop (evaluation).
        image_size: side of the square output.
        mean, std: per-channel normalisation.
        resize_ratio: eval resizes the shorter side to ``round(image_size * resize_ratio)``
            before the centre crop (256/224 as in the Proxy Anchor / ProxyNCA++ protocol).
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        crop_scale: area range of the training crop (torchvision's default 8–100 %; tiny
            images such as 64 px icons lose their identity in 8 % crops).
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if resize_ratio < 1.0:
        raise ValueError(f"resize_ratio must be >= 1 (resize, then crop), got {resize_ratio}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 channels, got mean={mean}, std={std}")
    interp = _interpolation(interpolation)
    normalize = [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    if train:
        geometric = [
            T.RandomResizedCrop(image_size, scale=tuple(crop_scale), interpolation=interp),
            T.RandomHorizontalFlip(),
        ]
    else:
        geometric = [
            T.Resize(round(image_size * resize_ratio), interpolation=interp),
            T.CenterCrop(image_size),
        ]
    return T.Compose([*geometric, *normalize])


def transforms_for_model(
    model_data_config: Mapping[str, Any],
    train: bool,
    image_size: int | None = None,
    resize_ratio: float | None = None,
    crop_scale: tuple[float, float] = (0.08, 1.0),
) -> T.Compose:
    """Transforms matching a timm model's ``data_config`` (``resolve_data_config`` output).

    Mean/std and interpolation come from the backbone's pretrained config so that e.g.
    DeiT (ImageNet stats, bicubic) and Inception-style models (0.5 stats) are fed correctly;
    an interpolation :func:`build_transforms` does not know (timm also has e.g. ``"random"``)
    falls back to bilinear. ``image_size`` overrides ``input_size``; ``resize_ratio``
    defaults to ``1 / crop_pct``. ``crop_scale`` is the training crop's area range.
    """
    for key in ("mean", "std"):
        if key not in model_data_config:
            raise KeyError(
                f"model_data_config lacks {key!r}; expected timm's resolve_data_config() "
                f"output with keys mean, std, input_size, crop_pct, interpolation"
            )
    size = image_size
    if size is None:
        input_size = model_data_config.get("input_size", (3, 224, 224))
        size = int(input_size[-1])
    if resize_ratio is None:
        crop_pct = float(model_data_config.get("crop_pct", 224 / 256) or 224 / 256)
        resize_ratio = max(1.0, 1.0 / crop_pct)
    interpolation = str(model_data_config.get("interpolation", "bilinear"))
    if interpolation not in _INTERPOLATIONS:
        interpolation = "bilinear"
    return build_transforms(
        train,
        image_size=size,
        mean=tuple(model_data_config["mean"]),
        std=tuple(model_data_config["std"]),
        resize_ratio=resize_ratio,
        interpolation=interpolation,
        crop_scale=tuple(crop_scale),
    )


def model_transforms(
    config: ExperimentConfig, model_data_config: Mapping[str, Any]
) -> tuple[Callable, Callable]:
    """The trainer's ``(train, eval)`` transforms: :func:`transforms_for_model` at
    ``data.image_size`` / ``data.resize_ratio`` / ``data.crop_scale``; with
    ``data.augment`` off, training uses the eval transform."""
    d = config.data
    common = {"image_size": d.image_size, "resize_ratio": d.resize_ratio}
    eval_tf = transforms_for_model(model_data_config, False, **common)
    if not d.augment:
        return eval_tf, eval_tf
    return transforms_for_model(
        model_data_config, True, crop_scale=tuple(d.crop_scale), **common
    ), eval_tf
