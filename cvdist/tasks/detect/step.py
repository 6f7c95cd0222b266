"""The detection task's model, training step and evaluation."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from cvdist.eval.detection import DetectionAccumulator
from cvdist.models import build_model
from cvdist.models.detection import Detector, build_detector
from cvdist.models.finetune import freeze_batchnorm, freeze_stages, layer_decay_groups


def build_detection_model(*, name: str, architecture: str, num_categories: int, in_channels: int, small_stem: bool,
                          image_size: int, mean: list[float], std: list[float], fpn_channels: int,
                          num_levels: int, anchor_base: int, load_trunk: Callable[[nn.Module], None],
                          frozen_stages: int = 0, frozen_bn: bool = False) -> Detector:
    """The detector on the classifier trunk ``name``; ``load_trunk(classifier)`` loads its weights
    first (a no-op for random init), so a classifier run's keys apply unchanged. ``frozen_bn`` /
    ``frozen_stages``: see :mod:`cvdist.models.finetune` (applied after loading, so FrozenBN keeps
    the loaded statistics)."""
    classifier = build_model(name=name, num_classes=1, in_channels=in_channels, small_stem=small_stem)
    load_trunk(classifier)
    detector = build_detector(architecture=architecture, classifier=classifier, num_categories=num_categories,
                              in_channels=in_channels, image_size=image_size, image_mean=mean, image_std=std,
                              fpn_channels=fpn_channels, num_levels=num_levels, anchor_base=anchor_base)
    if frozen_bn:
        freeze_batchnorm(detector_trunk(detector))
    freeze_stages(detector_trunk(detector), num_stages=frozen_stages)
    return detector


def detector_trunk(detector: Detector) -> nn.Module:
    """The detector's backbone trunk (the feature extractor over the classifier, below the FPN)."""
    return detector.model.backbone.body


def detection_parameter_groups(detector: Detector, *, lr: float, layer_decay: float) -> Optional[list[dict]]:
    """Optimiser groups with layer-wise LR decay (:func:`cvdist.models.finetune.layer_decay_groups`);
    None (every parameter at ``lr``) when ``layer_decay`` is 1."""
    if layer_decay == 1.0:
        return None
    return layer_decay_groups(detector, trunk=detector_trunk(detector), lr=lr, decay=layer_decay)


def detection_loss(model: nn.Module, batch: dict, progress: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The detector's summed losses, each also logged (``train/<loss name>``)."""
    losses = model(batch["image"], batch["target"])
    return sum(losses.values()), {f"train/{name}": value.detach() for name, value in losses.items()}


def evaluate_detector(model: nn.Module, batches: Iterator[dict], *, to_device: Callable[[Any], Any],
                      device: torch.device, category_names: list[str], train_instance_counts: list[int],
                      rare_max: int, common_max: int, num_shown: int = 0, with_masks: bool = False,
                      show: Optional[Callable[[list, list, list], None]] = None) -> dict[str, float]:
    """COCO box AP (and with ``with_masks`` mask AP) over every rank's evaluation images
    (``cvdist.eval.detection``); ``show`` receives this rank's first ``num_shown`` valid images,
    targets and predictions."""
    accumulator = DetectionAccumulator(category_names=category_names, with_masks=with_masks)
    shown: tuple[list, list, list] = ([], [], [])
    for batch in batches:
        images = to_device(batch["image"])
        predictions = [{k: v.cpu() for k, v in p.items()} for p in model(images)]
        accumulator.add(keys=batch["key"], targets=batch["target"], predictions=predictions, valid=batch["valid"])
        for index in torch.nonzero(batch["valid"]).flatten().tolist()[:num_shown - len(shown[0])]:
            for kept, value in zip(shown, (batch["image"][index], batch["target"][index], predictions[index])):
                kept.append(value)
    if show is not None and shown[0]:
        show(*shown)
    return accumulator.compute(device=device, train_instance_counts=train_instance_counts, rare_max=rare_max,
                               common_max=common_max)
