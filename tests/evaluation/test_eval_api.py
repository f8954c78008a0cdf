"""``evaluate``: argument validation, determinism, protocol details."""

import numpy as np
import pytest

from dml_study.evaluation import api, evaluate


def _data(n=60, classes=6, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = (np.eye(classes, 8)[y] + 0.8 * rng.standard_normal((n, 8))).astype(np.float32)
    return x, y


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ks": ()}, "ks must be"),
        ({"ks": (0, 1)}, "ks must be"),
        ({"ks": (1.5,)}, "ks must be"),
        ({"query_labels": np.zeros(5, int)}, "query_labels must be a 1-D array"),
        ({"query_labels": np.zeros(60)}, "integer class labels"),
        ({"gallery_embeddings": np.ones((4, 8))}, "given together"),
        (
            {"gallery_embeddings": np.ones((4, 7)), "gallery_labels": np.zeros(4, int)},
            "differ in dimension",
        ),
        (
            {"gallery_embeddings": np.ones((4, 8)), "gallery_labels": np.zeros(3, int)},
            "gallery_labels must be a 1-D array",
        ),
    ],
)
def test_bad_arguments_raise_a_clear_value_error(kwargs, message):
    x, y = _data()
    args = {"query_embeddings": x, "query_labels": y, **kwargs}
    with pytest.raises(ValueError, match=message):
        evaluate(**args)


def test_all_lone_queries_raise_instead_of_returning_nan():
    with pytest.raises(ValueError, match="no query has a relevant gallery item"):
        evaluate(np.eye(4), np.arange(4), nmi=False)


def test_single_embedding_cannot_be_self_retrieved():
    with pytest.raises(ValueError, match="at least 2"):
        evaluate(np.ones((1, 3)), np.zeros(1, int))


def test_results_are_deterministic_and_seed_only_affects_nmi():
    x, y = _data(n=300, classes=30, seed=1)
    a = evaluate(x, y, ks=(1, 4), seed=0)
    b = evaluate(x, y, ks=(1, 4), seed=0)
    c = evaluate(x, y, ks=(1, 4), seed=5)
    assert a == b
    assert (a.recall, a.map_at_r, a.r_precision) == (c.recall, c.map_at_r, c.r_precision)


def test_chunk_size_does_not_change_results():
    x, y = _data(n=200, seed=2)
    ref = evaluate(x, y, ks=(1, 2, 4, 8), nmi=False, chunk_size=4096).to_dict()
    for chunk_size in (1, 13, 64):
        assert evaluate(x, y, ks=(1, 2, 4, 8), nmi=False, chunk_size=chunk_size).to_dict() == ref


def test_duplicate_and_unsorted_ks_are_reported_once_in_order():
    x, y = _data()
    r = evaluate(x, y, ks=(8, 1, 2, 1), nmi=False)
    assert list(r.recall) == [1, 2, 8]


def test_recall_is_monotone_in_k():
    x, y = _data(n=300, classes=40, seed=3)
    r = evaluate(x, y, ks=(1, 2, 4, 8, 16, 32), nmi=False)
    values = list(r.recall.values())
    assert values == sorted(values) and values[0] < values[-1]


def test_query_gallery_nmi_clusters_the_queries_only():
    x, y = _data(n=120, classes=6, seed=4)
    qg = evaluate(x[:60], y[:60], x[60:], y[60:], ks=(1,), nmi=True, seed=0)
    self_q = evaluate(x[:60], y[:60], ks=(1,), nmi=True, seed=0)
    assert qg.nmi == self_q.nmi


def test_progress_bar_can_be_shown(capsys):
    x, y = _data()
    evaluate(x, y, nmi=False, progress=True, chunk_size=10)
    assert "kNN" in capsys.readouterr().err


def test_use_gpu_without_gpu_faiss_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(api, "gpu_available", lambda: False)
    x, y = _data()
    with pytest.raises(ValueError, match="use_gpu=True"):
        evaluate(x, y, use_gpu=True)
