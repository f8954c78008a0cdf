"""The many-class embedded dataset: CJK characters drawn by many Debian font designs.

Why glyphs: two of the SO paper's four benchmarks (SOP: 11,318 train classes; In-Shop: 3,997)
have far more classes ``C`` than embedding dimensions ``d``, where ``C`` proxies cannot all be
orthogonal: the Gram matrix ``P P^T`` of unit proxies has rank <= d, so
``||P P^T - I||_F^2 >= C^2/d - C`` (the classes-Gram floor). The ``icons`` dataset (~170
classes per split) cannot reach that regime. Debian ships dozens of independently designed
CJK fonts and the Unihan database; a character drawn by many designs is a class with many
instances — an offline, SOP-like retrieval problem (test characters are unseen in training)
with a text modality (the English gloss) for the adaptive margins.

- instance = one font design's drawing of a character, rendered with Pillow/FreeType as black
  on white, cropped to its ink, scaled so its longer side fills ``BOX_FRACTION`` of the image
  and centred; stored as ``size`` px (default 64) grayscale PNG, converted to RGB on load;
- one face per design family (:data:`FACES`: regular weight, one regional face of a ``.ttc``);
  a face is not an instance of a character its ``cmap`` lacks (no tofu), whose rendering is
  empty or equal to the face's ``.notdef`` glyph;
- fonts derived from one another must not count twice. Every candidate face draws the fixed
  :data:`PROBE` characters; a face whose binarised renderings have a mean IoU above
  :data:`FACE_IOU_THRESHOLD` with an earlier face of :data:`FACES` is dropped (forks such as
  Takao = IPA, WenQuanYi Micro Hei = Droid Sans Fallback, UmePlus = Ume, MMCedar = Motoya
  Cedar). Partial copies (a font filling its gaps with another's glyphs) are caught per
  character: an instance whose IoU with an earlier kept instance of the same character exceeds
  :data:`GLYPH_IOU_THRESHOLD` is dropped. The manifest records every dropped face and the reason,
  and per design how many instances were rejected as tofu, empty or near-duplicate;
- classes are code points of the CJK Unified Ideographs block drawn by >= ``min_designs`` (8)
  distinct designs. The split does not leak: a character and its variants (Unihan
  ``kTraditionalVariant``, ``kSimplifiedVariant``, ``kZVariant``, ``kSemanticVariant``,
  ``kSpecializedSemanticVariant``) form a connected component that goes to one split, chosen by
  the parity of the sha256 of the component's smallest code point. Within each split the
  characters drawn by the most designs come first (ties: code point) and the first
  ``num_classes // 2`` are kept: ``num_classes`` is a build parameter (default
  :data:`DEFAULT_NUM_CLASSES`); of a class's accepted designs at most ``max_designs``
  (:data:`DEFAULT_MAX_DESIGNS`) are stored, chosen by the sha256 of ``<class>/<design>`` (so
  every class gets its own subset of the designs); and
  ``get_dataset("glyphs", split, num_classes=n)`` loads the first ``n // 2`` classes of each
  split of a bigger build (e.g. a CUB-sized subset);
- class names (text modality): the Unihan ``kDefinition`` gloss, else the character and its
  ``kMandarin`` reading, else the character; raw names ``U+4E00 一``. Glosses repeat (in the
  default build 4 glosses name two train characters each, 5 two test characters, and 4 occur
  on both sides, e.g. ``loquat`` = 枇, 杷), so the dataset's ``display_names`` (figures,
  tables) add the character: ``loquat (枇)`` (:func:`display_name`). The class names the
  adaptive-margin loss embeds stay the bare glosses (see ``docs/models.md``, "Glyph class
  names and the adaptive margins", for what identical glosses do to the margins).

Build it with ``python -m dml_study.data.glyphs build``; ``get_dataset("glyphs", ...)`` builds it
on first use. Fetching, locking, caching and the manifest are the shared embedded-dataset
builder's (:mod:`dml_study.data.embedded`).
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import io
import logging
import os
import re
import shutil
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from dml_study.atomic_io import atomic_write_with
from dml_study.paths import DEBS_DIR, GLYPH_FONTS_DIR, LABEL_FONTS_DIR

from . import embedded
from .base import EmbeddedBuildError, SplitRecords
from .embedded import cache_root

NAME = "glyphs"
MANIFEST_FORMAT = 1
DEFAULT_SIZE = 64
DEFAULT_MIN_DESIGNS = 8
#: Default total class count (half per split): >= 1,000 test classes, as in the issue.
DEFAULT_NUM_CLASSES = 2400
#: Designs stored per class (a different seeded subset per class): ~41 are available for the
#: most widely drawn characters, but 12 keep a CPU epoch at ~14k training images (CUB has ~30
#: images per class, SOP ~5).
DEFAULT_MAX_DESIGNS = 12
#: The glyph's longer side fills this fraction of the image (a small white border).
BOX_FRACTION = 0.875
#: Glyphs are rendered at this multiple of the output size and downsampled (anti-aliasing).
SUPERSAMPLE = 2
#: Faces whose probe renderings overlap more than this (mean IoU) are one design. Measured on
#: the faces of :data:`FACES`: forks score 0.89-1.0 (Takao/IPA 1.0, Micro Hei/Droid 0.996,
#: UKai/KaitiM Big5 0.947, IPAex/IPA 0.95, IPAmj/IPA Mincho 0.94, UMing/Mingti2L 0.91,
#: Maruberi/Cedar 0.89); the closest independent designs 0.82 (cwTeX Kai vs KaitiM Big5).
FACE_IOU_THRESHOLD = 0.85
#: An instance overlapping an earlier kept instance of its character more than this is a copy.
GLYPH_IOU_THRESHOLD = 0.9
#: Ink threshold of the binarised renderings (gray < 128 is ink).
INK_THRESHOLD = 128
#: Classes come from the CJK Unified Ideographs block (U+4E00..U+9FFF).
BLOCK = (0x4E00, 0x9FFF)
#: Unihan variant fields whose links put characters into one split.
VARIANT_FIELDS = ("kTraditionalVariant", "kSimplifiedVariant", "kZVariant",
                  "kSemanticVariant", "kSpecializedSemanticVariant")
UNIHAN_PACKAGE = "unicode-data"
UNIHAN_FILES = ("Unihan_Readings.txt.bz2", "Unihan_Variants.txt.bz2")
UNIHAN_DIR = "usr/share/unicode"
#: Common characters drawn by every candidate face to find near-identical designs.
PROBE = (
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着"
    "去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主"
    "行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二"
    "理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走"
    "电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市"
    "眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提"
    "感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物"
)
#: At least this many probe characters must be drawn by both faces to compare them.
MIN_PROBE_OVERLAP = 20


@dataclass(frozen=True)
class FontFace:
    """One font design: a face (``index`` in a ``.ttc``) of a file shipped by a Debian package.

    ``design`` names the instance files (``images/4E00/<design>.png``).
    """

    design: str
    package: str
    path: str  # inside the package, without the leading "/"
    index: int = 0


_T, _O = "usr/share/fonts/truetype", "usr/share/fonts/opentype"
#: Candidate designs, one face per family, in order of preference: of two near-identical
#: faces the later one is dropped, so originals come before their forks. Left out: bold and
#: light weights, proportional (``P``) and ``Mono`` variants, other regional faces of a
#: collection, Misaki (an 8x8-dot bitmap design: complex characters are illegible),
#: KanjiStrokeOrders (stroke numbers drawn into every glyph) and Klee (a 64 MB package).
FACES: tuple[FontFace, ...] = (
    FontFace("noto-sans-cjk", "fonts-noto-cjk", f"{_O}/noto/NotoSansCJK-Regular.ttc", 0),
    FontFace("noto-serif-cjk", "fonts-noto-cjk", f"{_O}/noto/NotoSerifCJK-Regular.ttc", 0),
    FontFace("ar-pl-ukai", "fonts-arphic-ukai", f"{_T}/arphic/ukai.ttc", 0),
    FontFace("ar-pl-uming", "fonts-arphic-uming", f"{_T}/arphic/uming.ttc", 0),
    FontFace("ar-pl-kaitim-big5", "fonts-arphic-bkai00mp",
             f"{_T}/arphic-bkai00mp/bkai00mp.ttf"),
    FontFace("ar-pl-mingti2l-big5", "fonts-arphic-bsmi00lp",
             f"{_T}/arphic-bsmi00lp/bsmi00lp.ttf"),
    FontFace("ar-pl-sungtil-gb", "fonts-arphic-gbsn00lp", f"{_T}/arphic-gbsn00lp/gbsn00lp.ttf"),
    FontFace("ar-pl-kaitim-gb", "fonts-arphic-gkai00mp", f"{_T}/arphic-gkai00mp/gkai00mp.ttf"),
    FontFace("droid-sans-fallback", "fonts-droid-fallback",
             f"{_T}/droid/DroidSansFallbackFull.ttf"),
    FontFace("wqy-zenhei", "fonts-wqy-zenhei", f"{_T}/wqy/wqy-zenhei.ttc", 0),
    FontFace("wqy-microhei", "fonts-wqy-microhei", f"{_T}/wqy/wqy-microhei.ttc", 0),
    FontFace("ipa-gothic", "fonts-ipafont-gothic", f"{_O}/ipafont-gothic/ipag.ttf"),
    FontFace("ipa-mincho", "fonts-ipafont-mincho", f"{_O}/ipafont-mincho/ipam.ttf"),
    FontFace("ipaex-gothic", "fonts-ipaexfont-gothic", f"{_O}/ipaexfont-gothic/ipaexg.ttf"),
    FontFace("ipaex-mincho", "fonts-ipaexfont-mincho", f"{_O}/ipaexfont-mincho/ipaexm.ttf"),
    FontFace("ipamj-mincho", "fonts-ipamj-mincho", f"{_T}/ipamj/ipamjm.ttf"),
    FontFace("takao-gothic", "fonts-takao-gothic", f"{_T}/takao-gothic/TakaoGothic.ttf"),
    FontFace("takao-mincho", "fonts-takao-mincho", f"{_T}/takao-mincho/TakaoMincho.ttf"),
    FontFace("vl-gothic", "fonts-vlgothic", f"{_T}/vlgothic/VL-Gothic-Regular.ttf"),
    FontFace("hanazono-mincho", "fonts-hanazono", f"{_T}/hanazono/HanaMinA.ttf"),
    FontFace("sawarabi-gothic", "fonts-sawarabi-gothic",
             f"{_T}/sawarabi-gothic/sawarabi-gothic-medium.ttf"),
    FontFace("sawarabi-mincho", "fonts-sawarabi-mincho",
             f"{_T}/sawarabi-mincho/sawarabi-mincho-medium.ttf"),
    FontFace("motoya-cedar", "fonts-motoya-l-cedar", f"{_T}/motoya-l-cedar/MTLc3m.ttf"),
    FontFace("motoya-maruberi", "fonts-motoya-l-maruberi",
             f"{_T}/motoya-l-maruberi/MTLmr3m.ttf"),
    FontFace("mmcedar", "fonts-mmcedar", f"{_T}/mmcedar/MMCedar.ttf"),
    FontFace("seto", "fonts-seto", f"{_T}/seto/setofont.ttf"),
    FontFace("aoyagi-kouzan", "fonts-aoyagi-kouzan-t", f"{_T}/aoyagi-kouzan-t/AoyagiKouzanT.ttf"),
    FontFace("kouzan-mouhitsu", "fonts-kouzan-mouhitsu",
             f"{_T}/kouzan-mouhitsu/kouzan-mouhitsu.ttf"),
    FontFace("aoyagi-soseki", "fonts-aoyagi-soseki", f"{_T}/aoyagi-soseki/aoyagi-soseki.ttf"),
    FontFace("biz-ud-gothic", "fonts-morisawa-bizud-gothic",
             f"{_T}/bizud-gothic/BIZUDGothic-Regular.ttf"),
    FontFace("biz-ud-mincho", "fonts-morisawa-bizud-mincho",
             f"{_T}/bizud-mincho/BIZUDMincho-Regular.ttf"),
    FontFace("lxgw-wenkai", "fonts-lxgw-wenkai", f"{_T}/lxgw-wenkai/LXGWWenKai-Regular.ttf"),
    FontFace("cwtex-ming", "fonts-cwtex-ming", f"{_T}/cwtex/cwming.ttf"),
    FontFace("cwtex-kai", "fonts-cwtex-kai", f"{_T}/cwtex/cwkai.ttf"),
    FontFace("cwtex-fangsong", "fonts-cwtex-fs", f"{_T}/cwtex/cwfs.ttf"),
    FontFace("cwtex-heibold", "fonts-cwtex-heib", f"{_T}/cwtex/cwheib.ttf"),
    FontFace("cwtex-yen", "fonts-cwtex-yen", f"{_T}/cwtex/cwyen.ttf"),
    FontFace("baekmuk-batang", "fonts-baekmuk", f"{_T}/baekmuk/batang.ttf"),
    FontFace("baekmuk-dotum", "fonts-baekmuk", f"{_T}/baekmuk/dotum.ttf"),
    FontFace("baekmuk-gulim", "fonts-baekmuk", f"{_T}/baekmuk/gulim.ttf"),
    FontFace("baekmuk-headline", "fonts-baekmuk", f"{_T}/baekmuk/hline.ttf"),
    FontFace("un-batang", "fonts-unfonts-core", f"{_T}/unfonts-core/UnBatang.ttf"),
    FontFace("un-dotum", "fonts-unfonts-core", f"{_T}/unfonts-core/UnDotum.ttf"),
    FontFace("un-gungseo", "fonts-unfonts-core", f"{_T}/unfonts-core/UnGungseo.ttf"),
    FontFace("nanum-gothic", "fonts-nanum", f"{_T}/nanum/NanumGothic.ttf"),
    FontFace("nanum-barun-gothic", "fonts-nanum", f"{_T}/nanum/NanumBarunGothic.ttf"),
    FontFace("ume-gothic", "fonts-horai-umefont", f"{_T}/horai-umefont/ume-tgo4.ttf"),
    FontFace("ume-mincho", "fonts-horai-umefont", f"{_T}/horai-umefont/ume-tmo3.ttf"),
    FontFace("umeplus-gothic", "fonts-umeplus", f"{_T}/umeplus/umeplus-gothic.ttf"),
    FontFace("kiloji", "fonts-kiloji", f"{_T}/kiloji/kiloji.ttf"),
    FontFace("komatuna", "fonts-komatuna", f"{_T}/komatuna/komatuna.ttf"),
    FontFace("mona", "fonts-mona", f"{_T}/mona/mona.ttf"),
    FontFace("monapo", "fonts-monapo", f"{_T}/monapo/monapo.ttf"),
    FontFace("dejima-mincho", "fonts-dejima-mincho",
             f"{_T}/dejima-mincho/dejima-mincho-r227.ttf"),
)


@dataclass(frozen=True)
class FaceSource:
    """A face whose file is on disk, with the version of the package it comes from."""

    face: FontFace
    version: str
    file: Path


# --------------------------------------------------------------------------- locations


def dataset_dir(cache_dir: str | os.PathLike[str] | None = None, size: int = DEFAULT_SIZE) -> Path:
    """Where the rendered dataset of ``size`` px lives."""
    return cache_root(cache_dir) / f"{NAME}-{size}"


def class_id(cp: int) -> str:
    """Class id of a code point: ``0x4E00`` -> ``"4E00"``."""
    return f"{cp:04X}"


def raw_name(cp: int) -> str:
    """Raw class name: ``U+4E00 一``."""
    return f"U+{cp:04X} {chr(cp)}"


# --------------------------------------------------------------------------- Unihan


@dataclass(frozen=True)
class Unihan:
    """The Unihan fields the dataset uses: English gloss, Mandarin reading, variant links."""

    definition: Mapping[int, str]
    mandarin: Mapping[int, str]
    variants: Mapping[int, tuple[int, ...]]


_CP = re.compile(r"U\+([0-9A-F]{4,6})")


def parse_unihan(readings: Iterable[str], variants: Iterable[str]) -> Unihan:
    """Parse the tab-separated ``Unihan_Readings.txt`` and ``Unihan_Variants.txt`` lines."""
    definition: dict[int, str] = {}
    mandarin: dict[int, str] = {}
    for line in readings:
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 3 or not parts[0].startswith("U+"):
            continue
        cp = int(parts[0][2:], 16)
        if parts[1] == "kDefinition":
            definition[cp] = parts[2].strip()
        elif parts[1] == "kMandarin":
            mandarin[cp] = parts[2].split()[0]
    links: dict[int, set[int]] = defaultdict(set)
    for line in variants:
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 3 or parts[1] not in VARIANT_FIELDS:
            continue
        cp = int(parts[0][2:], 16)
        for other in _CP.findall(parts[2]):
            links[cp].add(int(other, 16))
    return Unihan(definition, mandarin, {cp: tuple(sorted(v)) for cp, v in links.items()})


def read_unihan(unicode_dir: Path) -> Unihan:
    """Read the two Unihan files (``.txt.bz2`` or ``.txt``) from ``unicode_dir``."""
    def lines(name: str) -> list[str]:
        path = unicode_dir / name
        if path.is_file():
            return bz2.open(path, "rt", encoding="utf-8").readlines()
        plain = unicode_dir / name.removesuffix(".bz2")
        if plain.is_file():
            return plain.read_text(encoding="utf-8").splitlines()
        raise EmbeddedBuildError(f"no {name} in {unicode_dir} (package {UNIHAN_PACKAGE})")

    return parse_unihan(lines(UNIHAN_FILES[0]), lines(UNIHAN_FILES[1]))


def class_text(cp: int, unihan: Unihan) -> str:
    """Text-modality name: the English gloss, else ``"<char> <reading>"``, else the char."""
    gloss = unihan.definition.get(cp)
    if gloss:
        return gloss
    reading = unihan.mandarin.get(cp)
    return f"{chr(cp)} {reading}" if reading else chr(cp)


def display_name(cp: int, text: str) -> str:
    """Unique display name of a class: its text plus the character, ``loquat (枇)``.

    ``text`` is the class's text-modality name (:func:`class_text`); when it already holds
    the character (no gloss: ``"<char> <reading>"`` or the character alone) it is returned
    as it is. Unique because the character is.
    """
    char = chr(cp)
    return text if char in text else f"{text} ({char})"


def variant_components(cps: Iterable[int], unihan: Unihan) -> dict[int, int]:
    """``{code point: smallest code point of its variant component}`` (union-find).

    Links through characters outside ``cps`` count too: two characters sharing a variant
    that is itself not a class still land in one split.
    """
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for cp, others in unihan.variants.items():
        for other in others:
            a, b = find(cp), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {cp: find(cp) for cp in cps}


def split_of(root: int) -> str:
    """``"train"``/``"test"`` of a component, by the parity of sha256 of its smallest code point."""
    return "train" if hashlib.sha256(class_id(root).encode()).digest()[0] % 2 == 0 else "test"


# --------------------------------------------------------------------------- rendering


def load_face(path: str | os.PathLike[str], index: int, size: int) -> ImageFont.FreeTypeFont:
    """The FreeType face at the supersampled rendering size."""
    # The basic layout engine: one code point, one glyph, the same with or without libraqm.
    return ImageFont.truetype(str(path), size * SUPERSAMPLE, index=index,
                              layout_engine=ImageFont.Layout.BASIC)


def render_glyph(font: ImageFont.FreeTypeFont, char: str, size: int) -> np.ndarray | None:
    """``size`` x ``size`` uint8 gray image of ``char``: black ink on white, cropped to its ink,
    longer side scaled to ``BOX_FRACTION * size`` (aspect kept), centred. ``None`` when empty."""
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (4 * big, 4 * big), 0)
    ImageDraw.Draw(canvas).text((big, big), char, font=font, fill=255)
    bbox = canvas.getbbox()
    if bbox is None:
        return None
    ink = canvas.crop(bbox)
    scale = BOX_FRACTION * size / max(ink.size)
    ink = ink.resize((max(1, round(ink.width * scale)), max(1, round(ink.height * scale))),
                     Image.Resampling.LANCZOS)
    out = Image.new("L", (size, size), 0)
    out.paste(ink, ((size - ink.width) // 2, (size - ink.height) // 2))
    return 255 - np.asarray(out)


def notdef_glyph(font: ImageFont.FreeTypeFont, size: int) -> np.ndarray | None:
    """The face's ``.notdef`` rendering (a noncharacter is mapped to glyph 0 by every font)."""
    return render_glyph(font, "\U0010ffff", size)


def binarise(image: np.ndarray) -> np.ndarray:
    """Ink mask of a rendering."""
    return image < INK_THRESHOLD


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ink masks (aligned: both are centred and box-scaled)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def png_bytes(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image, mode="L").save(out, format="PNG", optimize=False)
    return out.getvalue()


def face_coverage(path: str | os.PathLike[str], index: int) -> set[int]:
    """Code points of :data:`BLOCK` in the face's Unicode ``cmap`` (fontTools)."""
    from fontTools.ttLib import TTFont

    # Some fonts' post tables lack glyph names; fontTools logs that, the cmap is unaffected.
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    font = TTFont(str(path), fontNumber=index, lazy=True)
    try:
        cmap = font.getBestCmap() or {}
    finally:
        font.close()
    return {cp for cp in cmap if BLOCK[0] <= cp <= BLOCK[1]}


Rendering = np.ndarray | str  # an image, or why there is none: "tofu" / "empty"


def _render_job(job: tuple[str, int, int, tuple[int, ...]]) -> list[tuple[int, Rendering]]:
    """Render code points ``cps`` in one face: the image, ``"empty"`` (no ink) or ``"tofu"``
    (the rendering is the face's ``.notdef`` glyph)."""
    path, index, size, cps = job
    font = load_face(path, index, size)
    notdef = notdef_glyph(font, size)
    out: list[tuple[int, Rendering]] = []
    for cp in cps:
        image = render_glyph(font, chr(cp), size)
        if image is None:
            out.append((cp, "empty"))
        elif notdef is not None and np.array_equal(image, notdef):
            out.append((cp, "tofu"))
        else:
            out.append((cp, image))
    return out


def _run_jobs(jobs: list, pool: Any, progress: bool = False, desc: str = "") -> list:
    """``_render_job`` over ``jobs``, in ``pool`` (a process pool) or here when it is None."""
    results = pool.imap(_render_job, jobs) if pool is not None else map(_render_job, jobs)
    return list(tqdm(results, total=len(jobs), desc=desc, disable=not progress))


@contextmanager
def _pool(num_workers: int) -> Iterator[Any]:
    """A spawn process pool of ``num_workers`` (None for 1: render in this process)."""
    if num_workers <= 1:
        yield None
        return
    with get_context("spawn").Pool(num_workers) as pool:
        yield pool


# --------------------------------------------------------------------------- designs


def dedupe_faces(
    sources: Sequence[FaceSource], size: int, pool: Any = None, progress: bool = True,
) -> tuple[list[FaceSource], list[dict]]:
    """Drop faces near-identical to an earlier one on :data:`PROBE`; returns (kept, dropped).

    ``dropped`` entries: ``{"design", "reason"}`` naming the earlier design and the mean IoU.
    """
    probe = tuple(sorted({ord(c) for c in PROBE}))
    jobs = [(str(s.file), s.face.index, size, probe) for s in sources]
    masks = []
    for result in _run_jobs(jobs, pool, progress, "probe font designs"):
        masks.append({cp: binarise(img) for cp, img in result if not isinstance(img, str)})
    covered = [face_coverage(s.file, s.face.index) for s in sources]
    kept: list[int] = []
    dropped: list[dict] = []
    for i, src in enumerate(sources):
        reason = None
        mine = {cp: m for cp, m in masks[i].items() if cp in covered[i]}
        if not mine:
            reason = "draws none of the probe characters"
        for j in kept:
            shared = [cp for cp in mine if cp in masks[j] and cp in covered[j]]
            if len(shared) < MIN_PROBE_OVERLAP:
                continue
            score = float(np.mean([iou(mine[cp], masks[j][cp]) for cp in shared]))
            if score > FACE_IOU_THRESHOLD:
                reason = (f"near-identical to {sources[j].face.design}: mean IoU {score:.3f} "
                          f"> {FACE_IOU_THRESHOLD} over {len(shared)} probe characters")
                break
        if reason is None:
            kept.append(i)
        else:
            dropped.append({"design": src.face.design, "reason": reason})
    return [sources[i] for i in kept], dropped


def select_instances(
    renders: Mapping[str, Rendering | None],
    covered: Mapping[str, bool],
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Instances of one character: ``renders`` by design (in :data:`FACES` order; ``None`` =
    not rendered, a string = why not, see :func:`_render_job`).

    Returns ``(kept images, {design: rejection reason})`` with reasons ``"tofu"`` (not in the
    cmap, or the ``.notdef`` glyph), ``"empty"`` and ``"near-duplicate"`` (IoU with an earlier
    kept instance above :data:`GLYPH_IOU_THRESHOLD`).
    """
    kept: dict[str, np.ndarray] = {}
    kept_masks: list[np.ndarray] = []
    rejected: dict[str, str] = {}
    for design, image in renders.items():
        if not covered.get(design, False) or image is None:
            rejected[design] = "tofu"
            continue
        if isinstance(image, str):
            rejected[design] = image
            continue
        mask = binarise(image)
        if not mask.any():
            rejected[design] = "empty"
            continue
        if any(iou(mask, other) > GLYPH_IOU_THRESHOLD for other in kept_masks):
            rejected[design] = "near-duplicate"
            continue
        kept[design] = image
        kept_masks.append(mask)
    return kept, rejected


# --------------------------------------------------------------------------- building


def build_from_sources(
    sources: Sequence[FaceSource],
    unihan: Unihan,
    out_dir: Path,
    size: int = DEFAULT_SIZE,
    min_designs: int = DEFAULT_MIN_DESIGNS,
    num_classes: int = DEFAULT_NUM_CLASSES,
    max_designs: int = DEFAULT_MAX_DESIGNS,
    packages: Sequence[Mapping[str, str]] = (),
    num_workers: int = 2,
    progress: bool = True,
) -> dict:
    """Render the dataset from font files into ``out_dir``; returns the manifest.

    Characters are rendered in chunks, most widely drawn first, until each split has
    ``num_classes // 2`` classes with >= ``min_designs`` accepted instances (or candidates
    run out), so the build cost grows with ``num_classes``, not with the fonts' coverage.
    """
    _check_args(size, min_designs, num_classes, max_designs)
    with _pool(num_workers) as pool:
        faces, dropped, images, accepted, rejected = _render_classes(
            sources, unihan, size, min_designs, num_classes, pool, progress)
    available = {cp: len(kept) for cp, kept in images.items()}
    images = {cp: _subset(cp, kept, max_designs) for cp, kept in images.items()}
    classes = sorted(images)
    files = {f"images/{class_id(cp)}/{design}.png": png_bytes(image)
             for cp in classes for design, image in sorted(images[cp].items())}
    manifest = {
        "format": MANIFEST_FORMAT,
        "size": size,
        "min_designs": min_designs,
        "num_classes_requested": num_classes,
        "max_designs": max_designs,
        "box_fraction": BOX_FRACTION,
        "face_iou_threshold": FACE_IOU_THRESHOLD,
        "glyph_iou_threshold": GLYPH_IOU_THRESHOLD,
        "packages": sorted({(p["package"], p["version"]) for p in packages}),
        "faces": [
            {"design": s.face.design, "package": s.face.package, "file": s.face.path,
             "index": s.face.index, "version": s.version}
            for s in faces
        ],
        "dropped_faces": dropped,
        "rejected_instances": {d: dict(sorted(r.items())) for d, r in rejected.items()},
        "renderer": {**embedded.library_versions(("pillow", "fonttools")),
                     "freetype2": _freetype_version()},
        "num_classes": len(classes),
        "num_images": len(files),
        "classes": [class_id(cp) for cp in classes],
        "names": {class_id(cp): class_text(cp, unihan) for cp in classes},
        "split": {s: sorted(class_id(cp) for cp in accepted[s]) for s in ("train", "test")},
        "order": {s: [class_id(cp) for cp in accepted[s]] for s in ("train", "test")},
        "counts": {class_id(cp): len(images[cp]) for cp in classes},
        "designs_available": {class_id(cp): available[cp] for cp in classes},
    }
    manifest["packages"] = [{"package": p, "version": v} for p, v in manifest["packages"]]
    return embedded.publish(out_dir, files, manifest)


def _check_args(size: int, min_designs: int, num_classes: int, max_designs: int) -> None:
    embedded.check_positive(size=size, min_designs=min_designs, num_classes=num_classes,
                            max_designs=max_designs)
    if max_designs < min_designs:
        raise ValueError(f"max_designs ({max_designs}) must be >= min_designs ({min_designs})")


def _subset(cp: int, kept: dict[str, np.ndarray], max_designs: int) -> dict[str, np.ndarray]:
    """At most ``max_designs`` of a class's instances, by sha256 of ``<class>/<design>``."""
    rank = sorted(kept, key=lambda d: hashlib.sha256(f"{class_id(cp)}/{d}".encode()).digest())
    chosen = set(rank[:max_designs])
    return {d: image for d, image in kept.items() if d in chosen}


def _render_classes(
    sources: Sequence[FaceSource], unihan: Unihan, size: int, min_designs: int,
    num_classes: int, pool: Any, progress: bool,
) -> tuple[list[FaceSource], list[dict], dict[int, dict[str, np.ndarray]],
           dict[str, list[int]], dict[str, dict[str, int]]]:
    """Drop near-identical faces, then render candidates chunk by chunk (see the caller)."""
    faces, dropped = dedupe_faces(sources, size, pool, progress)
    coverage = {s.face.design: face_coverage(s.file, s.face.index) for s in faces}
    counts: dict[int, int] = defaultdict(int)
    for cps in coverage.values():
        for cp in cps:
            counts[cp] += 1
    eligible = sorted(cp for cp, n in counts.items() if n >= min_designs)
    roots = variant_components(eligible, unihan)
    queues: dict[str, list[int]] = {"train": [], "test": []}
    for cp in sorted(eligible, key=lambda c: (-counts[c], c)):
        queues[split_of(roots[cp])].append(cp)
    target = num_classes // 2
    accepted: dict[str, list[int]] = {"train": [], "test": []}
    images: dict[int, dict[str, np.ndarray]] = {}
    rejected: dict[str, dict[str, int]] = {s.face.design: defaultdict(int) for s in faces}
    bar = tqdm(total=2 * target, desc=f"render glyphs ({size}px)", disable=not progress)
    while any(len(accepted[s]) < target and queues[s] for s in accepted):
        chunk: list[int] = []
        for split, queue in queues.items():
            need = target - len(accepted[split])
            if need > 0:
                take = min(512, max(32, need + need // 4))  # bounded memory per chunk
                chunk += queue[:take]
                del queue[:take]
        # Each face renders only what its cmap covers; the rest is tofu by definition.
        jobs = [(str(s.file), s.face.index, size,
                 tuple(cp for cp in chunk if cp in coverage[s.face.design])) for s in faces]
        renders: dict[int, dict[str, Rendering]] = defaultdict(dict)
        for src, result in zip(faces, _run_jobs(jobs, pool), strict=True):
            for cp, image in result:
                renders[cp][src.face.design] = image
        for cp in chunk:
            split = split_of(roots[cp])
            if len(accepted[split]) >= target:
                continue
            ordered = {s.face.design: renders[cp].get(s.face.design) for s in faces}
            covered = {d: cp in coverage[d] for d in ordered}
            kept, why = select_instances(ordered, covered)
            for design, reason in why.items():
                if covered[design]:  # outside its cmap a face makes no claim
                    rejected[design][reason] += 1
            if len(kept) < min_designs:
                continue
            images[cp] = kept
            accepted[split].append(cp)
            bar.update()
    bar.close()
    return faces, dropped, images, accepted, rejected


def _freetype_version() -> str:
    from PIL import features

    return str(features.version("freetype2"))


# --------------------------------------------------------------------------- packages


def _install_hint(packages: Sequence[str]) -> str:
    return embedded.install_hint(packages, f"{NAME}-<size>/", " (and `pip install fonttools`)")


def fetch_sources(
    faces: Sequence[FontFace], work_dir: Path, deb_dir: Path,
    progress: bool = True, num_workers: int = 2,
) -> tuple[list[FaceSource], Path, list[dict[str, str]]]:
    """Font files and the Unihan folder: installed ones as they are, the others downloaded
    as .deb and unpacked (only the files used) into ``work_dir``.

    Returns ``(face sources, Unihan folder, [{"package", "version"}, ...])``.
    """
    versions: dict[str, str] = {}
    files: dict[FontFace, Path] = {}
    for face in faces:
        path = Path("/") / face.path
        version = embedded.installed_version(face.package) if path.is_file() else None
        if version is not None:
            files[face], versions[face.package] = path, version
    unicode_dir = Path("/") / UNIHAN_DIR
    version = embedded.installed_version(UNIHAN_PACKAGE)
    if version is not None and all((unicode_dir / f).is_file() for f in UNIHAN_FILES):
        versions[UNIHAN_PACKAGE] = version
    members: dict[str, list[str]] = defaultdict(list)
    for face in faces:
        if face not in files:
            members[face.package].append(f"./{face.path}")
    if UNIHAN_PACKAGE not in versions:
        members[UNIHAN_PACKAGE] += [f"./{UNIHAN_DIR}/{f}" for f in UNIHAN_FILES]
    debs = embedded.fetch_debs(sorted(members), deb_dir, _install_hint(sorted(members)))

    def unpack(package: str) -> tuple[str, str]:
        target = work_dir / package
        wanted = sorted(set(members[package]))
        if not all((target / m).is_file() for m in wanted):  # absent, or from other FACES
            shutil.rmtree(target, ignore_errors=True)
            embedded.unpack_deb(debs[package], wanted, target)
        return package, embedded.deb_version(debs[package])

    for package, version in embedded.parallel_map(unpack, sorted(members), num_workers,
                                                  progress, "unpack font packages"):
        versions[package] = version
    for face in faces:
        if face not in files:
            files[face] = work_dir / face.package / face.path
            if not files[face].is_file():
                raise EmbeddedBuildError(f"{debs[face.package]} has no {face.path}")
    if UNIHAN_PACKAGE in members:
        unicode_dir = work_dir / UNIHAN_PACKAGE / UNIHAN_DIR
    sources = [FaceSource(f, versions[f.package], files[f]) for f in faces]
    packages = [{"package": p, "version": v} for p, v in sorted(versions.items())]
    return sources, unicode_dir, packages


# --------------------------------------------------------------------------- label fonts


def class_code_points(manifest: Mapping[str, Any]) -> set[int]:
    """The code points of a glyph dataset's classes (inverse of :func:`class_id`)."""
    return {int(c, 16) for c in manifest["classes"]}


def label_fonts_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the class characters' label fonts live: ``<cache>/label-fonts``."""
    return cache_root(cache_dir) / LABEL_FONTS_DIR


def _font_suffix(font: Any) -> str:
    return ".otf" if font.sfntVersion == "OTTO" else ".ttf"


def write_label_fonts(sources: Sequence[FaceSource], code_points: Iterable[int],
                      out_dir: Path) -> list[Path]:
    """Subsets of the dataset's own faces that draw every character of ``code_points``.

    Figures label glyph classes ``loquat (枇)``; a machine without a CJK font would show the
    code point instead (``dml_study.study.report.plots.readable_text``), and the build
    deletes the unpacked fonts. So before it does, the first face of ``sources`` (in
    :data:`FACES` order: Noto Sans CJK in the default build) that has every character is cut
    down to those characters with fontTools' subsetter (no layout features, names kept so
    matplotlib knows its family) and written to ``out_dir/<design>-labels.{otf,ttf}``
    (atomically; about 0.6 MB for the 2,400 default classes). When no face has them all, as few
    faces as a greedy cover needs are written, each with the characters it adds. Returns the
    files written; a character no face has is left to the code-point fallback.
    """
    from fontTools import subset
    from fontTools.ttLib import TTFont

    need = set(code_points)
    maps = [(src, set(TTFont(src.file, fontNumber=src.face.index, lazy=True).getBestCmap()))
            for src in sources]
    complete = [src for src, cmap in maps if need <= cmap]
    picks: list[tuple[FaceSource, set[int]]] = [(complete[0], set(need))] if complete else []
    left = set(need) if not complete else set()
    while left:
        src, cmap = max(maps, key=lambda item: len(item[1] & left))
        if not cmap & left:
            break
        picks.append((src, cmap & left))
        left -= cmap
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src, chars in picks:
        font = TTFont(src.file, fontNumber=src.face.index)
        options = subset.Options()
        options.layout_features = []
        options.notdef_outline = True
        subsetter = subset.Subsetter(options)
        subsetter.populate(unicodes=sorted(chars))
        subsetter.subset(font)
        path = out_dir / f"{src.face.design}-labels{_font_suffix(font)}"
        atomic_write_with(path, font.save)
        written.append(path)
    return written


def label_fonts_missing(out_dir: Path, code_points: Iterable[int]) -> set[int]:
    """The characters of ``code_points`` that no label font in ``out_dir`` has."""
    from fontTools.ttLib import TTFont, TTLibError

    need = set(code_points)
    for path in sorted(out_dir.glob("*-labels.*")) if out_dir.is_dir() else []:
        try:
            need -= set(TTFont(path, lazy=True).getBestCmap() or {})
        except (OSError, TTLibError):  # a damaged file counts as missing
            continue
    return need


def ensure_label_fonts(cache_dir: str | os.PathLike[str] | None = None,
                       size: int = DEFAULT_SIZE, progress: bool = True,
                       keep_intermediate: bool = False) -> list[Path]:
    """Label fonts for a glyph dataset that was built without them (before they existed).

    Downloads the dataset's font packages one by one, in :data:`FACES` order, until every
    class character is covered (usually the first, ``fonts-noto-cjk``), writes the subsets
    (:func:`write_label_fonts`) and removes the downloads again. Returns the files written
    (none when the fonts were already there).
    """
    root = cache_root(cache_dir)
    manifest = read_manifest(dataset_dir(root, size))
    if manifest is None:
        raise EmbeddedBuildError(f"no complete glyph dataset in {dataset_dir(root, size)}: "
                                 "build it first with `python -m dml_study.data.glyphs build`")
    chars = class_code_points(manifest)
    out_dir = label_fonts_dir(root)
    if not label_fonts_missing(out_dir, chars):
        return []
    designs = {f["design"] for f in manifest["faces"]}
    faces = [f for f in FACES if f.design in designs]
    work_dir, deb_dir = root / GLYPH_FONTS_DIR, root / DEBS_DIR
    written: list[Path] = []
    with embedded.using_intermediates(root):
        left = set(chars)
        for face in faces:
            sources, _, _ = fetch_sources([face], work_dir, deb_dir, progress, 1)
            written += write_label_fonts(sources, left, out_dir)
            left = label_fonts_missing(out_dir, chars)
            if not left:
                break
    if not keep_intermediate:
        embedded.remove_intermediates(root, [work_dir, *embedded.deb_files(
            deb_dir, sorted({f.package for f in faces} | {UNIHAN_PACKAGE}))])
    return written


def build_glyphs(
    cache_dir: str | os.PathLike[str] | None = None,
    size: int = DEFAULT_SIZE,
    min_designs: int = DEFAULT_MIN_DESIGNS,
    num_classes: int = DEFAULT_NUM_CLASSES,
    max_designs: int = DEFAULT_MAX_DESIGNS,
    faces: Sequence[FontFace] = FACES,
    num_workers: int = 2,
    progress: bool = True,
    force: bool = False,
    keep_intermediate: bool = False,
) -> tuple[Path, dict]:
    """Build (or find) the glyph dataset; returns ``(dataset dir, manifest)``.

    A complete dataset with the same size, ``min_designs``, ``num_classes`` and
    ``max_designs`` is reused as is
    (no-op). The fonts' and Unihan's .debs (``<cache>/debs``) and the unpacked files
    (``<cache>/glyph-fonts``) are read by nothing once the dataset is published (class names
    are in the manifest); after the published images verify against the manifest they are
    removed (:func:`dml_study.data.embedded.clean_after_build`), unless
    ``keep_intermediate``. A re-build fetches them again with ``apt-get download``.
    """
    _check_args(size, min_designs, num_classes, max_designs)
    embedded.check_positive(num_workers=num_workers)
    root = cache_root(cache_dir)
    out_dir = dataset_dir(root, size)

    def existing() -> dict | None:
        manifest = None if force else read_manifest(out_dir)
        params = ("min_designs", "num_classes_requested", "max_designs")
        same = manifest is not None and tuple(manifest.get(k) for k in params) == (
            min_designs, num_classes, max_designs)
        return manifest if same else None

    def build() -> dict:
        try:
            import fontTools  # noqa: F401
        except ImportError as err:
            raise EmbeddedBuildError(
                f"no glyph dataset in {out_dir} and fonttools is missing to build it: "
                f"`pip install fonttools` (or install the project with the [offline] extra)"
            ) from err
        work_dir, deb_dir = root / GLYPH_FONTS_DIR, root / DEBS_DIR
        with embedded.using_intermediates(root):
            try:
                sources, unicode_dir, packages = fetch_sources(faces, work_dir, deb_dir,
                                                               progress, num_workers)
            except EmbeddedBuildError as err:
                raise EmbeddedBuildError(
                    f"cannot build the glyph dataset in {out_dir}: {err}") from err
            manifest = build_from_sources(sources, read_unihan(unicode_dir), out_dir, size,
                                          min_designs, num_classes, max_designs, packages,
                                          num_workers, progress)
            write_label_fonts(sources, class_code_points(manifest), label_fonts_dir(root))
        if not keep_intermediate:
            used = sorted({f.package for f in faces} | {UNIHAN_PACKAGE})
            embedded.clean_after_build(root, out_dir, manifest,
                                       [work_dir, *embedded.deb_files(deb_dir, used)])
        return manifest

    return out_dir, embedded.locked_build(root, f"{NAME}-{size}", existing, build)


def read_manifest(out_dir: Path) -> dict | None:
    """The manifest of a *complete* dataset in ``out_dir`` (every listed file exists), else None."""
    return embedded.read_manifest(out_dir, MANIFEST_FORMAT)


verify_manifest = embedded.verify_manifest


def load_records(
    split: str,
    cache_dir: str | os.PathLike[str] | None = None,
    size: int = DEFAULT_SIZE,
    num_classes: int | None = None,
    build: bool = True,
    progress: bool = True,
) -> SplitRecords:
    """Records of ``train``/``test``; builds the dataset first when ``build``.

    ``num_classes``: keep the first ``num_classes // 2`` classes of the split (most widely
    drawn first) — a smaller study on the same build.
    """
    out_dir = dataset_dir(cache_dir, size)
    out_dir, manifest = embedded.complete_or_build(
        out_dir, read_manifest(out_dir), build,
        lambda: build_glyphs(cache_dir, size=size, progress=progress),
        "glyph", f"python -m dml_study.data.glyphs build --size {size}",
    )
    if split not in manifest["split"]:
        raise ValueError(f"unknown split {split!r} for glyphs; valid: {sorted(manifest['split'])}")
    names = manifest["order"][split]
    if num_classes is not None:
        embedded.check_positive(num_classes=num_classes)
        if num_classes // 2 > len(names):
            raise ValueError(f"num_classes={num_classes} asks for {num_classes // 2} {split} "
                             f"classes but the build in {out_dir} has {len(names)}; rebuild "
                             f"with `python -m dml_study.data.glyphs build --classes "
                             f"{num_classes} --force`")
        names = names[: max(1, num_classes // 2)]
    paths, ids = embedded.class_files(out_dir, manifest, sorted(names))
    return SplitRecords(
        paths=paths,
        class_ids=ids,
        class_names={n: manifest["names"][n] for n in names},
        raw_class_names={n: raw_name(int(n, 16)) for n in names},
        display_names={n: display_name(int(n, 16), manifest["names"][n]) for n in names},
    )


# --------------------------------------------------------------------------- CLI


def summary(out_dir: Path, manifest: dict) -> str:
    """Human-readable counts of a built dataset."""
    counts = np.array(list(manifest["counts"].values()))
    available = np.array(list(manifest["designs_available"].values()))
    mb = sum((out_dir / rel).stat().st_size for rel in manifest["files"]) / 1e6
    lines = [
        f"glyphs dataset: {manifest['num_classes']} classes, {manifest['num_images']} images "
        f"({manifest['size']} px, {len(manifest['faces'])} designs, "
        f"{len(manifest['dropped_faces'])} near-identical faces dropped, {mb:.1f} MB of PNG)",
        f"  designs per class: min {counts.min()}, median {int(np.median(counts))}, "
        f"max {counts.max()} (of median {int(np.median(available))} available)",
    ]
    return "\n".join([*lines, *embedded.split_summary(out_dir, manifest)])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dml_study.data.glyphs build [--cache-dir D] [--size 64] [--classes N]``."""

    def add_options(b: argparse.ArgumentParser) -> None:
        b.add_argument("--classes", type=int, default=DEFAULT_NUM_CLASSES,
                       help="total classes (half per split)")
        b.add_argument("--min-designs", type=int, default=DEFAULT_MIN_DESIGNS,
                       help="a class needs this many distinct designs")
        b.add_argument("--max-designs", type=int, default=DEFAULT_MAX_DESIGNS,
                       help="designs stored per class (a seeded subset per class)")

    def build(args: argparse.Namespace) -> tuple[Path, dict]:
        built = build_glyphs(
            args.cache_dir, size=args.size, min_designs=args.min_designs,
            num_classes=args.classes, max_designs=args.max_designs,
            num_workers=args.workers, progress=not args.quiet,
            force=args.force, keep_intermediate=args.keep_intermediate,
        )
        # A dataset built before the label fonts existed gets them now (a download).
        ensure_label_fonts(args.cache_dir, size=args.size, progress=not args.quiet,
                           keep_intermediate=args.keep_intermediate)
        return built

    return embedded.build_main(
        argv, module="dml_study.data.glyphs", description=__doc__, what="glyph",
        sources="fonts", default_size=DEFAULT_SIZE, add_options=add_options, build=build,
        summary=summary, errors=(EmbeddedBuildError, ValueError),
    )


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "FACES",
    "PROBE",
    "EmbeddedBuildError",
    "FaceSource",
    "FontFace",
    "Unihan",
    "binarise",
    "build_from_sources",
    "build_glyphs",
    "class_code_points",
    "class_text",
    "dataset_dir",
    "dedupe_faces",
    "display_name",
    "ensure_label_fonts",
    "iou",
    "label_fonts_dir",
    "label_fonts_missing",
    "load_records",
    "main",
    "notdef_glyph",
    "parse_unihan",
    "raw_name",
    "read_manifest",
    "read_unihan",
    "render_glyph",
    "select_instances",
    "split_of",
    "summary",
    "variant_components",
    "verify_manifest",
    "write_label_fonts",
]
