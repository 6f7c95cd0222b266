"""``cvdist shards coco``: a COCO-format folder -> dense shards (``cvdist.data.dense_shards``).

Layout: ``ROOT/instances_<split>.json`` (or ``ROOT/annotations/instances_<split>.json``), one
split per file, with the images at ``IMAGES/<file_name>`` (``IMAGES`` defaults to
``ROOT/images``). Every file must list the same categories; category ids become ``0..C-1`` in
ascending COCO id order, the class names their ``name``. Boxes: COCO ``[x, y, w, h]`` ->
``[x, y, x + w, y + h]``; annotations with ``w`` or ``h`` <= 0 are dropped. Instance masks come
from each annotation's ``segmentation`` (polygons or RLE, decoded by pycocotools); where masks
overlap the later annotation owns the pixel. Images without a usable annotation are left out
(the dense convention needs one); both counts are returned. The annotation files are parsed as
JSON (nothing is unpickled); samples keep their COCO order, keyed ``<split>-<image id:08d>``.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from cvdist.data.converters import Sample, read_image_file
from cvdist.data.dense_shards import dense_members, write_dense_shards
from cvdist.data.manifest import Manifest


@dataclass
class CocoImport:
    """What an import wrote, and what it left out."""

    manifest: Manifest
    skipped_images: int
    """Images without a usable annotation."""
    skipped_annotations: int
    """Annotations with an empty box."""


def find_annotation_files(root: Path) -> dict[str, Path]:
    """``{split: instances_<split>.json}`` under ``root`` or ``root/annotations``."""
    files = sorted(root.glob("instances_*.json")) + sorted((root / "annotations").glob("instances_*.json"))
    found = {path.stem[len("instances_"):]: path for path in files}
    if not found:
        raise FileNotFoundError(f"no instances_<split>.json in {root} or {root / 'annotations'}; expected a "
                                "COCO-format folder (images/ + instances_train.json, ...)")
    return found


def _load(path: Path):
    from pycocotools.coco import COCO

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path} lacks the COCO list {key!r}")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


def _image_sample(coco, image: dict, *, images_dir: Path, category_index: dict[int, int], image_format: str,
                  key: str, dropped: list[int]) -> Sample | None:
    height, width = int(image["height"]), int(image["width"])
    instances = np.zeros((height, width), dtype=np.uint8)
    semantic = np.zeros((height, width), dtype=np.uint8)
    boxes, categories, iscrowd = [], [], []
    for annotation in coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]])):
        x, y, w, h = (float(v) for v in annotation["bbox"])
        if w <= 0 or h <= 0:
            dropped[0] += 1
            continue
        boxes.append([x, y, x + w, y + h])
        categories.append(category_index[annotation["category_id"]])
        iscrowd.append(int(annotation.get("iscrowd", 0)))
        if annotation.get("segmentation"):
            mask = coco.annToMask(annotation).astype(bool)
            instances[mask] = len(boxes)
            semantic[mask] = categories[-1] + 1
    if not boxes:
        return None
    path = images_dir / image["file_name"]
    sample = read_image_file(path, 0, image_format)
    size = sample.pixels.shape[:2] if sample.pixels is not None else _size(sample.image_bytes)
    if tuple(size) != (height, width):
        raise ValueError(f"{path} is {size[1]}x{size[0]} px but its COCO entry says {width}x{height}; fix the "
                         "annotation file or the image")
    label, members = dense_members(boxes=boxes, categories=categories, iscrowd=iscrowd, instances=instances,
                                   semantic=semantic)
    return replace(sample, label=label, key=key, members=members)


def _size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.height, image.width


def write_coco_shards(*, root: str | Path, out_dir: str | Path, images_dir: str | Path | None = None,
                      image_format: str = "png", samples_per_shard: int = 500, overwrite: bool = False,
                      progress: bool = False) -> CocoImport:
    """Every ``instances_<split>.json`` of ``root`` as a split of dense shards (see the module doc)."""
    root = Path(root)
    images = Path(images_dir) if images_dir else root / "images"
    cocos = {split: _load(path) for split, path in find_annotation_files(root).items()}
    category_lists = {split: sorted((c["id"], c["name"]) for c in coco.dataset["categories"])
                      for split, coco in cocos.items()}
    first = next(iter(category_lists.values()))
    for split, listed in category_lists.items():
        if listed != first:
            raise ValueError(f"instances_{split}.json lists other categories than the first file; every split needs "
                             "the same categories")
    category_index = {coco_id: index for index, (coco_id, _) in enumerate(first)}
    skipped, dropped = [0], [0]

    def split_samples(split: str):
        def samples() -> Iterator[Sample]:
            coco = cocos[split]
            for image in coco.dataset["images"]:
                key = f"{split}-{int(image['id']):08d}"
                sample = _image_sample(coco, image, images_dir=images, category_index=category_index,
                                       image_format=image_format, key=key, dropped=dropped)
                if sample is None:
                    skipped[0] += 1
                else:
                    yield sample
        return samples

    manifest = write_dense_shards(
        out_dir=out_dir,
        splits={split: (split_samples(split), len(coco.dataset["images"])) for split, coco in cocos.items()},
        class_names=[name for _, name in first], source=f"COCO-format folder {root.resolve()}",
        image_format=image_format, samples_per_shard=samples_per_shard, overwrite=overwrite, progress=progress,
        inputs=[root, images])
    return CocoImport(manifest=manifest, skipped_images=skipped[0], skipped_annotations=dropped[0])
