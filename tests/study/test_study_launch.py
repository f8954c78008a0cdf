"""Launchers: claim files, the local launcher in parallel, the SLURM path via submitit's
LocalExecutor (submission, a preempted job requeued and resumed, collection), failures."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import nbformat
import pytest
from study_helpers import write_fake_train_notebook, write_study

from dml_study.study.__main__ import main
from dml_study.study.launch.launcher import (
    GridFailedError,
    create_launcher,
    launch_grid,
    list_launchers,
    run_states,
)
from dml_study.study.launch.local import LocalLauncher
from dml_study.study.launch.run_claims import claim_path, live_claim, try_claim
from dml_study.study.launch.slurm import SlurmLauncher, SlurmRunJob, torchrun_command
from dml_study.study.launch.task import make_task, read_launch_state
from dml_study.study.pipeline.runner import staging_dir
from dml_study.study.plan.config import (
    SlurmConfig,
    StudyConfigError,
    build_slurm_config,
    load_study_config,
)
from dml_study.study.plan.grid import expand_grid, is_finished, unique_runs

#: A resumable fake trainer: ``steps`` steps of ``step_seconds``, a checkpoint after each,
#: resuming from it; records when it ran, where, with how many threads, and each start.
#: Fails on purpose when the file ``<results_dir>/fail-seed<seed>`` exists. The run
#: directory is then completed by conftest's fake trainer.
RESUMABLE_TRAIN_BODY = '''
import json, os, time
from pathlib import Path

results = Path(results_dir)
if (results / f"fail-seed{seed}").exists():
    raise RuntimeError(f"planned failure of seed {seed}")
out = results / "runs" / run_name
out.mkdir(parents=True, exist_ok=True)
ckpt = out / "ckpt.json"
step = json.loads(ckpt.read_text())["step"] if ckpt.exists() else 0
with open(out / "starts.txt", "a") as f:
    f.write(f"{step}\\n")
started = time.time()
steps, step_seconds = 6, float(os.environ.get("FAKE_STEP_SECONDS", "0.3"))
while step < steps:
    time.sleep(step_seconds)
    step += 1
    with open(out / "steps.txt", "a") as f:
        f.write(f"{step} {os.getpid()}\\n")
    ckpt.write_text(json.dumps({"step": step}))
(out / "trace.json").write_text(json.dumps({
    "start": started, "end": time.time(), "device": device, "pid": os.getpid(),
    "omp": os.environ.get("OMP_NUM_THREADS")}))
'''


def write_resumable_train(path: Path) -> Path:
    return write_fake_train_notebook(path, RESUMABLE_TRAIN_BODY)


def four_run_study(root: Path, **overrides) -> Path:
    """Two variants x two seeds, one epoch, on the resumable fake trainer."""
    write_resumable_train(root / "notebooks" / "fake_train.ipynb")
    groups = [{"name": "so_vs_none", "seeds": [0, 1],
               "variants": {"no_so": {"so_lambda": 0.0}, "so": {"so_lambda": 0.1}}}]
    return write_study(root, groups=groups, notebooks=["03_ablations.ipynb"], **overrides)


def trace(config, run_name: str) -> dict:
    return json.loads((config.runs_dir / run_name / "trace.json").read_text())


# --------------------------------------------------------------------------- claims


def test_claim_is_exclusive_and_released(tmp_path: Path):
    first = try_claim(tmp_path, "r", launcher="local")
    second = try_claim(tmp_path, "r", launcher="slurm", job_id="42")
    assert not hasattr(second, "release") and second.pid == os.getpid()  # the holder's info
    assert live_claim(tmp_path, "r") is not None
    first.release()
    assert not claim_path(tmp_path, "r").exists() and live_claim(tmp_path, "r") is None
    assert hasattr(try_claim(tmp_path, "r", launcher="local"), "release")


def _fake_claim(results: Path, name: str, pid: int, host: str, job_id=None, age=0.0) -> Path:
    path = claim_path(results, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_name": name, "pid": pid, "host": host, "launcher": "x",
                                "job_id": job_id, "claimed_at": time.time()}))
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_stale_claims_are_taken_over_and_live_ones_respected(tmp_path: Path):
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    _fake_claim(tmp_path, "dead", dead, socket.gethostname())
    assert hasattr(try_claim(tmp_path, "dead", launcher="local"), "release")
    _fake_claim(tmp_path, "remote", 1, "elsewhere", age=10.0)  # fresh heartbeat, other host
    assert not hasattr(try_claim(tmp_path, "remote", launcher="local"), "release")
    _fake_claim(tmp_path, "lost", 1, "elsewhere", age=3600.0)  # heartbeat long gone
    assert hasattr(try_claim(tmp_path, "lost", launcher="local"), "release")
    _fake_claim(tmp_path, "requeued", 1, "elsewhere", job_id="77")  # the same SLURM job
    assert hasattr(try_claim(tmp_path, "requeued", launcher="slurm", job_id="77"), "release")
    assert not hasattr(try_claim(tmp_path, "requeued", launcher="slurm", job_id="78"), "release")


def test_registry_and_config_errors(tmp_path: Path):
    assert list_launchers() == ["local", "slurm"]
    assert isinstance(create_launcher("local", max_parallel=2), LocalLauncher)
    with pytest.raises(ValueError, match="did you mean 'slurm'"):
        create_launcher("slurn")
    with pytest.raises(StudyConfigError, match="valid keys: partition"):
        build_slurm_config(SlurmConfig(), {"partion": "gpu"}, "--slurm")
    with pytest.raises(StudyConfigError, match="max_parallel"):
        load_study_config(write_study(tmp_path, execution={"max_parallel": 0}))
    path = write_study(tmp_path, execution={"slurm": {"partition": "a", "time_min": 30}})
    assert load_study_config(path).execution.slurm.partition == "a"
    assert main(["--config", str(path), "--slurm", "partion=gpu", "--list-runs"]) == 2


def test_local_slots_pin_devices_round_robin_and_split_threads():
    launcher = LocalLauncher(max_parallel=2, devices=("cuda:0", "cuda:1"), threads_per_run=3)
    from dml_study.study.launch.task import RunTask

    task = RunTask("r", "g/v", "nb", "ex", "log", {"device": "cpu"}, "res", ".")
    pinned = [launcher.slot_task(task, slot) for slot in range(3)]
    assert [t.parameters["device"] for t in pinned] == ["cuda:0", "cuda:1", "cuda:0"]
    assert pinned[0].env["OMP_NUM_THREADS"] == "3" and task.parameters["device"] == "cpu"


def test_slurm_resources_reach_the_sbatch_script(tmp_path: Path, monkeypatch):
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # "srun exists"

    config = load_study_config(write_study(tmp_path))
    slurm = SlurmConfig(partition="gpu", account="proj", time_min=720, gpus_per_run=3,
                        cpus_per_run=16, mem_gb=64, setup=("module load cuda",),
                        additional={"gres": "gpu:a100:3"}, cluster="slurm")
    executor = SlurmLauncher(slurm).executor(config)
    script = _make_sbatch_string(command="python x", folder=tmp_path,
                                 **executor._executor.parameters)
    for line in ("--partition=gpu", "--account=proj", "--time=720", "--gpus-per-node=3",
                 "--cpus-per-task=16", "--mem=64GB", "--gres=gpu:a100:3", "module load cuda"):
        assert line in script
    spec = expand_grid(config)[0]
    task = SlurmLauncher(slurm).job_task(make_task(config, spec))
    assert task.parameters["device"] == "cuda" and task.env["OMP_NUM_THREADS"] == "16"
    assert task.pre_command[:4] == ("torchrun", "--standalone", "--nproc_per_node=3", "-m")
    command = torchrun_command({"dataset": "icons", "so_lambda": 0.1, "quiet": True,
                                "lr": None, "batch_size": 64, "m_per_class": 4,
                                "overrides": {"optim.proxy_lr_mult": 10}}, 2)
    # The run's batch of 64 is split over the two processes (the trainer's is per process).
    assert command[5:] == ("--dataset", "icons", "--so_lambda", "0.1", "--quiet", "true",
                           "--batch_size", "32", "--m_per_class", "4",
                           "--optim.proxy_lr_mult", "10")
    with pytest.raises(ValueError, match="cannot be split over 3 GPUs"):
        torchrun_command({"dataset": "icons", "batch_size": 64, "m_per_class": 4}, 3)


# --------------------------------------------------------------------------- local


@pytest.mark.slow
def test_local_launcher_trains_four_runs_two_at_a_time(fake_project: Path):
    config = load_study_config(four_run_study(fake_project))
    launcher = LocalLauncher(max_parallel=2, devices=("devA", "devB"))
    grid = launch_grid(config, launcher, progress=False)
    runs = [s.run_name for s in unique_runs(expand_grid(config))]
    assert len(runs) == 4 and [r.status for r in grid.results] == ["trained"] * 4
    traces = [trace(config, name) for name in runs]
    # Two at a time: some runs overlapped, never more than two, and concurrent runs had
    # different devices; each had cores // 2 threads.
    overlaps = [(a, b) for i, a in enumerate(traces) for b in traces[i + 1:]
                if a["start"] < b["end"] and b["start"] < a["end"]]
    assert overlaps and all(a["device"] != b["device"] for a, b in overlaps)
    assert {t["omp"] for t in traces} == {str(max(1, (os.cpu_count() or 1) // 2))}
    assert len({t["pid"] for t in traces}) == 4  # one kernel per run
    for name in runs:  # each run: its executed notebook and its own log
        assert (config.executed_runs_dir / f"{name}.ipynb").is_file()
        assert f"run {name}" in (config.executed_runs_dir / f"{name}.log").read_text()
        assert not claim_path(config.results_dir, name).exists()
    state = read_launch_state(config)
    assert {state[n]["status"] for n in runs} == {"trained"}
    assert {r.state for r in run_states(config)} == {"finished"}
    assert [r.status for r in launch_grid(config, launcher, progress=False).results] == \
        ["reused"] * 4


@pytest.mark.slow
def test_failed_runs_do_not_stop_others_and_a_rerun_retries_only_them(fake_project: Path,
                                                                      capsys):
    path = four_run_study(fake_project)
    config = load_study_config(path)
    (config.results_dir).mkdir(parents=True, exist_ok=True)
    (config.results_dir / "fail-seed1").write_text("")
    # --debug: the grid's whole failure report (every failed run and its traceback)
    # besides the one error line
    code = main(["--config", str(path), "--launcher", "local", "--max-parallel", "2",
                 "--no-html", "--quiet", "--debug"])
    err = capsys.readouterr().err
    assert code == 1
    specs = unique_runs(expand_grid(config))
    failed = [s.run_name for s in specs if s.seed == 1]
    assert "2 run(s) failed" in err and all(name in err for name in failed)
    assert "RuntimeError: planned failure of seed 1" in err  # the traceback
    assert str(config.executed_runs_dir / f"{failed[0]}.ipynb") in err
    assert all(is_finished(config.results_dir, s.run_name) for s in specs if s.seed == 0)
    assert not (config.study_dir / "03_ablations.ipynb").exists()  # notebooks not run
    # A failed study leaves no report in results/<study>/: the failed attempt (its index
    # naming the failed grid) stays in the staging directory.
    assert not (config.study_dir / "summary.json").exists()
    summary = json.loads((staging_dir(config) / "summary.json").read_text())
    assert summary["notebooks"][0]["status"] == "failed"
    states = {r.run_name: r.state for r in run_states(config)}
    assert sorted(n for n, s in states.items() if s == "failed") == sorted(failed)

    (config.results_dir / "fail-seed1").unlink()
    stamps = {s.run_name: (config.runs_dir / s.run_name / "metrics.json").stat().st_mtime_ns
              for s in specs if s.seed == 0}
    assert main(["--config", str(path), "--max-parallel", "2", "--no-html", "--quiet"]) == 0
    assert stamps == {n: (config.runs_dir / n / "metrics.json").stat().st_mtime_ns
                      for n in stamps}  # only the failed runs were trained again
    assert all(is_finished(config.results_dir, n) for n in failed)
    summary = json.loads((config.study_dir / "summary.json").read_text())
    assert [n["status"] for n in summary["notebooks"]] == ["ok"]


@pytest.mark.slow
def test_a_run_claimed_by_another_launcher_is_not_trained_twice(fake_project: Path):
    config = load_study_config(four_run_study(fake_project))
    spec = unique_runs(expand_grid(config))[0]
    other = try_claim(config.results_dir, spec.run_name, launcher="other")  # "another launcher"
    result = LocalLauncher().launch(config, [make_task(config, spec)])[0]
    assert result.status == "claimed" and "other" in result.holder
    assert not (config.runs_dir / spec.run_name).exists()
    other.release()
    assert LocalLauncher().launch(config, [make_task(config, spec)])[0].status == "trained"


# --------------------------------------------------------------------------- slurm


def _local_slurm(**kw) -> SlurmConfig:
    return SlurmConfig(cluster="local", gpus_per_run=0, cpus_per_run=1, mem_gb=None,
                       time_min=30, **kw)


def _preempt(job) -> None:
    """What SLURM does on preemption: USR2 to the job's process (checkpoint, requeue).

    submitit's ``LocalJob._interrupt`` signals its controller process, which does not pass
    USR2 on; SLURM signals the job step itself, so do that.
    """
    import signal

    import psutil

    tasks = [p for p in psutil.Process(job._process.pid).children()
             if "submitit.core._submit" in " ".join(p.cmdline())]
    assert len(tasks) == 1, tasks
    tasks[0].send_signal(signal.SIGUSR2)


@pytest.mark.slow
def test_slurm_path_preempted_job_is_requeued_and_resumes(fake_project: Path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "1.0")
    config = load_study_config(four_run_study(fake_project))
    spec = unique_runs(expand_grid(config))[0]
    launcher = SlurmLauncher(_local_slurm())
    job = launcher.executor(config).submit(SlurmRunJob(), launcher.job_task(make_task(config,
                                                                                     spec)))
    run = config.runs_dir / spec.run_name
    deadline = time.time() + 240
    while not (run / "ckpt.json").exists() or json.loads((run / "ckpt.json").read_text())[
            "step"] < 2:
        assert time.time() < deadline and job.state != "FINISHED", job.stderr()
        time.sleep(0.2)
    _preempt(job)
    result = job.result()
    assert result.status == "trained" and result.job_id == str(job.job_id)
    starts = [int(x) for x in (run / "starts.txt").read_text().split()]
    assert len(starts) == 2 and starts[0] == 0 and starts[1] >= 2  # resumed from checkpoint
    steps = [line.split() for line in (run / "steps.txt").read_text().splitlines()]
    numbers = [int(s) for s, _ in steps]
    assert numbers == sorted(numbers) and numbers[-1] == 6  # the old kernel did not go on
    assert len({pid for _, pid in steps}) == 2  # two kernels, one after the other
    assert "requeue" in job.stderr().lower() or "preempted" in job.stderr().lower()
    assert not claim_path(config.results_dir, spec.run_name).exists()


@pytest.mark.slow
def test_slurm_no_wait_then_collect_renders_the_finished_grid(fake_project: Path, capsys):
    path = four_run_study(fake_project, execution={"launcher": "slurm", "html": False,
                                                   "slurm": {"cluster": "local",
                                                             "gpus_per_run": 0,
                                                             "cpus_per_run": 1,
                                                             "time_min": 30}})
    config = load_study_config(path)
    assert main(["--config", str(path), "--no-wait", "--quiet"]) == 0
    state = read_launch_state(config)
    assert len(state) == 4 and {s["status"] for s in state.values()} == {"submitted"}
    assert all(s["job_id"] for s in state.values())
    assert not (config.study_dir / "03_ablations.ipynb").exists()  # nothing rendered yet
    deadline = time.time() + 300
    while not all(r.state == "finished" for r in run_states(config)):
        assert time.time() < deadline, [r.state for r in run_states(config)]
        time.sleep(0.5)
    capsys.readouterr()
    assert main(["--config", str(path), "--list-runs"]) == 0
    assert "4 finished" in capsys.readouterr().out
    assert main(["--config", str(path), "--collect", "--quiet"]) == 0
    executed = nbformat.read(config.study_dir / "03_ablations.ipynb", as_version=4)
    assert executed.metadata["papermill"]["parameters"]["train"] is False
    summary = json.loads((config.study_dir / "summary.json").read_text())
    assert summary["headline"]["metrics"]["R@1"]["n"] == 2


# --------------------------------------------------------------------------- real training


@pytest.mark.slow
def test_small_study_with_real_training_two_at_a_time(tmp_path: Path, repo_root: Path):
    """Two variants x two seeds, 1 epoch, the real ``02_train``: ``--launcher local
    --max-parallel 2`` trains all four runs, then ``03_ablations`` reuses them."""
    from fixture_datasets import write_cub_fixture

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for name in ("02_train.ipynb", "03_ablations.ipynb"):
        (notebooks / name).write_bytes((repo_root / "notebooks" / name).read_bytes())
    data_root = write_cub_fixture(tmp_path / "data", num_classes=12, images_per_class=6)
    train = {
        "dataset": "cub200", "backbone": "efficientnet_lite0", "pretrained": True,
        "image_size": 32, "embedding_dim": 16, "epochs": 1, "batch_size": 24,
        "m_per_class": 4, "lr": 1e-3, "device": "cpu", "num_workers": 0, "quiet": True,
    }
    groups = [{"name": "so_vs_none", "seeds": [0, 1],
               "variants": {"no_so": {"so_lambda": 0.0}, "so": {"so_lambda": 0.1}}}]
    path = write_study(tmp_path, notebooks=["03_ablations.ipynb"], train_notebook="02_train.ipynb",
                       train=train, data_root=str(data_root), groups=groups)
    assert main(["--config", str(path), "--launcher", "local", "--max-parallel", "2",
                 "--no-html", "--quiet"]) == 0
    config = load_study_config(path)
    runs = unique_runs(expand_grid(config))
    assert len(runs) == 4 and all(is_finished(config.results_dir, r.run_name) for r in runs)
    state = read_launch_state(config)
    assert {state[r.run_name]["status"] for r in runs} == {"trained"}
    for run in runs:  # the numerical profile's fixed thread count, whatever the cores
        provenance = json.loads((config.runs_dir / run.run_name / "provenance.json").read_text())
        assert provenance["torch_threads"] == 1
        assert provenance["determinism"]["unpinned"] == []
    ablations = nbformat.read(config.study_dir / "03_ablations.ipynb", as_version=4)
    assert "reused" in json.dumps([c.get("outputs", []) for c in ablations.cells])


@pytest.mark.slow
def test_slurm_path_preempted_real_training_resumes_from_its_checkpoint(tmp_path: Path,
                                                                         repo_root: Path):
    """The real ``02_train`` as a (local) SLURM job, preempted after its first checkpoint:
    the requeued job resumes the run (``provenance.json`` records the resume) and ends with
    every epoch exactly once in the history."""
    from fixture_datasets import write_cub_fixture

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "02_train.ipynb").write_bytes((repo_root / "notebooks" / "02_train.ipynb")
                                               .read_bytes())
    data_root = write_cub_fixture(tmp_path / "data", num_classes=12, images_per_class=6)
    epochs = 8
    train = {
        "dataset": "cub200", "backbone": "efficientnet_lite0", "pretrained": True,
        "image_size": 32, "embedding_dim": 16, "epochs": epochs, "batch_size": 24,
        "m_per_class": 4, "lr": 1e-3, "device": "cpu", "num_workers": 0, "quiet": True,
    }
    config = load_study_config(write_study(tmp_path, notebooks=[],
                                           train_notebook="02_train.ipynb", train=train,
                                           data_root=str(data_root)))
    spec = unique_runs(expand_grid(config))[0]
    launcher = SlurmLauncher(_local_slurm())
    job = launcher.executor(config).submit(SlurmRunJob(), launcher.job_task(make_task(config,
                                                                                     spec)))
    run = config.runs_dir / spec.run_name
    deadline = time.time() + 600
    while not (run / "checkpoints" / "last.pt").exists():
        assert time.time() < deadline and job.state != "FINISHED", job.stderr()
        time.sleep(0.1)
    _preempt(job)
    result = job.result()
    assert result.status == "trained", result
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance.get("resumed"), provenance  # the requeued job resumed the run
    history = json.loads((run / "history.json").read_text())
    assert sorted(h["epoch"] for h in history) == list(range(epochs + 1))
    assert is_finished(config.results_dir, spec.run_name)


#: A trainer whose kernel process writes to its own stderr at exit (as ipykernel's and zmq's
#: shut-down lines do, by races) and, for seed 1, writes its last words there and fails.
NOISY_KERNEL_BODY = '''
import atexit, os
atexit.register(os.write, 2, b"kernel noise at exit\\n")
if seed == 1:
    os.write(2, b"dying words on fd 2\\n")
    raise RuntimeError("planned failure of seed 1")
'''


def test_the_kernel_process_stderr_stays_out_of_a_run_log_unless_the_run_fails(
        fake_project: Path):
    """The kernel's own stderr (shut-down noise, written or not by races) never reaches a
    finished run's log, so two regenerations write the same log; a failed run's log gets it
    after a header, since a dying kernel says why there."""
    from dml_study.study.launch.task import KERNEL_STDERR_HEADER

    write_fake_train_notebook(fake_project / "notebooks" / "fake_train.ipynb", NOISY_KERNEL_BODY)
    groups = [{"name": "so_vs_none", "seeds": [0, 1],
               "variants": {"no_so": {"so_lambda": 0.0}, "so": {"so_lambda": 0.1}}}]
    config = load_study_config(write_study(fake_project, groups=groups,
                                           notebooks=["03_ablations.ipynb"]))
    with pytest.raises(GridFailedError) as failure:
        launch_grid(config, LocalLauncher(max_parallel=2), progress=False)
    specs = unique_runs(expand_grid(config))
    assert sorted(r.run_name for r in failure.value.failed) == sorted(
        s.run_name for s in specs if s.seed == 1)
    assert all(is_finished(config.results_dir, s.run_name) for s in specs if s.seed == 0)
    for spec in specs:
        log = (config.executed_runs_dir / f"{spec.run_name}.log").read_text()
        assert f"run {spec.run_name}" in log
        if spec.seed == 0:
            assert "kernel noise" not in log and KERNEL_STDERR_HEADER not in log, log
        else:
            assert "dying words on fd 2" in log.split(KERNEL_STDERR_HEADER, 1)[-1], log
