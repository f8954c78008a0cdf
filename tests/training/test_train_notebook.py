"""notebooks/02_train.ipynb executed by papermill on the tiny fixture (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import papermill
import pytest

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "02_train.ipynb"
REQUIRED = ("dataset", "data_root", "backbone", "pretrained", "loss", "so_lambda", "so_gram",
            "so_normalize", "so_reduction", "proxy_init", "embedding_dim", "epochs",
            "batch_size", "m_per_class", "lr", "image_size", "seed", "run_name", "results_dir",
            "device", "num_workers", "quiet")


def _tiny_parameters(cub_root: Path, results: Path, run_name: str) -> dict:
    return {
        "dataset": "cub200", "data_root": str(cub_root), "backbone": "deit_tiny_patch16_224",
        "pretrained": False, "embedding_dim": 32, "epochs": 2, "batch_size": 32,
        "m_per_class": 4, "lr": 1e-3, "image_size": 32, "so_lambda": 0.1, "seed": 0,
        "run_name": run_name, "results_dir": str(results), "num_workers": 0, "quiet": True,
        "overrides": {"model.set_img_size": True, "model.patch_size": 8, "eval.ks": [1, 2, 4],
                      "eval.every_n_epochs": 1, "data.eval_batch_size": 128},
    }


def test_committed_notebook_is_clean_and_parameterised():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert nb.nbformat == 4 and nb.metadata["kernelspec"]["name"] == "python3"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    names = {line.split("=")[0].strip() for line in tagged[0].source.splitlines()
             if "=" in line and not line.startswith("#")}
    assert set(REQUIRED) <= names
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_papermill_runs_the_notebook_on_the_fixture(cub_root, tmp_path):
    out = tmp_path / "out.ipynb"
    params = _tiny_parameters(cub_root, tmp_path / "results", "nb")
    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters=params, cwd=str(tmp_path),
                               kernel_name="python3", progress_bar=False)
    run = tmp_path / "results" / "runs" / "nb"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["untrained"] is not None
    assert (run / "figures" / "training_curves.png").is_file()
    assert (run / "figures" / "proxy_similarity.png").is_file()
    nb = nbformat.read(out, as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
    summary = json.loads(text[text.rindex('{\n  "run_dir"'):])
    assert summary["final"]["R@1"] == metrics["R@1"]
    assert summary["trained_now"] is True
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # sample batch, curves, heatmap


def test_missing_data_fails_in_the_data_cell_with_the_layout_error(tmp_path):
    out = tmp_path / "out.ipynb"
    params = {"dataset": "cars196", "data_root": str(tmp_path / "nodata"),
              "results_dir": str(tmp_path / "results"), "quiet": True}
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(str(NOTEBOOK), str(out), parameters=params,
                                   cwd=str(tmp_path), kernel_name="python3",
                                   progress_bar=False)
    assert "cars196" in info.value.evalue or "cars" in info.value.evalue.lower()
    nb = nbformat.read(out, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    failed = [i for i, c in enumerate(code)
              if any(o.get("output_type") == "error" for o in c.outputs)]
    assert failed and "load_datasets" in code[failed[0]].source
    assert not (tmp_path / "results" / "runs").exists()
