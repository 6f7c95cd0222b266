"""Decoding: a raw shard sample (its members' bytes) -> image tensor, label and extra labels.

:class:`Decoder` applies any ``build_transform`` pipeline (augmentation presets included);
:mod:`cvdist.data.fast_decode` is the faster decoder for the ``none`` / ``flip`` presets, with the
same outputs. Both split the final float conversion and normalisation off (:class:`BatchNormalise`)
so that DataLoader workers send uint8 batches and the main process normalises whole batches.
Only image members and the ``.cls`` / ``.json`` labels are ever read here.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from PIL import Image

from cvdist.data.tar_samples import IMAGE_EXTENSIONS


def unpack_sample(sample: dict, extra_label_keys: Sequence[str]) -> tuple[bytes, int, dict[str, int]]:
    """The image bytes, the ``.cls`` label and the requested ``.json`` labels of a raw sample;
    ValueError (a corrupt sample) when one is missing or malformed."""
    image_bytes = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
    if image_bytes is None:
        raise ValueError(f"sample {sample['__key__']} has no image member")
    if "cls" not in sample:
        raise ValueError(f"sample {sample['__key__']} has no .cls label")
    label = int(sample["cls"])
    extras: dict[str, int] = {}
    if extra_label_keys:
        parsed = json.loads(sample["json"]) if "json" in sample else {}
        extras = {key: int(parsed[key]) for key in extra_label_keys}
    return image_bytes, label, extras


class BatchNormalise:
    """uint8 ``B x C x H x W`` -> normalised float32, with the kernels of the per-image transform
    (``to_dtype(float32, scale=True)`` then ``normalize``), so every value equals the per-image
    path's bit for bit (both are element-wise float32 operations)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        return F.normalize(F.to_dtype(images, torch.float32, scale=True), self.mean, self.std, inplace=True)


def split_normalisation(transform: Any) -> Optional[tuple[Any, BatchNormalise]]:
    """``(uint8 part, BatchNormalise)`` of a ``build_transform`` Compose that ends with
    ``ToDtype(float32, scale=True), Normalize, ToPureTensor``; None for any other transform."""
    from torchvision.transforms import v2

    ops = getattr(transform, "transforms", None)
    if not isinstance(transform, v2.Compose) or not ops or len(ops) < 3:
        return None
    to_dtype, normalise, pure = ops[-3:]
    if not (isinstance(to_dtype, v2.ToDtype) and to_dtype.dtype == torch.float32 and to_dtype.scale
            and isinstance(normalise, v2.Normalize) and isinstance(pure, v2.ToPureTensor)):
        return None
    return v2.Compose([*ops[:-3], pure]), BatchNormalise(normalise.mean, normalise.std)


@dataclass
class Decoder:
    """Bytes -> (image tensor(s), label, extra labels); picklable for DataLoader workers.

    Where the transform ends with the float conversion and normalisation (every
    ``build_transform`` preset), :meth:`decode_pixels` stops before them and :attr:`normaliser`
    does them per batch: the pipeline's workers then send uint8 batches (a quarter of the bytes
    of float32 ones between processes) and the main process normalises them, to identical values.
    """

    transform: Callable[[Image.Image], Any]
    extra_label_keys: Sequence[str] = ()

    def __post_init__(self):
        split = split_normalisation(self.transform)
        self.pixel_transform, self.normaliser = split if split else (None, None)

    def __call__(self, sample: dict) -> tuple[Any, int, dict[str, int], str]:
        return self._decode(sample, self.transform)

    def decode_pixels(self, sample: dict) -> tuple[Any, int, dict[str, int], str]:
        """As ``__call__`` without the final normalisation (uint8); needs :attr:`normaliser`."""
        return self._decode(sample, self.pixel_transform)

    def _decode(self, sample: dict, transform: Callable) -> tuple[Any, int, dict[str, int], str]:
        image_bytes, label, extras = unpack_sample(sample, self.extra_label_keys)
        with Image.open(io.BytesIO(image_bytes)) as image:
            image.load()
            return transform(image), label, extras, str(sample["__key__"])
