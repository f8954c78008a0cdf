"""What SO does to proxies and embeddings: the computations behind ``04_proxy_analysis``.

All functions take plain arrays (proxies ``C × d``, embeddings ``N × d``) and L2-normalise
them first, because every loss in this study compares directions (cosines), not lengths.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def cosine_matrix(proxies: np.ndarray) -> np.ndarray:
    """``P̂ P̂ᵀ``: cosine similarity between every pair of proxies (C × C)."""
    p = normalize_rows(proxies)
    return p @ p.T


def pairwise_cosines(proxies: np.ndarray) -> np.ndarray:
    """Cosines of all distinct proxy pairs (upper triangle of :func:`cosine_matrix`)."""
    gram = cosine_matrix(proxies)
    rows, cols = np.triu_indices(gram.shape[0], k=1)
    return gram[rows, cols]


def orthogonality_summary(proxies: np.ndarray) -> dict[str, float]:
    """Orthogonality statistics of one proxy matrix (see ``dml_study.losses``)."""
    from dml_study.losses import orthogonality_stats

    return orthogonality_stats(np.asarray(proxies, dtype=np.float64))


def proxy_margins(embeddings: np.ndarray, proxies: np.ndarray) -> pd.DataFrame:
    """Per embedding: cosine to its nearest proxy, to the second nearest, and the margin.

    Test classes are disjoint from training classes in the DML protocol, so a test image
    has no "own" proxy; the margin between the two most similar proxies measures how
    decisively the embedding falls into one proxy's region (near 0: between proxies).
    """
    if proxies.shape[0] < 2:
        raise ValueError("need at least two proxies for a nearest-proxy margin")
    sims = normalize_rows(embeddings) @ normalize_rows(proxies).T
    top2 = -np.partition(-sims, 1, axis=1)[:, :2]
    first, second = top2.max(axis=1), top2.min(axis=1)
    return pd.DataFrame({"nearest": first, "second": second, "margin": first - second})


def tsne_with_proxies(
    embeddings: np.ndarray,
    labels: np.ndarray,
    proxies: np.ndarray,
    *,
    max_points: int = 1500,
    perplexity: float = 30.0,
    seed: int = 0,
) -> pd.DataFrame:
    """2-D t-SNE (scikit-learn) of test embeddings and proxies in one map.

    Embeddings and proxies are embedded together so their relative placement is
    meaningful; at most ``max_points`` embeddings (a seeded random subset) keep it fast.
    Returns columns ``x, y, kind ("embedding" | "proxy"), label`` (proxy rows carry their
    class index).
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    n = len(embeddings)
    keep = np.arange(n)
    if n > max_points:
        keep = np.sort(rng.choice(n, size=max_points, replace=False))
    points = np.concatenate([normalize_rows(embeddings[keep]), normalize_rows(proxies)])
    perplexity = float(min(perplexity, max(2.0, (len(points) - 1) / 3)))
    # One OpenMP thread: on a shared 2-core machine t-SNE's threads oversubscribe the cores
    # and run several times slower than a single thread (measured: 24 s vs 104 s).
    with threadpool_limits(limits=1, user_api="openmp"):
        coords = TSNE(
            n_components=2, perplexity=perplexity, init="pca", metric="cosine", random_state=seed
        ).fit_transform(points)
    m = len(keep)
    return pd.DataFrame({
        "x": coords[:, 0],
        "y": coords[:, 1],
        "kind": ["embedding"] * m + ["proxy"] * len(proxies),
        "label": np.concatenate([np.asarray(labels)[keep], np.arange(len(proxies))]),
    })


#: History columns (first match wins) holding orthogonality error and effective rank.
HISTORY_SERIES: dict[str, tuple[str, ...]] = {
    "orthogonality error ‖P̂P̂ᵀ − I‖² (Frobenius)": ("orth_so_frobenius", "so_frobenius"),
    "effective rank": ("orth_effective_rank", "effective_rank"),
    "mean |cos|": ("orth_mean_abs_cos", "mean_abs_cos"),
}


def history_series(history: pd.DataFrame) -> pd.DataFrame:
    """Long table ``epoch, quantity, value`` of the orthogonality statistics over training.

    Quantities a history does not log are left out (the table may be empty).
    """
    if history.empty:
        return pd.DataFrame(columns=["epoch", "quantity", "value"])
    x = history["epoch"] if "epoch" in history.columns else pd.Series(range(1, len(history) + 1))
    frames = []
    for quantity, candidates in HISTORY_SERIES.items():
        column = next((c for c in candidates if c in history.columns), None)
        if column is not None:
            frames.append(pd.DataFrame({
                "epoch": x.to_numpy(), "quantity": quantity, "value": history[column].to_numpy()
            }))
    if not frames:
        return pd.DataFrame(columns=["epoch", "quantity", "value"])
    return pd.concat(frames, ignore_index=True).dropna(subset=["value"])


def nearest_proxy_cosine(proxies: np.ndarray) -> np.ndarray:
    """Per class: cosine of its proxy to the nearest *other* proxy, shape (C,)."""
    gram = cosine_matrix(proxies)
    np.fill_diagonal(gram, -np.inf)
    return gram.max(axis=1)


def close_class_fraction(proxies: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of classes whose nearest other proxy has cosine above ``threshold``."""
    return float(np.mean(nearest_proxy_cosine(proxies) > threshold))


def so_floor_table(proxies: dict[str, np.ndarray]) -> pd.DataFrame:
    r"""Where the SO floor binds: ‖P̂P̂ᵀ − I‖²_F of each proxy matrix beside its floor.

    For unit rows the penalty cannot go below :math:`\max(0, C^2/d - C)` (tight frames reach
    it), i.e. a mean squared off-diagonal cosine of at least :math:`(C/d - 1)/(C - 1)`.
    When C < d the floor is 0 and SO can make the proxies exactly orthogonal; when C ≫ d
    it binds and "more orthogonal" can only mean "closer to a tight frame".
    """
    rows = []
    for label, p in proxies.items():
        stats = orthogonality_summary(p)
        c, d = int(stats["num_proxies"]), int(stats["dim"])
        pairs = c * (c - 1)
        rows.append({
            "proxies": label, "C": c, "d": d, "so_frobenius": stats["so_frobenius"],
            "so_floor": stats["so_floor"],
            "rms_cos": float(np.sqrt(stats["so_frobenius"] / pairs)) if pairs else 0.0,
            "rms_cos_floor": float(np.sqrt(stats["so_floor"] / pairs)) if pairs else 0.0,
            "mean_abs_cos": stats["mean_abs_cos"],
        })
    columns = ["proxies", "C", "d", "so_frobenius", "so_floor", "rms_cos", "rms_cos_floor",
               "mean_abs_cos"]
    return pd.DataFrame(rows, columns=columns).set_index("proxies")


def class_motivation(proxies: np.ndarray, class_recall: np.ndarray) -> pd.DataFrame:
    """Per training class: nearest-other-proxy cosine and the class's train R@1 (in %)."""
    if len(class_recall) != len(proxies):
        raise ValueError(
            f"{len(class_recall)} per-class recalls for {len(proxies)} proxies: both must "
            "cover the training classes"
        )
    return pd.DataFrame({
        "nearest_proxy_cos": nearest_proxy_cosine(proxies),
        "train_R@1": 100 * np.asarray(class_recall, dtype=float),
    }).dropna()


def finished_headline_runs(
    config: Any, seed: int | None = None, baseline_run: str | None = None,
    treatment_run: str | None = None,
) -> tuple[dict[str, Any], str | None]:
    """The finished headline runs at ``seed`` (default ``analysis.seed``) by arm label, and a
    note naming what is missing (``None`` when both arms are there).

    ``baseline_run`` / ``treatment_run`` name other runs to compare. A seed the headline
    group does not have, or a run that has not finished, is left out and named in the note;
    a study with one arm (baseline = treatment) gives one run.
    """
    from dml_study.study.analysis.collect import load_run
    from dml_study.study.plan.grid import headline_runs, is_finished

    head = config.headline
    names: dict[str, str] = {}
    note = None
    try:
        base_spec, treat_spec = headline_runs(config, seed)
        names = {head.baseline: base_spec.run_name, head.treatment: treat_spec.run_name}
    except (ValueError, KeyError) as exc:  # no such seed, or no headline group
        note = str(exc)
    if baseline_run:
        names[head.baseline] = baseline_run
    if treatment_run:
        names[head.treatment] = treatment_run
    runs = {label: load_run(config.results_dir, name) for label, name in names.items()
            if is_finished(config.results_dir, name)}
    unfinished = [f"{label} ({name})" for label, name in names.items() if label not in runs]
    if unfinished:
        note = (f"not finished: {', '.join(unfinished)}" + (f"; {note}" if note else ""))
    if not runs and note is None:
        note = "no headline runs"
    return runs, note
