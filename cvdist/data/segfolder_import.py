"""``cvdist shards segfolder``: images + PNG label maps (PASCAL VOC / ADE20K style) -> dense shards
(``cvdist.data.dense_shards``) that the segmentation recipe trains on.

Layout: ``ROOT/images/`` holds the images (``.jpg`` / ``.jpeg`` / ``.png``), ``ROOT/labels/``
(or ``ROOT/annotations/``) one label map ``<stem>.png`` per image with the image's stem and size.
Splits: when ``ROOT/images`` has sub-folders, each is a split of that name (``images/train``
with ``labels/train``, ``images/validation`` with ``annotations/validation``, ...); else its files
are one split named ``split`` (default ``train``).

Label maps are 8-bit single-channel PNGs (mode ``L``, or ``P``: VOC's palette PNGs, whose
indices are the labels): 0 is background, value v in 1..N is category v - 1, and 255 is
"ignore" (VOC's void border), kept as 255 so the recipe neither trains nor scores it. The
category names come from ``ROOT/classes.txt`` (one per line, in value order 1..N; background is
not listed) or are ``class_0..class_{N-1}`` for ``num_classes=N``. The shards' ``sem.png`` is
the label map unchanged (the dense convention: 0 background, category + 1); boxes and instance
maps are empty, and ``.cls`` is the category with the most pixels (0 for an image without any).

Bad input, as ``cvdist shards coco`` treats it: an image without a label map is left out and
counted; a label value above N (other than 255), a map of another size than its image, or a
map that is not an 8-bit single-channel PNG is refused with the file named.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from cvdist.data.converters import FOLDER_FORMATS, Sample, read_image_file
from cvdist.data.dense_shards import semantic_members, write_dense_shards
from cvdist.data.manifest import Manifest

IGNORE_VALUE = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LABEL_FOLDERS = ("labels", "annotations")


@dataclass
class SegFolderImport:
    """What an import wrote, and what it left out."""

    manifest: Manifest
    skipped_images: int
    """Images without a label map of the same stem."""


def find_splits(root: Path, *, split: str = "train") -> dict[str, tuple[Path, Path]]:
    """``{split: (image folder, label folder)}`` of ``root`` (see the module doc)."""
    images = root / "images"
    labels = next((root / name for name in LABEL_FOLDERS if (root / name).is_dir()), None)
    if not images.is_dir() or labels is None:
        raise FileNotFoundError(f"{root} needs images/ and labels/ (or annotations/) folders; see `cvdist shards "
                                "segfolder --help`")
    folders = sorted(p for p in images.iterdir() if p.is_dir())
    if not folders:
        return {split: (images, labels)}
    missing = [folder.name for folder in folders if not (labels / folder.name).is_dir()]
    if missing:
        raise FileNotFoundError(f"{labels} has no sub-folder for the split(s) {', '.join(missing)} that images/ has; "
                                "each images/<split> needs its labels/<split> (or annotations/<split>)")
    return {folder.name: (folder, labels / folder.name) for folder in folders}


def read_label_map(path: Path, *, num_classes: int) -> np.ndarray:
    """A label map PNG as ``[H, W]`` uint8; ValueError naming the file when it breaks the convention."""
    try:
        with Image.open(path, formats=["PNG"]) as image:
            if image.mode not in ("L", "P"):
                raise ValueError(f"mode {image.mode}; label maps are 8-bit single-channel PNGs (L or palette P)")
            labels = np.asarray(image).copy()
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read label map {path} ({error})") from None
    bad = labels[(labels > num_classes) & (labels != IGNORE_VALUE)]
    if bad.size:
        raise ValueError(f"label map {path} holds value {int(bad.max())}, but {num_classes} classes allow 0 "
                         f"(background), 1..{num_classes} and {IGNORE_VALUE} (ignore); list every class in "
                         "classes.txt or raise --num-classes")
    return labels


def _sample(image_path: Path, label_path: Path, *, num_classes: int, image_format: str, key: str) -> Sample:
    semantic = read_label_map(label_path, num_classes=num_classes)
    sample = read_image_file(image_path, 0, image_format)
    if sample.pixels is not None:
        size = sample.pixels.shape[:2]
    else:
        with Image.open(image_path) as image:
            size = (image.height, image.width)
    if tuple(size) != semantic.shape:
        raise ValueError(f"{image_path} is {size[1]}x{size[0]} px but its label map {label_path} is "
                         f"{semantic.shape[1]}x{semantic.shape[0]}; they must match")
    label, members = semantic_members(semantic, num_categories=num_classes, ignore_value=IGNORE_VALUE)
    return replace(sample, label=label, key=key, members=members)


def class_names_of(root: Path, num_classes: int) -> list[str]:
    """``ROOT/classes.txt``'s names, else ``class_<i>`` for ``num_classes``; ValueError if neither."""
    listed = root / "classes.txt"
    if listed.is_file():
        names = [line.strip() for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
        if num_classes and num_classes != len(names):
            raise ValueError(f"{listed} lists {len(names)} classes but --num-classes={num_classes}; drop one")
        return names
    if num_classes < 1:
        raise ValueError(f"no {listed}: give the class names there (one per line, label 1 first) or --num-classes")
    return [f"class_{index}" for index in range(num_classes)]


def write_segfolder_shards(*, root: str | Path, out_dir: str | Path, num_classes: int = 0, split: str = "train",
                           image_format: str = "png", samples_per_shard: int = 500, overwrite: bool = False,
                           progress: bool = False) -> SegFolderImport:
    """Every split of ``root`` as dense shards with semantic maps (see the module doc)."""
    root = Path(root)
    names = class_names_of(root, num_classes)
    if len(names) >= IGNORE_VALUE:
        raise ValueError(f"{len(names)} classes do not fit 8-bit label maps with {IGNORE_VALUE} as ignore")
    splits = find_splits(root, split=split)
    skipped = [0]

    def split_samples(name: str, images: list[Path], labels: Path):
        def samples() -> Iterator[Sample]:
            for index, image_path in enumerate(images):
                label_path = labels / f"{image_path.stem}.png"
                if not label_path.is_file():
                    skipped[0] += 1
                    continue
                yield _sample(image_path, label_path, num_classes=len(names), image_format=image_format,
                              key=f"{name}-{index:08d}")
        return samples

    listed = {name: (sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                            and p.suffix.lower() in FOLDER_FORMATS), labels)
              for name, (folder, labels) in splits.items()}
    manifest = write_dense_shards(
        out_dir=out_dir, splits={name: (split_samples(name, images, labels), len(images))
                                 for name, (images, labels) in listed.items()},
        class_names=names, source=f"segmentation folder {root.resolve()}", image_format=image_format,
        samples_per_shard=samples_per_shard, overwrite=overwrite, progress=progress, inputs=[root])
    return SegFolderImport(manifest=manifest, skipped_images=skipped[0])
