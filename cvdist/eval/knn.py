"""Weighted cosine kNN classification of frozen features (the SSL monitor of InstDisc / DINO).

Each test feature votes with its ``k`` most similar training features (cosine similarity ``s``),
each neighbour's vote weighted by ``exp(s / temperature)``; the class with the largest summed
weight wins. Features come from every rank: :func:`extract_features` runs the model over this
rank's share of a split and :func:`gather_features` concatenates all ranks' valid rows.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from cvdist.eval.linear_probe import linear_probe_top1


@torch.no_grad()
def extract_features(forward: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[dict], *,
                     to_device: Callable[[Any], Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features, labels, valid)`` of this rank's batches (``image``, ``label``, ``valid``
    mask; padding rows included, so every rank returns the same number of rows)."""
    features, labels, valid = [], [], []
    for batch in batches:
        images, batch_labels, batch_valid = to_device((batch["image"], batch["label"], batch["valid"]))
        features.append(forward(images).float().flatten(1))
        labels.append(batch_labels)
        valid.append(batch_valid.bool())
    if not features:
        raise ValueError("no evaluation batches: the split is empty")
    return torch.cat(features), torch.cat(labels), torch.cat(valid)


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def gather_features(features: torch.Tensor, labels: torch.Tensor,
                    valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' valid ``(features, labels)`` (every rank passes the same number of rows);
    this rank's own without a process group."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        features, labels, valid = _all_gather(features), _all_gather(labels), _all_gather(valid.to(torch.uint8)).bool()
    return features[valid], labels[valid]


@torch.no_grad()
def knn_predict(query: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, *, num_classes: int,
                k: int = 200, temperature: float = 0.07, chunk_size: int = 1024) -> torch.Tensor:
    """Predicted class of each row of ``query`` by temperature-weighted cosine kNN over ``bank``."""
    if bank.shape[0] == 0:
        raise ValueError("the kNN feature bank is empty")
    k = min(k, bank.shape[0])
    bank = F.normalize(bank.float(), dim=1)
    predictions = []
    for start in range(0, query.shape[0], chunk_size):
        chunk = F.normalize(query[start:start + chunk_size].float(), dim=1)
        similarity, index = (chunk @ bank.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(chunk.shape[0], num_classes, device=chunk.device)
        votes.scatter_add_(1, bank_labels[index], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long, device=query.device)


def knn_top1(query: torch.Tensor, query_labels: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, *,
             num_classes: int, k: int = 200, temperature: float = 0.07) -> float:
    """Top-1 accuracy (in [0, 1]) of :func:`knn_predict` on labelled queries."""
    predicted = knn_predict(query, bank, bank_labels, num_classes=num_classes, k=k, temperature=temperature)
    return float((predicted == query_labels).float().mean()) if len(query_labels) else 0.0


class KnnEvaluator:
    """The recipe's ``evaluate``: trunk features of the labelled bank (training images, no
    augmentation) and of the evaluation split, gathered from all ranks; ``knn_top1`` (weighted
    cosine kNN) and, with ``probe_epochs`` > 0, ``linear_probe_top1``. Every rank runs the same
    forward passes and computes the same numbers."""

    def __init__(self, *, bank_batches: Callable[[], Iterator[dict]], eval_batches: Callable[[], Iterator[dict]],
                 to_device: Callable, num_classes: int, k: int, temperature: float, probe_epochs: int = 0,
                 seed: int = 0):
        self.bank_batches, self.eval_batches, self.to_device = bank_batches, eval_batches, to_device
        self.num_classes, self.k, self.temperature = num_classes, k, temperature
        self.probe_epochs, self.seed = probe_epochs, seed

    def features(self, model: nn.Module) -> tuple[torch.Tensor, ...]:
        """``(bank, bank_labels, test, test_labels)`` over all ranks."""
        bank = gather_features(*extract_features(model, self.bank_batches(), to_device=self.to_device))
        test = gather_features(*extract_features(model, self.eval_batches(), to_device=self.to_device))
        return (*bank, *test)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        bank, bank_labels, test, test_labels = self.features(model)
        metrics = {"knn_top1": knn_top1(test, test_labels, bank, bank_labels, num_classes=self.num_classes,
                                        k=self.k, temperature=self.temperature)}
        if self.probe_epochs:
            metrics["linear_probe_top1"] = linear_probe_top1(bank, bank_labels, test, test_labels,
                                                             num_classes=self.num_classes, epochs=self.probe_epochs,
                                                             seed=self.seed)
        return metrics
