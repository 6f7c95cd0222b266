"""Classification data with the training class counts that long-tail losses and metrics need:
long-tailed built-in data with a balanced held-out split and class-aware re-sampling in memory,
or shards (with a held-out manifest split). Used by the long-tail, distillation and compression
tasks.

Held-out split (for the tau search of tau-normalisation; never the test set):

* built-in data: ``holdout_per_class`` samples of every class are drawn (seeded) out of the
  *training* split before the long-tail subset is taken, so the held-out split is balanced,
  like the test set, and disjoint from what the model trains on;
* shards: a manifest split (``holdout_split``, default ``val``) of ``holdout_shards`` or of the
  first training source; the evaluation source and split are refused.

Multi-task labels (``aux_labels``, the ``multitask.labels`` names) come out as ``batch[name]`` in
training and evaluation batches; their class counts are ``LongtailData.aux_classes``. Shards
carry them in each sample's ``.json`` (the manifest's ``extra_labels`` name their classes); the
built-in data has one, ``coarse``: Fashion-MNIST's tops / bottoms / footwear / bags
(``FASHION_MNIST_COARSE``), and for the synthetic set the class parity ``label % 2`` (its classes
have no natural grouping; parity is a deterministic stand-in that keeps the code path testable).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from cvdist.config import DataConfig
from cvdist.data.builtin import FASHION_MNIST_CLASSES, load_fashion_mnist, make_synthetic
from cvdist.data.from_config import build_labelled_data
from cvdist.data.longtail import longtail_counts, select_longtail_indices
from cvdist.data.pipeline import iterate_eval_shards, resolve_source
from cvdist.data.resampling import repeat_factors
from cvdist.data.sources import FASHION_MNIST_COARSE, FASHION_MNIST_COARSE_NAMES
from cvdist.data.stream import Decoder
from cvdist.data.tensor_batches import TensorBatches, sharded_eval_batches
from cvdist.data.transforms import MultiScaleBatch, build_transform


@dataclass
class LongtailData:
    """Training batches, evaluation and held-out batches, and the training class counts."""

    train: Any
    """A ``BatchSource`` for the engine."""
    eval_batches: Callable[[], Iterator[dict]]
    """A fresh pass over this rank's share of the test data (``image``, ``label``, ``valid``)."""
    holdout_batches: Optional[Callable[[], Iterator[dict]]]
    """The same over the held-out split (None when none was asked for)."""
    class_counts: list[int]
    class_names: Optional[list[str]]
    aux_classes: dict[str, int] = field(default_factory=dict)
    """Multi-task labels in the batches -> their number of classes."""


class ResampledTensorBatches(TensorBatches):
    """:class:`TensorBatches` whose epoch order is drawn with replacement so that classes appear
    in the proportions of ``sampling`` (``cvdist.data.resampling``: class_balanced, sqrt,
    progressive; instance = the plain permutation). The order depends on (seed, epoch) only, so
    every rank draws the same one, and resume stays exact."""

    def __init__(self, *, sampling: str, num_classes: int, num_epochs: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.sampling, self.num_epochs = sampling, num_epochs
        self.class_counts = self.labels.bincount(minlength=num_classes).tolist()

    def epoch_order(self, epoch: int) -> torch.Tensor:
        if self.sampling == "instance":
            return super().epoch_order(epoch)
        factors = torch.tensor(repeat_factors(self.class_counts, scheme=self.sampling, epoch=epoch,
                                              num_epochs=self.num_epochs), dtype=torch.float64)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.multinomial(factors[self.labels], len(self.labels), replacement=True, generator=generator)


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


def _builtin_images(*, dataset: str, root: str, num_classes: int, in_channels: int, num_train_samples: int,
                    num_eval_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                               Optional[list[str]]]:
    if dataset == "synthetic":
        num_train, num_eval = num_train_samples or 2048, num_eval_samples or 512
        # one draw for both splits, so that test images come from the training classes' patterns
        images, labels = make_synthetic(num_samples=num_train + num_eval, num_classes=num_classes,
                                        channels=in_channels, seed=seed)
        return images[:num_train], labels[:num_train], images[num_train:], labels[num_train:], None
    train_images, train_labels = load_fashion_mnist(root=root, split="train", num_samples=num_train_samples)
    test_images, test_labels = load_fashion_mnist(root=root, split="test", num_samples=num_eval_samples)
    if num_classes != len(FASHION_MNIST_CLASSES):
        raise ValueError(f"model.num_classes={num_classes} but Fashion-MNIST has {len(FASHION_MNIST_CLASSES)} "
                         "classes; set model.num_classes=10")
    return train_images, train_labels, test_images, test_labels, list(FASHION_MNIST_CLASSES)


def builtin_coarse_labels(dataset: str) -> tuple[torch.Tensor, list[str]]:
    """The built-in data's ``coarse`` label of each class, and the coarse class names (see the
    module docstring: Fashion-MNIST's groups; the synthetic set's parity)."""
    if dataset == "synthetic":
        return torch.arange(2), ["even", "odd"]  # indexed by label % 2 (any number of classes)
    return torch.tensor(FASHION_MNIST_COARSE), list(FASHION_MNIST_COARSE_NAMES)


def _builtin_aux(dataset: str, aux_labels: Sequence[str]) -> tuple[Callable[[torch.Tensor], dict], dict[str, int]]:
    """``labels -> {name: aux labels}`` and ``{name: number of classes}`` for the built-in data."""
    unknown = [name for name in aux_labels if name != "coarse"]
    if unknown:
        raise ValueError(f"multitask.labels.{unknown[0]}: the built-in data has one extra label, 'coarse'; "
                         "write shards with the extra labels you need (their .json members) to use others")
    if not aux_labels:
        return (lambda labels: {}), {}
    table, names = builtin_coarse_labels(dataset)
    return (lambda labels: {"coarse": table[labels % len(table)]}), {"coarse": len(names)}


def _with_aux_labels(batches: Iterator[dict], aux_of: Callable[[torch.Tensor], dict]) -> Iterator[dict]:
    for batch in batches:
        batch.update(aux_of(batch["label"]))
        yield batch


def build_builtin_longtail_data(data: DataConfig, *, num_classes: int, in_channels: int, imbalance_factor: float,
                                holdout_per_class: int, rank: int, world_size: int, micro_batch_size: int,
                                seed: int, num_epochs: int, aux_labels: Sequence[str] = ()) -> LongtailData:
    """Long-tailed built-in data (``data.dataset``) with a balanced held-out split,
    ``data.sampling`` applied in memory, ``data.multi_scale`` per batch, and the ``coarse``
    label in every batch when ``aux_labels`` asks for it."""
    train_images, train_labels, test_images, test_labels, names = _builtin_images(
        dataset=data.dataset, root=data.root, num_classes=num_classes, in_channels=in_channels,
        num_train_samples=data.num_train_samples, num_eval_samples=data.num_eval_samples, seed=seed)
    train_index, holdout_index = split_holdout_and_longtail(
        train_labels, num_classes=num_classes, holdout_per_class=holdout_per_class,
        imbalance_factor=imbalance_factor, seed=seed)
    aux_of, aux_classes = _builtin_aux(data.dataset, aux_labels)
    mean, std = data.mean[0], data.std[0]
    multi_scale = (MultiScaleBatch(scales=data.multi_scale, base_size=data.image_size, seed=seed)
                   if data.multi_scale else None)
    train = ResampledTensorBatches(
        sampling=data.sampling, num_classes=num_classes, num_epochs=num_epochs,
        images=train_images[train_index], labels=train_labels[train_index], rank=rank, world_size=world_size,
        batch_size=micro_batch_size, seed=seed, horizontal_flip=data.augment != "none", mean=mean, std=std,
        extra_labels=aux_of(train_labels[train_index]), multi_scale=multi_scale)

    def batches_of(images: torch.Tensor, labels: torch.Tensor) -> Callable[[], Iterator[dict]]:
        return lambda: _with_aux_labels(sharded_eval_batches(
            images=images, labels=labels, rank=rank, world_size=world_size, batch_size=data.eval_batch_size,
            mean=mean, std=std), aux_of)

    holdout = (batches_of(train_images[holdout_index], train_labels[holdout_index]) if holdout_index else None)
    return LongtailData(train=train, eval_batches=batches_of(test_images, test_labels), holdout_batches=holdout,
                        class_counts=train.class_counts, class_names=names, aux_classes=aux_classes)


def shard_aux_classes(data: DataConfig, aux_labels: Sequence[str]) -> dict[str, int]:
    """``{name: number of classes}`` of the extra labels ``aux_labels`` from the manifest of the
    first training source; ValueError naming what is missing."""
    if not aux_labels:
        return {}
    _, manifest = resolve_source(data.train_shards[0], split=data.train_split)
    if manifest is None:
        raise ValueError(f"multitask.labels needs the extra labels' classes from a manifest, but "
                         f"{data.train_shards[0]} has none; give a shard directory written by `cvdist shards`")
    missing = [name for name in aux_labels if name not in manifest.extra_labels]
    if missing:
        raise ValueError(f"multitask.labels.{missing[0]}: {data.train_shards[0]} has no extra label {missing[0]!r} "
                         f"(its manifest lists: {', '.join(manifest.extra_labels) or 'none'})")
    return {name: len(manifest.extra_labels[name]) for name in aux_labels}


def build_shard_longtail_data(data: DataConfig, *, num_classes: int, in_channels: int, holdout_shards: str,
                              holdout_split: str, need_holdout: bool, rank: int, world_size: int,
                              micro_batch_size: int, seed: int, num_epochs: int,
                              aux_labels: Sequence[str] = ()) -> LongtailData:
    """:func:`cvdist.data.from_config.build_labelled_data` on shards (with the extra labels
    ``aux_labels`` decoded into the batches), plus the held-out split."""
    aux_classes = shard_aux_classes(data, aux_labels)
    labelled = build_labelled_data(data, in_channels=in_channels, num_classes=num_classes, rank=rank,
                                   world_size=world_size, micro_batch_size=micro_batch_size, seed=seed,
                                   num_epochs=num_epochs, extra_label_keys=tuple(aux_labels))
    counts = labelled.class_counts
    if counts is None:
        raise ValueError("long-tail losses and metrics need the training class counts, known for one "
                         "data.train_shards source; use a single source (with a manifest or local shards)")
    if len(counts) > num_classes:
        raise ValueError(f"the training data has {len(counts)} classes but model.num_classes={num_classes}")
    counts = list(counts) + [0] * (num_classes - len(counts))
    holdout = None
    if need_holdout:
        spec = holdout_shards or data.train_shards[0]
        if holdout_split == data.eval_split and spec == (data.eval_shards or data.train_shards[0]):
            raise ValueError(f"longtail.holdout_split={holdout_split!r} of {spec} is the evaluation (test) split; "
                             "tau must be chosen on held-out training data: give another split or holdout_shards")
        try:
            source, _ = resolve_source(spec, split=holdout_split)
        except ValueError as error:
            raise ValueError(f"longtail.tau_norm needs a held-out split: {error}. Write one (e.g. `cvdist shards "
                             "folder --split-name val`) or set longtail.holdout_shards / longtail.holdout_split") from None
        decoder = Decoder(build_transform(preset="none", train=False, image_size=data.image_size, mean=data.mean,
                                          std=data.std, grey=in_channels == 1), ())
        holdout = lambda: iterate_eval_shards(source, rank=rank, world_size=world_size,  # noqa: E731
                                              batch_size=data.eval_batch_size, decoder=decoder)
    return LongtailData(train=labelled.train, eval_batches=labelled.eval_batches, holdout_batches=holdout,
                        class_counts=counts, class_names=labelled.class_names, aux_classes=aux_classes)


def build_classification_data(data: DataConfig, *, num_classes: int, in_channels: int, imbalance_factor: float,
                              rank: int, world_size: int, micro_batch_size: int, seed: int,
                              num_epochs: int) -> LongtailData:
    """Training and test batches with the training class counts: shards as written, or the
    built-in set cut to ``imbalance_factor`` (1 = all of it), as the long-tail recipe does."""
    common = dict(num_classes=num_classes, in_channels=in_channels, rank=rank, world_size=world_size,
                  micro_batch_size=micro_batch_size, seed=seed, num_epochs=num_epochs)
    if data.train_shards:
        return build_shard_longtail_data(data, holdout_shards="", holdout_split="val", need_holdout=False, **common)
    return build_builtin_longtail_data(data, imbalance_factor=imbalance_factor, holdout_per_class=0, **common)
