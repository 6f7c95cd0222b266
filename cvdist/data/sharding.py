"""Epoch plans: which shards each (rank, worker) reads, and how many batches each yields.

Pure functions of (shard sizes, seed, epoch, world size, workers, batch size), identical on
every rank, so they are tested without processes.

Epoch semantics (documented in the README):

- The shards are shuffled by ``(seed, epoch)``. ``num_slots x floor(num_shards / num_slots)``
  of them are dealt whole to the ``world_size x num_workers`` reader slots, largest first onto
  the emptiest slot (which balances uneven shards); the remaining ``num_shards mod num_slots``
  shards are read by every slot, each keeping every ``num_slots``-th sample (more reading,
  but no slot is left short because the shard count does not divide evenly). When shard sizes
  are so uneven that dealing whole shards would leave more than 10 % of the epoch unread, every
  slot reads every shard instead, keeping every ``num_slots``-th sample (perfect balance at
  ``num_slots`` times the reading).
- Every slot yields the same number of batches: ``floor(min slot samples / batch_size)``.
  Samples beyond that in larger slots are not seen this epoch (different ones each epoch); no
  sample is read twice within an epoch.
- A rank's batch ``i`` comes from its worker ``i mod num_workers`` (DataLoader's in-order
  round robin), so a rank yields ``num_workers x batches_per_slot`` batches, the same on every
  rank: a multi-node job cannot hang at an epoch end.
- Without sample counts (remote shards and no manifest) the epoch length comes from
  ``num_samples`` and each slot cycles through its shards as often as needed.
"""

from __future__ import annotations

import glob
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import braceexpand

from cvdist.redact import redact_text

REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "ais://", "hf://", "sftp://", "scp://")


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE_PREFIXES)


_LOGGED_COMMANDS: set[str] = set()


def check_pipe_command(url: str, *, allow_pipe: bool) -> None:
    """A ``pipe:`` source runs a shell command: refuse it unless the user opted in
    (``data.allow_pipe``), and log each command once per process when it is allowed."""
    if not url.startswith("pipe:"):
        return
    if not allow_pipe:
        raise ValueError(f"shard source {redact_text(url)!r} runs a shell command; set data.allow_pipe=true if you "
                         "trust the config it came from (or copy the shards to a local directory)")
    if url not in _LOGGED_COMMANDS:
        _LOGGED_COMMANDS.add(url)
        print(f"[cvdist] data.allow_pipe: reading shards from the shell command {redact_text(url[5:])!r}", flush=True)


def expand_shard_pattern(pattern: str, *, allow_pipe: bool = False) -> list[str]:
    """Brace patterns (``train-{000000..000099}.tar``), globs and ``::``-joined lists into URLs.

    Local names that match nothing are an error naming the pattern; remote URLs (``pipe:``,
    ``http(s)://``, read through :mod:`cvdist.data.remote_cache`; other schemes through
    webdataset's opener) are passed through, ``pipe:`` only with ``allow_pipe``
    (:func:`check_pipe_command`).
    """
    urls: list[str] = []
    for part in pattern.split("::"):
        for expanded in braceexpand.braceexpand(part):
            check_pipe_command(expanded, allow_pipe=allow_pipe)
            if is_remote(expanded):
                urls.append(expanded)
            elif any(ch in expanded for ch in "*?["):
                matched = sorted(glob.glob(expanded))
                if not matched:
                    raise FileNotFoundError(f"shard pattern {expanded!r} matches no files")
                urls.extend(matched)
            else:
                if not Path(expanded).is_file():
                    raise FileNotFoundError(f"shard {expanded!r} does not exist")
                urls.append(expanded)
    if not urls:
        raise FileNotFoundError(f"shard pattern {pattern!r} names no shards")
    return urls


@dataclass(frozen=True)
class SlotPlan:
    """What one reader slot (one DataLoader worker of one rank) reads in one epoch."""

    shard_indices: tuple[int, ...]
    """Shards this slot reads whole, in reading order."""
    shared_indices: tuple[int, ...] = ()
    """Shards every slot reads, this one keeping every ``sample_stride``-th sample of them ..."""
    sample_stride: int = 1
    sample_offset: int = 0
    """... starting at this one."""


@dataclass(frozen=True)
class EpochPlan:
    slots: tuple[SlotPlan, ...]
    """Indexed by ``rank * num_workers + worker``."""
    batches_per_slot: int
    dropped_samples: int
    """Samples of the epoch no slot will reach (for the log)."""


def shuffled_shards(num_shards: int, *, seed: int, epoch: int, shuffle: bool) -> list[int]:
    order = list(range(num_shards))
    if shuffle:
        random.Random(f"shards:{seed}:{epoch}").shuffle(order)
    return order


UNEVEN_FALLBACK = 0.10
"""Largest fraction of an epoch that dealing whole shards may leave unread."""


def plan_epoch(*, shard_sizes: Optional[Sequence[int]], num_shards: int, world_size: int, num_workers: int,
               batch_size: int, seed: int, epoch: int, shuffle: bool = True,
               num_samples: Optional[int] = None) -> EpochPlan:
    """The reading plan of one epoch for every slot (see module doc).

    ``shard_sizes`` (samples per shard, from the manifest) or ``num_samples`` (the epoch's
    length when sizes are unknown) must be given.
    """
    num_slots = world_size * max(num_workers, 1)
    order = shuffled_shards(num_shards, seed=seed, epoch=epoch, shuffle=shuffle)
    dealt = _plan(order, shard_sizes=shard_sizes, num_whole=num_shards // num_slots * num_slots, num_slots=num_slots,
                  batch_size=batch_size, num_samples=num_samples)
    plan = dealt
    if shard_sizes is not None and dealt.dropped_samples > UNEVEN_FALLBACK * sum(shard_sizes):
        strided = _plan(order, shard_sizes=shard_sizes, num_whole=0, num_slots=num_slots, batch_size=batch_size,
                        num_samples=num_samples)
        plan = strided if strided.dropped_samples < dealt.dropped_samples else dealt
    if plan.batches_per_slot == 0:
        raise ValueError(
            f"an epoch gives each of the {num_slots} reader slots (processes x workers) fewer than one batch "
            f"of {batch_size} ({sum(shard_sizes or [])} samples in {num_shards} shards); use fewer workers, "
            "a smaller batch or more data"
        )
    return plan


def _plan(order: list[int], *, shard_sizes: Optional[Sequence[int]], num_whole: int, num_slots: int,
          batch_size: int, num_samples: Optional[int]) -> EpochPlan:
    num_shards = len(order)
    whole, shared = order[:num_whole], tuple(order[num_whole:])
    sizes = shard_sizes if shard_sizes is not None else [1] * num_shards  # unknown: deal by count
    loads = [0] * num_slots
    assigned: list[list[int]] = [[] for _ in range(num_slots)]
    # Largest first onto the emptiest slot; ties broken by the shuffled order.
    for shard in sorted(whole, key=lambda s: -sizes[s]):
        slot = min(range(num_slots), key=lambda s: (loads[s], s))
        assigned[slot].append(shard)
        loads[slot] += sizes[shard]
    shared_total = sum(sizes[s] for s in shared)
    slots = tuple(SlotPlan(tuple(sorted(a, key=order.index)), shared, num_slots, index)
                  for index, a in enumerate(assigned))
    if shard_sizes is None:
        if not num_samples:
            raise ValueError("shards without a manifest need data.num_samples (samples per epoch)")
        return EpochPlan(slots, batches_per_slot=num_samples // (num_slots * batch_size), dropped_samples=0)
    loads = [load + len(range(index, shared_total, num_slots)) for index, load in enumerate(loads)]
    batches = min(loads) // batch_size
    if num_samples:
        batches = min(batches, num_samples // (num_slots * batch_size))
    return EpochPlan(slots, batches_per_slot=batches, dropped_samples=sum(shard_sizes) - batches * batch_size * num_slots)


def consumed_per_worker(batches_consumed: int, num_workers: int) -> list[int]:
    """Batches each worker has delivered after ``batches_consumed`` in-order round-robin batches."""
    workers = max(num_workers, 1)
    return [len(range(w, batches_consumed, workers)) for w in range(workers)]
