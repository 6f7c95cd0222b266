"""Build a recipe's labelled data (training stream + evaluation batches) from ``DataConfig``.

Shared by every recipe that trains on labelled images. There is one data path: WebDataset shards
through the streaming pipeline. With ``data.train_shards`` empty, the built-in data set is written
as shards once (:mod:`cvdist.data.builtin_shards`) and read the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from cvdist.config import ConfigError, DataConfig
from cvdist.data.builtin_shards import BuiltinSpec, builtin_shard_dir
from cvdist.data.fast_decode import build_decoder
from cvdist.data.remote_cache import RemoteCache, default_remote_cache
from cvdist.data.shard_sources import build_train_stream, iterate_eval_shards, limit_samples, resolve_source
from cvdist.data.stream import ShardSet
from cvdist.data.transforms import MultiScaleBatch, preset_options


def with_builtin_shards(data: DataConfig, *, num_classes: int, in_channels: int, seed: int,
                        holdout_per_class: int = 0) -> DataConfig:
    """``data`` itself when it names shards; else a copy that names the built-in set's shard
    directory (written on first use): ``train`` / ``test`` splits, and ``val`` with
    ``holdout_per_class`` (the long-tail cut ``data.imbalance_factor`` applies to ``train``)."""
    if data.train_shards:
        return data
    spec = BuiltinSpec(dataset=data.dataset, root=data.root, num_classes=num_classes, in_channels=in_channels,
                       num_train_samples=data.num_train_samples, num_eval_samples=data.num_eval_samples, seed=seed,
                       imbalance_factor=float(data.imbalance_factor), holdout_per_class=holdout_per_class)
    directory = builtin_shard_dir(spec, cache_dir=data.cache_dir or None)
    return dataclasses.replace(data, train_shards=[str(directory)], train_weights=[], eval_shards="",
                               train_split="train", eval_split="test")


def augmentation_options(data: DataConfig) -> dict[str, Any]:
    """The per-sample augmentation options ``data`` sets on top of its ``data.augment`` preset
    (``hflip``, ``vflip``, ``rotation_degrees``, ``color_jitter``, ``crop_scale``); ConfigError
    naming the key for one the preset does not use or a value out of range."""
    given = {"hflip": data.hflip, "vflip": data.vflip, "rotation_degrees": data.rotation_degrees,
             "color_jitter": data.color_jitter, "crop_scale": tuple(data.crop_scale) or None}
    try:
        preset_options(data.augment, given)
    except ValueError as error:
        raise ConfigError(f"data.{error} (data.augment={data.augment!r}); see README 'Augmentation'") from None
    return {name: value for name, value in given.items() if value is not None}


@dataclass
class LabelledData:
    """What a recipe needs: training batches, evaluation batches, and what is known of classes."""

    train: Any
    """A ``BatchSource`` for the engine."""
    eval_batches: Callable[[], Iterator[dict]]
    """A fresh pass over this rank's share of the evaluation data (``image``, ``label``, ``valid``)."""
    class_counts: Optional[list[int]]
    """Training samples per class (from the manifest, or counted in local shards; None for several sources)."""
    class_names: Optional[list[str]]


def build_labelled_data(data: DataConfig, *, in_channels: int, num_classes: int, rank: int, world_size: int,
                        micro_batch_size: int, seed: int, num_epochs: int,
                        extra_labels: Optional[Mapping[str, int]] = None) -> LabelledData:
    """The training stream and evaluation batches ``data`` describes, for this rank (the built-in
    set when ``data.train_shards`` is empty, see :func:`with_builtin_shards`); ``extra_labels``
    (name -> number of classes) are the ``.json`` labels decoded into the batches."""
    augmentation_options(data)  # a ConfigError before the built-in set is written
    data = with_builtin_shards(data, num_classes=num_classes, in_channels=in_channels, seed=seed)
    return _from_shards(data, in_channels=in_channels, num_classes=num_classes, rank=rank, world_size=world_size,
                        micro_batch_size=micro_batch_size, seed=seed, num_epochs=num_epochs,
                        extra_labels=dict(extra_labels or {}))


def build_remote_cache(data: DataConfig) -> RemoteCache:
    """The remote-shard cache ``data`` configures: ``cache_dir/remote-shards`` (the default cache
    directory when ``data.cache_dir`` is empty), ``cache_limit_gb``, ``remote_retries``, ``remote_timeout_s``."""
    directory = str(Path(data.cache_dir) / "remote-shards") if data.cache_dir else default_remote_cache().directory
    return RemoteCache(directory=directory, limit_bytes=int(data.cache_limit_gb * (1 << 30)),
                       retries=data.remote_retries, timeout_s=data.remote_timeout_s)


def resolve_config_source(data: DataConfig, spec: str, *, split: str, num_classes: int):
    """:func:`resolve_source` with ``data``'s limits: ``(ShardSet, Manifest or None)``; a manifest
    must list ``num_classes`` classes (one check for every recipe)."""
    return resolve_source(spec, split=split, num_classes=num_classes, max_corrupt=data.max_corrupt,
                          max_member_bytes=data.max_member_bytes, allow_pipe=data.allow_pipe,
                          remote=build_remote_cache(data))


def build_train_decoder(data: DataConfig, *, in_channels: int, num_classes: int,
                        extra_labels: Mapping[str, int]) -> Any:
    """The training decoder ``data`` describes (``data.augment`` and its options, ``data.jpeg_draft``)."""
    # The fast decoder where the preset allows (none / flip): same tensors, ~2.5x the throughput.
    return build_decoder(preset=data.augment, train=True, extra_labels=extra_labels, image_size=data.image_size,
                         mean=data.mean, std=data.std, grey=in_channels == 1, num_classes=num_classes,
                         max_image_pixels=data.max_image_pixels, jpeg_draft=data.jpeg_draft,
                         **augmentation_options(data))


def _from_shards(data: DataConfig, *, in_channels: int, num_classes: int, rank: int, world_size: int,
                 micro_batch_size: int, seed: int, num_epochs: int, extra_labels: dict[str, int]) -> LabelledData:
    train_decoder = build_train_decoder(data, in_channels=in_channels, num_classes=num_classes,
                                        extra_labels=extra_labels)
    multi_scale = _multi_scale(data, seed)
    stream, manifests = build_train_stream(
        shards=data.train_shards, weights=data.train_weights, split=data.train_split, rank=rank,
        world_size=world_size, num_workers=data.num_workers, batch_size=micro_batch_size, seed=seed,
        decoder=train_decoder, shuffle_buffer=data.shuffle_buffer, num_samples=data.num_samples,
        sampling=data.sampling, num_epochs=num_epochs, max_corrupt=data.max_corrupt, num_classes=num_classes,
        max_member_bytes=data.max_member_bytes, multi_scale=multi_scale, allow_pipe=data.allow_pipe,
        remote=build_remote_cache(data), persistent_workers=data.persistent_workers)
    first_manifest = manifests[0]
    if data.eval_shards:
        eval_source, _ = resolve_config_source(data, data.eval_shards, split=data.eval_split, num_classes=num_classes)
    elif first_manifest is not None:
        eval_source, _ = resolve_config_source(data, data.train_shards[0], split=data.eval_split,
                                               num_classes=num_classes)
    else:
        raise ValueError("data.eval_shards is empty and the first training source has no manifest to take "
                         "the evaluation split from; set data.eval_shards")
    eval_batches = plain_batches(eval_source, data, in_channels=in_channels, num_classes=num_classes, rank=rank,
                                 world_size=world_size, extra_labels=extra_labels)
    return LabelledData(train=stream, eval_batches=eval_batches,
                        class_counts=stream.sources[0].class_counts if len(stream.sources) == 1 else None,
                        class_names=list(first_manifest.class_names) if first_manifest else None)


def _multi_scale(data: DataConfig, seed: int) -> Optional[MultiScaleBatch]:
    """The per-batch image size schedule of ``data.multi_scale`` (None: one size)."""
    return MultiScaleBatch(scales=data.multi_scale, base_size=data.image_size, seed=seed) if data.multi_scale else None


def build_bank_batches(data: DataConfig, *, in_channels: int, num_classes: int, bank_size: int, rank: int,
                       world_size: int, seed: int) -> Callable[[], Iterator[dict]]:
    """Labelled training images for the kNN bank / linear probe, without augmentation, this
    rank's share: the first ``bank_size`` samples (0 = all) of ``data.train_split`` of the first
    training source (the built-in set's training split when there are no shards)."""
    data = with_builtin_shards(data, num_classes=num_classes, in_channels=in_channels, seed=seed)
    source, _ = resolve_config_source(data, data.train_shards[0], split=data.train_split, num_classes=num_classes)
    if bank_size:
        source = limit_samples(source, bank_size)
    return plain_batches(source, data, in_channels=in_channels, num_classes=num_classes, rank=rank,
                         world_size=world_size)


def plain_batches(source: ShardSet, data: DataConfig, *, in_channels: int, num_classes: int, rank: int,
                  world_size: int, extra_labels: Optional[Mapping[str, int]] = None) -> Callable[[], Iterator[dict]]:
    """Fresh passes over this rank's share of ``source`` without augmentation, in batches of
    ``data.eval_batch_size`` with a ``valid`` mask: the evaluation, held-out and kNN-bank reader
    (corrupt data skipped and counted up to ``data.max_corrupt``, labels in ``[0, num_classes)``)."""
    decoder = build_decoder(preset="none", train=False, image_size=data.image_size, mean=data.mean, std=data.std,
                            grey=in_channels == 1, extra_labels=extra_labels, num_classes=num_classes,
                            max_image_pixels=data.max_image_pixels)
    return lambda: iterate_eval_shards(source, rank=rank, world_size=world_size, batch_size=data.eval_batch_size,
                                       decoder=decoder, max_corrupt=data.max_corrupt,
                                       max_member_bytes=data.max_member_bytes, remote=build_remote_cache(data))
