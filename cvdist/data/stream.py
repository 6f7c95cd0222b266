"""The streaming pipeline every recipe reads: WebDataset shards -> decoded, augmented batches.

Per reader slot (one DataLoader worker of one rank, see :mod:`cvdist.data.sharding`):

    tar bytes -> samples (image / label bytes only) -> class re-sampling -> shuffle buffer
      -> [skip what a checkpoint says was consumed] -> decode + transform -> batch

Everything random is seeded from ``(seed, epoch, slot)`` and, for augmentation, from the
sample's position in the slot's stream, so a resumed run rebuilds the exact stream and skips the
consumed part without decoding it: the continuation equals the uninterrupted run's remainder.
Corrupt data (an undecodable or oversized image, a missing or out-of-range label, a damaged or
truncated tar, an oversized member, a shard that cannot be opened) is skipped and counted, with the
shard named; no exception of any kind raised while reading or decoding a sample leaves a worker.
More than ``max_corrupt`` events in an epoch on a rank stop the run with :class:`DataError`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cvdist.data.batch_collate import BatchStacking, collate_samples
from cvdist.data.batch_ring import BatchRing
from cvdist.data.decode import Decoder
from cvdist.data.setup_channel import SetupChannel
from cvdist.data.stream_order import PASS_END, SampleRepeat, mixed, resampled, shuffled
from cvdist.data.elastic import ElasticEpoch, check_states, elastic_slot_stream, plan_elastic_epoch, worker_shares
from cvdist.data.remote_cache import (RemoteCache, RemoteShardError, default_remote_cache, is_cached_source,
                                      open_remote)
from cvdist.data.resampling import repeat_factors
from cvdist.data.reused_buffers import ReusedBuffers
from cvdist.data.sharding import EpochPlan, SlotPlan, consumed_per_worker, plan_epoch
from cvdist.data.tar_samples import DEFAULT_MAX_MEMBER_BYTES, iter_samples
from cvdist.redact import redact_text


class DataError(RuntimeError):
    """The data cannot be read as configured (too much corrupt data, a slot ran dry)."""


@dataclass
class ShardSet:
    """One data source: shard URLs, and what the manifest knows about them."""

    urls: list[str]
    shard_sizes: Optional[list[int]] = None
    """Samples per shard (None for remote shards without a manifest)."""
    class_counts: Optional[list[int]] = None
    """Samples per class (needed for class-aware re-sampling)."""
    weight: float = 1.0
    """Mixing weight among several sources."""


@dataclass
class SlotProgress:
    """Sent by a worker with every batch: where its stream stands."""

    worker: int
    consumed: int
    """Samples taken out of the shuffle buffer so far this epoch (decoded or skipped)."""
    corrupt: int
    """Corrupt samples and shard errors met so far this epoch."""
    new_errors: list[str]
    """Descriptions of the errors since the previous batch (for the log)."""
    new_retries: int = 0
    """Remote shard fetches retried since the previous batch (:mod:`cvdist.data.remote_cache`)."""
    ring_slot: Optional[int] = None
    """The :class:`BatchRing` slot the batch's images were stacked into (None: a fresh segment)."""


def _open_shard(url: str, remote: Optional[RemoteCache]):
    if is_cached_source(url):
        return open_remote(url, remote)  # http(s) and pipe: through the local shard cache
    from webdataset.gopen import gopen  # webdataset's own opener: files, other remote schemes

    return gopen(url, "rb")


def read_shard_samples(url: str, errors: list[str], *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
                       remote: Optional[RemoteCache] = None) -> Iterator[dict]:
    """Raw samples of one shard, each with its ``__url__``; any error while opening or reading it
    (a damaged tar, an I/O error, a failing ``pipe:`` command, a remote shard that could not be
    fetched through ``remote``, ...) ends the shard and is appended to ``errors`` with the shard
    named: a damaged file is counted, never a crash."""
    try:
        with _open_shard(url, remote) as stream:
            for sample in iter_samples(stream, max_member_bytes=max_member_bytes):
                sample["__url__"] = url
                yield sample
    except Exception as error:  # noqa: BLE001 - whatever the damage, this shard ends here, counted
        errors.append(_one_line(f"{url}: {type(error).__name__}: {error}"))
        if remote is not None and is_cached_source(url) and not isinstance(error, RemoteShardError):
            remote.discard(url)  # a damaged cached copy is fetched again next time, not trusted


_MAX_LINE = 2000
"""Characters of an error line kept (a hostile member name can be 1 MiB long)."""


def _one_line(text: str) -> str:
    # Member names come from the shard: a newline in one must not split a log line or an error.
    # Shard URLs and pipe: commands may hold credentials: redacted here, where every error line is
    # made (before shortening, so a cut cannot leave half a secret).
    text = redact_text(text.replace("\r", "\\r").replace("\n", "\\n"))
    if len(text) > _MAX_LINE:
        text = f"{text[:_MAX_LINE - 300]} ... [{len(text) - _MAX_LINE + 300} characters left out] ... {text[-200:]}"
    return text


def describe_sample_error(sample: dict, error: BaseException) -> str:
    """One line naming the shard and sample a decoding error came from, and the error."""
    return _one_line(f"{sample.get('__url__', '?')}: sample {sample.get('__key__')}: {type(error).__name__}: {error}")


def _slot_samples(shard_set: ShardSet, slot: SlotPlan, errors: list[str], max_member_bytes: int,
                  remote: Optional[RemoteCache]) -> Iterator[dict]:
    """Raw samples of one source for one slot, in plan order, cycling through the shards until
    the consumer stops. A planned slot only reaches a second pass when samples were lost to
    corrupt data; then a few samples repeat rather than the epoch coming up short, which
    would leave the other ranks waiting."""
    while True:
        yielded, position = 0, 0
        for shard in slot.shard_indices:
            for sample in read_shard_samples(shard_set.urls[shard], errors, max_member_bytes=max_member_bytes,
                                             remote=remote):
                yielded += 1
                yield sample
        for shard in slot.shared_indices:
            for sample in read_shard_samples(shard_set.urls[shard], errors, max_member_bytes=max_member_bytes,
                                             remote=remote):
                if position % slot.sample_stride == slot.sample_offset:
                    yielded += 1
                    yield sample
                position += 1
        if yielded == 0:
            return
        yield PASS_END


@dataclass
class _EpochSetup:
    epoch: int
    plans: list[EpochPlan]
    batches_per_slot: int
    skip: list[int]
    already_yielded: list[int]
    rotation: int
    factors: list[Optional[list[float]]] = field(default_factory=list)
    """Per source: this epoch's per-class repeat factors, or None (instance sampling, or the
    dataset's fixed per-sample ``sample_repeat``, which reaches the workers once, with the dataset)."""
    elastic: Optional[ElasticEpoch] = None
    """Set for an epoch resumed on another slot layout (:mod:`cvdist.data.elastic`)."""
    old_plans: list[EpochPlan] = field(default_factory=list)
    """The old layout's plans of that epoch (its slots' streams are what the new slots read)."""
    use_ring: bool = False
    """Whether workers stack into :class:`BatchRing` buffers (only where the main process reads
    each batch once, to normalise it, and so can hand the buffer back)."""


class ShardDataset(IterableDataset):
    """Worker side of :class:`ShardStream` (configured per epoch by it)."""

    def __init__(self, *, sources: list[ShardSet], rank: int, num_workers: int, batch_size: int, seed: int,
                 shuffle_buffer: int, decoder: Decoder, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
                 max_corrupt: int = 100, remote: Optional[RemoteCache] = None,
                 sample_repeat: Optional[SampleRepeat] = None):
        self.sources, self.rank, self.num_workers = sources, rank, max(num_workers, 1)
        self.sample_repeat = sample_repeat
        self.remote = remote
        self.max_member_bytes, self.max_corrupt = max_member_bytes, max_corrupt
        self.batch_size, self.seed, self.shuffle_buffer, self.decoder = batch_size, seed, shuffle_buffer, decoder
        self.setup: Optional[_EpochSetup] = None
        self.channel: Optional[SetupChannel] = None
        """Set when workers persist across epochs: each epoch's setup arrives through it."""
        self.ring: Optional[BatchRing] = None
        """The workers' reused batch buffers (set by ShardStream before they start)."""
        self.local_buffers = ReusedBuffers()
        """Without workers: the buffers batches are stacked into, reused once normalised and dropped."""

    def __iter__(self) -> Iterator[tuple[dict, SlotProgress]]:
        info = get_worker_info()
        published = self.channel.read() if self.channel is not None and info is not None else None
        setup = published or self.setup
        worker = ((info.id if info else 0) + setup.rotation) % self.num_workers
        slot = self.rank * self.num_workers + worker
        errors: list[str] = []
        if setup.elastic is None:
            stream = self._slot_stream(setup.plans, setup, slot, errors)
        else:
            stream = elastic_slot_stream(setup.elastic, slot=slot, num_workers=self.num_workers,
                                         batch_size=self.batch_size, num_slots=len(setup.plans[0].slots),
                                         open_old_slot=lambda old: self._slot_stream(setup.old_plans, setup, old, errors))
        # uint8 samples where the decoder can normalise per batch (ShardStream.iterate does it)
        decode = self.decoder.decode_pixels if getattr(self.decoder, "normaliser", None) else self.decoder
        collate = getattr(self.decoder, "collate", collate_samples)  # dense decoders batch lists of targets
        stacking = BatchStacking.choose(reusable=setup.use_ring and collate is collate_samples,
                                        worker_id=info.id if info is not None else None, ring=self.ring,
                                        local=self.local_buffers)
        consumed, reported, items = 0, 0, []
        retries_reported = self.remote.num_retries if self.remote else 0  # (a worker's copy starts at the parent's)
        remaining = setup.batches_per_slot - setup.already_yielded[worker]
        for sample in stream:
            if remaining <= 0:
                return
            consumed += 1
            if consumed <= setup.skip[worker]:
                continue  # consumed before the checkpoint: not decoded again
            # Augmentation draws from torch's RNG: seed it per sample position, so skipping
            # (on resume) does not shift the random draws of later samples.
            # (the CPU generator directly: torch.manual_seed also queues CUDA seeding, ~1 ms a call)
            torch.default_generator.manual_seed(hash((self.seed, setup.epoch, slot, consumed)) % (2**63))
            try:
                items.append(decode(sample))
            except Exception as error:  # noqa: BLE001 - any decode failure is a corrupt sample
                errors.append(describe_sample_error(sample, error))
                if len(errors) > self.max_corrupt:  # samples that read but never decode: no batch would end it
                    raise DataError(f"reader slot {slot}: {len(errors)} corrupt samples or shards, more than "
                                    f"data.max_corrupt={self.max_corrupt} (last: {errors[-1]})")
            if len(items) == self.batch_size:
                remaining -= 1
                retries = self.remote.num_retries if self.remote else 0
                batch, ring_slot = stacking.collate(items, collate)
                yield batch, SlotProgress(worker, consumed, len(errors), errors[reported:],
                                          new_retries=retries - retries_reported, ring_slot=ring_slot)
                reported, items, retries_reported = len(errors), [], retries
        if remaining > 0:
            detail = "; ".join(errors[-3:])
            raise DataError(f"reader slot {slot} ran out of samples {remaining} batches before the epoch end "
                            f"(shards shorter than the manifest says, or unreadable){': ' + detail if detail else ''}")


    def _slot_stream(self, plans: list[EpochPlan], setup: _EpochSetup, slot: int, errors: list[str]) -> Iterator[dict]:
        """Raw samples of reader ``slot`` under ``plans``: read, re-sampled, mixed, shuffled (all seeded
        from ``(seed, epoch, slot)``)."""
        tag = f"{self.seed}:{setup.epoch}:{slot}"
        streams = [
            resampled(_slot_samples(source, plan.slots[slot], errors, self.max_member_bytes, self.remote),
                      self.sample_repeat or factors, random.Random(f"resample:{tag}:{i}"), errors)
            for i, (source, plan, factors) in enumerate(zip(self.sources, plans, setup.factors))
        ]
        merged = mixed(streams, [s.weight for s in self.sources], random.Random(f"mix:{tag}"))
        return shuffled(merged, self.shuffle_buffer, random.Random(f"shuffle:{tag}"))


def _as_is(item: Any) -> Any:
    """The DataLoader's per-item conversion: none (the batches are tensors already; the default
    walks every key string of every batch)."""
    return item


class ShardStream:
    """Main-process side of the pipeline: the ``BatchSource`` the engine iterates.

    Every rank yields exactly :meth:`batches_in_epoch` batches per epoch (see
    :mod:`cvdist.data.sharding`). :meth:`state` / :meth:`load_state` carry the exact position
    through a checkpoint; it is per rank, so a resume needs the same processes and workers.
    ``sample_repeat`` (instead of a class ``sampling`` scheme) repeats each sample by its own
    factor, e.g. LVIS repeat factors (:mod:`cvdist.data.repeat_factor`).
    """

    def __init__(self, *, sources: list[ShardSet], rank: int, world_size: int, num_workers: int, batch_size: int,
                 seed: int, decoder: Decoder, shuffle: bool = True, shuffle_buffer: int = 1000,
                 num_samples: Optional[int] = None, sampling: str = "instance", num_epochs: int = 1,
                 max_corrupt: int = 100, multi_scale: Any = None, pin_memory: bool = False,
                 max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES, remote: Optional[RemoteCache] = None,
                 sample_repeat: Optional[SampleRepeat] = None, persistent_workers: bool = True):
        if not sources:
            raise ValueError("no data sources given")
        if sample_repeat is not None and sampling != "instance":
            raise ValueError(f"data.sampling={sampling!r} and a per-sample repeat factor both re-sample; use one")
        if sampling != "instance" and any(s.class_counts is None for s in sources):
            raise ValueError(f"data.sampling={sampling!r} needs class counts from a manifest; "
                             "write the shards with `cvdist shards` or use data.sampling=instance")
        if len(sources) > 1 and not num_samples and any(s.shard_sizes is None for s in sources):
            raise ValueError("mixing sources without manifests needs data.num_samples (samples per epoch)")
        self.sources, self.rank, self.world_size = sources, rank, world_size
        self.num_workers, self.batch_size, self.seed = num_workers, batch_size, seed
        self.shuffle, self.num_samples, self.sampling, self.num_epochs = shuffle, num_samples, sampling, num_epochs
        self.max_corrupt, self.multi_scale, self.pin_memory = max_corrupt, multi_scale, pin_memory
        self.sample_repeat = sample_repeat
        self.dataset = ShardDataset(sources=sources, rank=rank, num_workers=num_workers, batch_size=batch_size,
                                    seed=seed, shuffle_buffer=shuffle_buffer if shuffle else 0, decoder=decoder,
                                    max_member_bytes=max_member_bytes, max_corrupt=max_corrupt,
                                    remote=remote or default_remote_cache(),  # (one object: it counts retries)
                                    sample_repeat=sample_repeat)
        self._logical_workers = max(num_workers, 1)
        self._position = {"epoch": 0, "batch": 0, "consumed": [0] * self._logical_workers, "corrupt": 0}
        self._resume: Optional[dict] = None
        self._elastic: Optional[ElasticEpoch] = None
        self.persistent_workers, self._loader = persistent_workers, None
        self._loader_ring: Optional[BatchRing] = None
        self._normalise_here = True  # False once the engine normalises on the device (take_normaliser)
        self.total_corrupt = 0
        self.total_retries = 0
        self.batches_in_epoch(0)  # fail now, not at the first batch, if the data is too small

    def _plans(self, epoch: int, layout: Optional[tuple[int, int, int]] = None) -> tuple[list[EpochPlan], int]:
        """The epoch's plans and batches per slot, for this stream's layout or ``(processes, workers,
        batch size)``."""
        world_size, num_workers, batch_size = layout or (self.world_size, self.num_workers, self.batch_size)
        plans = [plan_epoch(shard_sizes=s.shard_sizes, num_shards=len(s.urls), world_size=world_size,
                            num_workers=num_workers, batch_size=batch_size, seed=self.seed, epoch=epoch,
                            shuffle=self.shuffle, num_samples=None if len(self.sources) > 1 else self.num_samples)
                 for s in self.sources]
        if len(plans) == 1:
            return plans, plans[0].batches_per_slot
        num_slots = world_size * max(num_workers, 1)
        total = self.num_samples or sum(sum(s.shard_sizes) for s in self.sources)
        return plans, total // (num_slots * batch_size)

    def batches_in_epoch(self, epoch: int) -> int:
        """Batches this rank (and every rank) yields in ``epoch``."""
        if self._elastic is not None and self._elastic.epoch == epoch:
            return self._elastic.start_batch + self._elastic.batches
        return self._logical_workers * self._plans(epoch)[1]

    def state(self) -> dict:
        """The exact position after the last batch handed out (stored per rank in checkpoints), with
        this stream's slot layout (an elastic resume needs it) and, inside an elastically resumed
        epoch, that epoch's plan."""
        state = {**self._position, "consumed": list(self._position["consumed"]), "world_size": self.world_size,
                 "num_workers": self._logical_workers, "batch_size": self.batch_size}
        if self._elastic is not None and self._elastic.epoch == self._position["epoch"]:
            state["elastic"] = self._elastic.to_state()
        return state

    def layout_changed(self, state: dict) -> bool:
        """Whether ``state`` was written with another slot layout (processes, workers, batch size)."""
        return any(key in state and state[key] != value for key, value in
                   (("world_size", self.world_size), ("num_workers", self._logical_workers),
                    ("batch_size", self.batch_size)))

    def load_elastic_state(self, states: list[dict]) -> int:
        """Continue the epoch of every old rank's ``states`` on this layout (:mod:`cvdist.data.elastic`);
        returns the batch index at which this rank continues."""
        try:
            check_states(states)
        except ValueError as error:
            raise DataError(str(error)) from None
        first = states[0]
        old_layout = (first["world_size"], first["num_workers"], first["batch_size"])
        self._elastic = plan_elastic_epoch(states, old_batches_per_slot=self._plans(first["epoch"], old_layout)[1],
                                           world_size=self.world_size, num_workers=self._logical_workers,
                                           batch_size=self.batch_size)
        self._resume = {"epoch": first["epoch"], "batch": self._elastic.start_batch,
                        "consumed": [0] * self._logical_workers, "corrupt": 0}
        return self._elastic.start_batch

    def load_state(self, state: dict) -> None:
        """Continue from ``state`` at the next :meth:`iterate` of that epoch and batch."""
        if "elastic" in state:
            self._elastic = ElasticEpoch.from_state(state["elastic"])
        if len(state.get("consumed", [])) != self._logical_workers:
            raise DataError(f"the checkpoint's data position was written with {len(state.get('consumed', []))} "
                            f"DataLoader workers per process, now {self._logical_workers}: set data.num_workers "
                            "back to resume mid-epoch")
        self._resume = state

    def _skip_for(self, epoch: int, start_batch: int) -> tuple[list[int], int]:
        resume = self._resume
        if resume is not None and resume["epoch"] == epoch and resume["batch"] == start_batch:
            self._resume = None
            return list(resume["consumed"]), int(resume["corrupt"])
        if start_batch != 0:
            raise DataError(f"no data position recorded for epoch {epoch}, batch {start_batch}; "
                            "cannot resume mid-epoch exactly")
        return [0] * self._logical_workers, 0

    def iterate(self, *, epoch: int, start_batch: int = 0) -> Iterator[dict]:
        """This rank's batches of ``epoch`` from ``start_batch`` on."""
        plans, batches_per_slot = self._plans(epoch)
        skip, corrupt_before = self._skip_for(epoch, start_batch)
        # (a sample_repeat table is the dataset's, sent to the workers once, not republished per epoch)
        factors = [repeat_factors(s.class_counts, scheme=self.sampling, epoch=epoch, num_epochs=self.num_epochs)
                   if self.sampling != "instance" else None for s in self.sources]
        workers = self._logical_workers
        normaliser = getattr(self.dataset.decoder, "normaliser", None)
        normalise_here = normaliser is not None and self._normalise_here
        self.dataset.setup = _EpochSetup(epoch=epoch, plans=plans, batches_per_slot=batches_per_slot, skip=skip,
                                         already_yielded=consumed_per_worker(start_batch, workers),
                                         rotation=start_batch % workers, factors=factors,
                                         use_ring=normalise_here)
        if self._elastic is not None and self._elastic.epoch == epoch:
            self._set_up_elastic(self.dataset.setup, start_batch)
        loader = self._loader_for(self.dataset.setup)
        self._position = {"epoch": epoch, "batch": start_batch, "consumed": skip, "corrupt": corrupt_before}
        corrupt_by_worker = [0] * workers
        for batch, progress in loader:
            self._position["consumed"][progress.worker] = progress.consumed
            corrupt_by_worker[progress.worker] = progress.corrupt
            self._note_corrupt(progress.new_errors, corrupt_before + sum(corrupt_by_worker))
            self.total_retries += progress.new_retries
            if normalise_here:
                received = batch["image"]
                batch["image"] = normaliser(received)
                if progress.ring_slot is not None:  # read for the last time: the worker may refill it
                    self.dataset.ring.release(progress.ring_slot, batch=received, result=batch["image"])
            if self.multi_scale is not None and torch.is_tensor(batch["image"]):
                from cvdist.data.transforms import resize_batch

                batch["image"] = resize_batch(batch["image"], self.multi_scale.size_for(epoch, self._position["batch"]))
            self._position["batch"] += 1
            yield batch
        expected = self.batches_in_epoch(epoch)
        if self._position["batch"] != expected:
            raise DataError(f"rank {self.rank} got {self._position['batch']} batches in epoch {epoch}, "
                            f"expected {expected}")

    def _set_up_elastic(self, setup: _EpochSetup, start_batch: int) -> None:
        """``setup`` for the elastically resumed epoch (see :func:`cvdist.data.elastic.worker_shares`)."""
        elastic = self._elastic
        setup.batches_per_slot, setup.already_yielded, setup.rotation = worker_shares(
            elastic, start_batch=start_batch, num_workers=self._logical_workers)
        old_layout = (elastic.old_world_size, elastic.old_num_workers, elastic.old_batch_size)
        setup.old_plans, setup.elastic = self._plans(elastic.epoch, old_layout)[0], elastic

    def _loader_for(self, setup: _EpochSetup) -> DataLoader:
        """The DataLoader of an epoch: with ``persistent_workers``, one whose workers live across epochs
        and read each epoch's ``setup`` from the shared channel; else a new one per epoch."""
        persistent = self.persistent_workers and self.num_workers > 0
        if persistent:
            if self.dataset.channel is None:
                self.dataset.channel = SetupChannel()
            persistent = self.dataset.channel.publish(setup)  # (too large: this epoch gets its own workers)
        if persistent and self._loader is not None:
            self.dataset.ring = self._loader_ring  # (an epoch with its own workers may have replaced it)
            return self._loader
        prefetch = 4 if self.num_workers else None
        # New workers, new buffers: a worker has at most ~prefetch batches waiting, one more filling.
        self.dataset.ring = BatchRing(num_workers=self.num_workers, slots_per_worker=prefetch + 2) if prefetch else None
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers, collate_fn=_as_is,
                            pin_memory=self.pin_memory, prefetch_factor=prefetch, persistent_workers=persistent)
        if persistent:
            self._loader, self._loader_ring = loader, self.dataset.ring
        return loader

    def take_normaliser(self) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """Hand the per-batch normalisation to the caller (the engine runs it on the device after the
        copy): from now on batches keep uint8 images. None (and nothing changes) when the decoder has
        no separate normalisation or batches are resized per batch (``multi_scale`` works on floats)."""
        normaliser = getattr(self.dataset.decoder, "normaliser", None)
        if normaliser is None or self.multi_scale is not None:
            return None
        self._normalise_here = False
        return normaliser

    def _note_corrupt(self, messages: list[str], epoch_total: int) -> None:
        for message in messages:
            print(f"[cvdist] rank {self.rank}: skipped corrupt data: {message}", flush=True)
        self.total_corrupt += len(messages)
        self._position["corrupt"] = epoch_total
        if epoch_total > self.max_corrupt:
            raise DataError(f"rank {self.rank} met {epoch_total} corrupt samples or shards this epoch, more than "
                            f"data.max_corrupt={self.max_corrupt}; check the shards (last: {messages[-1:]}) "
                            "or raise the limit")

    def metrics(self) -> dict[str, float]:
        """Counters for the training log (summed over ranks by the engine)."""
        return {"data/corrupt_skipped": float(self.total_corrupt), "data/remote_retries": float(self.total_retries)}
