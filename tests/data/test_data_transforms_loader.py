"""Transforms, the decoded-image cache and DataLoaders with 0 and 2 workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from timm.data import resolve_data_config
from torchvision import transforms as T

from dml_study.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MPerClassBatchSampler,
    build_dataloader,
    build_transforms,
    get_dataset,
    transforms_for_model,
)
from dml_study.data.cache import resize_shorter
from dml_study.data.images import load_rgb


def test_train_and_eval_pipelines_follow_the_protocol() -> None:
    train = build_transforms(True, image_size=224)
    kinds = [type(t) for t in train.transforms]
    assert kinds[:2] == [T.RandomResizedCrop, T.RandomHorizontalFlip]
    assert train.transforms[0].size == (224, 224)
    evaluation = build_transforms(False, image_size=224)
    assert isinstance(evaluation.transforms[0], T.Resize) and evaluation.transforms[0].size == 256
    assert evaluation.transforms[1].size == (224, 224)
    norm = evaluation.transforms[-1]
    assert tuple(norm.mean) == IMAGENET_MEAN and tuple(norm.std) == IMAGENET_STD


def test_eval_output_matches_manual_computation(fixture_root: Path) -> None:
    ds = get_dataset("cub200", "train", fixture_root)
    image = ds.load_image(0)
    out = build_transforms(False, image_size=28, mean=(0.5,) * 3, std=(0.5,) * 3,
                           resize_ratio=32 / 28)(image)
    # resize 32 -> 32 is identity, centre crop 28 of 32 drops 2 px per side
    expected = (np.asarray(image, np.float32)[2:30, 2:30] / 255.0 - 0.5) / 0.5
    assert torch.allclose(out, torch.from_numpy(expected).permute(2, 0, 1), atol=1e-6)
    assert out.shape == (3, 28, 28)


def test_train_transform_is_random_but_seedable(fixture_root: Path) -> None:
    image = get_dataset("cub200", "train", fixture_root).load_image(0)
    tf = build_transforms(True, image_size=16)
    torch.manual_seed(0)
    a = tf(image)
    torch.manual_seed(0)
    assert torch.equal(a, tf(image))
    assert a.shape == (3, 16, 16)


def test_transforms_for_model_uses_backbone_config() -> None:
    config = {"input_size": (3, 160, 160), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
              "crop_pct": 0.875, "interpolation": "bicubic"}
    tf = transforms_for_model(config, train=False)
    assert tf.transforms[0].size == round(160 / 0.875)
    assert tf.transforms[1].size == (160, 160)
    assert tuple(tf.transforms[-1].mean) == (0.5, 0.5, 0.5)
    assert tf.transforms[0].interpolation == T.InterpolationMode.BICUBIC
    assert transforms_for_model(config, train=True, image_size=96).transforms[0].size == (96, 96)


def test_transforms_for_model_with_a_real_timm_config() -> None:
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    cfg = resolve_data_config({}, model=model)
    tf = transforms_for_model(cfg, train=False)
    assert tuple(tf.transforms[-1].mean) == tuple(cfg["mean"])
    assert tf.transforms[1].size == tuple(cfg["input_size"][1:])


def test_transform_errors() -> None:
    with pytest.raises(ValueError, match="resize_ratio must be >= 1"):
        build_transforms(False, resize_ratio=0.5)
    with pytest.raises(ValueError, match="valid choices"):
        build_transforms(False, interpolation="cubic-ish")
    with pytest.raises(KeyError, match="mean"):
        transforms_for_model({"std": (1, 1, 1)}, train=False)


def test_decoded_cache_matches_direct_decoding(fixture_root: Path) -> None:
    plain = get_dataset("sop", "train", fixture_root)
    cached = get_dataset("sop", "train", fixture_root, cache_decoded=True, cache_size=None,
                         progress=False)
    assert cached.cache is not None and len(cached.cache) == len(plain)
    for i in range(len(plain)):
        assert np.array_equal(np.asarray(cached.load_image(i)), np.asarray(plain.load_image(i)))
    small = get_dataset("sop", "train", fixture_root, cache_decoded=True, cache_size=16,
                        progress=False)
    assert small.load_image(0).size == (16, 16)
    expected = np.asarray(resize_shorter(load_rgb(plain.paths[0]), 16))
    assert np.array_equal(np.asarray(small.load_image(0)), expected)
    assert small.cache.nbytes == len(plain) * 16 * 16 * 3


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_with_sampler_and_workers(fixture_root: Path, workers: int) -> None:
    ds = get_dataset("cars196", "train", fixture_root, transform=build_transforms(False, 16),
                     cache_decoded=workers == 2, progress=False)
    sampler = MPerClassBatchSampler(ds.labels, m_per_class=2, batch_size=8, seed=0)
    loader = build_dataloader(ds, batch_sampler=sampler, num_workers=workers)
    batches = list(loader)
    assert len(batches) == len(sampler)
    expected = list(sampler)
    for (x, y), idx in zip(batches, expected, strict=True):
        assert x.shape == (8, 3, 16, 16) and y.dtype == torch.int64
        assert y.tolist() == ds.labels[idx].tolist()
    if workers:
        assert loader.persistent_workers


def test_dataloader_plain_batches_same_with_0_and_2_workers(fixture_root: Path) -> None:
    ds = get_dataset("sop", "test", fixture_root, transform=build_transforms(False, 16))
    outs = []
    for workers in (0, 2):
        loader = build_dataloader(ds, batch_size=5, num_workers=workers)
        outs.append(torch.cat([x for x, _ in loader]))
    assert outs[0].shape == (24, 3, 16, 16)
    assert torch.equal(outs[0], outs[1])


def test_dataloader_argument_errors(fixture_root: Path) -> None:
    ds = get_dataset("sop", "test", fixture_root)
    with pytest.raises(ValueError, match="batch_sampler or a batch_size"):
        build_dataloader(ds)
    with pytest.raises(ValueError, match="not both"):
        build_dataloader(ds, batch_sampler=[[0]], batch_size=2)


def test_train_crop_scale_is_configurable_and_defaults_to_torchvision():
    from torchvision import transforms as T

    from dml_study.data import build_transforms

    def crop(tf):
        return next(t for t in tf.transforms if isinstance(t, T.RandomResizedCrop))

    assert crop(build_transforms(True, image_size=32)).scale == (0.08, 1.0)
    assert crop(build_transforms(True, image_size=32, crop_scale=(0.5, 1.0))).scale == (0.5, 1.0)


def _reference_pair(data_config: dict, image_size: int, resize_ratio: float,
                    crop_scale: tuple[float, float], augment: bool = True):
    """The trainer's transforms written out by hand (the pipeline before the two merged)."""
    interp = {"bilinear": T.InterpolationMode.BILINEAR,
              "bicubic": T.InterpolationMode.BICUBIC}.get(
        str(data_config["interpolation"]), T.InterpolationMode.BILINEAR)
    norm = [T.ToTensor(), T.Normalize(list(data_config["mean"]), list(data_config["std"]))]
    eval_tf = T.Compose([T.Resize(round(image_size * resize_ratio), interpolation=interp),
                         T.CenterCrop(image_size), *norm])
    train_tf = T.Compose([T.RandomResizedCrop(image_size, scale=crop_scale, interpolation=interp),
                          T.RandomHorizontalFlip(), *norm])
    return (train_tf if augment else eval_tf), eval_tf


@pytest.mark.parametrize(
    ("backbone", "preset", "overrides"),
    [
        ("deit_small_distilled_patch16_224", "cub200", {}),
        ("resnet18", "icons", {"image_size": 40}),
        ("resnet18", "icons", {"image_size": 40, "augment": False}),
    ],
)
def test_trainer_transforms_equal_a_reference_pipeline(
    fixture_root: Path, backbone: str, preset: str, overrides: dict
) -> None:
    """The trainer's (train, eval) transforms give bit-identical tensors to a hand-built
    pipeline for a DeiT data config (bicubic, ImageNet stats) and a CNN one (bilinear)."""
    import timm

    from dml_study.config import load_config
    from dml_study.data.transforms import model_transforms

    model = timm.create_model(backbone, pretrained=False, num_classes=0)
    data_config = resolve_data_config({}, model=model)
    config = load_config(preset, backbone=backbone, **overrides)
    d = config.data
    train_tf, eval_tf = model_transforms(config, data_config)
    ref_train, ref_eval = _reference_pair(data_config, d.image_size, d.resize_ratio,
                                          tuple(d.crop_scale), d.augment)
    image = get_dataset("cub200", "train", fixture_root).load_image(0).resize((300, 260))
    assert torch.equal(eval_tf(image), ref_eval(image))
    for seed in range(3):
        torch.manual_seed(seed)
        ours = train_tf(image)
        torch.manual_seed(seed)
        assert torch.equal(ours, ref_train(image))
