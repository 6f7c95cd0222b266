"""From shard specifications (what a user writes in the config) to the streams a recipe reads.

A source is a directory holding ``manifest.json`` (written by ``cvdist shards``), a path to a
manifest, or shard URLs: local paths, globs, brace patterns (``train-{000000..000099}.tar``),
``pipe:`` commands and ``http(s)://`` URLs, several joined with ``::``. Local shards without a
manifest are scanned once at start-up (samples per shard and per class); remote ones come with a
remote ``manifest.json`` (``https://host/dir/manifest.json``: the shards beside it) or need
``data.num_samples``.

Every reader here goes through :func:`cvdist.data.stream.read_shard_samples`: a damaged shard or
sample is skipped and counted with the shard named, and more than ``max_corrupt`` of them stop
with a one-line :class:`DataError`, in the start-up scan and in evaluation as in training.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from cvdist.data.decode import Decoder
from cvdist.data.manifest import MANIFEST_NAME, Manifest, load_manifest
from cvdist.data.remote_cache import RemoteCache
from cvdist.data.sharding import expand_shard_pattern, is_remote
from cvdist.data.stream import (DataError, SampleRepeat, ShardSet, ShardStream, collate_samples,
                                describe_sample_error, read_shard_samples)
from cvdist.data.tar_samples import DEFAULT_MAX_MEMBER_BYTES


def _manifest_path(spec: str) -> Optional[Path]:
    path = Path(spec)
    if path.is_dir():
        if not (path / MANIFEST_NAME).is_file():
            raise FileNotFoundError(f"{path} has no {MANIFEST_NAME}; write shards with `cvdist shards ...` or "
                                    "give the shard files themselves (e.g. DIR/train-*.tar)")
        return path / MANIFEST_NAME
    if path.name == MANIFEST_NAME:
        if not path.is_file():
            raise FileNotFoundError(f"manifest {path} does not exist")
        return path
    return None


def check_corrupt(errors: list[str], *, max_corrupt: int, where: str) -> None:
    """DataError (one line, naming the last damaged shard) once ``errors`` holds more than ``max_corrupt``."""
    if len(errors) > max_corrupt:
        raise DataError(f"{where}: {len(errors)} corrupt samples or shards, more than data.max_corrupt={max_corrupt} "
                        f"(last: {errors[-1]}); repair or remove the shard, or raise data.max_corrupt")


def read_intact_shard(url: str, *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Iterator[dict]:
    """Every raw sample of a shard that must be intact (a tool's own input, e.g. a benchmark's
    shards): the same reader as training, and a one-line DataError naming the shard on any damage."""
    errors: list[str] = []
    yield from read_shard_samples(url, errors, max_member_bytes=max_member_bytes)
    if errors:
        raise DataError(f"{errors[0]}; re-write the shard")


def _scan_local_shards(urls: list[str], *, num_classes: int, max_corrupt: int,
                       max_member_bytes: int) -> tuple[list[int], list[int]]:
    """Samples per shard and per class of local shards that came without a manifest. Damage is
    counted as in training: a shard's size is what can be read of it, and a sample whose label is
    unreadable or outside ``[0, num_classes)`` counts towards its shard's size (the stream's
    decoder skips it) but towards no class."""
    sizes, counts, errors = [], [0] * num_classes, []
    where = "scanning shards without a manifest"
    for url in urls:
        size = 0
        for sample in read_shard_samples(url, errors, max_member_bytes=max_member_bytes):
            size += 1
            try:
                label = int(sample["cls"])
                if not 0 <= label < num_classes:
                    raise ValueError(f"label {label} outside [0, model.num_classes={num_classes})")
                counts[label] += 1
            except (KeyError, ValueError) as error:
                errors.append(describe_sample_error(sample, error))
                check_corrupt(errors, max_corrupt=max_corrupt, where=where)
        sizes.append(size)
        check_corrupt(errors, max_corrupt=max_corrupt, where=where)
    for message in errors:
        print(f"[cvdist] {where}: skipped corrupt data: {message}", flush=True)
    return sizes, counts


def resolve_source(spec: str, *, split: str, num_classes: int, weight: float = 1.0, max_corrupt: int = 100,
                   max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
                   allow_pipe: bool = False,
                   remote: Optional[RemoteCache] = None) -> tuple[ShardSet, Optional[Manifest]]:
    """The shards of ``split`` named by ``spec`` (see module doc), with their counts if known.
    A manifest must list ``num_classes`` classes (``model.num_classes``): a clear error otherwise;
    local shards without one are scanned (labels outside ``[0, num_classes)`` are corrupt samples,
    ``max_corrupt`` and ``max_member_bytes`` apply); ``pipe:`` sources only with ``allow_pipe``
    (``data.allow_pipe``)."""
    if is_remote(spec) and not spec.startswith("pipe:") and spec.split("?")[0].endswith("/" + MANIFEST_NAME):
        return _remote_manifest_source(spec, split=split, num_classes=num_classes, weight=weight, remote=remote)
    manifest_path = _manifest_path(spec) if not is_remote(spec) else None
    if manifest_path is not None:
        manifest = load_manifest(manifest_path)
        _check_manifest(manifest, where=str(manifest_path), split=split, num_classes=num_classes)
        return ShardSet(urls=manifest.shard_paths(split), shard_sizes=manifest.shard_sample_counts(split),
                        class_counts=manifest.class_counts(split), weight=weight), manifest
    urls = expand_shard_pattern(spec, allow_pipe=allow_pipe)
    if any(is_remote(url) for url in urls):
        return ShardSet(urls=urls, weight=weight), None
    sizes, class_counts = _scan_local_shards(urls, num_classes=num_classes, max_corrupt=max_corrupt,
                                             max_member_bytes=max_member_bytes)
    return ShardSet(urls=urls, shard_sizes=sizes, class_counts=class_counts, weight=weight), None


def _check_manifest(manifest: Manifest, *, where: str, split: str, num_classes: int) -> None:
    if split not in manifest.splits:
        raise ValueError(f"{where} has no split {split!r}; it has {', '.join(manifest.splits)}")
    if manifest.num_classes != num_classes:
        raise ValueError(f"{where} lists {manifest.num_classes} classes but model.num_classes={num_classes}; "
                         f"set model.num_classes={manifest.num_classes} (or give other shards)")


def _remote_manifest_source(url: str, *, split: str, num_classes: int, weight: float,
                            remote: Optional[RemoteCache]) -> tuple[ShardSet, Manifest]:
    """The shards of ``split`` listed by a remote ``manifest.json``, as URLs beside it, with its
    counts (so a remote source needs no ``data.num_samples``)."""
    from urllib.parse import urljoin

    from cvdist.data.manifest import parse_remote_manifest
    from cvdist.data.remote_cache import default_remote_cache
    from cvdist.redact import redact_text

    manifest = parse_remote_manifest((remote or default_remote_cache()).fetch_small(url), url=url)
    _check_manifest(manifest, where=redact_text(url), split=split, num_classes=num_classes)
    urls = [urljoin(url, shard.file) for shard in manifest.split(split).shards]  # plain names (checked)
    return ShardSet(urls=urls, shard_sizes=manifest.shard_sample_counts(split),
                    class_counts=manifest.class_counts(split), weight=weight), manifest


def build_train_stream(*, shards: Sequence[str], weights: Sequence[float], split: str, rank: int, world_size: int,
                       num_workers: int, batch_size: int, seed: int, decoder: Decoder, shuffle_buffer: int,
                       num_samples: int, sampling: str, num_epochs: int, max_corrupt: int, num_classes: int,
                       max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES, multi_scale: Any = None,
                       allow_pipe: bool = False,
                       remote: Optional[RemoteCache] = None,
                       sample_repeat: Optional[SampleRepeat] = None,
                       persistent_workers: bool = True) -> tuple[ShardStream, list[Optional[Manifest]]]:
    """The training stream over one or several (weighted) sources of ``num_classes`` classes,
    and their manifests; ``http(s)://`` and ``pipe:`` shards are read through ``remote``'s cache;
    ``sample_repeat``: see :class:`ShardStream`."""
    if weights and len(weights) != len(shards):
        raise ValueError(f"data.train_weights has {len(weights)} values for {len(shards)} data.train_shards sources")
    resolved = [resolve_source(spec, split=split, weight=float(weights[i]) if weights else 1.0, num_classes=num_classes,
                               max_corrupt=max_corrupt, max_member_bytes=max_member_bytes, allow_pipe=allow_pipe,
                               remote=remote)
                for i, spec in enumerate(shards)]
    stream = ShardStream(sources=[source for source, _ in resolved], rank=rank, world_size=world_size,
                         num_workers=num_workers, batch_size=batch_size, seed=seed, decoder=decoder,
                         shuffle_buffer=shuffle_buffer, num_samples=num_samples or None, sampling=sampling,
                         num_epochs=num_epochs, max_corrupt=max_corrupt, multi_scale=multi_scale,
                         pin_memory=torch.cuda.is_available(), max_member_bytes=max_member_bytes, remote=remote,
                         sample_repeat=sample_repeat, persistent_workers=persistent_workers)
    return stream, [manifest for _, manifest in resolved]


def limit_samples(source: ShardSet, max_samples: int) -> ShardSet:
    """The first ``max_samples`` samples of ``source`` in shard order (for :func:`iterate_eval_shards`,
    which reads no more of each shard than its size says)."""
    if source.shard_sizes is None:
        raise ValueError("a sample limit needs the shards' sample counts: give a directory with a manifest "
                         "or local shards")
    urls, sizes, left = [], [], max_samples
    for url, size in zip(source.urls, source.shard_sizes):
        if left <= 0:
            break
        urls.append(url)
        sizes.append(min(size, left))
        left -= sizes[-1]
    return ShardSet(urls=urls, shard_sizes=sizes, weight=source.weight)


def iterate_eval_shards(source: ShardSet, *, rank: int, world_size: int, batch_size: int, decoder: Decoder,
                        max_corrupt: int = 100,
                        max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
                        remote: Optional[RemoteCache] = None) -> Iterator[dict[str, Any]]:
    """Every sample of ``source`` exactly once over all ranks, as batches with a ``valid`` mask.

    Shard ``i`` goes to rank ``i mod world_size``; with fewer shards than ranks, every rank reads
    every shard and keeps every ``world_size``-th sample. Every rank yields the same number of
    batches (padded with masked copies of a real sample): under ZeRO-3 each forward pass
    gathers parameters collectively, so a rank with fewer batches would leave the others waiting.
    Corrupt samples and shards are skipped and counted; more than ``max_corrupt`` stop with DataError.
    ``http(s)://`` and ``pipe:`` shards are read through ``remote``'s cache.
    """
    if source.shard_sizes is None:
        raise ValueError("evaluation shards need sample counts: give a directory with a manifest or local shards")
    if sum(source.shard_sizes) == 0:
        raise ValueError("the evaluation shards hold no samples")
    by_shard = len(source.urls) >= world_size
    if by_shard:
        per_rank = [sum(source.shard_sizes[r::world_size]) for r in range(world_size)]
        shards, stride, offset = list(zip(source.urls, source.shard_sizes))[rank::world_size], 1, 0
    else:
        total = sum(source.shard_sizes)
        per_rank = [len(range(r, total, world_size)) for r in range(world_size)]
        shards, stride, offset = list(zip(source.urls, source.shard_sizes)), world_size, rank
    num_batches = math.ceil(max(per_rank) / batch_size)
    errors: list[str] = []
    collate = getattr(decoder, "collate", collate_samples)  # dense decoders batch lists of targets
    items, template, yielded, position = [], None, 0, 0
    for url, size in shards:
        samples = read_shard_samples(url, errors, max_member_bytes=max_member_bytes, remote=remote)
        for sample in itertools.islice(samples, size):  # size: a limit_samples cut
            position += 1
            if (position - 1) % stride != offset:
                continue
            try:
                items.append(decoder(sample))
            except Exception as error:  # noqa: BLE001 - any decode failure is a corrupt sample
                errors.append(describe_sample_error(sample, error))
                continue
            template = template or items[0]
            if len(items) == batch_size:
                yield _with_mask(items, batch_size, template, collate)
                items, yielded = [], yielded + 1
        check_corrupt(errors, max_corrupt=max_corrupt, where=f"rank {rank} evaluation")
    if errors:
        print(f"[cvdist] rank {rank}: {len(errors)} corrupt evaluation samples or shards skipped "
              f"(first: {errors[0]})", flush=True)
    if template is None:
        raise DataError(f"rank {rank} could not read any evaluation sample (errors: {errors[:3]})")
    while yielded < num_batches:
        yield _with_mask(items, batch_size, template, collate)
        items, yielded = [], yielded + 1


def _with_mask(items: list, batch_size: int, template: Any, collate: Callable = collate_samples) -> dict[str, Any]:
    """Collate ``items`` padded to ``batch_size`` with masked copies of ``template``."""
    batch = collate(items + [template] * (batch_size - len(items)))
    batch["valid"] = torch.arange(batch_size) < len(items)
    return batch
