"""Augmentation presets for PIL samples from the streaming pipeline, multi-view crops, multi-scale batches.

Every transform here takes one PIL image (grey ``L`` or ``RGB``; other modes are converted) and
returns a float32 ``C x H x W`` tensor normalised by ``(x - mean) / std``, or, for the multi-view
transform, a tuple of such tensors. They are built from ``torchvision.transforms.v2`` and small
classes, never lambdas or closures, so they pickle into DataLoader worker processes.

Determinism: every random draw comes from torch's global RNG (torchvision v2 draws its
parameters with ``torch.rand`` / ``torch.randint`` / ``Tensor.uniform_``; nothing here uses
Python's ``random`` or NumPy's global RNG). Seeding torch in a worker, as the data pipeline does
per ``(seed, epoch, rank, worker)``, therefore makes the augmentations reproducible; a resumed
run that re-seeds the same way draws the same crops, flips and jitters.

Multi-scale training is batch-level (``MultiScaleBatch`` + ``resize_batch``), not a per-sample
transform: collation stacks a batch into one ``B x C x H x W`` tensor, so every image in a batch
must share one size, and a worker's per-sample transform does not know which batch its sample
will land in. The size is drawn per batch from ``(seed, epoch, batch_index)`` and the collated
batch is resized, typically on the accelerator, in the training loop.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

# Augmentation options each preset uses, with the preset's default for each. An option a preset
# does not list is rejected rather than ignored, so a config cannot silently ask for, say, a
# rotation the preset never applies.
PRESET_DEFAULTS: dict[str, dict[str, object]] = {
    "none": {},
    "flip": {"hflip": 0.5, "vflip": 0.0},
    "standard": {"hflip": 0.5, "vflip": 0.0, "crop_scale": (0.35, 1.0), "rotation_degrees": 0.0},
    "strong": {"hflip": 0.5, "vflip": 0.0, "crop_scale": (0.35, 1.0), "rotation_degrees": 15.0,
               "color_jitter": 0.4},
}


class PILToImage:
    """Convert a PIL image to a uint8 ``C x H x W`` tensor with 1 (``grey``) or 3 channels."""

    def __init__(self, grey: bool):
        self.mode = "L" if grey else "RGB"

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        if image.mode != self.mode:
            # Shards may mix grey and colour encodings; the model expects one channel count.
            image = image.convert(self.mode)
        return v2.functional.to_image(image)


class MultiViewTransform:
    """Map one PIL image to a tuple of independently augmented views (global views, then local)."""

    def __init__(self, *, grey: bool, global_view: v2.Compose, num_views: int,
                 local_view: v2.Compose | None = None, num_local_views: int = 0):
        self.to_image = PILToImage(grey)
        self.global_view, self.num_views = global_view, num_views
        self.local_view, self.num_local_views = local_view, num_local_views

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, ...]:
        # Decode/convert once; each view then draws its own random parameters from torch's RNG.
        tensor = self.to_image(image)
        views = [self.global_view(tensor) for _ in range(self.num_views)]
        views += [self.local_view(tensor) for _ in range(self.num_local_views)]
        return tuple(views)


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} must be a probability in [0, 1]")


def _check_crop_scale(name: str, scale: Sequence[float]) -> None:
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"{name}={tuple(scale)!r} must be (low, high) with 0 < low <= high <= 1")


def _check_stats(mean: Sequence[float], std: Sequence[float], grey: bool) -> None:
    channels = 1 if grey else 3
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need {channels} values each for grey={grey}, "
                         f"got mean={tuple(mean)} std={tuple(std)}")
    if any(value <= 0 for value in std):
        raise ValueError(f"std={tuple(std)} must be positive")


def _normalise(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    # ToPureTensor: downstream code (collate, models) should see plain tensors, not tv_tensors.
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std)),
            v2.ToPureTensor()]


def _resize_center(image_size: int) -> list[v2.Transform]:
    # Resize is a no-op when the shorter side already equals image_size (the common case for
    # shards written at training size), so "none" costs nothing beyond the conversion.
    return [v2.Resize(image_size), v2.CenterCrop(image_size)]


def _flips(hflip: float, vflip: float) -> list[v2.Transform]:
    ops: list[v2.Transform] = []
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(p=hflip))
    if vflip > 0:
        ops.append(v2.RandomVerticalFlip(p=vflip))
    return ops


def _color_jitter(brightness: float, saturation: float, hue: float, grey: bool) -> v2.ColorJitter:
    # Saturation and hue are undefined for one channel; brightness and contrast still apply.
    # Hue is a fraction of the colour circle, so it is capped at half a turn.
    if grey:
        return v2.ColorJitter(brightness=brightness, contrast=brightness)
    return v2.ColorJitter(brightness=brightness, contrast=brightness, saturation=saturation,
                          hue=min(hue, 0.5))


def _train_ops(options: dict, *, image_size: int, grey: bool) -> list[v2.Transform]:
    """The augmentation steps of a preset, in order: crop, flips, rotation, colour."""
    ops: list[v2.Transform] = (
        [v2.RandomResizedCrop(image_size, scale=tuple(options["crop_scale"]), antialias=True)]
        if "crop_scale" in options else _resize_center(image_size))
    ops += _flips(options.get("hflip", 0.0), options.get("vflip", 0.0))
    # Rotation after the crop: rotating the (smaller) crop is cheaper than the full image.
    if options.get("rotation_degrees", 0.0) > 0:
        ops.append(v2.RandomRotation(options["rotation_degrees"]))
    strength = options.get("color_jitter", 0.0)
    if strength > 0:
        ops.append(_color_jitter(strength, strength, strength / 4, grey))
    return ops


def preset_options(preset: str, given: dict[str, object]) -> dict[str, object]:
    """The augmentation options of ``preset`` with ``given`` (None = the preset's default) on
    top; ValueError for an unknown preset, an option the preset does not use, or a value out of
    range."""
    if preset not in PRESET_DEFAULTS:
        raise ValueError(f"preset={preset!r} is unknown; allowed presets: {', '.join(PRESET_DEFAULTS)}")
    defaults = PRESET_DEFAULTS[preset]
    for name, value in given.items():
        if value is not None and name not in defaults:
            users = [p for p, options in PRESET_DEFAULTS.items() if name in options]
            raise ValueError(f"{name}={value!r} does not apply to preset={preset!r}; "
                             f"presets that use it: {', '.join(users)}")
    options = {**defaults, **{k: v for k, v in given.items() if v is not None}}
    for name in ("hflip", "vflip"):
        if name in options:
            _check_probability(name, options[name])
    if "crop_scale" in options:
        _check_crop_scale("crop_scale", options["crop_scale"])
    for name in ("rotation_degrees", "color_jitter"):
        if options.get(name, 0.0) < 0:
            raise ValueError(f"{name}={options[name]!r} must be >= 0 (0 disables it)")
    return options


def build_transform(*, preset: str, image_size: int, mean: Sequence[float], std: Sequence[float],
                    grey: bool, train: bool, hflip: float | None = None, vflip: float | None = None,
                    rotation_degrees: float | None = None, color_jitter: float | None = None,
                    crop_scale: Sequence[float] | None = None) -> v2.Compose:
    """A picklable callable mapping a PIL image to a normalised float32 ``C x image_size x image_size``.

    ``preset`` is one of ``PRESET_DEFAULTS``: ``none`` (resize + centre crop if needed),
    ``flip`` (random flips), ``standard`` (RandomResizedCrop + flips, optional rotation), ``strong`` (crop + flips +
    rotation + colour jitter; for grey images only brightness and contrast). ``train=False``
    gives the eval transform (resize shorter side to ``image_size``, centre crop) whatever the
    preset. Options left as ``None`` take the preset's default; setting one the preset does not
    use raises ``ValueError``. ``hflip``/``vflip`` are flip probabilities, ``rotation_degrees``
    the maximum absolute angle, ``color_jitter`` the strength ``s`` (brightness, contrast,
    saturation ``s``, hue ``s/4``), ``crop_scale`` RandomResizedCrop's area range.
    ``grey`` selects 1 output channel (else 3); ``mean``/``std`` need one value per channel.
    """
    _check_positive_int("image_size", image_size)
    _check_stats(mean, std, grey)
    options = preset_options(preset, {"hflip": hflip, "vflip": vflip, "crop_scale": crop_scale,
                                       "rotation_degrees": rotation_degrees,
                                       "color_jitter": color_jitter})
    ops = _train_ops(options, image_size=image_size, grey=grey) if train else _resize_center(image_size)
    return v2.Compose([PILToImage(grey), *ops, *_normalise(mean, std)])


def _blur_kernel(size: int) -> int:
    # SimCLR's choice: a kernel about 10% of the image side, odd, at least 3.
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def _view(*, size: int, crop_scale: Sequence[float], grey: bool, hflip: float, color_jitter: float,
          jitter_p: float, grayscale_p: float, blur_p: float, mean: Sequence[float],
          std: Sequence[float]) -> v2.Compose:
    """One SimCLR-style view on a uint8 image tensor."""
    ops: list[v2.Transform] = [v2.RandomResizedCrop(size, scale=tuple(crop_scale), antialias=True)]
    ops += _flips(hflip, 0.0)
    if color_jitter > 0 and jitter_p > 0:
        s = color_jitter
        ops.append(v2.RandomApply([_color_jitter(0.8 * s, 0.8 * s, 0.2 * s, grey)], p=jitter_p))
    if not grey and grayscale_p > 0:
        ops.append(v2.RandomGrayscale(p=grayscale_p))
    if blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(_blur_kernel(size), sigma=(0.1, 2.0))], p=blur_p))
    return v2.Compose([*ops, *_normalise(mean, std)])


def build_multiview_transform(*, num_views: int = 2, image_size: int, mean: Sequence[float],
                              std: Sequence[float], grey: bool,
                              crop_scale: Sequence[float] = (0.08, 1.0), hflip: float = 0.5,
                              color_jitter: float = 0.5, jitter_p: float = 0.8,
                              grayscale_p: float = 0.2, blur_p: float = 0.0,
                              num_local_views: int = 0, local_size: int | None = None,
                              local_crop_scale: Sequence[float] = (0.05, 0.4)) -> MultiViewTransform:
    """A picklable callable mapping one PIL image to a tuple of augmented views for contrastive SSL.

    The tuple holds ``num_views`` global views of ``image_size`` then ``num_local_views`` local
    views of ``local_size`` (multi-crop, as in SwAV/DINO), each normalised float32 ``C x S x S``
    and drawn independently. Each view: RandomResizedCrop (``crop_scale``, or
    ``local_crop_scale`` for local views), horizontal flip (``hflip``), colour jitter of strength
    ``color_jitter`` (0.8s brightness/contrast/saturation, 0.2s hue) with probability
    ``jitter_p``, random grayscale (``grayscale_p``) and Gaussian blur (``blur_p``; SimCLR uses
    0.5 on ImageNet, 0 on small images). For ``grey`` inputs saturation, hue and grayscale are
    skipped. The default collate turns a batch of these tuples into a list of per-view batches.
    """
    _check_positive_int("num_views", num_views)
    _check_positive_int("image_size", image_size)
    _check_stats(mean, std, grey)
    _check_crop_scale("crop_scale", crop_scale)
    for name, value in (("hflip", hflip), ("jitter_p", jitter_p), ("grayscale_p", grayscale_p),
                        ("blur_p", blur_p)):
        _check_probability(name, value)
    if color_jitter < 0:
        raise ValueError(f"color_jitter={color_jitter!r} must be >= 0 (0 disables it)")
    common = dict(grey=grey, hflip=hflip, color_jitter=color_jitter, jitter_p=jitter_p,
                  grayscale_p=grayscale_p, blur_p=blur_p, mean=mean, std=std)
    global_view = _view(size=image_size, crop_scale=crop_scale, **common)
    local_view = None
    if num_local_views < 0:
        raise ValueError(f"num_local_views={num_local_views!r} must be >= 0")
    if num_local_views > 0:
        if local_size is None:
            raise ValueError("local_size is required when num_local_views > 0 (e.g. 96 for 224 px globals)")
        _check_positive_int("local_size", local_size)
        _check_crop_scale("local_crop_scale", local_crop_scale)
        local_view = _view(size=local_size, crop_scale=local_crop_scale, **common)
    return MultiViewTransform(grey=grey, global_view=global_view, num_views=num_views,
                              local_view=local_view, num_local_views=num_local_views)


def round_to_multiple(value: float, divisor: int) -> int:
    """``value`` rounded half-up to the nearest positive multiple of ``divisor``."""
    return max(divisor, int(math.floor(value / divisor + 0.5)) * divisor)


class MultiScaleBatch:
    """Per-batch training image size drawn from ``scales`` x ``base_size``, reproducibly.

    Sizes are rounded to a multiple of ``divisor`` (default 4, the total stride of the small
    CNNs, so every downsampling stage divides evenly; use 8 for small-stem ResNets, 32 for
    standard ones): with base 28, scales (0.5, 1.0, 1.5) give sizes (16, 28, 44) (14 and 42
    round half-up to 16 and 44). ``size_for`` depends only on ``(seed, epoch, batch_index)``:
    a resumed run picks the same sizes, and every rank picks the same size for the same step,
    so no rank waits on a larger batch. Scales above 1 upsample the base-size tensors; to train
    on real high-resolution detail, build the transforms at the largest size and use scales <= 1.
    """

    def __init__(self, scales: Sequence[float], base_size: int, seed: int, divisor: int = 4):
        if len(scales) == 0 or any(scale <= 0 for scale in scales):
            raise ValueError(f"scales={tuple(scales)!r} must be a non-empty list of positive factors")
        _check_positive_int("base_size", base_size)
        _check_positive_int("divisor", divisor)
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed={seed!r} must be a non-negative integer")
        self.scales, self.base_size, self.seed, self.divisor = tuple(scales), base_size, seed, divisor
        self.sizes = tuple(round_to_multiple(base_size * scale, divisor) for scale in self.scales)

    def size_for(self, epoch: int, batch_index: int) -> int:
        """The image size for batch ``batch_index`` (within the epoch) of ``epoch``."""
        if epoch < 0 or batch_index < 0:
            raise ValueError(f"epoch={epoch} and batch_index={batch_index} must be >= 0")
        # SeedSequence is a documented, well-mixed hash of the whole key that does not depend on
        # Python's hash() or on any global RNG; a 32-bit draw makes the modulo bias negligible.
        state = np.random.SeedSequence((self.seed, epoch, batch_index)).generate_state(1)[0]
        return self.sizes[int(state) % len(self.sizes)]


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """A collated float ``B x C x H x W`` batch resized to ``B x C x size x size`` (bilinear).

    Returns ``images`` itself when it already has that size. Antialiasing is on when shrinking
    either side, so downscaled batches do not alias fine texture.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float B x C x H x W tensor, got {images.dtype} "
                         f"with shape {tuple(images.shape)}")
    _check_positive_int("size", size)
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < height or size < width)
