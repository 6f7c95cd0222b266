"""How the main process hands each epoch's reading setup to DataLoader workers that stay alive
across epochs (``data.persistent_workers``).

A DataLoader pickles its dataset into the workers once, when they start; with persistent workers
a later epoch's plan (which shards, how many batches, where a resume starts) would never reach
them. The stream therefore publishes each epoch's setup into a small shared-memory buffer before
starting the epoch, and each worker reads it when the DataLoader restarts its iteration. The bytes
are the stream's own pickled setup, written by this process for its own workers (the same trust as
DataLoader's own pickling of the dataset); no data from a shard ever passes through here.
"""

from __future__ import annotations

import pickle
from typing import Any, Optional

import torch

CAPACITY = 4 * 2**20
"""Largest setup that fits (plans of tens of thousands of shards); a larger one makes that epoch
start its own, non-persistent workers instead."""
_HEADER = 8


class SetupChannel:
    """A shared buffer: an 8-byte length, then the pickled setup (length 0: none published)."""

    def __init__(self) -> None:
        self.buffer = torch.zeros(_HEADER + CAPACITY, dtype=torch.uint8).share_memory_()

    def publish(self, setup: Any) -> bool:
        """Write ``setup`` for the workers; False (and the buffer cleared) when it does not fit."""
        payload = pickle.dumps(setup, protocol=pickle.HIGHEST_PROTOCOL)
        fits = len(payload) <= CAPACITY
        length = len(payload) if fits else 0
        self.buffer[:_HEADER] = torch.frombuffer(bytearray(length.to_bytes(_HEADER, "little")), dtype=torch.uint8)
        if fits:
            self.buffer[_HEADER:_HEADER + length] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        return fits

    def read(self) -> Optional[Any]:
        """The setup last published, or None."""
        length = int.from_bytes(self.buffer[:_HEADER].numpy().tobytes(), "little")
        if length == 0:
            return None
        return pickle.loads(self.buffer[_HEADER:_HEADER + length].numpy().tobytes())
