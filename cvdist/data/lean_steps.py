"""Per-sample transform steps without torchvision v2's per-call machinery, same outputs.

A v2 transform called on one image flattens its inputs into a pytree, checks them, decides which
need transforming, then dispatches to the kernel by input type: ~50-100 us of Python per step,
measured at ~0.3 ms per photo for ``RandomResizedCrop`` + ``RandomHorizontalFlip`` +
``ToPureTensor`` (10-15 % of a 400 x 500 JPEG's whole decode-and-augment time). For the steps
that :func:`lean_steps` knows, it calls the same image kernel directly, after the same random
draws in the same order (``make_params`` itself, or ``torch.rand(1) >= p`` as v2's random-apply
does), so the pipeline's per-sample seeding, exact resume and every pixel stay as they were.

It applies only to steps that take a plain image tensor and end with ``ToPureTensor`` (every
``build_transform`` pipeline once ``PILToImage`` has run): the image is unwrapped to a plain
tensor first, which v2 treats exactly as an image, and any step it does not know runs as itself.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional, Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


def _as_plain(image: Any) -> torch.Tensor:
    return image.as_subclass(torch.Tensor)


def _random_apply(image: torch.Tensor, *, probability: float, kernel: Callable) -> torch.Tensor:
    # The draw and comparison of v2's _RandomApplyTransform.forward.
    if torch.rand(1) >= probability:
        return image
    return kernel(image)


def _resized_crop(image: torch.Tensor, *, crop: v2.RandomResizedCrop) -> torch.Tensor:
    params = crop.make_params([image])  # the transform's own draws
    return F.resized_crop_image(image, **params, size=crop.size, interpolation=crop.interpolation,
                                antialias=crop.antialias)


def lean_step(step: Callable) -> Callable:
    """``step``'s lean equivalent on plain image tensors, or ``step`` itself where none is known.
    Exact types only: a subclass may change what the step does."""
    kind = type(step)
    if kind is v2.RandomHorizontalFlip:
        return partial(_random_apply, probability=step.p, kernel=F.horizontal_flip_image)
    if kind is v2.RandomVerticalFlip:
        return partial(_random_apply, probability=step.p, kernel=F.vertical_flip_image)
    if kind is v2.RandomResizedCrop:
        return partial(_resized_crop, crop=step)
    if kind is v2.ToPureTensor:
        return _as_plain
    return step


def lean_steps(steps: Sequence[Callable]) -> Optional[list[Callable]]:
    """The steps that follow ``PILToImage`` in a Compose, made lean (see the module docstring),
    starting with the unwrap to a plain tensor; None unless the last step is ``ToPureTensor``
    (the output type would differ from the Compose's otherwise)."""
    if not steps or type(steps[-1]) is not v2.ToPureTensor:
        return None
    return [_as_plain, *(lean_step(step) for step in steps)]
