"""Proxy Anchor against pytorch-metric-learning (test-only oracle) and a hand-computed case."""

import math

import pytest
import torch
from pytorch_metric_learning.losses import ProxyAnchorLoss as PMLProxyAnchor

from dml_study.losses import ProxyAnchorLoss


def _pair(num_classes, dim, dtype, seed=0, **kw):
    ours = ProxyAnchorLoss(num_classes, dim, seed=seed, **kw).to(dtype)
    # PML's defaults are margin=0.1, alpha=32, cosine similarity (normalises both sides) and
    # kaiming_normal_(fan_out) proxies; copy ours so both see identical proxies.
    oracle = PMLProxyAnchor(num_classes, dim, margin=ours.margin, alpha=ours.alpha).to(dtype)
    with torch.no_grad():
        oracle.proxies.copy_(ours.proxies)
    return ours, oracle


def _loss_and_grads(loss_fn, emb, labels):
    emb = emb.clone().requires_grad_(True)
    value = loss_fn(emb, labels)
    value.backward()
    return value.detach(), emb.grad.clone(), loss_fn.proxies.grad.clone()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("num_classes", "labels"),
    [
        (5, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]),  # every class present
        (12, [0, 0, 3, 3, 3, 7, 7, 11]),  # most classes absent from the batch
        (4, [2, 2, 2, 2]),  # one class only: no negatives for its proxy
    ],
)
def test_equals_pml_loss_and_gradients(dtype, num_classes, labels):
    gen = torch.Generator().manual_seed(1)
    labels = torch.tensor(labels)
    emb = torch.randn(len(labels), 16, generator=gen, dtype=dtype)
    ours, oracle = _pair(num_classes, 16, dtype)
    v1, ge1, gp1 = _loss_and_grads(ours, emb, labels)
    v2, ge2, gp2 = _loss_and_grads(oracle, emb, labels)
    rtol, atol = (1e-5, 1e-12) if dtype == torch.float64 else (1e-5, 1e-6)
    torch.testing.assert_close(v1, v2, rtol=rtol, atol=atol)
    torch.testing.assert_close(ge1, ge2, rtol=rtol, atol=atol)
    torch.testing.assert_close(gp1, gp2, rtol=rtol, atol=atol)


def test_equals_pml_with_custom_alpha_margin():
    gen = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 30, (40,), generator=gen)
    emb = torch.randn(40, 8, generator=gen, dtype=torch.float64)
    ours, oracle = _pair(30, 8, torch.float64, alpha=16.0, margin=0.2, seed=5)
    torch.testing.assert_close(ours(emb, labels), oracle(emb, labels), rtol=1e-5, atol=0)


def test_hand_computed_two_class_case():
    alpha, delta, a = 32.0, 0.1, 0.3
    loss = ProxyAnchorLoss(2, 2, alpha=alpha, margin=delta).double()
    with torch.no_grad():
        loss.proxies.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.5]]))  # norms must not matter
    emb = torch.tensor([[math.cos(a), math.sin(a)], [0.0, 3.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    # s(x0,p0)=cos a, s(x0,p1)=sin a, s(x1,p0)=0, s(x1,p1)=1; both proxies have a positive.
    pos = math.log1p(math.exp(-alpha * (math.cos(a) - delta))) + math.log1p(
        math.exp(-alpha * (1.0 - delta))
    )
    neg = math.log1p(math.exp(alpha * (0.0 + delta))) + math.log1p(
        math.exp(alpha * (math.sin(a) + delta))
    )
    expected = pos / 2 + neg / 2
    assert loss(emb, labels).item() == pytest.approx(expected, rel=1e-12)

    # Only class 0 present: P+ = {p0}; p0 has no negatives (log 1 = 0); divide neg by |P| = 2.
    expected_single = math.log1p(math.exp(-alpha * (math.cos(a) - delta))) + 0.5 * math.log1p(
        math.exp(alpha * (math.sin(a) + delta))
    )
    out = loss(emb[:1], labels[:1]).item()
    assert out == pytest.approx(expected_single, rel=1e-12)


def test_stable_for_huge_alpha():
    loss = ProxyAnchorLoss(3, 4, alpha=1e4)
    emb = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    value = loss(emb, torch.tensor([0, 0, 1, 1, 2, 2]))
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(emb.grad).all()
    assert torch.isfinite(loss.proxies.grad).all()


def test_last_terms_and_param_groups():
    loss = ProxyAnchorLoss(3, 4)
    value = loss(torch.randn(4, 4), torch.tensor([0, 1, 1, 2]))
    assert set(loss.last_terms) == {"loss", "proxy_anchor", "so"}
    assert loss.last_terms["so"] == 0.0
    assert loss.last_terms["loss"] == pytest.approx(value.item())
    groups = loss.param_groups()
    assert groups[0]["name"] == "proxies" and groups[0]["params"][0] is loss.proxies


def test_kaiming_fan_out_init_scale_and_seed():
    a = ProxyAnchorLoss(2000, 64, seed=3).proxies
    b = ProxyAnchorLoss(2000, 64, seed=3).proxies
    c = ProxyAnchorLoss(2000, 64, seed=4).proxies
    assert torch.equal(a, b) and not torch.equal(a, c)
    # kaiming_normal_(mode="fan_out") on a (C, d) tensor: std = sqrt(2 / C).
    assert a.std().item() == pytest.approx(math.sqrt(2 / 2000), rel=0.03)


@pytest.mark.parametrize(
    ("emb_shape", "labels", "match"),
    [
        ((4, 5), [0, 1, 1, 2], "embeddings must have shape"),
        ((4, 4), [0, 1, 1], "labels must have shape"),
        ((4, 4), [0, 1, 1, 3], r"labels must lie in \[0, 2\]"),
    ],
)
def test_bad_input_errors(emb_shape, labels, match):
    with pytest.raises(ValueError, match=match):
        ProxyAnchorLoss(3, 4)(torch.randn(*emb_shape), torch.tensor(labels))
