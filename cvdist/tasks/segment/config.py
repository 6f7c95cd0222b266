"""The segmentation recipe's config (``recipes/segment.py``): RunConfig plus ``segment`` and ``scenes``.

The shared ``data`` section keeps its meaning where it applies, as for detection:
``image_size`` is the training crop side (and the built-in scenes' canvas), ``hflip`` the flip
probability, ``num_train_samples`` / ``num_eval_samples`` / ``dataset`` / ``imbalance_factor``
shape the built-in scenes. ``vflip``, ``rotation_degrees``, ``color_jitter``, ``crop_scale`` and
``multi_scale`` are refused (the label map follows ``hflip`` and ``segment.scale_jitter`` only).
``model.num_classes`` counts the categories; the model predicts one more class, background
(label 0; category c is label c + 1, the convention of the dense shards' ``sem.png``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cvdist.config import (CheckpointConfig, ConfigError, DataConfig, ModelConfig, OptimConfig, RunConfig,
                           ScheduleConfig, TrainConfig, section)
from cvdist.tasks.common import ScenesConfig, check_dense_sections

IGNORE_INDEX = 255
"""Label-map value that is neither trained nor scored: crop padding, and VOC's "void" border
pixels in ``cvdist shards segfolder`` data."""


@dataclass
class SegmentConfig:
    """The segmentation model and its training options (``cvdist.models.segmentation``)."""

    head: Literal["fcn", "deeplabv3", "unet", "linear"] = "unet"
    """``unet`` (skip connections from every stage; on a ``vit_*`` the stages of ViTDet's simple
    feature pyramid), ``fcn`` / ``deeplabv3`` (torchvision's heads on the deepest map),
    ``linear`` (BatchNorm + 1x1 conv on a FROZEN trunk: the DINOv2 linear protocol, for CNN and
    ``vit_*`` trunks; usually with ``segment.backbone_from``)."""
    decoder_channels: int = 32
    """Width of the ``unet`` decoder's layers."""
    scale_jitter: list[float] = field(default_factory=lambda: [0.75, 1.25])
    """Training scale jitter range [low, high] (then a random crop to ``data.image_size``, padded
    with the ignore value 255 where the scaled image is smaller)."""
    backbone_from: str = ""
    """Empty = random init; else a cvdist run or checkpoint directory or a weights file whose
    classifier trunk (same ``model.name``) initialises the backbone; keys must match."""
    num_mask_images: int = 4
    """Evaluation images drawn with their true and predicted masks at each evaluation
    (``masks_step<N>.png`` in the run directory and W&B ``eval/masks``); 0 = none."""


@dataclass
class SegmentRunConfig(RunConfig):
    """RunConfig plus the ``segment`` and ``scenes`` sections."""

    recipe: str = "segment"
    name: str = "segment"
    model: ModelConfig = section(ModelConfig, name="small_resnet")
    data: DataConfig = section(DataConfig, image_size=64, global_batch_size=16, eval_batch_size=32,
                               shuffle_buffer=200)
    optim: OptimConfig = section(OptimConfig, name="adamw", lr=0.003, weight_decay=1e-4, grad_clip_norm=10.0)
    schedule: ScheduleConfig = section(ScheduleConfig, name="cosine", warmup_steps=20)
    train: TrainConfig = section(TrainConfig, epochs=4)
    checkpoint: CheckpointConfig = section(CheckpointConfig, every_steps=200)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    # 64 px canvases (detection's are 96): items scaled to fit, as recipes/segment.yaml says
    scenes: ScenesConfig = section(ScenesConfig, min_item_size=16, max_item_size=32)


def validate_segment(config: SegmentRunConfig) -> None:
    """Check the segmentation recipe's own keys; raise ConfigError naming the key and the fix."""
    seg, model = config.segment, config.model
    check_dense_sections(config, task="segmentation", jitter_key="segment.scale_jitter", follows="label maps")
    if len(seg.scale_jitter) != 2 or not 0 < seg.scale_jitter[0] <= seg.scale_jitter[1]:
        raise ConfigError(f"segment.scale_jitter={seg.scale_jitter} must be [low, high] with 0 < low <= high")
    if seg.num_mask_images < 0:
        raise ConfigError(f"segment.num_mask_images={seg.num_mask_images} must be >= 0 (0 = no picture)")
    if seg.decoder_channels < 1:
        raise ConfigError(f"segment.decoder_channels={seg.decoder_channels} must be >= 1")
    if not 1 <= model.num_classes < IGNORE_INDEX:
        raise ConfigError(f"model.num_classes={model.num_classes} must lie in 1..{IGNORE_INDEX - 1} (8-bit label "
                          f"maps: background 0, categories 1..num_classes, {IGNORE_INDEX} ignored)")
    if seg.backbone_from and not Path(seg.backbone_from).exists():
        raise ConfigError(f"segment.backbone_from={seg.backbone_from!r} does not exist; give a cvdist run or "
                          "checkpoint directory or a weights file, or leave it empty for random init")
