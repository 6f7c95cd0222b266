"""Dense samples (see ``cvdist.data.dense_shards``) -> image tensor + target dict, augmented.

Every geometric operation is torchvision's ``transforms.v2`` acting on ``tv_tensors``: the image,
its ``BoundingBoxes`` (pixel XYXY, exclusive ends: a horizontal flip maps ``[x0, x1)`` to
``[W - x1, W - x0)``), the per-instance ``Mask`` ``[N, H, W]`` and the semantic ``Mask``
``[H, W]`` move together. Training: horizontal flip, scale jitter (``ScaleJitter``: the image
scaled to fit ``scale_range`` times the output size), then a random crop padded to the output
size, so every image of a batch has the same size; ``SanitizeBoundingBoxes`` then drops boxes
(with their labels, iscrowd and masks) that the crop left smaller than one pixel.

Targets differ in size per image, so a batch is ``{"image": [C, H, W] float tensors,
"target": [dict, ...], "key": [str, ...]}`` (lists) built by :meth:`DenseDecoder.collate`; the
shard stream uses a decoder's ``collate`` when it has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from cvdist.data.decode import DEFAULT_MAX_IMAGE_PIXELS, RawSample, open_image
from cvdist.data.dense_shards import (ANNOTATION_MEMBER, INSTANCE_MEMBER, SEMANTIC_MEMBER, decode_png_map,
                                      parse_annotations)
from cvdist.data.tar_samples import IMAGE_EXTENSIONS


def _labels_and_iscrowd(inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``SanitizeBoundingBoxes`` filters together with the boxes (a module function: picklable)."""
    target = inputs[1]
    return target["labels"], target["iscrowd"]


def build_dense_transform(*, train: bool, size: int, hflip: float = 0.5,
                          scale_range: tuple[float, float] = (0.75, 1.25), mask_fill: int = 0) -> v2.Transform:
    """The joint image / box / mask transform (see the module doc); evaluation only converts.
    ``mask_fill``: the value of mask pixels the crop pads (segmentation: its ignore index, so
    padding is neither background nor scored)."""
    ops: list = []
    if train:
        if hflip:
            ops.append(v2.RandomHorizontalFlip(p=hflip))
        if tuple(scale_range) != (1.0, 1.0):
            ops.append(v2.ScaleJitter(target_size=(size, size), scale_range=tuple(scale_range), antialias=True))
        ops.append(v2.RandomCrop(size=size, pad_if_needed=True, fill={tv_tensors.Mask: mask_fill, "others": 0}))
    ops += [v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_labels_and_iscrowd),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), v2.ToPureTensor()]
    return v2.Compose(ops)


def dense_target(sample: dict, *, num_categories: int, height: int, width: int,
                 with_masks: bool, with_semantic: bool) -> dict:
    """The raw sample's annotations as a tv_tensors target (boxes, labels, iscrowd, masks)."""
    parsed = parse_annotations(sample[ANNOTATION_MEMBER], num_categories=num_categories)
    target: dict[str, Any] = {
        "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(parsed["boxes"]), format="XYXY",
                                          canvas_size=(height, width)),
        "labels": torch.from_numpy(parsed["labels"]), "iscrowd": torch.from_numpy(parsed["iscrowd"])}
    if with_masks:
        instances = decode_png_map(sample[INSTANCE_MEMBER])
        masks = instances[None] == parsed["instance_ids"][:, None, None]
        target["masks"] = tv_tensors.Mask(torch.from_numpy(masks.astype(np.uint8)))
    if with_semantic:
        target["semantic"] = tv_tensors.Mask(torch.from_numpy(decode_png_map(sample[SEMANTIC_MEMBER])).long())
    for name in ("masks", "semantic"):
        if name in target and tuple(target[name].shape[-2:]) != (height, width):
            raise ValueError(f"the {name} map is {tuple(target[name].shape[-2:])}, the image {(height, width)}")
    return target


@dataclass
class DenseDecoder:
    """Raw dense sample -> ``(image, target, key)``; picklable for DataLoader workers."""

    num_categories: int
    transform: Any
    with_masks: bool = False
    with_semantic: bool = False
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __call__(self, sample: dict) -> tuple[torch.Tensor, dict, str]:
        extension = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if extension is None:
            raise ValueError("sample has no image member")
        # the classification decoder's checks: only the declared format, the pixel cap from the header
        raw = RawSample(sample[extension], extension, 0, {})
        with open_image(raw, max_pixels=self.max_image_pixels, key=str(sample.get("__key__"))) as pil:
            pil.load()
            image = tv_tensors.Image(torch.from_numpy(np.array(pil.convert("RGB" if pil.mode != "L" else "L"))
                                                      .reshape(pil.height, pil.width, -1)).permute(2, 0, 1))
        target = dense_target(sample, num_categories=self.num_categories, height=image.shape[-2],
                              width=image.shape[-1], with_masks=self.with_masks, with_semantic=self.with_semantic)
        image, target = self.transform(image, target)
        return image, target, str(sample["__key__"])

    @staticmethod
    def collate(items: list[tuple[torch.Tensor, dict, str]]) -> dict[str, Any]:
        """Lists, not stacks: targets differ in length per image."""
        return {"image": [item[0] for item in items], "target": [item[1] for item in items],
                "key": [item[2] for item in items]}


def build_dense_decoder(*, num_categories: int, train: bool, size: int, hflip: float = 0.5,
                        scale_range: tuple[float, float] = (0.75, 1.25), with_masks: bool = False,
                        with_semantic: bool = False, transform: Optional[Any] = None,
                        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, mask_fill: int = 0) -> DenseDecoder:
    """A decoder with :func:`build_dense_transform` (or ``transform``) for dense shards; images
    above ``max_image_pixels`` (``data.max_image_pixels``) or not in their declared format are
    corrupt samples, as for classification; ``mask_fill`` see :func:`build_dense_transform`."""
    transform = transform or build_dense_transform(train=train, size=size, hflip=hflip, scale_range=scale_range,
                                                   mask_fill=mask_fill)
    return DenseDecoder(num_categories=num_categories, transform=transform, with_masks=with_masks,
                        with_semantic=with_semantic, max_image_pixels=max_image_pixels)
