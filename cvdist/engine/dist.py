"""Process-group setup: the one place that reads launcher environments and picks the device.

Supported launchers, all producing the same ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` /
``MASTER_ADDR`` / ``MASTER_PORT`` environment before any process group is created:

- ``python recipe.py``: one process, no variables needed.
- ``torchrun`` and ``accelerate launch``: they set the variables themselves.
- ``srun python recipe.py`` (one task per process): derived from ``SLURM_PROCID``,
  ``SLURM_NTASKS``, ``SLURM_LOCALID`` and ``SLURM_JOB_NODELIST``.
- ``srun torchrun ...``: torchrun's variables win over SLURM's.

After initialisation, rank and world size are read back from ``torch.distributed`` itself
(:func:`current_env`) and checked against the launcher's, so that nothing downstream trusts a
wrapper's idea of the world (accelerate's DeepSpeed path on a CPU reports a world of 1 while
torch.distributed has 2, see the platform notes).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as torch_dist

_TORCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class LaunchError(RuntimeError):
    """The launcher environment is incomplete or inconsistent."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job; the single source of rank and world size."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def select_device(local_rank: int) -> torch.device:
    """The compute device: this process's GPU when CUDA is present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def local_device() -> torch.device:
    """This process's compute device (:func:`select_device` of ``LOCAL_RANK``), made the current
    CUDA device on GPUs so that collectives and new tensors land on it."""
    device = select_device(int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def collective_backend(device: torch.device) -> str:
    """NCCL for GPUs, gloo for CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def first_slurm_host(nodelist: str) -> str:
    """First host name of a SLURM node list: ``gpu-[001-004,007],cpu1`` -> ``gpu-001``."""
    match = re.match(r"^([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise LaunchError(f"cannot parse SLURM_JOB_NODELIST={nodelist!r}; set MASTER_ADDR explicitly")
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def resolve_launch_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The torch launch variables for this process, derived from ``environ`` (not modified).

    Returns an empty dict for a single process. Raises LaunchError for a half-set environment.
    """
    present = [name for name in _TORCH_VARS if name in environ]
    if present:
        missing = [name for name in ("RANK", "WORLD_SIZE") if name not in environ]
        world = int(environ.get("WORLD_SIZE", "1"))
        if world > 1:
            missing += [n for n in ("MASTER_ADDR", "MASTER_PORT") if n not in environ]
        if missing:
            raise LaunchError(
                f"launch environment is half set: {', '.join(present)} present but "
                f"{', '.join(missing)} missing; start with torchrun / accelerate launch / srun, "
                "or unset them to run one process"
            )
        resolved = {name: environ[name] for name in _TORCH_VARS if name in environ}
        resolved.setdefault("LOCAL_RANK", environ.get("LOCAL_RANK", environ["RANK"]))
        return resolved
    # SLURM_STEP_NUM_TASKS is set by srun, not in an sbatch script itself: only then is SLURM
    # the launcher of one task per process.
    num_tasks = int(environ.get("SLURM_STEP_NUM_TASKS", "1"))
    if "SLURM_PROCID" in environ and num_tasks > 1:
        job_id = int(environ.get("SLURM_JOB_ID", "0"))
        nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST", "")
        return {
            "RANK": environ["SLURM_PROCID"],
            "WORLD_SIZE": str(num_tasks),
            "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
            "MASTER_ADDR": environ.get("MASTER_ADDR") or first_slurm_host(nodelist),
            "MASTER_PORT": environ.get("MASTER_PORT") or str(20000 + job_id % 20000),
        }
    return {}


def prepare_launch_env() -> dict[str, str]:
    """Fill ``os.environ`` with the torch launch variables (see module doc); return them."""
    resolved = resolve_launch_env(os.environ)
    os.environ.update(resolved)
    return resolved


def current_env(*, expected_world_size: int) -> DistEnv:
    """Rank and world size from the initialised process group (or a single process).

    ``expected_world_size`` is what the launcher said; a mismatch means a wrapper built the
    wrong world, which would silently duplicate data and writes, so it is an error.
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        rank, world_size = torch_dist.get_rank(), torch_dist.get_world_size()
    else:
        rank, world_size = 0, 1
    if world_size != expected_world_size:
        raise LaunchError(
            f"the process group has {world_size} processes but the launcher started "
            f"{expected_world_size}; check the launch command and accelerate config"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=select_device(local_rank))


def launched_world_size() -> int:
    """World size announced by the launcher (1 without one)."""
    return int(resolve_launch_env(os.environ).get("WORLD_SIZE", "1"))


_FSDP_STATE_DICT_TYPES = {"SHARDED_STATE_DICT": "sharded", "FULL_STATE_DICT": "full"}


def _fsdp_launch_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """``dist.*`` values of an accelerate config with ``distributed_type: FSDP`` (FSDP2 only)."""
    if environ.get("FSDP_VERSION", "1") != "2":
        raise LaunchError(f"the accelerate config asks for FSDP version {environ.get('FSDP_VERSION', '1')}; cvdist "
                          "runs FSDP2 (fully_shard): set fsdp_config.fsdp_version: 2 (see launch/accelerate/fsdp.yaml)")
    settings: dict[str, Any] = {"strategy": "fsdp"}
    if "FSDP_RESHARD_AFTER_FORWARD" in environ:
        settings["fsdp_reshard_after_forward"] = environ["FSDP_RESHARD_AFTER_FORWARD"].lower() == "true"
    if "FSDP_OFFLOAD_PARAMS" in environ:
        settings["fsdp_cpu_offload"] = environ["FSDP_OFFLOAD_PARAMS"].lower() == "true"
    state_dict_type = environ.get("FSDP_STATE_DICT_TYPE", "SHARDED_STATE_DICT")
    if state_dict_type not in _FSDP_STATE_DICT_TYPES:
        raise LaunchError(f"fsdp_state_dict_type {state_dict_type} is not one cvdist writes; use SHARDED_STATE_DICT "
                          "or FULL_STATE_DICT")
    settings["fsdp_checkpoint"] = _FSDP_STATE_DICT_TYPES[state_dict_type]
    return settings


def accelerate_launch_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """``dist.*`` values an ``accelerate launch --config_file F`` asked for, from the variables it
    sets: a DeepSpeed config file gives ``strategy`` zeroN (and ``deepspeed_config`` when it
    names a JSON file), an FSDP config (version 2) gives ``strategy`` fsdp and the ``fsdp_*``
    options, ``mixed_precision: bf16/fp16`` gives ``precision``. Empty without accelerate.

    cvdist runs ZeRO through ``deepspeed.initialize`` and FSDP2 through ``fully_shard`` itself
    (see engine/backends.py, engine/fsdp.py), so these variables are read here instead of by
    Accelerate's plugins.
    """
    from cvdist.engine.deepspeed_config import zero_stage_of

    settings: dict[str, Any] = {}
    if environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        settings.update(_fsdp_launch_settings(environ))
    if environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        json_file = environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
        stage = environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or (str(zero_stage_of(json_file) or "") if json_file else "")
        if stage not in ("1", "2", "3"):
            raise LaunchError(f"the accelerate config asks for DeepSpeed with ZeRO stage {stage or '(none)'}; cvdist "
                              "runs ZeRO stages 1, 2 and 3: set deepspeed_config.zero_stage (see launch/accelerate/)")
        settings["strategy"] = f"zero{stage}"
        if json_file:
            settings["deepspeed_config"] = json_file
    precision = environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if precision in ("bf16", "fp16"):
        settings["precision"] = precision
    return settings


def apply_accelerate_launch_settings(dist_config: Any, environ: Mapping[str, str]) -> None:
    """Set ``dist_config`` fields left at their defaults from :func:`accelerate_launch_settings`;
    a field the user set to something else is a conflict, reported rather than guessed."""
    defaults = {"strategy": "auto", "precision": "auto", "deepspeed_config": "", "fsdp_reshard_after_forward": True,
                "fsdp_cpu_offload": False, "fsdp_checkpoint": "sharded"}
    for field, wanted in accelerate_launch_settings(environ).items():
        current = getattr(dist_config, field)
        if current == defaults[field]:
            setattr(dist_config, field, wanted)
        elif current != wanted:
            raise LaunchError(f"the accelerate config says {field} {wanted!r} but dist.{field}={current!r}; "
                              f"remove the dist.{field} override or use another accelerate config")


def move_batch(batch: Any, *, device: torch.device, float_dtype: torch.dtype | None = None,
               channels_last: bool = False) -> Any:
    """``batch`` (a tensor, or lists / tuples / dicts of them) on ``device``; floating tensors cast
    to ``float_dtype`` when given (DeepSpeed's half precision) and 4-d floating ones in channels-last
    layout when asked. Every backend moves its batches through here."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if float_dtype is not None and batch.is_floating_point():
            batch = batch.to(float_dtype)
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_batch(item, device=device, float_dtype=float_dtype, channels_last=channels_last)
                           for item in batch)
    if isinstance(batch, dict):
        return {key: move_batch(value, device=device, float_dtype=float_dtype, channels_last=channels_last)
                for key, value in batch.items()}
    return batch


def set_single_process_rendezvous() -> None:
    """For a run started without a launcher (plain ``python``): the environment of a 1-process
    group on a free local port, which DeepSpeed and FSDP need even for one process. A launched
    run (its variables already set) is left alone."""
    if launched_world_size() <= 1 and "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
