"""Published reference numbers (Recall@1, %) and the published-vs-ours table per benchmark.

Papers:

* Proxy Anchor: Kim, Kim, Cho, Kwak, CVPR 2020, arXiv:2003.13911; official code
  github.com/tjddus9597/Proxy-Anchor-CVPR2020 (its README reports the R@K of its released
  checkpoints, one table per benchmark).
* Hyp-ViT / Hyp-DeiT: Ermolov, Mirvakhabova, Khrulkov, Sebe, Oseledets, CVPR 2022,
  arXiv:2203.10833; code github.com/htdt/hyp_metric.
* The methods this study tests: Soft Orthogonality on proxies (Saberi-Movahed et al.,
  arXiv:2306.13055; the penalty of Bansal et al., NeurIPS 2018) and adaptive additive margins
  (Fehervari & Macedo, arXiv:2006.14693). They are cited here so every table that compares
  with a paper names them (:func:`citations`); we list no numbers of theirs (none verified).

Every number carries ``verified`` and ``source``. *Verified* means it was read here from
the ``source`` (a page or file reachable from this project); an unverified number is kept
with ``verified=False`` and a note saying where it comes from and what to check, and tables
show the flag beside it. Each row also states the backbone, embedding size, image size and
**epoch selection**: Proxy Anchor's code keeps the checkpoint with the best test Recall@1
(``train.py``: ``best_recall``/``best_epoch``; its README numbers are those checkpoints),
whereas Hyp-ViT's configs evaluate once, at the last epoch (``--eval_ep "[<epochs>]"``).
This study reports both its final epoch and its best (test-selected) epoch
(``metrics.json`` → ``best_test_selected``: chosen on the test split, so not a legitimate
estimate, shown only to compare with Proxy Anchor's protocol), labelled, in
:func:`comparison_table`. (A validation run's ``best`` is chosen on held-out training
classes; those runs tune hyperparameters and never appear here.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PROXY_ANCHOR_CITATION = (
    "S. Kim, D. Kim, M. Cho, S. Kwak. Proxy Anchor Loss for Deep Metric Learning. "
    "CVPR 2020. arXiv:2003.13911"
)
HYP_VIT_CITATION = (
    "A. Ermolov, L. Mirvakhabova, V. Khrulkov, N. Sebe, I. Oseledets. Hyperbolic Vision "
    "Transformers: Combining Improvements in Metric Learning. CVPR 2022. arXiv:2203.10833"
)
SO_CITATION = (
    "F. Saberi-Movahed et al. Deep Metric Learning with Soft Orthogonal Proxies. "
    "arXiv:2306.13055 (2023)"
)
SO_PENALTY_CITATION = (
    "N. Bansal, X. Chen, Z. Wang. Can We Gain More from Orthogonality Regularizations in "
    "Training Deep Networks? NeurIPS 2018"
)
ADAPTIVE_MARGIN_CITATION = (
    "I. Fehervari, I. Macedo. Adaptive Additive Classification-based Loss for Deep Metric "
    "Learning. arXiv:2006.14693 (2020)"
)

#: Papers with Code's "Results from the Paper" listing for each paper (checked 2026-11).
_PWC_PROXY_ANCHOR = "https://www.paperswithcode.com/paper/proxy-anchor-loss-for-deep-metric-learning"
_PWC_HYP = "https://paperswithcode.com/paper/hyperbolic-vision-transformers-combining"
#: The official Proxy Anchor code's README (one R@K table per benchmark).
_PA_README = "github.com/tjddus9597/Proxy-Anchor-CVPR2020 README.md (per-dataset tables)"

#: Epoch-selection labels.
BEST_EPOCH = "best (test-selected)"
FINAL_EPOCH = "final"
NOT_STATED = "not stated"


@dataclass(frozen=True)
class PublishedResult:
    """One published number."""

    method: str
    dataset: str
    metric: str
    #: Percent, as printed in the source; ``None`` when no number is known.
    value: float | None
    backbone: str
    embedding_dim: int | None
    #: Training crop / test crop size in pixels; ``None`` when the source does not say.
    image_size: int | None
    #: Which epoch the number is from: :data:`BEST_EPOCH`, :data:`FINAL_EPOCH` or
    #: :data:`NOT_STATED`.
    epoch: str
    citation: str
    verified: bool
    source: str | None
    note: str = ""


_PA_PWC_NOTE = (
    "R@1 listed by Papers with Code for 'BN-Inception + Proxy-Anchor'. The listing states "
    "neither the embedding size nor the image size; the paper's Table 1 has 224-px rows and "
    "rows with larger input images (marked with a dagger), and which one this is was not "
    "verified here"
)
_PA_README_NOTE = (
    "README of the official code: released Inception-BN checkpoint, 512-d, trained with "
    "RandomResizedCrop(224), evaluated on Resize(256) + CenterCrop(224) "
    "(code/dataset/utils.py); the saved model is the epoch with the best test R@1 "
    "(code/train.py), so the number is test-selected"
)
_HYP_NOTE = (
    "R@1 listed by Papers with Code for 'Hyp-ViT' (ViT-S/16); the listing states neither the "
    "embedding size nor the image size (the code's defaults: 128-d head, 224-px crops)"
)
_HYP_DEIT_NOTE = (
    "as quoted in issue #12 for Hyp-DeiT (DeiT-S/16) from Ermolov et al. 2022; NOT verified "
    "here (no copy of arXiv:2203.10833 was reachable): check the table, the embedding size "
    "(the code's default head is 128-d, train.py emb=128) and the image size (224-px crops)"
)

PUBLISHED: tuple[PublishedResult, ...] = (
    # Proxy Anchor, the paper's numbers as listed by Papers with Code.
    PublishedResult("Proxy Anchor (paper)", "cub200", "R@1", 71.1, "BN-Inception", None, None,
                    NOT_STATED, PROXY_ANCHOR_CITATION, True, _PWC_PROXY_ANCHOR, _PA_PWC_NOTE),
    PublishedResult("Proxy Anchor (paper)", "cars196", "R@1", 88.3, "BN-Inception", None, None,
                    NOT_STATED, PROXY_ANCHOR_CITATION, True, _PWC_PROXY_ANCHOR, _PA_PWC_NOTE),
    PublishedResult("Proxy Anchor (paper)", "sop", "R@1", 80.3, "BN-Inception", None, None,
                    NOT_STATED, PROXY_ANCHOR_CITATION, True, _PWC_PROXY_ANCHOR, _PA_PWC_NOTE),
    PublishedResult("Proxy Anchor (paper)", "inshop", "R@1", None, "BN-Inception", None, None,
                    NOT_STATED, PROXY_ANCHOR_CITATION, False, None,
                    "not listed by Papers with Code; read the In-Shop table of "
                    "arXiv:2003.13911 (the official code's number is the row below)"),
    # Proxy Anchor, the official code's released checkpoints (224 px, 512-d, best epoch).
    *(
        PublishedResult("Proxy Anchor (official code)", ds, "R@1", value, "BN-Inception", 512,
                        224, BEST_EPOCH, PROXY_ANCHOR_CITATION, True, _PA_README,
                        _PA_README_NOTE)
        for ds, value in (("cub200", 69.1), ("cars196", 86.4), ("sop", 79.2), ("inshop", 91.9))
    ),
    # Hyp-ViT: ViT-S/16 encoder with hyperbolic embeddings.
    PublishedResult("Hyp-ViT", "cub200", "R@1", 85.6, "ViT-S/16", None, None, FINAL_EPOCH,
                    HYP_VIT_CITATION, True, _PWC_HYP, _HYP_NOTE),
    PublishedResult("Hyp-ViT", "cars196", "R@1", 86.5, "ViT-S/16", None, None, FINAL_EPOCH,
                    HYP_VIT_CITATION, True, _PWC_HYP, _HYP_NOTE),
    PublishedResult("Hyp-ViT", "sop", "R@1", 85.9, "ViT-S/16", None, None, FINAL_EPOCH,
                    HYP_VIT_CITATION, True, _PWC_HYP, _HYP_NOTE),
    PublishedResult("Hyp-ViT", "inshop", "R@1", 92.5, "ViT-S/16", None, None, FINAL_EPOCH,
                    HYP_VIT_CITATION, True, _PWC_HYP,
                    _HYP_NOTE + "; another index lists 92.7 (a different row of the table?)"),
    # Hyp-DeiT (DeiT-S, the backbone of this study's full recipe).
    *(
        PublishedResult("Hyp-DeiT", ds, "R@1", value, "DeiT-S/16 (distilled)", None, 224,
                        FINAL_EPOCH, HYP_VIT_CITATION, False,
                        "issue #12 (quoting arXiv:2203.10833)", _HYP_DEIT_NOTE)
        for ds, value in (("cub200", 77.8), ("cars196", 86.4), ("sop", 83.3), ("inshop", 90.5))
    ),
)


def published_results(dataset: str | None = None) -> list[PublishedResult]:
    """All published entries, or those of one dataset (an embedded one: none, no error)."""
    if dataset is None:
        return list(PUBLISHED)
    known = sorted({r.dataset for r in PUBLISHED})
    if dataset not in known and not _is_embedded(dataset):
        raise ValueError(f"unknown dataset {dataset!r}; published numbers exist for {known}")
    return [r for r in PUBLISHED if r.dataset == dataset]


def _is_embedded(dataset: str) -> bool:
    """Whether the data registry knows ``dataset`` as an embedded (locally built) dataset."""
    from dml_study.data.registry import list_datasets

    return dataset in list_datasets(kind="embedded")


def published_table(dataset: str | None = None) -> pd.DataFrame:
    """Published entries as a table (value in percent; ``NaN`` where no number is known).

    Unverified numbers are kept and flagged in the ``verified`` column.
    """
    rows = [asdict(r) for r in published_results(dataset)]
    columns = [f.name for f in PublishedResult.__dataclass_fields__.values()]
    return pd.DataFrame(rows, columns=columns)


def citations() -> list[str]:
    """The full citation strings: the reference papers and the methods under test."""
    return [PROXY_ANCHOR_CITATION, HYP_VIT_CITATION, SO_CITATION, SO_PENALTY_CITATION,
            ADAPTIVE_MARGIN_CITATION]


# --------------------------------------------------------------------- published vs ours

#: Columns of :func:`comparison_table`, in order.
COMPARISON_COLUMNS: tuple[str, ...] = (
    "dataset", "row", "method", "backbone", "embedding_dim", "image_size", "epoch", "metric",
    "value", "std", "seeds", "recipe", "verified", "source", "note",
)

def _our_method(row: pd.Series) -> str:
    from dml_study.losses.registry import LOSSES

    name = row.get("loss")
    loss = LOSSES[name].title if name in LOSSES else str(name or "preset loss")
    so = float(row.get("so_lambda") or 0.0)
    so_text = f" + SO (λ={so:g}, {row.get('so_reduction') or 'sum'})" if so > 0 else ""
    return f"{loss}{so_text} [{row['group']}/{row['variant']}]"


def _resolved_params(cells: pd.DataFrame, results_dir: str | Path | None) -> dict[str, Any]:
    """Parameters of a configuration: the row's, with preset (``None``) values filled from
    the first run's saved ``config.yaml`` when ``results_dir`` is given."""
    first = cells.iloc[0].to_dict()
    if results_dir is None or "run_name" not in first:
        return first
    from dml_study.study.analysis.collect import load_run_config, run_parameters
    from dml_study.training.run_dir import RunDirectory

    run = RunDirectory.for_run(results_dir, str(first["run_name"]))
    saved = run_parameters(load_run_config(run.path))
    return {**first, **{k: v for k, v in saved.items() if first.get(k) is None}}


def comparison_table(
    results: pd.DataFrame,
    dataset: str,
    metric: str = "R@1",
    recipe: str | None = None,
    results_dir: str | Path | None = None,
) -> pd.DataFrame:
    """One benchmark's table: published rows beside this study's, final and best epoch.

    Args:
        results: per-cell results with ``group``, ``variant``, ``seed``, the training
            parameters and the metrics as fractions, i.e.
            :func:`dml_study.study.analysis.collect.grid_results`; the best-epoch metric is the
            ``best_test_selected/<metric>`` column (from ``metrics.json`` →
            ``best_test_selected``).
        dataset: benchmark key (``cub200``, ``cars196``, ``sop``, ``inshop``).
        metric: ``"R@1"`` (the metric the papers report).
        recipe: label of our rows (e.g. ``"full"``/``"cpu"``); default: each run's recipe by
            :func:`dml_study.study.analysis.collect.run_recipe`.
        results_dir: where the runs live; used to read the values a run took from its
            dataset preset (``None`` parameters: image size, embedding size, ...).

    Returns one row per published number (``row="published"``) and two rows per
    (group, variant) of ours (``row="this study"``; ``epoch`` = ``"final"`` and
    ``"best (test-selected)"``): mean over seeds in percent, ``std`` (sample, NaN for one
    seed) and ``seeds``. Backbone, embedding size and image size are those the runs used.
    """
    from dml_study.study.analysis.collect import run_recipe

    published = [
        {
            "dataset": r.dataset, "row": "published", "method": r.method, "backbone": r.backbone,
            "embedding_dim": r.embedding_dim, "image_size": r.image_size, "epoch": r.epoch,
            "metric": r.metric, "value": np.nan if r.value is None else r.value, "std": np.nan,
            "seeds": np.nan, "recipe": "published", "verified": r.verified,
            "source": f"{r.citation}; {r.source}" if r.source else r.citation, "note": r.note,
        }
        for r in published_results(dataset)
        if r.metric == metric
    ]
    ours: list[dict[str, Any]] = []
    if results is not None and not results.empty and "dataset" in results:
        mine = results[results["dataset"] == dataset]
        for (group, variant), cells in mine.groupby(["group", "variant"], sort=False):
            first = pd.Series(_resolved_params(cells, results_dir))
            label = recipe or run_recipe(first.to_dict())
            for epoch, column in ((FINAL_EPOCH, metric),
                                  (BEST_EPOCH, f"best_test_selected/{metric}")):
                values = (
                    pd.to_numeric(cells[column], errors="coerce") * 100.0
                    if column in cells else pd.Series(dtype=float)
                )
                values = values.dropna()
                ours.append({
                    "dataset": dataset, "row": "this study", "method": _our_method(first),
                    "backbone": first.get("backbone"),
                    "embedding_dim": first.get("embedding_dim"),
                    "image_size": first.get("image_size"), "epoch": epoch, "metric": metric,
                    "value": values.mean() if len(values) else np.nan,
                    "std": values.std(ddof=1) if len(values) > 1 else np.nan,
                    "seeds": len(values), "recipe": label, "verified": np.nan,
                    "source": f"this study: {group}/{variant}",
                    "note": "" if len(values) else f"no {column} in metrics.json",
                })
    return pd.DataFrame([*published, *ours], columns=list(COMPARISON_COLUMNS))


def comparison_tables(
    results: pd.DataFrame,
    datasets: Iterable[str] | None = None,
    metric: str = "R@1",
    results_dir: str | Path | None = None,
) -> dict[str, pd.DataFrame]:
    """:func:`comparison_table` for each benchmark of ``datasets`` (default: every benchmark
    of the data registry); embedded datasets are skipped (nothing is published for them)."""
    from dml_study.data.registry import list_datasets

    datasets = list_datasets(kind="benchmark") if datasets is None else datasets
    return {
        ds: comparison_table(results, ds, metric, results_dir=results_dir)
        for ds in datasets if not _is_embedded(ds)
    }
