"""Classification data with the training class counts that long-tail losses and metrics need,
for the long-tail, distillation and compression tasks: shards as written (with a held-out
manifest split), or the built-in set cut to a long-tailed profile with a balanced held-out split,
written as shards like every built-in set (:mod:`cvdist.data.builtin_shards`).

Held-out split (for the tau search of tau-normalisation; never the test set):

* built-in data: ``holdout_per_class`` samples of every class are drawn (seeded) out of the
  *training* split before the long-tail subset is taken, so the held-out split is balanced,
  like the test set, and disjoint from what the model trains on;
* shards: a manifest split (``holdout_split``, default ``val``) of ``holdout_shards`` or of the
  first training source; the evaluation source and split are refused.

Multi-task labels (``aux_labels``, the ``multitask.labels`` names) come out as ``batch[name]`` in
training and evaluation batches; their class counts are ``LongtailData.aux_classes``. Shards
carry them in each sample's ``.json`` (the manifest's ``extra_labels`` name their classes); the
built-in sets carry one, ``coarse``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

from cvdist.config import DataConfig
from cvdist.data.from_config import build_labelled_data, plain_batches, resolve_config_source, with_builtin_shards


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


def shard_aux_classes(data: DataConfig, aux_labels: Sequence[str], *, num_classes: int) -> dict[str, int]:
    """``{name: number of classes}`` of the extra labels ``aux_labels`` from the manifest of the
    first training source (of ``num_classes`` classes); ValueError naming what is missing."""
    if not aux_labels:
        return {}
    _, manifest = resolve_config_source(data, data.train_shards[0], split=data.train_split, num_classes=num_classes)
    if manifest is None:
        raise ValueError(f"multitask.labels needs the extra labels' classes from a manifest, but "
                         f"{data.train_shards[0]} has none; give a shard directory written by `cvdist shards`")
    missing = [name for name in aux_labels if name not in manifest.extra_labels]
    if missing:
        raise ValueError(f"multitask.labels.{missing[0]}: {data.train_shards[0]} has no extra label {missing[0]!r} "
                         f"(its manifest lists: {', '.join(manifest.extra_labels) or 'none'})")
    return {name: len(manifest.extra_labels[name]) for name in aux_labels}


def build_longtail_data(data: DataConfig, *, num_classes: int, in_channels: int, rank: int, world_size: int,
                        micro_batch_size: int, seed: int, num_epochs: int,
                        holdout_per_class: int = 0, holdout_shards: str = "", holdout_split: str = "val",
                        need_holdout: bool = False, aux_labels: Sequence[str] = ()) -> LongtailData:
    """:func:`cvdist.data.from_config.build_labelled_data` (with the extra labels ``aux_labels``
    decoded into the batches), the training class counts, and the held-out split when
    ``need_holdout``. Shards are used as written; the built-in set is cut to ``data.imbalance_factor``
    with ``holdout_per_class`` samples per class held out as its ``val`` split (see the module doc)."""
    if not data.train_shards:
        data = with_builtin_shards(data, num_classes=num_classes, in_channels=in_channels, seed=seed,
                                   holdout_per_class=holdout_per_class)
        holdout_shards, holdout_split = "", "val"
    aux_classes = shard_aux_classes(data, aux_labels, num_classes=num_classes)
    labelled = build_labelled_data(data, in_channels=in_channels, num_classes=num_classes, rank=rank,
                                   world_size=world_size, micro_batch_size=micro_batch_size, seed=seed,
                                   num_epochs=num_epochs, extra_labels=aux_classes)
    counts = labelled.class_counts
    if counts is None:
        raise ValueError("long-tail losses and metrics need the training class counts, known for one "
                         "data.train_shards source; use a single source (with a manifest or local shards)")
    counts = list(counts)  # num_classes entries: build_labelled_data checked the classes against the data
    holdout = None
    if need_holdout:
        spec = holdout_shards or data.train_shards[0]
        if holdout_split == data.eval_split and spec == (data.eval_shards or data.train_shards[0]):
            raise ValueError(f"longtail.holdout_split={holdout_split!r} of {spec} is the evaluation (test) split; "
                             "tau must be chosen on held-out training data: give another split or holdout_shards")
        try:
            source, _ = resolve_config_source(data, spec, split=holdout_split, num_classes=num_classes)
        except ValueError as error:
            raise ValueError(f"longtail.tau_norm needs a held-out split: {error}. Write one (e.g. `cvdist shards "
                             "folder --split-name val`) or set longtail.holdout_shards / longtail.holdout_split") from None
        holdout = plain_batches(source, data, in_channels=in_channels, num_classes=num_classes, rank=rank,
                                world_size=world_size, extra_labels=aux_classes)
    return LongtailData(train=labelled.train, eval_batches=labelled.eval_batches, holdout_batches=holdout,
                        class_counts=counts, class_names=labelled.class_names, aux_classes=aux_classes)
