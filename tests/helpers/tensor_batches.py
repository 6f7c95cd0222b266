"""Deterministic, resumable, rank-sharded batches over an in-memory image tensor: a minimal
``BatchSource`` for tests of the engine and for ``bench/engine_overhead.py``, which measure the
loop without the data pipeline. Recipes never use it: every data set, the built-in ones
included, goes through the shard pipeline (``cvdist/data/builtin_shards.py``).

Epoch semantics: each epoch is a fresh permutation of all samples drawn from ``(seed, epoch)``;
it is cut into global micro-steps of ``world_size * batch_size`` samples, rank ``r`` taking the
``r``-th slice of each, and the incomplete last global micro-step is dropped, so every rank
yields exactly ``batches_in_epoch()`` batches. One process with batch ``2B`` therefore sees, in
each batch, exactly the union of what two processes with batch ``B`` see.

Extra labels (e.g. a coarse label for multi-task training) are per-sample tensors indexed like
``labels`` and come out as ``batch[name]``. Multi-scale training (``multi_scale``, a
:class:`cvdist.data.transforms.MultiScaleBatch`) resizes each batch to the size drawn for
``(seed, epoch, batch index)``, the batch index being the global micro-step, so every rank, one
process with the whole batch, and a resumed run all use the same size for the same step.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Optional

import torch

from cvdist.data.transforms import resize_batch


class TensorBatches:
    """Batches ``{"image": float [B, C, H, W] normalised, "label": int64 [B], <extra labels>}``
    for one rank."""

    def __init__(self, *, images: torch.Tensor, labels: torch.Tensor, rank: int, world_size: int,
                 batch_size: int, seed: int, shuffle: bool = True, horizontal_flip: bool = False,
                 mean: float = 0.5, std: float = 0.5, extra_labels: Optional[Mapping[str, torch.Tensor]] = None,
                 multi_scale: Any = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.extra_labels = dict(extra_labels or {})
        for name, values in self.extra_labels.items():
            if name in ("image", "label") or len(values) != len(labels):
                raise ValueError(f"extra label {name!r}: {len(values)} values for {len(labels)} samples "
                                 "(or a reserved name)")
        self.multi_scale = multi_scale
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

    def metrics(self) -> dict[str, float]:
        """Data-side counters for the training log: none for in-memory data."""
        return {}

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
            images = images.sub_(self.mean).div_(self.std)
            if self.multi_scale is not None:
                images = resize_batch(images, self.multi_scale.size_for(epoch, index))
            batch = {"image": images, "label": self.labels[chosen]}
            batch.update({name: values[chosen] for name, values in self.extra_labels.items()})
            yield batch


def sharded_eval_batches(*, images: torch.Tensor, labels: torch.Tensor, rank: int, world_size: int,
                         batch_size: int, mean: float = 0.5, std: float = 0.5) -> Iterator[dict[str, torch.Tensor]]:
    """Yield ``{"image", "label", "valid"}`` batches of in-memory data; rank ``r`` takes samples
    ``r, r+W, r+2W, ...``.

    All ranks yield ``ceil(ceil(N / W) / batch_size)`` batches; together the valid entries
    cover every sample exactly once.
    """
    per_rank = math.ceil(len(images) / world_size)
    indices = torch.arange(rank, len(images), world_size)
    valid = torch.ones(per_rank, dtype=torch.bool)
    if len(indices) < per_rank:
        valid[len(indices):] = False
        indices = torch.cat([indices, torch.zeros(per_rank - len(indices), dtype=torch.long)])
    for start in range(0, per_rank, batch_size):
        chosen = indices[start:start + batch_size]
        batch = images[chosen].float().div_(255.0).sub_(mean).div_(std)
        yield {"image": batch, "label": labels[chosen], "valid": valid[start:start + batch_size]}
