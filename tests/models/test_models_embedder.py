"""Embedder: shapes (DeiT tiny config, CNN), distilled-token pooling, freezing options,
local checkpoints and the offline error message."""

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from dml_study.models import Embedder, PretrainedWeightsUnavailable, create_embedder

DEIT = "deit_tiny_distilled_patch16_224"
SMALL_VIT = {"img_size": 32, "patch_size": 8, "pretrained": False}


def _x(n=2, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def deit():
    torch.manual_seed(0)  # timm initialises weights with the global RNG
    return create_embedder(DEIT, embedding_dim=64, **SMALL_VIT)


def test_deit_shapes_in_both_modes(deit):
    assert isinstance(deit, Embedder)
    assert deit.feature_dim == 192 and deit.embedding_dim == 64
    assert isinstance(deit.head, nn.Linear)
    assert deit.train()(_x()).shape == (2, 64)
    assert deit.eval()(_x()).shape == (2, 64)
    assert deit.data_config["input_size"] == (3, 32, 32)
    assert {"mean", "std", "interpolation", "crop_pct"} <= set(deit.data_config)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_distilled_features_average_cls_and_dist_tokens(deit, mode):
    getattr(deit, mode)()
    x = _x()
    with torch.no_grad():
        tokens = deit.backbone.forward_features(x)
        expected = (tokens[:, 0] + tokens[:, 1]) / 2
        torch.testing.assert_close(deit.features(x), expected)
        torch.testing.assert_close(deit(x), deit.head(expected))


def test_distilled_training_switch_is_off_even_if_set_before(deit):
    deit.backbone.set_distilled_training(True)  # a tuple would come out of timm's head in train
    try:
        out = create_embedder(DEIT, **SMALL_VIT).train()(_x())
        assert isinstance(out, torch.Tensor) and out.shape == (2, 192)
    finally:
        deit.backbone.set_distilled_training(False)


def test_identity_head_and_l2_normalisation():
    model = create_embedder(DEIT, embedding_dim=192, l2_normalize=True, **SMALL_VIT)
    assert isinstance(model.head, nn.Identity) and list(model.head_parameters()) == []
    out = model.eval()(_x(3))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_cnn_shapes_and_frozen_batchnorm():
    model = create_embedder("resnet18", embedding_dim=32, pretrained=False, freeze_bn=True)
    assert model.feature_dim == 512 and model.train()(_x(2, 64)).shape == (2, 32)
    bn = model.backbone.bn1
    assert not bn.training  # kept in eval by train()
    before = bn.running_mean.clone()
    model.train()(_x(4, 64, seed=1))
    assert torch.equal(bn.running_mean, before)
    assert not bn.weight.requires_grad
    assert all(p is not bn.weight for p in model.backbone_parameters())


def test_bn_statistics_update_without_freeze():
    model = create_embedder("resnet18", pretrained=False).train()
    before = model.backbone.bn1.running_mean.clone()
    model(_x(4, 64))
    assert not torch.equal(model.backbone.bn1.running_mean, before)


def test_freeze_patch_embed():
    model = create_embedder(DEIT, freeze_patch_embed=True, **SMALL_VIT)
    patch = set(map(id, model.backbone.patch_embed.parameters()))
    assert all(not p.requires_grad for p in model.backbone.patch_embed.parameters())
    assert not patch & set(map(id, model.backbone_parameters()))
    model.set_backbone_trainable(True)  # must not unfreeze a permanent freeze
    assert all(not p.requires_grad for p in model.backbone.patch_embed.parameters())
    with pytest.raises(ValueError, match="has no patch_embed"):
        create_embedder("resnet18", pretrained=False, freeze_patch_embed=True)


def test_set_backbone_trainable_for_warmup():
    model = create_embedder(DEIT, embedding_dim=16, **SMALL_VIT)
    n_backbone = len(list(model.backbone_parameters()))
    model.set_backbone_trainable(False)
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head_parameters())
    assert len(list(model.backbone_parameters())) == n_backbone  # optimizer keeps them
    model(_x()).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.head.weight.grad is not None
    model.set_backbone_trainable(True)
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_freeze_backbone_stays_frozen():
    model = create_embedder(DEIT, embedding_dim=16, freeze_backbone=True, **SMALL_VIT)
    model.set_backbone_trainable(True)
    assert list(model.backbone_parameters()) == []
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert len(list(model.head_parameters())) == 2


def test_former_freeze_keyword_is_refused_with_the_new_name():
    with pytest.raises(TypeError, match="'frozen_backbone' was renamed; did you mean "
                                        "'freeze_backbone'"):
        create_embedder(DEIT, frozen_backbone=True, **SMALL_VIT)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_path_loads_local_checkpoint(tmp_path, suffix):
    torch.manual_seed(1)
    source = timm.create_model(DEIT, img_size=32, patch_size=8)  # with ImageNet-style heads
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = create_embedder(DEIT, img_size=32, patch_size=8, pretrained_path=str(path))
    loaded = model.backbone.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith(("head.", "head_dist."))}
    for key, value in loaded.items():
        torch.testing.assert_close(value, state[key], msg=key)


def test_pretrained_path_resamples_position_embedding(tmp_path):
    source = timm.create_model(DEIT, img_size=32, patch_size=8)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_embedder(DEIT, img_size=48, patch_size=8, pretrained_path=str(path))
    # 6 × 6 patches + cls + dist tokens; the two prefix entries are copied, the grid resampled.
    assert model.backbone.pos_embed.shape[1] == 38
    torch.testing.assert_close(model.backbone.pos_embed[:, :2], source.pos_embed[:, :2])
    torch.testing.assert_close(model.backbone.cls_token, source.cls_token)
    assert model.eval()(_x(1, 48)).shape == (1, 192)


def test_pretrained_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained_path does not exist"):
        create_embedder(DEIT, pretrained_path=str(tmp_path / "nope.pth"), **SMALL_VIT)
    bad = tmp_path / "w.ckpt"
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match=r"expected one of \['.safetensors'"):
        create_embedder(DEIT, pretrained_path=str(bad), **SMALL_VIT)


def test_offline_hub_failure_names_the_three_options(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    # Force a cache miss without network retries, whatever this machine has cached.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        create_embedder(DEIT, pretrained=True, img_size=32, patch_size=8)
    message = str(info.value)
    assert "timm hub" in message and "pretrained_path" in message
    assert "efficientnet_lite0" in message and "pretrained=False" in message


def test_unknown_backbone_and_classifier_errors():
    with pytest.raises(ValueError, match="unknown backbone 'deit_huge_imaginary'"):
        create_embedder("deit_huge_imaginary", pretrained=False)
    with pytest.raises(ValueError, match="num_classes must be 0"):
        create_embedder(DEIT, num_classes=10, **SMALL_VIT)


def test_pretrained_tag_names_are_accepted():
    model = create_embedder(f"{DEIT}.fb_in1k", **SMALL_VIT)
    assert model.feature_dim == 192


def test_freeze_backbone_keeps_cnn_statistics():
    model = create_embedder("resnet18", embedding_dim=8, pretrained=False, freeze_backbone=True)
    before = model.backbone.bn1.running_mean.clone()
    model.train()(_x(4, 64))
    assert torch.equal(model.backbone.bn1.running_mean, before)
    assert model.head.training and not model.backbone.training


def test_img_size_on_cnn_is_a_clear_error():
    with pytest.raises(ValueError, match="does not accept img_size/patch_size"):
        create_embedder("resnet18", pretrained=False, img_size=64)


def test_feature_dim_matches_pre_logits_output_for_mobilenetv3():
    model = create_embedder("mobilenetv3_small_050", embedding_dim=16, pretrained=False)
    assert model.feature_dim == 1024  # conv head width, not num_features (288)
    assert model.eval()(_x(2, 64)).shape == (2, 16)


# ------------------------------------------------ a ViT follows data.image_size (issue #15)


def test_vit_follows_input_size_without_set_img_size():
    model = create_embedder("deit_tiny_patch16_224", pretrained=False, input_size=32,
                            embedding_dim=8)
    assert tuple(model.backbone.patch_embed.img_size) == (32, 32)
    assert model.data_config["input_size"] == (3, 32, 32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 8)


def test_input_size_keeps_the_weights_and_resamples_the_position_embedding():
    native = create_embedder(DEIT, pretrained=False, patch_size=8, img_size=32)
    torch.manual_seed(0)
    resized = create_embedder(DEIT, pretrained=False, patch_size=8, img_size=32)
    resized.load_state_dict(native.state_dict())
    resized.backbone.set_input_size(img_size=(48, 48))
    assert resized.backbone.pos_embed.shape[1] == 2 + 6 * 6  # cls + dist + 6×6 patches
    torch.testing.assert_close(resized.backbone.blocks[0].attn.qkv.weight,
                               native.backbone.blocks[0].attn.qkv.weight)


def test_input_size_is_a_no_op_for_cnns_and_native_vits():
    cnn = create_embedder("resnet18", pretrained=False, input_size=40)
    assert cnn(torch.randn(1, 3, 40, 40)).shape == (1, 512)
    vit = create_embedder(DEIT, pretrained=False, patch_size=8, img_size=32, input_size=32)
    assert tuple(vit.backbone.patch_embed.img_size) == (32, 32)


def test_input_size_smaller_than_a_patch_is_refused_clearly():
    with pytest.raises(ValueError, match="smaller than the 16-px patches"):
        create_embedder("deit_tiny_patch16_224", pretrained=False, input_size=8)
