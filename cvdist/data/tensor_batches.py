"""Deterministic, resumable, rank-sharded batches over an in-memory image tensor.

Epoch semantics: each epoch is a fresh permutation of all samples drawn from ``(seed, epoch)``;
it is cut into global micro-steps of ``world_size * batch_size`` samples, rank ``r`` taking the
``r``-th slice of each, and the incomplete last global micro-step is dropped, so every rank
yields exactly ``batches_in_epoch()`` batches. One process with batch ``2B`` therefore sees, in
each batch, exactly the union of what two processes with batch ``B`` see.
"""

from __future__ import annotations

from typing import Iterator

import torch


class TensorBatches:
    """Batches ``{"image": float [B, C, H, W] normalised, "label": int64 [B]}`` for one rank."""

    def __init__(self, *, images: torch.Tensor, labels: torch.Tensor, rank: int, world_size: int,
                 batch_size: int, seed: int, shuffle: bool = True, horizontal_flip: bool = False,
                 mean: float = 0.5, std: float = 0.5):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.seed, self.shuffle, self.horizontal_flip = seed, shuffle, horizontal_flip
        self.mean, self.std = mean, std
        self.num_batches = len(images) // (world_size * batch_size)
        if self.num_batches == 0:
            raise ValueError(
                f"{len(images)} samples are fewer than one global batch of "
                f"{world_size} x {batch_size}; use more samples or a smaller batch"
            )

    def batches_in_epoch(self, epoch: int) -> int:
        return self.num_batches

    def state(self) -> dict:
        return {}  # the position is (epoch, batch), which the engine records itself

    def load_state(self, state: dict) -> None:
        pass

    def epoch_order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.images))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.images), generator=generator)

    def iterate(self, *, epoch: int, start_batch: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's batches of ``epoch``, starting at batch ``start_batch`` (for resume)."""
        order = self.epoch_order(epoch)
        # Flip decisions are drawn per sample position from (seed, epoch), not per rank, so one
        # process with batch 2B and two with batch B see identical inputs, and a resumed run
        # draws the same ones.
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 1)
        flips = torch.rand(len(order), generator=generator) < 0.5
        global_batch = self.world_size * self.batch_size
        for index in range(start_batch, self.num_batches):
            start = index * global_batch + self.rank * self.batch_size
            chosen = order[start:start + self.batch_size]
            images = self.images[chosen].float().div_(255.0)
            if self.horizontal_flip:
                flip = flips[start:start + self.batch_size]
                images[flip] = images[flip].flip(-1)
            yield {"image": images.sub_(self.mean).div_(self.std), "label": self.labels[chosen]}
