"""Checkpoint directories: atomic creation, discovery of the newest complete one, retention.

Layout of ``<run>/checkpoints/step-00000100/`` (only ever created by renaming a finished
``.tmp-step-00000100`` directory, so a name without ``.tmp`` is always complete):

- ``meta.json``: step, data position, W&B run id, strategy, world size, the model's and
  optimiser's shapes a resume must match (written last);
- ``rank-<R>.pt``: rank R's own state: every RNG (torch, CUDA, Python, NumPy) and its exact
  data position (each rank reads different shards, so positions differ per rank);
- the backend's model and optimiser state: ``model.pt`` + ``optimizer.pt`` (none / DDP), or
  DeepSpeed's own ZeRO layout (``latest``, ``zero/``, ``zero_to_fp32.py``).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from cvdist import comm
from cvdist.engine.safe_load import load_weights_only
from cvdist.io import atomic_write_json, fsync_directory

_NAME = re.compile(r"^step-(\d{8})$")
SUPERSEDED = "superseded"
"""Where checkpoints newer than an explicitly resumed one are moved (discovery ignores it)."""


@dataclass
class CheckpointMeta:
    """What a checkpoint says about where training stood."""

    step: int
    epoch: int
    batch_in_epoch: int
    strategy: str
    world_size: int
    wandb_run_id: Optional[str]
    nonfinite_skipped: int = 0
    """Steps skipped so far for a non-finite loss (``train.max_nonfinite_steps`` counts the whole run)."""
    # What a resume must agree on (cvdist.engine.resume_check); None in checkpoints written before.
    model_name: Optional[str] = None
    optimizer_name: Optional[str] = None
    param_group_sizes: Optional[list[int]] = None
    parameter_shapes: Optional[dict[str, list[int]]] = None


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(root: Path) -> Optional[Path]:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def read_meta(directory: Path) -> CheckpointMeta:
    with open(directory / "meta.json") as handle:
        return CheckpointMeta(**json.load(handle))


def capture_rng_state() -> dict[str, Any]:
    """Every RNG this process draws from, in a form ``weights_only`` loading accepts."""
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    return value


def save_checkpoint(*, root: Path, meta: CheckpointMeta, rank: int, write_backend_state: Callable[[Path], None],
                    data_state: dict, keep_last: int, extra_state: Optional[dict] = None) -> Path:
    """Write a checkpoint atomically; every rank calls this (collective).

    Rank 0 creates ``.tmp-step-N``, every rank writes its backend state, RNG states and
    ``data_state`` (its data position) into it,
    then rank 0 writes ``meta.json`` and renames the directory to ``step-N``. A process killed
    at any point leaves either no ``step-N`` or a complete one.
    """
    final = root / checkpoint_name(meta.step)
    temporary = root / f".tmp-{final.name}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if temporary.exists():
            shutil.rmtree(temporary)
        temporary.mkdir()
    comm.barrier()
    write_backend_state(temporary)
    rank_state = {"rng": capture_rng_state(), "data": data_state}
    if extra_state is not None:  # a recipe's own state (e.g. a weights' EMA), tensors and plain values
        rank_state["extra"] = extra_state
    torch.save(rank_state, temporary / rank_state_name(rank))
    comm.barrier()
    if rank == 0:
        atomic_write_json(temporary / "meta.json", asdict(meta))
        _fsync_tree(temporary)
        if final.exists():  # same step saved twice (e.g. a stop signal on a save step)
            discard_checkpoint(final)
        temporary.rename(final)
        fsync_directory(root)
        for old in complete_checkpoints(root)[:-keep_last]:
            discard_checkpoint(old)
    comm.barrier()
    return final


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            fsync_directory(path)


def discard_checkpoint(directory: Path) -> None:
    """Delete a checkpoint so that it never looks complete halfway: first a rename to a name that
    discovery ignores (atomic), then the deletion (a kill in between leaves a ``.del-*`` directory
    that :func:`remove_partial_checkpoints` clears)."""
    doomed = directory.with_name(f".del-{directory.name}-{os.getpid()}")
    directory.rename(doomed)
    fsync_directory(directory.parent)
    shutil.rmtree(doomed)


def set_aside_newer(root: Path, *, resumed: Path, step: int) -> list[Path]:
    """Move the checkpoints of ``root`` that would win over ``resumed`` (step ``step``) at the next
    ``resume=auto`` into ``root/superseded/`` (ignored by discovery, kept for the user); return
    their new paths. Called when a run resumes from an explicit, older checkpoint."""
    moved = []
    for path in complete_checkpoints(root):
        if read_meta(path).step >= step and path.resolve() != resumed.resolve():
            (root / SUPERSEDED).mkdir(exist_ok=True)
            target, copy = root / SUPERSEDED / path.name, 0
            while target.exists():  # one set aside before, under the same step: keep both
                copy += 1
                target = root / SUPERSEDED / f"{path.name}-{copy}"
            path.rename(target)
            moved.append(target)
    if moved:
        fsync_directory(root)
    return moved


def remove_partial_checkpoints(root: Path) -> list[Path]:
    """Delete ``.tmp-*`` / ``.del-*`` directories left by a process killed mid-save or mid-delete;
    return what was removed."""
    if not root.is_dir():
        return []
    partial = [p for p in root.iterdir() if p.name.startswith((".tmp-", ".del-"))]
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def rank_state_name(rank: int) -> str:
    return f"rank-{rank}.pt"


def load_rank_state(directory: Path, rank: int) -> dict[str, Any]:
    """``{"rng": ..., "data": ...[, "extra": ...]}`` as rank ``rank`` saved it."""
    return load_weights_only(directory / rank_state_name(rank))
