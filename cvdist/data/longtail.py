"""Long-tailed training sets drawn from balanced cvdist shards (the CIFAR-LT / ImageNet-LT recipe).

Profile: with C classes ordered by label (class 0 is the head) and imbalance factor IF, class i
keeps ``floor(n_max * IF ** (-i / (C - 1)))`` samples, where ``n_max`` is the per-class count of
the source's largest class. So the head keeps ``n_max`` and the tail ``floor(n_max / IF)``. The
floor is taken after adding 1e-9, so a value that is mathematically an integer (e.g. 500 / 10)
is not lost to floating-point error. A class that would keep 0 samples is an error; a class
with fewer samples than its target keeps all it has (with a warning) and the manifest records
what was kept.

Which samples a class keeps is a seeded permutation of that class's samples (numpy PCG64 seeded
with ``[seed, class]``), truncated to the target: the same seed gives the same subset, and for a
fixed seed a larger IF keeps a subset of what a smaller IF keeps. Kept samples stay in source
order with their source keys and their original image bytes (nothing is re-encoded). Other splits
(``test``, ...) are copied byte for byte, so evaluation stays balanced.

Source shards are read by the one tar reader (``cvdist.data.tar_samples``): only the image, ``.cls`` and
``.json`` members, and nothing is ever unpickled; any other member is refused. A damaged source
shard (tar, label or ``.json``) stops the command with one line naming the shard; nothing is
written (the output directory appears only when complete).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from cvdist.data.converters import Sample
from cvdist.data.manifest import MANIFEST_NAME, LongtailInfo, Manifest, load_manifest, write_manifest
from cvdist.data.shard_writer import DEFAULT_SAMPLES_PER_SHARD, check_output_dir, staged_output_dir, write_split_shards
from cvdist.data.tar_samples import CorruptShard, iter_tar_members

LONGTAIL_SPLIT = "train"
"""The split that is made long-tailed; every other split is copied unchanged."""


def longtail_counts(*, n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Per-class targets of the exponential profile (see the module docstring)."""
    if num_classes < 2:
        raise ValueError(f"a long-tailed set needs at least 2 classes, the source has {num_classes}")
    if not math.isfinite(imbalance_factor) or imbalance_factor < 1:
        raise ValueError(f"imbalance factor {imbalance_factor:g} must be a finite number >= 1 (1 = balanced)")
    if n_max < 1:
        raise ValueError(f"the source's largest class has {n_max} samples; nothing to subsample")
    counts = [math.floor(n_max * imbalance_factor ** (-i / (num_classes - 1)) + 1e-9) for i in range(num_classes)]
    if counts[-1] < 1:
        raise ValueError(f"imbalance factor {imbalance_factor:g} leaves the tail class with 0 samples "
                         f"(n_max = {n_max}); use an imbalance factor <= {n_max} or a larger source")
    return counts


def select_longtail_indices(*, labels: Sequence[int], kept_per_class: Sequence[int], seed: int) -> list[int]:
    """Indices (ascending) into ``labels`` keeping ``kept_per_class[c]`` seeded-random samples of class c."""
    labels = np.asarray(labels, dtype=np.int64)
    selected = []
    for label, num_kept in enumerate(kept_per_class):
        members = np.flatnonzero(labels == label)
        assert num_kept <= len(members), "targets are clamped to the available samples before selection"
        order = np.random.default_rng([seed, label]).permutation(len(members))
        selected.append(members[order[:num_kept]])
    return sorted(np.concatenate(selected).tolist()) if selected else []


def _shard_members(path: Path, image_format: str, *, read_images: bool) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {extension: bytes})`` per sample, in tar order (image bytes only if asked),
    through the one tar reader every shard path uses (:mod:`cvdist.data.tar_samples`)."""
    allowed = (image_format, "cls", "json")
    try:
        with open(path, "rb") as stream:
            key, members = None, {}
            for name, data in iter_tar_members(stream):
                base, _, ext = name.partition(".")
                if data is None or "/" in name or ext not in allowed:
                    raise ValueError(f"source shard {path} holds member {name!r}, which `cvdist shards` never writes "
                                     f"(only <key>.{image_format}, .cls, .json); longtail reads only cvdist shards")
                if base != key:
                    if key is not None:
                        yield key, members
                    key, members = base, {}
                if ext in members:
                    raise ValueError(f"source shard {path} holds {name!r} twice")
                if read_images or ext != image_format:
                    members[ext] = data
            if key is not None:
                yield key, members
    except (CorruptShard, OSError) as error:
        raise ValueError(f"source shard {path} is not a readable tar file ({error}); re-write the source") from None


def _label(path: Path, key: str, members: dict[str, bytes], num_classes: int) -> int:
    text = members.get("cls", b"").decode("ascii", errors="replace").strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18 or int(text) >= num_classes:
        raise ValueError(f"source shard {path}: sample {key} has label {text[:20]!r}; "
                         f"expected an integer in 0..{num_classes - 1}")
    return int(text)


def _read_labels(source: Manifest, *, progress: bool) -> list[int]:
    labels = []
    split = source.split(LONGTAIL_SPLIT)
    for shard in tqdm(split.shards, desc="reading labels", unit="shard", file=sys.stderr, disable=not progress,
                      leave=False):
        path = source.directory / shard.file
        shard_labels = [_label(path, key, members, source.num_classes)
                        for key, members in _shard_members(path, source.image_format, read_images=False)]
        counts = np.bincount(np.asarray(shard_labels, dtype=np.int64), minlength=source.num_classes).tolist()
        if counts != shard.class_counts:
            raise ValueError(f"source shard {path} holds class counts {counts}, but its manifest says "
                             f"{shard.class_counts}; the source directory is inconsistent: re-write it")
        labels.extend(shard_labels)
    return labels


def _selected_samples(source: Manifest, selected: Sequence[int]) -> Iterator[Sample]:
    wanted, index = set(selected), 0
    for shard in source.split(LONGTAIL_SPLIT).shards:
        path = source.directory / shard.file
        for key, members in _shard_members(path, source.image_format, read_images=True):
            if index in wanted:
                if source.image_format not in members:
                    raise ValueError(f"source shard {path}: sample {key} has no .{source.image_format} image")
                extras = _extras(path, key, members)
                if not isinstance(extras, dict):
                    raise ValueError(f"source shard {path}: {key}.json is not a JSON object")
                yield Sample(label=_label(path, key, members, source.num_classes), key=key,
                             image_bytes=members[source.image_format], extras=extras)
            index += 1


def _extras(path: Path, key: str, members: dict[str, bytes]):
    try:
        return json.loads(members["json"]) if "json" in members else {}
    except Exception as error:  # noqa: BLE001 - bad UTF-8, bad JSON, nesting too deep: all one line
        raise ValueError(f"source shard {path}: {key}.json is not valid JSON ({type(error).__name__})") from None


def _kept_per_class(source: Manifest, imbalance_factor: float) -> list[int]:
    available = source.class_counts(LONGTAIL_SPLIT)
    targets = longtail_counts(n_max=max(available), num_classes=source.num_classes, imbalance_factor=imbalance_factor)
    short = [f"{source.class_names[c]} ({available[c]} < {targets[c]})" for c in range(len(targets))
             if available[c] < targets[c]]
    if short:
        print(f"warning: the source is not balanced; these classes keep all their samples, fewer than the "
              f"profile asks: {', '.join(short)}", file=sys.stderr)
    return [min(t, a) for t, a in zip(targets, available)]


def _copy_file(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    with open(target, "rb") as handle:
        os.fsync(handle.fileno())  # durable before the directory is published by a rename


def write_longtail_shards(*, source_dir: str | Path, out_dir: str | Path, imbalance_factor: float, seed: int,
                          samples_per_shard: int | None = None, overwrite: bool = False,
                          progress: bool = False) -> Manifest:
    """Write a long-tailed copy of the shard directory ``source_dir`` into ``out_dir`` (all or nothing).

    The ``train`` split is subsampled (see the module docstring); other splits are copied
    unchanged. ``samples_per_shard`` defaults to the source's largest train shard.
    """
    source = load_manifest(source_dir)
    if LONGTAIL_SPLIT not in source.splits:
        raise ValueError(f"source {source.directory} has no {LONGTAIL_SPLIT!r} split (it has "
                         f"{', '.join(source.splits)}); longtail subsamples the train split")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    kept = _kept_per_class(source, float(imbalance_factor))
    if samples_per_shard is None:
        samples_per_shard = max(source.shard_sample_counts(LONGTAIL_SPLIT), default=DEFAULT_SAMPLES_PER_SHARD)
    check_output_dir(out_dir, overwrite=overwrite, inputs=[source.directory])  # fail before reading
    selected = select_longtail_indices(labels=_read_labels(source, progress=progress), kept_per_class=kept, seed=seed)
    splits = {}
    with staged_output_dir(out_dir, overwrite=overwrite, inputs=[source.directory]) as staging:
        for name, info in source.splits.items():
            if name != LONGTAIL_SPLIT:
                for shard in info.shards:
                    _copy_file(source.directory / shard.file, staging / shard.file)
                splits[name] = info
                continue
            splits[name] = write_split_shards(
                samples=_selected_samples(source, selected), directory=staging, split=name,
                num_classes=source.num_classes, samples_per_shard=samples_per_shard,
                image_format=source.image_format, num_samples_hint=len(selected), progress=progress)
        if splits[LONGTAIL_SPLIT].class_counts != kept:
            raise ValueError(f"wrote class counts {splits[LONGTAIL_SPLIT].class_counts}, expected {kept}: "
                             "the source shards changed while being read")
        manifest = Manifest(
            directory=staging, source=f"long-tailed subset (imbalance factor {imbalance_factor:g}, seed {seed}) "
                                      f"of: {source.source}",
            class_names=list(source.class_names), image_format=source.image_format,
            extra_labels=dict(source.extra_labels), splits=splits,
            longtail=LongtailInfo(imbalance_factor=float(imbalance_factor), seed=seed,
                                  source_manifest=str(source.directory / MANIFEST_NAME), kept_per_class=kept))
        write_manifest(manifest)
    manifest.directory = Path(out_dir).resolve()
    return manifest
