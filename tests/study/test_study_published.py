"""Published numbers: every number has a source; unverified ones are not numbers."""

from __future__ import annotations

import pandas as pd
import pytest

from dml_study.study.published import PUBLISHED, citations, published_results
from dml_study.study.tables import comparison_table, configuration_summary


def test_verified_entries_have_values_and_sources_unverified_have_neither():
    for entry in PUBLISHED:
        if entry.verified:
            assert entry.value is not None and 0 < entry.value <= 100
            assert entry.source and entry.source.startswith("https://")
        else:
            assert entry.value is None and entry.source is None and "not verified" in entry.note
    methods = {e.method for e in PUBLISHED}
    assert methods == {"Proxy Anchor", "Hyp-ViT", "Hyp-DeiT"}
    assert {e.dataset for e in PUBLISHED} == {"cub200", "cars196", "sop", "inshop"}
    assert any("2003.13911" in c for c in citations())
    assert any("2203.10833" in c for c in citations())


def test_unknown_dataset_is_rejected_with_valid_names():
    with pytest.raises(ValueError, match="cub200"):
        published_results("mnist")
    assert published_results("icons") == []


def _runs() -> pd.DataFrame:
    base = {"dataset": "cub200", "recipe": "cpu", "backbone": "b", "loss": "proxy_anchor",
            "so_gram": "classes", "so_normalize": True, "proxy_init": "kaiming",
            "embedding_dim": 128, "image_size": 64, "epochs": 4}
    return pd.DataFrame([
        {**base, "so_lambda": 0.0, "seed": 0, "R@1": 0.50, "MAP@R": 0.2},
        {**base, "so_lambda": 0.0, "seed": 1, "R@1": 0.52, "MAP@R": 0.2},
        {**base, "so_lambda": 0.1, "seed": 0, "R@1": 0.60, "MAP@R": 0.3},
    ])


def test_comparison_table_puts_ours_beside_published():
    table = comparison_table(_runs(), "cub200")
    published = table[table["source"] == "published"].set_index("method")
    assert published.loc["Proxy Anchor", "R@1"] == "71.1"
    assert published.loc["Hyp-DeiT", "R@1"] == "not verified"
    ours = table[table["source"] == "this study"].set_index("method")
    assert ours.loc["proxy_anchor", "R@1"] == "51.0 ± 1.4"
    assert ours.loc["proxy_anchor", "seeds"] == 2
    assert ours.loc["proxy_anchor + SO (λ=0.1)", "R@1"] == "60.0"
    assert set(ours["recipe"]) == {"cpu"}


def test_configuration_summary_averages_over_seeds_only():
    summary = configuration_summary(_runs(), "cub200")
    assert len(summary) == 2 and summary["seeds"].tolist() == [2, 1]
    assert configuration_summary(_runs(), "sop").empty
