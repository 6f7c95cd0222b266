"""Config of the contrastive pretraining recipe (``recipes/pretrain_contrastive.py``):
``RunConfig`` plus an ``ssl`` section (method, loss, heads, two-view augmentation, kNN monitor,
linear probe)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cvdist.config import (ConfigError, DataConfig, ModelConfig, OptimConfig, RunConfig, ScheduleConfig, TrainConfig,
                           section)

SSL_METHODS = ("simclr", "moco_v3", "triplet", "byol", "simsiam", "dino", "vicreg", "barlow_twins")
MOMENTUM_METHODS = ("moco_v3", "byol", "dino")


@dataclass
class SSLConfig:
    """The self-supervised method and its evaluation."""

    method: Literal[SSL_METHODS] = "simclr"
    """``simclr`` (NT-Xent, negatives from all ranks), ``moco_v3`` (predictor + momentum encoder,
    InfoNCE against all ranks' momentum keys), ``triplet`` (margin loss, hardest negative of all
    ranks), ``byol`` (predictor + momentum target, normalised MSE), ``simsiam`` (predictor,
    stop-gradient), ``dino`` (student / momentum teacher over prototypes, center all-reduced,
    multi-crop), ``vicreg`` (variance / invariance / covariance of the global batch) or
    ``barlow_twins`` (cross-correlation of the global batch)."""
    temperature: float = 0.2
    """simclr, moco_v3: softmax temperature of the cosine similarities."""
    triplet_margin: float = 0.2
    """triplet: margin between positive and negative distances (unit-norm embeddings)."""
    projection_dim: int = 128
    """Output size of the projection MLP (the space the loss compares)."""
    projection_hidden_dim: int = 512
    """Hidden width of the projection MLP."""
    projection_layers: int = 2
    """Linear layers of the projection MLP (BN + ReLU between them)."""
    prediction_hidden_dim: int = 512
    """moco_v3: hidden width of the predictor."""
    lr_scaling: Literal["none", "linear"] = "none"
    """``linear``: the optimiser's LR is ``optim.lr * data.global_batch_size / 256`` (the papers'
    rule for large batches, e.g. with ``optim.name=lars``); ``none``: ``optim.lr`` as given."""
    momentum: float = 0.99
    """moco_v3, byol, dino: base momentum of the momentum encoder, raised to 1 along a half cosine over the run."""
    num_local_crops: int = 0
    """Multi-crop (dino): local crops per image besides the two global views (0 = off)."""
    local_crop_size: int = 12
    """Multi-crop: side of a local crop in pixels."""
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    """Multi-crop: area fraction range of a local crop (the global views use ``view_scale``)."""
    dino_num_prototypes: int = 1024
    """dino: output size of the DINO head (prototypes)."""
    dino_bottleneck_dim: int = 64
    """dino: the head's MLP output, L2-normalised before the prototype layer."""
    dino_student_temperature: float = 0.1
    """dino: softmax temperature of the student."""
    dino_teacher_temperature: float = 0.04
    """dino: softmax temperature of the teacher after its warmup."""
    dino_warmup_teacher_temperature: float = 0.04
    """dino: the teacher temperature at step 0, moved linearly to ``dino_teacher_temperature``."""
    dino_teacher_warmup_steps: int = 0
    """dino: optimiser steps of the teacher temperature warmup."""
    dino_center_momentum: float = 0.9
    """dino: EMA momentum of the center (the teacher outputs' mean over all ranks)."""
    vicreg_invariance_weight: float = 25.0
    """vicreg: weight of the MSE between the two views' embeddings."""
    vicreg_variance_weight: float = 25.0
    """vicreg: weight of the hinge on each dimension's standard deviation."""
    vicreg_covariance_weight: float = 1.0
    """vicreg: weight of the squared off-diagonal covariances."""
    barlow_lambda: float = 0.005
    """barlow_twins: weight of the off-diagonal cross-correlation terms."""
    view_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    """Random resized crop: area fraction range of each view."""
    view_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333333])
    """Random resized crop: aspect ratio range."""
    view_flip: bool = True
    """Horizontal flip of each view with probability 1/2."""
    view_vflip: bool = False
    """Vertical flip of each view with probability 1/2."""
    view_rotation_degrees: float = 0.0
    """Rotation of each view about its crop centre, uniform in +-this many degrees (0 = off)."""
    view_brightness: float = 0.4
    """Brightness jitter strength in [0, 1) (0 = off)."""
    view_contrast: float = 0.4
    """Contrast jitter strength in [0, 1) (0 = off)."""
    knn_k: int = 200
    """kNN monitor: neighbours that vote (``eval/knn_top1`` at each evaluation); 0 switches the
    monitor (and the linear probe, which uses its bank) off, as ``ae.knn_k=0`` does."""
    knn_temperature: float = 0.07
    """kNN monitor: votes weighted by exp(cosine / knn_temperature)."""
    knn_bank_size: int = 10000
    """Built-in data: labelled training images in the kNN bank (the first N; 0 = all). Shards: the
    whole ``data.train_split`` of the first training source is the bank."""
    probe_epochs: int = 0
    """> 0: also train a linear probe on the bank's frozen features for this many epochs at each
    evaluation (``eval/linear_probe_top1``)."""


@dataclass
class ContrastiveRunConfig(RunConfig):
    """The contrastive recipe's config: RunConfig plus ``ssl``."""

    recipe: str = "pretrain_contrastive"
    name: str = "pretrain_contrastive"
    model: ModelConfig = section(ModelConfig, name="small_cnn")
    data: DataConfig = section(DataConfig, augment="none", num_eval_samples=2000, global_batch_size=256)
    optim: OptimConfig = section(OptimConfig, name="adamw", lr=0.002, weight_decay=0.0001)
    schedule: ScheduleConfig = section(ScheduleConfig, warmup_steps=50)
    train: TrainConfig = section(TrainConfig, epochs=2, eval_every_steps=200)
    ssl: SSLConfig = field(default_factory=SSLConfig)


def _check_range(key: str, values: list[float], *, upper: float) -> None:
    if len(values) != 2 or not 0 < values[0] <= values[1] <= upper:
        raise ConfigError(f"ssl.{key}={values} must be [min, max] with 0 < min <= max <= {upper}")


def validate_contrastive(config: ContrastiveRunConfig) -> None:
    """Check the ``ssl`` section; raise ConfigError naming the key on the first problem. Run it
    before :func:`cvdist.engine.start_session`, which checks the common sections."""
    ssl = config.ssl
    positive = {"temperature": ssl.temperature, "triplet_margin": ssl.triplet_margin,
                "projection_dim": ssl.projection_dim, "projection_hidden_dim": ssl.projection_hidden_dim,
                "projection_layers": ssl.projection_layers, "prediction_hidden_dim": ssl.prediction_hidden_dim,
                "knn_temperature": ssl.knn_temperature, "local_crop_size": ssl.local_crop_size,
                "dino_num_prototypes": ssl.dino_num_prototypes, "dino_bottleneck_dim": ssl.dino_bottleneck_dim,
                "dino_student_temperature": ssl.dino_student_temperature,
                "dino_teacher_temperature": ssl.dino_teacher_temperature,
                "dino_warmup_teacher_temperature": ssl.dino_warmup_teacher_temperature}
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"ssl.{key}={value} must be > 0")
    for key in ("knn_k", "knn_bank_size", "probe_epochs", "num_local_crops", "dino_teacher_warmup_steps",
                "vicreg_invariance_weight", "vicreg_variance_weight", "vicreg_covariance_weight", "barlow_lambda"):
        if getattr(ssl, key) < 0:
            raise ConfigError(f"ssl.{key}={getattr(ssl, key)} must be >= 0")
    if ssl.knn_k == 0 and ssl.probe_epochs:
        raise ConfigError(f"ssl.probe_epochs={ssl.probe_epochs} needs the kNN monitor's labelled bank, but "
                          "ssl.knn_k=0 switches it off; set ssl.knn_k > 0 (e.g. 200) or ssl.probe_epochs=0")
    if not 0 <= ssl.momentum < 1:
        raise ConfigError(f"ssl.momentum={ssl.momentum} must lie in [0, 1) (e.g. 0.99)")
    if not 0 <= ssl.dino_center_momentum < 1:
        raise ConfigError(f"ssl.dino_center_momentum={ssl.dino_center_momentum} must lie in [0, 1) (e.g. 0.9)")
    if ssl.num_local_crops and ssl.method != "dino":
        raise ConfigError(f"ssl.num_local_crops={ssl.num_local_crops} is used by ssl.method=dino only (its loss "
                          f"pairs the teacher's global views with every crop); set ssl.num_local_crops=0 for "
                          f"ssl.method={ssl.method}")
    _check_range("view_scale", ssl.view_scale, upper=1.0)
    _check_range("local_crop_scale", ssl.local_crop_scale, upper=1.0)
    _check_range("view_ratio", ssl.view_ratio, upper=float("inf"))
    for key in ("view_brightness", "view_contrast"):
        if not 0 <= getattr(ssl, key) < 1:
            raise ConfigError(f"ssl.{key}={getattr(ssl, key)} must lie in [0, 1) (0 = off)")
    if not 0 <= ssl.view_rotation_degrees <= 180:
        raise ConfigError(f"ssl.view_rotation_degrees={ssl.view_rotation_degrees} must lie in [0, 180] (0 = off)")
    if config.data.augment != "none":
        raise ConfigError(f"data.augment={config.data.augment!r}: the recipe draws its two views itself "
                          "(ssl.view_*); set data.augment=none")
