"""Normalised softmax, additive margin (CosFace) and adaptive per-negative margins."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dml_study.losses import (
    AdaptiveMarginLoss,
    AdditiveMarginLoss,
    NormSoftmaxLoss,
    TextDistanceTable,
    mean_margin,
)
from dml_study.losses.text import cosine_distances

GEN = torch.Generator().manual_seed(0)
EMB = torch.randn(10, 6, generator=GEN, dtype=torch.float64)
LABELS = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4, 1, 0])
TEXT = torch.randn(5, 7, generator=GEN, dtype=torch.float64).numpy()


def _copy_proxies(dst, src):
    with torch.no_grad():
        dst.proxies.copy_(src.proxies)
    return dst


def _manual_normsoftmax(emb, labels, proxies, scale):
    cos = F.normalize(emb, dim=1) @ F.normalize(proxies, dim=1).T
    return F.cross_entropy(scale * cos, labels)


def test_normsoftmax_equals_manual_and_margin_zero():
    ns = NormSoftmaxLoss(5, 6, scale=16.0).double()
    am = _copy_proxies(AdditiveMarginLoss(5, 6, scale=16.0, margin=0.0).double(), ns)
    expected = _manual_normsoftmax(EMB, LABELS, ns.proxies, 16.0)
    assert ns(EMB, LABELS).item() == pytest.approx(expected.item(), rel=1e-12)
    assert am(EMB, LABELS).item() == pytest.approx(expected.item(), rel=1e-12)


def test_cosface_hand_computed():
    s, m = 10.0, 0.3
    loss = AdditiveMarginLoss(3, 2, scale=s, margin=m).double()
    with torch.no_grad():
        loss.proxies.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    a = 0.4
    emb = torch.tensor([[math.cos(a), math.sin(a)]], dtype=torch.float64)
    cos = [math.cos(a), math.sin(a), -math.cos(a)]
    pos = math.exp(s * (cos[0] - m))
    expected = -math.log(pos / (pos + math.exp(s * cos[1]) + math.exp(s * cos[2])))
    assert loss(emb, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-12)


def test_margin_increases_loss():
    base = NormSoftmaxLoss(5, 6).double()
    am = _copy_proxies(AdditiveMarginLoss(5, 6, margin=0.2).double(), base)
    assert am(EMB, LABELS).item() > base(EMB, LABELS).item()


@pytest.mark.parametrize("mapping", ["inverse", "linear"])
def test_adaptive_with_zero_margins_is_normsoftmax(mapping):
    ns = NormSoftmaxLoss(5, 6).double()
    ad = AdaptiveMarginLoss(5, 6, text_embeddings=TEXT, m_min=0.0, m_max=0.0, mapping=mapping)
    ad = _copy_proxies(ad.double(), ns)
    assert ad(EMB, LABELS).item() == pytest.approx(ns(EMB, LABELS).item(), rel=1e-12)


def test_adaptive_constant_margin_equals_cosface():
    # +m on every negative ≡ −m on the positive (softmax is shift-invariant).
    am = AdditiveMarginLoss(5, 6, margin=0.25).double()
    ad = AdaptiveMarginLoss(5, 6, text_embeddings=TEXT, m_max=0.25, mapping="constant")
    ad = _copy_proxies(ad.double(), am)
    assert ad(EMB, LABELS).item() == pytest.approx(am(EMB, LABELS).item(), rel=1e-12)


def test_per_negative_margins_hand_computed_and_negatives_only():
    dist = np.array([[0.0, 0.2, 1.0], [0.2, 0.0, 0.6], [1.0, 0.6, 0.0]])
    ad = AdaptiveMarginLoss(3, 2, text_distances=dist, scale=5.0, m_min=0.1, m_max=0.5).double()
    # Off-diagonal range [0.2, 1.0] → d̃(0,1)=0, d̃(0,2)=1, d̃(1,2)=0.5; "inverse": m = 0.5 − 0.4 d̃.
    margins = ad.margins(torch.tensor([0, 1, 2]))
    expected = torch.tensor([[0.0, 0.5, 0.1], [0.5, 0.0, 0.3], [0.1, 0.3, 0.0]])
    torch.testing.assert_close(margins.float(), expected)
    with torch.no_grad():
        ad.proxies.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    a = 0.4
    emb = torch.tensor([[math.cos(a), math.sin(a)]], dtype=torch.float64)
    cos = [math.cos(a), math.sin(a), -math.cos(a)]
    # Label 1: positive logit s·cos1 unchanged, negatives 0 and 2 get +0.5 and +0.3.
    num = math.exp(5.0 * cos[1])
    den = num + math.exp(5.0 * (cos[0] + 0.5)) + math.exp(5.0 * (cos[2] + 0.3))
    assert ad(emb, torch.tensor([1])).item() == pytest.approx(-math.log(num / den), rel=1e-12)


def test_positive_margin_entry_has_no_effect():
    # Changing the (diagonal) self-distance must not change anything: margins hit negatives only.
    dist = cosine_distances(TEXT).astype(np.float64)
    a = AdaptiveMarginLoss(5, 6, text_distances=dist).double()
    dist_diag = dist.copy()
    np.fill_diagonal(dist_diag, 0.123)
    b = _copy_proxies(AdaptiveMarginLoss(5, 6, text_distances=dist_diag).double(), a)
    assert a(EMB, LABELS).item() == pytest.approx(b(EMB, LABELS).item(), rel=1e-12)
    assert (a.margins(LABELS)[torch.arange(10), LABELS] == 0).all()


def test_mapping_directions():
    dist = np.array([[0.0, 0.1, 0.9], [0.1, 0.0, 0.5], [0.9, 0.5, 0.0]])
    row0 = torch.tensor([0])
    inv = AdaptiveMarginLoss(3, 2, text_distances=dist, mapping="inverse").margins(row0)
    lin = AdaptiveMarginLoss(3, 2, text_distances=dist, mapping="linear").margins(row0)
    assert inv[0, 1] > inv[0, 2]  # close names → larger margin
    assert lin[0, 1] < lin[0, 2]  # close names → smaller margin
    assert inv[0, 1].item() == pytest.approx(0.25) and lin[0, 2].item() == pytest.approx(0.25)


def test_table_from_embeddings_equals_table_from_distances():
    labels = torch.tensor([0, 3, 4, 2])
    t1 = TextDistanceTable(text_embeddings=TEXT)
    t2 = TextDistanceTable(text_distances=cosine_distances(TEXT))
    off = ~F.one_hot(labels, 5).bool()
    torch.testing.assert_close(t1.rows(labels)[off], t2.rows(labels)[off], atol=1e-5, rtol=0)


def test_chunked_range_matches_full():
    from dml_study.losses.adaptive_margin import _offdiag_range_from_embeddings

    emb = F.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    dist = cosine_distances(emb.numpy())
    off = ~np.eye(50, dtype=bool)
    lo, hi = _offdiag_range_from_embeddings(emb, chunk=7)
    assert lo == pytest.approx(dist[off].min(), abs=1e-5)
    assert hi == pytest.approx(dist[off].max(), abs=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: AdditiveMarginLoss(5, 6, margin=0.2),
        lambda: NormSoftmaxLoss(5, 6),
        lambda: AdaptiveMarginLoss(5, 6, text_embeddings=TEXT),
    ],
)
def test_gradcheck(make):
    loss = make().double()
    emb = EMB.clone().requires_grad_(True)
    proxies = loss.proxies.detach().clone().requires_grad_(True)

    def fn(e, p):
        # functional_call swaps in `p` as the proxies so gradients flow to both inputs.
        return torch.func.functional_call(loss, {"proxies": p}, (e, LABELS))

    assert torch.autograd.gradcheck(fn, (emb, proxies), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"mapping": "exp"}, "mapping='exp' is not valid"),
        ({"m_min": 0.3, "m_max": 0.1}, "need 0 <= m_min <= m_max"),
        ({"text_embeddings": None}, "give exactly one of"),
        ({"text_embeddings": np.zeros((4, 3))}, "cover 4 classes but num_classes=5"),
    ],
)
def test_adaptive_bad_input(kw, match):
    args = {"text_embeddings": TEXT, **kw}
    with pytest.raises(ValueError, match=match):
        AdaptiveMarginLoss(5, 6, **args)


# ------------------------------------------------------------ equal mean margin (controls)


def test_mean_margin_hand_computed():
    # Off-diagonal distances 0.2, 1.0, 0.6 (each twice): min 0.2, max 1.0 → normalised
    # 0, 1, 0.5; mean 0.5. Inverse: 0.5 − 0.4·0.5 = 0.3; linear: 0.1 + 0.4·0.5 = 0.3.
    dist = np.array([[0.0, 0.2, 1.0], [0.2, 0.0, 0.6], [1.0, 0.6, 0.0]])
    assert mean_margin(dist, 0.1, 0.5, "inverse") == pytest.approx(0.3)
    # Skewed: distances 0.2, 0.3, 1.0 → normalised 0, 0.125, 1; mean 0.375.
    skew = np.array([[0.0, 0.2, 1.0], [0.2, 0.0, 0.3], [1.0, 0.3, 0.0]])
    assert mean_margin(skew, 0.1, 0.5, "inverse") == pytest.approx(0.5 - 0.4 * 0.375)
    assert mean_margin(skew, 0.1, 0.5, "linear") == pytest.approx(0.1 + 0.4 * 0.375)
    assert mean_margin(skew, 0.1, 0.5, "constant") == pytest.approx(0.5)


def test_mean_margin_equals_brute_force_mean_of_loss_margins():
    ad = AdaptiveMarginLoss(5, 6, text_embeddings=TEXT, m_min=0.05, m_max=0.25)
    margins = ad.margins(torch.arange(5)).double()  # (5, 5), zero on the diagonal
    brute = margins.sum().item() / (5 * 4)
    assert mean_margin(ad.table) == pytest.approx(brute, rel=1e-6)
    assert mean_margin(TEXT, distances=False) == pytest.approx(brute, rel=1e-6)
    # Chunked rows give the same mean.
    from dml_study.losses.adaptive_margin import mean_normalized_distance

    assert mean_normalized_distance(ad.table, chunk=2) == pytest.approx(
        mean_normalized_distance(ad.table), rel=1e-12
    )


def test_matched_constant_is_cosface_at_the_adaptive_mean():
    ad = AdaptiveMarginLoss(5, 6, text_embeddings=TEXT, mapping="inverse")
    matched = AdaptiveMarginLoss(5, 6, text_embeddings=TEXT, mapping="matched_constant")
    m_bar = mean_margin(ad.table)
    assert matched.matched_margin == pytest.approx(m_bar)
    cosface = _copy_proxies(AdditiveMarginLoss(5, 6, margin=m_bar).double(), matched.double())
    assert matched(EMB, LABELS).item() == pytest.approx(cosface(EMB, LABELS).item(), rel=1e-9)
    # Same mean margin as the adaptive arm over all class pairs, but constant.
    margins = matched.margins(torch.arange(5))
    off = ~torch.eye(5, dtype=torch.bool)
    assert margins[off].mean().item() == pytest.approx(
        ad.margins(torch.arange(5))[off].mean().item(), rel=1e-6
    )
    assert margins[off].std().item() == pytest.approx(0.0, abs=1e-7)
    linear = AdaptiveMarginLoss(5, 6, text_embeddings=TEXT, mapping="matched_constant",
                                match_mapping="linear")
    assert linear.matched_margin == pytest.approx(mean_margin(ad.table, mapping="linear"))


def test_matched_constant_bad_input():
    with pytest.raises(ValueError, match="match_mapping='matched_constant' is not valid"):
        AdaptiveMarginLoss(5, 6, text_embeddings=TEXT, mapping="matched_constant",
                           match_mapping="matched_constant")
    with pytest.raises(ValueError, match="mean_margin needs one of"):
        mean_margin(TEXT, mapping="matched_constant", distances=False)
    with pytest.raises(ValueError, match=">= 2 classes"):
        mean_margin(np.zeros((1, 1)))
