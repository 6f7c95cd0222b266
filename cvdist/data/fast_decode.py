"""A faster sample decoder for the ``none`` and ``flip`` presets: PIL -> NumPy -> tensor, no v2 Compose.

:class:`cvdist.data.stream.Decoder` runs ``build_transform``'s torchvision v2 ``Compose`` on
every sample. For a 28x28 image the pixel work is a few microseconds, but the v2 machinery
(module calls, pytree flattening, tv_tensor wrapping, ``torch.as_tensor`` of mean/std in
``Normalize``) costs ~0.4 ms, two thirds of the whole pipeline's time per sample.
:class:`FastDecoder` gives the same output with a handful of NumPy operations:

1. decode with PIL and convert the mode exactly as ``PILToImage`` does (``L`` or ``RGB``);
2. draw each flip's coin with ``torch.rand(1)`` in the order, and with the comparison, that v2's
   ``RandomHorizontalFlip`` / ``RandomVerticalFlip`` use, so the pipeline's per-sample seeding of
   ``torch.default_generator`` gives the same flips, and resume stays exact;
3. flip by slicing and map ``uint8`` to normalised ``float32`` through a 256-entry table per
   channel, computed once by torchvision's own ``to_dtype(scale=True)`` + ``normalize``, so every
   value is bit-identical to the v2 path.

An image whose size is not ``image_size x image_size`` (it needs Resize / CenterCrop) goes
through the ordinary ``build_transform`` transform, which draws the same random numbers; the
output is identical either way. Other presets (random crops, rotation, colour jitter) are not
covered: :func:`build_decoder` returns the ordinary :class:`~cvdist.data.stream.Decoder` for them.

Decoding stays with PIL on purpose: ``torchvision.io.decode_png`` is ~30 us faster per 28x28
image, but it is deprecated in torchvision 0.29 and, in 0.29.1, a PNG whose compressed data is
corrupt ("IDAT: incorrect data check") crashes the process with a segfault instead of raising,
which would kill a DataLoader worker where the pipeline must skip and count the sample.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torchvision.transforms import v2

from cvdist.data.decode import (DEFAULT_MAX_IMAGE_PIXELS, BatchNormalise, Decoder, open_image, split_normalisation,
                                unpack_sample)
from cvdist.data.jpeg_draft import JpegDraftDecoder, leading_crop
from cvdist.data.transforms import PRESET_DEFAULTS, build_transform

FAST_PRESETS = ("none", "flip")
"""Presets FastDecoder reproduces; the others need torchvision's geometric / colour transforms."""


def normalise_table(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``float32 [C, 256]``: entry ``[c, v]`` is what ``ToDtype(float32, scale=True)`` then
    ``Normalize(mean, std)`` make of pixel value ``v`` in channel ``c`` (computed by those kernels)."""
    channels = len(mean)
    levels = torch.arange(256, dtype=torch.uint8).expand(channels, 1, 256).contiguous()  # a C x 1 x 256 image
    scaled = v2.functional.to_dtype(levels, torch.float32, scale=True)
    return v2.functional.normalize(scaled, mean=list(mean), std=list(std)).reshape(channels, 256).numpy().copy()


class FastDecoder:
    """Bytes -> (image tensor, label, extra labels, key), like ``Decoder(build_transform(...))``.

    Takes ``build_transform``'s options (``preset`` must be ``none`` or ``flip``) plus
    :class:`~cvdist.data.decode.Decoder`'s ``num_classes``, ``extra_labels`` and
    ``max_image_pixels`` (the same checks, before decoding); validation and error messages are
    ``build_transform``'s. Under the same torch seed the output equals
    ``Decoder(build_transform(...), num_classes=..., ...)(sample)`` exactly. Picklable, so it runs
    in DataLoader workers.
    """

    def __init__(self, *, preset: str, image_size: int, mean: Sequence[float], std: Sequence[float], grey: bool,
                 num_classes: int, train: bool = True, hflip: Optional[float] = None,
                 vflip: Optional[float] = None, extra_labels: Optional[Mapping[str, int]] = None,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        if preset not in FAST_PRESETS:
            raise ValueError(f"preset={preset!r}: FastDecoder covers the presets {', '.join(FAST_PRESETS)}; "
                             "use cvdist.data.stream.Decoder (or build_decoder) for the others")
        # Validates every option with build_transform's messages; also serves odd-sized images.
        self.reference = build_transform(preset=preset, image_size=image_size, mean=mean, std=std, grey=grey,
                                         train=train, hflip=hflip, vflip=vflip)
        self.image_size, self.mode = image_size, "L" if grey else "RGB"
        self.extra_labels = dict(extra_labels or {})
        self.num_classes, self.max_image_pixels = num_classes, max_image_pixels
        defaults = PRESET_DEFAULTS[preset]
        probabilities = [(2, defaults.get("hflip", 0.0) if hflip is None else hflip),   # width axis of C x H x W
                         (1, defaults.get("vflip", 0.0) if vflip is None else vflip)]   # height axis
        # v2 draws ``torch.rand(1) >= p`` (float32 against p rounded to float32) for each flip it holds,
        # horizontal first; flips with p == 0 are not in the Compose and draw nothing.
        self.flips = tuple((axis, float(np.float32(p))) for axis, p in probabilities if p > 0) if train else ()
        self.table = normalise_table(mean, std)
        self.reference_pixels = split_normalisation(self.reference)[0]
        self.normaliser = BatchNormalise(mean, std)
        """Per-batch normalisation of :meth:`decode_pixels`' uint8 output (equal to ``__call__``'s)."""
        self._channel_index = np.arange(len(mean)).reshape(-1, 1, 1)

    def __call__(self, sample: dict) -> tuple[torch.Tensor, int, dict[str, int], str]:
        return self._decode(sample, normalise=True)

    def decode_pixels(self, sample: dict) -> tuple[torch.Tensor, int, dict[str, int], str]:
        """As ``__call__`` but uint8, to be normalised per batch by :attr:`normaliser`."""
        return self._decode(sample, normalise=False)

    def _decode(self, sample: dict, normalise: bool) -> tuple[torch.Tensor, int, dict[str, int], str]:
        key = str(sample["__key__"])
        raw = unpack_sample(sample, extra_labels=self.extra_labels, num_classes=self.num_classes)
        label, extras = raw.label, raw.extras
        with open_image(raw, max_pixels=self.max_image_pixels, key=key) as image:  # the cap before decoding
            image.load()
            if image.size != (self.image_size, self.image_size):  # needs Resize / CenterCrop: v2's path
                return (self.reference if normalise else self.reference_pixels)(image), label, extras, key
            if image.mode != self.mode:
                image = image.convert(self.mode)  # as PILToImage does
            pixels = np.asarray(image)
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # -> C x H x W
        pixels = self._flipped(pixels)
        if not normalise:
            return torch.from_numpy(pixels.copy()), label, extras, key  # C-contiguous, writable
        if pixels.shape[0] == 1:
            return torch.from_numpy(self.table[0][pixels]), label, extras, key
        return torch.from_numpy(self.table[self._channel_index, pixels]), label, extras, key

    def _flipped(self, pixels: np.ndarray) -> np.ndarray:
        """``C x H x W`` pixels with the flips drawn as v2 draws them (a view, no copy)."""
        for axis, probability in self.flips:
            if torch.rand(1).item() < probability:
                pixels = pixels[:, :, ::-1] if axis == 2 else pixels[:, ::-1]
        return pixels


def build_decoder(*, preset: str, image_size: int, mean: Sequence[float], std: Sequence[float], grey: bool,
                  train: bool, num_classes: int, extra_labels: Optional[Mapping[str, int]] = None,
                  max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, jpeg_draft: bool = False,
                  **options) -> Union[FastDecoder, Decoder]:
    """The fastest decoder for these ``build_transform`` options (``hflip``, ``vflip``, ...):
    :class:`FastDecoder` for the ``none`` / ``flip`` presets, else ``Decoder(build_transform(...))``.
    Both give the same tensors under the same torch seed, and refuse the same samples (labels
    outside ``[0, num_classes)``, images above ``max_image_pixels``). ``jpeg_draft=True`` returns a
    :class:`~cvdist.data.jpeg_draft.JpegDraftDecoder` where the transform starts with a
    random-resized crop (the ``standard`` / ``strong`` training presets): the same crops, JPEGs
    decoded at reduced scale where the crop allows, so pixels within a small tolerance instead."""
    transform = build_transform(preset=preset, image_size=image_size, mean=mean, std=std, grey=grey, train=train,
                                **options)  # validates every option, whichever decoder is returned
    if preset in FAST_PRESETS:
        return FastDecoder(preset=preset, image_size=image_size, mean=mean, std=std, grey=grey, train=train,
                           hflip=options.get("hflip"), vflip=options.get("vflip"), num_classes=num_classes,
                           extra_labels=extra_labels, max_image_pixels=max_image_pixels)
    decoder_class = JpegDraftDecoder if jpeg_draft and leading_crop(transform) else Decoder
    return decoder_class(transform, num_classes=num_classes, extra_labels=dict(extra_labels or {}),
                         max_image_pixels=max_image_pixels)
