"""One search: an Optuna study per (dataset, arm), run until its budget of trials is spent.

:func:`run_search` opens (or creates) the arm's study in its journal
(:mod:`~dml_study.study.tune.storage`) and repeats, until the trials that count reach the
budget:

1. **ask**, under the search's ask lock: fail the trials of workers that are gone and enqueue
   their parameters again (:func:`~dml_study.study.tune.storage.recover_stale_trials`), then
   ask the next batch of trials (:func:`next_batch`) and record on each its ``worker`` and
   its ``slot``;
2. **train** their runs with the arm's trainer (:mod:`~dml_study.study.tune.trainers`), one
   wave per validation fold, reporting every epoch's validation value (the pruner may stop a
   trial: the later folds of a pruned trial are not trained);
3. **tell** each trial its :func:`~dml_study.study.tune.objective.score` (validation metric at
   the best validation epoch, mean over folds) and write the search's files
   (:mod:`~dml_study.study.tune.results`).

**The budget.** A trial *counts* when it is COMPLETE or PRUNED: a pruned trial used its
share of the budget (it was stopped because it was worse than the median), so every arm
sees the same number of configurations. A FAILED trial does not count: an interrupted one
(kill, Ctrl-C) is enqueued again with its parameters; a fine-tuned run that failed (its
notebook raised) leaves its slot to a new configuration. A run whose loss became
non-finite counts as a COMPLETE trial with value 0 (``diverged``): it was a configuration
tried, and a bad one. The search stops after :data:`MAX_CONSECUTIVE_FAILURES` failed
trials in a row, naming them.

**Slots and seeds: a resumed search continues the uninterrupted one.** The budget is
``budget`` slots, 0 .. budget−1; each trial holds one (user attribute ``slot``), a
re-enqueued trial keeps its predecessor's. Batches are aligned blocks of ``batch`` slots
(the interrupted block is finished first), and a fresh trial of slot ``s`` is sampled by a
sampler seeded from ``(sampler.seed, s, attempt)`` (:func:`slot_seed`). So, for one worker,
the history each trial is sampled from and the seed it is sampled with are the same
whether or not the search was killed and resumed in between: the same seed gives the same
sequence of parameters (``tests/study/tune/test_tune_search.py``). With several workers on
one journal the sequence depends on their timing; the budget still holds exactly.

**Several workers.** Any number of processes (a second ``tune`` on this machine, SLURM
workers on others) may run :func:`run_search` on one journal: the ask lock makes "count,
then ask" atomic, so the slots never exceed the budget, and a worker with nothing left to
ask waits until the trials in flight are told. Each worker's heartbeat file lets the others
tell a dead worker from a slow one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.storages import JournalStorage
from optuna.trial import FrozenTrial, Trial, TrialState

from dml_study.errors import EXIT_FAILED, UserFacingError
from dml_study.study.tune.objective import (
    RunOutcome,
    TrialRun,
    report_step,
    score,
    trial_runs,
)
from dml_study.study.tune.plans import SearchPlan
from dml_study.study.tune.results import check_space, write_search_files
from dml_study.study.tune.space import suggest
from dml_study.study.tune.storage import (
    RETRY_ATTR,
    SLOT_ATTR,
    WORKER_ATTR,
    Heartbeat,
    OwnedFileLock,
    open_storage,
    recover_stale_trials,
)
from dml_study.study.tune.trainers import TrialTrainer

#: States of trials that count toward the budget.
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
#: A search stops after this many failed trials in a row.
MAX_CONSECUTIVE_FAILURES = 3
#: Seconds a worker with nothing to ask waits before looking again.
POLL_SECONDS = 2.0


class SearchFailedError(UserFacingError):
    """Trials of a search failed repeatedly (exit 1); names the runs and their logs."""

    exit_code = EXIT_FAILED


def slot_seed(seed: int, slot: int, attempt: int = 0) -> int:
    """The sampler seed of a fresh trial in ``slot`` (its ``attempt``-th, from 0)."""
    return int(np.random.SeedSequence([int(seed), int(slot), int(attempt)]).generate_state(1)[0])


def make_sampler(plan: SearchPlan, slot: int, attempt: int = 0) -> BaseSampler:
    """TPE (or random search) seeded for ``slot``; TPE's first ``startup_trials`` are random."""
    seed = slot_seed(plan.sampler.seed, slot, attempt)
    if plan.sampler.name == "random":
        return RandomSampler(seed=seed)
    return TPESampler(seed=seed, n_startup_trials=plan.sampler.startup_trials)


def make_pruner(plan: SearchPlan, can_prune: bool) -> optuna.pruners.BasePruner:
    """The median rule (``startup_trials``, ``warmup_epochs``), or none."""
    if plan.pruner.name == "none" or not can_prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=plan.pruner.startup_trials,
                                       n_warmup_steps=plan.pruner.warmup_epochs)


@dataclass
class SlotState:
    """Which slots of the budget are taken, and by what (from the study's trials)."""

    budget: int
    counted: dict[int, FrozenTrial] = field(default_factory=dict)
    running: dict[int, FrozenTrial] = field(default_factory=dict)
    waiting: list[FrozenTrial] = field(default_factory=list)
    failures: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, trials: Sequence[FrozenTrial], budget: int) -> SlotState:
        state = cls(budget)
        for trial in trials:
            slot = trial.user_attrs.get(SLOT_ATTR)
            if trial.state in COUNTED_STATES:
                state.counted[slot if slot is not None else -1 - trial.number] = trial
            elif trial.state == TrialState.RUNNING and slot is not None:
                state.running[slot] = trial
            elif trial.state == TrialState.WAITING:
                state.waiting.append(trial)
            elif trial.state == TrialState.FAIL and slot is not None:
                state.failures[slot] = state.failures.get(slot, 0) + 1
        state.waiting.sort(key=lambda t: t.number)
        return state

    @property
    def n_counted(self) -> int:
        return len(self.counted)

    def free(self) -> list[int]:
        """Slots below the budget that no counted, running or waiting trial holds."""
        taken = set(self.counted) | set(self.running) | {
            t.user_attrs[SLOT_ATTR] for t in self.waiting if SLOT_ATTR in t.user_attrs}
        return [s for s in range(self.budget) if s not in taken]


def next_batch(state: SlotState, batch: int) -> list[tuple[int, int, bool]]:
    """``(slot, attempt, waiting)`` of each trial to ask now (empty: nothing to ask).

    Waiting (re-enqueued) trials first, then free slots of the same aligned block of
    ``batch`` slots, so an interrupted block is finished before the next one starts; never
    more than the budget leaves (``budget - counted - running``).
    """
    capacity = state.budget - state.n_counted - len(state.running)
    limit = min(batch, capacity)
    if limit <= 0:
        return []
    waiting = [int(t.user_attrs[SLOT_ATTR]) for t in state.waiting][:limit]
    free = state.free()
    anchor = waiting[0] if waiting else (free[0] if free else None)
    if anchor is None:
        return []
    fresh = [s for s in free if s // batch == anchor // batch][:limit - len(waiting)]
    return [(s, 0, True) for s in waiting] + [(s, state.failures.get(s, 0), False)
                                             for s in fresh]


def assign_waiting_slots(study: optuna.Study, storage: JournalStorage, budget: int) -> None:
    """Give every WAITING trial without a slot (enqueued by hand) the smallest free slot;
    one beyond the budget is set to FAIL (``over_budget``). Call under the ask lock."""
    state = SlotState.of(study.get_trials(deepcopy=False), budget)
    unslotted = [t for t in state.waiting if SLOT_ATTR not in t.user_attrs]
    if not unslotted:
        return
    study_id = storage.get_study_id_from_name(study.study_name)
    free = iter(state.free())
    for trial in unslotted:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        slot = next(free, None)
        if slot is None:
            storage.set_trial_user_attr(trial_id, "over_budget", True)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        else:
            storage.set_trial_user_attr(trial_id, SLOT_ATTR, slot)


@dataclass
class SearchOutcome:
    """The state of a search when this worker left it."""

    plan: SearchPlan
    counted: int
    complete: int
    pruned: int
    failed: int
    best: FrozenTrial | None
    told_here: int = 0
    seconds: float = 0.0
    chosen: dict[str, Any] | None = None


ProgressHook = Callable[[int, int, float | None], None]


class Search:
    """One search (see the module docstring); :func:`run_search` is the usual entry point."""

    def __init__(self, plan: SearchPlan, trainer: TrialTrainer, *, batch: int = 1,
                 progress: ProgressHook | None = None,
                 on_batch: Callable[[Search], None] | None = None,
                 poll_seconds: float = POLL_SECONDS) -> None:
        """``batch``: trials asked and trained at once; ``progress(counted, budget, best)``
        after every batch; ``on_batch(search)`` too (the search's files are written first)."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.plan = plan
        self.trainer = trainer
        self.batch = batch
        self.progress = progress
        self.on_batch = on_batch
        self.poll_seconds = poll_seconds
        self.storage: JournalStorage = open_storage(plan.journal)
        self.pruner = make_pruner(plan, trainer.can_prune)
        names = {s.study_name for s in self.storage.get_all_studies()}
        if plan.study_name in names:  # no create op appended to the journal on every resume
            self.study = optuna.Study(plan.study_name, self.storage,
                                      sampler=make_sampler(plan, 0), pruner=self.pruner)
        else:
            self.study = optuna.create_study(
                study_name=plan.study_name, storage=self.storage, direction="maximize",
                load_if_exists=True, sampler=make_sampler(plan, 0), pruner=self.pruner)
        self.ask_lock = OwnedFileLock(plan.directory / "ask.lock")
        self._consecutive_failures: list[str] = []
        check_space(plan, has_trials=bool(self.trials()))

    def write_files(self) -> dict[str, Any] | None:
        """Write the search's ``trials.csv``, ``validation_classes.json``, ``chosen.json``."""
        ids = getattr(self.trainer, "training_class_ids", None)
        return write_search_files(self.plan, self.trials(),
                                  None if ids is None else (lambda: ids(self.plan)))

    # ----------------------------------------------------------------- state

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def state(self) -> SlotState:
        return SlotState.of(self.trials(), self.plan.budget)

    def best(self) -> FrozenTrial | None:
        """The best COMPLETE trial (highest value, earliest on ties)."""
        done = [t for t in self.trials() if t.state == TrialState.COMPLETE
                and t.value is not None]
        return min(done, key=lambda t: (-t.value, t.number)) if done else None

    def outcome(self, told: int, seconds: float) -> SearchOutcome:
        trials = self.trials()
        count = {s: sum(t.state == s for t in trials) for s in TrialState}
        return SearchOutcome(self.plan, count[TrialState.COMPLETE] + count[TrialState.PRUNED],
                             count[TrialState.COMPLETE], count[TrialState.PRUNED],
                             count[TrialState.FAIL], self.best(), told, seconds)

    def _report_progress(self) -> None:
        if self.progress is not None:
            best = self.best()
            self.progress(self.state().n_counted, self.plan.budget,
                          None if best is None else best.value)

    # ----------------------------------------------------------------- the loop

    def run(self) -> SearchOutcome:
        started, told = time.perf_counter(), 0
        self._report_progress()
        with Heartbeat(self.plan.directory) as heartbeat:
            while True:
                asked = self._ask(heartbeat.worker)
                if asked is None:
                    break
                if not asked:
                    time.sleep(self.poll_seconds)  # the rest is in flight elsewhere
                    self._report_progress()
                    continue
                told += self._evaluate(asked)
                self.write_files()
                if self.on_batch is not None:
                    self.on_batch(self)
                self._report_progress()
        outcome = self.outcome(told, time.perf_counter() - started)
        outcome.chosen = self.write_files()
        return outcome

    def _ask(self, worker: dict[str, Any]) -> list[tuple[Trial, dict[str, Any]]] | None:
        """The next batch (``None``: the budget is spent; ``[]``: nothing to ask now)."""
        with self.ask_lock.held():
            recover_stale_trials(self.study, self.storage, self.plan.directory,
                                 ask_lock_held=True)
            assign_waiting_slots(self.study, self.storage, self.plan.budget)
            state = self.state()
            if state.n_counted >= self.plan.budget:
                return None
            asked = []
            for slot, attempt, _waiting in next_batch(state, self.batch):
                study = optuna.Study(self.plan.study_name, self.storage,
                                     sampler=make_sampler(self.plan, slot, attempt),
                                     pruner=self.pruner)
                trial = study.ask()  # pops the oldest waiting trial first
                own = trial.user_attrs.get(SLOT_ATTR)
                trial.set_user_attr(WORKER_ATTR, worker)
                trial.set_user_attr(SLOT_ATTR, int(slot if own is None else own))
                asked.append((trial, suggest(trial, self.plan.space)))
            return asked

    def _evaluate(self, asked: list[tuple[Trial, dict[str, Any]]]) -> int:
        """Train and tell ``asked``; an interruption re-enqueues what was not told."""
        pending = {trial.number: trial for trial, _ in asked}
        try:
            return self._train_and_tell(asked, pending)
        except BaseException:
            self._release(list(pending.values()))
            raise

    def _train_and_tell(self, asked: list[tuple[Trial, dict[str, Any]]],
                        pending: dict[int, Trial]) -> int:
        plan = self.plan
        runs = {trial.number: trial_runs(plan.base, values, trial=trial.number,
                                         validation=plan.validation, seed=plan.train_seed)
                for trial, values in asked}
        trials = {trial.number: trial for trial, _ in asked}
        pruned: dict[int, int] = {}
        outcomes: dict[int, list[RunOutcome]] = {n: [] for n in trials}
        began = time.perf_counter()

        def on_epoch(run: TrialRun, record: dict[str, Any]) -> bool:
            value = record.get(plan.objective)
            if value is None:
                return False
            trial = trials[run.trial]
            trial.report(float(value), report_step(run.index, int(record["epoch"]),
                                                   plan.epochs))
            return self.trainer.can_prune and trial.should_prune()

        for index in range(len(plan.validation.fold_ids)):
            wave = [runs[n][index] for n in trials if n not in pruned
                    and not any(o.status in ("failed", "diverged") for o in outcomes[n])]
            if not wave:
                break
            for run, outcome in zip(wave, self.trainer.train(wave, on_epoch), strict=True):
                outcomes[run.trial].append(outcome)
                if outcome.status == "pruned":
                    pruned[run.trial] = int(outcome.records[-1]["epoch"]) if outcome.records \
                        else 0
        seconds = time.perf_counter() - began
        told = 0
        for number, trial in trials.items():
            self._tell(trial, outcomes[number], pruned.get(number), seconds / len(trials))
            pending.pop(number, None)
            told += 1
        return told

    def _tell(self, trial: Trial, outcomes: list[RunOutcome], pruned_at: int | None,
              seconds: float) -> None:
        plan = self.plan
        trial.set_user_attr("run_names", [o.run_name for o in outcomes])
        trial.set_user_attr("seconds", round(seconds, 2))
        trial.set_user_attr("statuses", [o.status for o in outcomes])
        failed = [o for o in outcomes if o.status == "failed"]
        if failed:
            trial.set_user_attr("error", "; ".join(str(o.error) for o in failed))
            self.study.tell(trial, state=TrialState.FAIL)
            self._consecutive_failures.append(f"trial {trial.number}: {failed[0].error}")
            if len(self._consecutive_failures) >= MAX_CONSECUTIVE_FAILURES:
                raise SearchFailedError(
                    f"search {plan.label}: {len(self._consecutive_failures)} trials failed in "
                    f"a row ({'; '.join(self._consecutive_failures)}); fix the cause and "
                    "re-run: the search resumes from its journal"
                )
            return
        self._consecutive_failures.clear()
        best = score([o.records for o in outcomes], plan.objective)
        if best is not None:
            trial.set_user_attr("best_epoch", best.epoch)
            trial.set_user_attr("R@1", best.r_at_1)
            trial.set_user_attr("per_fold", list(best.per_fold))
        if pruned_at is not None:
            trial.set_user_attr("pruned_epoch", pruned_at)
            self.study.tell(trial, state=TrialState.PRUNED)
            return
        diverged = [o for o in outcomes if o.status == "diverged"]
        if diverged:
            trial.set_user_attr("diverged", diverged[0].error)
            self.study.tell(trial, 0.0)
            return
        if best is None:
            trial.set_user_attr("error", f"no epoch with validation {plan.objective}")
            self.study.tell(trial, state=TrialState.FAIL)
            return
        self.study.tell(trial, best.value)

    def _release(self, trials: Sequence[Trial]) -> None:
        """FAIL ``trials`` (interrupted here) and enqueue them again, keeping their slots."""
        if not trials:
            return
        study_id = self.storage.get_study_id_from_name(self.plan.study_name)
        with self.ask_lock.held():
            for trial in trials:
                trial_id = self.storage.get_trial_id_from_study_id_trial_number(
                    study_id, trial.number)
                frozen = self.storage.get_trial(trial_id)
                if frozen.state != TrialState.RUNNING:
                    continue
                self.storage.set_trial_user_attr(trial_id, "interrupted", True)
                self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
                attrs = {RETRY_ATTR: frozen.number}
                if SLOT_ATTR in frozen.user_attrs:
                    attrs[SLOT_ATTR] = frozen.user_attrs[SLOT_ATTR]
                self.study.enqueue_trial(dict(frozen.params), user_attrs=attrs)


def run_search(plan: SearchPlan, trainer: TrialTrainer, *, batch: int = 1,
               progress: ProgressHook | None = None,
               on_batch: Callable[[Search], None] | None = None) -> SearchOutcome:
    """Run (or resume, or join) the search ``plan`` until its budget is spent."""
    return Search(plan, trainer, batch=batch, progress=progress, on_batch=on_batch).run()
