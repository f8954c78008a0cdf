"""The glyph dataset builder on tiny synthetic fonts (fast), and for real (slow).

The synthetic fonts are TrueType files written with fontTools: each draws the first 24
:data:`PROBE` characters as random rectangles (a different drawing per design), with the
defects the builder must catch: a fork that copies another font's outlines, a missing cmap
entry, an empty glyph, a glyph that is the ``.notdef`` box, and a single copied glyph.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dml_study.data import embedded, get_dataset, glyphs
from dml_study.data.base import EmbeddedBuildError, IconBuildError
from dml_study.data.glyphs import (
    PROBE,
    FaceSource,
    FontFace,
    binarise,
    build_from_sources,
    build_glyphs,
    iou,
    load_face,
    notdef_glyph,
    parse_unihan,
    render_glyph,
    select_instances,
    split_of,
    variant_components,
)

CHARS = [ord(c) for c in PROBE[:24]]
MISSING, EMPTY, NOTDEF, COPIED = CHARS[0], CHARS[1], CHARS[2], CHARS[3]
NOTDEF_BOX = [(100, 0, 900, 800)]


def _rects(design: str, cp: int) -> list[tuple[int, int, int, int]]:
    """A random drawing of ``cp`` in ``design``: 3-5 bars (deterministic)."""
    rng = np.random.default_rng([sum(map(ord, design)), cp])
    rects = []
    for _ in range(rng.integers(3, 6)):
        x0, y0 = rng.integers(0, 700, size=2)
        if rng.random() < 0.5:
            rects.append((int(x0), int(y0), int(x0) + 300, int(y0) + 60))  # horizontal
        else:
            rects.append((int(x0), int(y0), int(x0) + 60, int(y0) + 300))  # vertical
    return rects


def write_font(path: Path, family: str, drawings: dict[int, list[tuple[int, int, int, int]]],
               unmapped: tuple[int, ...] = ()) -> Path:
    """A TrueType font drawing each code point as filled rectangles (font units, em 1000)."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    def glyph(rects):  # type: ignore[no-untyped-def]
        pen = TTGlyphPen(None)
        for x0, y0, x1, y1 in rects:
            pen.moveTo((x0, y0))
            pen.lineTo((x0, y1))
            pen.lineTo((x1, y1))
            pen.lineTo((x1, y0))
            pen.closePath()
        return pen.glyph()

    names = {cp: f"uni{cp:04X}" for cp in drawings}
    fb = FontBuilder(1000, isTTF=True)
    fb.setupGlyphOrder([".notdef", *names.values()])
    fb.setupCharacterMap({cp: n for cp, n in names.items() if cp not in unmapped})
    fb.setupGlyf({".notdef": glyph(NOTDEF_BOX), **{names[cp]: glyph(r)
                                                   for cp, r in drawings.items()}})
    fb.setupHorizontalMetrics({n: (1000, 0) for n in [".notdef", *names.values()]})
    fb.setupHorizontalHeader(ascent=880, descent=-120)
    fb.setupNameTable({"familyName": family, "styleName": "Regular"})
    fb.setupOS2(sTypoAscender=880, sTypoDescender=-120, usWinAscent=880, usWinDescent=120)
    fb.setupPost()
    fb.save(str(path))
    return path


def make_fake_fonts(root: Path) -> list[FaceSource]:
    """alpha, alpha-fork (same outlines), beta (tofu/empty/.notdef), gamma (one copied glyph),
    delta: after dropping the fork, 4 designs; the 4 defective characters keep only 3."""
    alpha = {cp: _rects("alpha", cp) for cp in CHARS}
    beta = {cp: _rects("beta", cp) for cp in CHARS}
    beta[EMPTY] = []
    beta[NOTDEF] = NOTDEF_BOX
    gamma = {cp: _rects("gamma", cp) for cp in CHARS}
    gamma[COPIED] = alpha[COPIED]
    fonts = [
        ("alpha", alpha, ()), ("alpha-fork", alpha, ()), ("beta", beta, (MISSING,)),
        ("gamma", gamma, ()), ("delta", {cp: _rects("delta", cp) for cp in CHARS}, ()),
    ]
    sources = []
    for design, drawings, unmapped in fonts:
        path = write_font(root / f"{design}.ttf", design, drawings, unmapped)
        face = FontFace(design, f"fonts-fake-{design}", f"usr/share/fonts/{design}.ttf")
        sources.append(FaceSource(face, "1.0", path))
    return sources


#: Synthetic Unihan: CHARS[4] <-> CHARS[5] directly, CHARS[6] and CHARS[7] through U+20000.
UNIHAN_READINGS = [
    "# comment",
    f"U+{CHARS[4]:04X}\tkDefinition\tfirst gloss; more",
    f"U+{CHARS[5]:04X}\tkMandarin\tshì jiě",
]
UNIHAN_VARIANTS = [
    f"U+{CHARS[4]:04X}\tkTraditionalVariant\tU+{CHARS[5]:04X}",
    f"U+{CHARS[6]:04X}\tkZVariant\tU+20000<kHanYu",
    f"U+{CHARS[7]:04X}\tkSimplifiedVariant\tU+20000",
    f"U+{CHARS[8]:04X}\tkSpoofingVariant\tU+{CHARS[9]:04X}",  # not a variant form
]
UNIHAN = parse_unihan(UNIHAN_READINGS, UNIHAN_VARIANTS)


@pytest.fixture(scope="module")
def fake_sources(tmp_path_factory: pytest.TempPathFactory) -> list[FaceSource]:
    return make_fake_fonts(tmp_path_factory.mktemp("fonts"))


def _build(sources, out: Path, **kw):  # type: ignore[no-untyped-def]
    kw = {"size": 32, "min_designs": 4, "num_classes": 100, "num_workers": 1,
          "progress": False, **kw}
    return build_from_sources(sources, UNIHAN, out, **kw)


# --------------------------------------------------------------------------- rendering


def test_render_is_centred_black_on_white_and_box_scaled(fake_sources) -> None:
    font = load_face(fake_sources[0].file, 0, 32)
    image = render_glyph(font, chr(CHARS[5]), 32)
    assert image is not None and image.shape == (32, 32) and image.dtype == np.uint8
    assert image[0, 0] == 255 and image.min() == 0  # white background, black ink
    ys, xs = np.nonzero(binarise(image))
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert max(height, width) == pytest.approx(glyphs.BOX_FRACTION * 32, abs=1)
    assert abs((ys.min() + ys.max()) / 2 - 15.5) <= 1 and abs((xs.min() + xs.max()) / 2 - 15.5) <= 1
    # The same drawing at another size scales to the same box: renderings are comparable.
    again = render_glyph(load_face(fake_sources[1].file, 0, 32), chr(CHARS[5]), 32)
    assert np.array_equal(image, again)


def test_tofu_and_empty_renderings_are_detected(fake_sources) -> None:
    beta = fake_sources[2]
    font = load_face(beta.file, 0, 32)
    notdef = notdef_glyph(font, 32)
    assert notdef is not None
    assert np.array_equal(render_glyph(font, chr(NOTDEF), 32), notdef)  # drawn as .notdef
    assert np.array_equal(render_glyph(font, chr(MISSING), 32), notdef)  # not in the cmap
    assert render_glyph(font, chr(EMPTY), 32) is None  # no ink
    assert MISSING not in glyphs.face_coverage(beta.file, 0)
    assert EMPTY in glyphs.face_coverage(beta.file, 0)
    # The render job names why a covered character gives no instance.
    jobs = glyphs._render_job((str(beta.file), 0, 32, (NOTDEF, EMPTY, CHARS[5])))
    assert [r if isinstance(r, str) else "image" for _, r in jobs] == ["tofu", "empty", "image"]


def test_select_instances_reasons() -> None:
    a = np.full((8, 8), 255, np.uint8)
    a[2:6, 1:7] = 0
    b = np.full((8, 8), 255, np.uint8)
    b[1:7, 3:5] = 0
    near = a.copy()
    near[2, 1] = 255  # 23/24 of a's ink: IoU 0.96 > 0.9
    renders = {"a": a, "tofu": a, "notdef": "tofu", "empty": "empty", "copy": near, "b": b}
    covered = {"a": True, "notdef": True, "empty": True, "copy": True, "b": True}
    kept, why = select_instances(renders, covered)
    assert list(kept) == ["a", "b"]
    assert why == {"tofu": "tofu", "notdef": "tofu", "empty": "empty", "copy": "near-duplicate"}
    assert iou(binarise(a), binarise(near)) == pytest.approx(23 / 24)


# --------------------------------------------------------------------------- designs and split


def test_near_identical_faces_are_dropped(fake_sources) -> None:
    kept, dropped = glyphs.dedupe_faces(fake_sources, 32, progress=False)
    assert [s.face.design for s in kept] == ["alpha", "beta", "gamma", "delta"]
    assert len(dropped) == 1 and dropped[0]["design"] == "alpha-fork"
    assert "near-identical to alpha: mean IoU 1.000" in dropped[0]["reason"]


def test_unihan_parsing_and_variant_components() -> None:
    assert UNIHAN.definition[CHARS[4]] == "first gloss; more"
    assert glyphs.class_text(CHARS[4], UNIHAN) == "first gloss; more"
    assert glyphs.class_text(CHARS[5], UNIHAN) == f"{chr(CHARS[5])} shì"  # char + reading
    assert glyphs.class_text(CHARS[10], UNIHAN) == chr(CHARS[10])
    assert glyphs.raw_name(0x4E00) == "U+4E00 一"
    roots = variant_components(CHARS, UNIHAN)
    assert roots[CHARS[4]] == roots[CHARS[5]] == min(CHARS[4], CHARS[5])
    assert roots[CHARS[6]] == roots[CHARS[7]]  # linked through a non-class character
    assert roots[CHARS[8]] != roots[CHARS[9]]  # spoofing look-alikes are not variants
    assert roots[CHARS[10]] == CHARS[10]
    assert {split_of(r) for r in range(0x4E00, 0x4E40)} == {"train", "test"}


def test_build_classes_split_and_determinism(fake_sources, tmp_path: Path) -> None:
    a = _build(fake_sources, tmp_path / "a")
    _build(fake_sources, tmp_path / "b")
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (
        tmp_path / "b" / "manifest.json").read_bytes()
    expected = sorted(glyphs.class_id(cp) for cp in CHARS[4:])
    assert a["classes"] == expected  # the 4 defective characters keep only 3 designs
    assert set(a["counts"].values()) == {4}
    assert [f["design"] for f in a["faces"]] == ["alpha", "beta", "gamma", "delta"]
    assert a["dropped_faces"][0]["design"] == "alpha-fork"
    assert a["rejected_instances"]["beta"] == {"empty": 1, "tofu": 1}  # MISSING: no claim
    assert a["rejected_instances"]["gamma"] == {"near-duplicate": 1}
    train, test = set(a["split"]["train"]), set(a["split"]["test"])
    assert train and test and not train & test and train | test == set(expected)
    side = {c: s for s in ("train", "test") for c in a["split"][s]}
    assert side[glyphs.class_id(CHARS[4])] == side[glyphs.class_id(CHARS[5])]
    assert side[glyphs.class_id(CHARS[6])] == side[glyphs.class_id(CHARS[7])]
    assert a["names"][glyphs.class_id(CHARS[4])] == "first gloss; more"
    assert embedded.verify_manifest(tmp_path / "a", a) == []
    image = Image.open(tmp_path / "a" / "images" / glyphs.class_id(CHARS[5]) / "delta.png")
    assert image.mode == "L" and image.size == (32, 32)
    # A smaller class budget keeps the most widely drawn characters, half per split.
    small = _build(fake_sources, tmp_path / "small", num_classes=4)
    assert len(small["split"]["train"]) == len(small["split"]["test"]) == 2


def test_max_designs_stores_a_seeded_subset_per_class(fake_sources, tmp_path: Path) -> None:
    m = _build(fake_sources, tmp_path / "m", min_designs=2, max_designs=3)
    assert len(m["classes"]) == 24  # the defective characters (3 designs) qualify with 2
    assert set(m["counts"].values()) == {3} and m["max_designs"] == 3
    assert m["designs_available"][glyphs.class_id(CHARS[5])] == 4
    subsets = {tuple(sorted(Path(rel).stem for rel in m["files"] if f"/{cid}/" in rel))
               for cid in m["classes"]}
    assert len(subsets) > 1  # not the same designs for every class
    with pytest.raises(ValueError, match=r"max_designs \(3\) must be >= min_designs \(4\)"):
        _build(fake_sources, tmp_path / "bad", max_designs=3)


@pytest.fixture
def built_cache(fake_sources, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    _build(fake_sources, cache / "glyphs-32", num_classes=100)
    return cache


def test_get_dataset_glyphs_from_cache(built_cache: Path, monkeypatch) -> None:
    monkeypatch.setenv("DML_STUDY_CACHE", str(built_cache))
    train = get_dataset("glyphs", "train", size=32, build=False)
    test = get_dataset("glyphs", "test", size=32, build=False)
    assert not set(train.raw_class_names) & set(test.raw_class_names)
    assert train.num_classes + test.num_classes == 20
    assert np.bincount(train.labels).min() == 4
    assert train.load_image(0).mode == "RGB" and train.load_image(0).size == (32, 32)
    assert all(n.startswith("U+") for n in train.raw_class_names)
    sub = get_dataset("glyphs", "train", size=32, build=False, num_classes=2)
    assert sub.num_classes == 1
    with pytest.raises(ValueError, match="--classes 1000 --force"):
        get_dataset("glyphs", "train", size=32, build=False, num_classes=1000)
    with pytest.raises(TypeError, match="unexpected keyword"):
        get_dataset("cub200", "train", size=32)


def test_second_build_is_a_no_op(built_cache: Path) -> None:
    manifest_path = built_cache / "glyphs-32" / "manifest.json"
    before = manifest_path.stat().st_mtime_ns
    out, manifest = build_glyphs(built_cache, size=32, min_designs=4, num_classes=100,
                                 faces=(FontFace("x", "no-such-package", "x.ttf"),),
                                 progress=False)
    assert out == built_cache / "glyphs-32" and manifest["num_classes"] == 20
    assert manifest_path.stat().st_mtime_ns == before


def test_clear_error_without_packages_or_cache(tmp_path: Path, monkeypatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(embedded.shutil, "which",
                        lambda cmd: None if cmd in ("apt-get", "dpkg-query") else real_which(cmd))
    with pytest.raises(EmbeddedBuildError, match=r"(?s)apt-get is not available.*apt-get "
                                                 r"install .*fonts-noto-cjk.*unicode-data"):
        build_glyphs(tmp_path / "empty", size=32, progress=False)
    assert IconBuildError is EmbeddedBuildError
    with pytest.raises(EmbeddedBuildError, match=r"python -m dml_study.data.glyphs build"):
        glyphs.load_records("train", cache_dir=tmp_path / "empty", size=32, build=False)


def test_bad_arguments_fail_before_any_download(tmp_path: Path, monkeypatch, capsys) -> None:
    def no_download(*args, **kw):  # type: ignore[no-untyped-def]
        raise AssertionError("downloaded despite a bad argument")

    monkeypatch.setattr(embedded, "apt_download", no_download)
    assert glyphs.main(["build", "--cache-dir", str(tmp_path), "--size", "0", "--quiet"]) == 1
    assert "size must be an integer >= 8, got 0" in capsys.readouterr().err
    assert glyphs.main(["build", "--cache-dir", str(tmp_path), "--classes", "0"]) == 1
    assert "num_classes must be an integer >= 1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing fetched, no lock, no folder


def test_cli_prints_counts(built_cache: Path, capsys) -> None:
    manifest = json.loads((built_cache / "glyphs-32" / "manifest.json").read_text())
    assert glyphs.main(["build", "--cache-dir", str(built_cache), "--size", "32", "--classes",
                        "100", "--min-designs", "4", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"{manifest['num_classes']} classes, {manifest['num_images']} images" in out
    assert "4 designs, 1 near-identical faces dropped" in out


def _fake_deb(deb_dir: Path, package: str, files: dict[str, bytes]) -> None:
    """A minimal .deb of ``package`` 1.0 holding ``files`` (path -> bytes), via dpkg-deb."""
    root = deb_dir / f"{package}-tree"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\n"
        f"Description: test\n")
    embedded.run(["dpkg-deb", "--root-owner-group", "--build", str(root),
                  str(deb_dir / f"{package}_1.0_all.deb")]).check_returncode()
    shutil.rmtree(root)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_build_from_debs_end_to_end(fake_sources, tmp_path: Path, monkeypatch) -> None:
    """Fonts and Unihan fetched from (fake, cached) .debs: unpack, lock, render, manifest."""
    import bz2

    debs = tmp_path / "cache" / "debs"
    debs.mkdir(parents=True)
    faces = []
    for src in fake_sources:
        _fake_deb(debs, src.face.package, {src.face.path: src.file.read_bytes()})
        faces.append(src.face)
    unihan = {f"usr/share/unicode/{name}": bz2.compress("\n".join(lines).encode())
              for name, lines in zip(glyphs.UNIHAN_FILES, (UNIHAN_READINGS, UNIHAN_VARIANTS),
                                     strict=True)}
    _fake_deb(debs, "unicode-data", unihan)
    monkeypatch.setattr(embedded, "installed_version", lambda package: None)  # use the .debs
    out, manifest = build_glyphs(tmp_path / "cache", size=32, min_designs=4, num_classes=100,
                                 faces=faces, num_workers=1, progress=False)
    assert out == tmp_path / "cache" / "glyphs-32" and manifest["num_classes"] == 20
    assert {p["package"]: p["version"] for p in manifest["packages"]} == {
        **{f.package: "1.0" for f in faces}, "unicode-data": "1.0"}
    assert manifest["names"][glyphs.class_id(CHARS[4])] == "first gloss; more"
    reference = _build(fake_sources, tmp_path / "ref",
                       packages=[{"package": f.package, "version": "1.0"} for f in faces]
                       + [{"package": "unicode-data", "version": "1.0"}])
    assert embedded.manifest_bytes(manifest) == embedded.manifest_bytes(reference)
    # Lean cache: after the verified build the .debs and unpacked fonts are gone.
    assert not (tmp_path / "cache" / "glyph-fonts").exists() and not debs.exists()
    # ... but the class characters stay drawable for figure labels: one subset of the first
    # face that has them all (alpha), holding exactly the dataset's classes.
    fonts = sorted((tmp_path / "cache" / "label-fonts").iterdir())
    assert [f.name for f in fonts] == ["alpha-labels.ttf"]
    classes = {int(c, 16) for c in manifest["classes"]}
    assert set(_cmap(fonts[0])) == classes
    assert glyphs.label_fonts_missing(tmp_path / "cache" / "label-fonts", classes) == set()


def _cmap(path: Path) -> dict[int, str]:
    from fontTools.ttLib import TTFont

    return TTFont(path).getBestCmap()


def test_label_fonts_are_as_few_subsets_as_cover_the_characters(tmp_path: Path) -> None:
    """Figures need a font for every class character once the build deleted its fonts: the
    first face with them all, else a greedy cover; a character no face has stays missing."""
    first = write_font(tmp_path / "a.ttf", "Fake A", {cp: _rects("a", cp) for cp in CHARS[:10]})
    second = write_font(tmp_path / "b.ttf", "Fake B",
                        {cp: _rects("b", cp) for cp in CHARS[5:20]})
    sources = [FaceSource(FontFace(name, f"fonts-{name}", f"usr/{name}.ttf"), "1.0", path)
               for name, path in (("fake-a", first), ("fake-b", second))]
    out = tmp_path / "labels"
    assert glyphs.write_label_fonts(sources, CHARS[2:8], out) == [out / "fake-a-labels.ttf"]
    assert set(_cmap(out / "fake-a-labels.ttf")) == set(CHARS[2:8])  # only what is needed
    shutil.rmtree(out)
    written = glyphs.write_label_fonts(sources, CHARS[:20], out)
    assert written == [out / "fake-b-labels.ttf", out / "fake-a-labels.ttf"]  # most first
    assert set(_cmap(written[0])) == set(CHARS[5:20])
    assert set(_cmap(written[1])) == set(CHARS[:5])
    assert glyphs.label_fonts_missing(out, CHARS[:20]) == set()
    assert glyphs.label_fonts_missing(out, CHARS[:21]) == {CHARS[20]}
    assert not list(out.glob(".*"))  # atomic writes leave no temporary file
    (out / "fake-a-labels.ttf").write_bytes(b"truncated")  # a damaged font covers nothing
    assert glyphs.label_fonts_missing(out, CHARS[:20]) == set(CHARS[:5])


def test_a_dataset_built_without_label_fonts_gets_them_from_its_packages(
        tmp_path: Path, fake_sources, monkeypatch) -> None:
    """``ensure_label_fonts`` (run by ``python -m dml_study.data.glyphs build``) fetches the
    dataset's font packages in FACES order until the classes are covered, writes the
    subsets and removes the downloads."""
    cache = tmp_path / "cache"
    out = _build(fake_sources, cache / "glyphs-32")
    faces = [src.face for src in fake_sources]
    monkeypatch.setattr(glyphs, "FACES", tuple(faces))
    fetched: list[list[str]] = []

    def fetch(wanted, work_dir, deb_dir, progress, num_workers):  # type: ignore[no-untyped-def]
        fetched.append([f.design for f in wanted])
        work_dir.mkdir(parents=True, exist_ok=True)
        return [src for src in fake_sources if src.face in wanted], work_dir, []

    monkeypatch.setattr(glyphs, "fetch_sources", fetch)
    written = glyphs.ensure_label_fonts(cache, size=32, progress=False)
    assert fetched == [["alpha"]] and written == [cache / "label-fonts" / "alpha-labels.ttf"]
    assert not (cache / "glyph-fonts").exists()
    assert glyphs.ensure_label_fonts(cache, size=32, progress=False) == []  # already there
    assert len(fetched) == 1
    assert set(_cmap(written[0])) == {int(c, 16) for c in out["classes"]}
    with pytest.raises(EmbeddedBuildError, match="no complete glyph dataset"):
        glyphs.ensure_label_fonts(tmp_path / "empty", size=32, progress=False)


@pytest.mark.slow
def test_real_glyph_dataset() -> None:
    """Builds (or reuses) the real dataset from the Debian packages: >= 1,000 classes per
    split, every class >= 8 designs, class-disjoint and variant-closed splits."""
    out, manifest = build_glyphs(progress=False)
    assert embedded.verify_manifest(out, manifest) == []
    assert min(manifest["counts"].values()) >= 8
    train = get_dataset("glyphs", "train", progress=False)
    test = get_dataset("glyphs", "test", progress=False)
    assert train.num_classes >= 1000 and test.num_classes >= 1000
    assert not set(train.raw_class_names) & set(test.raw_class_names)
    assert train.load_image(0).size == (64, 64)
    assert {d["design"] for d in manifest["dropped_faces"]} >= {"takao-gothic", "wqy-microhei"}
    root = embedded.cache_root()  # Unihan as the build gets it (installed, or the .deb)
    _, unicode_dir, _ = glyphs.fetch_sources((), root / "glyph-fonts", root / "debs",
                                             progress=False)
    unihan = glyphs.read_unihan(unicode_dir)
    side = {c: s for s in ("train", "test") for c in manifest["split"][s]}
    for cid, split in side.items():
        for other in unihan.variants.get(int(cid, 16), ()):
            assert side.get(glyphs.class_id(other), split) == split


def test_embedded_datasets_register_in_the_registry() -> None:
    from dml_study.data import registry

    info = registry.dataset_info("glyphs")
    assert info.embedded == "glyphs" and info.splits == ("train", "test")
    assert registry.dataset_info("icons").embedded == "icons"
    assert registry.dataset_info("cub200").embedded is None
    with pytest.raises(ValueError, match="already registered"):
        registry.register_embedded("glyphs", (1,), "twice")


# --------------------------------------------------------------------------- display names

#: Every class of the fake set shares one of two glosses: duplicates inside each split and
#: across the two splits, as in the real build ('loquat' = 枇, 杷; 'spider' on both sides).
SHARED_GLOSSES = ("spider", "loquat")
DUPLICATE_READINGS = [
    f"U+{cp:04X}\tkDefinition\t{SHARED_GLOSSES[i % 2]}" for i, cp in enumerate(CHARS[4:])
]


def test_display_names_are_unique_and_the_loss_text_is_the_bare_gloss(
    fake_sources, tmp_path: Path, monkeypatch
) -> None:
    from dml_study.config import load_config
    from dml_study.losses import create_loss_from_config

    unihan = parse_unihan(DUPLICATE_READINGS, [])
    cache = tmp_path / "cache"
    manifest = build_from_sources(fake_sources, unihan, cache / "glyphs-32", size=32,
                                  min_designs=4, num_classes=100, num_workers=1,
                                  progress=False)
    monkeypatch.setenv("DML_STUDY_CACHE", str(cache))
    splits = {s: get_dataset("glyphs", s, size=32, build=False) for s in ("train", "test")}
    shown: list[str] = []
    for split, ds in splits.items():
        ids = sorted(manifest["split"][split])
        # The text modality is exactly the manifest's gloss, duplicates and all.
        assert ds.class_names == [manifest["names"][c] for c in ids]
        assert len(set(ds.class_names)) < ds.num_classes
        expected = [f"{manifest['names'][c]} ({chr(int(c, 16))})" for c in ids]
        assert ds.display_names == expected  # e.g. "loquat (枇)"
        assert len(set(ds.display_names)) == ds.num_classes
        shown += ds.display_names
    assert set(splits["train"].class_names) & set(splits["test"].class_names)
    assert len(set(shown)) == len(shown)  # unique across the two splits as well

    # The adaptive-margin loss embeds the bare glosses: equal glosses, equal text
    # embeddings, distance 0, hence m_max under the default "inverse" mapping.
    train = splits["train"]
    config = load_config("glyphs", loss="adaptive_margin",
                         **{"loss.params": {"text_source": "glove"}})
    loss = create_loss_from_config(config, train.num_classes, 8, train.class_names)
    table = loss.table.embeddings
    a, b = [i for i, n in enumerate(train.class_names) if n == train.class_names[0]][:2]
    assert np.array_equal(table[a].numpy(), table[b].numpy())
    margins = loss.margins(torch.tensor([a]))[0]
    assert float(margins[b]) == pytest.approx(loss.m_max)


def test_display_name_keeps_a_text_that_already_holds_the_character() -> None:
    cp = CHARS[5]
    assert glyphs.display_name(cp, "loquat") == f"loquat ({chr(cp)})"
    assert glyphs.display_name(cp, f"{chr(cp)} shì") == f"{chr(cp)} shì"
    assert glyphs.display_name(cp, chr(cp)) == chr(cp)


def test_unique_display_names_fall_back_to_raw_names_then_labels() -> None:
    from dml_study.data.base import unique_display_names

    assert unique_display_names(["a", "b"]) == ["a", "b"]
    assert unique_display_names(["bike", "bike", "cup"], ["b/1", "b/2", "c/3"]) == [
        "bike (b/1)", "bike (b/2)", "cup"]
    assert unique_display_names(["x", "x"], ["r", "r"]) == ["x (r) (#0)", "x (r) (#1)"]
    with pytest.raises(ValueError, match="one per class"):
        unique_display_names(["a"], ["a", "b"])
