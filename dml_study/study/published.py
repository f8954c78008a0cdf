"""Published reference numbers (Recall@1, %) to set beside this study's runs.

Two papers: Proxy Anchor (Kim et al., CVPR 2020, arXiv:2003.13911) and the hyperbolic
vision transformers Hyp-DeiT / Hyp-ViT (Ermolov et al., CVPR 2022, arXiv:2203.10833).

Every number carries ``verified`` and ``source``. A number is *verified* when it was
checked against a public page that reports the paper's own results (the page is the
``source``); numbers we could not check offline are kept as ``None`` with a note saying
where to read them, rather than typed in from memory. Tables built from this module show
an unverified entry as missing, never as a guess.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

PROXY_ANCHOR_CITATION = (
    "S. Kim, D. Kim, M. Cho, S. Kwak. Proxy Anchor Loss for Deep Metric Learning. "
    "CVPR 2020. arXiv:2003.13911"
)
HYP_VIT_CITATION = (
    "A. Ermolov, L. Mirvakhabova, V. Khrulkov, N. Sebe, I. Oseledets. Hyperbolic Vision "
    "Transformers: Combining Improvements in Metric Learning. CVPR 2022. arXiv:2203.10833"
)

#: Papers with Code's "Results from the Paper" listing for each paper (checked 2026-11).
_PWC_PROXY_ANCHOR = "https://www.paperswithcode.com/paper/proxy-anchor-loss-for-deep-metric-learning"
_PWC_HYP = "https://paperswithcode.com/paper/hyperbolic-vision-transformers-combining"


@dataclass(frozen=True)
class PublishedResult:
    """One published number."""

    method: str
    dataset: str
    metric: str
    #: Percent, as printed in the paper; ``None`` when it could not be verified.
    value: float | None
    backbone: str
    embedding_dim: int | None
    citation: str
    verified: bool
    source: str | None
    note: str = ""


_PA_NOTE = "R@1 listed by Papers with Code for 'BN-Inception + Proxy-Anchor'"
_HYP_NOTE = "R@1 listed by Papers with Code for 'Hyp-ViT'"

PUBLISHED: tuple[PublishedResult, ...] = (
    # Proxy Anchor with a BN-Inception backbone. The listing does not state the embedding
    # size or input resolution of the entry, so neither is claimed here.
    PublishedResult("Proxy Anchor", "cub200", "R@1", 71.1, "BN-Inception", None,
                    PROXY_ANCHOR_CITATION, True, _PWC_PROXY_ANCHOR, _PA_NOTE),
    PublishedResult("Proxy Anchor", "cars196", "R@1", 88.3, "BN-Inception", None,
                    PROXY_ANCHOR_CITATION, True, _PWC_PROXY_ANCHOR, _PA_NOTE),
    PublishedResult("Proxy Anchor", "sop", "R@1", 80.3, "BN-Inception", None,
                    PROXY_ANCHOR_CITATION, True, _PWC_PROXY_ANCHOR, _PA_NOTE),
    PublishedResult("Proxy Anchor", "inshop", "R@1", None, "BN-Inception", None,
                    PROXY_ANCHOR_CITATION, False, None,
                    "not verified offline: read the In-Shop table of arXiv:2003.13911"),
    # Hyp-ViT: ViT-S/16 encoder with hyperbolic embeddings.
    PublishedResult("Hyp-ViT", "cub200", "R@1", 85.6, "ViT-S/16", None,
                    HYP_VIT_CITATION, True, _PWC_HYP, _HYP_NOTE),
    PublishedResult("Hyp-ViT", "cars196", "R@1", 86.5, "ViT-S/16", None,
                    HYP_VIT_CITATION, True, _PWC_HYP, _HYP_NOTE),
    PublishedResult("Hyp-ViT", "sop", "R@1", 85.9, "ViT-S/16", None,
                    HYP_VIT_CITATION, True, _PWC_HYP, _HYP_NOTE),
    PublishedResult("Hyp-ViT", "inshop", "R@1", 92.5, "ViT-S/16", None,
                    HYP_VIT_CITATION, True, _PWC_HYP,
                    _HYP_NOTE + "; another index lists 92.7 (a different row of the table?)"),
    # Hyp-DeiT (DeiT-S): none of the listings we could reach includes it.
    *(
        PublishedResult("Hyp-DeiT", ds, "R@1", None, "DeiT-S", None, HYP_VIT_CITATION,
                        False, None, "not verified offline: read Table 1 of arXiv:2203.10833")
        for ds in ("cub200", "cars196", "sop", "inshop")
    ),
)


def published_results(dataset: str | None = None) -> list[PublishedResult]:
    """All published entries, or those of one dataset."""
    if dataset is None:
        return list(PUBLISHED)
    known = sorted({r.dataset for r in PUBLISHED})
    if dataset not in known and dataset != "icons":
        raise ValueError(f"unknown dataset {dataset!r}; published numbers exist for {known}")
    return [r for r in PUBLISHED if r.dataset == dataset]


def published_table(dataset: str | None = None) -> pd.DataFrame:
    """Published entries as a table (value in percent; ``NaN`` where unverified)."""
    rows = [asdict(r) for r in published_results(dataset)]
    columns = [f.name for f in PublishedResult.__dataclass_fields__.values()]
    return pd.DataFrame(rows, columns=columns)


def citations() -> list[str]:
    """The full citation strings, one per paper."""
    return [PROXY_ANCHOR_CITATION, HYP_VIT_CITATION]
