"""create_loss registry and orthogonality_stats."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dml_study.losses import (
    AdaptiveMarginLoss,
    AdditiveMarginLoss,
    NormSoftmaxLoss,
    ProxyAnchorLoss,
    create_loss,
    orthogonality_stats,
)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("proxy_anchor", ProxyAnchorLoss),
        ("normsoftmax", NormSoftmaxLoss),
        ("additive_margin", AdditiveMarginLoss),
    ],
)
def test_names_build_losses_with_uniform_terms(name, cls):
    loss = create_loss(name, 4, 3, so_lambda=0.5, so_reduction="mean", proxy_init="orthogonal")
    assert type(loss) is cls
    assert loss.regularizer.lam == 0.5 and loss.regularizer.reduction == "mean"
    loss(torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 3]))
    assert {"loss", "so"} <= set(loss.last_terms) and loss.last_terms["so"] > 0


def test_normsoftmax_has_zero_margin():
    assert create_loss("normsoftmax", 4, 3).margin == 0.0


def test_loss_kwargs_are_forwarded():
    loss = create_loss("proxy_anchor", 4, 3, alpha=16, margin=0.2, seed=7)
    assert (loss.alpha, loss.margin) == (16.0, 0.2)
    assert torch.equal(loss.proxies, ProxyAnchorLoss(4, 3, seed=7).proxies)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown loss 'arcface'.*'adaptive_margin'"):
        create_loss("arcface", 4, 3)


def test_unknown_kwarg_lists_valid_kwargs():
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['temperature'\].*'so_lambda'"):
        create_loss("proxy_anchor", 4, 3, temperature=0.1)


def test_invalid_so_option_is_named():
    with pytest.raises(ValueError, match="so_gram='columns'"):
        create_loss("proxy_anchor", 4, 3, so_gram="columns")


def test_adaptive_from_array_npy_and_distances(tmp_path):
    emb = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    path = tmp_path / "text.npy"
    np.save(path, emb)
    a = create_loss("adaptive_margin", 4, 3, text_embeddings=emb)
    b = create_loss("adaptive_margin", 4, 3, text_embeddings=str(path))
    assert isinstance(a, AdaptiveMarginLoss)
    labels = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(a.margins(labels), b.margins(labels))
    c = create_loss("adaptive_margin", 4, 3, text_distances=np.ones((4, 4)) - np.eye(4))
    assert c.table.distances is not None


def test_adaptive_from_class_names_uses_text_module(monkeypatch, tmp_path):
    import dml_study.losses.text_sources as text_sources

    seen = {}

    def fake(names, cache_dir, template="{}"):
        seen.update(names=list(names), cache_dir=cache_dir)
        return np.eye(3, 5, dtype=np.float32)

    monkeypatch.setattr(text_sources, "class_name_embeddings", fake)
    loss = create_loss(
        "adaptive_margin", 3, 2, class_names=["a", "b", "c"], text_cache_dir=tmp_path
    )
    assert seen == {"names": ["a", "b", "c"], "cache_dir": tmp_path}
    assert loss.table.embeddings.shape == (3, 5)


def test_adaptive_text_source_glove_embeds_the_class_names(monkeypatch):
    import dml_study.losses.registry as registry

    seen = {}

    def fake(names, source, cache_dir=None, template="{}"):
        seen.update(names=list(names), source=source)
        return np.eye(3, 4, dtype=np.float32)

    monkeypatch.setattr(registry, "class_text_embeddings", fake)
    loss = create_loss("adaptive_margin", 3, 2, class_names=["a", "b", "c"], text_source="glove")
    assert seen == {"names": ["a", "b", "c"], "source": "glove"}
    assert loss.table.embeddings.shape == (3, 4)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({}, "needs exactly one of class_names"),
        ({"class_names": ["a", "b", "c"], "text_source": "bert"}, "unknown text_source 'bert'"),
        ({"text_distances": np.eye(3), "text_source": "glove"}, "pass class_names instead"),
        ({"class_names": ["a"], "text_distances": np.eye(3)}, "got \\['text_distances', 'class_n"),
        ({"class_names": ["a", "b"]}, "class_names has 2 names but num_classes=3"),
    ],
)
def test_adaptive_text_source_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        create_loss("adaptive_margin", 3, 2, **kw)


def test_stats_orthonormal_proxies():
    q, _ = torch.linalg.qr(torch.randn(16, 6, generator=torch.Generator().manual_seed(0)))
    stats = orthogonality_stats(q.T * 3.0)
    assert stats["mean_abs_cos"] == pytest.approx(0.0, abs=1e-6)
    assert stats["max_abs_cos"] == pytest.approx(0.0, abs=1e-6)
    assert stats["so_frobenius"] == pytest.approx(0.0, abs=1e-6)
    assert stats["effective_rank"] == pytest.approx(6.0, rel=1e-6)
    assert stats["so_floor"] == 0.0


def test_stats_match_brute_force_and_chunking():
    p = np.random.default_rng(1).normal(size=(40, 5))
    q = p / np.linalg.norm(p, axis=1, keepdims=True)
    cos = q @ q.T
    off = ~np.eye(40, dtype=bool)
    stats = orthogonality_stats(p, chunk=7)
    assert stats["mean_abs_cos"] == pytest.approx(np.abs(cos[off]).mean())
    assert stats["max_abs_cos"] == pytest.approx(np.abs(cos[off]).max())
    assert stats["so_frobenius"] == pytest.approx(((cos - np.eye(40)) ** 2).sum())
    assert stats["so_floor"] == pytest.approx(40 * 40 / 5 - 40)
    assert stats == pytest.approx(orthogonality_stats(torch.tensor(p), chunk=4096))


def test_stats_effective_rank_of_rank_one():
    v = F.normalize(torch.randn(1, 8, generator=torch.Generator().manual_seed(2)), dim=1)
    stats = orthogonality_stats(v.repeat(5, 1))
    assert stats["effective_rank"] == pytest.approx(1.0, abs=1e-6)
    assert stats["max_abs_cos"] == pytest.approx(1.0)
    assert math.isfinite(stats["so_frobenius"])


@pytest.mark.parametrize("name", ["proxy_anchor", "additive_margin"])
def test_loss_runs_in_float32_under_autocast(name):
    loss = create_loss(name, 5, 8, so_lambda=0.1)
    emb = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 1, 2, 3, 4])
    emb_bf16 = emb.to(torch.bfloat16)
    expected = loss(emb_bf16.float(), labels)  # same inputs, computed in float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(emb_bf16, labels)
    assert out.dtype == torch.float32
    # A bf16 cosine matmul would be off by ~1e-3 relative; float32 agrees to rounding.
    assert out.item() == pytest.approx(expected.item(), rel=1e-6)


def test_adaptive_text_buffers_are_not_checkpointed():
    loss = create_loss("adaptive_margin", 3, 2, text_embeddings=np.eye(3, dtype=np.float32))
    assert set(loss.state_dict()) == {"proxies"}


def test_orthogonal_proxy_init_and_invalid_init():
    from dml_study.losses import init_proxies

    p = init_proxies(6, 16, "orthogonal", seed=1)
    torch.testing.assert_close(p @ p.T, torch.eye(6), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"proxy_init='xavier' is not valid; choose one of"):
        create_loss("proxy_anchor", 4, 3, proxy_init="xavier")
