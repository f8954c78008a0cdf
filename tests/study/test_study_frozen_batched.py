"""The batched frozen tier against the sequential trainer (the reference), run by run.

``mode="exact"`` must give bit-identical run directories (every history value, metric,
proxy and embedding; both trainers on one thread); ``mode="fast"`` the same training to
float32 rounding (the bounds asserted here and their justification are in
``docs/frozen-tier.md``). The fused kernels of ``mode="fast"`` are checked against the loss
modules and autograd, the optimiser over per-run views against ``torch.optim.AdamW`` step
by step, and a run with a non-finite loss must fail alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dml_study.config import load_config, replace
from dml_study.losses.proxy_anchor import log1p_sum_exp_masked
from dml_study.losses.soft_orthogonality import gram_residual_sq_brute
from dml_study.study.tiers import frozen, frozen_fused
from dml_study.study.tiers import frozen_batched as fb
from dml_study.training.errors import RunExistsError
from dml_study.training.run_dir import RunDirectory


@pytest.fixture(autouse=True)
def one_thread():
    """Both trainers on one thread: ``mode="exact"`` is bit-identical at equal thread counts
    of one (with more, torch splits one run's GEMM between threads but a batched GEMM by
    runs, which sums in another order; docs/frozen-tier.md)."""
    import faiss

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before)
    faiss.omp_set_num_threads(before)


RUN_FILES = ("config.yaml", "provenance.json", "history.json", "history.csv", "metrics.json",
             "proxies.npy", "proxies_init.npy", "test_embeddings.npz",
             "train_class_recall.npy")
#: Values that are timings, not results.
TIMINGS = {"time_s", "train_time_s"}


def _features(classes: int = 10, per_class: int = 6, dim: int = 24, views: int = 3,
              noise: float = 0.8) -> frozen.FrozenFeatures:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2 * classes, dim))
    labels = np.repeat(np.arange(classes), per_class)

    def sample(offset: int, n_views: int | None = None) -> np.ndarray:
        shape = (len(labels), dim) if n_views is None else (n_views, len(labels), dim)
        return (centres[labels + offset] + noise * rng.normal(size=shape)).astype(np.float16)

    return frozen.FrozenFeatures(
        train_views=sample(0, views), train_eval=sample(0), train_labels=labels,
        test=sample(classes), test_labels=labels,
        class_names=tuple(f"class {i}" for i in range(classes)), key="synthetic",
    )


def _config(tmp_path: Path, **kw):
    base = {"embedding_dim": 8, "epochs": 3, "batch_size": 20, "m_per_class": 2,
            "results_dir": str(tmp_path), "nmi": False}
    base.update(kw)
    return load_config("icons", **base)


def _text(tmp_path: Path, classes: int = 10) -> str:
    path = tmp_path / "text.npy"
    np.save(path, np.random.default_rng(1).normal(size=(classes, 6)).astype(np.float32))
    return str(path)


def _cases(tmp_path: Path) -> dict[str, list[dict]]:
    text = _text(tmp_path)
    ada = {"loss": "adaptive_margin"}
    return {
        # the seeds of an arm
        "pa_seeds": [{"seed": s} for s in range(3)],
        # a tuning batch: every hyperparameter differs, SO of every form
        "pa_so_mixed": [
            {"seed": 0},
            {"seed": 1, "so_lambda": 0.1},
            {"seed": 2, "so_lambda": 1.0, "lr": 1e-3, "weight_decay": 1e-3},
            {"seed": 3, "so_lambda": 0.01, "so_gram": "dims", "optim.head_lr_mult": 3.0},
            {"seed": 4, "so_lambda": 0.1, "so_normalize": False, "optim.proxy_lr_mult": 30.0},
            {"seed": 5, "so_lambda": 0.1, "so_reduction": "excess_mean", "nmi": True},
            {"seed": 6, "loss.params": {"alpha": 16.0, "margin": 0.2}, "grad_clip_norm": None},
            {"seed": 7, "so_lambda": 0.1, "so_reduction": "mean", "proxy_init": "orthogonal",
             "schedule.warmup_epochs": 1.0, "schedule.min_lr_ratio": 0.1},
        ],
        # embedding_dim == feature dim (24): no head, the features are the embeddings
        "identity_head": [{"seed": s, "embedding_dim": 24, "so_lambda": 0.1 * s}
                          for s in range(3)],
        "additive_margin": [
            {"seed": 0, "loss": "additive_margin"},
            {"seed": 1, "loss": "normsoftmax", "so_lambda": 0.1},
            {"seed": 2, "loss": "additive_margin", "loss.params": {"margin": 0.3, "scale": 30.0}},
        ],
        "adaptive_and_constant_margin": [
            {"seed": 0, **ada, "loss.params": {"text_embeddings": text}},
            {"seed": 0, **ada, "loss.params": {"text_embeddings": text,
                                               "mapping": "matched_constant"}},
            {"seed": 1, **ada, "so_lambda": 0.1,
             "loss.params": {"text_embeddings": text, "scale": 10.0, "mapping": "linear"}},
            {"seed": 2, "loss": "additive_margin", "loss.params": {"margin": 0.15}},
        ],
    }


CASES = ("pa_seeds", "pa_so_mixed", "identity_head", "additive_margin",
         "adaptive_and_constant_margin")


def _train_both(tmp_path: Path, kws: list[dict], features=None, mode: str = "exact"):
    features = features or _features()
    names = [f"run{i}" for i in range(len(kws))]
    seq_root, bat_root = tmp_path / "seq", tmp_path / "bat"
    for name, kw in zip(names, kws, strict=True):
        config = _config(seq_root, run_name=name, **kw)
        frozen.train_frozen(config, features, RunDirectory.for_run(seq_root, name))
    configs = [_config(bat_root, run_name=name, **kw) for name, kw in zip(names, kws, strict=True)]
    fb.train_frozen_batch(configs, features, [RunDirectory.for_run(bat_root, n) for n in names],
                          mode=mode)
    return [(seq_root / "runs" / n, bat_root / "runs" / n) for n in names]


def _read(run: Path, name: str):
    return json.loads((run / name).read_text())


def _assert_same_structure(a: Path, b: Path) -> None:
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for name in RUN_FILES:
        assert (b / name).is_file(), name
    ha, hb = _read(a, "history.json"), _read(b, "history.json")
    assert [list(r) for r in ha] == [list(r) for r in hb]  # same keys, same order
    assert list(_read(a, "metrics.json")) == list(_read(b, "metrics.json"))
    header = [(d / "history.csv").read_text().splitlines()[0] for d in (a, b)]
    assert header[0] == header[1]


def _strip_timings(obj):
    if isinstance(obj, dict):
        return {k: _strip_timings(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [_strip_timings(v) for v in obj]
    return obj


@pytest.mark.parametrize("case", CASES)
def test_exact_mode_is_bit_identical_to_the_sequential_trainer(tmp_path, case):
    for a, b in _train_both(tmp_path, _cases(tmp_path)[case]):
        _assert_same_structure(a, b)
        for name in ("history.json", "metrics.json"):
            assert (_strip_timings(json.loads((a / name).read_text()))
                    == _strip_timings(json.loads((b / name).read_text()))), name
        for name in ("proxies.npy", "proxies_init.npy", "train_class_recall.npy"):
            np.testing.assert_array_equal(np.load(a / name), np.load(b / name), err_msg=name)
        with np.load(a / "test_embeddings.npz") as ea, np.load(b / "test_embeddings.npz") as eb:
            np.testing.assert_array_equal(ea["embeddings"], eb["embeddings"])
            np.testing.assert_array_equal(ea["labels"], eb["labels"])
        # the config differs only by where it was written (results_dir)
        assert ((a / "config.yaml").read_text().replace(str(tmp_path / "seq"), "X")
                == (b / "config.yaml").read_text().replace(str(tmp_path / "bat"), "X"))


#: mode="fast" bounds on the synthetic runs (measured: proxies differ by < 2e-6, loss terms
#: by < 3e-6, metrics not at all; docs/frozen-tier.md measures 15-epoch study runs).
FAST_PROXY_ATOL = 1e-4
FAST_LOSS_RTOL = 1e-4


@pytest.mark.parametrize("case", CASES)
def test_fast_mode_matches_the_sequential_trainer_to_float32_rounding(tmp_path, case):
    features = _features()
    one_query = 1.0 / len(features.test_labels)
    for a, b in _train_both(tmp_path, _cases(tmp_path)[case], features, mode="fast"):
        _assert_same_structure(a, b)
        ha, hb = _read(a, "history.json"), _read(b, "history.json")
        for ra, rb in zip(ha, hb, strict=True):
            for key, value in ra.items():
                if key in TIMINGS:
                    continue
                if key.startswith(("R@", "MAP@R", "RP", "NMI")):
                    assert abs(value - rb[key]) <= one_query + 1e-12, (key, ra["epoch"])
                elif key.startswith("lr_") or key in ("epoch", "step"):
                    assert value == rb[key], key
                else:
                    assert rb[key] == pytest.approx(value, rel=FAST_LOSS_RTOL, abs=1e-6), key
        np.testing.assert_allclose(np.load(b / "proxies.npy"), np.load(a / "proxies.npy"),
                                   atol=FAST_PROXY_ATOL, rtol=0)
        np.testing.assert_array_equal(np.load(a / "proxies_init.npy"),
                                      np.load(b / "proxies_init.npy"))


def test_views_samplers_and_init_are_each_runs_own(tmp_path):
    # two runs that differ only by seed: different proxies, batches and views in the batch,
    # and each equal to its own sequential run (an exchanged seed would break equality)
    (a0, b0), (a1, b1) = _train_both(tmp_path, [{"seed": 3}, {"seed": 4}])
    assert not np.array_equal(np.load(b0 / "proxies_init.npy"), np.load(b1 / "proxies_init.npy"))
    np.testing.assert_array_equal(np.load(a0 / "proxies.npy"), np.load(b0 / "proxies.npy"))
    np.testing.assert_array_equal(np.load(a1 / "proxies.npy"), np.load(b1 / "proxies.npy"))
    trainer = fb.BatchedFrozenTrainer(
        [_config(tmp_path, seed=3), _config(tmp_path, seed=4)], _features(),
        [RunDirectory(tmp_path / "x"), RunDirectory(tmp_path / "y")])
    rows, labels = trainer.epoch_batches(0)
    assert rows.shape == (trainer.steps, 2, 20)
    assert not torch.equal(rows[:, 0], rows[:, 1])
    assert torch.equal(labels, torch.from_numpy(trainer.features.train_labels)[rows % 60])


def _stacked(runs_lrs: list[tuple[float, float]], fused: bool, linear: bool = True):
    """A _StackedParameters over fake runs (only configs and modules are used)."""
    from types import SimpleNamespace

    runs = []
    for seed, (lr, wd) in enumerate(runs_lrs):
        torch.manual_seed(seed)
        head = torch.nn.Linear(12, 5) if linear else torch.nn.Identity()
        proxies = torch.nn.Parameter(torch.randn(7, 5))
        config = load_config("icons", lr=lr, weight_decay=wd, epochs=2, seed=seed)
        runs.append(SimpleNamespace(config=config, head=head,
                                    loss=SimpleNamespace(proxies=proxies)))
    return runs, fb._StackedParameters(runs, steps_per_epoch=4, fused=fused)


@pytest.mark.parametrize("fused", [False, True])
def test_adamw_over_per_run_views_is_torch_adamw_step_by_step(fused):
    from dml_study.training.optim import (
        build_optimizer,
        build_param_groups,
        build_scheduler,
    )

    hyper = [(5e-4, 1e-4), (1e-3, 0.0), (5e-4, 1e-4), (2e-3, 1e-2)]
    runs, stacked = _stacked(hyper, fused)
    # the reference: one sequential optimiser and schedule per run (fused: torch's own
    # fused AdamW, which mode="fast" uses)
    refs = []
    for run in runs:
        params = [p.detach().clone().requires_grad_(True) for p in
                  (run.head.weight, run.head.bias, run.loss.proxies)]
        cfg = run.config.optim
        groups = build_param_groups([], params[:2], [{"name": "proxies", "params": params[2:]}],
                                    cfg)
        opt = (torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                 weight_decay=cfg.weight_decay, fused=True)
               if fused else build_optimizer(groups, cfg))
        refs.append((params, opt, build_scheduler(opt, run.config.schedule, 4)))
    assert len(stacked.optimizer.param_groups) == 6  # runs 0 and 2 share their two groups
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        for leaf in stacked.leaves:
            leaf.grad = torch.randn(leaf.shape, generator=gen)
        stacked.link_grads()
        for r, (params, opt, sched) in enumerate(refs):
            for p, leaf in zip(params, stacked.leaves, strict=True):
                p.grad = leaf.grad[r].clone()
            opt.step()
            sched.step()
        stacked.optimizer.step()
        stacked.scheduler.step()
        for r, (params, opt, _) in enumerate(refs):
            for p, leaf in zip(params, stacked.leaves, strict=True):
                assert torch.equal(p.detach(), leaf.detach()[r])
            assert stacked.lrs(r) == {f"lr_{g['name']}": g["lr"] for g in opt.param_groups}


def test_clipping_is_clip_grad_norm_per_run():
    _, stacked = _stacked([(5e-4, 1e-4)] * 3, fused=False)
    gen = torch.Generator().manual_seed(0)
    for leaf, scale in zip(stacked.leaves, (5.0, 0.1, 2.0), strict=True):
        leaf.grad = scale * torch.randn(leaf.shape, generator=gen)
    stacked.link_grads()
    expected = []
    for r in range(3):
        grads = [leaf.grad[r].clone().requires_grad_(False) for leaf in stacked.leaves]
        params = [torch.zeros_like(g, requires_grad=True) for g in grads]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        norm = torch.nn.utils.clip_grad_norm_(params, [3.0, None, 1.0][r] or math.inf)
        expected.append(([p.grad for p in params], norm))
    norms = fb._clip_grad_norms(stacked, [3.0, None, 1.0])
    for r, (grads, norm) in enumerate(expected):
        assert torch.equal(norms[r], norm)
        for g, leaf in zip(grads, stacked.leaves, strict=True):
            assert torch.equal(g, leaf.grad[r])


# ------------------------------------------------------------------ fused kernels (fast mode)


def test_normalize_rows_matches_f_normalize_and_its_gradient():
    x = torch.randn(3, 5, 7, dtype=torch.float64)
    x[0, 1] = 0.0  # a clamped row
    g = torch.randn_like(x)
    xa = x.clone().requires_grad_(True)
    (F.normalize(xa, dim=-1) * g).sum().backward()
    xb = x.clone().requires_grad_(True)
    y = frozen_fused.normalize_rows(xb)
    (y * g).sum().backward()
    torch.testing.assert_close(y, F.normalize(x, dim=-1))
    torch.testing.assert_close(xb.grad, xa.grad)
    assert torch.autograd.gradcheck(frozen_fused.normalize_rows,
                                    (torch.randn(2, 3, 4, dtype=torch.float64,
                                                 requires_grad=True),))


def _proxy_anchor_reference(cos, labels, alpha, margin):
    """The ProxyAnchorLoss formula per run (the module's own log1p_sum_exp_masked)."""
    out = []
    for r in range(cos.shape[0]):
        a = alpha if isinstance(alpha, float) else float(alpha[r])
        m = margin if isinstance(margin, float) else float(margin[r])
        pos = F.one_hot(labels[r], cos.shape[2]).bool()
        pos_term = log1p_sum_exp_masked(-a * (cos[r] - m), pos, dim=0)
        neg_term = log1p_sum_exp_masked(a * (cos[r] + m), ~pos, dim=0)
        out.append(pos_term.sum() / pos.any(0).sum().clamp_min(1) + neg_term.sum() / cos.shape[2])
    return torch.stack(out)


@pytest.mark.parametrize("per_run", [False, True])
def test_fused_proxy_anchor_matches_the_loss_and_its_gradient(per_run):
    gen = torch.Generator().manual_seed(0)
    cos = (2 * torch.rand(3, 12, 9, generator=gen, dtype=torch.float64) - 1)
    labels = torch.randint(0, 9, (3, 12), generator=gen)
    labels[1, :] = 2  # every sample of one run in one class
    def per_run_or(values: list[float], scalar: float):
        return torch.tensor(values, dtype=torch.float64).view(-1, 1, 1) if per_run else scalar

    alpha = per_run_or([32.0, 8.0, 100.0], 32.0)
    margin = per_run_or([0.1, 0.0, 0.3], 0.1)
    ca = cos.clone().requires_grad_(True)
    ref = _proxy_anchor_reference(ca, labels, alpha, margin)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    (ref * weights).sum().backward()
    cb = cos.clone().requires_grad_(True)
    out = frozen_fused.proxy_anchor_from_cosines(cb, labels, alpha, margin)
    (out * weights).sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(cb.grad, ca.grad)  # alpha = 100 included: stable


@pytest.mark.parametrize("factorized", [False, True])
def test_fused_gram_residual_matches_so_and_its_gradient(factorized):
    a = torch.randn(2, 9, 4, dtype=torch.float64)
    aa = a.clone().requires_grad_(True)
    ref = torch.stack([gram_residual_sq_brute(m) for m in aa])
    (ref * torch.tensor([1.0, 3.0], dtype=torch.float64)).sum().backward()
    ab = a.clone().requires_grad_(True)
    out = frozen_fused.gram_residual(ab, factorized)
    (out * torch.tensor([1.0, 3.0], dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(ab.grad, aa.grad)
    at = a.transpose(1, 2).clone().requires_grad_(True)  # the dims Gram: a transposed view
    assert torch.autograd.gradcheck(lambda t: frozen_fused.gram_residual(t, factorized), (at,))


# ------------------------------------------------------------------ failures and grouping


def test_a_run_with_a_non_finite_loss_fails_alone(tmp_path):
    # alpha = 1e39 is infinite in float32: the run's loss is inf at its first step
    kws = [{"seed": 0}, {"seed": 1, "loss.params": {"alpha": 1e39}}, {"seed": 2, "so_lambda": 0.1}]
    with pytest.raises(frozen.FrozenTierError, match="non-finite loss at epoch 1, step 1"):
        frozen.train_frozen(_config(tmp_path / "seq", run_name="bad", **kws[1]), _features(),
                            RunDirectory.for_run(tmp_path / "seq", "bad"))
    names = ["good0", "bad", "good2"]
    configs = [_config(tmp_path / "bat", run_name=n, **kw)
               for n, kw in zip(names, kws, strict=True)]
    dirs = [RunDirectory.for_run(tmp_path / "bat", n) for n in names]
    failed = r"bad: non-finite loss at epoch 1, step 1"
    with pytest.raises(fb.BatchedRunsFailed, match=failed) as err:
        fb.train_frozen_batch(configs, _features(), dirs)
    assert set(err.value.failures) == {"bad"} and set(err.value.metrics) == {"good0", "good2"}
    assert not dirs[1].metrics.is_file() and not dirs[1].is_finished()
    for name, kw in ((names[0], kws[0]), (names[2], kws[2])):
        config = _config(tmp_path / "seq", run_name=name, **kw)
        frozen.train_frozen(config, _features(), RunDirectory.for_run(tmp_path / "seq", name))
        np.testing.assert_array_equal(np.load(tmp_path / "seq" / "runs" / name / "proxies.npy"),
                                      np.load(tmp_path / "bat" / "runs" / name / "proxies.npy"))


def test_finished_runs_are_refused_before_training(tmp_path):
    config = _config(tmp_path, run_name="done")
    run_dir = RunDirectory.for_run(tmp_path, "done")
    fb.train_frozen_batch([config], _features(), [run_dir])
    with pytest.raises(RunExistsError):
        fb.train_frozen_batch([config], _features(), [run_dir])
    fb.train_frozen_batch([replace(config, **{"run.overwrite": True})], _features(), [run_dir])


def test_batch_key_separates_shapes_and_ignores_hyperparameters(tmp_path):
    features = _features()
    key = fb.batch_key(_config(tmp_path), features)
    same = [{"seed": 5}, {"lr": 1e-2}, {"so_lambda": 1.0, "so_gram": "dims"},
            {"loss.params": {"alpha": 8.0}}, {"weight_decay": 0.0}, {"grad_clip_norm": None}]
    for kw in same:
        assert fb.batch_key(_config(tmp_path, **kw), features) == key, kw
    other = [{"embedding_dim": 16}, {"embedding_dim": 24}, {"batch_size": 40},
             {"m_per_class": 4}, {"epochs": 5}, {"loss": "adaptive_margin"}]
    keys = {fb.batch_key(_config(tmp_path, **kw), features) for kw in other}
    assert len(keys) == len(other) and key not in keys
    # softmax-family losses share a batch; embedding_dim == F (or None) is the identity head
    assert (fb.batch_key(_config(tmp_path, loss="normsoftmax"), features)
            == fb.batch_key(_config(tmp_path, loss="adaptive_margin"), features))
    identity = fb.batch_key(_config(tmp_path, embedding_dim=features.feature_dim), features)
    assert identity[1] == "identity"
    none = _config(tmp_path)
    none.model.embedding_dim = None
    assert fb.batch_key(none, features) == identity


def test_group_runs_keeps_order_and_splits_large_batches():
    keys = ["a", "b", "a", None, "a", "b", None, "a"]
    assert fb.group_runs(keys, max_runs=2) == [[0, 2], [4, 7], [1, 5], [3], [6]]
    assert fb.group_runs(keys) == [[0, 2, 4, 7], [1, 5], [3], [6]]
    with pytest.raises(ValueError, match="max_runs"):
        fb.group_runs(keys, max_runs=0)


def test_a_batch_refuses_runs_of_different_shapes(tmp_path):
    configs = [_config(tmp_path), _config(tmp_path, embedding_dim=16)]
    with pytest.raises(frozen.FrozenTierError, match="batch_key"):
        fb.BatchedFrozenTrainer(configs, _features(),
                                [RunDirectory(tmp_path / "a"), RunDirectory(tmp_path / "b")])
    with pytest.raises(frozen.FrozenTierError, match="mode"):
        fb.BatchedFrozenTrainer(configs[:1], _features(), [RunDirectory(tmp_path / "a")],
                                mode="quick")


def test_train_frozen_runs_batched_groups_and_skips_finished_runs(tmp_path, monkeypatch):
    features = _features()
    monkeypatch.setattr(fb, "extract_features", lambda config, settings: features)
    settings = frozen.FeatureSettings(views=3)
    items = [(f"r{i}", _config(tmp_path, run_name=f"r{i}", seed=i, **kw), settings)
             for i, kw in enumerate([{}, {"so_lambda": 0.1}, {"embedding_dim": 16}, {}])]
    fb.train_frozen_batch([items[3][1]], features, [RunDirectory.for_run(tmp_path, "r3")])
    done = fb.train_frozen_runs_batched(items, tmp_path)
    assert [name for name, _ in done] == ["r0", "r1", "r2"]  # r3 was finished
    for name, config, _ in items[:3]:
        metrics = json.loads(RunDirectory.for_run(tmp_path, name).metrics.read_text())
        assert metrics["features"] == {"views": 3, "feature_seed": 0}
        reference = tmp_path / "ref"
        frozen.train_frozen(replace(config, **{"run.results_dir": str(reference)}), features,
                            RunDirectory.for_run(reference, name))
        np.testing.assert_array_equal(np.load(tmp_path / "runs" / name / "proxies.npy"),
                                      np.load(reference / "runs" / name / "proxies.npy"))


# ------------------------------------------------------------------ real features


def _cached_icons_features():
    from dml_study.study.plan.config import load_study_config
    from dml_study.study.plan.grid import (
        expand_grid,
        frozen_feature_settings,
        unique_runs,
    )
    from dml_study.study.tiers.frozen import frozen_run_config

    root = Path(__file__).resolve().parents[2]
    study = load_study_config(root / "studies" / "embedded.yaml")
    specs = [s for s in unique_runs(expand_grid(study))
             if s.tier == "frozen" and s.dataset == "icons"]
    config = frozen_run_config(study, specs[0])
    settings = frozen_feature_settings(study, "icons")
    if not frozen.feature_cache_path(config, settings).is_file():
        pytest.skip("icons frozen features are not cached (frozen.extract_features builds them)")
    return study, specs, frozen.extract_features(config, settings)


@pytest.mark.slow
def test_exact_mode_on_cached_icons_features_is_bit_identical(tmp_path):
    from dml_study.study.tiers.frozen import frozen_run_config

    study, specs, features = _cached_icons_features()
    chosen = [s for s in specs if (s.group, s.variant, s.seed) in
              {("frozen_so", "no_so", 0), ("frozen_so", "so", 1), ("frozen_form", "dims", 0)}]
    configs = [replace(frozen_run_config(study, s), **{"schedule.epochs": 2}) for s in chosen]
    for root in ("seq", "bat"):
        configs = [replace(c, **{"run.results_dir": str(tmp_path / root)}) for c in configs]
        dirs = [RunDirectory.for_run(tmp_path / root, s.run_name) for s in chosen]
        if root == "seq":
            for config, run_dir in zip(configs, dirs, strict=True):
                frozen.train_frozen(config, features, run_dir)
        else:
            fb.train_frozen_batch(configs, features, dirs)
    for spec in chosen:
        a, b = tmp_path / "seq" / "runs" / spec.run_name, tmp_path / "bat" / "runs" / spec.run_name
        _assert_same_structure(a, b)
        assert (_strip_timings(json.loads((a / "history.json").read_text()))
                == _strip_timings(json.loads((b / "history.json").read_text())))
        np.testing.assert_array_equal(np.load(a / "proxies.npy"), np.load(b / "proxies.npy"))


def test_the_identity_head_case_trains_proxies_only(tmp_path):
    trainer = fb.BatchedFrozenTrainer([_config(tmp_path, embedding_dim=24)], _features(),
                                      [RunDirectory(tmp_path / "a")])
    assert not trainer.stacked.linear and trainer.stacked.leaves == [trainer.stacked.proxies]
    assert list(trainer.stacked.lrs(0)) == ["lr_proxies"]


def test_train_frozen_runs_batched_equals_the_sequential_train_frozen_runs(
    tmp_path, monkeypatch
):
    features = _features()
    monkeypatch.setattr(fb, "extract_features", lambda config, settings: features)
    monkeypatch.setattr(frozen, "extract_features", lambda config, settings: features)
    calls: list[int] = []
    real = fb.train_frozen_batch

    def counting(configs, *args, **kwargs):
        calls.append(len(configs))
        return real(configs, *args, **kwargs)

    monkeypatch.setattr(fb, "train_frozen_batch", counting)
    settings = frozen.FeatureSettings(views=3)
    for root, train in (("bat", fb.train_frozen_runs_batched), ("seq", frozen.train_frozen_runs)):
        items = [(f"r{i}", _config(tmp_path / root, run_name=f"r{i}", seed=i), settings)
                 for i in range(3)]
        done = train(items, tmp_path / root)
        assert [name for name, _ in done] == ["r0", "r1", "r2"]
    assert calls == [3]  # one batch
    for i in range(3):
        bat, seq = (tmp_path / root / "runs" / f"r{i}" for root in ("bat", "seq"))
        np.testing.assert_array_equal(np.load(bat / "proxies.npy"), np.load(seq / "proxies.npy"))
        metrics = [_strip_timings(_read(run, "metrics.json")) for run in (bat, seq)]
        assert metrics[0] == metrics[1]
