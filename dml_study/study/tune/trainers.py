"""Training a batch of trial runs through the project's own tiers.

A search hands its trainer the runs of the trials it asked (:class:`~dml_study.study.tune.
objective.TrialRun`: complete ``02_train`` parameters, one run per validation fold) and gets
one :class:`~dml_study.study.tune.objective.RunOutcome` per run back. Run directories live
under ``results/runs/`` like every run, named by the one naming scheme
(:func:`~dml_study.study.plan.grid.make_run_name`, whose hash covers ``data.split`` and the
``val_*`` keys), so a re-asked identical run (an interrupted trial enqueued again) is reused,
not retrained.

* :class:`FrozenTrialTrainer` trains frozen-tier arms in this process under the test-split
  guard (:func:`~dml_study.study.tune.guard.test_split_guard`), on the frozen tier's own
  validation features: :func:`~dml_study.study.tiers.frozen.extract_features` of a
  ``data.split: validation`` config reads only the training file of the feature cache
  (``…-train.npz``, extracted from training images if missing) and cuts it into the kept and
  the held-out classes of the run's fold. Runs are trained through
  :func:`train_frozen_batch`: **the seam for the batched frozen trainer**. Today it trains
  the batch's runs one after another with :func:`~dml_study.study.tiers.frozen.train_frozen`;
  ``dml_study/study/tiers/frozen_batched.py`` trains them as one computation with the same
  signature. An ``on_epoch(i, record)`` that returns true stops run ``i`` (pruned).
* :class:`FineTunedTrialTrainer` trains fine-tuned arms with the study's launchers
  (:mod:`dml_study.study.launch`: one :class:`~dml_study.study.launch.task.RunTask` per run,
  executing ``02_train`` in a worker process, ``max_parallel`` at a time locally or as a
  SLURM job array), with ``DML_STUDY_FORBID_TEST=1`` in each worker's environment. Its
  runs report their epochs after they finish (no pruning: they run in other processes).

Both check before a search starts that its data is there (:meth:`~FrozenTrialTrainer.check`:
a missing dataset is one line, before a trial is asked) and give the class ids of the
dataset's training split (:meth:`~FrozenTrialTrainer.training_class_ids`), against which
every run's ``validation_classes.json`` is checked (:func:`~dml_study.study.tune.guard.
check_validation_record`); neither opens the test split.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

from dml_study.study.plan.config import StudyConfig
from dml_study.study.plan.grid import (
    FeatureSettings,
    RunSpec,
    experiment_config,
    frozen_feature_settings,
    make_run_name,
)
from dml_study.study.tune.guard import FORBID_TEST_ENV, test_split_guard
from dml_study.study.tune.objective import RunOutcome, TrialRun, trial_runs
from dml_study.training.run_dir import RunDirectory

#: ``on_epoch(run, record) -> stop?``: called after every evaluated epoch of every run.
EpochHook = Callable[[TrialRun, dict[str, Any]], bool]


class TrialTrainer(Protocol):
    """Trains the runs of a batch of trials; see the module docstring."""

    #: ``"frozen"`` or ``"fine-tuned"``.
    tier: str
    #: Whether ``on_epoch`` may stop a run (pruning).
    can_prune: bool

    def train(self, runs: Sequence[TrialRun], on_epoch: EpochHook | None = None
              ) -> list[RunOutcome]:
        """One outcome per run, in order."""
        ...

    def run_name(self, params: dict[str, Any]) -> str:
        """The run directory name of a run with ``params``."""
        ...

    def check(self, plan: Any) -> None:
        """Raise a one-line error when ``plan``'s trials cannot run (e.g. a missing dataset)."""
        ...

    def training_class_ids(self, plan: Any) -> np.ndarray | None:
        """Class ids of the training split the runs of ``plan`` cut their folds from."""
        ...


def training_split_class_ids(dataset: str, data_root: str | Path | None) -> np.ndarray:
    """The class ids (labels) of ``dataset``'s training split, sorted.

    Opens the training split only (allowed under the test-split guard); a missing dataset
    raises the data layer's own error, which the command line prints as one line (exit 3).
    """
    from dml_study.data import get_dataset

    return np.unique(np.asarray(get_dataset(dataset, "train", data_root).labels))


def first_run_parameters(plan: Any) -> dict[str, Any]:
    """The ``02_train`` parameters of a plan's first run, no value searched yet: its dataset,
    data root and feature settings are those of every run of the search (for the checks)."""
    return trial_runs(plan.base, {}, trial=0, validation=plan.validation,
                      seed=plan.train_seed)[0].params


def read_records(run_dir: RunDirectory) -> list[dict[str, Any]]:
    """The per-epoch records (epoch >= 1) of a run directory's ``history.json``."""
    try:
        history = json.loads(run_dir.history_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [r for r in history if isinstance(r, dict) and int(r.get("epoch", 0)) >= 1]


def replay(run: TrialRun, records: list[dict[str, Any]], on_epoch: EpochHook | None,
           *, can_stop: bool) -> int | None:
    """Feed a finished run's ``records`` to ``on_epoch``; the epoch it stopped at, if any."""
    if on_epoch is None:
        return None
    for record in records:
        if on_epoch(run, record) and can_stop:
            return int(record["epoch"])
    return None


# --------------------------------------------------------------------------- frozen tier


class StopRun(Exception):
    """Raised from a frozen run's epoch hook to stop it (a pruned trial)."""


@dataclasses.dataclass
class BatchRunResult:
    """What :func:`train_frozen_batch` did with one run.

    ``metrics``: the run's ``metrics.json`` when it finished; ``stopped_after``: the epoch
    after which ``on_epoch`` stopped it; ``error``: why it failed (a non-finite loss).
    """

    metrics: dict[str, Any] | None = None
    stopped_after: int | None = None
    error: BaseException | None = None


def train_frozen_batch(
    configs: Sequence[Any],
    features: Any,
    run_dirs: Sequence[RunDirectory],
    *,
    tier_info: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    on_epoch: Callable[[int, dict[str, Any]], bool] | None = None,
) -> list[BatchRunResult]:
    """Train frozen-tier runs ``configs`` on one dataset's ``features``: the batch seam.

    Every run writes its run directory as :func:`~dml_study.study.tiers.frozen.train_frozen`
    does. ``on_epoch(i, record)`` is called after every epoch of run ``i``; when it returns
    true, run ``i`` stops there, unfinished (``stopped_after``). A run with a non-finite loss
    ends with its ``error`` and does not stop the others.

    Today the runs train one after another. The batched trainer
    (``dml_study.study.tiers.frozen_batched.train_frozen_batch(configs, features, run_dirs,
    tier_info=..., provenance=...)``, same arguments) trains them as one computation; to
    plug it in, call it here for runs of one :func:`batch_key` and give it the per-run
    ``on_epoch`` (a stopped run leaves the batch, as a failed one does).
    """
    from dml_study.study.tiers.frozen import FrozenTierError, train_frozen

    results = []
    for i, (config, run_dir) in enumerate(zip(configs, run_dirs, strict=True)):
        def hook(record: dict[str, Any], i: int = i) -> None:
            if on_epoch is not None and on_epoch(i, record):
                raise StopRun(int(record["epoch"]))

        try:
            metrics = train_frozen(config, features, run_dir, tier_info=tier_info,
                                   provenance=provenance, on_epoch=hook)
        except StopRun as stop:
            results.append(BatchRunResult(stopped_after=int(stop.args[0])))
        except FrozenTierError as exc:
            results.append(BatchRunResult(error=exc))
        else:
            results.append(BatchRunResult(metrics=metrics))
    return results


class FrozenTrialTrainer:
    """Frozen-tier trials of one study, trained here on cached features (module docstring).

    :meth:`experiment` builds a run's config and name as the frozen tier does,
    :meth:`features` gives the validation features it trains and evaluates on, and every
    batch trains under :meth:`guard`, the test-split guard.
    """

    tier = "frozen"
    can_prune = True

    def __init__(self, config: StudyConfig, *, stream: TextIO | None = None) -> None:
        self.config = config
        self.results_dir = config.results_dir
        self.stream = stream
        self._features: dict[str, Any] = {}
        self._class_ids: dict[str, np.ndarray] = {}
        self._provenance: dict[str, Any] | None = None

    def _train_file(self, params: dict[str, Any]) -> tuple[Any, Path]:
        from dml_study.study.tiers.frozen import feature_cache_path

        config, _ = self.experiment(params)
        return config, feature_cache_path(config, self.settings(params), part="train")

    def check(self, plan: Any) -> None:
        """Fail in one line, before a trial is asked, when ``plan``'s data is missing.

        Nothing to check when the training file of its features is cached; otherwise the
        dataset's training split is opened (as the first trial's extraction would): a
        missing dataset raises the data layer's error (one line, exit 3).
        """
        config, path = self._train_file(first_run_parameters(plan))
        if not path.is_file():
            self._class_ids[str(path)] = training_split_class_ids(config.data.dataset,
                                                                  config.data.data_root)

    def training_class_ids(self, plan: Any) -> np.ndarray:
        """Class ids of the training split ``plan``'s runs cut their folds from: the labels
        of the cached training file (``…-train.npz``, only its ``train_labels`` are read),
        or of the dataset's training split when the file is not cached."""
        config, path = self._train_file(first_run_parameters(plan))
        key = str(path)
        if key not in self._class_ids:
            if path.is_file():
                with np.load(path) as data:
                    self._class_ids[key] = np.unique(data["train_labels"])
            else:
                self._class_ids[key] = training_split_class_ids(config.data.dataset,
                                                                config.data.data_root)
        return self._class_ids[key]

    def guard(self) -> AbstractContextManager[None]:
        """The context every trial trains in: the test split forbidden."""
        return test_split_guard()

    def settings(self, params: dict[str, Any]) -> FeatureSettings:
        """The study's feature settings of the run's dataset."""
        return frozen_feature_settings(self.config, params.get("dataset"))

    def run_name(self, params: dict[str, Any]) -> str:
        from dml_study.study.plan.grid import frozen_tier_identity

        return make_run_name(params, tier=frozen_tier_identity(self.config,
                                                               params.get("dataset")))

    def experiment(self, params: dict[str, Any]) -> tuple[Any, str]:
        """``(ExperimentConfig, run name)`` of a run, as the frozen tier builds them.

        Every trial run is a validation run (``data.split: validation``); a config that is
        not is refused here, before anything is read.
        """
        name = self.run_name(params)
        clean = {k: v for k, v in params.items() if k not in ("quiet", "num_workers")}
        config = experiment_config({**clean, "run_name": name,
                                    "results_dir": str(self.results_dir)})
        if config.data.split != "validation":
            raise ValueError(f"trial run {name} has data.split={config.data.split!r}: every "
                             "trial must be a validation run")
        return config, name

    def batch_key(self, config: Any, settings: FeatureSettings, params: dict[str, Any]) -> str:
        """Runs with one key train on one features object: the frozen tier's
        :func:`~dml_study.study.tiers.frozen.features_key` (cache entry and validation fold)."""
        from dml_study.study.tiers.frozen import features_key

        return features_key(config, settings)

    def features(self, config: Any, settings: FeatureSettings, params: dict[str, Any]) -> Any:
        """The validation features of a run (``config``: its validation config; ``params``:
        its parameters): :func:`~dml_study.study.tiers.frozen.extract_features`, which reads
        only the training file of the cache entry (extracting it from training images if
        missing) and cuts it into the run's kept and held-out classes. One set in memory at
        a time, keyed by :meth:`batch_key`."""
        from dml_study.study.tiers.frozen import extract_features

        key = self.batch_key(config, settings, params)
        if key not in self._features:
            began = time.perf_counter()
            self._features.clear()
            features = extract_features(config, settings)
            fold = (features.validation or {}).get("fold")
            if features.split != "validation" or fold != config.data.val_fold:
                raise ValueError(f"features {features.key} are not fold {config.data.val_fold}"
                                 f" of a validation split (split {features.split!r}, fold "
                                 f"{fold})")
            self._features[key] = features
            if self.stream is not None:
                print(f"frozen features {key}: {time.perf_counter() - began:.0f} s",
                      file=self.stream, flush=True)
        return self._features[key]

    def train(self, runs: Sequence[TrialRun], on_epoch: EpochHook | None = None
              ) -> list[RunOutcome]:
        outcomes: list[RunOutcome | None] = [None] * len(runs)
        pending: dict[str, list[tuple[int, Any, str, RunDirectory, FeatureSettings]]] = {}
        for i, run in enumerate(runs):
            config, name = self.experiment(run.params)
            run_dir = RunDirectory.for_run(self.results_dir, name)
            if run_dir.is_finished():
                records = read_records(run_dir)
                stopped = replay(run, records, on_epoch, can_stop=True)
                outcomes[i] = RunOutcome(
                    name, "reused" if stopped is None else "pruned",
                    [r for r in records if stopped is None or int(r["epoch"]) <= stopped],
                    run_dir=str(run_dir.path))
                continue
            settings = self.settings(run.params)
            pending.setdefault(self.batch_key(config, settings, run.params), []).append(
                (i, config, name, run_dir, settings))
        if pending:
            from dml_study.env import environment_report

            self._provenance = self._provenance or environment_report()
        with self.guard():
            for batch in pending.values():
                features = self.features(batch[0][1], batch[0][4], runs[batch[0][0]].params)
                records: dict[int, list[dict[str, Any]]] = {j: [] for j, *_ in batch}

                def hook(k: int, record: dict[str, Any], batch: Any = batch,
                         records: Any = records) -> bool:
                    j = batch[k][0]
                    records[j].append(dict(record))
                    return bool(on_epoch(runs[j], record)) if on_epoch is not None else False

                began = time.perf_counter()
                results = train_frozen_batch(
                    [c for _, c, *_ in batch], features, [d for *_, d, _ in batch],
                    tier_info={"features": batch[0][4].identity()},
                    provenance=self._provenance, on_epoch=hook)
                seconds = (time.perf_counter() - began) / len(batch)
                for (j, _, name, run_dir, _), result in zip(batch, results, strict=True):
                    if result.error is not None:
                        status, error = "diverged", f"{type(result.error).__name__}: " \
                                                    f"{result.error}"
                    else:
                        status = "trained" if result.stopped_after is None else "pruned"
                        error = None
                    outcomes[j] = RunOutcome(name, status, records[j], seconds, error,
                                             str(run_dir.path))
        return [o for o in outcomes if o is not None]


# --------------------------------------------------------------------------- fine-tuned


class FineTunedTrialTrainer:
    """Fine-tuned trials: one launcher task per run, executing ``02_train`` (module docstring).

    ``directory``: where the executed notebooks and logs of the trials go
    (``<search dir>/trials/<run>.ipynb``, ``.log``).
    """

    tier = "fine-tuned"
    can_prune = False

    def __init__(self, config: StudyConfig, launcher: Any, *, group: str, variant: str,
                 directory: Path, poll_seconds: float = 5.0) -> None:
        self.config = config
        self.launcher = launcher
        self.group, self.variant = group, variant
        self.directory = Path(directory)
        self.poll_seconds = poll_seconds
        self._class_ids: dict[str, np.ndarray] = {}

    def _dataset(self, plan: Any) -> tuple[str, Any]:
        """``(dataset, data root)`` of ``plan``'s runs, as ``02_train`` resolves them."""
        data = experiment_config(first_run_parameters(plan)).data
        return data.dataset, data.data_root

    def check(self, plan: Any) -> None:
        """Fail in one line, before a trial is asked, when ``plan``'s dataset is missing:
        its training split is opened here (a missing dataset: the data layer's error, one
        line, exit 3), rather than failing every trial's notebook."""
        self.training_class_ids(plan)

    def training_class_ids(self, plan: Any) -> np.ndarray:
        """Class ids of ``plan``'s dataset's training split (:func:`training_split_class_ids`)."""
        dataset, root = self._dataset(plan)
        key = f"{dataset}|{root}"
        if key not in self._class_ids:
            self._class_ids[key] = training_split_class_ids(dataset, root)
        return self._class_ids[key]

    def run_name(self, params: dict[str, Any]) -> str:
        return make_run_name(params)

    def task(self, run: TrialRun) -> Any:
        """The :class:`~dml_study.study.launch.task.RunTask` training ``run``."""
        from dml_study.study.launch.task import make_task

        name = self.run_name(run.params)
        spec = RunSpec(self.group, self.variant, int(run.params.get("seed", 0)), run.params,
                       name, "fine-tuned")
        task = make_task(self.config, spec, launcher=self.launcher.name)
        executed = self.directory / "trials" / f"{name}.ipynb"
        return dataclasses.replace(
            task, label=f"{self.group}/{self.variant}, trial {run.trial}, fold {run.fold}",
            executed=str(executed), log=str(executed.with_suffix(".log")),
            env={**task.env, FORBID_TEST_ENV: "1"})

    def train(self, runs: Sequence[TrialRun], on_epoch: EpochHook | None = None
              ) -> list[RunOutcome]:
        from dml_study.study.launch.task import wait_for_run

        tasks = [self.task(run) for run in runs]
        results: dict[str, Any] = {}
        todo = list(tasks)
        while todo:
            for res in self.launcher.launch(self.config, todo, wait=True):
                results[res.run_name] = res
            claimed = [t for t in todo if results[t.run_name].status == "claimed"]
            for task in claimed:  # another process trains it (an interrupted trial's worker)
                wait_for_run(Path(task.results_dir), task.run_name, self.poll_seconds)
            todo = claimed
        outcomes = []
        for run, task in zip(runs, tasks, strict=True):
            res = results[task.run_name]
            run_dir = RunDirectory.for_run(self.config.results_dir, task.run_name)
            if res.status in ("trained", "reused") and run_dir.is_finished():
                records = read_records(run_dir)
                replay(run, records, on_epoch, can_stop=False)
                outcomes.append(RunOutcome(task.run_name, res.status, records, res.seconds,
                                           run_dir=str(run_dir.path)))
            else:
                where = res.executed_notebook or res.log or task.log
                outcomes.append(RunOutcome(task.run_name, "failed", [], res.seconds,
                                           f"{res.error or res.status} (see {where})",
                                           str(run_dir.path)))
        return outcomes
