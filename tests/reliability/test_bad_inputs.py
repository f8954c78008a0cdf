"""Bad inputs are refused before anything runs, with errors naming cause and fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixture_datasets import write_cub_fixture
from reliability_helpers import subprocess_env

from dml_study.config import ConfigError, load_config
from dml_study.data.images import CorruptImageError
from dml_study.evaluation import evaluate
from dml_study.training import Trainer
from dml_study.training.run_dir import RunDirectory


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), "inf", "nan"])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(ConfigError, match=r"optim\.lr: must be a finite number"):
        load_config("icons", lr=value)


def test_non_finite_values_inside_lists_and_mappings_are_refused(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  betas: [0.9, .inf]\n")
    with pytest.raises(ConfigError, match=r"optim\.betas: must be a finite number"):
        load_config(yaml_path=path)
    with pytest.raises(ConfigError, match=r"loss\.params: must be a finite number"):
        load_config("icons", **{"loss.params": {"margin": float("nan")}})


def test_cli_refuses_lr_inf():
    out = subprocess.run([sys.executable, "-m", "dml_study.train", "--lr", "inf",
                          "--print-config"], capture_output=True, text=True,
                         env=subprocess_env(), timeout=300)
    assert out.returncode == 2 and "optim.lr: must be a finite number" in out.stderr


@pytest.mark.parametrize("text, section", [("data: [1, 2]\n", "data"),
                                           ("optim: 3\n", "optim"),
                                           ("run: fast\n", "run")])
def test_malformed_yaml_sections_raise_config_error(tmp_path: Path, text, section):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"section '{section}' must be a mapping"):
        load_config(yaml_path=path)


def test_misspelt_yaml_section_gets_a_did_you_mean(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("optimiser:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="Did you mean 'optim'"):
        load_config(yaml_path=path)


@pytest.fixture
def corrupt_cub(tmp_path: Path) -> tuple[Path, Path]:
    """The CUB fixture with one training image replaced by garbage bytes."""
    root = write_cub_fixture(tmp_path / "cub", num_classes=40, images_per_class=8)
    images = sorted((root / "CUB_200_2011" / "images").rglob("*.jpg"))
    bad = images[0]  # class 1: a training class
    bad.write_bytes(b"not a jpeg at all")
    return root, bad


def test_image_screening_fails_before_the_run_directory_exists(
    corrupt_cub, tiny_config, tmp_path: Path
):
    root, bad = corrupt_cub
    cfg = tiny_config(data_root=str(root), run_name="screened", check_images=True)
    with pytest.raises(CorruptImageError, match="on_corrupt") as info:
        Trainer(cfg)
    assert str(bad) in str(info.value)
    assert not RunDirectory.for_run(cfg.run.results_dir, "screened").path.exists()


def test_on_corrupt_skip_from_the_config_drops_the_image(corrupt_cub, tiny_config):
    root, bad = corrupt_cub
    with pytest.warns(UserWarning, match="skipping corrupt image"):
        trainer = Trainer(tiny_config(data_root=str(root), run_name="s", on_corrupt="skip"))
    assert len(trainer.train_set) == 20 * 8 - 1
    assert bad not in trainer.train_set.paths


def test_on_corrupt_is_a_cli_option():
    out = subprocess.run([sys.executable, "-m", "dml_study.train", "--on_corrupt", "skip",
                          "--check_images", "true", "--print-config"], capture_output=True,
                         text=True, env=subprocess_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert "on_corrupt: skip" in out.stdout and "check_images: true" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "dml_study.train", "--on_corrupt", "ignore",
                          "--print-config"], capture_output=True, text=True,
                         env=subprocess_env(), timeout=300)
    assert bad.returncode == 2 and "data.on_corrupt" in bad.stderr


def _clusters(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(5), 6)
    centres = rng.normal(size=(5, 8))
    return centres[labels] + 0.5 * rng.normal(size=(30, 8)), labels


@pytest.mark.parametrize("scale", [1e-300, 1e-50, 1e30, 1e300])
def test_evaluate_is_exact_for_float64_outside_float32_range(scale):
    x, labels = _clusters(np.random.default_rng(0))
    reference = evaluate(x.astype(np.float32), labels, nmi=False).to_dict()
    scaled = evaluate(x * scale, labels, nmi=False).to_dict()  # float64
    assert scaled == pytest.approx(reference, abs=1e-6)
    with np.errstate(over="ignore"):  # premise: a plain float32 cast would break
        cast = (x * scale).astype(np.float32)
    assert (np.isinf(cast).any() if scale > 1e38 else not np.abs(cast).any() or scale > 1)


def test_evaluate_names_the_rows_with_non_finite_values():
    x, labels = _clusters(np.random.default_rng(1))
    x[[3, 7]] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite values in 2 row\(s\).*\[3, 7\]"):
        evaluate(x, labels)
