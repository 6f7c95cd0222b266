"""Two augmented views of a decoded batch, drawn on the batch's device (for contrastive SSL).

Each view of each image is a random resized crop (area fraction in ``scale``, aspect ratio in
``ratio``, log-uniform) resampled to the input size with bilinear interpolation, a horizontal
flip with probability 1/2, and optionally a vertical flip (probability 1/2), a rotation about the
crop centre (uniform in +-``rotation_degrees``; the corners are filled by reflection) and
brightness / contrast jitter. Crop, flips and rotation are one ``affine_grid`` + ``grid_sample``
over the whole batch, so the views cost one pass on the device.

The random draws come from a CPU ``torch.Generator`` seeded with ``(seed, rank, index)``, where
``index`` counts the batches this rank has augmented: a resumed run that restores the count draws
the same views as the run it continues, on any device.

Multi-crop (:func:`multi_crop_views`, DINO): the two global views exactly as :func:`two_views`
draws them, then ``num_local`` smaller crops from the same generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class ViewAugmentation:
    """Settings of :func:`two_views`."""

    scale: tuple[float, float] = (0.2, 1.0)
    """Crop area as a fraction of the image (RandomResizedCrop's ``scale``)."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Crop aspect ratio range (log-uniform)."""
    flip: bool = True
    """Horizontal flip with probability 1/2."""
    vflip: bool = False
    """Vertical flip with probability 1/2."""
    rotation_degrees: float = 0.0
    """Rotation about the crop centre by an angle uniform in ``[-r, r]`` degrees (0 = off)."""
    brightness: float = 0.0
    """Multiply pixel values by a factor in ``[1 - b, 1 + b]`` (0 = off)."""
    contrast: float = 0.0
    """Blend with the image mean by a factor in ``[1 - c, 1 + c]`` (0 = off)."""

    def __post_init__(self):
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"view scale={self.scale} must satisfy 0 < min <= max <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"view ratio={self.ratio} must satisfy 0 < min <= max")
        if not 0 <= self.rotation_degrees <= 180:
            raise ValueError(f"rotation_degrees={self.rotation_degrees} must lie in [0, 180]")
        if not (0 <= self.brightness < 1 and 0 <= self.contrast < 1):
            raise ValueError(f"brightness={self.brightness} and contrast={self.contrast} must lie in [0, 1)")


def view_generator(*, seed: int, rank: int, index: int) -> torch.Generator:
    """The CPU generator for batch ``index`` of ``rank`` (distinct streams per rank and batch)."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + rank) * 1_000_003 + index) % (2 ** 63))


def _crop_boxes(count: int, aug: ViewAugmentation, generator: torch.Generator) -> torch.Tensor:
    """``(count, 4)`` crops as (centre x, centre y, width, height), fractions of the image side."""
    uniform = torch.rand(count, 4, generator=generator, dtype=torch.float64)
    area = aug.scale[0] + (aug.scale[1] - aug.scale[0]) * uniform[:, 0]
    log_lo, log_hi = math.log(aug.ratio[0]), math.log(aug.ratio[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * uniform[:, 1])
    width = torch.sqrt(area * ratio).clamp(max=1.0)
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    # centre such that the crop lies inside the image
    centre_x = width / 2 + (1 - width) * uniform[:, 2]
    centre_y = height / 2 + (1 - height) * uniform[:, 3]
    return torch.stack([centre_x, centre_y, width, height], dim=1)


def _jitter(images: torch.Tensor, aug: ViewAugmentation, generator: torch.Generator, *,
            mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    count = images.shape[0]
    factors = torch.rand(count, 2, generator=generator) * 2 - 1  # drawn even when off: same stream either way
    if not (aug.brightness or aug.contrast):
        return images
    pixels = images * std + mean
    factors = factors.to(images.device)
    if aug.brightness:
        pixels = pixels * (1 + aug.brightness * factors[:, :1]).view(count, 1, 1, 1)
    if aug.contrast:
        grey = pixels.mean(dim=(1, 2, 3), keepdim=True)
        pixels = grey + (pixels - grey) * (1 + aug.contrast * factors[:, 1:]).view(count, 1, 1, 1)
    return (pixels.clamp(0, 1) - mean) / std


def _signs(count: int, enabled: bool, generator: torch.Generator) -> torch.Tensor:
    """-1 (flip) with probability 1/2 where ``enabled``, else +1; nothing is drawn when off, so
    enabling one option does not change the draws of a configuration without it."""
    if not enabled:
        return torch.ones(count, dtype=torch.float64)
    return torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0).double()


def _view_transforms(count: int, boxes: torch.Tensor, aug: ViewAugmentation,
                     generator: torch.Generator) -> torch.Tensor:
    """``(count, 2, 3)`` affine maps for ``affine_grid``: output coordinates in [-1, 1] to input
    coordinates. Scale by the crop size (a flip negates that axis), rotate, shift to the crop
    centre: ``input = centre + R(angle) @ diag(sx * width, sy * height) @ output``."""
    scale_x = boxes[:, 2] * _signs(count, aug.flip, generator)
    scale_y = boxes[:, 3] * _signs(count, aug.vflip, generator)
    angle = torch.zeros(count, dtype=torch.float64)
    if aug.rotation_degrees:
        angle = (torch.rand(count, generator=generator, dtype=torch.float64) * 2 - 1) * math.radians(aug.rotation_degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(count, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = cos * scale_x, -sin * scale_y
    theta[:, 1, 0], theta[:, 1, 1] = sin * scale_x, cos * scale_y
    theta[:, 0, 2] = boxes[:, 0] * 2 - 1
    theta[:, 1, 2] = boxes[:, 1] * 2 - 1
    return theta


def augment_view(images: torch.Tensor, aug: ViewAugmentation, generator: torch.Generator, *,
                 mean: list[float], std: list[float], size: Optional[int] = None) -> torch.Tensor:
    """One augmented view of a normalised batch ``(B, C, H, W)`` (same device; ``size`` x ``size``
    pixels, by default the input's size)."""
    count = images.shape[0]
    boxes = _crop_boxes(count, aug, generator)
    theta = _view_transforms(count, boxes, aug, generator)
    theta = theta.to(device=images.device, dtype=images.dtype)
    shape = list(images.shape) if size is None else [*images.shape[:2], size, size]
    grid = F.affine_grid(theta, shape, align_corners=False)
    views = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    channel = (1, -1, 1, 1)
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(channel)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(channel)
    return _jitter(views, aug, generator, mean=mean_t, std=std_t)


def two_views(images: torch.Tensor, aug: ViewAugmentation, *, seed: int, rank: int, index: int,
              mean: list[float], std: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented views of ``images`` for batch ``index`` of ``rank``."""
    return _global_views(images, aug, view_generator(seed=seed, rank=rank, index=index), mean=mean, std=std)


def _global_views(images: torch.Tensor, aug: ViewAugmentation, generator: torch.Generator, *, mean: list[float],
                  std: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    first = augment_view(images, aug, generator, mean=mean, std=std)
    return first, augment_view(images, aug, generator, mean=mean, std=std)


def multi_crop_views(images: torch.Tensor, aug: ViewAugmentation, local_aug: ViewAugmentation, *, num_local: int,
                     local_size: int, seed: int, rank: int, index: int, mean: list[float],
                     std: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two global views of :func:`two_views` (the same draws) and ``num_local`` local views
    per image of ``local_size`` pixels drawn with ``local_aug``, stacked view by view into one
    ``(num_local * B, C, local_size, local_size)`` tensor."""
    if num_local < 1 or local_size < 1:
        raise ValueError(f"num_local={num_local} and local_size={local_size} must be >= 1")
    generator = view_generator(seed=seed, rank=rank, index=index)
    first, second = _global_views(images, aug, generator, mean=mean, std=std)
    local = [augment_view(images, local_aug, generator, mean=mean, std=std, size=local_size) for _ in range(num_local)]
    return first, second, torch.cat(local)
