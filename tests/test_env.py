import json
import subprocess
import sys

import dml_study
from dml_study.env import environment_report, git_commit, package_version


def test_version_cli_prints_package_version():
    out = subprocess.run(
        [sys.executable, "-m", "dml_study", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"dml_study {dml_study.__version__}"


def test_env_cli_prints_json_report():
    out = subprocess.run(
        [sys.executable, "-m", "dml_study", "env"], capture_output=True, text=True, check=True
    )
    report = json.loads(out.stdout)
    assert report["packages"]["torch"] is not None
    assert report["device"] in {"cpu", "cuda"}


def test_environment_report_records_versions_device_threads_commit():
    report = environment_report()
    import faiss
    import timm
    import torch

    assert report["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert report["packages"]["timm"] == timm.__version__
    assert report["packages"]["faiss-cpu"] == faiss.__version__
    assert report["torch_threads"] == torch.get_num_threads() >= 1
    assert "git_commit" in report
    json.dumps(report)  # JSON-serialisable, as it is written with every run


def test_package_version_of_missing_distribution_is_none():
    assert package_version("surely-not-an-installed-distribution") is None


def test_git_commit_outside_checkout_is_none(tmp_path):
    assert git_commit(tmp_path) is None


def test_core_stack_imports():
    import faiss  # noqa: F401
    import papermill  # noqa: F401
    import seaborn  # noqa: F401
    import sklearn  # noqa: F401
    import timm  # noqa: F401
    import torchvision  # noqa: F401


def test_atomic_writes_are_world_readable_and_leave_no_temp_files(tmp_path):
    from dml_study.atomic_io import atomic_write_csv, atomic_write_json

    atomic_write_json(tmp_path / "m.json", {"R@1": __import__("numpy").float32(0.5)})
    atomic_write_csv(tmp_path / "h.csv", [{"a": 1}, {"a": 2, "b": 3}])
    assert json.loads((tmp_path / "m.json").read_text()) == {"R@1": 0.5}
    assert (tmp_path / "h.csv").read_text() == "a,b\n1,\n2,3\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.csv", "m.json"]
    assert ((tmp_path / "m.json").stat().st_mode & 0o777) == 0o644


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    import pytest

    from dml_study.atomic_io import atomic_write_text, atomic_write_with

    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")

    def crash(fh):
        fh.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write_with(target, crash)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_git_commit_is_dirty_for_code_changes_but_not_for_regenerated_results(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "report.html").write_text("old")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_commit(tmp_path)
    assert clean is not None and not clean.endswith("-dirty")
    (tmp_path / "results" / "report.html").unlink()  # a study regenerating its report
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == clean + "-dirty"
