"""Labelled splits for frozen-feature evaluation (kNN bank, linear-probe training set), this
rank's share, without augmentation."""

from __future__ import annotations

from typing import Callable, Iterator

from cvdist.config import DataConfig
from cvdist.data.builtin import load_fashion_mnist, make_synthetic
from cvdist.data.fast_decode import build_decoder
from cvdist.data.pipeline import iterate_eval_shards, resolve_source
from cvdist.eval.classification import sharded_eval_batches


def build_bank_batches(data: DataConfig, *, in_channels: int, num_classes: int, bank_size: int, rank: int,
                       world_size: int, seed: int) -> Callable[[], Iterator[dict]]:
    """Labelled training images for the kNN bank, without augmentation, this rank's share:
    built-in data: the first ``bank_size`` training images (0 = all); shards: the whole
    ``data.train_split`` of the first training source."""
    if data.train_shards:
        source, _ = resolve_source(data.train_shards[0], split=data.train_split)
        decoder = build_decoder(preset="none", train=False, image_size=data.image_size, mean=data.mean,
                                std=data.std, grey=in_channels == 1)
        return lambda: iterate_eval_shards(source, rank=rank, world_size=world_size,
                                           batch_size=data.eval_batch_size, decoder=decoder)
    if data.dataset == "synthetic":  # the training set from_config builds (same seed), its first bank_size images
        images, labels = make_synthetic(num_samples=data.num_train_samples or 2048, num_classes=num_classes,
                                        channels=in_channels, seed=seed)
        if bank_size:
            images, labels = images[:bank_size], labels[:bank_size]
    else:
        limits = [n for n in (bank_size, data.num_train_samples) if n]  # never images the run does not train on
        limit = min(limits) if limits else 0
        images, labels = load_fashion_mnist(root=data.root, split="train", num_samples=limit)
    return lambda: sharded_eval_batches(images=images, labels=labels, rank=rank, world_size=world_size,
                                        batch_size=data.eval_batch_size, mean=data.mean[0], std=data.std[0])
