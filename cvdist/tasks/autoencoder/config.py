"""Config of the autoencoder / multi-task pretraining recipe (``recipes/pretrain_autoencoder.py``):
``RunConfig`` plus an ``ae`` section (which autoencoder, its decoder, the reconstruction grids)
and a ``multitask`` section (which losses, with which weights)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cvdist.config import (ConfigError, DataConfig, ModelConfig, OptimConfig, RunConfig, ScheduleConfig, TrainConfig,
                           section)
from cvdist.models.vit import VIT_PRESETS

AE_KINDS = ("conv", "mae")
VIT_NAMES = tuple(VIT_PRESETS)
TASK_NAMES = ("reconstruction", "rotation", "contrastive")


@dataclass
class AutoencoderConfig:
    """The autoencoder: ``conv`` (trunk of ``model.name`` + transposed-conv decoder, MSE on every
    pixel) or ``mae`` (ViT ``ae.vit`` on the visible patches, light decoder, MSE on masked patches)."""

    kind: Literal[AE_KINDS] = "conv"
    """``conv`` or ``mae``."""
    decoder_channels: list[int] = field(default_factory=lambda: [128, 64, 32])
    """conv: widths of the decoder's feature maps, first to last; it starts at ``image_size / 2^(n-1)``
    and doubles n-1 times (``data.image_size`` must be divisible by 2^(n-1))."""
    vit: Literal[VIT_NAMES] = "vit_micro"
    """mae: the encoder's ViT preset (``vit_micro``, ``vit_tiny``, ``vit_small``, ``*_p8`` for 64 px);
    ``model.name`` is not used by the mae kind."""
    mask_ratio: float = 0.75
    """mae: fraction of patches hidden from the encoder, in (0, 1)."""
    decoder_dim: int = 64
    """mae: the decoder's token width."""
    decoder_depth: int = 2
    """mae: the decoder's transformer blocks."""
    decoder_heads: int = 2
    """mae: the decoder's attention heads (must divide ``decoder_dim``)."""
    norm_pix_loss: bool = False
    """mae: predict each patch normalised to mean 0 / std 1 (the MAE paper's better-transferring
    target; the grids map predictions back to pixels with the input patch's statistics)."""
    knn_k: int = 200
    """kNN monitor: neighbours that vote (``eval/knn_top1``: weighted cosine kNN of the trunk's
    pooled features, the test split against labelled training images); 0 = no kNN monitor."""
    knn_temperature: float = 0.07
    """kNN monitor: votes weighted by exp(cosine / knn_temperature)."""
    knn_bank_size: int = 10000
    """kNN monitor, built-in data: labelled training images in the bank (the first N; 0 = all).
    Shards: the whole ``data.train_split`` of the first training source."""
    num_grid_images: int = 8
    """Images in the reconstruction grid written at each evaluation (``recon_step<N>.png``, inputs
    on top, reconstructions below, also logged to W&B); 0 = no grids."""


@dataclass
class MultitaskConfig:
    """Losses on the one trunk and their weights: ``reconstruction`` (the ``ae`` decoder),
    ``rotation`` (4-way rotation prediction, linear head) and ``contrastive`` (NT-Xent between two
    augmented views, negatives from all ranks, MLP projector). A weight of 0 switches a loss off;
    the total loss is the weighted sum."""

    weights: dict[str, float] = field(default_factory=lambda: {"reconstruction": 1.0})
    """Loss name -> weight, e.g. ``{reconstruction: 1.0, rotation: 0.5, contrastive: 0.5}``;
    override one with ``multitask.weights.rotation=0.5``."""
    temperature: float = 0.2
    """contrastive: NT-Xent temperature."""
    projection_dim: int = 128
    """contrastive: output size of the projector MLP."""
    projection_hidden_dim: int = 512
    """contrastive: hidden size of the projector MLP (2 layers, BN + ReLU between)."""
    view_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    """contrastive: crop area range (fraction of the image) of the two views' random resized
    crops (plus a horizontal flip each)."""
    view_vflip: bool = False
    """contrastive: vertical flip of each view with probability 1/2."""
    view_rotation_degrees: float = 0.0
    """contrastive: rotation of each view about its crop centre, uniform in +-this many degrees (0 = off)."""


@dataclass
class AutoencoderRunConfig(RunConfig):
    """The autoencoder recipe's config: RunConfig plus ``ae`` and ``multitask``."""

    recipe: str = "pretrain_autoencoder"
    name: str = "pretrain_autoencoder"
    model: ModelConfig = section(ModelConfig, name="small_cnn")
    data: DataConfig = section(DataConfig, augment="none", num_eval_samples=2000)
    optim: OptimConfig = section(OptimConfig, name="adamw", lr=0.002, weight_decay=0.05)
    schedule: ScheduleConfig = section(ScheduleConfig, warmup_steps=50)
    train: TrainConfig = section(TrainConfig, epochs=2, eval_every_steps=200)
    ae: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    multitask: MultitaskConfig = field(default_factory=MultitaskConfig)


def active_tasks(config: AutoencoderRunConfig) -> dict[str, float]:
    """The losses with a non-zero weight."""
    return {name: weight for name, weight in config.multitask.weights.items() if weight != 0}


def _check_multitask(config: AutoencoderRunConfig) -> None:
    weights = config.multitask.weights
    unknown = sorted(set(weights) - set(TASK_NAMES))
    if unknown:
        raise ConfigError(f"multitask.weights has unknown loss(es) {unknown}; the losses are {', '.join(TASK_NAMES)}")
    negative = {k: v for k, v in weights.items() if v < 0}
    if negative:
        raise ConfigError(f"multitask.weights {negative} must be >= 0 (0 switches a loss off)")
    tasks = active_tasks(config)
    if not tasks:
        raise ConfigError("multitask.weights switches every loss off; give at least one a weight > 0, "
                          "e.g. multitask.weights.reconstruction=1.0")
    mt = config.multitask
    if "contrastive" in tasks:
        for key in ("temperature", "projection_dim", "projection_hidden_dim"):
            if getattr(mt, key) <= 0:
                raise ConfigError(f"multitask.{key}={getattr(mt, key)} must be > 0")
        if len(mt.view_scale) != 2 or not 0 < mt.view_scale[0] <= mt.view_scale[1] <= 1:
            raise ConfigError(f"multitask.view_scale={mt.view_scale} must be [min, max] with 0 < min <= max <= 1, "
                              "e.g. [0.2, 1.0]")
        if not 0 <= mt.view_rotation_degrees <= 180:
            raise ConfigError(f"multitask.view_rotation_degrees={mt.view_rotation_degrees} must lie in [0, 180]")
    if "reconstruction" not in tasks:
        raise ConfigError("multitask.weights.reconstruction must be > 0: this recipe always trains the autoencoder "
                          "(its evaluation and grids are reconstructions); for a contrastive-only run use "
                          "recipes/pretrain_contrastive.py")
    if config.ae.kind == "mae" and set(tasks) != {"reconstruction"}:
        raise ConfigError(f"ae.kind=mae trains the masked-patch reconstruction only, but multitask.weights "
                          f"asks for {sorted(tasks)}; use ae.kind=conv for multi-task pretraining")


def _check_ae(config: AutoencoderRunConfig) -> None:
    ae, size = config.ae, config.data.image_size
    if ae.num_grid_images < 0:
        raise ConfigError(f"ae.num_grid_images={ae.num_grid_images} must be >= 0 (0 = no reconstruction grids)")
    if ae.knn_k < 0 or ae.knn_bank_size < 0 or ae.knn_temperature <= 0:
        raise ConfigError(f"ae.knn_k={ae.knn_k} and ae.knn_bank_size={ae.knn_bank_size} must be >= 0 (knn_k=0 "
                          f"switches the kNN monitor off) and ae.knn_temperature={ae.knn_temperature} > 0")
    if ae.kind == "conv":
        factor = 2 ** (len(ae.decoder_channels) - 1)
        if not ae.decoder_channels or any(c <= 0 for c in ae.decoder_channels):
            raise ConfigError(f"ae.decoder_channels={ae.decoder_channels} must be a non-empty list of positive widths")
        if size % factor:
            raise ConfigError(f"ae.decoder_channels={ae.decoder_channels} doubles the feature map "
                              f"{len(ae.decoder_channels) - 1} times, so data.image_size={size} must be divisible "
                              f"by {factor}; drop a decoder width or change the image size")
        return
    patch = VIT_PRESETS[ae.vit].patch_size
    if size % patch:
        raise ConfigError(f"data.image_size={size} is not a multiple of ae.vit={ae.vit!r}'s patch size {patch}; "
                          "choose another image size or a *_p8 / patch-4 preset that divides it")
    num_patches = (size // patch) ** 2
    if not 0 < ae.mask_ratio < 1 or not 1 <= int(num_patches * (1 - ae.mask_ratio)) < num_patches:
        raise ConfigError(f"ae.mask_ratio={ae.mask_ratio} must lie in (0, 1) and leave between 1 and "
                          f"{num_patches - 1} of the {num_patches} patches visible (e.g. 0.75)")
    for key in ("decoder_dim", "decoder_depth", "decoder_heads"):
        if getattr(ae, key) <= 0:
            raise ConfigError(f"ae.{key}={getattr(ae, key)} must be > 0")
    if ae.decoder_dim % ae.decoder_heads:
        raise ConfigError(f"ae.decoder_dim={ae.decoder_dim} must be divisible by ae.decoder_heads={ae.decoder_heads}")


def validate_autoencoder(config: AutoencoderRunConfig) -> None:
    """Check the ``ae`` and ``multitask`` sections; raise ConfigError naming the key on the first
    problem. Run it before :func:`cvdist.engine.start_session`, which checks the common sections."""
    _check_ae(config)
    _check_multitask(config)
