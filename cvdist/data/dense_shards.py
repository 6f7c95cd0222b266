"""Dense-sample shards (detection / segmentation) and the ``scenes`` writer.

The convention (plain WebDataset: one sample = the members sharing a key):

    <key>.png        the image
    <key>.cls        ASCII integer: the category of the largest instance (an image-level label,
                     so the classification readers and the manifest's class counts still apply)
    <key>.json       {"width": W, "height": H, "boxes": [[x0, y0, x1, y1], ...],
                      "category_ids": [c, ...], "iscrowd": [0, ...], "instance_ids": [1, ...]}
                     boxes in pixels, xyxy with exclusive ends; category ids index the manifest's
                     class_names; instance_ids[i] is annotation i's value in the instance map
    <key>.inst.png   uint8 instance map: 0 background, instance_ids[i] on annotation i's pixels
    <key>.sem.png    uint8 semantic map: 0 background, category + 1 (255: ignored pixels, in
                     maps imported by ``cvdist shards segfolder``)

The manifest (``cvdist.data.manifest``) has images per split and class, and its ``dense``
section the annotated instances per category and split (the long-tail view of detection data).
``iscrowd`` is optional when read (missing = all 0).
"""

from __future__ import annotations

import io
import json
import zlib
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from cvdist.data.builtin import FASHION_MNIST_CLASSES, load_fashion_mnist, make_synthetic
from cvdist.data.converters import Sample
from cvdist.data.manifest import DenseInfo, Manifest, write_manifest
from cvdist.data.scenes import SceneOptions, Scene, compose_scene
from cvdist.data.shard_writer import encode_image, staged_output_dir, write_split_shards

INSTANCE_MEMBER, SEMANTIC_MEMBER, ANNOTATION_MEMBER = "inst.png", "sem.png", "json"
SCENE_DATASETS = ("fashion_mnist", "synthetic")
_SYNTHETIC_POOL = 2000


def dense_members(*, boxes: list, categories: list[int], iscrowd: list[int], instances: np.ndarray,
                  semantic: np.ndarray) -> tuple[int, dict[str, bytes]]:
    """``(image label, members)`` of one dense sample: the largest box's category and the
    ``json`` / ``inst.png`` / ``sem.png`` members (annotation i has instance id i + 1)."""
    if not boxes:
        raise ValueError("a dense sample needs at least one annotation")
    if len(boxes) > 255:
        raise ValueError(f"{len(boxes)} annotations do not fit the 8-bit instance map (at most 255 per image)")
    areas = [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes]
    annotations = {"width": int(instances.shape[1]), "height": int(instances.shape[0]), "boxes": boxes,
                   "category_ids": categories, "iscrowd": iscrowd, "instance_ids": list(range(1, len(boxes) + 1))}
    members = {ANNOTATION_MEMBER: json.dumps(annotations, sort_keys=True, separators=(",", ":")).encode(),
               INSTANCE_MEMBER: encode_image(instances, image_format="png"),
               SEMANTIC_MEMBER: encode_image(semantic, image_format="png")}
    return categories[int(np.argmax(areas))], members


def semantic_members(semantic: np.ndarray, *, num_categories: int, ignore_value: int) -> tuple[int, dict[str, bytes]]:
    """``(image label, members)`` of a sample annotated by its semantic map only (``cvdist shards
    segfolder``): no boxes, an empty instance map, the map itself (0 background, category + 1,
    ``ignore_value`` ignored); the label is the category with the most pixels (0 when none)."""
    counts = np.bincount(semantic.reshape(-1), minlength=256)[1:num_categories + 1]
    height, width = semantic.shape
    annotations = {"width": int(width), "height": int(height), "boxes": [], "category_ids": [], "iscrowd": [],
                   "instance_ids": []}
    members = {ANNOTATION_MEMBER: json.dumps(annotations, sort_keys=True, separators=(",", ":")).encode(),
               INSTANCE_MEMBER: encode_image(np.zeros_like(semantic), image_format="png"),
               SEMANTIC_MEMBER: encode_image(semantic, image_format="png")}
    return int(np.argmax(counts)) if counts.any() else 0, members


def scene_sample(scene: Scene, *, key: str) -> Sample:
    """A composed scene as a shard-writer sample with the dense members (see the module doc)."""
    label, members = dense_members(boxes=scene.boxes, categories=scene.categories, iscrowd=[0] * len(scene.boxes),
                                   instances=scene.instances, semantic=scene.semantic)
    return Sample(label=label, pixels=scene.pixels, key=key, members=members)


def parse_annotations(data: bytes, *, num_categories: int) -> dict:
    """The ``.json`` member -> ``{"boxes": float [N, 4], "labels": int64 [N], "iscrowd": int64 [N],
    "instance_ids": int64 [N]}`` as numpy arrays; ValueError naming what is wrong."""
    value = json.loads(data)
    boxes = np.asarray(value["boxes"], dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(value["category_ids"], dtype=np.int64).reshape(-1)
    count = len(boxes)
    iscrowd = np.asarray(value.get("iscrowd", [0] * count), dtype=np.int64).reshape(-1)
    ids = np.asarray(value.get("instance_ids", range(1, count + 1)), dtype=np.int64).reshape(-1)
    if not len(labels) == len(iscrowd) == len(ids) == count:
        raise ValueError(f"annotation lists differ in length: {count} boxes, {len(labels)} category_ids, "
                         f"{len(iscrowd)} iscrowd, {len(ids)} instance_ids")
    if count and ((labels < 0).any() or (labels >= num_categories).any()):
        raise ValueError(f"category ids {sorted(set(labels.tolist()))} outside 0..{num_categories - 1}")
    if count and ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any():
        raise ValueError("a box has x1 <= x0 or y1 <= y0 (boxes are pixel xyxy with exclusive ends)")
    return {"boxes": boxes, "labels": labels, "iscrowd": iscrowd, "instance_ids": ids}


def decode_png_map(data: bytes) -> np.ndarray:
    """A uint8 label-map PNG member (instance or semantic map) -> ``[H, W]`` uint8."""
    with Image.open(io.BytesIO(data), formats=["PNG"]) as image:  # never another decoder on shard bytes
        if image.mode != "L":
            raise ValueError(f"a label map must be an 8-bit grey PNG, found mode {image.mode}")
        return np.asarray(image).copy()


def _item_pool(*, dataset: str, root: str | Path, split: str, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Items ``[N, 28, 28]`` uint8, their categories, and the category names."""
    if dataset == "fashion_mnist":
        images, labels = load_fashion_mnist(root=root, split=split)
        return images[:, 0].numpy(), labels.numpy(), list(FASHION_MNIST_CLASSES)
    if dataset == "synthetic":
        images, labels = make_synthetic(num_samples=_SYNTHETIC_POOL, num_classes=10, seed=seed,
                                        sample_seed=None if split == "train" else seed + 1)
        return images[:, 0].numpy(), labels.numpy(), [f"class_{c}" for c in range(10)]
    raise ValueError(f"scene items {dataset!r} unknown; use one of {', '.join(SCENE_DATASETS)}")


def _scenes(items, labels, *, split: str, count: int, options: SceneOptions, seed: int) -> Iterator[Sample]:
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])  # independent per split
    num_categories = int(labels.max()) + 1
    for index in range(count):
        scene = compose_scene(items=items, item_labels=labels, rng=rng, options=options, num_categories=num_categories)
        yield scene_sample(scene, key=f"{split}-{index:08d}")


def write_scene_shards(*, out_dir: str | Path, dataset: str = "fashion_mnist", root: str | Path = "",
                       num_train: int = 2000, num_test: int = 500, options: SceneOptions = SceneOptions(),
                       seed: int = 0, samples_per_shard: int = 500, overwrite: bool = False,
                       progress: bool = False) -> Manifest:
    """Write the scenes set (``train`` from the source's training items with ``options``, ``test``
    from its test items, always balanced) as dense shards plus manifest into ``out_dir``,
    all or nothing. The same arguments give byte-identical shards."""
    options.check()
    if num_train < 1 or num_test < 1:
        raise ValueError(f"num_train={num_train} and num_test={num_test} must be >= 1")
    names = _item_pool(dataset=dataset, root=root, split="test", seed=seed)[2]

    def split_samples(split: str, count: int) -> Callable[[], Iterator[Sample]]:
        def samples() -> Iterator[Sample]:  # the item pool is loaded when its split is written
            items, labels, _ = _item_pool(dataset=dataset, root=root, split=split, seed=seed)
            split_options = options if split == "train" else replace(options, imbalance_factor=1.0)
            yield from _scenes(items, labels, split=split, count=count, options=split_options, seed=seed)
        return samples

    description = {"dataset": dataset, "root": str(root), "seed": seed, **asdict(options)}
    return write_dense_shards(out_dir=out_dir, splits={"train": (split_samples("train", num_train), num_train),
                                                       "test": (split_samples("test", num_test), num_test)},
                              class_names=names, source=f"cvdist scenes {json.dumps(description, sort_keys=True)}",
                              image_format="png", samples_per_shard=samples_per_shard, overwrite=overwrite,
                              progress=progress, inputs=[root] if root else [])


def write_dense_shards(*, out_dir: str | Path, splits: dict[str, tuple[Callable[[], Iterator[Sample]], int]],
                       class_names: list[str], source: str, image_format: str, samples_per_shard: int,
                       overwrite: bool, progress: bool, inputs: list) -> Manifest:
    """Dense samples (``splits``: name -> (samples factory, count)) as shards plus a manifest with
    per-category instance counts, all or nothing."""
    written, instances = {}, {}
    with staged_output_dir(out_dir, overwrite=overwrite, inputs=inputs) as staging:
        for split, (samples, count) in splits.items():
            counts = [0] * len(class_names)
            written[split] = write_split_shards(samples=_counted(samples(), counts), directory=staging, split=split,
                                                num_classes=len(class_names), samples_per_shard=samples_per_shard,
                                                image_format=image_format, num_samples_hint=count, progress=progress)
            instances[split] = counts
        manifest = Manifest(directory=staging, source=source, class_names=list(class_names),
                            image_format=image_format, splits=written, dense=DenseInfo(instance_counts=instances))
        write_manifest(manifest)
    manifest.directory = Path(out_dir).resolve()
    return manifest


def _counted(samples: Iterator[Sample], counts: list[int]) -> Iterator[Sample]:
    for sample in samples:
        for category in json.loads(sample.members[ANNOTATION_MEMBER])["category_ids"]:
            counts[category] += 1
        yield sample
