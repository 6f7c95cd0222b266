"""Activation checkpointing: a model's repeated blocks keep only their inputs in the forward pass
and recompute their activations in the backward pass (``dist.activation_checkpointing=true``).

Which blocks: residual blocks (torchvision's ``BasicBlock`` / ``Bottleneck``, cvdist's small
ResNet's), transformer encoder layers (cvdist's ViTs and MAE), and for the plain CNNs each
conv block (``Conv2d`` [+ ``BatchNorm2d``] + ``ReLU``); timm models use timm's own
``set_grad_checkpointing``. A block becomes checkpointed by switching its class to a subclass
whose ``forward`` runs the original under :func:`torch.utils.checkpoint.checkpoint`
(non-reentrant), so parameter names, ``state_dict`` keys, checkpoints and exports stay exactly
as without it (torch's ``checkpoint_wrapper`` adds a module level and rewrites the keys).

BatchNorm: the recomputation runs the block a second time in training mode, which would update
the running statistics twice per step; they are put back as they were after the recomputation,
so the weights, buffers and gradients equal a run without checkpointing.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torchvision
from torch import nn
from torch.utils.checkpoint import checkpoint

from cvdist.models.small_resnet import BasicBlock as SmallResNetBlock

BLOCK_TYPES: tuple[type[nn.Module], ...] = (
    torchvision.models.resnet.BasicBlock, torchvision.models.resnet.Bottleneck, SmallResNetBlock,
    nn.TransformerEncoderLayer,
)
_CHECKPOINTED_CLASSES: dict[type, type] = {}


@contextlib.contextmanager
def _running_stats_kept(block: nn.Module) -> Iterator[None]:
    """The BatchNorm running statistics (and batch counters) of ``block`` as they were before.

    (Switching ``track_running_stats`` off for the recomputation would change which tensors
    batch norm saves, which the checkpoint's consistency check refuses.)"""
    buffers = [b for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)


def _checkpointed_class(cls: type[nn.Module]) -> type[nn.Module]:
    """A subclass of ``cls`` whose forward is checkpointed while gradients are recorded."""
    if cls in _CHECKPOINTED_CLASSES:
        return _CHECKPOINTED_CLASSES[cls]

    class Checkpointed(cls):  # type: ignore[valid-type, misc]
        def forward(self, *args, **kwargs):
            if not (self.training and torch.is_grad_enabled()):
                return super().forward(*args, **kwargs)
            calls = 0

            def run(*inputs, **keywords):
                nonlocal calls
                calls += 1
                if calls == 1:
                    return cls.forward(self, *inputs, **keywords)
                with _running_stats_kept(self):  # the recomputation in the backward pass
                    return cls.forward(self, *inputs, **keywords)

            return checkpoint(run, *args, use_reentrant=False, **kwargs)

    Checkpointed.__name__ = Checkpointed.__qualname__ = f"Checkpointed{cls.__name__}"
    _CHECKPOINTED_CLASSES[cls] = Checkpointed
    return Checkpointed


def _is_conv_block(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and len(module) > 0 and isinstance(module[0], nn.Conv2d)


def checkpointable_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks :func:`checkpoint_blocks` would checkpoint (outermost matches only)."""
    found = [m for m in model.modules() if isinstance(m, BLOCK_TYPES)]
    if not found:  # the plain CNNs: their conv blocks
        found = [m for m in model.modules() if _is_conv_block(m)]
    inside = {id(sub) for block in found for sub in block.modules() if sub is not block}
    return [block for block in found if id(block) not in inside]


def checkpoint_blocks(model: nn.Module) -> int:
    """Checkpoint the activations of ``model``'s blocks in place; return how many (for a timm
    model, the number of modules timm marks). ValueError naming the fix when none is found."""
    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)  # a timm model: timm's own (its blocks are not torch's or ours)
        return sum(1 for m in model.modules() if getattr(m, "grad_checkpointing", False))
    blocks = checkpointable_blocks(model)
    if not blocks:
        raise ValueError(f"dist.activation_checkpointing=true: {type(model).__name__} has no block cvdist knows how "
                         "to checkpoint (residual blocks, transformer layers, conv blocks); set it to false")
    for block in blocks:
        if type(block) not in _CHECKPOINTED_CLASSES.values():
            block.__class__ = _checkpointed_class(type(block))
    return len(blocks)
