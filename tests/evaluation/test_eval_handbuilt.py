"""Hand-built retrieval cases whose metrics are worked out by hand in the comments."""

import numpy as np
import pytest

from dml_study.evaluation import evaluate


def _angles(*theta: float) -> np.ndarray:
    t = np.asarray(theta)
    return np.stack([np.cos(t), np.sin(t)], axis=1).astype(np.float32)


def test_points_on_a_circle_self_retrieval():
    # angle:  0.0   0.1   0.12  0.35  2.0
    # label:  0     0     1     1     2 (lone)
    x = _angles(0.0, 0.1, 0.12, 0.35, 2.0)
    y = np.array([0, 0, 1, 1, 2])
    r = evaluate(x, y, ks=(1, 2, 3), nmi=False)
    # q0 (0.0):  0.1(0) 0.12(1) 0.35(1)  -> hit@1, R=1, AP=1, RP=1
    # q1 (0.1):  0.12(1) 0.0(0) 0.35(1)  -> miss@1, hit@2, R=1, AP=0, RP=0
    # q2 (0.12): 0.1(0) 0.0(0) 0.35(1)   -> hit@3 only, R=1, AP=0, RP=0
    # q3 (0.35): 0.12(1) ...             -> hit@1, R=1, AP=1, RP=1
    # q4: lone class -> excluded
    assert r.num_queries == 4
    assert r.excluded_queries == 1
    assert r.recall == pytest.approx({1: 0.5, 2: 0.75, 3: 1.0})
    assert r.map_at_r == pytest.approx(0.5)
    assert r.r_precision == pytest.approx(0.5)


def test_map_at_r_with_r_greater_than_one():
    # One query, gallery ranked by angle: labels 0, 1, 0, 0, 1 ; R = 3 positives.
    # first R=3 ranks: rel = 1, 0, 1 -> P(1) = 1, P(3) = 2/3 -> AP@R = (1 + 2/3) / 3,
    # RP = 2/3. Recall@1 = 1.
    q = _angles(0.0)
    g = _angles(0.1, 0.2, 0.3, 0.4, 0.5)
    r = evaluate(q, np.array([0]), g, np.array([0, 1, 0, 0, 1]), ks=(1,), nmi=False)
    assert r.map_at_r == pytest.approx((1 + 2 / 3) / 3)
    assert r.r_precision == pytest.approx(2 / 3)
    assert r.recall[1] == 1.0


def test_exact_duplicates_query_removed_by_index_not_by_rank():
    # Four identical embeddings: every similarity ties. Canonical order is by index, so
    # query i ranks the other three in increasing index order. Removing "the first
    # neighbour" instead of the query itself would be wrong for queries 2 and 3.
    x = np.ones((4, 3), dtype=np.float32)
    y = np.array([0, 0, 1, 1])
    r = evaluate(x, y, ks=(1, 2, 3), nmi=False)
    # q0: [1, 2, 3] -> labels 0,1,1 : hit@1, AP=1
    # q1: [0, 2, 3] -> labels 0,1,1 : hit@1, AP=1
    # q2: [0, 1, 3] -> labels 0,0,1 : hit@3, AP=0
    # q3: [0, 1, 2] -> labels 0,0,1 : hit@3, AP=0
    assert r.recall == pytest.approx({1: 0.5, 2: 0.5, 3: 1.0})
    assert r.map_at_r == pytest.approx(0.5)
    assert r.r_precision == pytest.approx(0.5)


def test_query_missing_from_its_own_tied_neighbour_list():
    # Four identical embeddings, R_max = 1 so only 2 neighbours are searched: queries 2 and
    # 3 are not among them (ties keep the smallest indices); the last entry is dropped.
    x = np.ones((4, 2), dtype=np.float32)
    y = np.array([5, 6, 7, 7])
    r = evaluate(x, y, ks=(1,), nmi=False)
    # q0, q1 lone; q2 -> [0] (label 5) miss; q3 -> [0] miss.
    assert r.num_queries == 2
    assert r.excluded_queries == 2
    assert r.recall[1] == 0.0
    assert r.map_at_r == 0.0


@pytest.mark.parametrize(("positive_index", "expected"), [(0, 1.0), (1, 0.0)])
def test_tie_between_positive_and_negative_broken_by_gallery_index(positive_index, expected):
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    g = np.array([[0.0, 1.0], [0.0, -1.0]], dtype=np.float32)  # both at similarity 0
    g_labels = np.array([1, 1])
    g_labels[positive_index] = 0
    r = evaluate(q, np.array([0]), g, g_labels, ks=(1,), nmi=False)
    assert r.recall[1] == expected


def test_k_larger_than_gallery_is_clamped_to_the_whole_gallery():
    x = _angles(0.0, 0.1, 1.0, 1.1, 3.0)
    y = np.array([0, 1, 1, 0, 1])
    r = evaluate(x, y, ks=(1, 4, 1000), nmi=False)
    # Self-retrieval: 4 candidates per query. K=4 and K=1000 both see the whole gallery,
    # so every query (each has a positive) is a hit.
    assert r.recall[4] == 1.0
    assert r.recall[1000] == 1.0
    assert r.recall[1] < 1.0  # q0's nearest (0.1) has the other label
    assert r.to_dict()["R@1000"] == 1.0


def test_query_gallery_counts_every_gallery_item_as_candidate():
    # Query/gallery: the query is not in the gallery, nothing is removed; R counts gallery
    # items with the query's label (2 here), and a query label absent from the gallery is
    # excluded.
    q = _angles(0.0, 2.0)
    g = _angles(0.0, 0.05, 0.1)
    r = evaluate(q, np.array([3, 9]), g, np.array([4, 3, 3]), ks=(1, 2), nmi=False)
    # q0: ranked labels 4, 3, 3 ; R=2 -> rel 0,1 -> AP = (1/2 * 1) / 2 = 0.25, RP = 0.5
    assert r.num_queries == 1
    assert r.excluded_queries == 1
    assert r.recall == {1: 0.0, 2: 1.0}
    assert r.map_at_r == pytest.approx(0.25)
    assert r.r_precision == pytest.approx(0.5)


def test_perfect_clusters_give_perfect_scores_and_nmi():
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)
    y = np.repeat(np.arange(8), 5)
    x = centres[y] + 0.01 * rng.standard_normal((40, 8)).astype(np.float32)
    r = evaluate(x, y, ks=(1, 2), nmi=True, seed=3)
    assert r.to_dict() == pytest.approx({"R@1": 1, "R@2": 1, "MAP@R": 1, "RP": 1, "NMI": 1})


def test_embeddings_are_normalised_inside():
    # Scaling a row must not change cosine retrieval.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 5)).astype(np.float32)
    y = rng.integers(0, 6, 60)
    scaled = x * rng.uniform(0.1, 50, (60, 1)).astype(np.float32)
    a = evaluate(x, y, ks=(1, 5), nmi=False)
    b = evaluate(scaled, y, ks=(1, 5), nmi=False)
    assert a.to_dict() == pytest.approx(b.to_dict(), abs=1e-12)
