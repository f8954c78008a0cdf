"""The retrieval gallery's pieces: the metrics' search on query rows, seeded queries, the
row -> test image map, per-class R@1 changes, CJK text, and the marks in the figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dml_study.evaluation.knn import l2_normalize, search
from dml_study.evaluation.per_class import per_class_recall_at_1
from dml_study.study.analysis import retrieval
from dml_study.study.plan.grid import FeatureSettings
from dml_study.study.report import plots
from dml_study.study.tiers.frozen import cached_test_indices


def _embeddings(n: int = 60, dim: int = 4, seed: int = 0, levels: int = 3) -> np.ndarray:
    # Few distinct values per coordinate: many exact ties between neighbours.
    rng = np.random.default_rng(seed)
    return rng.integers(-levels, levels + 1, size=(n, dim)).astype(np.float32)


def test_top_k_is_the_metrics_search_restricted_to_the_query_rows():
    emb = _embeddings()
    queries = np.array([5, 0, 59, 17, 33])
    rows, scores = retrieval.top_k(emb, queries, k=7)
    full = next(iter(search(l2_normalize(emb), None, 7, chunk_size=len(emb))))
    np.testing.assert_array_equal(rows, full.indices[queries])
    np.testing.assert_array_equal(scores, full.scores[queries])
    assert not (rows == queries[:, None]).any()  # the query is never its own neighbour


def test_first_neighbour_reproduces_per_class_r1():
    emb = _embeddings(seed=1, levels=20)
    labels = np.repeat(np.arange(12), 5)
    rows, _ = retrieval.top_k(emb, np.arange(len(emb)), k=1)
    hits = labels[rows[:, 0]] == labels
    expected = per_class_recall_at_1(emb, labels)
    np.testing.assert_allclose([hits[labels == c].mean() for c in range(12)], expected)


def test_seeded_queries_are_one_image_of_distinct_classes_and_depend_on_the_seed_only():
    labels = np.repeat(np.arange(20), 3)
    labels = np.append(labels, 99)  # a class of one image can find no correct result
    first = retrieval.seeded_queries(labels, 8, seed=0)
    assert len(first) == 8 and len(set(labels[first])) == 8 and 99 not in labels[first]
    np.testing.assert_array_equal(first, retrieval.seeded_queries(labels.copy(), 8, seed=0))
    assert not np.array_equal(first, retrieval.seeded_queries(labels, 8, seed=1))
    # Fewer classes than queries: further images of the same classes.
    few = retrieval.seeded_queries(np.repeat([0, 1], 4), 5, seed=0)
    assert len(few) == len(set(few)) == 5


def _run(tmp_path: Path, labels: np.ndarray, indices: np.ndarray | None = None,
         features: dict | None = None) -> Path:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    arrays = {"embeddings": np.zeros((len(labels), 2)), "labels": labels}
    if indices is not None:
        arrays["indices"] = indices
    np.savez(run / "test_embeddings.npz", **arrays)
    metrics = {"R@1": 0.5} if features is None else {"R@1": 0.5, "features": features}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_image_indices_come_from_the_run_the_tier_rule_or_the_whole_split(tmp_path):
    dataset = np.repeat(np.arange(6), 7)
    settings = FeatureSettings(views=2, feature_seed=3, max_test_per_class=3)
    subset = cached_test_indices(dataset, settings)
    assert len(subset) == 18
    # 1. The indices array the frozen tier writes.
    run = _run(tmp_path, dataset[subset], subset)
    np.testing.assert_array_equal(retrieval.test_image_indices(run, dataset), subset)
    # 2. A run written before it: the tier's subset rule with the settings in metrics.json.
    run = _run(tmp_path, dataset[subset], features=settings.identity())
    np.testing.assert_array_equal(retrieval.test_image_indices(run, dataset), subset)
    # 3. A fine-tuned run: the whole split.
    run = _run(tmp_path, dataset)
    np.testing.assert_array_equal(retrieval.test_image_indices(run, dataset), np.arange(42))
    # A run of another build (other labels): refused, not silently mis-paired.
    run = _run(tmp_path, dataset[subset][::-1], features=settings.identity())
    with pytest.raises(retrieval.RetrievalDataError, match="another build"):
        retrieval.test_image_indices(run, dataset)


def _arm(name: str, emb: np.ndarray, labels: np.ndarray) -> retrieval.ArmEmbeddings:
    return retrieval.ArmEmbeddings(name, f"run-{name}", emb, labels, np.arange(len(labels)))


def test_per_class_change_is_treatment_minus_baseline_sorted():
    labels = np.array([3, 3, 3, 7, 7, 7])
    # Baseline: class 3 perfectly clustered, class 7 scattered; treatment: the reverse.
    base = np.array([[1, 0], [1, 0.01], [1, 0.02], [0, 1], [-1, 0.1], [0.2, -1]])
    treat = np.array([[1, 0], [0, 1], [-1, 0.1], [0.3, -1], [0.31, -1], [0.32, -1]])
    frame = retrieval.per_class_change(_arm("a", base, labels), _arm("b", treat, labels),
                                       names=[f"c{i}" for i in range(8)])
    expected = {3: (100.0, 100 * per_class_recall_at_1(treat, labels // 7)[0]),
                7: (100 * per_class_recall_at_1(base, labels // 7)[1], 100.0)}
    assert list(frame["label"]) == [7, 3] and list(frame["class"]) == ["c7", "c3"]
    for _, row in frame.iterrows():
        b, t = expected[row["label"]]
        assert (row["baseline_R@1"], row["treatment_R@1"]) == pytest.approx((b, t))
        assert row["change"] == pytest.approx(t - b)
    other = _arm("c", treat, labels[::-1].copy())
    with pytest.raises(retrieval.RetrievalDataError, match="different test images"):
        retrieval.per_class_change(_arm("a", base, labels), other, names=["x"] * 8)


def test_short_names_keep_their_character():
    assert plots.short_name("unit of length equal 3.3 meters; gentleman (丈)", 20) == \
        "unit of length… (丈)"
    assert plots.short_name("list add", 20) == "list add"


def test_cjk_text_gets_a_font_that_has_it_or_its_code_points(monkeypatch, tmp_path):
    monkeypatch.setattr(plots, "_font_dirs", lambda: [tmp_path / "none"])
    plots.font_for.cache_clear()
    texts, families = plots.readable_text(["loquat (枇)", "list add"])
    assert texts == ["loquat (U+6787)", "list add"] and families is None
    assert plots.readable_text(["café ✓"]) == (["café ✓"], None)  # the default font has these
    plots.font_for.cache_clear()


def test_the_glyph_datasets_label_fonts_draw_class_characters(monkeypatch, tmp_path):
    """On a machine without a CJK font, the label fonts the glyph build keeps in the cache
    (``<cache>/label-fonts``) draw ``loquat (枇)``; without them the code point is shown."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    from dml_study.data.glyphs import FaceSource, FontFace, write_label_fonts

    pen = TTGlyphPen(None)
    for x0, y0, x1, y1 in ((100, 0, 900, 100), (450, 0, 550, 800)):
        pen.moveTo((x0, y0)), pen.lineTo((x0, y1)), pen.lineTo((x1, y1)), pen.lineTo((x1, y0))
        pen.closePath()
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder([".notdef", "uni6787", "uni6777"])
    builder.setupCharacterMap({0x6787: "uni6787", 0x6777: "uni6777"})
    builder.setupGlyf({n: pen.glyph() for n in (".notdef", "uni6787", "uni6777")})
    builder.setupHorizontalMetrics({n: (1000, 0) for n in (".notdef", "uni6787", "uni6777")})
    builder.setupHorizontalHeader(ascent=880, descent=-120)
    builder.setupNameTable({"familyName": "Label Test Sans", "styleName": "Regular"})
    builder.setupOS2(sTypoAscender=880, sTypoDescender=-120, usWinAscent=880, usWinDescent=120)
    builder.setupPost()
    builder.save(str(tmp_path / "full.ttf"))
    monkeypatch.setattr(plots, "FONT_DIRS", (str(tmp_path / "no-system-fonts"),))
    monkeypatch.setenv("DML_STUDY_CACHE", str(tmp_path / "cache"))
    plots.font_for.cache_clear()
    assert plots.readable_text(["loquat (枇)"]) == (["loquat (U+6787)"], None)
    source = FaceSource(FontFace("label-test", "fonts-test", "usr/full.ttf"), "1", tmp_path /
                        "full.ttf")
    write_label_fonts([source], [0x6787], tmp_path / "cache" / "label-fonts")
    plots.font_for.cache_clear()
    texts, families = plots.readable_text(["loquat (枇)"])
    assert texts == ["loquat (枇)"] and families[-1] == "Label Test Sans"
    plots.font_for.cache_clear()


def test_a_font_with_the_characters_is_used_when_one_is_installed():
    plots.font_for.cache_clear()
    family = plots.font_for(frozenset({0x6787}))
    if family is None:
        pytest.skip("no font with CJK characters on this machine (the code-point fallback "
                    "is tested above)")
    from matplotlib import font_manager, ft2font

    path = font_manager.findfont(font_manager.FontProperties(family=family),
                                 fallback_to_default=False)
    assert 0x6787 in ft2font.FT2Font(path).get_charmap()
    texts, families = plots.readable_text(["loquat (枇)"])
    assert texts == ["loquat (枇)"] and families[-1] == family


def _comparison() -> retrieval.RetrievalComparison:
    from PIL import Image

    labels = np.repeat(np.arange(6), 4)
    emb = np.random.default_rng(0).normal(size=(24, 3)) + 2 * np.eye(6, 3)[labels]
    comparison = retrieval.RetrievalComparison("toy", 0, ("no_so", "so"), k=5)
    comparison.labels, comparison.image_index = labels, np.arange(24) + 100
    comparison.names = [f"class {i}" for i in range(6)]
    comparison.queries = retrieval.seeded_queries(labels, 4, 0)
    comparison.query_labels = labels[comparison.queries]
    for arm, scale in (("no_so", 1.0), ("so", 3.0)):
        rows, scores = retrieval.top_k(emb * np.array([1, scale, 1]), comparison.queries, 5)
        comparison.neighbours[arm], comparison.scores[arm] = rows, scores
        comparison.correct[arm] = labels[rows] == comparison.query_labels[:, None]
    comparison.changes = retrieval.per_class_change(_arm("no_so", emb, labels),
                                                    _arm("so", emb * [1, 3, 1], labels),
                                                    comparison.names)
    comparison.thumbnails = {i: Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(100, 124)}
    return comparison


def test_the_gallery_marks_every_result_by_frame_and_sign():
    import matplotlib

    matplotlib.use("Agg")
    comparison = _comparison()
    fig = plots.retrieval_gallery(comparison)
    marks = [ax for ax in fig.axes if ax.get_xlabel() in ("✓", "✗")]
    assert len(marks) == 4 * 5 * 2
    flags = np.concatenate([np.ravel(comparison.correct["no_so"][r:r + 1].tolist()
                                     + comparison.correct["so"][r:r + 1].tolist())
                            for r in range(4)])
    assert [ax.get_xlabel() == "✓" for ax in marks] == flags.tolist()
    for ax in marks:  # not colour alone, but colour too: green for ✓, red for ✗
        colour = ax.spines["top"].get_edgecolor()
        assert (colour[1] > colour[0]) == (ax.get_xlabel() == "✓")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [f"class {c}" for c in comparison.query_labels]
    fig = plots.class_changes(comparison, n=2, per_class=3)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    gains, losses = comparison.extremes(2)
    assert len(texts) == len(gains) + len(losses) + (not len(gains)) + (not len(losses))
    assert sum("pp, " in t and "→" in t for t in texts) == len(gains) + len(losses)
    gains, losses = comparison.extremes(2)
    assert pd.concat([gains, losses])["label"].is_unique


def test_class_change_labels_end_before_their_images():
    """A long gloss with its character (glyphs) is drawn whole: the images beside a label
    used to cover its end, and with it the (字) that tells two classes of one gloss apart."""
    import matplotlib

    matplotlib.use("Agg")
    comparison = _comparison()
    # Wide letters: at a fixed column width "companion, colleague; off… (僚)" overflowed
    # where "lucky, fortunate; dote on… (倖)" still fitted.
    comparison.names = [f"WWWMMM mmwwmm, companion; colleague {i} (僚)" for i in range(6)]
    comparison.changes["class"] = [comparison.names[int(c)] for c in comparison.changes["label"]]
    fig = plots.class_changes(comparison, n=2, per_class=4)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    images = [ax.get_window_extent(renderer) for ax in fig.axes if ax.images]
    labels = [t for ax in fig.axes for t in ax.texts if "pp, " in t.get_text()]
    assert labels and images
    for text in labels:
        box = text.get_window_extent(renderer)
        beside = [im.x0 for im in images if im.x0 >= box.x0 and im.y0 < box.y1 and im.y1 > box.y0]
        assert beside, "no image beside the label"
        assert box.x1 <= min(beside), (text.get_text(), box.x1, min(beside))
