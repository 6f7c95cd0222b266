"""The segmentation task's model, training step and evaluation."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn
from torch.nn import functional as F

from cvdist.eval.segmentation import SegmentationAccumulator
from cvdist.models import build_model
from cvdist.models.segmentation import Segmenter, build_segmenter
from cvdist.tasks.segment.config import IGNORE_INDEX


def build_segmentation_model(*, name: str, head: str, num_categories: int, in_channels: int, small_stem: bool,
                             image_size: int, mean: list[float], std: list[float], decoder_channels: int,
                             load_trunk: Callable[[nn.Module], None]) -> Segmenter:
    """The segmenter (``num_categories`` + background classes) on the classifier trunk ``name``;
    ``load_trunk(classifier)`` loads its weights first (a no-op for random init), so a classifier
    run's keys apply unchanged."""
    classifier = build_model(name=name, num_classes=1, in_channels=in_channels, small_stem=small_stem)
    load_trunk(classifier)
    return build_segmenter(head=head, classifier=classifier, num_classes=num_categories + 1, in_channels=in_channels,
                           image_size=image_size, decoder_channels=decoder_channels, image_mean=mean, image_std=std)


def semantic_targets(targets: list[dict]) -> torch.Tensor:
    """``[B, H, W]`` int64 labels (0 background, category + 1, IGNORE_INDEX ignored) of a batch."""
    return torch.stack([t["semantic"].long() for t in targets])


def segmentation_loss(model: nn.Module, batch: dict, progress: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pixel cross-entropy over background + categories; padding (IGNORE_INDEX) left out."""
    logits = model(torch.stack(batch["image"]))
    return F.cross_entropy(logits.float(), semantic_targets(batch["target"]), ignore_index=IGNORE_INDEX), {}


def _predict(model: nn.Module, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Class maps ``[H, W]`` per image; one forward when the images share a size, else one each
    (evaluation images of a label-map folder keep their own sizes)."""
    if len({tuple(image.shape) for image in images}) == 1:
        return list(model(torch.stack(images)).argmax(1))
    return [model(image[None]).argmax(1)[0] for image in images]


def evaluate_segmenter(model: nn.Module, batches: Iterator[dict], *, to_device: Callable[[Any], Any],
                       device: torch.device, category_names: list[str], num_shown: int = 0,
                       show: Optional[Callable[[list, list, list], None]] = None) -> dict[str, float]:
    """``mIoU``, ``pixel_acc`` and ``IoU/<class>`` (background included) over every rank's
    evaluation images (``cvdist.eval.segmentation``); ``show`` receives this rank's first
    ``num_shown`` valid images, true and predicted class maps."""
    accumulator = SegmentationAccumulator(class_names=["background", *category_names], ignore_index=IGNORE_INDEX)
    shown: tuple[list, list, list] = ([], [], [])
    for batch in batches:
        predictions = [p.cpu() for p in _predict(model, to_device(batch["image"]))]
        truths = [t["semantic"].long() for t in batch["target"]]
        for prediction, truth, valid in zip(predictions, truths, batch["valid"].tolist()):
            if valid:  # one image at a time: evaluation images may differ in size
                accumulator.add(predictions=prediction[None], targets=truth[None])
        for index in torch.nonzero(batch["valid"]).flatten().tolist()[:num_shown - len(shown[0])]:
            for kept, value in zip(shown, (batch["image"][index], truths[index], predictions[index])):
                kept.append(value)
    if show is not None and shown[0]:
        show(*shown)
    metrics = accumulator.compute(device=device)
    metrics["pixel_acc"] = metrics.pop("pixel_accuracy")
    return metrics
