r"""Retrieval you can see: seeded queries with their top-k results, and per-class R@1 changes.

The figure every DML paper shows, for two runs of a paired comparison (the no-SO and SO
arms of one seed): a handful of test queries with their nearest test images, right and
wrong marked, and the classes whose R@1 the treatment raises or lowers most. Everything is
read from the runs' saved ``test_embeddings.npz``; nothing is re-embedded.

- **Neighbours** come from the project's one exact search
  (:mod:`dml_study.evaluation.knn`: faiss inner product on L2-normalised rows, ties broken by
  ascending gallery index, the query removed from its own list by index), so a query's
  first neighbour is exactly what its R@1 counted. Only the query rows are searched
  (:func:`top_k`: :func:`~dml_study.evaluation.knn.search_canonical` +
  :func:`~dml_study.evaluation.knn.remove_self_matches`, the two steps
  :func:`~dml_study.evaluation.knn.search` runs per chunk).
- **Queries** are chosen by a seeded rule, not by hand (:func:`seeded_queries`): the
  generator ``numpy.random.default_rng([seed, QUERY_STREAM])`` permutes the test classes and
  takes one image of each of the first ``n``; both arms share their test images and labels,
  so they get the same queries.
- **Per-class R@1** is :func:`dml_study.evaluation.per_class.per_class_recall_at_1` on the
  test split of each arm; the change is ``treatment − baseline`` in percentage points.
- **Images**: each embedding row is one image of the dataset's test split. Frozen-tier runs
  embed a seeded per-class subset for many-class datasets (glyphs: 5 images per class), so
  the row → image map is recovered by :func:`test_image_indices`: from the ``indices``
  array the frozen tier writes, else recomputed with the tier's own rule
  (:func:`dml_study.study.tiers.frozen.cached_test_indices` with the settings in
  ``metrics.json``),
  else (a fine-tuned run: the whole split) the identity; whichever is used must reproduce
  the run's labels image by image, or the run is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dml_study.study.plan.config import StudyConfig
from dml_study.study.plan.grid import RunSpec, expand_grid

#: Second word of the query generator's seed (``default_rng([seed, QUERY_STREAM])``), so the
#: queries do not reuse the stream of any other seeded choice of the study.
QUERY_STREAM = 214


class RetrievalDataError(ValueError):
    """A run's test embeddings cannot be matched to the dataset's test images."""


# --------------------------------------------------------------------------- search


def top_k(embeddings: np.ndarray, queries: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other test rows of each query row (self-retrieval), and their cosines.

    Same search, order and self-removal as the metrics (:func:`dml_study.evaluation.knn.search`
    with ``gallery=None``), restricted to the query rows. Returns ``(indices, scores)``, each
    ``(len(queries), k)``.
    """
    from dml_study.evaluation.knn import (
        build_index,
        l2_normalize,
        remove_self_matches,
        search_canonical,
    )

    emb = l2_normalize(embeddings)
    rows = np.asarray(queries, dtype=np.int64)
    if not 1 <= k <= len(emb) - 1:
        raise ValueError(f"k must be in [1, {len(emb) - 1}] for {len(emb)} test images; got {k}")
    index = build_index(emb)
    scores, indices = search_canonical(index, emb[rows], k + 1)
    scores, indices = remove_self_matches(scores, indices, rows)
    return indices, scores


def seeded_queries(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` query rows chosen by a seeded rule: one image of each of ``n`` classes.

    ``default_rng([seed, QUERY_STREAM])`` permutes the classes that have at least two
    images (a query needs a correct answer to find) and draws one image of each of the
    first ``n``; with fewer such classes, further images of them follow. Sorted by class
    order of the permutation.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), QUERY_STREAM])
    classes, counts = np.unique(labels, return_counts=True)
    classes = rng.permutation(classes[counts > 1])
    pools = {int(c): list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    chosen: list[int] = []
    while len(chosen) < n and any(pools.values()):
        for c in classes:
            if len(chosen) < n and pools[int(c)]:
                chosen.append(int(pools[int(c)].pop()))
    return np.asarray(chosen, dtype=np.int64)


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class ArmEmbeddings:
    """One arm's test embeddings: row ``i`` is image ``image_index[i]`` of the test split."""

    arm: str
    run_name: str
    embeddings: np.ndarray
    labels: np.ndarray
    image_index: np.ndarray


def test_image_indices(run_path: str | Path, dataset_labels: np.ndarray) -> np.ndarray:
    """Which test image each row of the run's ``test_embeddings.npz`` is.

    ``dataset_labels``: the labels of the dataset's test split. Tried in order: the
    ``indices`` array (written by the frozen tier), the frozen tier's subset rule with the
    feature settings in ``metrics.json``, the identity (the run embedded the whole split).
    The first that reproduces the run's labels is returned; :class:`RetrievalDataError`
    when none does (a run of another build of the dataset).
    """
    from dml_study.study.analysis.collect import load_test_embeddings
    from dml_study.study.plan.grid import FeatureSettings
    from dml_study.study.tiers.frozen import cached_test_indices
    from dml_study.training.run_dir import RunDirectory

    path = Path(run_path)
    loaded = load_test_embeddings(path)
    if loaded is None:
        raise RetrievalDataError(f"{path / 'test_embeddings.npz'} is missing")
    labels = loaded[1]
    dataset_labels = np.asarray(dataset_labels)
    candidates: list[tuple[str, np.ndarray]] = []
    with np.load(path / "test_embeddings.npz") as data:
        if "indices" in data.files:
            candidates.append(("its indices array", np.asarray(data["indices"])))
    features = RunDirectory(path).read_json("metrics.json").get("features")
    if isinstance(features, dict):
        known = {k: features[k] for k in ("views", "feature_seed", "max_train_per_class",
                                          "max_test_per_class") if k in features}
        candidates.append(("the frozen tier's subset rule",
                           cached_test_indices(dataset_labels, FeatureSettings(**known))))
    candidates.append(("the whole split", np.arange(len(dataset_labels))))
    for _, index in candidates:
        if (len(index) == len(labels) and (index.size == 0 or index.max() < len(dataset_labels))
                and np.array_equal(dataset_labels[index], labels)):
            return index.astype(np.int64)
    tried = ", ".join(what for what, _ in candidates)
    raise RetrievalDataError(
        f"{path}: its {len(labels)} test rows match no images of the dataset's test split "
        f"({len(dataset_labels)} images; tried {tried}): the run was trained on another build "
        "of the dataset; retrain it"
    )


def load_arm(results_dir: Path, spec: RunSpec, dataset_labels: np.ndarray) -> ArmEmbeddings:
    """The test embeddings of ``spec``'s finished run with their image indices."""
    from dml_study.study.analysis.collect import load_test_embeddings
    from dml_study.training.run_dir import RunDirectory

    run = RunDirectory.for_run(results_dir, spec.run_name)
    loaded = load_test_embeddings(run.path)
    if loaded is None:
        raise RetrievalDataError(f"{run.test_embeddings} is missing")
    return ArmEmbeddings(spec.variant, spec.run_name, np.asarray(loaded[0]),
                         np.asarray(loaded[1]), test_image_indices(run.path, dataset_labels))


# --------------------------------------------------------------------------- per class


def per_class_change(
    baseline: ArmEmbeddings, treatment: ArmEmbeddings, names: Sequence[str]
) -> pd.DataFrame:
    """Per test class: images, R@1 of each arm and the change (percentage points).

    Columns ``label, class, images, baseline_R@1, treatment_R@1, change``; sorted by
    ``change`` (descending), ties by label. ``names`` are display names by label.
    """
    from dml_study.evaluation.per_class import per_class_recall_at_1

    _check_same_images(baseline, treatment)
    classes, dense = np.unique(baseline.labels, return_inverse=True)
    base = per_class_recall_at_1(baseline.embeddings, dense)
    treat = per_class_recall_at_1(treatment.embeddings, dense)
    frame = pd.DataFrame({
        "label": classes.astype(int),
        "class": [names[int(c)] for c in classes],
        "images": np.bincount(dense, minlength=len(classes)),
        "baseline_R@1": 100 * base,
        "treatment_R@1": 100 * treat,
    })
    frame["change"] = frame["treatment_R@1"] - frame["baseline_R@1"]
    frame = frame.dropna(subset=["change"])
    return frame.sort_values(["change", "label"], ascending=[False, True],
                             kind="stable").reset_index(drop=True)


def _check_same_images(*arms: ArmEmbeddings) -> None:
    first = arms[0]
    for arm in arms[1:]:
        if not (np.array_equal(arm.image_index, first.image_index)
                and np.array_equal(arm.labels, first.labels)):
            raise RetrievalDataError(
                f"runs {first.run_name} and {arm.run_name} embedded different test images: "
                "a paired comparison needs the same test split (same feature settings)"
            )


# --------------------------------------------------------------------------- the comparison


@dataclass
class RetrievalComparison:
    """Everything the two retrieval figures of one dataset show (see module docstring).

    ``missing`` is set (and the rest empty) when a run of either arm is not finished.
    """

    dataset: str
    seed: int
    arms: tuple[str, ...]
    k: int = 5
    missing: str | None = None
    runs: dict[str, str] = field(default_factory=dict)
    #: Query rows (of the test embeddings) and their labels.
    queries: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    query_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: Per arm: the (n, k) neighbour rows, whether each has the query's label, cosines.
    neighbours: dict[str, np.ndarray] = field(default_factory=dict)
    correct: dict[str, np.ndarray] = field(default_factory=dict)
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    #: Row -> test-split image index; label -> display name.
    image_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    names: list[str] = field(default_factory=list)
    #: :func:`per_class_change` of treatment vs baseline.
    changes: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: Test-split image index -> thumbnail (PIL image) of every image the figures show.
    thumbnails: dict[int, Any] = field(default_factory=dict)

    def class_rows(self, label: int, limit: int) -> np.ndarray:
        """The first ``limit`` test rows of class ``label`` (in split order)."""
        return np.flatnonzero(self.labels == label)[:limit]

    def extremes(self, n: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The (at most) ``n`` classes whose R@1 rises most, and the ``n`` whose R@1 falls
        most (a class whose R@1 does not change is in neither); ties by label."""
        gains = self.changes[self.changes["change"] > 0].head(n)
        losses = self.changes[self.changes["change"] < 0].sort_values(
            ["change", "label"], kind="stable").head(n)
        return gains, losses

    def summary(self) -> pd.DataFrame:
        """Per arm: the run, and R@1 and mean R@1 over classes on these test images (%)."""
        rows = {}
        for arm in self.arms:
            first = self.correct[arm][:, 0] if arm in self.correct else np.zeros(0)
            column = "baseline_R@1" if arm == self.arms[0] else "treatment_R@1"
            rows[arm] = {"run": self.runs.get(arm, ""),
                         "queries shown": len(self.queries),
                         "top-1 correct (shown)": int(first.sum()),
                         "mean per-class R@1 (%)": round(float(self.changes[column].mean()), 2)
                         if len(self.changes) else float("nan")}
        return pd.DataFrame(rows).T


def compare_runs(
    config: StudyConfig,
    group: str,
    dataset: str,
    *,
    baseline: str,
    treatment: str,
    seed: int | None = None,
    n_queries: int = 8,
    k: int = 5,
    examples_per_class: int = 4,
    extremes: int = 5,
    thumbnail_px: int = 64,
) -> RetrievalComparison:
    """The retrieval comparison of ``baseline`` vs ``treatment`` of ``group`` on ``dataset``
    at ``seed`` (default: the study's ``analysis.seed``), with the thumbnails it shows.

    A run that has not finished gives a comparison whose ``missing`` names it.
    """
    from dml_study.data import dataset_protocol, get_dataset
    from dml_study.training.run_dir import RunDirectory

    seed = config.analysis.seed if seed is None else int(seed)
    comparison = RetrievalComparison(dataset, seed, (baseline, treatment), k)
    cells = {s.variant: s for s in expand_grid(config)
             if s.group == group and s.seed == seed
             and (s.dataset or config.train.get("dataset")) == dataset}
    absent = [arm for arm in (baseline, treatment) if arm not in cells]
    if absent:
        seeds = sorted({s.seed for s in expand_grid(config) if s.group == group})
        comparison.missing = (f"{group} has no cell {', '.join(absent)} at seed {seed} on "
                              f"{dataset} (its seeds: {seeds})")
        return comparison
    unfinished = [f"{arm} ({cells[arm].run_name})" for arm in (baseline, treatment)
                  if not RunDirectory.for_run(config.results_dir, cells[arm].run_name)
                  .is_finished()]
    if unfinished:
        comparison.missing = (f"no finished run of {group}/{' and '.join(unfinished)} at seed "
                              f"{seed} on {dataset}: nothing to show")
        return comparison
    if dataset_protocol(dataset) != "self":
        comparison.missing = f"{dataset} is a query/gallery dataset: no self-retrieval gallery"
        return comparison
    split = get_dataset(dataset, "test", config.data_root, progress=False)
    arms = [load_arm(config.results_dir, cells[arm], split.labels) for arm in
            (baseline, treatment)]
    _check_same_images(*arms)
    first = arms[0]
    if len(first.labels) < k + 1:
        comparison.missing = (f"{dataset}: {len(first.labels)} test images, fewer than the "
                              f"{k + 1} a top-{k} list needs")
        return comparison
    comparison.runs = {a.arm: a.run_name for a in arms}
    comparison.image_index, comparison.labels = first.image_index, first.labels
    comparison.names = list(split.display_names)
    comparison.queries = seeded_queries(first.labels, n_queries, seed)
    comparison.query_labels = first.labels[comparison.queries]
    for arm in arms:
        rows, scores = top_k(arm.embeddings, comparison.queries, k)
        comparison.neighbours[arm.arm], comparison.scores[arm.arm] = rows, scores
        comparison.correct[arm.arm] = first.labels[rows] == comparison.query_labels[:, None]
    comparison.changes = per_class_change(arms[0], arms[1], comparison.names)
    shown = [comparison.queries, *comparison.neighbours.values()]
    for frame in comparison.extremes(extremes):
        shown += [comparison.class_rows(int(label), examples_per_class)
                  for label in frame["label"]]
    images = sorted({int(comparison.image_index[r]) for rows in shown for r in np.ravel(rows)})
    comparison.thumbnails = {i: thumbnail(split.load_image(i), thumbnail_px) for i in images}
    return comparison


def thumbnail(image: Any, px: int) -> Any:
    """A copy of the PIL ``image`` whose longer side is at most ``px`` (aspect kept)."""
    small = image.convert("RGB").copy()
    small.thumbnail((px, px))
    return small


def group_datasets(config: StudyConfig, group: str) -> list[str]:
    """The datasets a group's cells run on, in study order."""
    return list(dict.fromkeys(str(s.dataset or config.train.get("dataset"))
                              for s in expand_grid(config) if s.group == group))


def paired_arms(config: StudyConfig, group: str) -> tuple[str, str] | None:
    """The (baseline, treatment) variants compared within ``group``: the headline's when it
    is the headline group, else those of the first paired claim on it (``None``: none)."""
    if config.headline.group == group:
        return config.headline.baseline, config.headline.treatment
    for claim in config.claims:
        if claim.kind == "paired" and group in claim.all_groups:
            return claim.baseline, claim.treatment
    return None
