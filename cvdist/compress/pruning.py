"""Pruning with ``torch.nn.utils.prune``, to a target sparsity, optionally in steps with
fine-tuning between them, made permanent at the end.

Methods (``PRUNE_METHODS``):

* ``l1_unstructured``: every conv / linear weight loses the same fraction of its smallest-|w| entries;
* ``global_l1``: the smallest-|w| entries over all those weights together (layers end up with
  different sparsities; the total is the target);
* ``ln_structured``: whole output channels of every conv weight, the ones of smallest L-n norm
  (``n`` = 1, 2, ...), zeroed. Linear layers (the classifier head) are left alone: pruning the
  head's output rows would delete classes. The zeroed channels stay in the tensors (same shapes, so the state_dict loads
  into the original architecture); shrinking the layers is a separate export step.

The sparsity target counts the weights the method prunes ("prunable weights", see
:func:`prunable_weights`); biases and normalisation layers are never pruned. Iterative pruning
reaches ``s_k = target * k / steps`` after step ``k``: PyTorch applies a new amount to the
entries still unpruned, so step ``k`` asks for ``(s_k - s_{k-1}) / (1 - s_{k-1})``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn
from torch.nn.utils import prune

PRUNE_METHODS = ("l1_unstructured", "global_l1", "ln_structured")


def prunable_weights(model: nn.Module, *, method: str) -> list[tuple[str, nn.Module]]:
    """``(module name, module)`` whose ``weight`` ``method`` prunes: conv and linear layers; for
    ``ln_structured`` conv layers only."""
    if method not in PRUNE_METHODS:
        raise ValueError(f"prune method {method!r} is not one of {', '.join(PRUNE_METHODS)}")
    kinds = (nn.Conv2d,) if method == "ln_structured" else (nn.Conv2d, nn.Linear)
    chosen = [(name, module) for name, module in model.named_modules()
              if isinstance(module, kinds)]
    if not chosen:
        raise ValueError(f"the model has no layer that {method} can prune (it needs "
                         f"{'conv' if method == 'ln_structured' else 'conv or linear'} layers)")
    return chosen


def _prune_once(layers: list[tuple[str, nn.Module]], *, method: str, amount: float, norm: int) -> None:
    if amount <= 0:
        return
    if method == "global_l1":
        prune.global_unstructured([(module, "weight") for _, module in layers],
                                  pruning_method=prune.L1Unstructured, amount=amount)
    elif method == "l1_unstructured":
        for _, module in layers:
            prune.l1_unstructured(module, "weight", amount=amount)
    else:
        for _, module in layers:
            prune.ln_structured(module, "weight", amount=amount, n=norm, dim=0)


def step_amounts(target: float, steps: int) -> list[float]:
    """The amount to ask PyTorch for at each of ``steps`` steps so that the cumulative sparsity
    after step k is ``target * k / steps``."""
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity {target} must lie in [0, 1)")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    amounts, done = [], 0.0
    for k in range(1, steps + 1):
        goal = target * k / steps
        amounts.append((goal - done) / (1.0 - done))
        done = goal
    return amounts


def prune_model(model: nn.Module, *, method: str, sparsity: float, steps: int = 1, norm: int = 1,
                fine_tune: Optional[Callable[[nn.Module, int], None]] = None) -> nn.Module:
    """Prune ``model`` in place to ``sparsity`` of its prunable weights in ``steps`` steps,
    calling ``fine_tune(model, step)`` after every step (the masks are in place while it
    trains, so pruned weights stay zero), then make the pruning permanent. Returns ``model``."""
    layers = prunable_weights(model, method=method)
    for step, amount in enumerate(step_amounts(sparsity, steps), start=1):
        _prune_once(layers, method=method, amount=amount, norm=norm)
        if fine_tune is not None:
            fine_tune(model, step)
    make_permanent(model)
    return model


def make_permanent(model: nn.Module) -> None:
    """Fold every pruning mask into its weight (``prune.remove``): plain ``weight`` parameters,
    no ``*_orig`` / ``*_mask`` entries or hooks left."""
    for module in model.modules():
        for name in [hook._tensor_name for hook in module._forward_pre_hooks.values()
                     if isinstance(hook, prune.BasePruningMethod)]:
            prune.remove(module, name)


def sparsity_report(model: nn.Module, *, method: str = "l1_unstructured") -> dict:
    """The measured sparsity: per prunable layer (``layer``, ``params``, ``zeros``, ``sparsity``),
    over all prunable weights (``prunable_sparsity``) and over every parameter (``total_sparsity``)."""
    layers, rows, zeros, count = prunable_weights(model, method=method), [], 0, 0
    for name, module in layers:
        weight = module.weight.detach()
        layer_zeros = int((weight == 0).sum())
        rows.append({"layer": name, "params": weight.numel(), "zeros": layer_zeros,
                     "sparsity": layer_zeros / weight.numel()})
        zeros, count = zeros + layer_zeros, count + weight.numel()
    all_params = [p.detach() for p in model.parameters()]
    total = sum(p.numel() for p in all_params)
    total_zeros = sum(int((p == 0).sum()) for p in all_params)
    return {"layers": rows, "prunable_sparsity": zeros / max(count, 1),
            "total_sparsity": total_zeros / max(total, 1)}


def format_sparsity(report: dict) -> str:
    """The per-layer sparsity report as a Markdown table."""
    lines = ["| layer | weights | zeros | sparsity |", "| --- | ---: | ---: | ---: |"]
    for row in report["layers"]:
        lines.append(f"| {row['layer']} | {row['params']} | {row['zeros']} | {100 * row['sparsity']:.1f} % |")
    lines.append(f"| **prunable total** | | | {100 * report['prunable_sparsity']:.1f} % |")
    lines.append(f"| all parameters | | | {100 * report['total_sparsity']:.1f} % |")
    return "\n".join(lines)


def zero_channel_fraction(weight: torch.Tensor) -> float:
    """Fraction of output channels (dim 0) of ``weight`` that are entirely zero."""
    return float((weight.detach().flatten(1).abs().sum(1) == 0).float().mean())
