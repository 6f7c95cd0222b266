"""Optimisers (SGD, AdamW, LARS) and per-step learning-rate schedules.

Schedules are pure functions of the optimiser step, so the schedule's state in a checkpoint is
just the step: resuming reproduces the same learning rates exactly.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as used for large-batch SSL (SimCLR, BYOL).

    SGD with momentum whose per-tensor update is scaled by the trust ratio
    ``eta * ||w|| / (||g|| + weight_decay * ||w||)``. Biases and norm parameters (1-d tensors)
    get neither weight decay nor adaptation, as in the SimCLR reference implementation.
    """

    def __init__(self, params, *, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if param.ndim > 1:
                    grad = grad.add(param, alpha=group["weight_decay"])
                    param_norm, grad_norm = torch.norm(param), torch.norm(grad)
                    trust = torch.where(
                        (param_norm > 0) & (grad_norm > 0),
                        group["trust_coefficient"] * param_norm / grad_norm,
                        torch.ones_like(param_norm),
                    )
                    grad = grad.mul(trust)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(grad).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(
    parameters: Iterable[nn.Parameter] | Sequence[dict],
    *,
    name: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    betas: Sequence[float],
    lars_trust_coefficient: float,
) -> torch.optim.Optimizer:
    """The optimiser named ``name`` (``sgd``, ``adamw``, ``lars``) over ``parameters``."""
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    if name == "lars":
        return LARS(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    trust_coefficient=lars_trust_coefficient)
    raise ValueError(f"optim.name={name!r} is not one of 'sgd', 'adamw', 'lars'")


def lr_multiplier(
    step: int,
    *,
    total_steps: int,
    name: str,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    pct_start: float = 0.3,
) -> float:
    """Factor applied to the peak learning rate at optimiser step ``step`` (0-based).

    ``constant``, ``cosine`` (to ``min_lr_ratio``) and ``step`` (times ``gamma`` at each
    milestone) start with a linear warmup of ``warmup_steps``; ``onecycle`` is a cosine ramp
    up for ``pct_start`` of the run from 1/25 of the peak, then cosine down to 1/1e4 of that
    (PyTorch's OneCycleLR defaults).
    """
    total_steps = max(total_steps, 1)
    if name == "onecycle":
        # Same phase boundaries as torch.optim.lr_scheduler.OneCycleLR (two phases, cosine).
        up_end = max(pct_start * total_steps - 1, 1.0)
        start, end = 1.0 / 25.0, 1.0 / 25.0 / 1e4
        if step <= up_end:
            return _cosine_between(start, 1.0, step / up_end)
        return _cosine_between(1.0, end, min((step - up_end) / max(total_steps - 1 - up_end, 1.0), 1.0))
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "constant":
        return 1.0
    if name == "cosine":
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return _cosine_between(1.0, min_lr_ratio, min(progress, 1.0))
    if name == "step":
        return gamma ** sum(1 for milestone in milestones if step >= milestone)
    raise ValueError(f"schedule.name={name!r} is not one of 'constant', 'cosine', 'step', 'onecycle'")


def _cosine_between(start: float, end: float, progress: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, *, base_lrs: Sequence[float], multiplier: float) -> None:
    """Set each parameter group's LR to its base LR times ``multiplier``."""
    for group, base_lr in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base_lr * multiplier


def scaled_lr(base_lr: float, *, global_batch_size: int, rule: str) -> float:
    """The learning rate for ``global_batch_size`` under ``rule``: ``none`` keeps ``base_lr``,
    ``linear`` is ``base_lr * global_batch_size / 256`` (Goyal et al.; SimCLR, BYOL, Barlow Twins
    state their base LRs for 256 images)."""
    if rule == "none":
        return base_lr
    if rule == "linear":
        return base_lr * global_batch_size / 256
    raise ValueError(f"learning-rate scaling rule {rule!r} is not one of 'none', 'linear'")
