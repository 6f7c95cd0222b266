"""Elastic mid-epoch resume: finish an epoch on another number of processes or DataLoader workers.

A checkpoint records, per rank, how many items each reader slot (one worker of one rank) took
from its stream this epoch (:class:`cvdist.data.stream.ShardStream` state). Every slot's stream
is rebuilt exactly from ``(seed, epoch, slot)`` and the epoch's plan, so the samples the old run
still had to read are known without having read them: for old slot ``s``, the
``need[s] = (its batches left) x (its batch size)`` items after its ``consumed[s]``.

The resumed epoch reads exactly those items, nothing else, on the new slots: the *pool* is the
old slots' remaining items concatenated in slot order, and new slot ``k`` (rank-major, like the
old ones) takes the contiguous range of the pool its batches need. So across the new run every
sample the old plan still had to read is read at most once, and the union of what the two runs read
in the epoch is the uninterrupted run's (tested). Each rank yields the same number of batches:
``floor(pool / (processes x micro-batch))`` per rank, i.e. the epoch keeps its sample count and
the global batch, the few samples of a remainder that does not fill a global batch are dropped.
A new slot that meets corrupt samples in its range (they are skipped and counted, as always) takes
the missing ones from beyond the old plan's end of one old slot's stream, a region no other new
slot reads, so nothing is read twice and no rank comes up short (when that old slot has no unread
samples left, its stream starts a second pass, as an uninterrupted run's slot does).

What is exact: the set of samples per epoch. What is not: their order and augmentation draws
(slots, shuffle buffers and per-sample seeds depend on the slot layout), and the RNG streams.
The same process and worker count resumes bit-exactly through the ordinary path instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import islice
from typing import Callable, Iterator

from cvdist.data.sharding import consumed_per_worker

GEOMETRY_KEYS = ("world_size", "num_workers", "batch_size")


@dataclass(frozen=True)
class ElasticEpoch:
    """How the rest of one epoch is read after a resume with another slot layout."""

    epoch: int
    old_world_size: int
    old_num_workers: int
    old_batch_size: int
    old_consumed: tuple[int, ...]
    """Items each old slot took from its stream (slot = rank * workers + worker)."""
    old_need: tuple[int, ...]
    """Items each old slot still had to deliver in the epoch (batches left x batch size)."""
    start_batch: int
    """The new per-rank batch index at which the resumed part of the epoch begins."""
    batches: int
    """Batches each new rank yields in the resumed part of the epoch."""

    def to_state(self) -> dict:
        return {**asdict(self), "old_consumed": list(self.old_consumed), "old_need": list(self.old_need)}

    @classmethod
    def from_state(cls, state: dict) -> "ElasticEpoch":
        return cls(**{**state, "old_consumed": tuple(state["old_consumed"]), "old_need": tuple(state["old_need"])})


def plan_elastic_epoch(states: list[dict], *, old_batches_per_slot: int, world_size: int, num_workers: int,
                       batch_size: int) -> ElasticEpoch:
    """The resumed epoch from every old rank's data ``states`` (rank order) and the new layout.

    ``old_batches_per_slot``: batches each old slot delivers in the epoch (the old plan's)."""
    first = states[0]
    old_workers, old_batch = first["num_workers"], first["batch_size"]
    batch_index = first["batch"]
    yielded = consumed_per_worker(batch_index, old_workers)
    consumed = tuple(count for state in states for count in state["consumed"])
    need = tuple((old_batches_per_slot - yielded[slot % old_workers]) * old_batch for slot in range(len(consumed)))
    per_rank_step = world_size * batch_size  # samples one new batch index takes over all ranks
    done_samples = batch_index * first["world_size"] * old_batch
    return ElasticEpoch(epoch=first["epoch"], old_world_size=first["world_size"], old_num_workers=old_workers,
                        old_batch_size=old_batch, old_consumed=consumed, old_need=need,
                        start_batch=-(-done_samples // per_rank_step), batches=sum(need) // per_rank_step)


def check_states(states: list[dict]) -> None:
    """ValueError naming the fix when ``states`` cannot drive an elastic resume."""
    if any(key not in state for state in states for key in GEOMETRY_KEYS):
        raise ValueError("the checkpoint's data position was written by an older cvdist without its slot layout; "
                         "resume with the same processes and data.num_workers, or from an epoch's start")
    if len({(s["epoch"], s["batch"], s["num_workers"], s["batch_size"]) for s in states}) != 1:
        raise ValueError("the checkpoint's ranks disagree on the data position; it cannot be resumed elastically")
    if any("elastic" in state for state in states):
        raise ValueError("this checkpoint is itself in an epoch resumed on another layout; resume it with that "
                         "layout's processes and data.num_workers until the epoch ends")


def slot_share(plan: ElasticEpoch, *, slot: int, num_workers: int, batch_size: int, num_slots: int) -> tuple[int, int]:
    """``(offset, count)``: the pool items new ``slot`` reads (contiguous, slots in rank-major order)."""
    per_worker = consumed_per_worker(plan.batches, num_workers)
    counts = [per_worker[k % num_workers] * batch_size for k in range(num_slots)]
    return sum(counts[:slot]), counts[slot]


def worker_shares(plan: ElasticEpoch, *, start_batch: int, num_workers: int) -> tuple[int, list[int], int]:
    """``(batches_per_slot, already_yielded per worker, rotation)`` for a data loader that starts the
    resumed part of the epoch at ``start_batch`` (later than ``plan.start_batch`` when a checkpoint
    inside the resumed part is resumed on the same layout): each worker yields its round-robin share
    of ``plan.batches``."""
    done = start_batch - plan.start_batch
    total, before = consumed_per_worker(plan.batches, num_workers), consumed_per_worker(done, num_workers)
    batches_per_slot = max(total)
    return batches_per_slot, [batches_per_slot - t + b for t, b in zip(total, before)], done % num_workers


def _pool_range(plan: ElasticEpoch, offset: int, count: int,
                open_old_slot: Callable[[int], Iterator[dict]]) -> Iterator[dict]:
    """Items ``[offset, offset + count)`` of the pool (old slots' remaining items, concatenated)."""
    start = 0
    for old_slot, (consumed, need) in enumerate(zip(plan.old_consumed, plan.old_need)):
        low, high = max(offset, start), min(offset + count, start + need)
        if low < high:  # this old slot's remaining items overlap the range
            stream = open_old_slot(old_slot)
            yield from islice(stream, consumed + low - start, consumed + high - start)
        start += need


def _overflow(plan: ElasticEpoch, slot: int, num_slots: int,
              open_old_slot: Callable[[int], Iterator[dict]]) -> Iterator[dict]:
    """Items beyond the old plan's end of old slot ``slot % old slots``, shared by stride among the
    new slots mapped to it (for a range that lost samples to corrupt data)."""
    old_slots = len(plan.old_consumed)
    old_slot = slot % old_slots
    sharing = len(range(old_slot, num_slots, old_slots))
    start = plan.old_consumed[old_slot] + plan.old_need[old_slot]
    beyond = islice(open_old_slot(old_slot), start, None)
    yield from islice(beyond, slot // old_slots, None, sharing)


def elastic_slot_stream(plan: ElasticEpoch, *, slot: int, num_workers: int, batch_size: int, num_slots: int,
                        open_old_slot: Callable[[int], Iterator[dict]]) -> Iterator[dict]:
    """The raw items new ``slot`` reads in the resumed epoch: its pool range, then its overflow."""
    offset, count = slot_share(plan, slot=slot, num_workers=num_workers, batch_size=batch_size, num_slots=num_slots)
    yield from _pool_range(plan, offset, count, open_old_slot)
    yield from _overflow(plan, slot, num_slots, open_old_slot)
