"""A training session: launcher environment, process group, backend, run directory, tracking.

``start_session`` does everything that must happen before a recipe builds its data (which needs
the rank and world size) and in an order that fails fast: the config is validated against the
real world size before anything is written, and a new run never writes over an existing one.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cvdist import comm
from cvdist import config as config_module
from cvdist.config import ConfigError, RunConfig
from cvdist.engine.backends import Backend, build_backend, resolve_strategy
from cvdist.engine.checkpoint import (CheckpointMeta, latest_checkpoint, read_meta, remove_partial_checkpoints,
                                      set_aside_newer)
from cvdist.engine.dist import DistEnv, apply_accelerate_launch_settings, launched_world_size, prepare_launch_env
from cvdist.engine.resume_check import check_strategy_matches
from cvdist.engine.run_lock import RunLock
from cvdist.tracking.records import RunRecord, check_run_dir_is_free
from cvdist.engine.export import resolve_checkpoint_dir
from cvdist.io import atomic_write_json
from cvdist.tracking.system_facts import system_facts
from cvdist.tracking.wandb_run import RunInput, WandbRun, resolve_wandb_mode


@dataclass
class Session:
    """Everything a recipe needs from the engine before ``fit``."""

    config: RunConfig
    env: DistEnv
    backend: Backend
    strategy: str
    wandb_mode: str
    resume_from: Optional[Path]
    resume_meta: Optional[CheckpointMeta]
    micro_batch_size: int
    record: Optional[RunRecord] = None
    wandb: Optional[WandbRun] = None
    started_at: float = field(default_factory=time.perf_counter)
    inputs: list[RunInput] = field(default_factory=list)
    """Checkpoints / weights files the run starts from (:meth:`add_input`), for W&B lineage."""
    lock: Optional[RunLock] = None
    """The run directory's lock (rank 0 only)."""

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    @property
    def resumed_step(self) -> Optional[int]:
        """The step of the checkpoint this run resumes from (None for a fresh run)."""
        return self.resume_meta.step if self.resume_meta else None

    @property
    def checkpoint_root(self) -> Path:
        return self.config.run_dir / "checkpoints"

    def print(self, message: str) -> None:
        """Print on rank 0 only."""
        if self.env.is_main:
            print(message, flush=True)

    def add_input(self, path: str | Path) -> None:
        """Note that this run starts from ``path`` (a cvdist run or checkpoint directory, or a
        weights file); call before ``fit``. Recorded in ``inputs.json`` and, online, as the W&B
        run's input artifact, so the pretrain -> fine-tune -> distill lineage shows there."""
        path = Path(path)
        if path.is_dir():
            directory = resolve_checkpoint_dir(path)
            meta = read_meta(directory)
            self.inputs.append(RunInput(directory, wandb_run_id=meta.wandb_run_id, step=meta.step))
        else:
            self.inputs.append(RunInput(path))

    @property
    def system(self) -> dict:
        """Versions, launcher, devices, world size (summary.json ``system`` and the W&B config)."""
        return system_facts(world_size=self.env.world_size, strategy=self.strategy, precision=self.backend.precision,
                            device_type=self.env.device.type)

    def open_run(self) -> None:
        """Create the run directory and its records and start W&B (called by ``fit``).

        Kept out of :func:`start_session` so that a recipe's own set-up errors (a missing data
        file) leave no half-made run directory behind.
        """
        config, env, meta = self.config, self.env, self.resume_meta
        if env.is_main:
            for path in remove_partial_checkpoints(self.checkpoint_root):
                print(f"[cvdist] removed an incomplete checkpoint left by an interrupted save: {path}", flush=True)
            if meta is not None:  # newer checkpoints than the one resumed must not win a later resume=auto
                for path in set_aside_newer(self.checkpoint_root, resumed=self.resume_from, step=meta.step):
                    print(f"[cvdist] resuming from step {meta.step}: moved the newer checkpoint aside to {path}",
                          flush=True)
        self.record = RunRecord(config.run_dir, is_main=env.is_main)
        self.record.start(config_yaml=config_module.to_yaml(config), resumed_step=self.resumed_step)
        self.wandb = WandbRun(
            mode=self.wandb_mode, is_main=env.is_main, run_dir=config.run_dir, name=config.name,
            project=config.tracking.project, entity=config.tracking.entity,
            group=config.tracking.group or config.recipe, job_type=config.tracking.job_type or config.recipe,
            tags=list(config.tracking.tags), config={**config_module.to_dict(config), "system": self.system},
            run_id=meta.wandb_run_id if meta else None,
        )
        if self.inputs and env.is_main:
            atomic_write_json(config.run_dir / "inputs.json", [source.as_dict() for source in self.inputs])
        for source in self.inputs:
            self.wandb.use_input(source)

    def heartbeat(self) -> None:
        """Tell other would-be starters this run is alive (rank 0's lock; at log rows and checkpoints)."""
        if self.lock is not None:
            self.lock.refresh()

    def close(self, *, exit_code: int = 0) -> None:
        if self.wandb is not None:
            self.wandb.finish(exit_code=exit_code)
        self.backend.close()
        if self.lock is not None:
            self.lock.release()


def seed_everything(seed: int) -> None:
    """Same seed on every rank, so every rank builds identical initial weights (ZeRO-3
    partitions each rank's own copy, it does not broadcast them)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _lock_and_find_resume_point(config: RunConfig, env: DistEnv) -> tuple[Optional[RunLock], Optional[Path]]:
    """Rank 0 takes the run directory's lock, checks a new run does not overwrite an old one and
    picks the checkpoint to resume; every rank gets its choice, or raises its error (ranks on a
    network file system can see different directory listings, so only one may look)."""
    lock, outcome = None, ""
    if env.is_main:
        try:
            lock = RunLock.acquire(config.run_dir, stale_after_s=config.checkpoint.lock_stale_after_s)
            check_run_dir_is_free(config.run_dir, resume=config.checkpoint.resume)
            path = _find_resume_point(config)
            outcome = "resume:" + (str(path) if path else "")
        except Exception as error:  # the other ranks wait for rank 0's word: always send it
            if lock is not None:
                lock.release()
            comm.broadcast_text("error:" + str(error), env.device)
            raise
    kind, _, text = comm.broadcast_text(outcome, env.device).partition(":")
    if kind == "error":
        raise ConfigError(text)
    return lock, Path(text) if text else None


def _find_resume_point(config: RunConfig) -> Optional[Path]:
    resume = config.checkpoint.resume
    if resume == "none":
        return None
    if resume == "auto":
        return latest_checkpoint(config.run_dir / "checkpoints")
    path = Path(resume)
    if not (path / "meta.json").is_file():
        raise ConfigError(f"checkpoint.resume={resume!r} is not a complete cvdist checkpoint directory "
                          "(no meta.json); use 'auto' or a checkpoints/step-* directory")
    return path


def start_session(config: RunConfig) -> Session:
    """Validate ``config``, join the process group, lock the run directory and find the
    checkpoint to resume from (rank 0 decides both and tells the others).

    Nothing but the lock is written to disk here; :meth:`Session.open_run` (called by ``fit``) does that.
    """
    prepare_launch_env()
    apply_accelerate_launch_settings(config.dist, os.environ)
    world_size = launched_world_size()
    config_module.validate(config, world_size=world_size)
    strategy = resolve_strategy(config.dist.strategy, world_size)
    backend = build_backend(strategy=strategy, precision=config.dist.precision,
                            deepspeed_config=config.dist.deepspeed_config, channels_last=config.dist.channels_last,
                            timeout_s=config.dist.timeout_s,
                            fsdp_options={"reshard_after_forward": config.dist.fsdp_reshard_after_forward,
                                          "cpu_offload": config.dist.fsdp_cpu_offload,
                                          "checkpoint_format": config.dist.fsdp_checkpoint,
                                          "compile_mode": config.dist.compile_mode if config.dist.compile else None})
    env = backend.env
    lock, resume_from = _lock_and_find_resume_point(config, env)
    resume_meta = read_meta(resume_from) if resume_from is not None else None
    if resume_meta is not None:
        check_strategy_matches(strategy=strategy, world_size=world_size, saved_strategy=resume_meta.strategy,
                               saved_world_size=resume_meta.world_size, path=resume_from)
    wandb_mode = resolve_wandb_mode(config.tracking.wandb_mode, os.environ)

    seed_everything(config.train.seed)
    micro_batch_size = config.data.global_batch_size // (world_size * config.optim.accum_steps)
    session = Session(config=config, env=env, backend=backend, strategy=strategy, wandb_mode=wandb_mode,
                      resume_from=resume_from, resume_meta=resume_meta,
                      micro_batch_size=micro_batch_size, lock=lock)
    session.print(
        f"[cvdist] run {config.run_dir} | strategy {strategy} | {env.world_size} process(es) on "
        f"{env.device.type} | precision {backend.precision} | micro-batch {micro_batch_size} x "
        f"accum {config.optim.accum_steps} x {world_size} = {config.data.global_batch_size} | W&B {wandb_mode}"
        + (f" | resuming from {resume_from}" if resume_from else "")
    )
    return session
