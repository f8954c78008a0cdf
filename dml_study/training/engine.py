"""The training engine: ``train(config) -> RunResult``.

One :class:`Trainer` per run. It builds data, model and loss from an
:class:`~dml_study.config.ExperimentConfig`, evaluates the untrained model, trains with AdamW
(parameter groups, per-step schedule, gradient clipping, frozen-backbone warm-up epochs),
evaluates every ``eval.every_n_epochs`` epochs, and writes everything to the run directory
(see :mod:`dml_study.training.run_dir`). The same code runs single-process and under
``torchrun`` (see :mod:`dml_study.training.distributed` for why the loss is computed on the
all-gathered global batch).

What is evaluated is ``data.split`` (:func:`~dml_study.training.pipeline.load_datasets`):
the test split, or, with ``validation``, the training images of held-out training classes
(class-disjoint validation, docs/validation.md; the run then writes
``validation_classes.json``, the test split is never opened). ``metrics.json`` records the
split; its best epoch is ``"best"`` (by validation MAP@R, ties to the earliest epoch) in a
validation run and ``"best_test_selected"`` (by test R@1, Proxy Anchor's protocol, for
comparison only) in a test run.

Reproducibility: every run computes under the numerical profile of
:mod:`dml_study.determinism` (fixed threads, pinned kernels: the same bits on every machine,
recorded in ``provenance.json``); model/proxy initialisation is seeded; augmentation is
seeded per sample (:mod:`dml_study.training.pipeline`); the batch order depends only on
``(seed, epoch)``; the checkpoint holds optimiser, scheduler, position and RNG states. A
run killed mid-epoch and resumed from ``checkpoints/last.pt`` therefore reproduces the
uninterrupted run bit for bit on CPU (tested: resume with ``num_workers=0``; identical
results with 0 and 2 workers).

Reliability: the process holds the run's lock (:mod:`dml_study.training.lock`) from opening
the run directory to writing ``metrics.json``, so a second process on the same run name
fails at once naming the holder. Each checkpoint rotates ``last.pt`` → ``prev.pt``; a resume
verifies ``last.pt`` and falls back to ``prev.pt`` when it is damaged
(:mod:`dml_study.training.checkpoint`). A full disk raises
:class:`~dml_study.errors.DiskFullError` naming the file, the bytes needed and free, and the
step a re-run resumes from. SIGINT/SIGTERM finish the current step, write ``last.pt``
and raise :class:`~dml_study.training.errors.TrainingInterrupted`
(:mod:`dml_study.training.interrupt`). ``train_time_s`` counts the time of every optimiser
step in the checkpointed state, across resumes. After a non-finite loss, a run can continue
from its last checkpoint with a lower learning rate (``run.allow_lr_change``, see
:meth:`Trainer._resume`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import random
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dml_study import determinism
from dml_study.config import (
    RESUME_MUTABLE_KEYS,
    ExperimentConfig,
    config_from_dict,
    validate_against_labels,
)
from dml_study.data import build_dataloader
from dml_study.data.transforms import model_transforms
from dml_study.env import environment_report
from dml_study.errors import DiskFullError
from dml_study.evaluation import embed, evaluate
from dml_study.evaluation.per_class import per_class_recall_at_1
from dml_study.losses import ProxyLoss, create_loss_from_config, orthogonality_stats
from dml_study.models import Embedder, create_embedder
from dml_study.training import distributed as D
from dml_study.training.checkpoint import (
    read_checkpoint,
    resume_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from dml_study.training.errors import (
    NonFiniteLossError,
    StopRequested,
    TrainingError,
    TrainingInterrupted,
)
from dml_study.training.interrupt import GracefulInterrupt
from dml_study.training.lock import RunLock
from dml_study.training.optim import build_optimizer, build_param_groups, build_scheduler, group_lrs
from dml_study.training.pipeline import (
    EpochBatches,
    SeededAugmentation,
    build_batch_sampler,
    embedder_arguments,
    eval_loader,
    load_datasets,
)
from dml_study.training.run_dir import (
    SELECTION_METRICS,
    RunDirectory,
    RunState,
    atomic_save_npy,
    atomic_save_npz,
    atomic_write_json,
    atomic_write_text,
    best_key,
)
from dml_study.training.state import TrainState, expose_state_fields


@dataclass
class RunResult:
    """What a finished run produced (everything is also on disk in ``run_dir``)."""

    run_dir: RunDirectory
    config: ExperimentConfig
    metrics: dict[str, float]
    untrained: dict[str, float] | None
    best_epoch: int | None
    best_metrics: dict[str, float] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed: bool = False
    train_time_s: float = 0.0
    #: ``data.split``: ``"test"`` or ``"validation"`` (then the metrics and the best epoch,
    #: chosen by MAP@R, are those of the held-out validation classes).
    split: str = "test"


class TrainModule(nn.Module):
    """Embedder + loss in one module, so DDP sees (and synchronises) the proxies too.

    ``forward(images, labels)`` returns the loss of the *global* batch (all ranks' embeddings
    gathered differentiably); the loss itself runs in float32 outside autocast.
    """

    def __init__(self, embedder: Embedder, loss: ProxyLoss, ctx: D.DistContext, compile_: bool):
        super().__init__()
        self.embedder = embedder
        self.loss = loss
        self.ctx = ctx
        # Not registered as a submodule, so state_dict keys stay those of the plain embedder.
        object.__setattr__(self, "_embed", torch.compile(embedder) if compile_ else embedder)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = self._embed(images)
        embeddings, labels = D.gather_for_loss(embeddings.float(), labels, self.ctx)
        with torch.autocast(device_type=images.device.type, enabled=False):
            return self.loss(embeddings, labels)


def seed_everything(seed: int) -> None:
    """Seed the global RNGs that library code (timm init, torchvision) draws from."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - third-party code may use the legacy global RNG


def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys (not resume-mutable) whose values differ; a key missing from one config (a
    checkpoint written before the key existed) counts as its default value."""
    defaults = ExperimentConfig().flat()
    flat_a = {**defaults, **{f"{s}.{k}": v for s, sec in a.items() for k, v in sec.items()}}
    flat_b = {**defaults, **{f"{s}.{k}": v for s, sec in b.items() for k, v in sec.items()}}
    keys = sorted(set(flat_a) | set(flat_b))
    return [k for k in keys if k not in RESUME_MUTABLE_KEYS and flat_a.get(k) != flat_b.get(k)]


def _mean_terms(sums: dict[str, float], count: int) -> dict[str, float]:
    return {k: v / count for k, v in sums.items()} if count else {}


@expose_state_fields
class Trainer:
    """Builds everything for one run; :meth:`run` trains and returns a :class:`RunResult`.

    The run's progress is ``self.train_state`` (a :class:`TrainState`); its fields are also
    attributes of the trainer (``self.global_step`` is ``self.train_state.global_step``).
    """

    def __init__(self, config: ExperimentConfig, ctx: D.DistContext | None = None):
        determinism.apply()  # fixed threads and kernels: the same bits on every machine
        self.ctx = ctx if ctx is not None else D.init_distributed(config.run.device)
        run_name = config.run.run_name or config.default_run_name()
        self.config = config_from_dict(
            {**config.to_dict(), "run": {**config.to_dict()["run"], "run_name": run_name}}
        )
        self.quiet = self.config.run.quiet or not self.ctx.is_main
        self.device = self.ctx.device
        amp = self.config.run.amp
        self.amp = amp == "bf16" or (amp == "auto" and self.device.type == "cuda")
        self.run_dir = RunDirectory.for_run(self.config.run.results_dir, run_name)

        # Data first: a missing dataset fails here, before any run directory exists.
        self.train_set, self.eval_sets = load_datasets(self.config, progress=not self.quiet)
        self._check_same_data_on_every_rank()
        validate_against_labels(self.config, self.train_set.labels)

        seed_everything(self.config.run.seed)
        self.embedder = self._build_embedder()
        self.loss_fn = self._build_loss()
        self.channels_last = self._use_channels_last()
        self.module = TrainModule(self.embedder, self.loss_fn, self.ctx, self.config.run.compile)
        self.module.to(self.device)
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)

        self._build_loaders()
        self._build_optimizer()

        self.train_state = TrainState()  # progress (restored on resume)
        self.last_embeddings: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        self.resumed = False
        self.lr_change: dict[str, float] | None = None  # set by a resume with a new lr
        #: The fallback warning when the run resumed from prev.pt (``None``: from last.pt).
        self.checkpoint_fallback: str | None = None
        #: Global step of the newest checkpoint on disk (None: none written or loaded yet).
        self._checkpoint_step: int | None = None
        self.lock = RunLock(self.run_dir.path)
        self.interrupt = GracefulInterrupt(on_first=self._on_signal)
        self._ddp: nn.Module | None = None
        self._backbone_trainable: bool | None = None

    # ------------------------------------------------------------------ building

    def _build_embedder(self) -> Embedder:
        return create_embedder(**embedder_arguments(self.config))

    def _check_same_data_on_every_rank(self) -> None:
        """Under DDP, every rank must have cut the same split (same classes, same images).

        :func:`load_datasets` is deterministic in the config, so this only fails when the
        ranks see different data (another data root, a dataset rebuilt in between).
        """
        if not self.ctx.distributed:
            return
        digest = hashlib.sha1()
        for ds in (self.train_set, *self.eval_sets.splits.values()):
            digest.update(np.asarray(ds.labels, dtype=np.int64).tobytes())
            digest.update("\n".join(p.name for p in ds.paths).encode("utf-8"))
        mine = (self.eval_sets.split, digest.hexdigest())
        everyone = D.all_gather_objects(mine, self.ctx)
        if any(other != everyone[0] for other in everyone):
            raise TrainingError(
                f"the DDP ranks loaded different training/evaluation data ({everyone}); "
                "every rank must read the same dataset (same data root and build)"
            )

    def _build_loaders(self) -> None:
        """Transforms, the resumable training batch stream and this rank's eval loaders."""
        train_tf, eval_tf = model_transforms(self.config, self.embedder.data_config)
        self.train_tf, self.eval_tf = train_tf, eval_tf
        base = build_batch_sampler(
            self.config, self.train_set.labels, self.ctx.rank, self.ctx.world_size
        )
        self.batches = EpochBatches(base, self.config.run.seed)
        self.train_loader = build_dataloader(
            SeededAugmentation(self.train_set, train_tf),
            batch_sampler=self.batches,
            num_workers=self.config.data.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self.eval_loaders = {
            split: eval_loader(ds, eval_tf, self.config, self.ctx.rank, self.ctx.world_size)
            for split, ds in self.eval_sets.splits.items()
        }
        self.steps_per_epoch = self.batches.batches_per_epoch()

    def _build_optimizer(self) -> None:
        """Parameter groups (backbone, head, proxies), optimiser and per-step scheduler."""
        groups = build_param_groups(
            self.embedder.backbone_parameters(),
            self.embedder.head_parameters(),
            self.loss_fn.param_groups(),
            self.config.optim,
        )
        self.optimizer = build_optimizer(groups, self.config.optim)
        self.scheduler = build_scheduler(
            self.optimizer, self.config.schedule, self.steps_per_epoch
        )

    def _use_channels_last(self) -> bool:
        mode = self.config.run.channels_last
        if mode != "auto":
            return mode == "on"
        convolutional = not hasattr(self.embedder.backbone, "patch_embed")
        return self.device.type == "cuda" or convolutional

    @property
    def selection_metric(self) -> str:
        """The metric the best epoch is chosen by (:data:`~.run_dir.SELECTION_METRICS`):
        validation MAP@R, or test R@1 (metrics.json ``best_test_selected``)."""
        return SELECTION_METRICS[self.eval_sets.split]

    def _build_loss(self) -> ProxyLoss:
        return create_loss_from_config(
            self.config, self.train_set.num_classes, self.embedder.embedding_dim,
            self.train_set.class_names,
        )

    # ------------------------------------------------------------------ run directory

    def _prepare_run_dir(self) -> RunState:
        """Lock (rank 0) and prepare the run directory; a failure is raised on every rank."""
        outcome: tuple[str, Any] = ("ok", None)
        if self.ctx.is_main:
            try:
                self.lock.acquire()
                outcome = ("ok", self.run_dir.prepare(self.config.run.overwrite).value)
            except TrainingError as err:
                outcome = ("error", err)
        outcome = D.broadcast_object(outcome, self.ctx)  # type: ignore[assignment]
        if outcome[0] == "error":
            raise outcome[1]
        return RunState(outcome[1])

    def _write_provenance(self, resumed: bool) -> None:
        if not self.ctx.is_main:
            return
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        report = environment_report()
        lr_changes: list[dict[str, float]] = []
        if resumed and self.run_dir.provenance.is_file():
            previous = self.run_dir.read_json("provenance.json")
            report["started"] = previous.get("started", now)
            report["resumed"] = [*previous.get("resumed", []), now]
            lr_changes = previous.get("lr_changes", [])
        else:
            report["started"] = now
        if self.lr_change is not None:
            lr_changes = [*lr_changes, self.lr_change]
            atomic_write_text(self.run_dir.config, self.config.to_yaml())
        if lr_changes:
            report["lr_changes"] = lr_changes
        report["world_size"] = self.ctx.world_size
        report["run_device"] = str(self.device)
        report["amp_bf16"] = self.amp
        atomic_write_json(self.run_dir.provenance, report)

    # ------------------------------------------------------------------ checkpoints

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.embedder.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **self.train_state.to_checkpoint(),
            "config": self.config.to_dict(),
            "world_size": self.ctx.world_size,
        }

    def save_last(self) -> None:
        """Write ``checkpoints/last.pt``, the old one becoming ``prev.pt`` (collective under
        DDP: RNG states of all ranks). See :mod:`~dml_study.training.checkpoint` for the
        rotation and why a kill at any point leaves a good checkpoint."""
        rngs = D.all_gather_objects(rng_state(), self.ctx)
        if self.ctx.is_main:
            save_checkpoint(self.run_dir.last_checkpoint, {**self._state(), "rng": rngs},
                            keep_previous=self.run_dir.prev_checkpoint)
        self._checkpoint_step = self.global_step
        D.barrier(self.ctx)

    def _save_best(self) -> None:
        if self.ctx.is_main:
            save_checkpoint(
                self.run_dir.best_checkpoint,
                {
                    "model": self.embedder.state_dict(),
                    "loss": self.loss_fn.state_dict(),
                    "epoch": self.best_epoch,
                    "metrics": self.best_metrics,
                    "config": self.config.to_dict(),
                },
            )

    def _load_resume_state(self) -> dict[str, Any]:
        """The newest good checkpoint: ``last.pt``, else ``prev.pt`` (with a warning).

        Rank 0 verifies and chooses (and sets a damaged ``last.pt`` aside); the other ranks
        load the file it chose. Neither good: :class:`DamagedCheckpointError` on every rank.
        """
        rd = self.run_dir
        outcome: tuple[str, Any] = ("ok", None)
        state: dict[str, Any] | None = None
        if self.ctx.is_main:
            try:
                resumed = resume_checkpoint([rd.last_checkpoint, rd.prev_checkpoint],
                                            map_location=self.device)
                state, outcome = resumed.state, ("ok", str(resumed.path))
                if resumed.warning:
                    self.checkpoint_fallback = resumed.warning
            except TrainingError as err:
                outcome = ("error", err)
        outcome = D.broadcast_object(outcome, self.ctx)  # type: ignore[assignment]
        if outcome[0] == "error":
            raise outcome[1]
        if state is None:
            state = read_checkpoint(outcome[1], map_location=self.device, full=True)
        return state

    def _resume(self) -> None:
        """Restore the newest good checkpoint; refuse a changed recipe (except ``optim.lr``
        when allowed).

        The checkpoint is ``last.pt`` if it passes verification, else ``prev.pt`` (see
        :meth:`_load_resume_state`): a damaged ``last.pt`` costs the steps since ``prev.pt``,
        which are trained again with the same result (bit for bit on CPU).

        With ``run.allow_lr_change`` a different ``optim.lr`` continues the run from the
        checkpoint with every group's learning rate scaled by ``new_lr / old_lr`` (the
        schedule's shape is kept). ``config.yaml`` then holds the new lr and
        ``provenance.json`` records the change (``lr_changes``: step, old and new lr): such a
        run is *not* reproduced by its ``config.yaml`` alone.
        """
        state = self._load_resume_state()
        diff = _config_diff(state["config"], self.config.to_dict())
        old_lr, new_lr = state["config"]["optim"]["lr"], self.config.optim.lr
        lr_changed = "optim.lr" in diff and self.config.run.allow_lr_change
        if lr_changed:
            diff.remove("optim.lr")
        if diff:
            hint = (
                " (a lower learning rate after a non-finite loss: also pass "
                "run.allow_lr_change=true)" if diff == ["optim.lr"] else ""
            )
            raise TrainingError(
                f"cannot resume {self.run_dir.path}: the config differs from the checkpoint's in "
                f"{', '.join(diff)}; use another run_name or overwrite=True{hint}"
            )
        self.embedder.load_state_dict(state["model"])
        self.loss_fn.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if lr_changed:
            self._rescale_lr(new_lr / old_lr)
            self.lr_change = {"step": state["global_step"], "from": old_lr, "to": new_lr}
        self.train_state = TrainState.from_checkpoint(state)
        rngs = state["rng"]
        if len(rngs) != self.ctx.world_size:
            warnings.warn(
                f"checkpoint was written by {len(rngs)} process(es), resuming with "
                f"{self.ctx.world_size}: batches are the same, dropout streams are not",
                stacklevel=2,
            )
        set_rng_state(rngs[self.ctx.rank] if self.ctx.rank < len(rngs) else rngs[0])
        self.resumed = True
        self._checkpoint_step = self.global_step

    def _rescale_lr(self, ratio: float) -> None:
        """Multiply the base and current learning rate of every group by ``ratio``."""
        self.scheduler.base_lrs = [lr * ratio for lr in self.scheduler.base_lrs]
        for group in self.optimizer.param_groups:
            group["lr"] *= ratio
            if "initial_lr" in group:
                group["initial_lr"] *= ratio
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    # ------------------------------------------------------------------ evaluation

    def evaluate_model(self) -> dict[str, float]:
        """Embed the evaluation splits (sharded over ranks) and compute metrics on rank 0.

        Every rank returns the same metric dict; rank 0 keeps the embeddings in
        ``last_embeddings``.
        """
        gathered: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for split, (loader, indices) in self.eval_loaders.items():
            full = self._embed_sharded(loader, indices, len(self.eval_sets.splits[split]))
            if full is not None:
                gathered[split] = full
        metrics = None
        if self.ctx.is_main:
            q_emb, q_lab = gathered["query"]
            g_emb, g_lab = gathered.get("gallery", (None, None))
            result = evaluate(
                q_emb, q_lab, g_emb, g_lab, ks=self.eval_sets.ks, nmi=self.config.eval.nmi,
                seed=self.config.run.seed,
            )
            metrics = {k: float(v) for k, v in result.to_dict().items()}
            self.last_embeddings = gathered
        return D.broadcast_object(metrics, self.ctx)  # type: ignore[return-value]

    def _embed_sharded(
        self, loader: torch.utils.data.DataLoader, indices: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Embed this rank's shard of a split; the whole split's arrays on rank 0, else None."""
        emb, labels = embed(self.embedder, loader, self.device, amp=self.amp, progress=False)
        parts = D.gather_to_main((indices, emb, labels), self.ctx)
        if parts is None:
            return None
        full_emb = np.empty((n, emb.shape[1]), dtype=np.float32)
        full_lab = np.empty(n, dtype=np.int64)
        for idx, e, lab in parts:
            full_emb[idx], full_lab[idx] = e, lab
        return full_emb, full_lab

    def train_class_recall(self) -> np.ndarray | None:
        """R@1 of every training class on the training images (evaluation transform).

        The per-class input of the SO paper's motivation analysis
        (:func:`dml_study.evaluation.per_class.per_class_recall_at_1`), computed at the end of
        a run when ``eval.train_class_recall`` is on. Collective: every rank embeds its
        shard; rank 0 gets the array, the others ``None``.
        """
        loader, indices = eval_loader(
            self.train_set, self.eval_tf, self.config, self.ctx.rank, self.ctx.world_size
        )
        full = self._embed_sharded(loader, indices, len(self.train_set))
        return None if full is None else per_class_recall_at_1(*full)

    # ------------------------------------------------------------------ training

    def _set_phase(self, epoch: int) -> None:
        """Frozen backbone during warm-up epochs; (re)wrap in DDP when the trainable set changes.

        DDP registers the parameters that require grad at construction, so a change of the
        trainable set needs a new wrapper (all ranks switch at the same epoch).
        """
        trainable = epoch >= self.config.schedule.freeze_backbone_epochs
        if trainable == self._backbone_trainable:
            return
        self.embedder.set_backbone_trainable(trainable)
        self._backbone_trainable = trainable
        if self.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            device_ids = [self.device] if self.device.type == "cuda" else None
            self._ddp = DDP(self.module, device_ids=device_ids)
        else:
            self._ddp = self.module

    def _trainable_params(self) -> Iterator[nn.Parameter]:
        return (p for p in self.module.parameters() if p.requires_grad)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One optimiser step on a (per-rank) batch; returns the loss terms of the global batch."""
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(self.device, non_blocking=True)
        assert self._ddp is not None
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = self._ddp(images, labels)
        terms = dict(self.loss_fn.last_terms)
        value = terms.get("loss", float(loss.detach()))
        if not math.isfinite(value):
            last = self.run_dir.last_checkpoint
            raise NonFiniteLossError(
                value, self.global_step + 1, self.epoch + 1, self.batch_in_epoch + 1,
                str(last) if last.is_file() else None,
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.config.optim.grad_clip_norm
        if clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self._trainable_params(), clip)
            terms["grad_norm"] = float(norm)
        self.optimizer.step()
        self.scheduler.step()
        return terms

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        self._set_phase(epoch)
        self.module.train()
        self.batches.set_position(epoch, self.batch_in_epoch)
        world_batch = self.config.data.batch_size * self.ctx.world_size
        stop_after = self.config.run.stop_after_steps
        every = self.config.run.checkpoint_every_steps
        tick = time.perf_counter()
        bar = tqdm(
            self.train_loader,
            total=self.steps_per_epoch,
            initial=self.batch_in_epoch,
            desc=f"epoch {epoch + 1}/{self.config.schedule.epochs}",
            disable=self.quiet,
            leave=False,
            dynamic_ncols=True,
        )
        for images, labels in bar:
            terms = self.train_step(images, labels)
            for k, v in terms.items():
                self.partial_sums[k] = self.partial_sums.get(k, 0.0) + v
            self.partial_count += 1
            self.batch_in_epoch += 1
            self.global_step += 1
            # Time is added step by step, so a mid-epoch checkpoint holds the time so far.
            now = time.perf_counter()
            self.epoch_time_s += now - tick
            self.train_time_s += now - tick
            tick = now
            rate = self.batch_in_epoch * world_batch / max(self.epoch_time_s, 1e-9)
            bar.set_postfix(loss=f"{terms['loss']:.4f}", img_s=f"{rate:.0f}")
            if self._interrupt_requested():
                bar.close()
                self._stop_on_signal()
            if every and self.global_step % every == 0:
                self.save_last()
            if stop_after is not None and self.global_step >= stop_after:
                raise StopRequested(self.global_step)
            tick = time.perf_counter()  # checkpoint writes are not training time
        bar.close()
        elapsed = self.epoch_time_s
        images_seen = self.steps_per_epoch * world_batch
        record: dict[str, Any] = {"epoch": epoch + 1, "step": self.global_step}
        record.update(_mean_terms(self.partial_sums, self.partial_count))
        record.update(group_lrs(self.optimizer))
        record["backbone_trainable"] = bool(self._backbone_trainable)
        record["time_s"] = elapsed
        record["img_per_s"] = images_seen / elapsed if elapsed > 0 else float("nan")
        self.partial_sums, self.partial_count = {}, 0
        self.epoch, self.batch_in_epoch = epoch + 1, 0
        self.epoch_time_s = 0.0
        return record

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum: int) -> None:
        self._log(f"signal {signum} received: finishing the current step, then checkpointing "
                  "(send it again to stop at once)")

    def _interrupt_requested(self) -> bool:
        """Whether any rank received SIGINT/SIGTERM (collective under DDP)."""
        local = float(self.interrupt.signum or 0)
        if not self.ctx.distributed:
            return local > 0
        return D.all_reduce_sum(local, self.ctx) > 0

    def _stop_on_signal(self) -> None:
        """Checkpoint at the current step and raise :class:`TrainingInterrupted`."""
        self.save_last()
        raise TrainingInterrupted(
            self.interrupt.signum or 15, self.global_step, str(self.run_dir.last_checkpoint)
        )

    def _orth_record(self) -> dict[str, float]:
        stats = orthogonality_stats(self.loss_fn.proxies.detach().cpu())
        return {f"orth_{k}": float(v) for k, v in stats.items()}

    def _eval_due(self, epoch_done: int) -> bool:
        e = self.config.schedule.epochs
        return epoch_done % self.config.eval.every_n_epochs == 0 or epoch_done == e

    def _log(self, message: str) -> None:
        if not self.quiet:
            tqdm.write(message)

    def run(self) -> RunResult:
        """Train (or resume) to the end and write the run directory.

        Holds the run's lock and the SIGINT/SIGTERM handlers for the whole call. A full disk
        raises :class:`~dml_study.errors.DiskFullError` saying which step a re-run resumes
        from (nothing claims success: ``metrics.json`` is written last).
        """
        try:
            with self.interrupt:
                return self._run()
        except DiskFullError as err:
            if err.resume is None:
                err.resume = self._resume_hint()
            raise
        finally:
            self._stop_workers()
            self.lock.release()

    def _resume_hint(self) -> str:
        """How a re-run continues: from the newest checkpoint's step, or from the start."""
        if self._checkpoint_step is not None:
            return f"it resumes from step {self._checkpoint_step}"
        if self.run_dir.state() is RunState.RESUMABLE:
            return f"it resumes from the newest checkpoint in {self.run_dir.checkpoints}"
        return "it starts from step 0 (no checkpoint was written yet)"

    def _stop_workers(self) -> None:
        """Shut persistent data-loader workers down now (they ignore SIGINT/SIGTERM)."""
        for loader in [self.train_loader, *(ld for ld, _ in self.eval_loaders.values())]:
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
                loader._iterator = None

    def _run(self) -> RunResult:
        state = self._prepare_run_dir()
        if self.ctx.is_main and self.eval_sets.validation is not None:
            atomic_write_json(self.run_dir.validation_classes, self.eval_sets.validation)
        if state is RunState.RESUMABLE:
            self._resume()
            self._log(
                f"resuming {self.run_dir.path} at epoch {self.epoch + 1}, "
                f"batch {self.batch_in_epoch}, step {self.global_step}"
            )
        else:
            if self.ctx.is_main:
                atomic_write_text(self.run_dir.config, self.config.to_yaml())
                atomic_save_npy(
                    self.run_dir.proxies_init, self.loss_fn.proxies.detach().cpu().numpy()
                )
            if self.config.eval.untrained:
                self.untrained = self.evaluate_model()
                self._log(f"untrained: {_fmt(self.untrained)}")
            self.history.append({"epoch": 0, "step": 0, **self._orth_record(),
                                 **(self.untrained or {})})
        self._write_provenance(self.resumed)
        if self._interrupt_requested():  # e.g. during the untrained evaluation
            self._stop_on_signal()

        for epoch in range(self.epoch, self.config.schedule.epochs):
            record = self._train_epoch(epoch)
            record.update(self._orth_record())
            if self._eval_due(epoch + 1):
                metrics = self.evaluate_model()
                record.update(metrics)
                self.last_metrics = metrics
                key = self.selection_metric
                if self.best_metrics is None or metrics[key] > self.best_metrics[key]:
                    self.best_epoch, self.best_metrics = epoch + 1, metrics
                    self._save_best()
            self.history.append(record)
            self.save_last()
            if self.ctx.is_main:
                self.history.save(self.run_dir)
            self._log(
                f"epoch {epoch + 1}: loss {record.get('loss', float('nan')):.4f} "
                f"so {record.get('so', 0.0):.4f} {_fmt(record)}"
            )
            if self._interrupt_requested():  # e.g. during the evaluation: last.pt is current
                raise TrainingInterrupted(
                    self.interrupt.signum or 15, self.global_step,
                    str(self.run_dir.last_checkpoint),
                )
        return self._finish()

    def _finish(self) -> RunResult:
        # Resumed after the last epoch's checkpoint but before metrics.json was written: the
        # embeddings are gone, so evaluate again (rank 0 decides; evaluation is collective).
        if D.broadcast_object(self.last_embeddings is None, self.ctx):
            self.last_metrics = self.evaluate_model()
        train_recall = self.train_class_recall() if self.config.eval.train_class_recall else None
        if self.ctx.is_main:
            rd = self.run_dir
            if train_recall is not None:
                atomic_save_npy(rd.train_class_recall, train_recall)
            self.history.save(rd)
            atomic_save_npy(rd.proxies, self.loss_fn.proxies.detach().cpu().numpy())
            if self.config.eval.save_test_embeddings and self.last_embeddings is not None:
                arrays: dict[str, np.ndarray] = {}
                for split, (emb, lab) in self.last_embeddings.items():
                    prefix = "" if split == "query" and len(self.last_embeddings) == 1 else (
                        f"{split}_"
                    )
                    arrays[f"{prefix}embeddings"], arrays[f"{prefix}labels"] = emb, lab
                arrays["class_names"] = np.asarray(self.eval_sets.query.class_names)
                arrays["display_names"] = np.asarray(self.eval_sets.query.display_names)
                atomic_save_npz(rd.eval_embeddings(self.eval_sets.split), **arrays)
            metrics: dict[str, Any] = dict(self.last_metrics)
            metrics["untrained"] = self.untrained
            metrics["split"] = self.eval_sets.split
            metrics[best_key(self.eval_sets.split)] = {
                "epoch": self.best_epoch, **(self.best_metrics or {})
            }
            metrics["epochs"] = self.config.schedule.epochs
            metrics["global_steps"] = self.global_step
            metrics["train_time_s"] = self.train_time_s
            if hasattr(self.loss_fn, "average_margin"):
                metrics["mean_margin"] = self.loss_fn.average_margin()
            # Written last: its presence marks the run as finished.
            atomic_write_json(rd.metrics, metrics)
        D.barrier(self.ctx)
        return RunResult(
            run_dir=self.run_dir,
            config=self.config,
            metrics=dict(self.last_metrics),
            untrained=self.untrained,
            best_epoch=self.best_epoch,
            best_metrics=self.best_metrics,
            history=list(self.history.records),
            resumed=self.resumed,
            train_time_s=self.train_time_s,
            split=self.eval_sets.split,
        )


def _fmt(metrics: dict[str, Any]) -> str:
    keys = [k for k in metrics if k.startswith("R@") or k in ("MAP@R", "NMI")]
    return " ".join(f"{k} {metrics[k]:.4f}" for k in keys)


def train(config: ExperimentConfig) -> RunResult:
    """Train ``config`` (single process, or one rank of a ``torchrun`` job) and return the result.

    Raises :class:`~dml_study.training.errors.RunExistsError` when the run directory holds a
    finished run and ``run.overwrite`` is false; resumes from ``checkpoints/last.pt`` when the
    run was interrupted.
    """
    ctx = D.init_distributed(config.run.device)
    try:
        return Trainer(config, ctx).run()
    finally:
        D.shutdown(ctx)
