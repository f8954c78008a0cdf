"""Where the project's caches live: one resolver for all of them.

The embedded datasets (``icons-<size>/``, ``glyphs-<size>/``, downloaded ``debs/``), the
text embeddings (``text_embeddings/``) and the frozen-tier features (``frozen_features/``)
are all kept under :func:`cache_root`.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "DML_STUDY_CACHE"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$DML_STUDY_CACHE`` (if set and not empty), else
    ``~/.cache/dml_study``; ``~`` is expanded."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dml_study"
