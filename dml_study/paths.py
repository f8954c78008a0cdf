"""Where the project's caches live: one resolver for all of them, and the names inside it.

Everything is kept under :func:`cache_root`:

- the embedded datasets ``icons-<size>/`` and ``glyphs-<size>/`` (each with its build lock
  ``<name>-<size>.lock``);
- the material their builders fetch and unpack, which no later step reads once a build is
  verified (:data:`DEBS_DIR`, :data:`ICON_THEMES_DIR`, :data:`GLYPH_FONTS_DIR`; removed after
  each verified build unless ``--keep-intermediate``);
- the sentence-encoder text embeddings (:data:`TEXT_EMBEDDINGS_DIR`), the frozen-tier
  features (:data:`FROZEN_FEATURES_DIR`), the image-verification records
  (:data:`VERIFY_RECORDS_DIR`) and the glyph classes' label fonts (:data:`LABEL_FONTS_DIR`).

``python -m dml_study.cache list`` shows each entry with its size and purpose
(:mod:`dml_study.cache`).
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "DML_STUDY_CACHE"

#: ``.deb`` files fetched with ``apt-get download`` by the embedded builders.
DEBS_DIR = "debs"
#: Icon themes unpacked from their ``.deb`` (read only while the icons dataset is built).
ICON_THEMES_DIR = "icon-themes"
#: Font files and Unihan unpacked from their ``.deb`` (read only while glyphs are built).
GLYPH_FONTS_DIR = "glyph-fonts"
#: Shared lock of the three folders above: builders hold it shared, cleaners exclusively.
INTERMEDIATE_LOCK = "intermediate.lock"
#: Sentence-encoder embeddings of class names (``<key>.npy``), see ``dml_study.losses.text``.
TEXT_EMBEDDINGS_DIR = "text_embeddings"
#: Backbone features of the frozen tier (``<dataset>-<backbone>-...npz``).
FROZEN_FEATURES_DIR = "frozen_features"
#: Which image files decoded, by (path, size, mtime): ``<dataset>.json``, see
#: ``dml_study.data.screening``.
VERIFY_RECORDS_DIR = "verified"
#: Subsets of the glyph dataset's own fonts holding every class character (kept after the
#: build): the figures' labels draw ``loquat (枇)`` with them on machines without a CJK font,
#: see ``dml_study.data.glyphs.write_label_fonts``.
LABEL_FONTS_DIR = "label-fonts"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$DML_STUDY_CACHE`` (if set and not empty), else
    ``~/.cache/dml_study``; ``~`` is expanded."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dml_study"
