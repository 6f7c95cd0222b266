"""The long-tail task's config: ``RunConfig`` plus the ``loss``, ``longtail``, ``transfer``,
``regularization`` and ``multitask`` sections, and their validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cvdist.config import ConfigError, DataConfig, ModelConfig, RunConfig, ScheduleConfig, TrainConfig, section
from cvdist.tasks.common import LossConfig, check_loss_options


@dataclass
class LongtailConfig:
    """Long-tail training stages, built-in long-tailed data, evaluation and tau-normalisation."""

    stage: Literal["joint", "crt"] = "joint"
    """``joint`` (train the whole model) or ``crt`` (classifier re-training: the backbone loaded from
    ``transfer.from_path`` is frozen, the head re-initialised; needs ``data.sampling`` != instance)."""
    holdout_per_class: int = 0
    """Built-in data only (ignored with shards): samples per class taken out of the training split
    (before the long-tail subset, so they are never trained on) as the balanced held-out split for
    the tau search; shards use ``holdout_shards`` / ``holdout_split``."""
    holdout_shards: str = ""
    """Shards: held-out source for the tau search (empty = the first training source's manifest)."""
    holdout_split: str = "val"
    """Shards: manifest split of the held-out source (never the evaluation split)."""
    tau_norm: bool = False
    """After training, tau-normalise the classifier (w_c / ||w_c||^tau) with tau chosen on the held-out split."""
    tau_grid: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(21)])
    """Candidate taus of the search (best held-out balanced accuracy wins; ties: the smallest tau)."""
    posthoc_tau: float = 0.0
    """> 0: also evaluate post-hoc logit adjustment (logits - tau * log prior): ``eval/*_posthoc``."""
    shot_many: float = 100.0
    """Many-shot: more training samples than this (scaled for small sets, see ``scaled_shot_thresholds``)."""
    shot_few: float = 20.0
    """Few-shot: fewer training samples than this (scaled likewise)."""


@dataclass
class TransferConfig:
    """Where the initial weights come from, and which parts train."""

    from_path: str = ""
    """Empty = from scratch; else a cvdist run or checkpoint directory (ZeRO included) or a local
    weights file (``.pth`` / ``.pt`` state_dict, ``.safetensors``) to fine-tune from."""
    head_name: str = ""
    """Module name of the classifier head (empty = the last nn.Linear: ``fc`` of torchvision ResNets)."""
    keep_head: bool = False
    """Load the source's head too (same number of classes) instead of a new, randomly initialised one."""
    freeze_trunk: bool = False
    """Train only the head; the trunk's parameters get no gradient and its norm layers stay in eval mode."""
    trunk_lr_scale: float = 1.0
    """Layer-wise LR: the trunk trains at ``optim.lr * trunk_lr_scale`` (the head at ``optim.lr``)."""


@dataclass
class RegularizationConfig:
    """Optional regularisers, all off by default."""

    mixup_alpha: float = 0.0
    """> 0: mixup with lambda ~ Beta(alpha, alpha)."""
    cutmix_alpha: float = 0.0
    """> 0: CutMix with lambda ~ Beta(alpha, alpha); with mixup too, one of them per batch at random."""
    ema_decay: float = 0.0
    """> 0 (e.g. 0.999): keep an EMA of the weights and evaluate it too (``eval/*_ema``); not with ZeRO-3."""


@dataclass
class MultitaskConfig:
    """Multi-task learning: auxiliary linear heads on the shared trunk's features, one per extra
    label, trained with cross-entropy beside the main loss (``cvdist.models.multitask``)."""

    labels: dict[str, float] = field(default_factory=dict)
    """Extra label name -> loss weight, e.g. ``{coarse: 0.5}`` (empty = off). Shards: names of the
    manifest's ``extra_labels`` (the ``.json`` members; their class counts come from there).
    Built-in data: ``coarse`` only: Fashion-MNIST's tops / bottoms / footwear / bags, or for the
    synthetic set the class parity (``label % 2``)."""


@dataclass
class LongtailRunConfig(RunConfig):
    """The long-tail recipe's config: RunConfig plus ``loss``, ``longtail``, ``transfer``,
    ``regularization``, ``multitask``."""

    recipe: str = "longtail"
    name: str = "longtail"
    model: ModelConfig = section(ModelConfig, name="small_cnn")
    data: DataConfig = section(DataConfig, num_train_samples=10000, imbalance_factor=100.0)
    schedule: ScheduleConfig = section(ScheduleConfig, warmup_steps=50)
    train: TrainConfig = section(TrainConfig, epochs=30, eval_every_steps=100)
    loss: LossConfig = field(default_factory=LossConfig)
    longtail: LongtailConfig = section(LongtailConfig, holdout_per_class=20)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    multitask: MultitaskConfig = field(default_factory=MultitaskConfig)




def _check_longtail_data(config: LongtailRunConfig) -> None:
    lt, shards = config.longtail, bool(config.data.train_shards)
    if lt.holdout_per_class < 0:
        raise ConfigError(f"longtail.holdout_per_class={lt.holdout_per_class} must be >= 0")
    if lt.tau_norm and not shards and lt.holdout_per_class == 0:
        raise ConfigError("longtail.tau_norm=true searches tau on a held-out split, never the test set; set "
                          "longtail.holdout_per_class=N (e.g. 20) to hold N training samples per class out")
    if (lt.tau_norm and not lt.tau_grid) or any(t < 0 for t in lt.tau_grid):
        raise ConfigError(f"longtail.tau_grid={lt.tau_grid} must be a non-empty list of taus >= 0")
    if lt.posthoc_tau < 0:
        raise ConfigError(f"longtail.posthoc_tau={lt.posthoc_tau} must be >= 0 (0 = off)")
    if not 0 <= lt.shot_few <= lt.shot_many:
        raise ConfigError(f"longtail.shot_few={lt.shot_few} and longtail.shot_many={lt.shot_many} need "
                          "0 <= shot_few <= shot_many")


def _check_transfer(config: LongtailRunConfig) -> None:
    tr, stage = config.transfer, config.longtail.stage
    if tr.from_path and not Path(tr.from_path).exists():
        raise ConfigError(f"transfer.from_path={tr.from_path!r} does not exist; give a cvdist run or checkpoint "
                          "directory or a .pth / .pt / .safetensors weights file")
    if tr.trunk_lr_scale <= 0:
        raise ConfigError(f"transfer.trunk_lr_scale={tr.trunk_lr_scale} must be > 0; to freeze the trunk use "
                          "transfer.freeze_trunk=true")
    if tr.freeze_trunk and tr.trunk_lr_scale != 1.0:
        raise ConfigError("transfer.freeze_trunk=true and transfer.trunk_lr_scale != 1 contradict each other; "
                          "set only one")
    if (tr.freeze_trunk or stage == "crt" or tr.keep_head) and not tr.from_path:
        what = "longtail.stage=crt" if stage == "crt" else (
            "transfer.freeze_trunk=true" if tr.freeze_trunk else "transfer.keep_head=true")
        raise ConfigError(f"{what} needs trained weights: set transfer.from_path to a run, checkpoint or weights file")
    if stage == "crt":
        if tr.keep_head:
            raise ConfigError("longtail.stage=crt re-initialises the classifier; set transfer.keep_head=false")
        if tr.trunk_lr_scale != 1.0:
            raise ConfigError("longtail.stage=crt freezes the trunk; remove transfer.trunk_lr_scale")
        if config.data.sampling == "instance":
            raise ConfigError("longtail.stage=crt re-trains the classifier with re-balanced sampling; set "
                              "data.sampling=class_balanced (or sqrt / progressive)")


def _check_multitask(config: LongtailRunConfig) -> None:
    labels = config.multitask.labels
    for name, weight in labels.items():
        if not name.isidentifier():
            raise ConfigError(f"multitask.labels: {name!r} is not a valid label name (letters, digits, _)")
        if not weight > 0:
            raise ConfigError(f"multitask.labels.{name}={weight} must be a loss weight > 0 (remove the entry to "
                              "turn the head off)")
    if labels and (config.longtail.stage == "crt" or config.transfer.freeze_trunk):
        what = "longtail.stage=crt" if config.longtail.stage == "crt" else "transfer.freeze_trunk=true"
        raise ConfigError(f"multitask.labels trains auxiliary heads to shape the shared trunk, which {what} "
                          "freezes; train them in the joint stage and leave multitask.labels empty for this one")


def validate_longtail(config: LongtailRunConfig) -> None:
    """Check the long-tail sections (choices, combinations); raise ConfigError on the first problem.
    Run it before :func:`cvdist.engine.start_session`, which checks the common sections."""
    check_loss_options(config.loss)
    _check_longtail_data(config)
    _check_transfer(config)
    _check_multitask(config)
    reg = config.regularization
    for key in ("mixup_alpha", "cutmix_alpha"):
        if getattr(reg, key) < 0:
            raise ConfigError(f"regularization.{key}={getattr(reg, key)} must be >= 0 (0 = off)")
    if not 0 <= reg.ema_decay < 1:
        raise ConfigError(f"regularization.ema_decay={reg.ema_decay} must lie in [0, 1) (0 = off; e.g. 0.999)")
    if reg.ema_decay and config.dist.strategy == "zero3":
        raise ConfigError("regularization.ema_decay needs whole parameters on every rank, which ZeRO-3 "
                          "partitions; use dist.strategy=zero2 (or ddp) or set regularization.ema_decay=0")
