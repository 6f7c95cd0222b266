"""The DeepSpeed config cvdist hands to ``deepspeed.initialize``, and a user's JSON merged into it.

cvdist owns the fields that must agree with the rest of the run — batch sizes (from
``data.global_batch_size`` and ``optim.accum_steps``), precision (``dist.precision``), gradient
clipping (``optim.grad_clip_norm``), the optimiser and the LR schedule (``optim.*`` /
``schedule.*``; the same objects under every strategy) — so a user's file (``dist.deepspeed_config``,
e.g. ``launch/deepspeed/zero3_offload.json``) may repeat them only with the same value or ``"auto"``
(HF's convention for "whatever the trainer says"). Everything else in the file (offload, bucket
sizes, ``overlap_comm``, activation checkpointing, communication dtype, ...) is merged on top of
cvdist's defaults, ``zero_optimization`` key by key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cvdist.config import ConfigError

# Fields cvdist computes; a user file must leave them out, say "auto", or agree.
_OWNED_SCALARS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                  "gradient_clipping")
_REFUSED_SECTIONS = {
    "optimizer": "the optimiser comes from optim.name / optim.lr (the same object under every strategy)",
    "scheduler": "the LR schedule comes from schedule.* (cvdist sets the LR every step)",
    # DeepSpeed's "checkpoint" section changes how checkpoints load: load_universal reaches
    # torch.load(weights_only=False), writer / serialization swap the checkpoint engine.
    "checkpoint": "cvdist writes and loads checkpoints itself, weights-only (checkpoint.* in the run config)",
}


def read_user_config(path: str) -> dict[str, Any]:
    """The JSON object in ``path`` (``dist.deepspeed_config``); clear errors for a bad file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"dist.deepspeed_config={path!r} does not exist; give a DeepSpeed JSON file "
                          "(examples in launch/deepspeed/)")
    try:
        loaded = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"dist.deepspeed_config={path!r} is not valid JSON: {error}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"dist.deepspeed_config={path!r} must hold a JSON object, not {type(loaded).__name__}")
    return loaded


def zero_stage_of(path: str) -> int | None:
    """``zero_optimization.stage`` in a DeepSpeed JSON file, or None when it does not say."""
    stage = read_user_config(path).get("zero_optimization", {}).get("stage")
    return None if stage in (None, "auto") else int(stage)


def build_deepspeed_config(*, stage: int, precision: str, micro_batch_size: int, accum_steps: int, world_size: int,
                           grad_clip_norm: float, user_config: str = "") -> dict[str, Any]:
    """cvdist's DeepSpeed config for ZeRO ``stage``, with ``user_config`` (a JSON path) merged in."""
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": accum_steps,
        "train_batch_size": micro_batch_size * accum_steps * world_size,
        # DeepSpeed's default buckets (5e8 elements) are a 2 GB fp32 buffer per rank, held for
        # the whole run under ZeRO-3; 5e7 keeps communication efficient at a tenth the memory.
        "zero_optimization": {"stage": stage, "reduce_bucket_size": int(5e7), "allgather_bucket_size": int(5e7)},
        # Our optimisers (SGD, LARS, torch AdamW) are the same objects DDP uses, so every
        # strategy runs the same update rule; DeepSpeed calls them "untested" for ZeRO.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if grad_clip_norm > 0:
        config["gradient_clipping"] = grad_clip_norm
    if user_config:
        _merge_user_config(config, read_user_config(user_config), path=user_config, stage=stage)
    return config


def _merge_user_config(config: dict[str, Any], user: dict[str, Any], *, path: str, stage: int) -> None:
    where = f"dist.deepspeed_config={path!r}"
    for key, why in _REFUSED_SECTIONS.items():
        if key in user:
            raise ConfigError(f"{where} sets {key!r}; remove it: {why}")
    for key in _OWNED_SCALARS:
        if key in user and user[key] != "auto" and user[key] != config.get(key, 0.0):
            raise ConfigError(f"{where} sets {key}={user[key]!r} but this run has {config.get(key, 0.0)!r}; remove "
                              "it or write \"auto\" (batch sizes come from data.global_batch_size and "
                              "optim.accum_steps, clipping from optim.grad_clip_norm)")
    for key in ("bf16", "fp16"):
        enabled = user.get(key, {}).get("enabled", "auto")
        if enabled not in ("auto", config[key]["enabled"]):
            raise ConfigError(f"{where} sets {key}.enabled={enabled} but dist.precision resolved to "
                              f"{'bf16' if config['bf16']['enabled'] else 'fp16' if config['fp16']['enabled'] else 'fp32'}; "
                              "set dist.precision instead (or \"auto\" in the file)")
    zero = dict(user.get("zero_optimization", {}))
    if zero.get("stage", "auto") not in ("auto", stage):
        raise ConfigError(f"{where} has zero_optimization.stage={zero['stage']} but the run uses ZeRO-{stage} "
                          f"(dist.strategy); make them agree")
    zero.pop("stage", None)
    config["zero_optimization"].update({k: v for k, v in zero.items() if v != "auto"})
    for key, value in user.items():
        if key not in (*_OWNED_SCALARS, "bf16", "fp16", "zero_optimization"):
            config[key] = value
    for key in ("bf16", "fp16"):  # other half-precision options (loss scaling, ...) are the user's
        config[key].update({k: v for k, v in user.get(key, {}).items() if k != "enabled"})
