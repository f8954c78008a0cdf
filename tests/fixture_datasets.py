"""Tiny datasets written in each benchmark's OFFICIAL on-disk layout, for tests and benchmarks.

Images are real JPEGs whose content depends on the class (a class-specific colour and
shape) plus per-instance jitter and noise, so a small model separates the classes within
a few steps. Class ids follow the official split rule (CUB: train ids 1.., test ids 101..;
Cars: 1.. and 99..), so the loaders' split logic is exercised unchanged.
Every ``write_*_fixture`` returns the ``data_root`` to pass to ``get_dataset``.
"""

from __future__ import annotations

import colorsys
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageDraw

_SHAPES = ("ellipse", "rectangle", "triangle", "cross")
_GOLDEN = 0.618033988749895

# A few real class names so that text-based margins see meaningful names.
CUB_NAMES = {
    1: "Black_footed_Albatross", 2: "Laysan_Albatross", 3: "Sooty_Albatross",
    4: "Groove_billed_Ani", 5: "Crested_Auklet", 6: "Least_Auklet", 7: "Parakeet_Auklet",
    8: "Rhinoceros_Auklet", 101: "White_Pelican", 102: "Western_Wood_Pewee",
    103: "Sayornis", 104: "American_Pipit", 105: "Whip_poor_Will", 106: "Horned_Puffin",
    107: "Common_Raven", 108: "White_necked_Raven",
}
CAR_MAKES = ("AM General Hummer SUV", "Acura RL Sedan", "Acura TL Sedan", "Audi A5 Coupe",
             "BMW X3 SUV", "Chevrolet Corvette Convertible", "Dodge Ram Pickup",
             "Ford Mustang Convertible", "Honda Odyssey Minivan", "Jeep Wrangler SUV")
SOP_SUPERS = ("bicycle", "cabinet", "chair", "coffee_maker", "fan", "kettle", "lamp", "mug",
              "sofa", "stapler", "table", "toaster")
INSHOP_CATEGORIES = ("WOMEN/Dresses", "WOMEN/Blouses_Shirts", "MEN/Denim", "MEN/Jackets_Vests",
                     "WOMEN/Skirts", "MEN/Shorts")


def class_image(class_index: int, instance: int, size: int = 32, seed: int = 0) -> Image.Image:
    """An RGB image recognisable as class ``class_index`` (colour + shape), varied per instance."""
    rng = np.random.default_rng([seed, class_index, instance])
    hue = (class_index * _GOLDEN) % 1.0
    fg = tuple(int(255 * v) for v in colorsys.hsv_to_rgb(hue, 0.85, 0.9))
    bg_level = int(rng.integers(200, 240))
    image = Image.new("RGB", (size, size), (bg_level,) * 3)
    draw = ImageDraw.Draw(image)
    half = size * (0.28 + 0.06 * rng.random())
    cx, cy = size / 2 + rng.uniform(-size / 10, size / 10, size=2)
    box = (cx - half, cy - half, cx + half, cy + half)
    shape = _SHAPES[(class_index // 7) % len(_SHAPES)]
    if shape == "ellipse":
        draw.ellipse(box, fill=fg)
    elif shape == "rectangle":
        draw.rectangle(box, fill=fg)
    elif shape == "triangle":
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fg)
    else:
        w = half / 2.5
        draw.rectangle((cx - half, cy - w, cx + half, cy + w), fill=fg)
        draw.rectangle((cx - w, cy - half, cx + w, cy + half), fill=fg)
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=90)


def _class_ids(num_classes: int, first_test_id: int) -> list[int]:
    """Official ids for a fixture: the first half from 1, the second from ``first_test_id``."""
    n_train = (num_classes + 1) // 2
    return [*range(1, n_train + 1), *range(first_test_id, first_test_id + num_classes - n_train)]


def write_cub_fixture(
    root: str | os.PathLike[str],
    num_classes: int = 8,
    images_per_class: int = 6,
    size: int = 32,
    seed: int = 0,
    metadata: bool = True,
) -> Path:
    """``root/CUB_200_2011/images/NNN.Name/*.jpg`` (+ metadata files unless ``metadata=False``)."""
    root = Path(root)
    base = root / "CUB_200_2011"
    images, labels, classes = [], [], []
    image_id = 0
    for k, cid in enumerate(_class_ids(num_classes, 101)):
        folder = f"{cid:03d}.{CUB_NAMES.get(cid, f'Bird_species_{cid}')}"
        classes.append(f"{cid} {folder}")
        for j in range(images_per_class):
            image_id += 1
            rel = f"{folder}/{folder[4:]}_{j + 1:04d}_{image_id}.jpg"
            _save(class_image(k, j, size, seed), base / "images" / rel)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {cid}")
    if metadata:
        (base / "images.txt").write_text("\n".join(images) + "\n")
        (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
        (base / "classes.txt").write_text("\n".join(classes) + "\n")
        split = [f"{line.split()[0]} {int(i % 2 == 0)}" for i, line in enumerate(images)]
        (base / "train_test_split.txt").write_text("\n".join(split) + "\n")
    return root


def write_cars_fixture(
    root: str | os.PathLike[str],
    num_classes: int = 8,
    images_per_class: int = 6,
    size: int = 32,
    seed: int = 0,
    class_names: bool = True,
) -> Path:
    """``root/cars196/cars_annos.mat`` (official struct fields) + ``root/cars196/car_ims/*.jpg``."""
    root = Path(root)
    base = root / "cars196"
    ids = _class_ids(num_classes, 99)
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    rows = []
    n = 0
    for k, cid in enumerate(ids):
        for j in range(images_per_class):
            n += 1
            rel = f"car_ims/{n:06d}.jpg"
            _save(class_image(k, j, size, seed), base / rel)
            rows.append((rel, 1, 1, size - 1, size - 1, cid, j % 2))
    annotations = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        for f, v in zip(fields, row, strict=True):
            annotations[0, i][f] = np.array([[v]], dtype=np.uint8 if f == "test" else
                                            np.float64) if f != "relative_im_path" else v
    content: dict = {"annotations": annotations}
    if class_names:
        max_id = max(ids)
        names = np.empty((1, max_id), dtype=object)
        for c in range(1, max_id + 1):
            names[0, c - 1] = f"{CAR_MAKES[(c - 1) % len(CAR_MAKES)]} {2000 + c % 13}"
        content["class_names"] = names
    base.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(base / "cars_annos.mat", content)
    return root


def write_sop_fixture(
    root: str | os.PathLike[str],
    num_classes: int = 8,
    images_per_class: int = 6,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """``root/Stanford_Online_Products/Ebay_{train,test}.txt`` + ``<super>_final/*.JPG``."""
    root = Path(root)
    base = root / "Stanford_Online_Products"
    n_train = (num_classes + 1) // 2
    header = "image_id class_id super_class_id path"
    files = {"train": [header], "test": [header]}
    image_id = 0
    for k in range(num_classes):
        class_id = k + 1
        super_id = k % len(SOP_SUPERS)
        split = "train" if k < n_train else "test"
        for j in range(images_per_class):
            image_id += 1
            rel = f"{SOP_SUPERS[super_id]}_final/{1000 + class_id}_{j}.JPG"
            _save(class_image(k, j, size, seed), base / rel)
            files[split].append(f"{image_id} {class_id} {super_id + 1} {rel}")
    for split, lines in files.items():
        (base / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def write_inshop_fixture(
    root: str | os.PathLike[str],
    num_classes: int = 8,
    images_per_class: int = 6,
    size: int = 32,
    seed: int = 0,
    nested_img: bool = True,
) -> Path:
    """``root/Inshop_Clothes/Eval/list_eval_partition.txt`` + ``Img/img/<cat>/id_*/...jpg``.

    The first half of the items is ``train``; each remaining item puts its first half of
    images in ``query`` and the rest in ``gallery``. ``nested_img=False`` writes the
    ``Img/<cat>/...`` variant of the layout.
    """
    root = Path(root)
    base = root / "Inshop_Clothes"
    n_train = (num_classes + 1) // 2
    rows = []
    for k in range(num_classes):
        item = f"id_{k + 1:08d}"
        category = INSHOP_CATEGORIES[k % len(INSHOP_CATEGORIES)]
        for j in range(images_per_class):
            name = f"img/{category}/{item}/{j + 1:02d}_1_front.jpg"
            target = base / "Img" / (name if nested_img else name.removeprefix("img/"))
            _save(class_image(k, j, size, seed), target)
            if k < n_train:
                status = "train"
            else:
                status = "query" if j < images_per_class // 2 else "gallery"
            rows.append(f"{name} {item} {status}")
    (base / "Eval").mkdir(parents=True, exist_ok=True)
    lines = [str(len(rows)), "image_name item_id evaluation_status", *rows]
    (base / "Eval" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def _tar(path: Path, base: Path, members: dict[str, str]) -> Path:
    """``path`` (.tgz) holding ``base/<src>`` under the archive name ``<arcname>``."""
    with tarfile.open(path, "w:gz") as tar:
        for src, arcname in members.items():
            tar.add(base / src, arcname=arcname)
    return path


def _zip(path: Path, base: Path, folder: str, arc_root: str) -> Path:
    """``path`` (.zip) holding the tree ``base/folder`` as ``arc_root/...`` (with folders)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        top = base / folder
        archive.write(top, arc_root)
        for file in sorted(top.rglob("*")):
            archive.write(file, f"{arc_root}/{file.relative_to(top).as_posix()}")
    return path


def write_benchmark_archives(name: str, out_dir: str | os.PathLike[str], **kw) -> dict[str, Path]:
    """The files a benchmark is published as, holding a fixture in the official layout.

    ``{published file name: path}`` for ``name`` in ``cub200`` (``CUB_200_2011.tgz`` with
    ``CUB_200_2011/`` and ``attributes.txt``), ``cars196`` (``car_ims.tgz`` + the plain
    ``cars_annos.mat``), ``sop`` (``Stanford_Online_Products.zip``) and ``inshop``
    (``img.zip`` with ``img/...`` + the plain ``list_eval_partition.txt``); ``kw`` go to the
    ``write_*_fixture`` function.
    """
    out = Path(out_dir)
    tree = out / f".{name}-tree"
    out.mkdir(parents=True, exist_ok=True)
    if name == "cub200":
        write_cub_fixture(tree, **kw)
        (tree / "attributes.txt").write_text("1 has_bill_shape::curved\n")
        files = {"CUB_200_2011.tgz": _tar(out / "CUB_200_2011.tgz", tree, {
            "CUB_200_2011": "CUB_200_2011", "attributes.txt": "attributes.txt"})}
    elif name == "cars196":
        write_cars_fixture(tree, **kw)
        files = {"car_ims.tgz": _tar(out / "car_ims.tgz", tree / "cars196",
                                     {"car_ims": "car_ims"}),
                 "cars_annos.mat": Path(shutil.copy(tree / "cars196" / "cars_annos.mat",
                                                    out / "cars_annos.mat"))}
    elif name == "sop":
        write_sop_fixture(tree, **kw)
        files = {"Stanford_Online_Products.zip": _zip(
            out / "Stanford_Online_Products.zip", tree, "Stanford_Online_Products",
            "Stanford_Online_Products")}
    elif name == "inshop":
        write_inshop_fixture(tree, **kw)
        base = tree / "Inshop_Clothes"
        files = {"img.zip": _zip(out / "img.zip", base / "Img", "img", "img"),
                 "list_eval_partition.txt": Path(shutil.copy(
                     base / "Eval" / "list_eval_partition.txt", out / "list_eval_partition.txt"))}
    else:
        raise ValueError(f"no fixture archives for {name!r}")
    shutil.rmtree(tree)
    return files
