"""A dense task's data from ``DataConfig``: the training stream and evaluation batches of dense
shards (``cvdist.data.dense_shards``), through the same reader as every other task.

With ``data.train_shards`` empty the built-in scenes set is written once into the cache (as the
built-in classification sets are, ``cvdist.data.builtin_shards``): items from ``data.dataset``
(``data.root``), canvases of ``data.image_size`` px, ``data.num_train_samples`` /
``data.num_eval_samples`` scenes (0 = 2000 / 500) and ``data.imbalance_factor`` over categories.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from cvdist.config import ConfigError, DataConfig
from cvdist.data.builtin_shards import cached_shard_dir, source_fingerprint
from cvdist.data.dense_decode import build_dense_decoder
from cvdist.data.dense_shards import INSTANCE_MEMBER, write_scene_shards
from cvdist.data.from_config import build_remote_cache
from cvdist.data.repeat_factor import RepeatFactor, build_repeat_factor
from cvdist.data.scenes import SceneOptions
from cvdist.data.shard_sources import build_train_stream, iterate_eval_shards, read_intact_shard, resolve_source

SCENES_FORMAT = 1
"""Bump when the scenes written for the same settings change, so old caches are not reused."""
DEFAULT_TRAIN_SCENES, DEFAULT_EVAL_SCENES = 2000, 500


@dataclass
class DenseData:
    """Training batches, evaluation batches and what the manifest knows of the categories."""

    train: Any
    """The ``BatchSource`` for the engine: ``{"image": [...], "target": [...], "key": [...]}``."""
    eval_batches: Callable[[], Iterator[dict]]
    """A fresh pass over this rank's share of the evaluation images (with a ``valid`` mask)."""
    category_names: list[str]
    train_instance_counts: list[int]
    category_repeat_factors: list[float] = field(default_factory=list)
    """``r_c`` of repeat-factor sampling (empty when it is off)."""


def scenes_options(data: DataConfig, scenes: SceneOptions) -> SceneOptions:
    """``scenes`` with the canvas and long-tail profile the data section sets."""
    return dataclasses.replace(scenes, canvas_size=data.image_size, imbalance_factor=float(data.imbalance_factor))


def with_builtin_scenes(data: DataConfig, *, scenes: SceneOptions, seed: int) -> DataConfig:
    """``data`` itself when it names shards; else a copy naming the cached built-in scenes."""
    if data.train_shards:
        return data
    options = scenes_options(data, scenes)
    options.check()
    num_train, num_eval = data.num_train_samples or DEFAULT_TRAIN_SCENES, data.num_eval_samples or DEFAULT_EVAL_SCENES
    description = {"format": SCENES_FORMAT, "dataset": data.dataset, "num_train": num_train, "num_eval": num_eval,
                   "seed": seed, **dataclasses.asdict(options),
                   "source": source_fingerprint(dataset=data.dataset, root=data.root)}
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]

    def write(target) -> None:
        write_scene_shards(out_dir=target, dataset=data.dataset, root=data.root if data.dataset != "synthetic" else "",
                           num_train=num_train, num_test=num_eval, options=options, seed=seed, overwrite=True)

    directory = cached_shard_dir(name=f"scenes-{data.dataset}-{digest}", write=write,
                                 what=f"built-in scenes ({data.dataset} items)", cache_dir=data.cache_dir or None)
    return dataclasses.replace(data, train_shards=[str(directory)], train_weights=[], eval_shards="",
                               train_split="train", eval_split="test")


def check_instance_masks(url: str, *, max_member_bytes: int) -> None:
    """ConfigError unless the first sample of the shard ``url`` has an instance map (``<key>.inst.png``):
    found now rather than as every training sample counted corrupt."""
    first = next(iter(read_intact_shard(url, max_member_bytes=max_member_bytes)), None)
    if first is not None and INSTANCE_MEMBER not in first:
        raise ConfigError(f"detect.architecture=mask_rcnn needs instance masks, but the shards have none (sample "
                          f"{first.get('__key__')} of {url} has no .{INSTANCE_MEMBER}); write them with "
                          "`cvdist shards scenes` or use a box-only architecture (faster_rcnn, retinanet, fcos)")


def build_dense_data(data: DataConfig, *, scenes: SceneOptions, num_categories: int, rank: int, world_size: int,
                     micro_batch_size: int, seed: int, num_epochs: int, hflip: float,
                     scale_range: tuple[float, float], with_semantic: bool = False, mask_fill: int = 0,
                     with_masks: bool = False, repeat_factor_threshold: float = 0.0) -> DenseData:
    """The dense training stream and evaluation batches ``data`` describes, for this rank;
    ``with_semantic`` adds ``target["semantic"]``, whose crop padding is ``mask_fill``;
    ``with_masks``: targets carry per-instance ``masks`` (refused for shards without them);
    ``repeat_factor_threshold`` > 0: LVIS repeat-factor sampling (:mod:`cvdist.data.repeat_factor`)."""
    if len(data.train_shards) > 1:
        raise ConfigError("a dense task reads one data.train_shards source (a directory of dense shards)")
    if data.sampling != "instance":
        raise ConfigError(f"data.sampling={data.sampling!r} re-samples by image class; dense tasks use "
                          "data.sampling=instance")
    data = with_builtin_scenes(data, scenes=scenes, seed=seed)
    repeat: Optional[RepeatFactor] = None
    if repeat_factor_threshold > 0:  # f_c needs a first pass over the training annotations
        source, _ = resolve_source(data.train_shards[0], split=data.train_split, num_classes=num_categories,
                                   max_corrupt=data.max_corrupt, max_member_bytes=data.max_member_bytes,
                                   allow_pipe=data.allow_pipe, remote=build_remote_cache(data))
        repeat = build_repeat_factor(source.urls, threshold=repeat_factor_threshold, num_categories=num_categories,
                                     max_member_bytes=data.max_member_bytes)
    decoder = build_dense_decoder(num_categories=num_categories, train=True, size=data.image_size, hflip=hflip,
                                  scale_range=scale_range, max_image_pixels=data.max_image_pixels,
                                  with_semantic=with_semantic, mask_fill=mask_fill, with_masks=with_masks)
    stream, manifests = build_train_stream(
        shards=data.train_shards, weights=[], split=data.train_split, rank=rank, world_size=world_size,
        num_workers=data.num_workers, batch_size=micro_batch_size, seed=seed, decoder=decoder,
        shuffle_buffer=data.shuffle_buffer, num_samples=data.num_samples, sampling="instance",
        num_epochs=num_epochs, max_corrupt=data.max_corrupt, num_classes=num_categories,
        max_member_bytes=data.max_member_bytes, allow_pipe=data.allow_pipe, remote=build_remote_cache(data),
        sample_repeat=repeat, persistent_workers=data.persistent_workers)
    manifest = manifests[0]
    if manifest is None or manifest.dense is None:
        raise ConfigError(f"data.train_shards={data.train_shards} are not dense shards (their manifest.json has no "
                          "'dense' section); write them with `cvdist shards scenes`")
    # (model.num_classes against the manifest's categories: checked by resolve_source, as for every recipe)
    if with_masks:
        check_instance_masks(stream.sources[0].urls[0], max_member_bytes=data.max_member_bytes)
    eval_source, _ = resolve_source(data.eval_shards or data.train_shards[0], split=data.eval_split,
                                    num_classes=num_categories, max_corrupt=data.max_corrupt,
                                    max_member_bytes=data.max_member_bytes, allow_pipe=data.allow_pipe,
                                    remote=build_remote_cache(data))
    eval_decoder = build_dense_decoder(num_categories=num_categories, train=False, size=data.image_size,
                                       max_image_pixels=data.max_image_pixels, with_semantic=with_semantic,
                                       with_masks=with_masks)
    eval_batches = lambda: iterate_eval_shards(eval_source, rank=rank, world_size=world_size,  # noqa: E731
                                               batch_size=data.eval_batch_size, decoder=eval_decoder,
                                               max_corrupt=data.max_corrupt, max_member_bytes=data.max_member_bytes,
                                               remote=build_remote_cache(data))
    return DenseData(train=stream, eval_batches=eval_batches, category_names=list(manifest.class_names),
                     train_instance_counts=list(manifest.dense.instance_counts[data.train_split]),
                     category_repeat_factors=list(repeat.category_factors) if repeat else [])
