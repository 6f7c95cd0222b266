"""Reduced-scale JPEG decoding before a random-resized crop (``data.jpeg_draft``).

The ``standard`` and ``strong`` presets start with ``RandomResizedCrop(image_size)``: a photo of
400 x 500 or several megapixels is decoded in full, then a crop of it is shrunk to, say, 224 px.
libjpeg can decode at 1/2, 1/4 or 1/8 of the size for a fraction of the work (PIL's
``Image.draft``), so :class:`JpegDraftDecoder` does, when the crop allows it:

1. the crop box is drawn from the FULL-resolution size by the transform's own
   ``RandomResizedCrop.make_params`` (the same torch RNG draws in the same order as the full
   path), so the pipeline's per-sample seeding of torch's generator, and exact resume, still hold;
2. the reduction is the largest of 8, 4, 2 whose reduced crop is still at least the target size on
   both sides (never an upsampling the full path would not do), else 1 (no draft: the same pixels
   as the full path, bit for bit);
3. the box is divided by the scale PIL actually chose and resized to the target by PIL's
   antialiased bilinear resize, which takes a fractional source box: the exact region, where
   rounding it to whole reduced pixels for torch's ``resized_crop`` measured 3-5x the error.

Pixels differ from full decoding by a little (the reduced decode averages pixel blocks before the
antialiased bilinear filter sees them, and PIL's filter differs from torch's kernel by rounding);
tests/test_jpeg_draft.py states the tolerance. PNG / WebP members, transforms without a leading
bilinear antialiased random-resized crop, and crops too small to reduce take
:class:`~cvdist.data.decode.Decoder`'s path unchanged (bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from PIL import Image
from torchvision.transforms import v2

from cvdist.data.decode import Decoder, pil_to_image_steps
from cvdist.data.jpeg_region import Box, draw_crop_box, leading_random_crop
from cvdist.data.transforms import PILToImage

DRAFT_SCALES = (8, 4, 2)
"""The reductions libjpeg's DCT scaling offers through PIL's draft, largest first."""

@dataclass(frozen=True)
class DraftCrop:
    """A random-resized crop drawn at full resolution, and where it lies in the decoded image."""

    box: Box
    """The crop in full-resolution pixels: exactly what the full path's crop draws."""
    scale: int
    """The reduction the image is decoded at (1 = full size)."""

    def reduced_box(self) -> tuple[float, float, float, float]:
        """The crop in the decoded image's pixels, as PIL's ``(left, top, right, bottom)``: a
        reduced pixel ``x`` covers full pixels ``[x * scale, (x + 1) * scale)``, so dividing the
        edges is the exact mapping (fractions kept; inside the ``ceil(full / scale)`` pixels)."""
        top, left, height, width = self.box
        return left / self.scale, top / self.scale, (left + width) / self.scale, (top + height) / self.scale


def draft_scale(*, crop_height: int, crop_width: int, target_height: int, target_width: int) -> int:
    """The largest reduction in :data:`DRAFT_SCALES` that keeps a ``crop_height x crop_width`` crop
    at least ``target_height x target_width`` once reduced (``crop / scale >= target`` on both
    sides), or 1 when none does."""
    for scale in DRAFT_SCALES:
        if crop_height >= target_height * scale and crop_width >= target_width * scale:
            return scale
    return 1


def wanted_scale(box: Box, *, crop: v2.RandomResizedCrop) -> int:
    """:func:`draft_scale` for the crop ``box`` and ``crop``'s target size."""
    target_height, target_width = crop.size
    return draft_scale(crop_height=box[2], crop_width=box[3], target_height=target_height, target_width=target_width)


def set_draft(image: Image.Image, *, box: Box, crop: v2.RandomResizedCrop) -> int:
    """Set the opened, not yet decoded JPEG ``image``'s draft to the largest reduction that keeps
    the crop ``box`` at least ``crop.size`` (:func:`wanted_scale`); the reduction PIL chose (1: none)."""
    width, height = image.size
    wanted = wanted_scale(box, crop=crop)
    if wanted == 1:
        return 1
    # PIL picks the largest of 8/4/2/1 not above min(W // w, H // h); this request makes it pick
    # ``wanted`` (W // (W // s) lies in [s, 2s)). The mode stays the file's: PILToImage converts
    # afterwards, exactly as on the full path.
    drafted = image.draft(image.mode, (width // wanted, height // wanted))
    # The scale PIL actually chose, from the box it reports (full size / scale); None: no draft.
    return round(width / drafted[1][2]) if drafted else 1


def draw_draft_crop(image: Image.Image, *, crop: v2.RandomResizedCrop, channels: int) -> DraftCrop:
    """Draw ``crop``'s box from the full size of the opened, not yet decoded JPEG ``image`` (the
    same torch RNG draws as ``crop`` on the decoded ``channels x H x W`` image), and set ``image``'s
    draft to the largest reduction that keeps the crop at least ``crop.size``."""
    box = draw_crop_box(image.size, crop=crop, channels=channels)
    return DraftCrop(box=box, scale=set_draft(image, box=box, crop=crop))


def reduced_resized_crop(image: Image.Image, *, plan: DraftCrop, crop: v2.RandomResizedCrop,
                         to_image: PILToImage) -> torch.Tensor:
    """``crop`` of ``plan.box`` from ``image``, decoded at ``plan.scale`` (its draft set), resized
    by PIL's antialiased bilinear filter from the exact fractional box, as ``to_image`` gives it."""
    image.load()
    # Mode conversion before resampling, as on the full path (PILToImage runs before the crop).
    converted = image if image.mode == to_image.mode else image.convert(to_image.mode)
    target_height, target_width = crop.size
    resized = converted.resize((target_width, target_height), Image.Resampling.BILINEAR, box=plan.reduced_box())
    return to_image(resized)


def leading_crop(transform: Any) -> Optional[v2.RandomResizedCrop]:
    """The bilinear, antialiased ``RandomResizedCrop`` that a ``build_transform`` Compose applies
    right after ``PILToImage`` (the ``standard`` / ``strong`` training presets); None for any
    other transform (PIL's resize, used on reduced images, is the match for that kernel only)."""
    return draftable(leading_random_crop(pil_to_image_steps(transform)))


def draftable(crop: Optional[v2.RandomResizedCrop]) -> Optional[v2.RandomResizedCrop]:
    """``crop`` where it is bilinear and antialiased (PIL's resize matches that kernel), else None."""
    if crop is not None and crop.antialias and crop.interpolation in ("bilinear", v2.InterpolationMode.BILINEAR):
        return crop
    return None


class JpegDraftDecoder(Decoder):
    """:class:`~cvdist.data.decode.Decoder` that decodes JPEG members at reduced scale before the
    transform's leading random-resized crop where the crop allows (see the module docstring); the
    rest exactly as ``Decoder`` does (only the crop's region decoded at full scale). Picklable."""

    def _region_resized_crop(self, data: bytes, *, crop: v2.RandomResizedCrop, mode: str,
                             box: Box) -> Optional[torch.Tensor]:
        if draftable(crop) is not None and wanted_scale(box, crop=crop) > 1:
            return None  # decoded at reduced scale, through PIL's draft (_resized_crop_jpeg)
        return super()._region_resized_crop(data, crop=crop, mode=mode, box=box)

    def _resized_crop_jpeg(self, image: Image.Image, *, data: bytes, crop: v2.RandomResizedCrop,
                           to_image: PILToImage, box: Box) -> torch.Tensor:
        scale = set_draft(image, box=box, crop=crop) if draftable(crop) is not None else 1
        if scale == 1:
            return super()._resized_crop_jpeg(image, data=data, crop=crop, to_image=to_image, box=box)
        return reduced_resized_crop(image, plan=DraftCrop(box=box, scale=scale), crop=crop, to_image=to_image)
