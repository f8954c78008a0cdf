"""One-line errors of ``python -m dml_study.study`` (#23.1, study side).

Each fault a user meets prints one ``error:`` line naming the cause, the file and the fix,
and exits with the documented code of :mod:`dml_study.errors`; ``--debug`` adds the
traceback. Faults raised in the study process are tried end to end (a bad or missing study
file, a missing dataset, a full disk while writing the report, a second process writing the
same report); faults raised inside a run's or a notebook's kernel reach the command line as
a failed grid or notebook and are recognised from what those carry (the run's error, the
cell's exception), tried on the objects the launcher and papermill wrapper build.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dml_study.errors import EXIT_BUSY, EXIT_DATA, EXIT_DISK_FULL, EXIT_FAILED, EXIT_USAGE
from dml_study.study.__main__ import main
from dml_study.study.launch.launcher import GridFailedError
from dml_study.study.launch.task import RunResult
from dml_study.study.pipeline.errors import translate
from dml_study.study.tiers.notebooks import NotebookExecutionError

REPO = Path(__file__).resolve().parents[2]


def _study(root: Path, **overrides) -> Path:
    study = {"name": "faults", "datasets": ["cub200"], "notebooks": [],
             "train": {"dataset": "cub200", "device": "cpu", "quiet": True}}
    study.update(overrides)
    path = root / "studies" / "faults.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def test_a_bad_study_file_is_one_line_exit_2(tmp_path, capsys):
    path = _study(tmp_path, colour="blue")
    assert main(["--config", str(path)]) == EXIT_USAGE
    line = _one_line(capsys.readouterr().err)
    assert "'colour'" in line and str(path) in line
    assert main(["--config", str(tmp_path / "nope.yaml")]) == EXIT_USAGE
    line = _one_line(capsys.readouterr().err)
    assert "nope.yaml does not exist" in line
    path.write_text("name: [unclosed\n")
    assert main(["--config", str(path)]) == EXIT_USAGE
    assert str(path) in _one_line(capsys.readouterr().err)
    path = _study(tmp_path)
    assert main(["--config", str(path), "--only", "03_ablation.ipynb"]) == EXIT_USAGE
    assert "--only 03_ablation.ipynb: not a notebook" in _one_line(capsys.readouterr().err)


@pytest.mark.slow
def test_a_missing_dataset_is_one_line_exit_3_and_debug_shows_the_traceback(tmp_path):
    path = _study(tmp_path, data_root=str(tmp_path / "no-data"), groups=[{
        "name": "g", "tier": "frozen", "datasets": ["cub200"], "seeds": [0],
        "variants": {"a": {}, "b": {"so_lambda": 0.1}}}],
        headline={"group": "g", "baseline": "a", "treatment": "b"},
        notebooks=["03_ablations.ipynb"])
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "03_ablations.ipynb").write_bytes(
        (REPO / "notebooks" / "03_ablations.ipynb").read_bytes())
    env_cache = {"DML_STUDY_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "dml_study.study", "--config", str(path), "--quiet"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600,
                         env={**_env(), **env_cache})
    assert out.returncode == EXIT_DATA, out.stderr
    line = _one_line(out.stderr)
    assert f"data root {tmp_path / 'no-data'} does not exist" in line
    assert "python -m dml_study.data download NAME --root DIR" in line and str(path) in line
    debug = subprocess.run([*command, "--debug"], capture_output=True, text=True, timeout=600,
                           env={**_env(), **env_cache})
    assert debug.returncode == EXIT_DATA
    assert "Traceback" in debug.stderr and "DatasetLayoutError" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == line


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "DML_STUDY_DEBUG"}


def test_disk_full_while_writing_the_report_is_exit_4_and_keeps_the_old_report(
    tmp_path, capsys, monkeypatch
):
    path = _study(tmp_path)
    assert main(["--config", str(path), "--quiet"]) == 0
    study = tmp_path / "results" / "faults"
    before = (study / "index.html").read_bytes()

    from dml_study.study.report import index

    real = index.atomic_write_text

    def full(target, *args, **kwargs):
        if Path(target).name == "index.html":
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return real(target, *args, **kwargs)

    monkeypatch.setattr(index, "atomic_write_text", full)
    assert main(["--config", str(path), "--quiet"]) == EXIT_DISK_FULL
    line = _one_line(capsys.readouterr().err)
    assert f"disk full writing {tmp_path / 'results' / 'faults.staging' / 'index.html'}" in line
    assert "MB free there" in line and "re-run the same command" in line
    assert (study / "index.html").read_bytes() == before  # the previous report is untouched


def test_a_second_process_writing_the_same_report_is_refused_exit_6(tmp_path, capsys):
    from dml_study.study.pipeline.runner import lock_file, study_lock
    from dml_study.study.plan.config import load_study_config

    path = _study(tmp_path)
    config = load_study_config(path)
    with study_lock(config):
        assert main(["--config", str(path), "--quiet"]) == EXIT_BUSY
    line = _one_line(capsys.readouterr().err)
    assert "the report of study faults" in line and "is being written by pid" in line
    assert str(lock_file(config)) in line
    assert main(["--config", str(path), "--quiet"]) == 0  # released: the next one runs


def _failed(error: str, traceback: str | None = None) -> GridFailedError:
    return GridFailedError([RunResult("run-a", "failed", 3.0, executed_notebook="runs/a.ipynb",
                                      log="results/x/runs/run-a.log", error=error,
                                      traceback=traceback),
                            RunResult("run-b", "failed", 2.0, error="RuntimeError: other")])


def _cell_error(ename: str, evalue: str) -> NotebookExecutionError:
    return NotebookExecutionError(Path("notebooks/04_proxy_analysis.ipynb"),
                                  Path("results/x.staging/04_proxy_analysis.ipynb"), 12, 9,
                                  "comparison = retrieval.compare_runs(", ename, evalue)


@pytest.mark.parametrize(("exc", "code", "expected"), [
    (_failed("02_train.ipynb failed in cell 5 (In [3]): 'run = train(config)'\n  "
             "DatasetLayoutError: data root /d does not exist (set data_root= or "
             "$DML_DATA_ROOT). Expected layout:\n<data_root>/CUB_200_2011/"),
     EXIT_DATA, "grid run run-a: dataset not found: data root /d does not exist"),
    (_failed("02_train.ipynb failed in cell 5: 'x'\n  CorruptImageError: cannot decode image "
             "/d/a.jpg: image file is truncated. Re-download/replace the file, or ..."),
     EXIT_DATA, "grid run run-a: corrupt image /d/a.jpg: image file is truncated; replace"),
    (_failed("02_train.ipynb failed in cell 5: 'x'\n  RunLockedError: run directory "
             "results/runs/run-a is being trained by pid 7 on host h (started now); wait for "
             "it to finish"),
     EXIT_BUSY, "run results/runs/run-a is being trained by pid 7 on host h (started now)"),
    (_failed("02_train.ipynb failed in cell 5: 'x'\n  OSError: [Errno 28] No space left on "
             "device: '/r/runs/run-a/last.pt'"),
     EXIT_DISK_FULL, "disk full writing /r/runs/run-a/last.pt"),
    (_failed("02_train.ipynb failed in cell 5: 'x'\n  ValueError: bad lr"),
     EXIT_FAILED, "2 grid run(s) failed, first run-a: 02_train.ipynb failed in cell 5: 'x'; "
                  "log: results/x/runs/run-a.log"),
    (_cell_error("CorruptImageError", "cannot decode image /d/b.jpg: broken PNG. Re-download"),
     EXIT_DATA, "04_proxy_analysis.ipynb: corrupt image /d/b.jpg: broken PNG"),
    (_cell_error("OSError", "[Errno 28] No space left on device: '/r/x.staging/figures/a.png'"),
     EXIT_DISK_FULL, "04_proxy_analysis.ipynb: disk full writing /r/x.staging/figures/a.png"),
    (_cell_error("TypeError", "unsupported operand type(s) for -: 'float' and 'NoneType'"),
     EXIT_FAILED, "04_proxy_analysis.ipynb failed in cell 12 ('comparison = retrieval."
                  "compare_runs('): TypeError: unsupported operand"),
])
def test_faults_inside_runs_and_notebooks_become_one_line(exc, code, expected):
    error = translate(exc)
    assert error is not None and error.exit_code == code
    text = str(error)
    assert "\n" not in text and expected in text, text


def test_a_bug_keeps_its_traceback():
    assert translate(ZeroDivisionError("division by zero")) is None
    assert translate(KeyError("x")) is None
