"""The detection recipe's config (``recipes/detect.py``): RunConfig plus ``detect`` and ``scenes``.

The shared ``data`` section keeps its meaning where it applies: ``image_size`` is the training
and model image side (and the built-in scenes' canvas), ``hflip`` the flip probability,
``num_train_samples`` / ``num_eval_samples`` / ``dataset`` / ``imbalance_factor`` shape the
built-in scenes. The classification augmentation keys do not apply: ``vflip``,
``rotation_degrees``, ``color_jitter``, ``crop_scale`` and ``multi_scale`` are refused when set,
and the ``augment`` preset is not used (boxes follow ``hflip`` and ``detect.scale_jitter``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cvdist.config import (CheckpointConfig, ConfigError, DataConfig, DistConfig, ModelConfig, OptimConfig,
                           RunConfig, ScheduleConfig, TrainConfig, section)
from cvdist.tasks.common import ScenesConfig, check_dense_sections


@dataclass
class DetectConfig:
    """The detector and its training options (``cvdist.models.detection``)."""

    architecture: Literal["faster_rcnn", "mask_rcnn", "retinanet", "fcos"] = "fcos"
    """torchvision detector on the ``model.name`` backbone: ``faster_rcnn`` (with FPN), ``mask_rcnn``
    (Faster R-CNN + mask head; needs shards with instance masks; adds mask AP), ``retinanet``, ``fcos``."""
    fpn_channels: int = 32
    """Channels of every feature-pyramid level (FCOS: a multiple of 32)."""
    num_levels: int = 3
    """Deepest backbone stages fed to the pyramid (at most what the backbone has below the input size)."""
    anchor_base: int = 8
    """Anchor side in pixels on the finest level, doubling per level."""
    scale_jitter: list[float] = field(default_factory=lambda: [0.75, 1.25])
    """Training scale jitter range [low, high] of ``ScaleJitter`` (then a random crop to ``data.image_size``)."""
    backbone_from: str = ""
    """Empty = random init; else a cvdist run or checkpoint directory or a weights file whose
    classifier trunk (same ``model.name``) initialises the backbone; keys must match."""
    frozen_stages: int = 0
    """Freeze the backbone's stem and its first N stages (``cvdist.models.finetune``); 0 = train all."""
    frozen_bn: bool = False
    """Replace the backbone's BatchNorm by FrozenBatchNorm2d, keeping the loaded (pretrained) statistics."""
    layer_decay: float = 1.0
    """Layer-wise LR decay in (0, 1]: the backbone's last stage trains at ``optim.lr * decay``, each
    unit towards the input one more factor ``decay``; pyramid and heads at ``optim.lr``. 1 = off."""
    rare_max: int = 10
    """APr: categories with at most this many training instances."""
    common_max: int = 100
    """APc: more than ``rare_max`` and at most this many; APf: more."""
    repeat_factor_threshold: float = 0.0
    """LVIS repeat-factor sampling threshold t (``cvdist.data.repeat_factor``): an image whose rarest
    category is in a fraction f < t of the training images is drawn sqrt(t / f) times per epoch on
    average; 0 = off, LVIS uses 0.001. Costs one pass over the training annotations at start-up."""
    num_box_images: int = 4
    """Evaluation images drawn with their true (green) and predicted (red) boxes at each evaluation
    (``boxes_step<N>.png`` in the run directory and W&B ``eval/boxes``); 0 = none."""


@dataclass
class DetectRunConfig(RunConfig):
    """RunConfig plus the ``detect`` and ``scenes`` sections."""

    recipe: str = "detect"
    name: str = "detect"
    model: ModelConfig = section(ModelConfig, name="small_resnet")
    data: DataConfig = section(DataConfig, image_size=96, global_batch_size=16, eval_batch_size=16,
                               shuffle_buffer=200)
    optim: OptimConfig = section(OptimConfig, name="adamw", lr=0.002, weight_decay=1e-4, grad_clip_norm=10.0)
    schedule: ScheduleConfig = section(ScheduleConfig, name="cosine", warmup_steps=50)
    train: TrainConfig = section(TrainConfig, epochs=4)
    checkpoint: CheckpointConfig = section(CheckpointConfig, every_steps=200)
    # NCHW: channels-last made the default detector's training steps 1.26x slower on 2 CPU cores
    # (14.0 vs 17.7 images/s, bench/detect_throughput.py): FPN, anchors and RoI ops reorder it back
    dist: DistConfig = section(DistConfig, channels_last=False)
    detect: DetectConfig = field(default_factory=DetectConfig)
    scenes: ScenesConfig = field(default_factory=ScenesConfig)


def validate_detect(config: DetectRunConfig) -> None:
    """Check the detection recipe's own keys; raise ConfigError naming the key and the fix."""
    det = config.detect
    check_dense_sections(config, task="detection", jitter_key="detect.scale_jitter", follows="boxes")
    if len(det.scale_jitter) != 2 or not 0 < det.scale_jitter[0] <= det.scale_jitter[1]:
        raise ConfigError(f"detect.scale_jitter={det.scale_jitter} must be [low, high] with 0 < low <= high")
    if not 0 <= det.repeat_factor_threshold <= 1:
        raise ConfigError(f"detect.repeat_factor_threshold={det.repeat_factor_threshold} must lie in [0, 1] "
                          "(0 = off, LVIS uses 0.001)")
    if det.frozen_stages < 0:
        raise ConfigError(f"detect.frozen_stages={det.frozen_stages} must be >= 0 (0 = train every stage)")
    if not 0 < det.layer_decay <= 1:
        raise ConfigError(f"detect.layer_decay={det.layer_decay} must lie in (0, 1] (1 = off)")
    if det.num_box_images < 0:
        raise ConfigError(f"detect.num_box_images={det.num_box_images} must be >= 0 (0 = no picture)")
    for key in ("fpn_channels", "num_levels", "anchor_base"):
        if getattr(det, key) < 1:
            raise ConfigError(f"detect.{key}={getattr(det, key)} must be >= 1")
    if det.architecture == "fcos" and det.fpn_channels % 32:
        raise ConfigError(f"detect.fpn_channels={det.fpn_channels}: FCOS's head needs a multiple of 32")
    if det.backbone_from and not Path(det.backbone_from).exists():
        raise ConfigError(f"detect.backbone_from={det.backbone_from!r} does not exist; give a cvdist run or "
                          "checkpoint directory or a weights file, or leave it empty for random init")
