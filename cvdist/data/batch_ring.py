"""Shared-memory batch buffers that a DataLoader worker fills again once the main process is done.

Why: a worker's batch reaches the main process in shared memory. Stacked into a fresh segment
each time, every batch costs the worker a new segment (its pages faulted in as they are first
written: ~37 faults per 224 px photo) and the main process a new mapping of it (faulted in again
as it is read), and both an unmap when it is freed. Measured on 400 x 500 JPEGs with
RandomResizedCrop(224), one persistent worker: 1.6-2.0 ms of worker CPU and 0.21 ms of main
process CPU per image with fresh segments, 1.36-1.64 and 0.14-0.17 ms stacking into reused ones.

How: each worker keeps ``slots_per_worker`` buffers. A slot's state lives in a small shared array
(behind its lock, which also orders the memory accesses of the two processes): the worker takes
a free slot, stacks the batch into its buffer and sends it as usual (torch sends the same segment
again; the main process finds its mapping in torch's cache of shared storages); the main process
marks the slot free again only after it has read the batch for the last time (normalised it into
a new tensor) and keeps the buffer mapped. A worker that finds no free slot stacks into a fresh
segment, as before, so nothing ever waits on the main process. A slot the main process never
releases (the caller keeps uint8 batches, e.g. to normalise on the device) is simply never reused.
"""

from __future__ import annotations

import multiprocessing
from typing import Optional

import torch
from torch.utils.data import default_collate


def stacked_shape(images: list[torch.Tensor]) -> Optional[tuple[int, ...]]:
    """The shape of the buffer :func:`stack_into` fills with ``images``: B x H x W x C for colour
    images whose channels are last in memory, else B x C x H x W; None where the images differ in
    shape, layout or type (``default_collate`` then stacks them, or says why not)."""
    first = images[0]
    if any(image.shape != first.shape or image.stride() != first.stride() or image.dtype != first.dtype
           for image in images):
        return None
    if _channels_last(first):
        return (len(images), *first.shape[1:], first.shape[0])
    return (len(images), *first.shape)


def stack_into(images: list[torch.Tensor], buffer: torch.Tensor) -> torch.Tensor:
    """``images`` stacked into ``buffer`` (of :func:`stacked_shape`), seen as B x C x H x W.

    Images with their channels last in memory (every decoded photo: libjpeg writes pixels
    interleaved, and torch's uint8 resize keeps them so) go into a B x H x W x C buffer: a plain
    copy per image (0.13 ms per 32 crops of 224 px) where a B x C x H x W buffer needs a
    transposing one (1.4 ms). The normalisation reads either layout at the same speed
    (cvdist/data/_normalise.c) and writes the usual contiguous float batch."""
    batch = buffer.permute(0, 3, 1, 2) if _channels_last(images[0]) else buffer
    torch.stack(images, 0, out=batch)
    return batch


def _channels_last(image: torch.Tensor) -> bool:
    return image.ndim == 3 and image.shape[0] > 1 and image.stride(0) == 1


class BatchRing:
    """Reused shared batch buffers of ``num_workers`` workers, ``slots_per_worker`` each. Made in
    the main process before the workers start (they inherit it); slot numbers are global."""

    def __init__(self, *, num_workers: int, slots_per_worker: int):
        self.slots_per_worker = slots_per_worker
        self._in_use = multiprocessing.get_context().Array("b", num_workers * slots_per_worker)  # (zeroed: free)
        self._buffers: dict[int, torch.Tensor] = {}
        """Worker side: this worker's buffer of each of its slots."""
        self._held: dict[int, torch.Tensor] = {}
        """Main side: the last buffer received for each slot, kept so its mapping stays cached."""
        self._fresh = multiprocessing.get_context().Value("q", 0)

    def __getstate__(self) -> dict:
        # Sent to spawned workers with the dataset: the buffers of this process stay here.
        return {**self.__dict__, "_buffers": {}, "_held": {}}

    @property
    def fresh_batches(self) -> int:
        """Batches the workers stacked into a fresh segment because none of their slots was free."""
        return self._fresh.value

    def _slots_of(self, worker_id: int) -> range:
        return range(worker_id * self.slots_per_worker, (worker_id + 1) * self.slots_per_worker)

    def free_all(self, *, worker_id: int) -> None:
        """Worker side, at the start of an epoch: the main process reads none of this worker's
        earlier batches any more (it releases each one it normalises, and batches still in flight
        when an epoch was abandoned were dropped before this worker was told to start again)."""
        with self._in_use.get_lock():
            for slot in self._slots_of(worker_id):
                self._in_use[slot] = 0

    def stack(self, images: list[torch.Tensor], *, worker_id: int) -> tuple[torch.Tensor, Optional[int]]:
        """Worker side: ``images`` stacked (as ``default_collate`` would) into a free slot's buffer;
        returns the batch and its slot, or a fresh batch and None where no slot is free or the
        images differ in shape or type."""
        shape = stacked_shape(images)
        if shape is None:
            return default_collate(images), None
        slot = self._take_free_slot(worker_id)
        if slot is None:
            with self._fresh.get_lock():
                self._fresh.value += 1
            return default_collate(images), None
        buffer = self._buffers.get(slot)
        if buffer is None or buffer.shape != shape or buffer.dtype != images[0].dtype:
            buffer = torch.empty(shape, dtype=images[0].dtype).share_memory_()
            self._buffers[slot] = buffer
        return stack_into(images, buffer), slot

    def _take_free_slot(self, worker_id: int) -> Optional[int]:
        with self._in_use.get_lock():
            for slot in self._slots_of(worker_id):
                if self._in_use[slot] == 0:
                    self._in_use[slot] = 1
                    return slot
        return None

    def release(self, slot: int, *, batch: torch.Tensor, result: torch.Tensor) -> bool:
        """Main side: ``batch`` (received in ``slot``) has been read for the last time, into
        ``result``; the worker may fill the slot again. Not released (False) if ``result`` shares
        ``batch``'s memory. The buffer stays mapped here for the slot's next batch."""
        if result.untyped_storage().data_ptr() == batch.untyped_storage().data_ptr():
            return False
        self._held[slot] = batch
        with self._in_use.get_lock():
            self._in_use[slot] = 0
        return True
