"""Every benchmark loader on a generated fixture of its official layout."""

from __future__ import annotations

from pathlib import Path

import fixture_datasets as fixtures
import numpy as np
import pytest
import scipy.io
import torch

from dml_study.data import (
    DATASETS,
    DEFAULT_DATASET,
    DMLDataset,
    build_transforms,
    dataset_protocol,
    default_recall_ks,
    get_dataset,
)

SPLITS = {
    "cub200": ("train", "test"),
    "cars196": ("train", "test"),
    "sop": ("train", "test"),
    "inshop": ("train", "query", "gallery"),
}


def _check_labels(ds: DMLDataset) -> None:
    assert ds.labels.dtype == np.int64
    assert set(ds.labels.tolist()) == set(range(ds.num_classes))
    assert len(ds.class_names) == ds.num_classes


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_counts_splits_and_labels(fixture_root: Path, name: str) -> None:
    for split in SPLITS[name]:
        ds = get_dataset(name, split, fixture_root)
        assert (ds.name, ds.split) == (name, split)
        _check_labels(ds)
        image, label = ds[0]
        assert image.mode == "RGB" and image.size == (32, 32)
        assert label == int(ds.labels[0])
    if name == "inshop":
        train = get_dataset(name, "train", fixture_root)
        query = get_dataset(name, "query", fixture_root)
        assert len(train) == 24 and len(query) == 12
        items = {p.parent.name for p in train.paths}
        assert not items & {p.parent.name for p in query.paths}  # class-disjoint
    else:
        train, test = (get_dataset(name, s, fixture_root) for s in ("train", "test"))
        assert len(train) == 24 and len(test) == 24  # 4 classes x 6 images each
        assert train.num_classes == test.num_classes == 4
        assert not set(train.raw_class_names) & set(test.raw_class_names)
        assert not {str(p) for p in train.paths} & {str(p) for p in test.paths}


def test_cub_class_names_and_official_ids(fixture_root: Path) -> None:
    train = get_dataset("cub200", "train", fixture_root)
    test = get_dataset("cub200", "test", fixture_root)
    assert train.class_names[0] == "Black footed Albatross"
    assert train.raw_class_names[0] == "001.Black_footed_Albatross"
    assert test.raw_class_names[0].startswith("101.")  # classes 101.. are the test split


def test_cub_without_metadata_scans_folders(tmp_path: Path) -> None:
    fixtures.write_cub_fixture(tmp_path, metadata=False)
    with_meta = fixtures.write_cub_fixture(tmp_path / "m")
    a = get_dataset("cub200", "test", tmp_path)
    b = get_dataset("cub200", "test", with_meta)
    assert [p.name for p in a.paths] == [p.name for p in b.paths]
    assert a.labels.tolist() == b.labels.tolist()
    assert a.class_names == b.class_names


def test_cars_mat_is_official_struct_and_names(fixture_root: Path) -> None:
    mat = scipy.io.loadmat(fixture_root / "cars196" / "cars_annos.mat")
    fields = set(mat["annotations"].dtype.names)
    assert fields == {"relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2",
                      "class", "test"}
    test = get_dataset("cars196", "test", fixture_root)
    # class 99 is the first test class; its name is entry 98 of class_names
    assert test.class_names[0] == str(mat["class_names"][0, 98][0])


def test_cars_without_class_names(tmp_path: Path) -> None:
    fixtures.write_cars_fixture(tmp_path, class_names=False)
    ds = get_dataset("cars196", "train", tmp_path)
    assert ds.class_names == ["car model 1", "car model 2", "car model 3", "car model 4"]


def test_sop_class_names_are_super_classes(fixture_root: Path) -> None:
    ds = get_dataset("sop", "train", fixture_root)
    assert ds.class_names == ["bicycle", "cabinet", "chair", "coffee maker"]


def test_inshop_query_gallery_share_label_space(fixture_root: Path) -> None:
    query = get_dataset("inshop", "query", fixture_root)
    gallery = get_dataset("inshop", "gallery", fixture_root)
    assert query.class_names == gallery.class_names
    by_item_q = {p.parent.name: int(lbl) for p, lbl in zip(query.paths, query.labels, strict=True)}
    by_item_g = {p.parent.name: int(lbl) for p, lbl in
                 zip(gallery.paths, gallery.labels, strict=True)}
    assert by_item_q == by_item_g  # the same item has the same label in both splits
    assert query.class_names[0] == "women skirts"


def test_inshop_flat_img_layout(tmp_path: Path) -> None:
    fixtures.write_inshop_fixture(tmp_path, nested_img=False)
    ds = get_dataset("inshop", "gallery", tmp_path)
    assert len(ds) == 12 and all(p.is_file() for p in ds.paths)


def test_inshop_test_split_points_to_query_gallery(fixture_root: Path) -> None:
    with pytest.raises(ValueError, match=r"query"):
        get_dataset("inshop", "test", fixture_root)


def test_unknown_dataset_and_split() -> None:
    with pytest.raises(ValueError, match=r"valid names.*cub200"):
        get_dataset("imagenet", "train")
    with pytest.raises(ValueError, match=r"valid: \['train', 'test'\]"):
        get_dataset("cub200", "val")


def test_data_root_from_environment(fixture_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DML_DATA_ROOT", str(fixture_root))
    assert len(get_dataset("sop", "test")) == 24


def test_dataset_root_itself_is_accepted(fixture_root: Path) -> None:
    ds = get_dataset("cub200", "train", fixture_root / "CUB_200_2011")
    assert len(ds) == 24


def test_transform_is_applied_and_settable(fixture_root: Path) -> None:
    ds = get_dataset("cars196", "train", fixture_root, transform=build_transforms(False, 24))
    x, _ = ds[3]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 24, 24)
    ds.transform = None
    assert ds[3][0].size == (32, 32)


def test_registry_protocols() -> None:
    assert DEFAULT_DATASET == "icons"
    assert set(DATASETS) == {"cub200", "cars196", "sop", "inshop", "icons", "glyphs"}
    assert dataset_protocol("inshop") == "query_gallery"
    assert dataset_protocol("cub200") == "self"
    assert default_recall_ks("cub200") == (1, 2, 4, 8, 16, 32)
    assert default_recall_ks("sop") == (1, 10, 100, 1000)
    assert default_recall_ks("inshop") == (1, 10, 20, 30, 40)
    assert default_recall_ks("icons") == (1, 2, 4, 8)
    with pytest.raises(ValueError, match=r"valid names"):
        dataset_protocol("mnist")


def test_fixture_images_are_class_distinguishable(fixture_root: Path) -> None:
    """Nearest class-mean on raw pixels separates the fixture classes (so models learn fast)."""
    ds = get_dataset("cub200", "train", fixture_root)
    x = np.stack([np.asarray(ds.load_image(i), np.float32).ravel() for i in range(len(ds))])
    means = np.stack([x[ds.labels == c].mean(0) for c in range(ds.num_classes)])
    pred = np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == ds.labels).mean() == 1.0
