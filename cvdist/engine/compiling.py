"""``dist.compile``: ``torch.compile`` of the prepared model, with the compilation time logged.

The model the strategy returns (plain, or DDP-wrapped: dynamo splits DDP's graph at its gradient
buckets) is compiled; checkpoints keep coming from the backend's plain model, so their keys carry
no ``_orig_mod.`` prefix. Compilation happens lazily, in the first forward (AOTAutograd builds the
backward graph there too), so that call is timed and reported once.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn


def compile_model(model: nn.Module, *, mode: str, log: Callable[[str], None]) -> nn.Module:
    """``torch.compile(model, mode=mode)`` whose first forward's wall time is passed to ``log``."""
    compiled = torch.compile(model, mode=None if mode == "default" else mode)
    log_first_forward(compiled, what=f"torch.compile (mode {mode})", log=log)
    return compiled


def log_first_forward(model: nn.Module, *, what: str, log: Callable[[str], None]) -> None:
    """Pass the wall time of ``model``'s first forward (where compilation happens) to ``log``, once."""
    started: list[float] = []

    def before(module, args):
        started.append(time.perf_counter())

    def after(module, args, output):
        log(f"[cvdist] {what}: first forward, compilation included, took {time.perf_counter() - started[0]:.1f} s")
        handles[0].remove()
        handles[1].remove()

    handles = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
