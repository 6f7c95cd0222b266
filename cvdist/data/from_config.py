"""Build a recipe's labelled data (training stream + evaluation batches) from ``DataConfig``.

Shared by every recipe that trains on labelled images: WebDataset shards when
``data.train_shards`` is set, otherwise the built-in in-memory data set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from cvdist.config import DataConfig
from cvdist.data.builtin import FASHION_MNIST_CLASSES, load_fashion_mnist, make_synthetic
from cvdist.data.fast_decode import build_decoder
from cvdist.data.pipeline import build_train_stream, iterate_eval_shards, resolve_source
from cvdist.data.tensor_batches import TensorBatches, sharded_eval_batches
from cvdist.data.transforms import MultiScaleBatch


@dataclass
class LabelledData:
    """What a recipe needs: training batches, evaluation batches, and what is known of classes."""

    train: Any
    """A ``BatchSource`` for the engine."""
    eval_batches: Callable[[], Iterator[dict]]
    """A fresh pass over this rank's share of the evaluation data (``image``, ``label``, ``valid``)."""
    class_counts: Optional[list[int]]
    """Training samples per class (from the manifest or the in-memory labels)."""
    class_names: Optional[list[str]]


def build_labelled_data(data: DataConfig, *, in_channels: int, num_classes: int, rank: int, world_size: int,
                        micro_batch_size: int, seed: int, num_epochs: int,
                        extra_label_keys: tuple[str, ...] = ()) -> LabelledData:
    """The training stream and evaluation batches ``data`` describes, for this rank."""
    if data.train_shards:
        return _from_shards(data, in_channels=in_channels, rank=rank, world_size=world_size,
                            micro_batch_size=micro_batch_size, seed=seed, num_epochs=num_epochs,
                            extra_label_keys=extra_label_keys)
    return _builtin(data, in_channels=in_channels, num_classes=num_classes, rank=rank, world_size=world_size,
                    micro_batch_size=micro_batch_size, seed=seed)


def _from_shards(data: DataConfig, *, in_channels: int, rank: int, world_size: int, micro_batch_size: int,
                 seed: int, num_epochs: int, extra_label_keys: tuple[str, ...]) -> LabelledData:
    grey = in_channels == 1
    common = dict(image_size=data.image_size, mean=data.mean, std=data.std, grey=grey)
    # The fast decoder where the preset allows (none / flip): same tensors, ~2.5x the throughput.
    train_decoder = build_decoder(preset=data.augment, train=True, extra_label_keys=extra_label_keys, **common)
    eval_decoder = build_decoder(preset="none", train=False, extra_label_keys=extra_label_keys, **common)
    multi_scale = _multi_scale(data, seed)
    stream, manifests = build_train_stream(
        shards=data.train_shards, weights=data.train_weights, split=data.train_split, rank=rank,
        world_size=world_size, num_workers=data.num_workers, batch_size=micro_batch_size, seed=seed,
        decoder=train_decoder, shuffle_buffer=data.shuffle_buffer, num_samples=data.num_samples,
        sampling=data.sampling, num_epochs=num_epochs, max_corrupt=data.max_corrupt, multi_scale=multi_scale)
    first_manifest = manifests[0]
    if data.eval_shards:
        eval_source, _ = resolve_source(data.eval_shards, split=data.eval_split)
    elif first_manifest is not None:
        eval_source, _ = resolve_source(data.train_shards[0], split=data.eval_split)
    else:
        raise ValueError("data.eval_shards is empty and the first training source has no manifest to take "
                         "the evaluation split from; set data.eval_shards")

    def eval_batches() -> Iterator[dict]:
        return iterate_eval_shards(eval_source, rank=rank, world_size=world_size, batch_size=data.eval_batch_size,
                                   decoder=eval_decoder)

    return LabelledData(train=stream, eval_batches=eval_batches,
                        class_counts=stream.sources[0].class_counts if len(stream.sources) == 1 else None,
                        class_names=list(first_manifest.class_names) if first_manifest else None)


def _multi_scale(data: DataConfig, seed: int) -> Optional[MultiScaleBatch]:
    """The per-batch image size schedule of ``data.multi_scale`` (None: one size)."""
    return MultiScaleBatch(scales=data.multi_scale, base_size=data.image_size, seed=seed) if data.multi_scale else None


def _builtin(data: DataConfig, *, in_channels: int, num_classes: int, rank: int, world_size: int,
             micro_batch_size: int, seed: int) -> LabelledData:
    if data.dataset == "synthetic":
        train_images, train_labels = make_synthetic(num_samples=data.num_train_samples or 2048,
                                                    num_classes=num_classes, channels=in_channels, seed=seed)
        # Same class patterns (seed), other samples (sample_seed): a test split of the same task.
        test_images, test_labels = make_synthetic(num_samples=data.num_eval_samples or 512, num_classes=num_classes,
                                                  channels=in_channels, seed=seed, sample_seed=seed + 1)
        names = None
    else:
        train_images, train_labels = load_fashion_mnist(root=data.root, split="train", num_samples=data.num_train_samples)
        test_images, test_labels = load_fashion_mnist(root=data.root, split="test", num_samples=data.num_eval_samples)
        names = list(FASHION_MNIST_CLASSES)
    train = TensorBatches(images=train_images, labels=train_labels, rank=rank, world_size=world_size,
                          batch_size=micro_batch_size, seed=seed, horizontal_flip=data.augment != "none",
                          mean=data.mean[0], std=data.std[0], multi_scale=_multi_scale(data, seed))

    def eval_batches() -> Iterator[dict]:
        return sharded_eval_batches(images=test_images, labels=test_labels, rank=rank, world_size=world_size,
                                    batch_size=data.eval_batch_size, mean=data.mean[0], std=data.std[0])

    counts = train_labels.bincount(minlength=num_classes).tolist()
    return LabelledData(train=train, eval_batches=eval_batches, class_counts=counts, class_names=names)


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
