"""Corrupt images are found before the first epoch, all at once, and only decoded once.

A CUB-layout fixture with three broken files (a truncated JPEG, an empty file, a text file
named ``.jpg``), two in the training split and one in the test split:
``python -m dml_study.data verify`` lists all three in one run, the screening records make a
second run decode nothing, and ``python -m dml_study.train`` refuses with one line naming
the files and the ``--on_corrupt skip`` fix (which then trains without them).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixture_datasets import write_cub_fixture
from reliability_helpers import FIXTURE_CLASSES, FIXTURE_IMAGES, cli_args, subprocess_env

from dml_study.data import screening
from dml_study.data.__main__ import cli
from dml_study.data.screening import CorruptImagesError, records_file
from dml_study.data.verify import verify_dataset
from dml_study.training import Trainer
from dml_study.training.run_dir import RunDirectory


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Screening records go to a private cache, never the shared one."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DML_STUDY_CACHE", str(cache))
    return cache


@pytest.fixture
def broken_cub(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    root = write_cub_fixture(tmp_path / "cub", num_classes=FIXTURE_CLASSES,
                             images_per_class=FIXTURE_IMAGES)
    images = sorted((root / "CUB_200_2011" / "images").rglob("*.jpg"))
    train = [p for p in images if int(p.parent.name[:3]) <= 100]
    test = [p for p in images if int(p.parent.name[:3]) > 100]
    bad = {"truncated": train[3], "empty": train[10], "text": test[5]}
    data = bad["truncated"].read_bytes()
    bad["truncated"].write_bytes(data[: len(data) // 2])
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("this is not a JPEG\n")
    return root, bad


class _CountingDecoder:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = screening.load_rgb

        def counted(path):  # type: ignore[no-untyped-def]
            self.calls += 1
            return real(path)

        monkeypatch.setattr(screening, "load_rgb", counted)


def test_verify_lists_every_bad_file_in_one_run(broken_cub, capsys) -> None:
    root, bad = broken_cub
    assert cli(["verify", "cub200", "--root", str(root), "--quiet"]) == 3
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    listed = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in lines[:-1]}
    assert listed.keys() == {str(p) for p in bad.values()}
    assert listed[str(bad["truncated"])].startswith("truncated")
    assert listed[str(bad["empty"])] == "empty file (0 bytes)"
    assert listed[str(bad["text"])].startswith("not an image")
    assert lines[-1].endswith("3 unreadable")
    err = captured.err.strip()
    assert err.count("\n") == 0 and "3 image file(s) cannot be decoded" in err
    assert "--on_corrupt skip" in err and "data download cub200" in err


def test_records_make_a_second_verification_decode_nothing(broken_cub, monkeypatch) -> None:
    root, bad = broken_cub
    counter = _CountingDecoder(monkeypatch)
    first = verify_dataset("cub200", root, progress=False)
    total = FIXTURE_CLASSES * FIXTURE_IMAGES
    assert counter.calls == total and first.result.decoded == total
    assert sorted(b.path for b in first.bad) == sorted(bad.values())
    assert records_file("cub200").is_file()
    second = verify_dataset("cub200", root, progress=False)
    assert counter.calls == total and second.result.decoded == 0  # no decoding at all
    assert second.bad == first.bad  # the bad ones are remembered with their reasons
    # A replaced file (new size/mtime) is decoded again, and only that one.
    good = root / "CUB_200_2011" / "images"
    source = sorted(p for p in good.rglob("*.jpg") if p not in bad.values())[0]
    bad["empty"].write_bytes(source.read_bytes())
    third = verify_dataset("cub200", root, progress=False)
    assert counter.calls == total + 1 and third.result.decoded == 1
    assert len(third.bad) == 2
    # --no-records decodes everything again.
    assert verify_dataset("cub200", root, progress=False, records=False).result.decoded == total


def test_a_clean_dataset_verifies(tmp_path: Path, capsys) -> None:
    root = write_cub_fixture(tmp_path / "clean", num_classes=4, images_per_class=3)
    assert cli(["verify", "cub200", "--root", str(root), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().endswith("12 images (train 6, test 6; 12 decoded): "
                                                    "all readable")


def test_train_refuses_with_one_line_naming_the_files_and_the_fix(broken_cub, tmp_path: Path
                                                                  ) -> None:
    root, bad = broken_cub
    results = tmp_path / "results"
    from reliability_helpers import tiny_overrides

    options = {**tiny_overrides(root, results), "dataset": "cub200", "run_name": "broken"}
    out = subprocess.run([sys.executable, "-m", "dml_study.train", *cli_args(options)],
                         capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert out.returncode == 3, out.stderr
    err = out.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("error: cub200: 3 image file(s) cannot be "
                                                   "decoded")
    assert all(str(p) in err for p in bad.values())
    assert "--on_corrupt skip" in err and "Traceback" not in err
    assert not RunDirectory.for_run(str(results), "broken").path.exists()


def test_train_screens_before_the_first_epoch_once_and_skip_drops_the_files(
        broken_cub, tiny_config, monkeypatch) -> None:
    root, bad = broken_cub
    counter = _CountingDecoder(monkeypatch)
    with pytest.raises(CorruptImagesError) as info:
        Trainer(tiny_config(data_root=str(root), run_name="refused"))
    assert sorted(b.path for b in info.value.bad) == sorted(bad.values())
    first = counter.calls
    assert first == FIXTURE_CLASSES * FIXTURE_IMAGES
    with pytest.warns(UserWarning, match="skipping corrupt image") as record:
        trainer = Trainer(tiny_config(data_root=str(root), run_name="skipped",
                                      on_corrupt="skip"))
    assert counter.calls == first  # the records answered: nothing decoded again
    assert len(record) == 3
    kept = set(trainer.train_set.paths) | set(trainer.eval_sets.query.paths)
    assert not kept & set(bad.values())
    assert len(trainer.train_set) + len(trainer.eval_sets.query) == first - 3
    # check_images: false leaves the screening out (a bad file fails when it is loaded).
    monkeypatch.setenv("DML_STUDY_CACHE", os.fspath(root.parent / "other-cache"))
    Trainer(tiny_config(data_root=str(root), run_name="unscreened", check_images=False))
    assert counter.calls == first
