"""The ``python -m dml_study.train`` command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from dml_study.train import build_parser, main, parse_overrides


def test_flat_and_dotted_options_are_typed():
    ns = build_parser().parse_args(
        ["--lr", "3e-5", "--optim.proxy_lr_mult", "10", "--pretrained", "false",
         "--eval.ks", "[1, 2]", "--embedding_dim", "none", "--loss", "normsoftmax"]
    )
    assert parse_overrides(ns) == {
        "optim.lr": 3e-5, "optim.proxy_lr_mult": 10, "model.pretrained": False,
        "eval.ks": [1, 2], "model.embedding_dim": None, "loss.name": "normsoftmax",
    }


def test_print_config_resolves_preset_and_overrides(capsys, tmp_path):
    user = tmp_path / "u.yaml"
    user.write_text("optim:\n  weight_decay: 0.05\n")
    assert main(["--dataset", "sop", "--config", str(user), "--so_lambda", "0.2",
                 "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["dataset"] == "sop"
    assert printed["loss"]["so_lambda"] == 0.2
    assert printed["optim"]["weight_decay"] == 0.05
    assert printed["schedule"]["gamma"] == 0.25  # from the SOP preset


def test_invalid_value_exits_with_the_config_error():
    out = subprocess.run(
        [sys.executable, "-m", "dml_study.train", "--lr", "-1", "--print-config"],
        capture_output=True, text=True,
    )
    assert out.returncode == 2
    assert "optim.lr: must be > 0" in out.stderr


@pytest.mark.slow
def test_cli_trains_and_prints_metrics_json(cub_root, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "dml_study.train", "--dataset", "cub200",
         "--data_root", str(cub_root), "--results_dir", str(tmp_path), "--run_name", "cli",
         "--backbone", "deit_tiny_patch16_224", "--pretrained", "false", "--set_img_size",
         "true", "--patch_size", "8", "--image_size", "32", "--embedding_dim", "16",
         "--batch_size", "32", "--epochs", "1", "--ks", "[1, 2]", "--nmi", "false",
         "--quiet", "true", "--num_workers", "0"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    printed = json.loads(out.stdout[out.stdout.index("{"):])
    stored = json.loads((tmp_path / "runs" / "cli" / "metrics.json").read_text())
    assert printed["R@1"] == stored["R@1"] and printed["untrained"] == stored["untrained"]
    assert "NMI" not in stored
