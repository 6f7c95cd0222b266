"""Reconstruction losses and the rotation-prediction pretext task (pure functions)."""

from __future__ import annotations

from typing import Optional

import torch
from torch.nn import functional as F


def reconstruction_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every pixel of the batch (fp32, whatever the autocast dtype)."""
    return F.mse_loss(output.float(), target.float())


def per_sample_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample (B,), for sums over valid samples in evaluation."""
    return (output.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               reduction: str = "mean") -> torch.Tensor:
    """MAE loss: per-patch MSE (``pred``, ``target``: (B, N, P)) averaged over the masked patches
    only (``mask`` (B, N), 1 = masked); visible patches count for nothing.

    ``reduction="mean"`` averages over all masked patches of the batch; ``"none"`` gives each
    sample's mean over its own masked patches (B,)."""
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    mask = mask.float()
    if reduction == "none":
        return (per_patch * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    if reduction != "mean":
        raise ValueError(f"reduction={reduction!r} must be 'mean' or 'none'")
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


NUM_ROTATIONS = 4


def rotation_batch(images: torch.Tensor, *, generator: Optional[torch.Generator] = None,
                   rotations: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation prediction (Gidaris et al. 2018): each image rotated by ``k * 90`` degrees
    counter-clockwise with its own ``k`` in {0, 1, 2, 3} (drawn uniformly, or ``rotations``);
    returns ``(rotated images, k as int64 labels)``. Images must be square."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation prediction needs square images, got {tuple(images.shape[-2:])}")
    if rotations is None:
        rotations = torch.randint(NUM_ROTATIONS, (images.shape[0],), generator=generator,
                                  device=generator.device if generator is not None else "cpu")
    rotations = rotations.to(images.device, torch.long)
    rotated = images.clone()
    for k in range(1, NUM_ROTATIONS):
        chosen = rotations == k
        if chosen.any():
            rotated[chosen] = torch.rot90(images[chosen], k, dims=(-2, -1))
    return rotated, rotations


def rotation_loss(logits: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the 4-way rotation classifier."""
    return F.cross_entropy(logits.float(), rotations)
