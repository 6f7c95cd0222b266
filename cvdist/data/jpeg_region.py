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

from cvdist.data.jpeg_decode import decode_jpeg_pixels

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


def jpeg_size(data: bytes) -> Optional[tuple[int, int]]:
    """``(width, height)`` from the header of ``data``'s JPEG, read by libjpeg (nothing decoded:
    1.3 us against 24 us for opening it with PIL, 400 x 500 photos); None without the extension, or where libjpeg refuses
    or warns about the header (then PIL opens the file, and decides)."""
    if _jpeg_region is None:
        return None
    try:
        return _jpeg_region.read_size(data)
    except ValueError:
        return None


def decode_jpeg_crop(data: bytes, *, mode: str, box: Box) -> Optional[torch.Tensor]:
    """The uint8 ``C x height x width`` crop ``box = (top, left, height, width)`` of the image
    ``PILToImage`` makes in ``mode`` of ``data``'s JPEG: bit for bit the slice of the whole decode,
    decoding only what the crop needs. None where the caller must decode the whole file instead
    (see the module docstring). The extension itself refuses what PIL would convert: a grey file
    for an RGB ``mode`` or the reverse, CMYK, YCCK (PIL's mode of a JPEG is its channel count's)."""
    if _jpeg_region is None or mode not in CHANNELS or not data.endswith(END_OF_IMAGE):
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


def draw_crop_box(size: tuple[int, int], *, crop: v2.RandomResizedCrop, channels: int) -> Box:
    """``crop``'s box for an image of ``size = (width, height)``, not decoded yet: the same torch
    RNG draws as ``crop`` makes on the decoded ``channels x H x W`` image, so seeds and exact
    resume hold."""
    width, height = size
    # A zero-stride stand-in: make_params reads only the size, and no pixel is decoded yet.
    stand_in = torch.zeros(1, 1, 1, dtype=torch.uint8).expand(channels, height, width)
    params = crop.make_params([stand_in])
    return params["top"], params["left"], params["height"], params["width"]


def region_resized_crop(data: bytes, *, crop: v2.RandomResizedCrop, mode: str, box: Box) -> Optional[torch.Tensor]:
    """``crop`` with its drawn ``box`` applied to ``data``'s JPEG as ``PILToImage`` in ``mode``
    makes it, decoding only the box (:func:`decode_jpeg_crop`); None where that does not apply."""
    pixels = decode_jpeg_crop(data, mode=mode, box=box)
    if pixels is None:
        return None
    return _resize(pixels, crop=crop, box=(0, 0, box[2], box[3]))  # the decoded pixels are the box


def whole_image_resized_crop(image: Image.Image, *, data: bytes, crop: v2.RandomResizedCrop, to_image: Any,
                             box: Box) -> torch.Tensor:
    """``crop`` with its drawn ``box`` applied to ``to_image(image)`` (``to_image``: the
    ``PILToImage`` step; ``image``: ``data``'s JPEG opened by PIL), the whole image decoded by
    simplejpeg where it gives PIL's pixels, else by PIL."""
    pixels = decode_jpeg_pixels(data, image=image, mode=to_image.mode)
    if pixels is None:
        image.load()
        pixels = to_image(image)
    return _resize(pixels.as_subclass(torch.Tensor), crop=crop, box=box)


def _resize(pixels: torch.Tensor, *, crop: v2.RandomResizedCrop, box: Box) -> torch.Tensor:
    # The kernel RandomResizedCrop.transform dispatches to, on the plain tensor (as the lean
    # steps run it, cvdist.data.lean_steps): the full path's pixels exactly.
    top, left, height, width = box
    return v2.functional.resized_crop_image(pixels, top=top, left=left, height=height, width=width,
                                            size=crop.size, interpolation=crop.interpolation, antialias=crop.antialias)
