"""The export format on a tiny fine-tuned run: round trip, model card, errors, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dml_study.errors import EXIT_DAMAGED, EXIT_DATA, EXIT_USAGE, run_cli
from dml_study.export import export_run, load_checkpoint_weights, load_embedder
from dml_study.export.writer import ExportExistsError
from dml_study.models import (
    ArchitectureMismatchError,
    ExportDamagedError,
    ExportError,
    ExportMissingError,
    create_embedder,
    read_export,
    resolve_backbone,
)
from dml_study.models.exported import CARD_FILE, MANIFEST_FILE, MODEL_FILE, PROXIES_FILE
from dml_study.training.checkpoint import load_checkpoint
from dml_study.training.pipeline import embedder_arguments


def _trained_model(config, checkpoint: Path):
    """The trainer's network with a checkpoint's weights, built the trainer's way."""
    model = create_embedder(**embedder_arguments(config))
    model.load_state_dict(load_checkpoint(checkpoint)["model"])
    return model.eval()


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    head, _, _ = card[4:].partition("\n---\n")
    return yaml.safe_load(head)


def test_safetensors_round_trip_is_exact(trained_run, exported: Path) -> None:
    _config, run_dir = trained_run
    export = read_export(exported)
    checkpoint = load_checkpoint(run_dir.last_checkpoint)
    state = export.state_dict()
    assert set(state) == set(checkpoint["model"])
    for key, tensor in checkpoint["model"].items():
        assert torch.equal(state[key], tensor), key
    assert torch.equal(export.proxies(), checkpoint["loss"]["proxies"])
    np.testing.assert_array_equal(export.proxies().numpy(), np.load(run_dir.proxies))
    assert (exported / "config.yaml").read_bytes() == run_dir.config.read_bytes()
    assert export.manifest["source"] == {
        **export.manifest["source"], "tier": "fine-tuned", "weights": "final", "epoch": 2,
        "checkpoint": "checkpoints/last.pt"}


def test_create_embedder_weights_rebuilds_the_trained_network(trained_run, exported) -> None:
    config, run_dir = trained_run
    reference = _trained_model(config, run_dir.last_checkpoint)
    arch = read_export(exported).architecture
    loaded = create_embedder(backbone="deit_tiny_patch16_224", embedding_dim=16,
                             img_size=32, patch_size=8, weights=exported).eval()
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(loaded(x), reference(x))  # bit-identical
        assert torch.equal(load_embedder(exported)(x), reference(x))
    assert loaded.data_config == reference.data_config
    assert arch.timm_architecture == "deit_tiny_patch16_224" and arch.head == "linear"
    # The freezing options are free: an export can be fine-tuned further.
    frozen = create_embedder(**arch.create_embedder_kwargs(), freeze_backbone=True,
                             weights=exported / MODEL_FILE)
    assert not any(p.requires_grad for p in frozen.backbone.parameters())


def test_checkpoints_load_with_weights_only(trained_run) -> None:
    _, run_dir = trained_run
    state = load_checkpoint_weights(run_dir.last_checkpoint)
    assert {"model", "loss", "rng", "optimizer"} <= set(state)
    # Checkpoint format 2 stores NumPy's RNG state as plain values, so torch's restricted
    # unpickler loads last.pt as it is (format 1 files need the NumPy allowlist).
    assert "model" in torch.load(run_dir.last_checkpoint, weights_only=True)
    assert "model" in torch.load(run_dir.best_checkpoint, weights_only=True)


def test_model_card_front_matter_parses_with_the_expected_keys(trained_run, exported) -> None:
    _config, run_dir = trained_run
    card = (exported / CARD_FILE).read_text(encoding="utf-8")
    meta = _front_matter(card)
    assert {"library_name", "tags", "datasets", "metrics", "license", "license_name",
            "license_link", "model-index", "dml_study"} <= set(meta)
    assert meta["datasets"] == ["cub200"] and "deep-metric-learning" in meta["tags"]
    metrics = json.loads(run_dir.metrics.read_text())
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["split"] == "test"
    values = {m["type"]: m for m in result["metrics"]}
    assert set(values) == {"recall_at_1", "recall_at_2", "recall_at_4", "map_at_r",
                           "r_precision"}
    assert values["recall_at_1"]["value"] == pytest.approx(metrics["R@1"], abs=1e-6)
    assert values["recall_at_1"]["name"] == "R@1 (test, epoch 2, final weights)"
    ours = meta["dml_study"]
    provenance = json.loads(run_dir.provenance.read_text())
    assert ours["commit"] == provenance["git_commit"]
    assert ours["versions"]["torch"] == provenance["packages"]["torch"]
    assert ours["config"] == yaml.safe_load(run_dir.config.read_text())
    assert ours["metrics"]["final"]["R@1"] == metrics["R@1"]
    assert ours["metrics"]["best"]["epoch"] == metrics["best_test_selected"]["epoch"]
    assert ours["licences"]["backbone"]["licence"] == "none"  # pretrained: false
    assert ours["licences"]["dataset"]["summary"].startswith("unknown")
    for heading in ("## Use", "## Evaluation", "## Provenance", "## Licence notes"):
        assert heading in card


def test_architecture_mismatch_names_every_difference(exported: Path) -> None:
    with pytest.raises(ArchitectureMismatchError) as err:
        create_embedder(backbone="resnet18", embedding_dim=32, weights=exported)
    message = str(err.value)
    assert "backbone: export has 'deit_tiny_patch16_224', asked 'resnet18'" in message
    assert "embedding_dim: export has 16, asked 32" in message
    assert "patch_size=8" in message and "load_embedder" in message  # the call that works
    assert err.value.exit_code == EXIT_USAGE
    with pytest.raises(ArchitectureMismatchError, match="l2_normalize"):
        create_embedder(backbone="deit_tiny_patch16_224", embedding_dim=16, img_size=32,
                        patch_size=8, l2_normalize=True, weights=exported)
    with pytest.raises(TypeError, match="not both"):
        create_embedder(weights=exported, pretrained_path="x.pth")


def test_missing_and_damaged_files_fail_clearly(export_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportMissingError, match="does not exist"):
        read_export(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportMissingError, match=r"export\.json is missing"):
        read_export(tmp_path / "empty")

    model = export_copy / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ExportDamagedError, match=r"model\.safetensors has sha256") as err:
        read_export(export_copy)
    assert err.value.exit_code == EXIT_DAMAGED
    (export_copy / PROXIES_FILE).unlink()
    with pytest.raises(ExportMissingError, match=r"proxies\.safetensors missing") as err:
        load_embedder(export_copy)
    assert err.value.exit_code == EXIT_DATA

    manifest = json.loads((export_copy / MANIFEST_FILE).read_text())
    (export_copy / MANIFEST_FILE).write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(ExportDamagedError, match="export format 99"):
        read_export(export_copy)


def test_export_refuses_unfinished_runs_and_foreign_directories(trained_run, tmp_path) -> None:
    _, run_dir = trained_run
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir.path, unfinished)
    (unfinished / "metrics.json").unlink()
    with pytest.raises(ExportError, match="not finished"):
        export_run(unfinished, tmp_path / "a")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ExportExistsError, match="never deleted"):
        export_run(run_dir.path, foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    out = tmp_path / "out"
    export_run(run_dir.path, out)
    with pytest.raises(ExportExistsError, match="--overwrite"):
        export_run(run_dir.path, out)
    best = export_run(run_dir.path, out, weights="best", overwrite=True)
    state = load_checkpoint(run_dir.best_checkpoint)
    assert best.manifest["source"]["epoch"] == state["epoch"]
    assert best.manifest["source"]["checkpoint"] == "checkpoints/best.pt"
    assert all(torch.equal(best.state_dict()[k], v) for k, v in state["model"].items())
    assert not list(tmp_path.glob(".out.*"))  # no temporary directory left behind


def test_cli_errors_are_one_line(trained_run, tmp_path, capsys) -> None:
    from dml_study.export.__main__ import main

    code = run_cli(main, [str(tmp_path / "no-run"), str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_DATA and len(err) == 1 and err[0].startswith("error: ")
    assert "does not exist" in err[0]
    code = run_cli(main, [str(trained_run[1].path), str(tmp_path / "ok")])
    out = capsys.readouterr().out
    assert code == 0 and "exported tiny (fine-tuned, final weights, epoch 2)" in out


def test_packaged_backbones_rebuild_as_their_timm_architecture() -> None:
    assert resolve_backbone("efficientnet_lite0") == (
        "tf_efficientnet_lite0", {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)})
    assert resolve_backbone("efficientnet_lite0", pretrained=False) == ("efficientnet_lite0", {})
    assert resolve_backbone("deit_tiny_patch16_224") == ("deit_tiny_patch16_224", {})
