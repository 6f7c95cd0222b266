"""The one training loop every recipe uses.

A recipe hands over a :class:`TrainTask` (model, loss, batches, optional evaluation); the loop
does gradient accumulation, clipping, the per-step LR schedule, logging (loss, LR, samples/s,
data-wait time), periodic evaluation, checkpoints, exact resume and stop-on-signal. It tells
every callback where training stands with one :class:`Progress` value, so no task counts steps
or micro-batches itself.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Optional, Protocol

import torch
from torch import nn
from tqdm import tqdm

from cvdist import comm
from cvdist.config import ConfigError
from cvdist.engine.checkpoint import (CheckpointMeta, checkpoint_name, load_rank_state, restore_rng_state,
                                      save_checkpoint)
from cvdist.engine.compiling import compile_model, log_first_forward
from cvdist.engine.lost_ranks import report_lost_ranks
from cvdist.engine.nonfinite import NonFiniteGuard
from cvdist.engine.resume_check import check_same_training, load_error, training_facts
from cvdist.engine.safe_load import UnsafeCheckpointError
from cvdist.engine.session import Session
from cvdist.engine.signals import StopSignal
from cvdist.tracking.system_facts import peak_memory
from cvdist.models.checkpointing import checkpoint_blocks
from cvdist.optim import build_optimizer, lr_multiplier, set_learning_rate


class BatchSource(Protocol):
    """What the loop needs from a data pipeline: the same number of batches on every rank, a
    way to start an epoch at a given batch, and its exact position for checkpoints."""

    def batches_in_epoch(self, epoch: int) -> int: ...

    def iterate(self, *, epoch: int, start_batch: int = 0) -> Iterator[Any]: ...

    def state(self) -> dict:
        """This rank's position after the last batch handed out (saved per rank)."""

    def load_state(self, state: dict) -> None:
        """Continue from ``state`` (called before ``iterate`` on resume)."""

    def metrics(self) -> dict[str, float]:
        """Counters since the epoch began (e.g. corrupt samples skipped), summed over ranks in the log."""


@dataclass(frozen=True)
class Progress:
    """Where training stands, as the loop hands it to ``compute_loss``, ``evaluate``,
    ``on_step_end`` and ``after_training``. Counts survive a resume (they restart from the checkpoint)."""

    step: int
    """Optimiser steps completed: during ``compute_loss`` those before the current micro-batch's
    step; in ``on_step_end`` the step just taken."""
    micro_batch: int
    """Micro-batches handed to ``compute_loss`` before the current one (``step * accum_steps`` plus
    the index within the step): a run-wide index, e.g. to seed per-batch augmentation."""
    epoch: int
    """The data epoch of the current micro-batch (0-based)."""
    total_steps: int
    """Optimiser steps of the whole run (``train.max_steps`` or the steps in ``train.epochs``)."""


LossFn = Callable[[nn.Module, Any, Progress], "tuple[torch.Tensor, dict[str, float]]"]
EvalFn = Callable[[nn.Module, Progress], "dict[str, float]"]


@dataclass
class AfterTraining:
    """What a task's ``after_training`` adds to the run's record."""

    metrics: dict[str, float]
    """Logged at the final step (metrics.jsonl, W&B) and part of the summary's ``final``."""
    summary: dict[str, Any]
    """Extra top-level entries of ``summary.json`` (e.g. a report table)."""


@dataclass
class TrainTask:
    """What a recipe hands to :func:`fit`."""

    model: nn.Module
    compute_loss: LossFn
    """``(model, batch, progress) -> (loss, extra scalar metrics)``; the batch is already on the device."""
    train_batches: BatchSource
    evaluate: Optional[EvalFn] = None
    """``(model, progress) -> metrics``, called on every rank with the model in eval mode and no grad."""
    parameter_groups: Optional[list[dict]] = None
    """Optimiser parameter groups (e.g. layer-wise LRs); default: all parameters, one group."""
    extra_state: Optional[Any] = None
    """An object with ``state_dict()`` / ``load_state_dict(state)`` saved in every rank's
    checkpoint file and restored on resume (e.g. an EMA of the weights); tensors and plain
    values only (checkpoints load with ``weights_only=True``)."""
    on_step_end: Optional[Callable[[Progress], None]] = None
    """Called after every optimiser step on every rank (e.g. a momentum encoder's EMA update).
    State it changes must live in ``model`` (buffers or frozen parameters) so that checkpoints
    carry it."""
    after_training: Optional[Callable[[Progress], AfterTraining]] = None
    """Called on every rank once the last step's checkpoint is written (not after an early stop),
    before the summary: final work such as a report or a post-hoc re-calibration."""


@dataclass
class FitResult:
    step: int
    stopped_early: bool
    summary: dict


def _total_steps(session: Session, source: BatchSource) -> int:
    """``train.max_steps``, or the optimiser steps in ``train.epochs`` epochs (micro-batches run
    on across epoch ends, so a partial accumulation group at an epoch's end is not lost)."""
    train, accum = session.config.train, session.config.optim.accum_steps
    if train.max_steps:
        return train.max_steps
    steps = sum(source.batches_in_epoch(epoch) for epoch in range(train.epochs)) // accum
    if steps == 0:
        raise ValueError(f"{train.epochs} epoch(s) give fewer micro-batches than optim.accum_steps={accum}; "
                         "use more data or fewer accumulation steps")
    return steps


class _Position:
    """Where the micro-batch stream stands: epoch and batch within it."""

    def __init__(self, source: BatchSource, epoch: int, batch: int):
        self.source, self.epoch, self.batch = source, epoch, batch
        self._iterator = source.iterate(epoch=epoch, start_batch=batch)

    def next_batch(self) -> Any:
        if self.batch >= self.source.batches_in_epoch(self.epoch):
            self.epoch, self.batch = self.epoch + 1, 0
            self._iterator = self.source.iterate(epoch=self.epoch, start_batch=0)
        self.batch += 1
        return next(self._iterator)


class _MetricsWindow:
    """Training metrics accumulated between two log rows."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start, self.steps, self.data_wait, self.sums = time.perf_counter(), 0, 0.0, {}
        self.skipped = 0  # steps without an update (non-finite loss): no loss to average

    def add(self, values: dict[str, Any], *, weight: float) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * weight


class _Trainer:
    """State of one ``fit`` call; each method is one phase of the loop."""

    def __init__(self, session: Session, task: TrainTask):
        self.session, self.task = session, task
        self.config, self.env, self.backend = session.config, session.env, session.backend
        optim_cfg = self.config.optim
        optimizer = build_optimizer(
            task.parameter_groups or task.model.parameters(), name=optim_cfg.name, lr=optim_cfg.lr,
            momentum=optim_cfg.momentum, weight_decay=optim_cfg.weight_decay, betas=optim_cfg.betas,
            lars_trust_coefficient=optim_cfg.lars_trust_coefficient)
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.facts = training_facts(model=task.model, model_name=self.config.model.name, optimizer_name=optim_cfg.name,
                                    param_group_sizes=[len(group["params"]) for group in optimizer.param_groups])
        self.model = self.backend.prepare(task.model, optimizer, grad_clip_norm=optim_cfg.grad_clip_norm,
                                          micro_batch_size=session.micro_batch_size, accum_steps=optim_cfg.accum_steps)
        if self.config.dist.compile and getattr(self.backend, "compiles_blocks", False):
            log_first_forward(self.model, what=f"torch.compile of each FSDP block (mode {self.config.dist.compile_mode})",
                              log=session.print)
        elif self.config.dist.compile:
            self.model = compile_model(self.model, mode=self.config.dist.compile_mode, log=session.print)
        self.total_steps = _total_steps(session, task.train_batches)
        warmup = self.config.schedule.warmup_steps
        if warmup >= self.total_steps:
            session.print(f"[cvdist] warning: schedule.warmup_steps={warmup} >= the run's {self.total_steps} steps: the "
                          "learning rate never reaches optim.lr; lower schedule.warmup_steps (e.g. a tenth of the steps)")
        self.samples_per_step = session.micro_batch_size * optim_cfg.accum_steps * self.env.world_size
        self.step = 0
        self.guard = NonFiniteGuard(max_skips=self.config.train.max_nonfinite_steps, device=self.env.device,
                                    skipped=session.resume_meta.nonfinite_skipped if session.resume_meta else 0)
        self.newest_checkpoint = session.resume_from.name if session.resume_from else "none"
        self.device_normaliser = self._take_normaliser()
        self.position = _Position(task.train_batches, *self._restore())
        self.micro_batches = self.step * optim_cfg.accum_steps  # checkpoints sit at step boundaries
        self.window = _MetricsWindow()

    def _take_normaliser(self) -> Optional[Callable]:
        """The batch normalisation moved from the data pipeline to the device, when
        ``data.device_normalise`` asks for it (default: on GPUs) and the source can hand it over."""
        wanted = self.config.data.device_normalise
        if wanted is None:
            wanted = self.env.device.type == "cuda"
        take = getattr(self.task.train_batches, "take_normaliser", None)
        normaliser = take() if wanted and take is not None else None
        if normaliser is not None:
            self.session.print(f"[cvdist] training batches cross as uint8 and are normalised on {self.env.device.type} "
                               "after the copy (data.device_normalise)")
        return normaliser

    def _restore(self) -> tuple[int, int]:
        """Load the checkpoint being resumed (if any); return the data position (epoch, batch)."""
        session, env = self.session, self.env
        if session.resume_from is None:
            # Per-rank RNG streams for dropout / augmentation, now that initial weights are built.
            torch.manual_seed(self.config.train.seed * 1000 + env.rank + 1)
            return 0, 0
        meta = session.resume_meta
        check_same_training(asdict(meta), self.facts, path=session.resume_from)
        try:
            self.backend.load(session.resume_from)
        except UnsafeCheckpointError:
            raise
        except (RuntimeError, KeyError, IndexError, ValueError) as error:  # old checkpoints: no facts to compare
            raise load_error(error, path=session.resume_from) from None
        self.step = meta.step
        rank_state, batch = self._restore_data(meta)
        if self.task.extra_state is not None:
            if "extra" not in rank_state:
                raise ConfigError(f"checkpoint {session.resume_from} has no recipe state (extra_state) but this run "
                                  "needs it; resume with the settings the run was started with")
            self.task.extra_state.load_state_dict(rank_state["extra"])
        return meta.epoch, batch

    def _restore_data(self, meta: CheckpointMeta) -> tuple[dict, int]:
        """This rank's checkpoint state and the batch at which its data continues: the exact
        position with the same slot layout; otherwise (another process count, ``data.num_workers``
        or micro-batch) the epoch's remaining samples re-planned over the new layout, when the data
        source can (cvdist's shard stream: :mod:`cvdist.data.elastic`)."""
        session, env, source = self.session, self.env, self.task.train_batches
        if meta.world_size == env.world_size:
            rank_state = load_rank_state(session.resume_from, env.rank)
            restore_rng_state(rank_state["rng"])
            if not getattr(source, "layout_changed", lambda _: False)(rank_state["data"]):
                source.load_state(rank_state["data"])
                return rank_state, meta.batch_in_epoch
        else:
            rank_state = load_rank_state(session.resume_from, 0)  # for the extra state, the same on every rank
        if not hasattr(source, "load_elastic_state"):
            if meta.batch_in_epoch:
                raise ConfigError(f"cannot resume {session.resume_from} mid-epoch on another number of processes: "
                                  "this data source keeps no re-plannable position; resume with "
                                  f"{meta.world_size} processes")
            return rank_state, 0
        states = [load_rank_state(session.resume_from, rank)["data"] for rank in range(meta.world_size)]
        batch = source.load_elastic_state(states)
        session.print(f"[cvdist] data layout changed ({meta.world_size} process(es) -> {env.world_size}, see the "
                      f"checkpoint's data position): epoch {meta.epoch}'s remaining samples re-planned over the new "
                      "reader slots (each at most once); RNG streams restart, so the continuation is not bit-exact")
        return rank_state, batch

    def _set_learning_rate(self) -> None:
        sched = self.config.schedule
        multiplier = lr_multiplier(self.step, total_steps=self.total_steps, name=sched.name,
                                   warmup_steps=sched.warmup_steps, min_lr_ratio=sched.min_lr_ratio,
                                   milestones=sched.milestones, gamma=sched.gamma, pct_start=sched.pct_start)
        set_learning_rate(self.backend.client_optimizer, base_lrs=self.base_lrs, multiplier=multiplier)

    def progress(self) -> Progress:
        """Where training stands now."""
        return Progress(step=self.step, micro_batch=self.micro_batches, epoch=self.position.epoch,
                        total_steps=self.total_steps)

    def _train_step(self) -> Optional[float]:
        """One optimiser step over ``optim.accum_steps`` micro-batches; returns the grad norm.

        A non-finite loss on any rank skips the step's update on every rank (no backward from
        that micro-batch on, gradients dropped) or stops the run (:class:`NonFiniteGuard`)."""
        self._set_learning_rate()
        accum_steps, skipped = self.config.optim.accum_steps, False
        for micro in range(accum_steps):
            wait_start = time.perf_counter()
            batch = self.backend.to_device(self.position.next_batch())
            if self.device_normaliser is not None:  # uint8 images copied, normalised here (data.device_normalise)
                batch["image"] = self.backend.to_device(self.device_normaliser(batch["image"]))  # + layout, dtype
            self.window.data_wait += time.perf_counter() - wait_start
            if skipped:  # the rest of a skipped step's data is consumed, not trained on
                self.micro_batches += 1
                continue
            with self.backend.accumulation_context(is_last_micro_batch=micro == accum_steps - 1):
                loss, extra = self.task.compute_loss(self.model, batch, self.progress())
                skipped = self.guard.step_is_skipped(loss, step=self.step + 1,
                                                     newest_checkpoint=self.newest_checkpoint)
                if not skipped:
                    self.backend.backward_and_maybe_step(loss)
                    self.window.add({"train/loss": loss.detach(), **extra}, weight=1.0 / accum_steps)
            self.micro_batches += 1
        if skipped:
            # Only none / DDP may skip (config refuses it under ZeRO): their gradients live on the
            # parameters, so dropping them here leaves weights and optimiser state untouched.
            self.backend.client_optimizer.zero_grad(set_to_none=True)
            self.session.print(f"[cvdist] step {self.step + 1}: non-finite loss, update skipped "
                               f"({self.guard.skipped} of train.max_nonfinite_steps={self.guard.max_skips})")
            grad_norm, self.window.skipped = None, self.window.skipped + 1
        else:
            grad_norm = self.backend.finish_step()
        self.step += 1
        if self.task.on_step_end is not None:
            self.task.on_step_end(self.progress())
        self.window.steps += 1
        return grad_norm

    def _training_metrics(self, grad_norm: Optional[float]) -> dict[str, Any]:
        """Averaged over the window and all ranks (a collective: every rank calls it)."""
        window, env = self.window, self.env
        trained = max(window.steps - window.skipped, 1)
        averaged = comm.all_reduce_mean({k: v / trained for k, v in window.sums.items()}, env.device)
        row = {"epoch": self.position.epoch, **averaged,
               "lr": self.backend.client_optimizer.param_groups[0]["lr"],
               "samples_per_s": self.samples_per_step * window.steps / max(time.perf_counter() - window.start, 1e-9),
               "data_wait_s": window.data_wait / window.steps}
        if grad_norm is not None and math.isfinite(grad_norm):
            row["grad_norm"] = grad_norm
        if self.guard.skipped:
            row["train/nonfinite_skipped"] = self.guard.skipped
        data_metrics = self.task.train_batches.metrics()
        if data_metrics:
            row.update(comm.all_reduce_sum(data_metrics, env.device))
        return row

    def _checkpoint(self) -> None:
        meta = CheckpointMeta(step=self.step, epoch=self.position.epoch, batch_in_epoch=self.position.batch,
                              strategy=self.session.strategy, world_size=self.env.world_size,
                              wandb_run_id=self.session.wandb.run_id, nonfinite_skipped=self.guard.skipped,
                              **self.facts)
        save_checkpoint(root=self.session.checkpoint_root, meta=meta, rank=self.env.rank,
                        write_backend_state=self.backend.save, data_state=self.task.train_batches.state(),
                        keep_last=self.config.checkpoint.keep_last,
                        extra_state=None if self.task.extra_state is None else self.task.extra_state.state_dict())
        self.newest_checkpoint = checkpoint_name(self.step)
        self.session.heartbeat()

    def run(self) -> FitResult:
        session, config, total = self.session, self.config, self.total_steps
        log_every, eval_every = config.tracking.log_every_steps, config.train.eval_every_steps
        save_every = config.checkpoint.every_steps
        stop_signal = StopSignal.install()  # the recipe's, installed at start-up, if it did
        # A progress bar on a terminal; in log files (SLURM, CI) one plain line per logged step.
        interactive = sys.stderr.isatty()
        progress = tqdm(total=total, initial=self.step, disable=not (self.env.is_main and interactive),
                        desc=config.name, mininterval=2.0, dynamic_ncols=True)
        # A signal that came during start-up (imports, data scan, checkpoint loading) stops the
        # run before its first step: the state is the resumed checkpoint's (or the initial one).
        stopped_early = self.step < total and comm.any_rank_true(stop_signal.received, self.env.device)
        if stopped_early:
            session.print(f"[cvdist] stop signal ({stop_signal.name}) during start-up: stopping before step "
                          f"{self.step + 1}, nothing new to save")
        self.model.train()
        while self.step < total and not stopped_early:
            grad_norm = self._train_step()
            step = self.step
            progress.update(1)
            row: dict[str, Any] = {"step": step}
            if step % log_every == 0 or step == total:
                row.update(self._training_metrics(grad_norm))
                progress.set_postfix(loss=f"{row.get('train/loss', float('nan')):.4f}")
                if not interactive:
                    session.print(f"[cvdist] step {step}/{total} epoch {row['epoch']} "
                                  f"loss {row.get('train/loss', float('nan')):.4f} lr {row['lr']:.4g} "
                                  f"{row['samples_per_s']:.0f} samples/s")
                self.window.reset()
            paused_at = time.perf_counter()  # evaluation and checkpoints do not count as training time
            stop_requested = comm.any_rank_true(stop_signal.received, self.env.device)
            stopped_early = stop_requested and step < total
            # No evaluation when stopping: it could run past SLURM's deadline before the save.
            if self.task.evaluate is not None and not stopped_early and (
                    (eval_every and step % eval_every == 0) or step == total):
                row.update(_evaluate(session, self.task, self.model, self.progress()))
            if len(row) > 1:  # one row per step: train and eval metrics of a step share it
                session.record.log(row)
                session.wandb.log(row, step=step)
                session.heartbeat()
            if (save_every and step % save_every == 0) or step == total or stop_requested:
                self._checkpoint()
            self.window.start += time.perf_counter() - paused_at
            if stopped_early:
                session.print(f"[cvdist] stop signal ({stop_signal.name}): saved step {step}, stopping")
        progress.close()
        stop_signal.uninstall()
        return self._finish(stopped_early)

    def _after_training(self) -> dict[str, Any]:
        """Run the task's ``after_training``; log its metrics at the final step; return its summary part."""
        outcome = self.task.after_training(self.progress())
        if outcome.metrics:
            row = {"step": self.step, **outcome.metrics}
            self.session.record.log(row)
            self.session.wandb.log(row, step=self.step)
        return dict(outcome.summary)

    def _finish(self, stopped_early: bool) -> FitResult:
        session = self.session
        extra = self._after_training() if self.task.after_training is not None and not stopped_early else {}
        summary = session.record.write_summary({
            **extra, "step": self.step, "total_steps": self.total_steps, "stopped_early": stopped_early,
            "world_size": self.env.world_size, "strategy": session.strategy, "precision": self.backend.precision,
            "wall_time_s": time.perf_counter() - session.started_at, "wandb_run_id": session.wandb.run_id,
            "system": session.system, **peak_memory(self.env.device),
        })
        if not stopped_early:
            session.wandb.log_checkpoint(session.checkpoint_root / checkpoint_name(self.step), step=self.step)
        session.wandb.update_summary({"final/" + k: v for k, v in summary["final"].items()})
        return FitResult(step=self.step, stopped_early=stopped_early, summary=summary)


def fit(session: Session, task: TrainTask) -> FitResult:
    """Train ``task`` under ``session``'s config; return the final step and summary. A rank
    that dies or hangs ends it with a :class:`~cvdist.engine.lost_ranks.LostRankError` naming it."""
    if session.config.dist.activation_checkpointing:  # (a model without blocks fails before the run is written)
        count = checkpoint_blocks(task.model)
        session.print(f"[cvdist] activation checkpointing: {count} blocks recompute their activations in the backward pass")
    session.open_run()
    with report_lost_ranks(rank=session.env.rank, world_size=session.env.world_size,
                           timeout_s=session.config.dist.timeout_s, checkpoint_root=session.checkpoint_root):
        return _Trainer(session, task).run()


def _evaluate(session: Session, task: TrainTask, model: nn.Module, progress: Progress) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        metrics = {f"eval/{k}": v for k, v in task.evaluate(model, progress).items()}
    model.train()
    session.print(f"[cvdist] step {progress.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics
