"""The one training loop every recipe uses.

A recipe hands over a :class:`TrainTask` (model, loss, batches, optional evaluation); the loop
does gradient accumulation, clipping, the per-step LR schedule, logging (loss, LR, samples/s,
data-wait time), periodic evaluation, checkpoints, exact resume and stop-on-signal.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Optional, Protocol

import torch
from torch import nn
from tqdm import tqdm

from cvdist import comm
from cvdist.engine.checkpoint import CheckpointMeta, load_rank_state, restore_rng_state, save_checkpoint
from cvdist.engine.session import Session
from cvdist.engine.signals import StopSignal
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


LossFn = Callable[[nn.Module, Any], "tuple[torch.Tensor, dict[str, float]]"]
EvalFn = Callable[[nn.Module], "dict[str, float]"]


@dataclass
class TrainTask:
    """What a recipe hands to :func:`fit`."""

    model: nn.Module
    compute_loss: LossFn
    """``(model, batch) -> (loss, extra scalar metrics)``; the batch is already on the device."""
    train_batches: BatchSource
    evaluate: Optional[EvalFn] = None
    """``model -> metrics``, called on every rank with the model in eval mode and no grad."""
    parameter_groups: Optional[list[dict]] = None
    """Optimiser parameter groups (e.g. layer-wise LRs); default: all parameters, one group."""


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


def fit(session: Session, task: TrainTask) -> FitResult:
    """Train ``task`` under ``session``'s config; return the final step and summary."""
    config, env, backend = session.config, session.env, session.backend
    session.open_run()
    optim_cfg, sched_cfg = config.optim, config.schedule
    optimizer = build_optimizer(
        task.parameter_groups or task.model.parameters(), name=optim_cfg.name, lr=optim_cfg.lr,
        momentum=optim_cfg.momentum, weight_decay=optim_cfg.weight_decay, betas=optim_cfg.betas,
        lars_trust_coefficient=optim_cfg.lars_trust_coefficient)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    model = backend.prepare(task.model, optimizer, grad_clip_norm=optim_cfg.grad_clip_norm,
                            micro_batch_size=session.micro_batch_size, accum_steps=optim_cfg.accum_steps)
    total_steps = _total_steps(session, task.train_batches)

    step, epoch, batch_in_epoch = 0, 0, 0
    if session.resume_from is not None:
        backend.load(session.resume_from)
        meta = session.resume_meta
        step, epoch, batch_in_epoch = meta.step, meta.epoch, meta.batch_in_epoch
        if meta.world_size == env.world_size:
            rank_state = load_rank_state(session.resume_from, env.rank)
            restore_rng_state(rank_state["rng"])
            task.train_batches.load_state(rank_state["data"])
        else:
            session.print(f"[cvdist] world size changed ({meta.world_size} -> {env.world_size}): "
                          "RNG streams restart, so the continuation is not bit-exact")
    else:
        # Per-rank RNG streams for dropout / augmentation, now that initial weights are built.
        torch.manual_seed(config.train.seed * 1000 + env.rank + 1)

    position = _Position(task.train_batches, epoch, batch_in_epoch)
    stop_signal = StopSignal.install()
    samples_per_step = session.micro_batch_size * optim_cfg.accum_steps * env.world_size
    log_every, eval_every = config.tracking.log_every_steps, config.train.eval_every_steps
    save_every = config.checkpoint.every_steps
    progress = tqdm(total=total_steps, initial=step, disable=not env.is_main, desc=config.name,
                    mininterval=2.0, dynamic_ncols=True)
    window_start, window_steps, window_wait, window_sums = time.perf_counter(), 0, 0.0, {}
    stopped_early = False
    model.train()

    def checkpoint() -> None:
        meta = CheckpointMeta(step=step, epoch=position.epoch, batch_in_epoch=position.batch,
                              strategy=session.strategy, world_size=env.world_size,
                              wandb_run_id=session.wandb.run_id)
        save_checkpoint(root=session.checkpoint_root, meta=meta, rank=env.rank, write_backend_state=backend.save,
                        data_state=task.train_batches.state(), keep_last=config.checkpoint.keep_last)

    while step < total_steps:
        set_learning_rate(backend.client_optimizer, base_lrs=base_lrs, multiplier=lr_multiplier(
            step, total_steps=total_steps, name=sched_cfg.name, warmup_steps=sched_cfg.warmup_steps,
            min_lr_ratio=sched_cfg.min_lr_ratio, milestones=sched_cfg.milestones,
            gamma=sched_cfg.gamma, pct_start=sched_cfg.pct_start))
        for micro in range(optim_cfg.accum_steps):
            wait_start = time.perf_counter()
            batch = backend.to_device(position.next_batch())
            window_wait += time.perf_counter() - wait_start
            with backend.accumulation_context(is_last_micro_batch=micro == optim_cfg.accum_steps - 1):
                loss, extra = task.compute_loss(model, batch)
                backend.backward(loss)
            for key, value in {"train/loss": loss.detach(), **extra}.items():
                window_sums[key] = window_sums.get(key, 0.0) + float(value) / optim_cfg.accum_steps
        grad_norm = backend.optimizer_step()
        step += 1
        window_steps += 1
        progress.update(1)

        row: dict[str, Any] = {"step": step}
        if step % log_every == 0 or step == total_steps:
            elapsed = time.perf_counter() - window_start
            averaged = comm.all_reduce_mean({k: v / window_steps for k, v in window_sums.items()}, env.device)
            row.update(epoch=position.epoch, **averaged, lr=backend.client_optimizer.param_groups[0]["lr"],
                       samples_per_s=samples_per_step * window_steps / max(elapsed, 1e-9),
                       data_wait_s=window_wait / window_steps)
            if grad_norm is not None and math.isfinite(grad_norm):
                row["grad_norm"] = grad_norm
            data_metrics = getattr(task.train_batches, "metrics", None)
            if data_metrics is not None:
                row.update(comm.all_reduce_sum(data_metrics(), env.device))
            progress.set_postfix(loss=f"{averaged.get('train/loss', float('nan')):.4f}")
            window_steps, window_wait, window_sums = 0, 0.0, {}
        if task.evaluate is not None and ((eval_every and step % eval_every == 0) or step == total_steps):
            row.update(_evaluate(session, task, model, step))
        if len(row) > 1:  # one row per step: train and eval metrics of a step share it
            session.record.log(row)
            session.wandb.log(row, step=step)
            window_start = time.perf_counter()

        stop_requested = comm.any_rank_true(stop_signal.received, env.device)
        if (save_every and step % save_every == 0) or step == total_steps or stop_requested:
            checkpoint()
        if stop_requested and step < total_steps:
            session.print(f"[cvdist] stop signal ({stop_signal.name}): saved step {step}, stopping")
            stopped_early = True
            break
    progress.close()
    stop_signal.uninstall()
    summary = session.record.write_summary({
        "step": step, "total_steps": total_steps, "stopped_early": stopped_early,
        "world_size": env.world_size, "strategy": session.strategy, "precision": backend.precision,
        "wall_time_s": time.perf_counter() - session.started_at, "wandb_run_id": session.wandb.run_id,
    })
    session.wandb.update_summary({"final/" + k: v for k, v in summary["final"].items()})
    return FitResult(step=step, stopped_early=stopped_early, summary=summary)


def _evaluate(session: Session, task: TrainTask, model: nn.Module, step: int) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        metrics = {f"eval/{k}": v for k, v in task.evaluate(model).items()}
    model.train()
    session.print(f"[cvdist] step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics
