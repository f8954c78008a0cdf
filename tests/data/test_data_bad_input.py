"""Bad input gives a clear error naming the path (or is converted / skipped on request)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import fixture_datasets as fixtures
import numpy as np
import pytest
from PIL import Image

from dml_study.data import (
    CorruptImageError,
    DatasetLayoutError,
    DatasetSizeWarning,
    get_dataset,
)
from dml_study.data.base import check_expected_size
from dml_study.data.images import load_rgb, to_rgb


def test_missing_root_names_path_and_layout(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetLayoutError, match=r"(?s)nope does not exist.*CUB_200_2011/"):
        get_dataset("cub200", "train", missing)


@pytest.mark.parametrize(
    ("name", "writer", "folder"),
    [
        ("cub200", fixtures.write_cub_fixture, "CUB_200_2011"),
        ("cars196", fixtures.write_cars_fixture, "cars196"),
        ("sop", fixtures.write_sop_fixture, "Stanford_Online_Products"),
        ("inshop", fixtures.write_inshop_fixture, "Inshop_Clothes"),
    ],
)
def test_pointing_at_parent_folder_suggests_right_root(
    tmp_path: Path, name: str, writer, folder: str
) -> None:
    writer(tmp_path / "data", num_classes=2, images_per_class=1)
    with pytest.raises(DatasetLayoutError, match=rf"found in .*data/{folder}: pass data_root="):
        get_dataset(name, "train", tmp_path)


def test_empty_root_lists_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match=r"no Stanford_Online_Products/Ebay_train.txt"):
        get_dataset("sop", "train", tmp_path)


def test_cub_missing_metadata_file(tmp_path: Path) -> None:
    fixtures.write_cub_fixture(tmp_path, num_classes=2, images_per_class=1)
    (tmp_path / "CUB_200_2011" / "image_class_labels.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"missing CUB metadata: .*image_class_labels.txt"):
        get_dataset("cub200", "train", tmp_path)


def test_cars_missing_annotations(tmp_path: Path) -> None:
    fixtures.write_cars_fixture(tmp_path, num_classes=2, images_per_class=1)
    (tmp_path / "cars196" / "cars_annos.mat").unlink()
    with pytest.raises(DatasetLayoutError, match=r"missing Cars196 annotations: .*cars_annos.mat"):
        get_dataset("cars196", "train", tmp_path)


def test_sop_missing_split_file(tmp_path: Path) -> None:
    fixtures.write_sop_fixture(tmp_path, num_classes=2, images_per_class=1)
    (tmp_path / "Stanford_Online_Products" / "Ebay_test.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"Ebay_test.txt"):
        get_dataset("sop", "test", tmp_path)


def test_inshop_missing_partition(tmp_path: Path) -> None:
    fixtures.write_inshop_fixture(tmp_path, num_classes=2, images_per_class=2)
    (tmp_path / "Inshop_Clothes" / "Eval" / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"list_eval_partition.txt"):
        get_dataset("inshop", "train", tmp_path)


def test_missing_image_listed_in_metadata(tmp_path: Path) -> None:
    fixtures.write_cub_fixture(tmp_path, num_classes=2, images_per_class=2)
    victim = sorted((tmp_path / "CUB_200_2011" / "images").rglob("*.jpg"))[0]  # class 001
    victim.unlink()
    with pytest.raises(DatasetLayoutError, match=rf"do not exist, e.g. .*{victim.name}"):
        get_dataset("cub200", "train", tmp_path)


def test_empty_class_folder(tmp_path: Path) -> None:
    fixtures.write_cub_fixture(tmp_path, num_classes=2, images_per_class=2, metadata=False)
    empty = tmp_path / "CUB_200_2011" / "images" / "050.Empty_Bird"
    empty.mkdir()
    with pytest.raises(DatasetLayoutError, match=r"empty class folder .*050.Empty_Bird"):
        get_dataset("cub200", "train", tmp_path)


def test_duplicate_ids(tmp_path: Path) -> None:
    cub = fixtures.write_cub_fixture(tmp_path / "cub", num_classes=2, images_per_class=2)
    images_txt = cub / "CUB_200_2011" / "images.txt"
    lines = images_txt.read_text().splitlines()
    images_txt.write_text("\n".join([*lines, lines[0]]) + "\n")
    with pytest.raises(DatasetLayoutError, match=r"duplicate id 1"):
        get_dataset("cub200", "train", cub)

    sop = fixtures.write_sop_fixture(tmp_path / "sop", num_classes=2, images_per_class=2)
    ebay = sop / "Stanford_Online_Products" / "Ebay_train.txt"
    lines = ebay.read_text().splitlines()
    ebay.write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(DatasetLayoutError, match=r"duplicate image_id 1"):
        get_dataset("sop", "train", sop)

    shop = fixtures.write_inshop_fixture(tmp_path / "shop", num_classes=2, images_per_class=2)
    part = shop / "Inshop_Clothes" / "Eval" / "list_eval_partition.txt"
    lines = part.read_text().splitlines()
    lines[0] = str(int(lines[0]) + 1)
    part.write_text("\n".join([*lines, lines[2]]) + "\n")
    with pytest.raises(DatasetLayoutError, match=r"duplicate image img/"):
        get_dataset("inshop", "train", shop)


def test_cars_duplicate_image_in_annotations(tmp_path: Path) -> None:
    import scipy.io

    fixtures.write_cars_fixture(tmp_path, num_classes=2, images_per_class=2)
    mat_path = tmp_path / "cars196" / "cars_annos.mat"
    mat = scipy.io.loadmat(mat_path)
    ann = mat["annotations"]
    ann[0, 1]["relative_im_path"] = ann[0, 0]["relative_im_path"]
    scipy.io.savemat(mat_path, {"annotations": ann, "class_names": mat["class_names"]})
    with pytest.raises(DatasetLayoutError, match=r"duplicate image car_ims/000001.jpg"):
        get_dataset("cars196", "train", tmp_path)


def test_inshop_count_line_mismatch(tmp_path: Path) -> None:
    fixtures.write_inshop_fixture(tmp_path, num_classes=2, images_per_class=2)
    part = tmp_path / "Inshop_Clothes" / "Eval" / "list_eval_partition.txt"
    lines = part.read_text().splitlines()
    part.write_text("\n".join(lines[:-1]) + "\n")  # drop one row, keep the count
    with pytest.raises(DatasetLayoutError, match=r"declares 4 images but 3 rows"):
        get_dataset("inshop", "train", tmp_path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_image_raises_naming_file(tmp_path: Path) -> None:
    fixtures.write_sop_fixture(tmp_path, num_classes=2, images_per_class=3)
    ds = get_dataset("sop", "train", tmp_path)
    _truncate(ds.paths[1])
    with pytest.raises(CorruptImageError, match=rf"{ds.paths[1].name}.*on_corrupt='skip'"):
        ds[1]


def test_corrupt_images_skipped_with_warning(tmp_path: Path) -> None:
    fixtures.write_sop_fixture(tmp_path, num_classes=4, images_per_class=3)
    clean = get_dataset("sop", "train", tmp_path)
    _truncate(clean.paths[1])
    clean.paths[4].write_bytes(b"not an image at all")
    with pytest.warns(UserWarning, match=r"skipping corrupt image") as record:
        ds = get_dataset("sop", "train", tmp_path, on_corrupt="skip", progress=False)
    named = " ".join(str(w.message) for w in record)
    assert clean.paths[1].name in named and clean.paths[4].name in named
    assert len(ds) == len(clean) - 2
    assert ds.num_classes == 2 and set(ds.labels.tolist()) == {0, 1}
    with pytest.raises(CorruptImageError):
        get_dataset("sop", "train", tmp_path, check_images=True, progress=False)


def test_skip_drops_class_left_without_images(tmp_path: Path) -> None:
    fixtures.write_sop_fixture(tmp_path, num_classes=4, images_per_class=1)
    clean = get_dataset("sop", "train", tmp_path)
    clean.paths[0].write_bytes(b"junk")
    with pytest.warns(UserWarning):
        ds = get_dataset("sop", "train", tmp_path, on_corrupt="skip", progress=False)
    assert ds.num_classes == 1 and ds.labels.tolist() == [0]
    assert ds.class_names == clean.class_names[1:]


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "LA", "I;16"])
def test_unusual_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    fixtures.write_cub_fixture(tmp_path, num_classes=2, images_per_class=1, metadata=False)
    ds = get_dataset("cub200", "train", tmp_path)
    original = ds.load_image(0)
    path = ds.paths[0].with_suffix(".png" if mode in ("RGBA", "P", "LA", "I;16") else ".jpg")
    ds.paths[0].unlink()
    converted = original.convert(mode) if mode != "I;16" else original.convert("L").convert(
        "I;16")
    converted.save(path)
    ds = get_dataset("cub200", "train", tmp_path)
    image = ds.load_image(0)
    assert image.mode == "RGB" and image.size == original.size


def test_transparency_is_composited_on_white() -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    image.putpixel((0, 0), (0, 0, 255, 255))
    rgb = np.asarray(to_rgb(image))
    assert rgb[1, 1].tolist() == [255, 255, 255]
    assert rgb[0, 0].tolist() == [0, 0, 255]


def test_cmyk_conversion_matches_pillow(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (3, 3), (0, 255, 255, 0))  # pure red in CMYK
    path = tmp_path / "c.jpg"
    cmyk.save(path)
    assert load_rgb(path).mode == "RGB"
    assert np.asarray(load_rgb(path))[1, 1, 0] > 200


def test_expected_size_warning_names_difference() -> None:
    with pytest.warns(DatasetSizeWarning, match=r"found 5860 images / 100 classes.*-4 images"):
        check_expected_size("cub200", "train", 5860, 100, (5864, 100))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_expected_size("cub200", "train", 5864, 100, (5864, 100)) is None
        assert check_expected_size("cub200", "train", 24, 4, (5864, 100)) is None  # subset


def test_full_class_set_with_wrong_size_warns_from_get_dataset(tmp_path: Path) -> None:
    fixtures.write_cub_fixture(tmp_path, num_classes=200, images_per_class=1, size=8)
    with pytest.warns(DatasetSizeWarning, match=r"cub200/train: found 100 images / 100 classes"):
        get_dataset("cub200", "train", tmp_path)


def test_wrong_class_folder_name(tmp_path: Path) -> None:
    fixtures.write_cub_fixture(tmp_path, num_classes=2, images_per_class=1, metadata=False)
    images = tmp_path / "CUB_200_2011" / "images"
    shutil.move(images / "001.Black_footed_Albatross", images / "albatross")
    with pytest.raises(DatasetLayoutError, match=r"albatross: class folders are named NNN.Name"):
        get_dataset("cub200", "train", tmp_path)
