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
from typing import Any, Callable, Optional

import torch
from PIL import Image
from torchvision.transforms import v2

from cvdist.data.decode import Decoder, StepPlan, apply_steps, pil_to_image_steps
from cvdist.data.jpeg_decode import decode_jpeg_pixels
from cvdist.data.transforms import PILToImage

DRAFT_SCALES = (8, 4, 2)
"""The reductions libjpeg's DCT scaling offers through PIL's draft, largest first."""

Box = tuple[int, int, int, int]
"""``(top, left, height, width)`` in pixels, as ``RandomResizedCrop.make_params`` gives it."""


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


def draw_draft_crop(image: Image.Image, *, crop: v2.RandomResizedCrop, channels: int) -> DraftCrop:
    """Draw ``crop``'s box from the full size of the opened, not yet decoded JPEG ``image`` (the
    same torch RNG draws as ``crop`` on the decoded ``channels x H x W`` image), and set ``image``'s
    draft to the largest reduction that keeps the crop at least ``crop.size``."""
    width, height = image.size
    # A zero-stride stand-in: make_params reads only the size, and no pixel is decoded yet.
    stand_in = torch.zeros(1, 1, 1, dtype=torch.uint8).expand(channels, height, width)
    params = crop.make_params([stand_in])
    box = (params["top"], params["left"], params["height"], params["width"])
    target_height, target_width = crop.size
    wanted = draft_scale(crop_height=box[2], crop_width=box[3], target_height=target_height,
                         target_width=target_width)
    scale = 1
    if wanted > 1:
        # PIL picks the largest of 8/4/2/1 not above min(W // w, H // h); this request makes it
        # pick ``wanted`` (W // (W // s) lies in [s, 2s)). The mode stays the file's: PILToImage
        # converts afterwards, exactly as on the full path.
        drafted = image.draft(image.mode, (width // wanted, height // wanted))
        # The scale PIL actually chose, from the box it reports (full size / scale); None: no draft.
        scale = round(width / drafted[1][2]) if drafted else 1
    return DraftCrop(box=box, scale=scale)


def draft_resized_crop(image: Image.Image, *, data: bytes, crop: v2.RandomResizedCrop, to_image: PILToImage) -> Any:
    """``crop(to_image(image))`` for an opened, not yet decoded JPEG ``image`` (``data``'s bytes),
    decoded at the reduction :func:`draw_draft_crop` picks (bit-identical to the full path where it
    picks 1). ``crop`` must be bilinear and antialiased (what :func:`leading_crop` accepts)."""
    plan = draw_draft_crop(image, crop=crop, channels=1 if to_image.mode == "L" else 3)
    if plan.scale == 1:
        top, left, height, width = plan.box
        pixels = decode_jpeg_pixels(data, image=image, mode=to_image.mode)
        if pixels is None:
            image.load()
            pixels = to_image(image)
        # The kernel RandomResizedCrop.transform dispatches to, on the plain tensor (as the lean
        # steps run it, cvdist.data.lean_steps): the full path's pixels exactly.
        return v2.functional.resized_crop_image(pixels.as_subclass(torch.Tensor), top=top, left=left, height=height,
                                                width=width, size=crop.size, interpolation=crop.interpolation,
                                                antialias=crop.antialias)
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
    return crop_after_pil_to_image(pil_to_image_steps(transform))


def crop_after_pil_to_image(steps: Optional[list[Callable]]) -> Optional[v2.RandomResizedCrop]:
    """:func:`leading_crop` from the transform's :func:`~cvdist.data.decode.pil_to_image_steps`."""
    if not steps or len(steps) < 2:
        return None
    crop = steps[1]
    if (isinstance(crop, v2.RandomResizedCrop) and crop.antialias
            and crop.interpolation in ("bilinear", v2.InterpolationMode.BILINEAR)):
        return crop
    return None


class JpegDraftDecoder(Decoder):
    """:class:`~cvdist.data.decode.Decoder` that decodes JPEG members at reduced scale before the
    transform's leading random-resized crop (see the module docstring); other members, and
    transforms without such a crop, are decoded exactly as ``Decoder`` does. Picklable."""

    def _transform_image(self, image: Image.Image, transform: Callable, *, plan: Optional[StepPlan],
                         data: bytes) -> Any:
        crop = crop_after_pil_to_image(plan.steps if plan is not None else None)
        if crop is None or image.format != "JPEG":
            return super()._transform_image(image, transform, plan=plan, data=data)
        pixels = draft_resized_crop(image, data=data, crop=crop, to_image=plan.steps[0])
        return apply_steps(plan.after(1), pixels)  # the rest of the Compose
