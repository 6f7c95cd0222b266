"""Linear probe: a linear classifier trained on frozen features, top-1 on held-out features.

Features are extracted once (:func:`cvdist.eval.knn.extract_features`), standardised with the
training features' mean and std, and a linear layer is trained on them with AdamW and a cosine
schedule over shuffled mini-batches. Deterministic for a given ``seed``, so every rank that
runs it on the same gathered features gets the same result.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def train_linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, *, num_classes: int,
                       epochs: int = 100, lr: float = 0.01, weight_decay: float = 1e-4, batch_size: int = 256,
                       seed: int = 0) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """The trained classifier and the standardisation ``(mean, std)`` it expects."""
    if train_features.shape[0] == 0:
        raise ValueError("the linear probe has no training features")
    features = train_features.float()
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    features = (features - mean) / std
    generator = torch.Generator().manual_seed(seed)
    classifier = nn.Linear(features.shape[1], num_classes).to(features.device)
    with torch.no_grad():
        classifier.weight.copy_(torch.randn(classifier.weight.shape, generator=generator) * 0.01)
        classifier.bias.zero_()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(features.shape[0] / batch_size)
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(features.shape[0], generator=generator).to(features.device)
            for start in range(0, features.shape[0], batch_size):
                chosen = order[start:start + batch_size]
                loss = F.cross_entropy(classifier(features[chosen]), train_labels[chosen])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return classifier, mean, std


@torch.no_grad()
def linear_probe_top1(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                      test_labels: torch.Tensor, *, num_classes: int, epochs: int = 100, lr: float = 0.01,
                      weight_decay: float = 1e-4, batch_size: int = 256, seed: int = 0) -> float:
    """Top-1 accuracy (in [0, 1]) on the test features of a linear classifier trained on the
    training features (both frozen, e.g. from :func:`cvdist.eval.knn.gather_features`)."""
    classifier, mean, std = train_linear_probe(train_features, train_labels, num_classes=num_classes, epochs=epochs,
                                               lr=lr, weight_decay=weight_decay, batch_size=batch_size, seed=seed)
    logits = classifier((test_features.float() - mean) / std)
    return float((logits.argmax(1) == test_labels).float().mean()) if len(test_labels) else 0.0
