"""The built-in data sets as WebDataset shards: written once into a cache, then read like any
user's shards.

Every recipe reads its data through one path, the shard pipeline (``cvdist.data.shard_sources`` and ``cvdist.data.stream``). A
built-in set (Fashion-MNIST from its IDX files, or the synthetic set) is therefore written on first
use as shards with a manifest, into ``<cache>/<dataset>-<digest>/``, where the digest covers
everything that decides the content (data set, source files, sample limits, seed, classes,
channels, long-tail cut, held-out split, format version). Later runs, and every other process of
the same run, find it there. Augmentation presets, re-sampling, multi-scale, exact resume and
corrupt-data handling then behave exactly as on user shards.

Writing is atomic (a staging directory renamed into place) and serialised by a lock file, so the
processes of a multi-process run do not write the same set twice and never see half of it.

Splits: ``train`` (the first ``num_train_samples``, optionally cut to a long-tailed profile with
``imbalance_factor``), ``val`` (``holdout_per_class`` samples per class held out of the training
split before the cut, when asked for: the balanced held-out split of tau-normalisation), and
``test``. Each sample carries the extra label ``coarse``: Fashion-MNIST's tops / bottoms / footwear
/ bags; for the synthetic set the class parity (its classes have no natural grouping; parity is a
deterministic stand-in that keeps the multi-task code path testable).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from cvdist.data.builtin import FASHION_MNIST_CLASSES, load_fashion_mnist, make_synthetic
from cvdist.data.converters import FASHION_MNIST_COARSE, FASHION_MNIST_COARSE_NAMES, SourceDataset, array_source_split
from cvdist.data.longtail import longtail_counts, select_longtail_indices
from cvdist.data.manifest import MANIFEST_NAME
from cvdist.data.shard_writer import write_dataset_shards

CACHE_FORMAT = 1
"""Bump when the content written for the same settings changes, so old caches are not reused."""
SAMPLES_PER_SHARD = 1000
"""Shards of 1000 28x28 images (~0.5 MB): enough shards to spread Fashion-MNIST over readers."""
SYNTHETIC_DEFAULT_TRAIN, SYNTHETIC_DEFAULT_EVAL = 2048, 512


@dataclass(frozen=True)
class BuiltinSpec:
    """Everything that decides the content of a built-in shard set."""

    dataset: str
    """``fashion_mnist`` or ``synthetic``."""
    root: str
    """Fashion-MNIST: the directory of its IDX files (ignored for the synthetic set)."""
    num_classes: int
    in_channels: int
    num_train_samples: int
    """First N training samples (0 = all; the synthetic set: 0 = 2048)."""
    num_eval_samples: int
    """First N test samples (0 = all; the synthetic set: 0 = 512)."""
    seed: int
    """The synthetic set's patterns and samples; the long-tail cut's and held-out split's draw."""
    imbalance_factor: float = 1.0
    holdout_per_class: int = 0


def default_cache_dir() -> Path:
    """``$CVDIST_CACHE_DIR``, else ``$XDG_CACHE_HOME/cvdist``, else ``~/.cache/cvdist``."""
    if os.environ.get("CVDIST_CACHE_DIR"):
        return Path(os.environ["CVDIST_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cvdist"


def source_fingerprint(*, dataset: str, root: str) -> dict:
    """What identifies the source files: for Fashion-MNIST the resolved root and its IDX files'
    names and sizes (a replaced data set gets a new cache entry)."""
    if dataset == "synthetic":
        return {}
    root = Path(root).resolve()
    files = sorted((p.name, p.stat().st_size) for p in root.glob("*-ubyte*")) if root.is_dir() else []
    return {"root": str(root), "files": files}


def cache_key(spec: BuiltinSpec) -> str:
    """``<dataset>-<digest>``: the cache entry's directory name."""
    description = {"format": CACHE_FORMAT, **asdict(spec), "source": source_fingerprint(dataset=spec.dataset,
                                                                                       root=spec.root)}
    if spec.dataset == "synthetic":
        description["root"] = ""
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
    return f"{spec.dataset}-{digest}"


def split_holdout_and_longtail(labels: torch.Tensor, *, num_classes: int, holdout_per_class: int,
                               imbalance_factor: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train_indices, holdout_indices)`` into ``labels``: ``holdout_per_class`` seeded samples
    per class held out, then the long-tail profile of ``cvdist.data.longtail`` (class 0 the head)
    applied to the rest (targets above what a class has are clamped to what it has)."""
    labels_np = labels.numpy()
    holdout, pool = [], []
    for label in range(num_classes):
        members = np.flatnonzero(labels_np == label)
        if len(members) <= holdout_per_class:
            raise ValueError(f"class {label} has {len(members)} training samples, too few to hold out "
                             f"longtail.holdout_per_class={holdout_per_class} and train on the rest; lower it")
        order = np.random.default_rng([seed, 7919, label]).permutation(members)
        holdout.extend(order[:holdout_per_class].tolist())
        pool.extend(order[holdout_per_class:].tolist())
    pool.sort()
    if imbalance_factor == 1:
        return pool, sorted(holdout)
    pool_labels = labels_np[pool]
    available = np.bincount(pool_labels, minlength=num_classes)
    targets = longtail_counts(n_max=int(available.max()), num_classes=num_classes, imbalance_factor=imbalance_factor)
    kept = [min(int(t), int(a)) for t, a in zip(targets, available)]
    chosen = select_longtail_indices(labels=pool_labels, kept_per_class=kept, seed=seed)
    return [pool[i] for i in chosen], sorted(holdout)


def _images_and_labels(spec: BuiltinSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train images, train labels, test images, test labels)``, images uint8 ``[N, C, H, W]``."""
    if spec.dataset == "synthetic":
        common = dict(num_classes=spec.num_classes, channels=spec.in_channels, seed=spec.seed)
        train = make_synthetic(num_samples=spec.num_train_samples or SYNTHETIC_DEFAULT_TRAIN, **common)
        # same class patterns (seed), other samples (sample_seed): a test split of the same task
        test = make_synthetic(num_samples=spec.num_eval_samples or SYNTHETIC_DEFAULT_EVAL,
                              sample_seed=spec.seed + 1, **common)
        return (*train, *test)
    if spec.num_classes != len(FASHION_MNIST_CLASSES):
        raise ValueError(f"model.num_classes={spec.num_classes} but Fashion-MNIST has {len(FASHION_MNIST_CLASSES)} "
                         "classes; set model.num_classes=10")
    if spec.in_channels != 1:
        raise ValueError(f"model.in_channels={spec.in_channels} but Fashion-MNIST images are grey; set "
                         "model.in_channels=1")
    train = load_fashion_mnist(root=spec.root, split="train", num_samples=spec.num_train_samples)
    test = load_fashion_mnist(root=spec.root, split="test", num_samples=spec.num_eval_samples)
    return (*train, *test)


def _coarse(spec: BuiltinSpec, labels: torch.Tensor) -> tuple[np.ndarray, list[str]]:
    if spec.dataset == "synthetic":
        return (labels % 2).numpy(), ["even", "odd"]
    return np.asarray(FASHION_MNIST_COARSE, dtype=np.int64)[labels.numpy()], list(FASHION_MNIST_COARSE_NAMES)


def build_builtin_source(spec: BuiltinSpec) -> SourceDataset:
    """The built-in set ``spec`` describes, as a source for the shard writer (see the module doc)."""
    train_images, train_labels, test_images, test_labels = _images_and_labels(spec)
    splits = {}
    train_index, holdout_index = list(range(len(train_labels))), []
    if spec.imbalance_factor != 1 or spec.holdout_per_class:
        train_index, holdout_index = split_holdout_and_longtail(
            train_labels, num_classes=spec.num_classes, holdout_per_class=spec.holdout_per_class,
            imbalance_factor=spec.imbalance_factor, seed=spec.seed)
    parts = {"train": train_index, "val": holdout_index}
    for split, index in parts.items():
        if split == "val" and not index:
            continue
        images, labels = train_images[index], train_labels[index]
        coarse, _ = _coarse(spec, labels)
        splits[split] = array_source_split(_pixels(images), labels.numpy(), {"coarse": coarse})
    coarse, coarse_names = _coarse(spec, test_labels)
    splits["test"] = array_source_split(_pixels(test_images), test_labels.numpy(), {"coarse": coarse})
    names = list(FASHION_MNIST_CLASSES) if spec.dataset == "fashion_mnist" else [
        f"class_{c}" for c in range(spec.num_classes)]
    return SourceDataset(description=f"cvdist built-in data set {json.dumps(asdict(spec), sort_keys=True)}",
                         class_names=names, splits=splits, extra_labels={"coarse": coarse_names})


def _pixels(images: torch.Tensor) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` -> what the shard writer encodes: ``[N, H, W]`` grey or ``[N, H, W, C]``."""
    array = images.numpy()
    return array[:, 0] if array.shape[1] == 1 else np.ascontiguousarray(array.transpose(0, 2, 3, 1))


def builtin_shard_dir(spec: BuiltinSpec, *, cache_dir: Optional[str | Path] = None,
                      log=print) -> Path:
    """The shard directory of the built-in set ``spec`` under ``cache_dir`` (default:
    :func:`default_cache_dir`), written first if it is not there yet (see the module doc)."""
    def write(target: Path) -> None:
        write_dataset_shards(source=build_builtin_source(spec), out_dir=target, samples_per_shard=SAMPLES_PER_SHARD,
                             image_format="png", overwrite=True)

    return cached_shard_dir(name=cache_key(spec), write=write, what=f"built-in {spec.dataset} data",
                            cache_dir=cache_dir, log=log)


def cached_shard_dir(*, name: str, write: Callable[[Path], None], what: str,
                     cache_dir: Optional[str | Path] = None, log=print) -> Path:
    """``<cache>/<name>``, written first by ``write(target)`` (atomically, under a lock, by one
    process of a multi-process run) if it holds no manifest yet; ``what`` names it in the log."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache / name
    if (target / MANIFEST_NAME).is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one writer; the others wait and then find it written
        if not (target / MANIFEST_NAME).is_file():
            log(f"[cvdist] writing the {what} as shards to {target} (once)")
            write(target)
    return target
