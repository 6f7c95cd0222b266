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
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from PIL import Image, UnidentifiedImageError

from cvdist.data.jpeg_decode import decode_jpeg_pixels
from cvdist.data.jpeg_region import (CHANNELS, Box, draw_crop_box, jpeg_size, leading_random_crop, region_resized_crop,
                                     whole_image_resized_crop)
from cvdist.data.lean_steps import lean_steps
from cvdist.data.reused_buffers import ReusedBuffers
from cvdist.data.tar_samples import IMAGE_EXTENSIONS

try:  # built from _normalise.c by `pip install`: torch's element-wise steps otherwise (the same values)
    from cvdist.data import _normalise
except ImportError:  # pragma: no cover - an install without a C compiler
    _normalise = None

DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
"""Largest image decoded (``data.max_image_pixels``'s default): 16.8 megapixels, 48 MiB as RGB,
above a 12-megapixel phone photo (4032 x 3024) and ~80x what a 224 px crop needs; a 13000 x 13000
image (half a gigabyte decoded, per sample and per worker) is refused from its header."""
PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
"""The only decoder PIL may use for each image extension (``Image.open`` without ``formats=``
tries every format it knows: EPS, which runs Ghostscript, and dozens of others)."""


@dataclass(frozen=True)
class RawSample:
    """What a raw shard sample holds, checked: its image (bytes and extension) and labels."""

    image_bytes: bytes
    image_extension: str
    label: int
    extras: dict[str, int]


def _label(text: bytes, key: str, num_classes: int) -> int:
    label = int(text)
    if not 0 <= label < num_classes:
        raise ValueError(f"sample {key} has label {label}, outside [0, model.num_classes={num_classes})")
    return label


def _extra_label(parsed: Any, name: str, num_classes: int, key: str) -> int:
    value = parsed.get(name) if isinstance(parsed, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_classes:
        raise ValueError(f"sample {key}: extra label {name!r} is {str(value)[:20]}, "
                         f"expected an integer in [0, {num_classes})")
    return value


def unpack_sample(sample: dict, *, extra_labels: Mapping[str, int], num_classes: int) -> RawSample:
    """The image, the ``.cls`` label (in ``[0, num_classes)``) and the ``.json`` labels named
    in ``extra_labels`` (name -> number of classes; each in ``[0, classes)``) of a raw sample;
    ValueError (a corrupt sample) when one is missing, malformed or out of range."""
    key = sample["__key__"]
    extension = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if extension is None:
        raise ValueError(f"sample {key} has no image member")
    if "cls" not in sample:
        raise ValueError(f"sample {key} has no .cls label")
    extras: dict[str, int] = {}
    if extra_labels:
        parsed = json.loads(sample["json"]) if "json" in sample else {}
        extras = {name: _extra_label(parsed, name, classes, key) for name, classes in extra_labels.items()}
    return RawSample(sample[extension], extension, _label(sample["cls"], key, num_classes), extras)


def open_image(raw: RawSample, *, max_pixels: int, key: str) -> Image.Image:
    """The image of ``raw``, opened (header read, pixels not decoded) with the one PIL format its
    extension declares; ValueError above ``max_pixels`` pixels, before any pixel is decoded.
    (PIL itself refuses images above ``2 * Image.MAX_IMAGE_PIXELS``, 179 megapixels, whatever
    ``max_pixels`` says; that refusal is reported the same way.)"""
    fmt = PIL_FORMATS[raw.image_extension]
    try:
        image = Image.open(io.BytesIO(raw.image_bytes), formats=[fmt])
    except UnidentifiedImageError:
        raise ValueError(f"sample {key}: its .{raw.image_extension} member is not a {fmt} image") from None
    except Image.DecompressionBombError as error:
        raise ValueError(f"sample {key}: {error} (more than data.max_image_pixels={max_pixels} allows, "
                         "or PIL's own limit)") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ValueError(f"sample {key}: a {width} x {height} image, more than data.max_image_pixels={max_pixels} "
                         "pixels (raise it if such images are intended)")
    return image


CACHE_CHUNK_FLOATS = 1 << 18
"""float32 elements normalised per step of :class:`BatchNormalise` (1 MiB: stays in a core's cache)."""


class BatchNormalise:
    """uint8 ``B x C x H x W`` -> normalised float32, with the kernels of the per-image transform
    (``to_dtype(float32, scale=True)`` then ``normalize``), so every value equals the per-image
    path's bit for bit (both are element-wise float32 operations)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        if 0.0 in self.std:
            raise ValueError(f"std {self.std} has a zero: the normalisation would divide by it")
        # Per-channel float32 columns, as ``normalize`` builds them for every call.
        self._mean_column = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std_column = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        self._outputs = ReusedBuffers()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        if images.device.type == "cpu" and images.dtype == torch.uint8 and images.ndim == 4:
            return self._normalise_in_chunks(images)
        return F.normalize(F.to_dtype(images, torch.float32, scale=True), self.mean, self.std, inplace=True)

    def _normalise_in_chunks(self, images: torch.Tensor) -> torch.Tensor:
        """The same four element-wise steps as ``to_dtype`` + ``normalize`` (convert, scale by
        1/255, subtract the mean, divide by the std), a cache-sized chunk of images at a time (it
        stays in the cache across the four steps) into an output buffer the previous steps have
        finished with (:mod:`cvdist.data.reused_buffers`: no page faults for a fresh 19 MB batch)."""
        # Contiguous whatever the batch's layout (a worker's channels-last batch, cvdist.data.batch_ring):
        # the model gets the same float batch from every path.
        normalised = self._outputs.empty_like(images, dtype=torch.float32, contiguous=True)
        if normalise_in_one_pass(images, normalised, mean=self.mean, std=self.std):
            return normalised
        # Chunks of ~1 MB of float32: one 224 px photo, or a whole batch of small images (where a
        # loop per image would cost more in calls than the cache saves).
        step = max(1, CACHE_CHUNK_FLOATS // max(images[0].numel(), 1))
        for start in range(0, images.shape[0], step):
            chunk = normalised[start:start + step]
            chunk.copy_(images[start:start + step]).mul_(1.0 / 255).sub_(self._mean_column).div_(self._std_column)
        return normalised


def normalise_in_one_pass(images: torch.Tensor, out: torch.Tensor, *, mean: Sequence[float],
                          std: Sequence[float]) -> bool:
    """``out`` (contiguous float32) = the uint8 CPU batch ``images`` converted, scaled by 1/255 and
    normalised, in one pass of the C extension (cvdist/data/_normalise.c: the same float32
    operations, 2-3x faster than torch's four passes; channels-last batches without a transposing
    copy). False, with ``out`` untouched, where the extension is missing or the batch is neither
    contiguous nor channels last."""
    if _normalise is None or images.ndim != 4 or not 1 <= images.shape[1] <= 4:
        return False
    channels = images.shape[1]
    mean, std = (list(values) * channels if len(values) == 1 else list(values) for values in (mean, std))
    if len(mean) != channels or len(std) != channels:
        return False
    if images.is_contiguous():
        source, channels_last = images, False
    elif images.permute(0, 2, 3, 1).is_contiguous():
        source, channels_last = images.permute(0, 2, 3, 1), True
    else:
        return False
    _normalise.normalise(source.numpy(), out.numpy(), tuple(images.shape), channels_last, 1.0 / 255, mean, std)
    return True


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
    _: KW_ONLY
    num_classes: int
    """Labels outside ``[0, num_classes)`` make a sample corrupt."""
    extra_labels: Mapping[str, int] = field(default_factory=dict)
    """``.json`` labels decoded into the batches: name -> number of classes."""
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    """Larger images (from their header) make a sample corrupt."""

    def __post_init__(self):
        split = split_normalisation(self.transform)
        self.pixel_transform, self.normaliser = split if split else (None, None)
        # The transforms are fixed per decoder: take their steps apart once, not per sample.
        self._plan = plan_steps(self.transform)
        self._pixel_plan = plan_steps(self.pixel_transform)

    def __call__(self, sample: dict) -> tuple[Any, int, dict[str, int], str]:
        return self._decode(sample, self.transform, plan=self._plan)

    def decode_pixels(self, sample: dict) -> tuple[Any, int, dict[str, int], str]:
        """As ``__call__`` without the final normalisation (uint8); needs :attr:`normaliser`."""
        return self._decode(sample, self.pixel_transform, plan=self._pixel_plan)

    def _decode(self, sample: dict, transform: Callable, *,
                plan: Optional[StepPlan]) -> tuple[Any, int, dict[str, int], str]:
        key = str(sample["__key__"])
        raw = unpack_sample(sample, extra_labels=self.extra_labels, num_classes=self.num_classes)
        box, pixels = self._crop_before_opening(raw, plan=plan)
        if pixels is not None:
            return pixels, raw.label, raw.extras, key
        with open_image(raw, max_pixels=self.max_image_pixels, key=key) as image:
            pixels = self._transform_image(image, transform, plan=plan, data=raw.image_bytes, box=box)
            return pixels, raw.label, raw.extras, key

    def _crop_before_opening(self, raw: RawSample, *, plan: Optional[StepPlan]) -> tuple[Optional[Box], Any]:
        """For a JPEG member whose transform starts with a random-resized crop: its box, drawn from
        the size libjpeg reads in the header, and the transformed pixels where no PIL image is
        needed (:mod:`cvdist.data.jpeg_region`: only the box decoded; None: PIL opens the file and
        this box is used). ``(None, None)`` for other members, and for headers libjpeg refuses or
        sizes above the pixel limits: PIL opens those and decides, as for every other image."""
        crop = leading_random_crop(plan.steps) if plan is not None else None
        if crop is None or PIL_FORMATS[raw.image_extension] != "JPEG":
            return None, None
        size = jpeg_size(raw.image_bytes)
        limit = min(self.max_image_pixels, Image.MAX_IMAGE_PIXELS or self.max_image_pixels)
        if size is None or size[0] * size[1] > limit:
            return None, None
        to_image = plan.steps[0]
        box = draw_crop_box(size, crop=crop, channels=CHANNELS.get(to_image.mode, 3))
        pixels = self._region_resized_crop(raw.image_bytes, crop=crop, mode=to_image.mode, box=box)
        return box, None if pixels is None else apply_steps(plan.after_second, pixels)

    def _transform_image(self, image: Image.Image, transform: Callable, *, plan: Optional[StepPlan],
                         data: bytes, box: Optional[Box] = None) -> Any:
        """``transform`` of the opened, not yet decoded ``image`` (``data``'s bytes; ``plan``:
        :func:`plan_steps` of ``transform``), decoded here in full: JPEGs by simplejpeg where it
        gives PIL's pixels (:mod:`cvdist.data.jpeg_decode`), the rest by PIL. ``box``: the leading
        random-resized crop's box, already drawn (:meth:`_crop_before_opening`)."""
        if plan is None:
            image.load()
            return transform(image)
        crop = leading_random_crop(plan.steps)
        if crop is not None and image.format == "JPEG":
            to_image = plan.steps[0]
            if box is None:
                box = draw_crop_box(image.size, crop=crop, channels=CHANNELS.get(to_image.mode, 3))
            pixels = self._resized_crop_jpeg(image, data=data, crop=crop, to_image=to_image, box=box)
            return apply_steps(plan.after_second, pixels)
        pixels = decode_jpeg_pixels(data, image=image, mode=plan.steps[0].mode)
        if pixels is None:
            image.load()
            pixels = plan.steps[0](image)
        return apply_steps(plan.after_to_image, pixels)

    def _region_resized_crop(self, data: bytes, *, crop: Any, mode: str, box: Box) -> Optional[torch.Tensor]:
        """The leading crop of ``data``'s JPEG decoding only ``box`` (None: not possible without
        PIL); the hook where :class:`~cvdist.data.jpeg_draft.JpegDraftDecoder` declines crops it
        decodes at reduced scale."""
        return region_resized_crop(data, crop=crop, mode=mode, box=box)

    def _resized_crop_jpeg(self, image: Image.Image, *, data: bytes, crop: Any, to_image: Callable,
                           box: Box) -> torch.Tensor:
        """``crop`` with its drawn ``box`` applied to ``to_image(image)`` for a JPEG ``image``
        opened by PIL; the hook where :class:`~cvdist.data.jpeg_draft.JpegDraftDecoder` decodes
        at reduced scale."""
        return whole_image_resized_crop(image, data=data, crop=crop, to_image=to_image, box=box)


def pil_to_image_steps(transform: Any) -> Optional[list[Callable]]:
    """The steps of a v2 ``Compose`` that starts with :class:`~cvdist.data.transforms.PILToImage`
    (every ``build_transform`` pipeline), or None for any other transform."""
    from torchvision.transforms import v2

    from cvdist.data.transforms import PILToImage

    ops = getattr(transform, "transforms", None)
    if isinstance(transform, v2.Compose) and ops and isinstance(ops[0], PILToImage):
        return list(ops)
    return None


@dataclass(frozen=True)
class StepPlan:
    """A ``PILToImage``-led Compose taken apart once per decoder: its steps, and what follows the
    first one or two of them with v2's per-call machinery left out where that gives the same
    outputs (:mod:`cvdist.data.lean_steps`)."""

    steps: list[Callable]
    after_to_image: list[Callable]
    """The steps after ``steps[0]`` (``PILToImage``), lean where possible."""
    after_second: list[Callable]
    """The steps after ``steps[1]`` (a leading crop the decoder applied itself), lean where possible."""


def plan_steps(transform: Any) -> Optional[StepPlan]:
    """The :class:`StepPlan` of a ``PILToImage``-led Compose; None for any other transform."""
    steps = pil_to_image_steps(transform)
    if steps is None:
        return None
    return StepPlan(steps=steps, after_to_image=lean_steps(steps[1:]) or steps[1:],
                    after_second=lean_steps(steps[2:]) or steps[2:])


def apply_steps(steps: Sequence[Callable], pixels: Any) -> Any:
    """``steps`` applied in order to one input, exactly as v2's ``Compose`` applies them."""
    for step in steps:
        pixels = step(pixels)
    return pixels
