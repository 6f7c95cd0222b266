"""Top-1 accuracy and loss of a classifier over evaluation data sharded across ranks.

Every rank runs the same number of forward passes (the last batches are padded and the padding
masked out): under ZeRO-3 each forward pass gathers parameters collectively, so a rank with
fewer batches would leave the others waiting forever.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from cvdist import comm


def evaluate_classifier(model: nn.Module, batches: Iterator[Any], *, to_device: Callable[[Any], Any],
                        device: torch.device) -> dict[str, float]:
    """``top1`` (in [0, 1]) and mean cross-entropy ``loss`` over all ranks' valid samples.

    ``batches`` yield dicts with ``image``, ``label`` and a boolean ``valid`` mask (padding)."""
    sums = {"correct": 0.0, "loss": 0.0, "count": 0.0}
    for batch in batches:
        images, labels, valid = to_device((batch["image"], batch["label"], batch["valid"]))
        logits = model(images).float()
        losses = F.cross_entropy(logits, labels, reduction="none")
        sums["correct"] += float(((logits.argmax(1) == labels) & valid).sum())
        sums["loss"] += float(losses[valid].sum())
        sums["count"] += float(valid.sum())
    total = comm.all_reduce_sum(sums, device)
    count = max(total["count"], 1.0)
    return {"top1": total["correct"] / count, "loss": total["loss"] / count}
