"""Published numbers (complete, sourced, flagged) and the published-vs-ours table."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from dml_study.study.analysis import published
from dml_study.study.analysis.published import (
    BEST_EPOCH,
    COMPARISON_COLUMNS,
    FINAL_EPOCH,
    comparison_table,
    comparison_tables,
    published_table,
)


def _value(table, method, dataset):
    row = table[(table["method"] == method) & (table["dataset"] == dataset)]
    assert len(row) == 1, (method, dataset)
    return row.iloc[0]


def test_hyp_deit_numbers_are_there_with_source_and_flag():
    table = published_table()
    for dataset, value in (("cub200", 77.8), ("cars196", 86.4), ("sop", 83.3), ("inshop", 90.5)):
        row = _value(table, "Hyp-DeiT", dataset)
        assert row["value"] == value
        assert row["backbone"].startswith("DeiT-S")
        assert row["source"] and "2203.10833" in row["citation"]
        assert row["verified"] is False or row["verified"] == False  # noqa: E712
        assert "NOT verified" in row["note"]


def test_every_row_states_backbone_epoch_and_source_or_why_not():
    table = published_table()
    assert set(table["dataset"]) == {"cub200", "cars196", "sop", "inshop"}
    assert table["backbone"].notna().all()
    assert set(table["epoch"]) <= {BEST_EPOCH, FINAL_EPOCH, published.NOT_STATED}
    for _, row in table.iterrows():
        assert row["source"] or "not" in row["note"], row["method"]
        if row["verified"]:
            assert row["value"] is not None and not np.isnan(row["value"])


def test_proxy_anchor_inshop_and_official_code_rows():
    table = published_table("inshop")
    code = _value(table, "Proxy Anchor (official code)", "inshop")
    assert code["value"] == 91.9 and code["embedding_dim"] == 512 and code["image_size"] == 224
    assert code["epoch"] == BEST_EPOCH and code["verified"]
    paper = _value(table, "Proxy Anchor (paper)", "inshop")
    assert np.isnan(paper["value"]) and not paper["verified"]


def test_citations_name_the_methods_under_test():
    text = " ".join(published.citations())
    for ref in ("2306.13055", "2006.14693", "Bansal", "2003.13911", "2203.10833"):
        assert ref in text


def _results():
    rows = []
    for variant, base in (("no_so", 0.60), ("so", 0.62)):
        for seed in (0, 1, 2):
            rows.append({
                "group": "cub200_so", "variant": variant, "seed": seed,
                "run_name": f"r-{variant}-{seed}", "dataset": "cub200", "loss": "proxy_anchor",
                "so_lambda": 0.0 if variant == "no_so" else 1000.0,
                "so_reduction": "excess_mean", "backbone": "deit_small_distilled_patch16_224",
                "pretrained": True, "embedding_dim": None, "image_size": None,
                "R@1": base + 0.01 * seed, "best_test_selected/R@1": base + 0.02 + 0.01 * seed,
            })
    rows.append({**rows[0], "dataset": "sop", "group": "sop_so", "run_name": "r-sop"})
    return pd.DataFrame(rows)


def test_comparison_table_puts_published_beside_ours_final_and_best():
    table = comparison_table(_results(), "cub200")
    assert list(table.columns) == list(COMPARISON_COLUMNS)
    assert (table["row"] == "published").sum() == len(published.published_results("cub200"))
    ours = table[table["row"] == "this study"]
    assert len(ours) == 4  # two configurations x {final, best}
    so_final = ours[(ours["source"] == "this study: cub200_so/so") & (ours["epoch"] == FINAL_EPOCH)]
    so_best = ours[(ours["source"] == "this study: cub200_so/so") & (ours["epoch"] == BEST_EPOCH)]
    assert so_final["value"].item() == pytest.approx(63.0)  # mean of 62, 63, 64 (%)
    assert so_final["std"].item() == pytest.approx(1.0)
    assert so_best["value"].item() == pytest.approx(65.0)
    assert so_final["seeds"].item() == 3
    assert "SO (λ=1000, excess_mean)" in so_final["method"].item()


def test_comparison_table_fills_preset_values_from_the_run_config(tmp_path):
    results = _results()
    for name in results["run_name"]:
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({
            "data": {"dataset": "cub200", "image_size": 224},
            "model": {"backbone": "deit_small_distilled_patch16_224", "pretrained": True,
                      "embedding_dim": 384},
        }))
        (run / "metrics.json").write_text(json.dumps({"R@1": 0.5}))
    table = comparison_table(results, "cub200", results_dir=tmp_path)
    ours = table[table["row"] == "this study"]
    assert set(ours["image_size"]) == {224} and set(ours["embedding_dim"]) == {384}
    assert set(ours["recipe"]) == {"full"}


def test_comparison_without_best_metrics_says_so_and_tables_per_benchmark():
    results = _results().drop(columns=["best_test_selected/R@1"])
    table = comparison_table(results, "cub200")
    best = table[(table["row"] == "this study") & (table["epoch"] == BEST_EPOCH)]
    assert best["value"].isna().all()
    assert best["note"].str.contains("no best_test_selected/R@1").all()
    tables = comparison_tables(_results())
    assert set(tables) == {"cub200", "cars196", "sop", "inshop"}
    assert (tables["cars196"]["row"] == "this study").sum() == 0
    assert (tables["sop"]["row"] == "this study").sum() == 2


def test_embedded_datasets_have_no_published_numbers_and_no_error():
    # The data registry's kind decides, so glyphs is treated like icons (it used to raise).
    assert published.published_results("icons") == []
    assert published.published_results("glyphs") == []
    with pytest.raises(ValueError, match="unknown dataset"):
        published.published_results("mnist")
    assert set(comparison_tables(_results(), datasets=["cub200", "glyphs"])) == {"cub200"}
