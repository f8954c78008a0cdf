"""End to end on icons: train a tiny run, export it, load it, embed the test split, search it
and reproduce the run's test R@1 exactly (slow: a real EfficientNet-Lite0 run, minutes)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dml_study.errors import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def icons_run(tmp_path_factory: pytest.TempPathFactory):
    from dml_study.config import load_config
    from dml_study.training import train

    config = load_config(
        "icons", results_dir=str(tmp_path_factory.mktemp("results")), run_name="icons-tiny",
        epochs=1, embedding_dim=16, batch_size=32, image_size=32, nmi=False, untrained=False,
        quiet=True)
    return config, train(config).run_dir


def test_icons_export_reproduces_the_runs_embeddings_and_recall(icons_run, tmp_path, capsys):
    from dml_study import embed as embed_cli
    from dml_study import search as search_cli
    from dml_study.data import get_dataset
    from dml_study.data.transforms import model_transforms
    from dml_study.export.__main__ import main as export_main
    from dml_study.models import create_embedder, read_export
    from dml_study.training.checkpoint import load_checkpoint
    from dml_study.training.pipeline import embedder_arguments

    config, run_dir = icons_run
    metrics = json.loads(run_dir.metrics.read_text())
    out = tmp_path / "export"
    assert run_cli(export_main, [str(run_dir.path), str(out)]) == 0
    export = read_export(out)
    assert export.architecture.timm_architecture == "tf_efficientnet_lite0"
    assert export.preprocessing["channels_last"] is True
    assert export.manifest["classes"]["names"][:1] == ["accessories calculator"]

    # 1. create_embedder(weights=...) is the trained network, bit for bit.
    loaded = create_embedder(backbone="efficientnet_lite0", embedding_dim=16, weights=out)
    trained = create_embedder(**embedder_arguments(config))
    trained.load_state_dict(load_checkpoint(run_dir.last_checkpoint)["model"])
    test = get_dataset("icons", "test", progress=False)
    _, eval_tf = model_transforms(config, trained.data_config)
    batch = torch.stack([eval_tf(test.load_image(i)) for i in range(8)])
    with torch.inference_mode():
        assert torch.equal(loaded.eval()(batch), trained.eval()(batch))
    assert loaded.data_config == trained.data_config

    # 2. embed the test split: the run's test embeddings, bit for bit.
    emb_file = tmp_path / "test.npz"
    assert run_cli(embed_cli.main, [str(out), "--dataset", "icons", "--split", "test",
                                    "--out", str(emb_file), "--quiet"]) == 0
    ours = np.load(emb_file)
    theirs = np.load(run_dir.test_embeddings)
    np.testing.assert_array_equal(ours["embeddings"], theirs["embeddings"])
    assert list(ours["labels"][:1]) == [test.raw_class_names[int(theirs["labels"][0])]]

    # The same images given as folders (DIR/<class>/<image>): same order, same numbers.
    dirs = sorted({str(Path(p).parent) for p in ours["paths"]})
    dir_file = tmp_path / "dirs.npz"
    assert run_cli(embed_cli.main, [str(out), "--images", *dirs, "--out", str(dir_file),
                                    "--quiet"]) == 0
    by_dir = np.load(dir_file)
    assert list(by_dir["paths"]) == list(ours["paths"])
    assert list(by_dir["labels"]) == list(ours["labels"])
    np.testing.assert_array_equal(by_dir["embeddings"], ours["embeddings"])

    # 3. search the test split against itself: the run's R@1, exactly, from the CSV.
    capsys.readouterr()
    results = tmp_path / "search"
    assert run_cli(search_cli.main, [str(out), "--index", str(emb_file), "--query",
                                     str(emb_file), "-k", "5", "--out-dir", str(results),
                                     "--quiet"]) == 0
    printed = capsys.readouterr().out
    with open(results / "neighbours.csv", newline="") as fh:
        top1 = [row for row in csv.DictReader(fh) if row["rank"] == "1"]
    assert len(top1) == len(theirs["labels"])
    hits = sum(row["correct"] == "True" for row in top1)
    assert hits / len(top1) == metrics["R@1"]
    assert f"R@1 over {len(top1)} labelled queries: {metrics['R@1']:.6f}" in printed
    page = (results / "gallery.html").read_text()
    assert page.count("data:image/png;base64,") >= 24 * 6 and "✓" in page

    # 4. new images (copies, outside the index) are embedded by the export and find their
    # originals first.
    new = tmp_path / "new" / "queries"
    new.mkdir(parents=True)
    originals = [Path(p) for p in ours["paths"][:3]]
    for i, p in enumerate(originals):
        shutil.copy(p, new / f"{i}.png")
    results2 = tmp_path / "search2"
    assert run_cli(search_cli.main, [str(out), "--index", str(emb_file), "--query", str(new),
                                     "-k", "3", "--out-dir", str(results2), "--quiet"]) == 0
    with open(results2 / "neighbours.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["rank"] == "1"]
    assert [r["neighbour"] for r in rows] == [str(p) for p in originals]
    assert all(float(r["score"]) > 0.9999 for r in rows)
