"""Does a checkpoint fit the run that wants to resume from it? One-line errors naming what changed.

A checkpoint's ``meta.json`` records the model name, every state_dict entry's shape, the
optimiser and its parameter-group sizes (:func:`training_facts`); a resume compares them with the
run being started before anything is loaded, instead of failing deep inside ``load_state_dict``
(a shape mismatch, or ``KeyError: 'step'`` when SGD state meets AdamW). Checkpoints written
before these fields existed are still loaded; a mismatch then surfaces from the load itself and
is turned into the same kind of one-line error (:func:`load_error`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from torch import nn

from cvdist.config import ConfigError

_FIX = ("resume with the settings the checkpoint was written with, or start a new run (another name=...; "
        "transfer.from_path=CHECKPOINT starts a different model from its weights)")


def training_facts(*, model: nn.Module, model_name: str, optimizer_name: str,
                   param_group_sizes: list[int]) -> dict[str, Any]:
    """What a checkpoint must agree on with a resuming run; call before the backend wraps ``model``
    (ZeRO-3 replaces parameters by empty partitions)."""
    shapes = {name: list(getattr(value, "shape", ())) for name, value in model.state_dict().items()}
    return {"model_name": model_name, "optimizer_name": optimizer_name, "param_group_sizes": param_group_sizes,
            "parameter_shapes": shapes}


def check_same_training(saved: dict[str, Any], current: dict[str, Any], *, path: Path) -> None:
    """Raise ConfigError naming the first difference between ``saved`` (from meta.json; fields
    may be None in old checkpoints) and ``current`` (:func:`training_facts`)."""
    problem = _difference(saved, current)
    if problem:
        raise ConfigError(f"cannot resume from {path}: {problem}; {_FIX}")


def _difference(saved: dict[str, Any], current: dict[str, Any]) -> Optional[str]:
    for key, what in (("model_name", "model.name"), ("optimizer_name", "optim.name")):
        if saved.get(key) is not None and saved[key] != current[key]:
            return f"{what} changed ({saved[key]!r} in the checkpoint, {current[key]!r} now)"
    shapes, now = saved.get("parameter_shapes"), current["parameter_shapes"]
    if shapes is not None:
        missing, added = sorted(set(shapes) - set(now)), sorted(set(now) - set(shapes))
        if missing or added:
            return (f"the model's parameters changed (only in the checkpoint: {_few(missing)}; "
                    f"only in this model: {_few(added)})")
        changed = [f"{name} {shapes[name]} -> {now[name]}" for name in now if list(shapes[name]) != now[name]]
        if changed:
            return f"parameter shapes changed: {_few(changed)}"
    groups = saved.get("param_group_sizes")
    if groups is not None and list(groups) != current["param_group_sizes"]:
        return (f"the optimiser's parameter groups changed (sizes {list(groups)} in the checkpoint, "
                f"{current['param_group_sizes']} now)")
    return None


def _few(items: list[str]) -> str:
    return ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "") if items else "none"


def load_error(error: Exception, *, path: Path) -> ConfigError:
    """A one-line error for a checkpoint whose state does not load into this run (old checkpoints
    without the facts above, or anything they do not cover)."""
    detail = (str(error).strip().splitlines() or [""])[0][:300]
    return ConfigError(f"cannot resume from {path}: its model / optimiser state does not fit this run "
                       f"({type(error).__name__}: {detail}); {_FIX}")


def check_strategy_matches(*, strategy: str, world_size: int, saved_strategy: str, saved_world_size: int,
                           path: Path) -> None:
    """ZeRO shards its state by rank: such a checkpoint resumes only with the same strategy and
    process count (none / DDP checkpoints hold full state and resume under any). FSDP checkpoints
    (sharded or full) resume under FSDP with any process count (torch.distributed.checkpoint
    re-shards on load), and under nothing else (their optimiser state is keyed by names)."""
    fsdp = strategy == "fsdp" or saved_strategy == "fsdp"
    if fsdp and saved_strategy != strategy:
        raise ConfigError(
            f"cannot resume from {path}: it was written by {saved_strategy} and this run uses {strategy}; FSDP "
            "checkpoints resume only under dist.strategy=fsdp and FSDP runs only from FSDP checkpoints. Export it "
            "with `cvdist export` and start a new run from the weights instead.")
    zero = strategy.startswith("zero") or saved_strategy.startswith("zero")
    if zero and (saved_strategy != strategy or saved_world_size != world_size):
        raise ConfigError(
            f"cannot resume from {path}: it was written by {saved_strategy} with {saved_world_size} processes; a ZeRO "
            f"checkpoint resumes only with the same strategy and process count (now {strategy}, {world_size}). "
            "Export it with `cvdist export` and start a new run from the weights instead."
        )
