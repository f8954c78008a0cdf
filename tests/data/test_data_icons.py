"""The icon-theme dataset builder on a fake freedesktop theme tree (fast), and for real (slow)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dml_study.data import embedded, get_dataset, icons
from dml_study.data.icons import (
    IconBuildError,
    IconTheme,
    ThemeSource,
    build_from_sources,
    build_icons,
    choose_candidate,
    class_text,
    collect_instances,
    scan_theme,
)

SHAPES = {
    "printer": '<rect x="8" y="16" width="48" height="32" fill="{c}"/>',
    "battery": '<rect x="20" y="6" width="24" height="52" fill="{c}"/>',
    "weather-storm": '<circle cx="32" cy="32" r="24" fill="{c}"/>',
    "zoom-in": '<circle cx="26" cy="26" r="16" fill="{c}"/>',
}
COLOURS = ["#c00", "#0a0", "#00c", "#a0a", "#0aa"]


def _svg(name: str, theme: int) -> str:
    body = SHAPES[name].format(c=COLOURS[theme])
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">{body}</svg>'


def _png(name: str, theme: int, size: int) -> Image.Image:
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))  # transparent background
    shade = 40 * (list(SHAPES).index(name) + 1)
    image.paste((shade, 255 - shade, theme * 50, 255), (size // 4, size // 4, 3 * size // 4,
                                                          3 * size // 4))
    return image


def make_fake_themes(root: Path) -> list[ThemeSource]:
    """Five themes in different freedesktop layouts, with aliases and duplicates."""
    sources = []
    for t in range(5):
        base = root / f"theme{t}"
        for name in ("printer", "battery", "weather-storm"):
            if name == "weather-storm" and t >= 2:
                continue  # only 2 themes draw it: below the threshold of 3
            if t % 2 == 0:  # size-first layout with scalable SVGs
                path = base / "scalable" / "devices" / f"{name}.svg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(_svg(name, t))
            else:  # context-first layout with PNG sizes
                for size in (16, 64, 128):
                    path = base / "devices" / str(size) / f"{name}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    _png(name, t, size).save(path)
        sources.append(ThemeSource(f"fake-theme-{t}", "1.0", f"theme{t}", base))
    t0 = root / "theme0" / "scalable" / "devices"
    os.symlink("printer.svg", t0 / "printer-network.svg")  # alias: no instance of its own
    (t0 / "printer-symbolic.svg").write_text(_svg("printer", 0))  # symbolic: ignored
    # theme1 ships the battery drawing again as "battery-full": same bytes, one class only
    shutil.copy(root / "theme1/devices/64/battery.png", root / "theme1/devices/64/aaa-battery.png")
    # only a 16 px version: too small to use
    _png("zoom-in", 3, 16).save(root / "theme3" / "devices" / "16" / "zoom-in.png")
    return sources


@pytest.fixture(scope="module")
def fake_sources(tmp_path_factory: pytest.TempPathFactory) -> list[ThemeSource]:
    return make_fake_themes(tmp_path_factory.mktemp("themes"))


def test_scan_skips_aliases_symbolic_and_picks_sizes(fake_sources: list[ThemeSource]) -> None:
    found = scan_theme(fake_sources[0].path)
    assert "printer-network" not in found and "printer-symbolic" not in found
    assert set(found) == {"printer", "battery", "weather-storm"}
    png_theme = scan_theme(fake_sources[1].path)
    best = choose_candidate(png_theme["printer"], size=64)
    assert best is not None and best.path.parent.name == "64"  # smallest PNG >= 64
    assert choose_candidate(scan_theme(fake_sources[3].path)["zoom-in"], 64) is None


def test_concepts_instances_and_dedupe(fake_sources: list[ThemeSource]) -> None:
    inst = collect_instances(fake_sources, size=32, min_instances=3, progress=False)
    assert list(inst) == ["battery", "printer"]  # weather-storm: 2 themes < 3
    assert [t for t, _ in inst["printer"]] == [f"theme{t}" for t in range(5)]
    # A copy under a name too rare to be a class does not take the drawing away (battery
    # keeps all 5); when both names are classes it counts once, under the smallest name.
    assert len(inst["battery"]) == 5
    lower = collect_instances(fake_sources, size=32, min_instances=1, progress=False)
    assert [t for t, _ in lower["aaa-battery"]] == ["theme1"]
    assert "theme1" not in [t for t, _ in lower["battery"]]
    files = [p.resolve() for v in lower.values() for _, p in v]
    assert len(files) == len(set(files))  # one image, one class


def test_build_is_deterministic_and_complete(fake_sources, tmp_path: Path) -> None:
    a = build_from_sources(fake_sources, tmp_path / "a", size=32, min_instances=3,
                           num_workers=1, progress=False)
    b = build_from_sources(fake_sources, tmp_path / "b", size=32, min_instances=3,
                           num_workers=1, progress=False)
    assert a == b
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (
        tmp_path / "b" / "manifest.json").read_bytes()
    assert a["classes"] == ["battery", "printer"] and a["counts"] == {"battery": 5, "printer": 5}
    assert a["split"] == {"train": ["battery"], "test": ["printer"]}
    assert [p["package"] for p in a["packages"]] == [f"fake-theme-{t}" for t in range(5)]
    assert icons.verify_manifest(tmp_path / "a", a) == []
    image = Image.open(tmp_path / "a" / "images" / "printer" / "theme0.png")
    assert image.mode == "RGB" and image.size == (32, 32)
    pixels = np.asarray(image)
    assert pixels[0, 0].tolist() == [255, 255, 255]  # background composited on white
    assert pixels[16, 16].tolist() == [204, 0, 0]  # the theme's red rectangle (#c00)
    png = np.asarray(Image.open(tmp_path / "a" / "images" / "printer" / "theme1.png"))
    assert png[0, 0].tolist() == [255, 255, 255]  # transparent PNG background -> white
    (tmp_path / "a" / "images" / "printer" / "theme0.png").write_bytes(
        (tmp_path / "a" / "images" / "printer" / "theme1.png").read_bytes())
    assert icons.verify_manifest(tmp_path / "a", a) == ["images/printer/theme0.png"]


@pytest.fixture
def built_cache(fake_sources, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    build_from_sources(fake_sources, cache / "icons-32", size=32, min_instances=3,
                       num_workers=1, progress=False)
    return cache


def test_second_build_is_a_no_op(built_cache: Path) -> None:
    manifest_path = built_cache / "icons-32" / "manifest.json"
    before = manifest_path.stat().st_mtime_ns
    # Themes that cannot be fetched: a no-op build never tries.
    out, manifest = build_icons(built_cache, size=32, min_instances=3,
                                themes=(IconTheme("no-such-package", "None"),), progress=False)
    assert out == built_cache / "icons-32" and manifest["num_images"] == 10
    assert manifest_path.stat().st_mtime_ns == before


def test_incomplete_cache_is_not_trusted(built_cache: Path) -> None:
    (built_cache / "icons-32" / "images" / "printer" / "theme2.png").unlink()
    assert icons.read_manifest(built_cache / "icons-32") is None


def test_clear_error_without_packages_or_cache(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(embedded.shutil, "which",
                        lambda cmd: None if cmd in ("apt-get", "dpkg-query") else real_which(cmd))
    with pytest.raises(IconBuildError, match=r"(?s)apt-get is not available.*apt-get install "
                                             r"adwaita-icon-theme"):
        build_icons(tmp_path / "empty", size=32, progress=False)
    with pytest.raises(IconBuildError, match=r"python -m dml_study.data.icons build"):
        icons.load_records("train", cache_dir=tmp_path / "empty", icon_size=32, build=False)


def test_get_dataset_icons_from_cache(built_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DML_STUDY_CACHE", str(built_cache))
    train = get_dataset("icons", "train", data_root="/ignored", icon_size=32, build=False)
    test = get_dataset("icons", "test", icon_size=32, build=False)
    assert train.class_names == ["battery"] and test.raw_class_names == ["printer"]
    assert len(train) == 5 and len(test) == 5
    assert train.labels.tolist() == [0] * 5
    assert train[0][0].size == (32, 32)


def test_class_text() -> None:
    assert class_text("accessories-calculator") == "accessories calculator"
    assert class_text("x-office_document") == "x office document"


def test_cli_prints_counts(built_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = json.loads((built_cache / "icons-32" / "manifest.json").read_text())
    assert icons.main(["build", "--cache-dir", str(built_cache), "--size", "32",
                       "--min-instances", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"{manifest['num_classes']} classes, {manifest['num_images']} images" in out
    assert "train: 1 classes, 5 images" in out and "manifest.json" in out


@pytest.mark.slow
def test_real_icon_dataset() -> None:
    """Builds (or reuses) the real dataset from the Debian packages: >= 150 classes x >= 8."""
    out, manifest = build_icons(progress=False)
    assert manifest["num_classes"] >= 150
    assert min(manifest["counts"].values()) >= 8
    assert icons.verify_manifest(out, manifest) == []
    train = get_dataset("icons", "train", progress=False)
    test = get_dataset("icons", "test", progress=False)
    assert train.num_classes + test.num_classes == manifest["num_classes"]
    assert not set(train.raw_class_names) & set(test.raw_class_names)
    assert train.load_image(0).size == (64, 64)
