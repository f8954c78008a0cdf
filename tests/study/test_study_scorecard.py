"""The scorecard for readers (#24): digits from the CI width, one row per claim, escaped HTML,
the README block tied to ``claims.json``, the long table as CSV."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dml_study.study.analysis.claims import scorecard_table
from dml_study.study.analysis.stats import (
    MINUS,
    format_estimate,
    format_signed,
    interval_decimals,
)
from dml_study.study.report.markup import (
    Cell,
    frame_table,
    html_table,
    markdown_table,
    markdown_text,
)
from dml_study.study.report.pagecheck import html_problems
from dml_study.study.report.readme import (
    ScorecardBlockError,
    readme_problems,
    update_project_readme,
    update_readme,
)
from dml_study.study.report.scorecard import (
    Scorecard,
    claims_csv,
    epoch_text,
    flat_table,
)

REPO = Path(__file__).resolve().parents[2]


def _claim(name, dataset, tier, effect, low, high, verdict="supported", **extra):
    row = {"claim": f"the sentence of {name}", "paper": "SO", "dataset": dataset,
           "regime": {"icons": "C<d", "glyphs": "C>>d"}.get(dataset, "C>d"), "tier": tier,
           "metric": "R@1", "unit": "pp", "name": name, "baseline": "no_so",
           "treatment": "so", "direction": "increase", "effect": effect, "ci_low": low,
           "ci_high": high, "seeds": 10, "verdict": verdict}
    row.update(extra)
    return row


# ------------------------------------------------------------------- the digits rule


def _parse(text: str) -> float:
    return float(text.replace(MINUS, "-"))


def test_cos_effects_no_longer_collapse_to_one_number():
    # The committed icons row of mean |cos|: "-0.20 [-0.20, -0.20]" with 2 fixed decimals.
    effect, ci = format_estimate(-0.2028962294002999, -0.20384424352188465,
                                 -0.20194821527871512, 10)
    assert (effect, ci) == ("−0.20290", "[−0.20384, −0.20195]")
    assert format_estimate(4.52, 4.147152630998974, 4.892847369001027) == (
        "+4.52", "[+4.15, +4.89]")
    assert format_estimate(-1.3, -2.4706, -0.1294) == ("−1.3", "[−2.5, −0.1]")
    assert format_estimate(-120.0, -250.0, 10.0) == ("−120", "[−250, +10]")  # never < 0 decimals


def test_half_width_keeps_two_significant_digits_and_ends_differ():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        centre = rng.normal() * 10.0 ** rng.integers(-4, 4)
        half = 10.0 ** rng.uniform(-6, 3)
        low, high = centre - half, centre + half
        decimals = interval_decimals(low, high)
        shown_low, shown_high = re.fullmatch(r"\[(\S+), (\S+)\]",
                                             format_estimate(centre, low, high)[1]).groups()
        assert shown_low != shown_high, (low, high)
        if decimals > 0:  # the shown half-width has two significant digits
            shown_half = (_parse(shown_high) - _parse(shown_low)) / 2
            assert 10 <= round(shown_half * 10 ** decimals) < 1000 + 1, (low, high, decimals)
            assert decimals == 1 - math.floor(math.log10(half))


def test_undefined_intervals_say_why_and_never_crash():
    assert format_estimate(10.0, None, None, 1) == ("+10.0", "n = 1: no CI")
    assert format_estimate(0.00328, float("nan"), float("nan"), 5) == ("+0.00328", "no CI")
    assert format_estimate(None, None, None, 0) == ("–", "n = 0: no CI")
    assert format_estimate(10.0, 10.0, 10.0, 3) == ("+10.0", "[+10.0, +10.0]")  # zero width
    assert interval_decimals(1.0, 1.0) is None and interval_decimals(None, 2.0) is None
    assert format_signed(-0.5, 1) == "−0.5" and format_signed(float("inf"), 1) == "–"


def test_notebook_tables_use_the_same_rule():
    rows = [_claim("so_cos", "icons", "frozen", -0.2029, -0.20384, -0.20195, unit="|cos|")]
    table = scorecard_table(rows)
    assert table.loc[0, "effect"] == "−0.20290 |cos|"
    assert table.loc[0, "95% CI"] == "[−0.20384, −0.20195]"


# ----------------------------------------------------------------------- the pivot


def test_one_row_per_claim_columns_per_dataset_and_tier():
    claims = [
        _claim("so_r1", "icons", "frozen", -0.07, -0.29, 0.16, "inconclusive"),
        _claim("so_r1", "glyphs", "frozen", 4.52, 4.15, 4.89),
        _claim("so_r1_finetuned", "icons", "fine-tuned", -0.30, -1.27, 0.68, "inconclusive"),
        _claim("so_map_r", "icons", "frozen", -0.15, -0.19, -0.10, "contradicted",
               metric="MAP@R"),
    ]
    card = Scorecard.from_claims(claims)
    assert [c.key[:3] for c in card.columns] == [("icons", "frozen", "preset"),
                                             ("glyphs", "frozen", "preset"),
                                             ("icons", "fine-tuned", "preset")]
    assert [r.label for r in card.rows] == ["so_r1", "so_map_r"]  # the tiers share a row
    md = card.to_markdown()
    assert "| claim | paper | unit | icons · frozen · C\\<d | glyphs · frozen · C>>d |" in md
    assert ("| so_r1 | SO | pp | −0.07 [−0.29, +0.16] ○ inconclusive | "
            "+4.52 [+4.15, +4.89] ✓ supported | −0.30 [−1.27, +0.68] ○ inconclusive |") in md
    assert "| so_map_r | SO | pp | −0.150 [−0.190, −0.100] ✗ contradicted | – | – |" in md
    # The long sentences are footnotes (and tooltips), not the row label.
    assert ("- `so_r1`: so_r1 (frozen): the sentence of so_r1; so_r1_finetuned (fine-tuned): "
            "the sentence of so_r1_finetuned") in md
    html = card.to_html()
    assert "title='the sentence of so_map_r'" in html
    assert "C&lt;d" in html and "C&gt;&gt;d" in html and "C<d" not in html
    assert html_problems(html, "card", fragment=True) == []  # strict parse: no <d> element


def test_protocol_columns_lead_with_tuned_and_rows_without_one_are_preset():
    claims = [
        _claim("so_r1", "icons", "frozen", 1.0, 0.5, 1.5),
        _claim("so_r1", "icons", "frozen", 2.0, 1.5, 2.5, protocol="tuned"),
        _claim("so_r1", "glyphs", "frozen", 3.0, 2.5, 3.5, protocol="preset"),
    ]
    card = Scorecard.from_claims(claims)
    assert [c.key[:3] for c in card.columns] == [("icons", "frozen", "tuned"),
                                             ("icons", "frozen", "preset"),
                                             ("glyphs", "frozen", "preset")]
    assert len(card.rows) == 1 and card.with_protocol
    header = [c.plain for c in card.header()]
    assert header[3:] == ["icons · frozen · C<d · tuned", "icons · frozen · C<d · preset",
                          "glyphs · frozen · C>>d · preset"]
    cells = [c.plain for c in card.table_rows()[0][3:]]
    assert cells[0].startswith("+2.0") and cells[1].startswith("+1.0")
    assert Scorecard.from_claims(claims[:1]).with_protocol is False  # no protocol shown


def test_claims_that_would_share_a_cell_keep_a_row_each_and_n1_renders():
    claims = [
        _claim("a", "icons", "frozen", 1.0, 0.5, 1.5, group="g1"),
        _claim("b", "icons", "frozen", 10.0, None, None, "inconclusive", seeds=1, group="g2"),
        _claim("c", "icons", "frozen", None, None, None, "inconclusive", seeds=0,
               kind="correlation"),
    ]
    card = Scorecard.from_claims(claims)
    assert [r.label for r in card.rows] == ["a", "b", "c"]
    texts = [[c.plain for c in row] for row in card.table_rows()]
    assert texts[1][3] == "+10.0 n = 1: no CI ○ inconclusive"
    assert texts[2][3] == "– n = 0: no CI ○ inconclusive"
    assert Scorecard.from_claims([]).to_markdown().startswith("| claim | paper | unit |")


@pytest.mark.parametrize(("metric", "selection", "epochs", "text"), [
    ("R@1", "fixed", {"no_so": 15, "so": 15}, "at epoch 15 (final)"),
    ("R@1", "validation", {"no_so": 14, "so": 14}, "at validation-selected epoch 14"),
    ("MAP@R", "validation", {"no_so": 14, "so": 15},
     "at validation-selected epoch 14 (no_so), 15 (so)"),
    ("at_epoch:3:R@1", "fixed", {"no_so": 15, "so": 15}, "at epoch 3 of 15"),
    ("at_epoch:3:R@1", "validation", {"no_so": 14, "so": 15},
     "at epoch 3 of validation-selected 14 (no_so), 15 (so)"),
    ("epochs_to:0.9:R@1", "fixed", {"constant": 15, "adaptive": 15}, "over epochs 1–15"),
    ("epochs_to:0.9:R@1", "validation", {"constant": 15, "adaptive": 14},
     "over epochs 1–15 (constant), 1–14 (adaptive), validation-selected"),
    ("R@1", "fixed", None, ""),
])
def test_every_cell_names_the_epoch_its_number_comes_from(metric, selection, epochs, text):
    """Issue #19.4: a number from the test split says which epoch made it (final or chosen on
    validation), in the cell, in the README's Markdown and in the long table."""
    row = _claim("so_r1", "glyphs", "frozen", 1.37, 1.05, 1.68, metric=metric,
                 epoch_selection=selection, **({"epochs": epochs} if epochs else {}))
    assert epoch_text(row) == text
    card = Scorecard.from_claims([row])
    cell = card.cell(card.rows[0], card.columns[0])
    assert cell.plain == f"+1.37 [+1.05, +1.68] ✓ supported {text}".rstrip()
    assert (("epoch", text) in cell.parts) == bool(text)
    assert text in card.to_markdown() and text in card.to_html()
    flat = flat_table([row])
    assert flat.rows[0][flat.header.index("epoch")] == (text or "–")


def test_flat_table_and_csv_keep_every_row():
    claims = [_claim("so_r1", "icons", "frozen", -0.07, -0.29, 0.16, "inconclusive"),
              _claim("so_r1", "glyphs", "frozen", 4.52, None, None, seeds=1,
                     note="fewer than 2 seeds: no CI", protocol="tuned")]
    rows = list(csv.DictReader(io.StringIO(claims_csv(claims))))
    assert [r["protocol"] for r in rows] == ["preset", "tuned"]
    assert list(rows[0])[:4] == ["name", "claim", "paper", "dataset"]
    assert rows[0]["ci_low"] == "-0.29" and rows[1]["ci_low"] == "" and rows[1]["note"]
    html = flat_table(claims).to_html()
    assert "<th class='text'>protocol</th>" in html and "n = 1: no CI" in html


# ------------------------------------------------------------ one escaping function


def test_every_table_escapes_its_text_and_links_are_cells():
    html = html_table(["regime", "link"], [["C<d & C>>d", Cell("a'b", href="x.html?a=1&b=2")]])
    assert "C&lt;d &amp; C&gt;&gt;d" in html
    assert "<a href='x.html?a=1&amp;b=2'>a&#x27;b</a>" in html
    frame = pd.DataFrame({"regime": ["C<d"], "source": [Cell("doi.org", href="https://doi.org/x")],
                          "note": [float("nan")]})
    table = frame_table(frame).to_html()
    assert "C&lt;d" in table and "<a href='https://doi.org/x'>doi.org</a>" in table
    assert ">–</td>" in table and "<th" in table and "index" not in table
    assert markdown_text("a|b <c> \\") == "a\\|b \\<c> \\\\"
    assert markdown_table(["x"], [["C<d"]]).endswith("| C\\<d |")


# ------------------------------------------------------------------- the README block


def _readme(tmp_path: Path, claims: list[dict]) -> Path:
    study = tmp_path / "results" / "s"
    study.mkdir(parents=True)
    (study / "claims.json").write_text(json.dumps(claims))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nbefore\n\n<!-- scorecard:begin results/s/claims.json -->\n"
                      "hand-written table\n<!-- scorecard:end -->\n\nafter\n")
    return readme


def test_readme_block_is_generated_and_checked_against_claims_json(tmp_path: Path):
    claims = [_claim("so_r1", "icons", "frozen", -0.07, -0.29, 0.16, "inconclusive")]
    readme = _readme(tmp_path, claims)
    assert len(readme_problems(readme)) == 1  # the hand-written table disagrees
    assert update_readme(readme) is True and update_readme(readme) is False
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n\n<!-- scorecard:begin results/s/claims.json -->\n")
    assert text.endswith("<!-- scorecard:end -->\n\nafter\n") and "hand-written" not in text
    assert "| so_r1 | SO | pp | −0.07 [−0.29, +0.16] ○ inconclusive |" in text
    assert "[claims.csv](results/s/claims.csv)" in text
    assert readme_problems(readme) == []
    claims[0]["effect"] = -0.08  # the study is run again: the block is stale
    (tmp_path / "results" / "s" / "claims.json").write_text(json.dumps(claims))
    assert "disagrees with that file" in readme_problems(readme)[0]
    # The study's report step updates only the blocks naming its claims file.
    assert update_project_readme(tmp_path, tmp_path / "results" / "other" / "claims.json") is False
    assert update_project_readme(tmp_path, tmp_path / "results" / "s" / "claims.json") is True
    assert readme_problems(readme) == []


def test_readme_markers_and_sources_are_clear_errors(tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- scorecard:begin results/s/claims.json -->\nno end\n")
    with pytest.raises(ScorecardBlockError, match="unmatched scorecard markers"):
        update_readme(readme)
    readme.write_text("<!-- scorecard:begin results/none/claims.json -->\n<!-- scorecard:end -->")
    with pytest.raises(ScorecardBlockError, match="does not exist; run the study"):
        update_readme(readme)


def test_readme_cli_checks_and_updates(tmp_path: Path, capsys):
    from dml_study.study.report.cli import main

    readme = _readme(tmp_path, [_claim("so_r1", "icons", "frozen", 1.0, 0.5, 1.5)])
    with pytest.raises(Exception, match="disagrees"):
        main(["--readme", str(readme), "--check"])
    assert main(["--readme", str(readme)]) == 0
    assert main(["--readme", str(readme), "--check"]) == 0
    assert "agrees with its claims.json" in capsys.readouterr().out


def test_project_readme_scorecard_agrees_with_the_committed_claims():
    """The README's generated block is the scorecard of ``results/embedded/claims.json``."""
    readme = REPO / "README.md"
    if not (REPO / "results" / "embedded" / "claims.json").is_file():
        pytest.skip("results/embedded is not committed in this checkout")
    assert "<!-- scorecard:begin results/embedded/claims.json -->" in readme.read_text()
    assert readme_problems(readme) == [], "run: python -m dml_study.study.report --readme"
