"""Write WebDataset shards (``<split>-000000.tar``, ...) plus ``manifest.json`` from a source.

Each sample becomes the tar members ``<key>.<png|jpg|webp>``, ``<key>.cls`` (ASCII integer) and,
when the source has extra labels, ``<key>.json``; ``__key__`` is ``<split>-<source index:08d>``.
Tar headers carry a fixed mtime, owner and mode, so the same input gives byte-identical shards.

Output is all-or-nothing: everything is written into a hidden temporary directory next to the
output (same file system) and renamed into place at the end. A crash leaves the target as it
was; only a killed process can leave a ``.<name>.tmp-*`` directory behind, safe to delete (and,
with overwrite, one killed between its two renames leaves the previous output as ``.<name>.old-*``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import sys
import tarfile
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from cvdist.data.converters import Sample, SourceDataset
from cvdist.data.manifest import IMAGE_FORMATS, MANIFEST_NAME, Manifest, ShardInfo, SplitInfo, write_manifest
from cvdist.io import fsync_directory

DEFAULT_SAMPLES_PER_SHARD = 1000
DEFAULT_QUALITY = 95
_PIL_SAVE = {"png": ("PNG", {}), "jpg": ("JPEG", {"subsampling": 0}), "webp": ("WEBP", {"method": 4})}
_MAX_SPLIT_NAME = 64


def check_image_options(*, image_format: str, quality: int | None) -> int | None:
    """Validate the image format and quality; return the quality to use (None for png)."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format {image_format!r} is not supported; use one of {', '.join(IMAGE_FORMATS)}")
    if image_format == "png":
        if quality is not None:
            raise ValueError("--quality applies to jpg and webp only; png is lossless (drop --quality)")
        return None
    quality = DEFAULT_QUALITY if quality is None else quality
    if not 1 <= quality <= 100:
        raise ValueError(f"quality={quality} must be between 1 and 100")
    return quality


def encode_image(pixels: np.ndarray, *, image_format: str, quality: int | None = None) -> bytes:
    """Encode uint8 pixels (``[H, W]`` grey or ``[H, W, 3|4]``) as png, jpg or webp bytes."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"pixels must be uint8 [H, W] or [H, W, C], found {pixels.dtype} {pixels.shape}")
    image = Image.fromarray(np.ascontiguousarray(pixels))
    if image_format == "jpg" and image.mode == "RGBA":
        image = image.convert("RGB")  # JPEG has no alpha channel
    pil_format, options = _PIL_SAVE[image_format]
    if quality is not None:
        options = {**options, "quality": quality}
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    # Fixed metadata: identical input gives identical shard bytes.
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def extras_json(extras: dict) -> bytes:
    """The canonical bytes of a sample's ``.json`` member (sorted keys, no spaces)."""
    return json.dumps(extras, sort_keys=True, separators=(",", ":")).encode("utf-8")


class _SplitWriter:
    """Writes one split's samples into numbered tars and counts samples per class per shard."""

    def __init__(self, *, directory: Path, split: str, num_classes: int, samples_per_shard: int,
                 image_format: str, quality: int | None):
        self.directory, self.split, self.num_classes = directory, split, num_classes
        self.samples_per_shard, self.image_format, self.quality = samples_per_shard, image_format, quality
        self.shards: list[ShardInfo] = []
        self._tar: tarfile.TarFile | None = None
        self._handle = None
        self._counts: list[int] = []

    def add(self, sample: Sample) -> None:
        # Keys become member names and WebDataset splits a member name at its first dot.
        if not sample.key or "." in sample.key or "/" in sample.key:
            raise ValueError(f"sample key {sample.key!r} must be non-empty without '.' or '/'")
        if (sample.pixels is None) == (sample.image_bytes is None):
            raise ValueError(f"sample {sample.key} needs exactly one of pixels and image_bytes")
        if not 0 <= sample.label < self.num_classes:
            raise ValueError(f"sample {sample.key} has label {sample.label}, outside 0..{self.num_classes - 1}")
        if self._tar is None:
            self._open()
        if sample.image_bytes is not None:
            image = sample.image_bytes
        else:
            image = encode_image(sample.pixels, image_format=self.image_format, quality=self.quality)
        _tar_member(self._tar, f"{sample.key}.{self.image_format}", image)
        _tar_member(self._tar, f"{sample.key}.cls", str(sample.label).encode("ascii"))
        if sample.extras:
            if "json" in sample.members:
                raise ValueError(f"sample {sample.key} has both extras and a json member; give one of them")
            _tar_member(self._tar, f"{sample.key}.json", extras_json(sample.extras))
        for extension, data in sample.members.items():
            _tar_member(self._tar, f"{sample.key}.{extension}", data)
        self._counts[sample.label] += 1
        if sum(self._counts) == self.samples_per_shard:
            self._close()

    def finish(self) -> SplitInfo:
        if self._tar is not None:
            self._close()
        class_counts = [sum(s.class_counts[c] for s in self.shards) for c in range(self.num_classes)]
        return SplitInfo(num_samples=sum(class_counts), class_counts=class_counts, shards=list(self.shards))

    def abort(self) -> None:
        """Close an open shard without recording it (the caller discards the directory)."""
        if self._handle is not None:
            self._handle.close()
        self._tar = self._handle = None

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):06d}.tar"
        self._handle = open(self.directory / name, "wb")
        self._tar = tarfile.open(fileobj=self._handle, mode="w", format=tarfile.USTAR_FORMAT)
        self._counts = [0] * self.num_classes

    def _close(self) -> None:
        self._tar.close()
        self._handle.flush()
        os.fsync(self._handle.fileno())  # the rename that publishes the directory must not outrun the data
        self._handle.close()
        name = Path(self._handle.name).name
        self.shards.append(ShardInfo(file=name, num_samples=sum(self._counts), class_counts=list(self._counts)))
        self._tar = self._handle = None


def write_split_shards(*, samples: Iterable[Sample], directory: str | Path, split: str, num_classes: int,
                       samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD, image_format: str = "png",
                       quality: int | None = None, num_samples_hint: int | None = None,
                       progress: bool = False) -> SplitInfo:
    """Write ``samples`` (each with its ``key`` set) as ``<split>-NNNNNN.tar`` files in ``directory``.

    Samples with ``image_bytes`` are copied unchanged (they must already be ``image_format``);
    others are encoded with :func:`encode_image`. Returns the split's manifest entry.
    """
    check_split_name(split)
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard={samples_per_shard} must be >= 1")
    writer = _SplitWriter(directory=Path(directory), split=split, num_classes=num_classes,
                          samples_per_shard=samples_per_shard, image_format=image_format, quality=quality)
    with tqdm(total=num_samples_hint, desc=f"{split} shards", unit="img", file=sys.stderr,
              disable=not progress, leave=False) as bar:
        try:
            for sample in samples:
                writer.add(sample)
                bar.update(1)
        except BaseException:
            writer.abort()
            raise
    return writer.finish()


def check_split_name(split: str) -> None:
    """Split names become file names and key prefixes: letters, digits, '_' and '-' only."""
    if not split or len(split) > _MAX_SPLIT_NAME or not all(c.isascii() and (c.isalnum() or c in "_-") for c in split):
        raise ValueError(f"split name {split!r} must be 1-{_MAX_SPLIT_NAME} ASCII letters, digits, '_' or '-' "
                         "(it becomes part of every file name and sample key)")


def check_output_dir(out_dir: str | Path, *, overwrite: bool, inputs: Sequence[str | Path] = ()) -> Path:
    """Refuse an output directory that would lose data; return it as an absolute path.

    A non-empty directory is refused unless ``overwrite``, and even then only if it holds a
    cvdist ``manifest.json`` (so a mistyped ``--out`` never deletes unrelated files). The output
    may not be, contain or lie inside any of ``inputs``.
    """
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a directory; choose a directory path for --out")
    for source in inputs:
        source, resolved = Path(source).resolve(), out.resolve()
        if source == resolved or resolved in source.parents or source in resolved.parents:
            raise ValueError(f"output {out} and input {source} overlap; choose an --out outside the input "
                             "(and not containing it)")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"output directory {out} exists and is not empty; choose a new --out "
                             "or pass --overwrite to replace it")
        if not (out / MANIFEST_NAME).is_file():
            raise ValueError(f"output directory {out} is not a cvdist shard directory (no {MANIFEST_NAME}); "
                             "refusing to replace it even with --overwrite: choose another --out")
    return out


@contextlib.contextmanager
def staged_output_dir(out_dir: str | Path, *, overwrite: bool, inputs: Sequence[str | Path] = ()) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``out_dir``; on success rename it to ``out_dir``.

    On any exception the temporary directory is deleted and ``out_dir`` is left as it was. With
    ``overwrite`` an existing shard directory is renamed away, the new one renamed in, and the
    old one deleted.
    """
    out = check_output_dir(out_dir, overwrite=overwrite, inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()  # not mkdtemp: that creates mode 0700, unreadable for others once published
    try:
        yield staging
        fsync_directory(staging)
        _publish(staging, out, overwrite=overwrite, inputs=inputs)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging: Path, out: Path, *, overwrite: bool, inputs: Sequence[str | Path]) -> None:
    check_output_dir(out, overwrite=overwrite, inputs=inputs)  # again: it may have changed while writing
    if out.is_dir() and any(out.iterdir()):
        old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(out, old)
        try:
            os.rename(staging, out)
        except BaseException:
            os.rename(old, out)  # put the previous output back before the caller discards the new one
            raise
        fsync_directory(out.parent)
        shutil.rmtree(old)
    else:
        os.replace(staging, out)  # replaces an empty directory too
        fsync_directory(out.parent)


def _ordered_samples(source_split, split: str, order: Sequence[int]) -> Iterator[Sample]:
    for index in order:
        yield replace(source_split.read_sample(int(index)), key=f"{split}-{int(index):08d}")


def write_dataset_shards(*, source: SourceDataset, out_dir: str | Path,
                         samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD, image_format: str = "png",
                         quality: int | None = None, shuffle_seed: int | None = None, overwrite: bool = False,
                         inputs: Sequence[str | Path] = (), progress: bool = False) -> Manifest:
    """Write every split of ``source`` as shards plus ``manifest.json`` into ``out_dir`` (all or nothing).

    Keys are ``<split>-<source index:08d>``. ``shuffle_seed`` None writes samples in source order;
    an integer writes them in a seeded random order (use it for sources sorted by class, such as
    image folders, so each shard holds a mix of classes). ``inputs`` are source paths that the
    output must not overlap.
    """
    quality = check_image_options(image_format=image_format, quality=quality)
    if shuffle_seed is not None and shuffle_seed < 0:
        raise ValueError(f"shuffle_seed={shuffle_seed} must be >= 0 (or None for source order)")
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard={samples_per_shard} must be >= 1")
    for split in source.splits:
        check_split_name(split)
    splits = {}
    with staged_output_dir(out_dir, overwrite=overwrite, inputs=inputs) as staging:
        for split, source_split in source.splits.items():
            order = np.arange(source_split.num_samples)
            if shuffle_seed is not None:
                rng = np.random.default_rng([shuffle_seed, zlib.crc32(split.encode())])  # independent per split
                order = rng.permutation(source_split.num_samples)
            splits[split] = write_split_shards(
                samples=_ordered_samples(source_split, split, order), directory=staging, split=split,
                num_classes=len(source.class_names), samples_per_shard=samples_per_shard,
                image_format=image_format, quality=quality, num_samples_hint=source_split.num_samples,
                progress=progress)
        manifest = Manifest(directory=staging, source=source.description, class_names=list(source.class_names),
                            image_format=image_format, extra_labels=dict(source.extra_labels), splits=splits)
        write_manifest(manifest)
    manifest.directory = Path(out_dir).resolve()
    return manifest
