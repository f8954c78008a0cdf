"""The same digits on every machine: the numerical profile of :mod:`dml_study.determinism`.

Fast tests check the profile's settings and where they are applied (worker environment,
trainer, provenance). The slow tests regenerate runs in fresh processes under different
ambient thread counts and kernel choices (what differs between two machines) and require
*bit-identical* results: metrics of every epoch, proxies, embeddings. A negative control
shows the same regeneration differs with the profile off, so the comparison can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixture_datasets import write_cub_fixture
from reliability_helpers import subprocess_env

from dml_study import determinism
from dml_study.study.launch.task import default_threads, worker_env

PROBE = Path(__file__).with_name("determinism_probe.py")

#: Ambient settings a machine (or a user) brings: thread counts and native kernel choices.
MACHINE_A = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MACHINE_B = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
             "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX", "ATEN_CPU_CAPABILITY": "avx512",
             "OPENBLAS_CORETYPE": "SkylakeX"}


# --------------------------------------------------------------------------- fast


def test_pinned_env_fixes_threads_and_every_library_branch(monkeypatch):
    monkeypatch.delenv(determinism.SWITCH_ENV, raising=False)
    monkeypatch.delenv(determinism.THREADS_ENV, raising=False)
    env = determinism.pinned_env()
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "1"
    assert env[determinism.THREADS_ENV] == "1"
    assert env["MKL_CBWR"] == "AVX2,STRICT" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["OPENBLAS_CORETYPE"] == "SandyBridge"
    assert determinism.pinned_env(3)["OMP_NUM_THREADS"] == "3"


def test_profile_off_leaves_the_machine_its_choices(monkeypatch):
    monkeypatch.setenv(determinism.SWITCH_ENV, "off")
    assert determinism.pinned_env() == {}
    assert determinism.pinned_env(2) == {v: "2" for v in determinism.THREAD_VARS}
    assert determinism.pin_environment() == []
    assert default_threads(2) == max(1, (os.cpu_count() or 1) // 2)


def test_profiles_are_named_and_a_wrong_name_fails(monkeypatch):
    monkeypatch.setenv(determinism.SWITCH_ENV, "avx512")
    env = determinism.pinned_env()
    assert env["MKL_CBWR"] == "AVX512,STRICT" and env["ATEN_CPU_CAPABILITY"] == "avx512"
    assert determinism.profile_name({determinism.SWITCH_ENV: "on"}) == "avx2"
    monkeypatch.setenv(determinism.SWITCH_ENV, "avx9")
    with pytest.raises(ValueError, match="avx2, avx512, off"):
        determinism.pinned_env()


def test_threads_come_from_the_profile_not_from_the_cores(monkeypatch):
    monkeypatch.delenv(determinism.SWITCH_ENV, raising=False)
    monkeypatch.delenv(determinism.THREADS_ENV, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert default_threads(2) == default_threads(1) == 1
    assert worker_env(None)["OMP_NUM_THREADS"] == "1"
    assert worker_env(4)["OMP_NUM_THREADS"] == worker_env(4)[determinism.THREADS_ENV] == "4"
    monkeypatch.setenv(determinism.THREADS_ENV, "2")
    assert determinism.threads() == 2 and default_threads(8) == 2
    monkeypatch.setenv(determinism.THREADS_ENV, "zero")
    with pytest.raises(ValueError, match="DML_STUDY_THREADS"):
        determinism.threads()


def test_importing_the_package_pinned_this_process():
    """The suite imports dml_study before any computation: every setting is in effect."""
    before = torch.get_num_threads()
    try:
        report = determinism.apply()
        assert report["unpinned"] == [], report["unpinned"]
        assert report["torch_threads"] == report["faiss_threads"] == 1
        assert report["aten_cpu_capability"] == "AVX2"
        if determinism.mkl_cnr_unsupported(report):  # a CPU MKL has no CNR branch for
            assert report["mkl_cbwr_branch"] == report["mkl_auto_branch"] == "AUTO"
            assert len(report["unsupported"]) == 1 and "MKL" in report["unsupported"][0]
        else:
            assert report["mkl_cbwr_branch"] in ("AVX2", None)  # None: a torch without MKL
            assert report["unsupported"] == []
        assert str(report["openblas_core"]).lower() in ("sandybridge", "none")
        assert report["cpu"]["model_name"]
    finally:
        torch.set_num_threads(before)


def test_provenance_records_the_profile():
    from dml_study.env import environment_report

    report = environment_report()["determinism"]
    for key in ("profile", "torch_threads", "aten_cpu_capability", "mkl_cbwr_branch",
                "mkl_auto_branch", "openblas_core", "cpu", "unpinned", "unsupported"):
        assert key in report


def test_a_late_import_is_reported_not_hidden(monkeypatch):
    """A library initialised with other kernels is named in ``unpinned``, with the fix."""
    report = {"aten_cpu_capability": "AVX512", "mkl_cbwr_branch": "AVX512_E1",
              "openblas_core": "SkylakeX"}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    problems = determinism._unpinned(report)
    assert len(problems) == 3 and all("import dml_study first" in p for p in problems)


def test_a_cpu_without_an_mkl_cnr_branch_is_unsupported_not_a_late_import(monkeypatch):
    """MKL's CNR branches are Intel code paths: on an AMD EPYC (avx2, avx512f) MKL answers
    AUTO for the branch it would pick and ignores MKL_CBWR, however early it is set. That is
    said as what this CPU cannot do, not blamed on an import order the user cannot fix."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    amd = {"aten_cpu_capability": "AVX2", "mkl_cbwr_branch": "AUTO", "mkl_auto_branch": "AUTO",
           "openblas_core": "SandyBridge",
           "cpu": {"vendor": "AuthenticAMD", "model_name": "AMD EPYC"}}
    assert determinism.mkl_cnr_unsupported(amd)
    assert determinism._unpinned(amd) == []
    (problem,) = determinism._unsupported(amd)
    assert "AuthenticAMD AMD EPYC" in problem and "MKL_CBWR=AVX2,STRICT" in problem
    # An Intel CPU names its automatic branch: a mismatch there is a late initialisation.
    intel = {**amd, "mkl_cbwr_branch": "AVX512", "mkl_auto_branch": "AVX512",
             "cpu": {"vendor": "GenuineIntel", "model_name": "Xeon"}}
    assert not determinism.mkl_cnr_unsupported(intel) and determinism._unsupported(intel) == []
    (late,) = determinism._unpinned(intel)
    assert late.startswith("MKL runs its AVX512 branch") and "import dml_study first" in late
    torchless = {**amd, "mkl_cbwr_branch": None, "mkl_auto_branch": None}
    assert determinism._unpinned(torchless) == determinism._unsupported(torchless) == []


def _fake_run(root: Path, name: str, map_r: float, seconds: float = 1.0) -> None:
    run = root / "runs" / name
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"R@1": 0.5, "MAP@R": map_r,
                                                  "train_time_s": seconds}))
    (run / "history.json").write_text(json.dumps([{"epoch": 1, "R@1": 0.4, "time_s": seconds}]))


def test_compare_names_the_first_differing_metric_and_ignores_timings(tmp_path: Path):
    from dml_study.regeneration import compare_runs, main

    a, b = tmp_path / "a", tmp_path / "b"
    _fake_run(a, "same", 0.13374005168783876, seconds=1.0)
    _fake_run(b, "same", 0.13374005168783876, seconds=2.0)
    _fake_run(a, "drift", 0.13374005168783876)
    _fake_run(b, "drift", 0.13374138)  # the example: equal to 5 significant digits
    _fake_run(a, "only-a", 0.1)
    result = compare_runs(a, b)
    assert result["same"] is None
    assert result["drift"] == "metrics.json: MAP@R: 0.13374005168783876 vs 0.13374138"
    assert "finished only in" in result["only-a"]
    assert compare_runs(a, b, digits=5)["drift"] is None
    assert compare_runs(a, b, digits=6)["drift"] is not None
    assert main(["compare", str(a), str(a)]) == 0 and main(["compare", str(a), str(b)]) == 1


# --------------------------------------------------------------------------- slow


def _probe(kind: str, results: Path, ambient: dict[str, str], *extra: str) -> dict:
    env = {**subprocess_env(), **ambient}
    out = subprocess.run([sys.executable, str(PROBE), kind, str(results), *extra], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _results(digest: dict) -> dict:
    return {k: digest[k] for k in ("metrics", "epochs", "arrays")}


@pytest.mark.slow
def test_frozen_runs_are_bit_identical_across_machines_and_threads(tmp_path: Path):
    """Frozen tier (1280-d features, 384-d head, SO): every digit regenerates, and the same
    regeneration with the profile off differs (1 vs 2 threads: MKL splits the head's sgemm).
    """
    a = _probe("frozen", tmp_path / "a", MACHINE_A)
    b = _probe("frozen", tmp_path / "b", MACHINE_B)
    assert a["determinism"]["unpinned"] == b["determinism"]["unpinned"] == []
    assert _results(a) == _results(b)
    if determinism.mkl_cnr_unsupported(a["determinism"]):
        # No control on such a CPU: measured on an AMD EPYC, the profile-off runs (1 vs 2
        # threads, native AVX-512 kernels) agree bit for bit as well. The fine-tuned test's
        # control (oneDNN's thread split) shows the comparison can fail there.
        return
    off = {determinism.SWITCH_ENV: "off"}
    c = _probe("frozen", tmp_path / "c", {**MACHINE_A, **off})
    d = _probe("frozen", tmp_path / "d", {**MACHINE_B, **off})
    assert c["determinism"]["torch_threads"] == 1 and d["determinism"]["torch_threads"] == 2
    assert _results(c)["arrays"] != _results(d)["arrays"], "negative control did not differ"


@pytest.mark.slow
def test_finetuned_run_is_bit_identical_across_machines_and_threads(tmp_path: Path):
    """Fine-tuned tier (EfficientNet-Lite0, convolutions trained from the first step):
    oneDNN's backward-weights reduction depends on the thread count, so only fixed threads
    and kernels give the same weights; metrics of every epoch must agree exactly, and with
    the profile off they must not."""
    data = write_cub_fixture(tmp_path / "data", num_classes=16, images_per_class=8)
    a = _probe("finetuned", tmp_path / "a", MACHINE_A, str(data))
    b = _probe("finetuned", tmp_path / "b", MACHINE_B, str(data))
    assert a["determinism"]["unpinned"] == b["determinism"]["unpinned"] == []
    assert _results(a) == _results(b)
    # Negative control, on any CPU (oneDNN splits the reduction over threads on AMD too,
    # measured): with the profile off the same two environments give other bits.
    off = {determinism.SWITCH_ENV: "off"}
    c = _probe("finetuned", tmp_path / "c", {**MACHINE_A, **off}, str(data))
    d = _probe("finetuned", tmp_path / "d", {**MACHINE_B, **off}, str(data))
    assert c["determinism"]["torch_threads"] == 1 and d["determinism"]["torch_threads"] == 2
    assert _results(c)["arrays"] != _results(d)["arrays"], "negative control did not differ"


def test_an_unsupported_setting_is_recorded_for_the_index_not_warned(monkeypatch, recwarn):
    """What the CPU cannot honour is a fact of the machine: the study's environment record
    (the index footer) names the CPU and it, and no process warns (a warning would be one
    more line before every command's one error line)."""
    from dml_study.study.pipeline import runner

    problem = "MKL has no reproducible (CNR) code branch for this CPU (X)"
    real = determinism.determinism_report

    def fake():
        return {**real(), "unpinned": [], "unsupported": [problem],
                "cpu": {"vendor": "AuthenticAMD", "model_name": "AMD EPYC"}}

    monkeypatch.setattr(determinism, "determinism_report", fake)
    before = torch.get_num_threads()
    try:
        determinism.apply()
    finally:
        torch.set_num_threads(before)
    assert not [w for w in recwarn if "dml_study.determinism" in str(w.message)]
    env = runner._environment()
    assert env["cpu"] == "AuthenticAMD AMD EPYC" and env["unsupported"] == [problem]


def test_the_study_records_the_profile_threads_whatever_this_process_uses():
    """The index footer says how many threads the runs computed with; a study process whose
    frozen tier had not yet applied the profile used to report its own torch threads."""
    from dml_study.study.pipeline.runner import _environment

    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert _environment()["threads"] == determinism.threads()
    finally:
        torch.set_num_threads(before)
