"""Faults at the command line: one ``error:`` line naming the file and the fix, no traceback,
the documented exit code (``--debug`` shows the traceback).

The first tests check :func:`dml_study.errors.translate` on the library exceptions behind
each fault; the slow ones run ``python -m dml_study.train`` on the tiny recipe in a real
process for each fault (the disk-full ones are in ``test_disk_full.py``).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from fixture_datasets import write_cub_fixture
from reliability_helpers import one_error_line, run_train_cli, subprocess_env

from dml_study import errors as E
from dml_study.data.base import DatasetLayoutError
from dml_study.data.images import CorruptImageError
from dml_study.training.lock import RunLock

# ---------------------------------------------------------------------- translate()


def test_enospc_anywhere_in_the_chain_is_disk_full(tmp_path: Path):
    raw = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "metrics.json"))
    err = E.translate(raw)
    assert isinstance(err, E.DiskFullError) and err.exit_code == E.EXIT_DISK_FULL
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC
    text = str(err)
    assert text.startswith(f"disk full writing {tmp_path / 'metrics.json'}: ")
    assert " free on " in text and "free space and re-run" in text


def test_torchs_enforce_fail_hiding_enospc_is_disk_full():
    """What torch.save into a file object raises (the OSError is its ``__context__``)."""
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos "  # noqa: B904
                               "5789952 vs 5789848")
    except RuntimeError as exc:
        assert isinstance(exc.__context__, OSError)
        assert isinstance(E.translate(exc), E.DiskFullError)
    # torch.save to a path hides the errno entirely: a one-line "cut short", not a guess.
    short = E.translate(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected "
                                     "pos 704 vs 598"))
    assert type(short) is E.UserFacingError and "df -h" in str(short)


def test_disk_full_error_says_what_is_needed_and_free_and_how_to_resume(tmp_path: Path):
    err = E.DiskFullError(tmp_path / "last.pt", needed=5_789_952, free=1_200_000,
                          mount="/results (tmpfs)", resume="it resumes from step 10")
    assert str(err) == (
        f"disk full writing {tmp_path / 'last.pt'}: needs ~5.8 MB, 1.2 MB free on /results "
        "(tmpfs); free space and re-run the same command: it resumes from step 10"
    )
    import pickle

    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_permission_denied_names_the_file_and_the_fix(tmp_path: Path):
    err = E.translate(PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "r")))
    assert isinstance(err, E.NotWritableError) and err.exit_code == E.EXIT_NOT_WRITABLE
    assert str(tmp_path / "r") in str(err) and "--results_dir" in str(err)
    ro = E.translate(OSError(errno.EROFS, "Read-only file system", str(tmp_path / "x")))
    assert str(ro).startswith("read-only file system: ")


def test_corrupt_image_from_a_dataloader_worker_is_one_line(tmp_path: Path):
    """A worker's error comes back with its traceback in the message; the line is clean."""
    from torch._utils import ExceptionWrapper

    bad = tmp_path / "images" / "001.Bird" / "x.jpg"
    try:
        raise CorruptImageError(f"cannot decode image {bad}: cannot identify image file "
                                f"'{bad}'. Re-download/replace the file, or drop ...")
    except CorruptImageError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(CorruptImageError) as info:
        wrapper.reraise()
    assert "Traceback" in str(info.value)  # what the user saw before
    err = E.translate(info.value)
    assert isinstance(err, E.CorruptImageFileError) and err.exit_code == E.EXIT_DATA
    assert str(err).startswith(f"corrupt image {bad}: cannot identify image file; ")
    assert "--on_corrupt skip" in str(err) and "Traceback" not in str(err)


def test_missing_dataset_names_the_path_and_the_download_command(tmp_path: Path):
    raw = DatasetLayoutError(f"data root {tmp_path} does not exist (set data_root= or "
                             "$DML_DATA_ROOT). Expected layout:\n  CUB_200_2011/\n    images/")
    err = E.translate(raw, dataset="cub200", data_root=tmp_path)
    assert isinstance(err, E.DatasetMissingError) and err.exit_code == E.EXIT_DATA
    assert str(err) == (
        f"dataset cub200 not found: data root {tmp_path} does not exist (set data_root= or "
        f"$DML_DATA_ROOT); get it with `python -m dml_study.data download cub200 --root "
        f"{tmp_path}`, or point --data_root at the folder that holds it"
    )


def test_a_real_bug_is_not_translated():
    assert E.translate(ValueError("bug")) is None
    assert E.translate(KeyError("x")) is None


def test_run_cli_prints_one_line_and_debug_adds_the_traceback(capsys, tmp_path: Path):
    def main(argv):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "page.html"))

    assert E.run_cli(main, []) == E.EXIT_DISK_FULL
    err = capsys.readouterr().err
    one_error_line(err, f"disk full writing {tmp_path / 'page.html'}")
    assert E.run_cli(main, ["--debug"]) == E.EXIT_DISK_FULL
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: disk full")


def test_dml_study_warnings_print_as_one_line():
    from dml_study.training.checkpoint import CheckpointFallbackWarning

    message = "last.pt is damaged\n(truncated)"
    with E.one_line_warnings():
        ours = warnings.formatwarning(message, CheckpointFallbackWarning, "engine.py", 3)
        theirs = warnings.formatwarning("x", UserWarning, "engine.py", 3)
    assert ours == "warning: last.pt is damaged (truncated)\n"
    assert theirs.startswith("engine.py:3: UserWarning: x")
    assert warnings.formatwarning(message, CheckpointFallbackWarning, "e.py", 3) != ours


# ---------------------------------------------------------------------- real processes


def test_config_error_is_one_line_exit_2():
    out = subprocess.run([sys.executable, "-m", "dml_study.train", "--lr", "-1",
                          "--print-config"], capture_output=True, text=True,
                         env=subprocess_env(), timeout=300)
    assert out.returncode == E.EXIT_USAGE
    one_error_line(out.stderr, "optim.lr: must be > 0", "--help")
    assert "usage:" not in out.stderr  # not argparse's screen of every option


@pytest.mark.slow
def test_missing_dataset(tmp_path: Path):
    missing = tmp_path / "no-such-data"
    out = run_train_cli(missing, tmp_path / "results", run_name="m")
    assert out.returncode == E.EXIT_DATA, out.stderr
    one_error_line(out.stderr, f"dataset cub200 not found: data root {missing} does not exist",
                   f"python -m dml_study.data download cub200 --root {missing}")
    assert not (tmp_path / "results").exists()
    debug = run_train_cli(missing, tmp_path / "results", "--debug", run_name="m")
    assert debug.returncode == E.EXIT_DATA
    assert "Traceback" in debug.stderr and "DatasetLayoutError" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1].startswith("error: dataset cub200 not found")


@pytest.mark.slow
def test_corrupt_images_are_found_before_the_first_epoch(tmp_path: Path):
    """Screening (data.check_images, issue #23) reports every undecodable file at once,
    before any training, instead of the first one a worker meets mid-epoch."""
    root = write_cub_fixture(tmp_path / "cub", num_classes=40, images_per_class=8)
    images = root / "CUB_200_2011" / "images"
    # The first image of every training class: the first batch certainly meets one.
    bad = [sorted(d.glob("*.jpg"))[0] for d in sorted(images.iterdir())[:20]]
    for path in bad:
        path.write_bytes(b"\xff\xd8 not a jpeg")
    out = run_train_cli(root, tmp_path / "results", run_name="c", epochs=1)
    assert out.returncode == E.EXIT_DATA, out.stderr
    line = one_error_line(out.stderr, "--on_corrupt skip")
    assert line.startswith("error: cub200: 20 image file(s) cannot be decoded: "), line
    assert str(bad[0]) in line and "python -m dml_study.data verify cub200" in line
    assert "and 10 more" in line  # long lists are cut, the verify command lists them all
    assert not (tmp_path / "results" / "runs" / "c" / "metrics.json").exists()


@pytest.mark.slow
def test_locked_run_names_the_holder(cub_root: Path, tmp_path: Path):
    run_dir = tmp_path / "results" / "runs" / "held"
    with RunLock(run_dir):
        out = run_train_cli(cub_root, tmp_path / "results", run_name="held", epochs=1)
    assert out.returncode == E.EXIT_BUSY, out.stderr
    one_error_line(out.stderr, f"is being trained by pid {os.getpid()} on host",
                   "another run_name")
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]


@pytest.mark.slow
def test_both_checkpoints_damaged(cub_root: Path, tmp_path: Path):
    checkpoints = tmp_path / "results" / "runs" / "d" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.pt").write_bytes(os.urandom(1000))
    (checkpoints / "prev.pt").write_bytes(b"PK\x03\x04" + os.urandom(996))
    out = run_train_cli(cub_root, tmp_path / "results", run_name="d", epochs=1)
    assert out.returncode == E.EXIT_DAMAGED, out.stderr
    one_error_line(out.stderr, f"{checkpoints / 'last.pt'} is damaged",
                   f"{checkpoints / 'prev.pt'} is damaged", "--overwrite true")
