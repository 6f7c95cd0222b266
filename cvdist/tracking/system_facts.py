"""What a run ran on: versions, launcher, devices — recorded in summary.json and the W&B config,
so that two runs can be compared knowing whether their software or hardware differed."""

from __future__ import annotations

import os
import platform
import socket
from importlib import metadata
from typing import Any

import torch

PACKAGES = ("cvdist", "torch", "torchvision", "accelerate", "deepspeed", "webdataset", "wandb", "numpy")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def system_facts(*, world_size: int, strategy: str, precision: str, device_type: str) -> dict[str, Any]:
    """Versions of the stack, Python and OS, host, launcher, world size, strategy and devices."""
    facts: dict[str, Any] = {
        "world_size": world_size, "strategy": strategy, "precision": precision, "device": device_type,
        "num_nodes": int(os.environ.get("SLURM_NNODES") or os.environ.get("GROUP_WORLD_SIZE") or 1),
        "launcher": ("slurm" if "SLURM_JOB_ID" in os.environ else
                     "accelerate" if "ACCELERATE_MIXED_PRECISION" in os.environ else
                     "torchrun" if "TORCHELASTIC_RUN_ID" in os.environ else "python"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "host": socket.gethostname(), "python": platform.python_version(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "versions": {name: _version(name) for name in PACKAGES},
    }
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["gpus_per_node"] = torch.cuda.device_count()
        facts["cuda"] = torch.version.cuda
    return facts


def peak_memory(device: torch.device) -> dict[str, Any]:
    """This process's peak memory so far: on a GPU what torch allocated on it, on the CPU the
    resident high-water mark (Linux ``VmHWM``; absent elsewhere). For the run summary."""
    if device.type == "cuda":
        return {"peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
                "peak_memory_kind": "cuda max_memory_allocated"}
    try:
        status = open("/proc/self/status").read().splitlines()
    except OSError:
        return {}
    kib = next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), None)
    return {} if kib is None else {"peak_memory_mb": round(kib / 1024, 1), "peak_memory_kind": "process VmHWM"}
