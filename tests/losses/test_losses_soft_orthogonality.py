"""Soft Orthogonality: brute vs factorised path, orthonormal zero, tight-frame floor, gradcheck."""

import math

import pytest
import torch
import torch.nn.functional as F

from dml_study.losses import ProxyAnchorLoss, SoftOrthogonality, orthogonality_stats
from dml_study.losses.soft_orthogonality import (
    gram_residual_sq_brute,
    gram_residual_sq_factorized,
    so_floor,
)


def _explicit(p, gram="classes", normalize=True):
    """Independent reference: build the Gram matrix elementwise with einsum."""
    q = p / p.norm(dim=1, keepdim=True) if normalize else p
    g = torch.einsum("ik,jk->ij", q, q) if gram == "classes" else torch.einsum("ki,kj->ij", q, q)
    return ((g - torch.eye(g.shape[0], dtype=g.dtype)) ** 2).sum()


def _random(c, d, seed=0):
    return torch.randn(c, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(("c", "d"), [(5, 12), (40, 6), (7, 7)])
@pytest.mark.parametrize("gram", ["classes", "dims"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("method", ["auto", "brute", "factorized"])
def test_all_paths_equal_explicit_reference(c, d, gram, normalize, method):
    p = _random(c, d)
    so = SoftOrthogonality(1.0, gram=gram, normalize=normalize, method=method)
    torch.testing.assert_close(so(p), _explicit(p, gram, normalize), rtol=1e-10, atol=1e-10)


def test_factorized_identity_on_large_c():
    p = F.normalize(_random(3000, 16, seed=1), dim=1)
    torch.testing.assert_close(
        gram_residual_sq_factorized(p), gram_residual_sq_brute(p), rtol=1e-9, atol=1e-6
    )


def test_auto_uses_factorized_when_c_exceeds_d(monkeypatch):
    calls = []
    import dml_study.losses.soft_orthogonality as mod

    monkeypatch.setattr(mod, "gram_residual_sq_brute", lambda a: calls.append("brute") or a.sum())
    SoftOrthogonality(1.0)(_random(50, 4))  # C > d → factorised, never the C × C matrix
    assert calls == []
    SoftOrthogonality(1.0)(_random(4, 50))  # C < d → brute
    assert calls == ["brute"]


def test_zero_for_orthonormal_proxies():
    q, _ = torch.linalg.qr(_random(32, 10))  # (32, 10) with orthonormal columns
    rows = q.T  # 10 orthonormal rows in R^32
    assert SoftOrthogonality(1.0)(rows).item() == pytest.approx(0.0, abs=1e-12)
    # Orthonormal columns: the d × d Gram is the identity (row normalisation would break it).
    dims = SoftOrthogonality(1.0, gram="dims", normalize=False)
    assert dims(q).item() == pytest.approx(0.0, abs=1e-12)
    # Scaling rows does not matter after normalisation.
    assert SoftOrthogonality(1.0)(rows * 7.0).item() == pytest.approx(0.0, abs=1e-12)


def _union_of_bases(k, d, seed=0):
    bases = [torch.linalg.qr(_random(d, d, seed=seed + i))[0] for i in range(k)]
    return torch.cat(bases, dim=0)  # C = k·d unit rows, PᵀP = k·I: a tight frame


def _harmonic_frame(c):
    angles = torch.arange(c, dtype=torch.float64) * math.pi / c
    return torch.stack([angles.cos(), angles.sin()], dim=1)  # tight frame of C unit vectors in R²


@pytest.mark.parametrize("frame", [_union_of_bases(3, 8), _harmonic_frame(5), _harmonic_frame(9)])
def test_tight_frame_reaches_floor(frame):
    c, d = frame.shape
    floor = c * c / d - c
    assert SoftOrthogonality(1.0)(frame).item() == pytest.approx(floor, rel=1e-10)
    assert SoftOrthogonality(1.0, method="brute")(frame).item() == pytest.approx(floor, rel=1e-10)


@pytest.mark.parametrize("seed", range(5))
def test_random_proxies_stay_above_floor(seed):
    p = _random(30, 6, seed=seed)
    assert SoftOrthogonality(1.0)(p).item() > 30 * 30 / 6 - 30


@pytest.mark.parametrize("method", ["brute", "factorized"])
@pytest.mark.parametrize("gram", ["classes", "dims"])
@pytest.mark.parametrize("reduction", ["sum", "mean", "excess_mean"])
def test_gradcheck(method, gram, reduction):
    p = _random(6, 4, seed=3).requires_grad_(True)
    so = SoftOrthogonality(0.7, gram=gram, reduction=reduction, method=method)
    assert torch.autograd.gradcheck(so, (p,), eps=1e-6, atol=1e-6)


def test_mean_reduction_is_mean_squared_offdiagonal_cosine():
    p = _random(9, 5, seed=4)
    cos = F.normalize(p, dim=1) @ F.normalize(p, dim=1).T
    off = ~torch.eye(9, dtype=torch.bool)
    expected = cos[off].pow(2).mean()
    assert SoftOrthogonality(1.0, reduction="mean")(p).item() == pytest.approx(expected.item())


def test_lambda_scales_and_zero_lambda_is_zero():
    p = _random(8, 3)
    assert SoftOrthogonality(2.5)(p).item() == pytest.approx(2.5 * SoftOrthogonality(1.0)(p).item())
    assert SoftOrthogonality(0.0)(p).item() == 0.0


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"gram": "rows"}, "so_gram='rows' is not valid; choose one of \\['classes', 'dims'\\]"),
        ({"reduction": "max"}, "so_reduction='max' is not valid"),
        ({"lam": -1.0}, "so_lambda must be >= 0"),
    ],
)
def test_invalid_options(kw, match):
    with pytest.raises(ValueError, match=match):
        SoftOrthogonality(**kw)


def test_composes_with_proxy_loss_and_reports_separately():
    so = SoftOrthogonality(0.3)
    loss = ProxyAnchorLoss(6, 4, regularizer=so).double()
    emb = _random(8, 4, seed=9)
    labels = torch.tensor([0, 0, 1, 1, 2, 3, 4, 5])
    total = loss(emb, labels)
    plain = ProxyAnchorLoss(6, 4).double()
    with torch.no_grad():
        plain.proxies.copy_(loss.proxies)
    main = plain(emb, labels)
    penalty = so(loss.proxies)
    assert total.item() == pytest.approx(main.item() + penalty.item(), rel=1e-12)
    assert loss.last_terms["so"] == pytest.approx(penalty.item(), rel=1e-12)
    assert loss.last_terms["proxy_anchor"] == pytest.approx(main.item(), rel=1e-12)
    total.backward()
    expected_grad = torch.autograd.grad(main + so(plain.proxies), plain.proxies)[0]
    torch.testing.assert_close(loss.proxies.grad, expected_grad)


# ----------------------------------------------------------------- excess_mean reduction


def test_so_floor_hand_worked_values():
    # SOP: C = 11,318 proxies in d = 384: 11318² / 384 − 11318 = 322,268.26
    assert so_floor(11318, 384) == pytest.approx(11318**2 / 384 - 11318)
    assert so_floor(11318, 384) == pytest.approx(322268.26, abs=0.01)
    assert so_floor(100, 384) == 0.0  # CUB: C <= d, orthonormal proxies exist
    assert so_floor(6, 2) == pytest.approx(12.0)  # 36/2 − 6
    assert so_floor(6, 2, "dims") == pytest.approx(8.0)  # (6 − 2)² / 2
    with pytest.raises(ValueError, match="so_gram"):
        so_floor(3, 2, "rows")


@pytest.mark.parametrize("frame", [_union_of_bases(3, 8), _harmonic_frame(5), _harmonic_frame(9)])
@pytest.mark.parametrize("gram", ["classes", "dims"])
def test_excess_mean_is_zero_at_tight_frames(frame, gram):
    """A tight frame is the best arrangement for C > d: the excess over the floor is 0."""
    so = SoftOrthogonality(1.0, gram=gram, reduction="excess_mean")
    assert so(frame).item() == pytest.approx(0.0, abs=1e-10)


def test_excess_mean_hand_worked_example():
    # Three unit vectors in R²: e1, e2 and (e1 + e2)/√2. Cosines: 0, 1/√2, 1/√2.
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    frob = 2 * (0.0 + 0.5 + 0.5)  # ordered off-diagonal pairs
    floor = 9 / 2 - 3
    assert SoftOrthogonality(1.0)(p).item() == pytest.approx(frob)
    so = SoftOrthogonality(2.0, reduction="excess_mean")
    assert so(p).item() == pytest.approx(2.0 * (frob - floor) / 6)


@pytest.mark.parametrize(("c", "d"), [(7, 12), (40, 6)])
def test_excess_mean_equals_mean_minus_floor_and_has_the_same_gradient(c, d):
    p = _random(c, d, seed=5).requires_grad_(True)
    mean = SoftOrthogonality(1.0, reduction="mean")(p)
    excess = SoftOrthogonality(1.0, reduction="excess_mean")(p)
    assert excess.item() == pytest.approx(mean.item() - so_floor(c, d) / (c * (c - 1)))
    g_mean = torch.autograd.grad(mean, p)[0]
    g_excess = torch.autograd.grad(excess, p)[0]
    torch.testing.assert_close(g_mean, g_excess)


def test_excess_mean_unnormalised_has_no_floor():
    p = _random(10, 3, seed=6)
    mean = SoftOrthogonality(1.0, normalize=False, reduction="mean")(p)
    excess = SoftOrthogonality(1.0, normalize=False, reduction="excess_mean")(p)
    assert excess.item() == pytest.approx(mean.item())


def test_stats_report_each_form_consistently():
    p = _random(30, 6, seed=7)
    stats = orthogonality_stats(p)
    pairs = 30 * 29
    assert stats["so_frobenius"] == pytest.approx(SoftOrthogonality(1.0)(p).item())
    assert stats["so_mean"] == pytest.approx(stats["so_frobenius"] / pairs)
    expected = SoftOrthogonality(1.0, reduction="excess_mean")(p).item()
    assert stats["so_excess_mean"] == pytest.approx(expected)
    assert stats["so_excess_mean"] > 0
