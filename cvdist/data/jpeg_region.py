"""Decode only the part of a JPEG that a crop keeps: the same pixels as decoding it whole.

A ``RandomResizedCrop`` of a 400 x 500 photo keeps about half of it on average, yet simplejpeg
and PIL decode every pixel. The extension ``cvdist.data._jpeg_region`` (C, libjpeg-turbo: see
``_jpeg_region.c`` for why C) skips the columns beside the crop, does only the entropy decoding
for the rows above it and stops after its last row. Measured on 400 x 500 photos at quality 90,
RandomResizedCrop(224): 0.46-0.52 ms per image against simplejpeg's 0.67 ms for the whole image.

The region equals the whole-image decode's slice bit for bit (tests/test_jpeg_region.py), so the
pipeline's output and exact resume do not depend on which ran. Where the region decode does not
apply, :func:`decode_jpeg_crop` returns None and the caller decodes the whole file as before:
- the extension was not built (no libjpeg headers when cvdist was installed);
- not a JPEG, a mode change, CMYK / YCCK (as :func:`~cvdist.data.jpeg_decode.decode_jpeg_pixels`);
- anything libjpeg reports, warnings included (strict, as simplejpeg is);
- a file that does not end with the end-of-image marker: decoding stops after the crop's last
  row, so a truncated file must not look whole (the full decode refuses it, as before).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2

from cvdist.data.jpeg_decode import COLOURSPACES, decode_jpeg_pixels

try:  # built from _jpeg_region.c by `pip install` where libjpeg's headers are present
    from cvdist.data import _jpeg_region
except ImportError:  # pragma: no cover - an install without libjpeg's headers: whole-image decoding
    _jpeg_region = None

END_OF_IMAGE = b"\xff\xd9"
"""JPEG's EOI marker: the last two bytes of a complete file."""

CHANNELS = {"RGB": 3, "L": 1}
"""PIL mode -> channels decoded (the modes of :data:`~cvdist.data.jpeg_decode.COLOURSPACES`)."""

Box = tuple[int, int, int, int]
"""``(top, left, height, width)`` in pixels, as ``RandomResizedCrop.make_params`` gives it."""


def region_decoder_available() -> bool:
    """Whether the C extension was built (it is optional at install time)."""
    return _jpeg_region is not None


def decode_jpeg_crop(data: bytes, *, image: Image.Image, mode: str,
                     box: Box) -> Optional[torch.Tensor]:
    """The uint8 ``C x height x width`` crop ``box = (top, left, height, width)`` of the image
    ``PILToImage`` makes of ``image`` (``data``'s JPEG, opened by PIL, not decoded) in ``mode``:
    bit for bit the slice of the whole decode, decoding only what the crop needs. None where the
    caller must decode the whole file instead (see the module docstring)."""
    if (_jpeg_region is None or image.format != "JPEG" or image.mode != mode or mode not in COLOURSPACES
            or not data.endswith(END_OF_IMAGE)):
        return None
    top, left, height, width = box
    try:
        rows = _jpeg_region.decode_region(data, top, left, height, width, CHANNELS[mode])
    except ValueError:  # what libjpeg refused or warned about: the whole-file path decides
        return None
    # Packed rows, channels last (the layout the whole decode's tensor has), viewed as C x H x W.
    return torch.frombuffer(rows, dtype=torch.uint8).view(height, width, CHANNELS[mode]).permute(2, 0, 1)

def leading_random_crop(steps: Optional[Sequence[Any]]) -> Optional[v2.RandomResizedCrop]:
    """``steps[1]`` of a ``PILToImage``-led Compose's steps when it is a ``RandomResizedCrop`` and
    the Compose ends with ``ToPureTensor`` (so the rest runs as :mod:`cvdist.data.lean_steps` on a
    plain tensor, whatever produced it); None otherwise."""
    if not steps or len(steps) < 3 or type(steps[1]) is not v2.RandomResizedCrop:
        return None
    return steps[1] if type(steps[-1]) is v2.ToPureTensor else None


def draw_crop_box(image: Image.Image, *, crop: v2.RandomResizedCrop, channels: int) -> Box:
    """``crop``'s box for the opened, not yet decoded ``image``: the same torch RNG draws as
    ``crop`` makes on the decoded ``channels x H x W`` image, so seeds and exact resume hold."""
    width, height = image.size
    # A zero-stride stand-in: make_params reads only the size, and no pixel is decoded yet.
    stand_in = torch.zeros(1, 1, 1, dtype=torch.uint8).expand(channels, height, width)
    params = crop.make_params([stand_in])
    return params["top"], params["left"], params["height"], params["width"]


def full_scale_resized_crop(image: Image.Image, *, data: bytes, crop: v2.RandomResizedCrop, to_image: Any,
                            box: Box) -> torch.Tensor:
    """``crop`` applied with the drawn ``box`` to ``to_image(image)`` (``to_image``: the
    ``PILToImage`` step), bit for bit: only the box decoded where :func:`decode_jpeg_crop` can,
    else the whole image (simplejpeg, or PIL)."""
    top, left, height, width = box
    pixels = decode_jpeg_crop(data, image=image, mode=to_image.mode, box=box)
    if pixels is not None:
        top, left = 0, 0  # the decoded pixels are the box
    else:
        pixels = decode_jpeg_pixels(data, image=image, mode=to_image.mode)
        if pixels is None:
            image.load()
            pixels = to_image(image)
        pixels = pixels.as_subclass(torch.Tensor)
    # The kernel RandomResizedCrop.transform dispatches to, on the plain tensor (as the lean
    # steps run it, cvdist.data.lean_steps): the full path's pixels exactly.
    return v2.functional.resized_crop_image(pixels, top=top, left=left, height=height, width=width,
                                            size=crop.size, interpolation=crop.interpolation, antialias=crop.antialias)
