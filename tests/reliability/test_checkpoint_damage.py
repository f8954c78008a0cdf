"""Checkpoints that survive damage: rotation (last.pt + prev.pt), verification, fallback.

The kill tests fork a child that dies with ``os._exit`` (no cleanup, like ``kill -9``) at
each step of a rotation; the training test damages ``last.pt`` of a real run and checks
that the resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import REFERENCE_EPOCHS

from dml_study.errors import EXIT_DAMAGED
from dml_study.training import StopRequested, train
from dml_study.training.checkpoint import (
    CheckpointFallbackWarning,
    CheckpointRejected,
    read_checkpoint,
    resume_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    verify_archive,
)
from dml_study.training.errors import DamagedCheckpointError, TrainingError
from dml_study.training.run_dir import RunDirectory

RETRIEVAL_KEYS = ("R@1", "R@2", "R@4", "MAP@R", "RP", "NMI")
STEPS_PER_EPOCH = 5


def _state(step: int, size: int = 20_000) -> dict:
    """A full training state at ``step`` whose progress fields agree (5 steps per epoch)."""
    epoch, batch = divmod(step, STEPS_PER_EPOCH)
    history = [{"epoch": e, "step": e * STEPS_PER_EPOCH} for e in range(epoch + 1)]
    return {
        "model": {"w": torch.full((size,), float(step))}, "loss": {}, "optimizer": {},
        "scheduler": {"last_epoch": step}, "rng": [rng_state()], "config": {},
        "epoch": epoch, "batch_in_epoch": batch, "global_step": step, "history": history,
        "partial_sums": {}, "partial_count": batch,
    }


@pytest.fixture
def ckpt(tmp_path: Path) -> RunDirectory:
    rd = RunDirectory(tmp_path / "run")
    rd.checkpoints.mkdir(parents=True)
    return rd


def _save(rd: RunDirectory, step: int) -> None:
    save_checkpoint(rd.last_checkpoint, _state(step), keep_previous=rd.prev_checkpoint)


def _step(path: Path) -> int:
    return read_checkpoint(path)["global_step"]


def test_rotation_keeps_the_previous_checkpoint(ckpt: RunDirectory):
    _save(ckpt, 3)
    assert not ckpt.prev_checkpoint.exists()
    _save(ckpt, 6)
    _save(ckpt, 9)
    assert (_step(ckpt.last_checkpoint), _step(ckpt.prev_checkpoint)) == (9, 6)
    assert sorted(p.name for p in ckpt.checkpoints.iterdir()) == ["last.pt", "prev.pt"]


def _kill_during_rotation(rd: RunDirectory, point: str) -> None:
    """Fork a child that rotates in checkpoint 9 and dies (``os._exit``) at ``point``."""
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no cleanup
        try:
            real_replace, real_fsync, real_save = os.replace, os.fsync, torch.save
            calls = {"replace": 0, "fsync": 0}

            def replace(src, dst):
                calls["replace"] += 1
                real_replace(src, dst)
                if point == f"after rename {calls['replace']}":
                    os._exit(137)

            def fsync(fd):
                calls["fsync"] += 1
                real_fsync(fd)
                if point == "after the temp file's fsync" and calls["fsync"] == 1:
                    os._exit(137)

            def half_save(obj, fh):
                buf = io.BytesIO()
                real_save(obj, buf)
                fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                fh.flush()
                os._exit(137)

            os.replace, os.fsync = replace, fsync
            if point == "while writing the temp file":
                torch.save = half_save
            _save(rd, 9)
            os._exit(0)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) in (0, 137), status


@pytest.mark.parametrize("point, resumed_step", [
    ("while writing the temp file", 6),
    ("after the temp file's fsync", 6),
    ("after rename 1", 6),  # last.pt -> prev.pt done, temp -> last.pt not yet
    ("after rename 2", 9),
    ("never", 9),
])
def test_a_kill_at_any_step_of_a_rotation_leaves_a_good_checkpoint(
    ckpt: RunDirectory, point: str, resumed_step: int
):
    _save(ckpt, 3)
    _save(ckpt, 6)  # last.pt = step 6, prev.pt = step 3
    _kill_during_rotation(ckpt, point)
    # No half-written file under either name ...
    for path in (ckpt.last_checkpoint, ckpt.prev_checkpoint):
        if path.exists():
            verify_archive(path)
    # ... and a resume loads the newest complete state (after rename 1: from prev.pt).
    candidates = [ckpt.last_checkpoint, ckpt.prev_checkpoint]
    if point == "after rename 1":
        with pytest.warns(CheckpointFallbackWarning, match="last.pt is missing"):
            resumed = resume_checkpoint(candidates)
        assert resumed.path == ckpt.prev_checkpoint
    else:
        resumed = resume_checkpoint(candidates)
        assert resumed.path == ckpt.last_checkpoint
    assert resumed.state["global_step"] == resumed_step
    # Orphaned temp files are removed when the run is next opened.
    ckpt.remove_orphaned_temp_files()
    assert not [p for p in ckpt.checkpoints.iterdir() if p.name.endswith(".tmp")]


def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(1000)


def _flip_a_weight_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the stored weights
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=False)  # torch itself does not notice


def _inconsistent(path: Path) -> None:
    state = _state(6)
    state["global_step"] = 7  # history ends at step 5, 1 batch done: step 6
    torch.save({"version": 2, **state}, path)


@pytest.mark.parametrize("damage, reason", [
    (_truncate, "not a complete checkpoint archive"),
    (lambda p: p.write_bytes(b""), "not a complete checkpoint archive"),
    (_flip_a_weight_bit, "does not match its CRC-32"),
    (_inconsistent, "inconsistent progress fields"),
], ids=["truncated", "empty", "bit-flip", "inconsistent"])
def test_damage_is_detected(ckpt: RunDirectory, damage, reason: str):
    _save(ckpt, 6)
    damage(ckpt.last_checkpoint)
    with pytest.raises(CheckpointRejected, match=reason):
        read_checkpoint(ckpt.last_checkpoint)


def test_damaged_last_falls_back_to_prev_and_the_next_rotation_keeps_it(ckpt: RunDirectory):
    _save(ckpt, 3)
    _save(ckpt, 6)
    _truncate(ckpt.last_checkpoint)
    with pytest.warns(CheckpointFallbackWarning) as record:
        resumed = resume_checkpoint([ckpt.last_checkpoint, ckpt.prev_checkpoint])
    message = str(record[0].message)
    assert f"{ckpt.last_checkpoint} is damaged" in message
    assert f"resuming from {ckpt.prev_checkpoint} at step 3" in message
    assert resumed.state["global_step"] == 3
    # The damaged file is set aside, so the next rotation does not push prev.pt out.
    assert Path(f"{ckpt.last_checkpoint}.damaged").is_file()
    _save(ckpt, 4)
    assert (_step(ckpt.last_checkpoint), _step(ckpt.prev_checkpoint)) == (4, 3)


def test_both_damaged_is_one_error_naming_both_files_and_the_fix(ckpt: RunDirectory):
    _save(ckpt, 3)
    _save(ckpt, 6)
    _truncate(ckpt.last_checkpoint)
    _flip_a_weight_bit(ckpt.prev_checkpoint)
    with pytest.raises(DamagedCheckpointError) as info:
        resume_checkpoint([ckpt.last_checkpoint, ckpt.prev_checkpoint])
    message = str(info.value)
    assert info.value.exit_code == EXIT_DAMAGED
    assert str(ckpt.last_checkpoint) in message and str(ckpt.prev_checkpoint) in message
    assert "--overwrite true" in message and "\n" not in message
    assert ckpt.last_checkpoint.is_file()  # nothing is moved when nothing can be resumed


def test_a_version_1_checkpoint_still_loads_with_weights_only(tmp_path: Path):
    """Version 1 pickled NumPy's RNG state tuple (an ndarray); it loads, safely."""
    np.random.seed(123)  # noqa: NPY002
    random.seed(5)
    torch.manual_seed(9)
    state = _state(6)
    v1_rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": np.random.get_state()}  # noqa: NPY002
    state["rng"] = [v1_rng]
    torch.save({"version": 1, **state}, tmp_path / "v1.pt")
    expected = (np.random.rand(3), random.random(), torch.rand(3))  # noqa: NPY002

    loaded = read_checkpoint(tmp_path / "v1.pt")
    assert loaded["version"] == 1
    set_rng_state(loaded["rng"][0])
    np.testing.assert_array_equal(np.random.rand(3), expected[0])  # noqa: NPY002
    assert random.random() == expected[1]
    assert torch.equal(torch.rand(3), expected[2])


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())  # any callable: weights_only must refuse to call it


def test_a_checkpoint_with_arbitrary_objects_is_refused(tmp_path: Path):
    torch.save({"version": 2, "x": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(TrainingError, match="weights_only"):
        read_checkpoint(tmp_path / "evil.pt")


def test_damaged_last_pt_resumes_from_prev_pt_bit_identically(tiny_config, reference_run):
    """Done-when: a damaged last.pt resumes from the previous checkpoint, bit-identical."""
    # 5 steps per epoch, checkpoints at steps 3, 5 (epoch end), 6 and 9; killed after
    # step 10: last.pt at step 9, prev.pt at step 6 (epoch 2, batch 1).
    with pytest.raises(StopRequested):
        train(tiny_config(run_name="damaged", epochs=REFERENCE_EPOCHS,
                          checkpoint_every_steps=3, stop_after_steps=10))
    rd = RunDirectory.for_run(tiny_config().run.results_dir, "damaged")
    assert (_step(rd.last_checkpoint), _step(rd.prev_checkpoint)) == (9, 6)
    _truncate(rd.last_checkpoint)  # a failing disk or an interrupted copy

    with pytest.warns(CheckpointFallbackWarning, match=r"resuming from .*prev\.pt at step 6"):
        resumed = train(tiny_config(run_name="damaged", epochs=REFERENCE_EPOCHS))
    assert resumed.resumed
    for key in RETRIEVAL_KEYS:
        assert resumed.metrics[key] == reference_run.metrics[key], key
    np.testing.assert_array_equal(np.load(rd.proxies), np.load(reference_run.run_dir.proxies))
    a = read_checkpoint(reference_run.run_dir.last_checkpoint)["model"]
    b = read_checkpoint(rd.last_checkpoint)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    drop = ("time_s", "img_per_s")
    assert ([{k: v for k, v in h.items() if k not in drop} for h in resumed.history]
            == [{k: v for k, v in h.items() if k not in drop} for h in reference_run.history])
