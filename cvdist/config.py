"""Typed run configuration: dataclasses, loaded from a recipe's YAML and command-line overrides.

A recipe's YAML file gives its defaults; ``key=value`` overrides (``optim.lr=0.05
dist.strategy=zero2``) are applied on top. OmegaConf checks keys and types against the
dataclasses below; :func:`validate` then checks choices and combinations. Every problem raises
:class:`ConfigError` naming the key and what is allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cvdist.models.classifiers import MODEL_NAMES


class ConfigError(ValueError):
    """A user error in the configuration; the message names the key and the fix."""


@dataclass
class ModelConfig:
    name: str = "tiny_cnn"
    """Backbone: see ``cvdist.models.MODEL_NAMES``, or ``timm:<name>`` for any timm model (``.[timm]``)."""
    num_classes: int = 10
    """Classes of the classification head."""
    in_channels: int = 1
    """Image channels (1 for grey images such as Fashion-MNIST, 3 for RGB)."""
    small_stem: bool = True
    """ResNets only: 3x3 stem conv without max-pool, for 28-64 px inputs."""


@dataclass
class DataConfig:
    train_shards: list[str] = field(default_factory=list)
    """Training sources: shard directories with a manifest, or shard patterns / URLs (``dir/train-*.tar``,
    ``train-{000000..000099}.tar``, ``pipe:...``, ``https://...``). Empty = the built-in in-memory data set."""
    train_weights: list[float] = field(default_factory=list)
    """Mixing weights of several ``train_shards`` sources (empty = equal)."""
    eval_shards: str = ""
    """Evaluation source (empty = the ``eval_split`` of the first training source's manifest)."""
    train_split: str = "train"
    """Split of a manifest to train on."""
    eval_split: str = "test"
    """Split of a manifest to evaluate on."""
    num_samples: int = 0
    """Samples per epoch for sources without a manifest (remote shards), as in OpenCLIP; 0 = from manifests."""
    shuffle_buffer: int = 1000
    """Samples held per reader for shuffling (0 = no sample shuffling; shards are still shuffled)."""
    sampling: str = "instance"
    """Class-aware re-sampling: ``instance``, ``class_balanced``, ``sqrt`` or ``progressive``."""
    max_corrupt: int = 100
    """Corrupt samples / shards a rank may skip per epoch before the run stops."""
    augment: str = "flip"
    """Augmentation preset for training: ``none``, ``flip``, ``standard``, ``strong``."""
    image_size: int = 28
    """Side of the (square) training and evaluation images."""
    mean: list[float] = field(default_factory=lambda: [0.5])
    """Normalisation mean per channel."""
    std: list[float] = field(default_factory=lambda: [0.5])
    """Normalisation std per channel."""
    multi_scale: list[float] = field(default_factory=list)
    """Multi-scale training: each batch resized to one of these multiples of ``image_size`` (empty = off)."""
    dataset: str = "fashion_mnist"
    """Built-in data set when ``train_shards`` is empty: ``fashion_mnist`` (Debian package files) or ``synthetic``."""
    root: str = "/usr/share/datasets/fashion-mnist"
    """Directory with the Fashion-MNIST IDX files (``*-ubyte`` or ``*-ubyte.gz``)."""
    num_train_samples: int = 0
    """Built-in data: use only the first N training samples (0 = all)."""
    num_eval_samples: int = 0
    """Built-in data: use only the first N evaluation samples (0 = all)."""
    global_batch_size: int = 128
    """Samples per optimiser step over all processes and accumulation steps."""
    eval_batch_size: int = 256
    """Evaluation batch per process."""
    num_workers: int = 0
    """DataLoader worker processes per training process (shards only)."""


@dataclass
class OptimConfig:
    name: str = "sgd"
    """Optimiser: ``sgd``, ``adamw`` or ``lars``."""
    lr: float = 0.1
    """Peak learning rate (after warmup)."""
    momentum: float = 0.9
    """SGD / LARS momentum."""
    weight_decay: float = 5e-4
    """Decoupled for AdamW, L2 for SGD / LARS."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    lars_trust_coefficient: float = 0.001
    """LARS trust coefficient (eta)."""
    grad_clip_norm: float = 0.0
    """Clip the global gradient norm to this value (0 = no clipping)."""
    accum_steps: int = 1
    """Gradient accumulation: micro-batches per optimiser step."""


@dataclass
class ScheduleConfig:
    name: str = "cosine"
    """Learning-rate schedule: ``constant``, ``cosine``, ``step`` or ``onecycle``."""
    warmup_steps: int = 0
    """Linear warmup from 0 to ``optim.lr`` (constant, cosine, step)."""
    min_lr_ratio: float = 0.0
    """Cosine floor as a fraction of ``optim.lr``."""
    milestones: list[int] = field(default_factory=list)
    """Step schedule: optimiser steps at which the LR is multiplied by ``gamma``."""
    gamma: float = 0.1
    """Step schedule factor."""
    pct_start: float = 0.3
    """One-cycle: fraction of the run spent increasing the LR."""


@dataclass
class DistConfig:
    strategy: str = "auto"
    """``auto`` (ddp with several processes, else none), ``none``, ``ddp``, ``zero1``, ``zero2``, ``zero3``."""
    precision: str = "auto"
    """``auto`` (bf16 on GPUs that support it, else fp32), ``fp32``, ``bf16``, ``fp16`` (GPU only)."""
    deepspeed_config: str = ""
    """ZeRO only: a DeepSpeed JSON file merged into cvdist's config (offload, buckets, ...); batch
    sizes, precision, clipping, optimiser and schedule stay cvdist's (see launch/deepspeed/)."""
    channels_last: bool = True
    """Keep conv weights and image batches in channels-last memory format: the layout oneDNN (CPU)
    and cuDNN's tensor cores (GPU) convolve fastest (1.27-1.62x per training step for cvdist's CNNs
    on 2 CPU cores, bench/channels_last.py). Only the layout changes, not the values. Strategies
    none and ddp; ZeRO keeps NCHW (DeepSpeed packs parameters into flat buffers)."""


@dataclass
class CheckpointConfig:
    every_steps: int = 0
    """Save every N optimiser steps (0 = only at the end and on a stop signal)."""
    keep_last: int = 2
    """How many complete checkpoints to keep (older ones are deleted)."""
    resume: str = "none"
    """``none`` (a new run), ``auto`` (newest complete checkpoint of this run, if any) or a checkpoint path."""


@dataclass
class TrackingConfig:
    wandb_mode: str = ""
    """W&B mode: ``online``, ``offline`` or ``disabled``; empty = ``$WANDB_MODE``, else ``offline``."""
    project: str = "cvdist"
    """W&B project."""
    entity: Optional[str] = None
    """W&B entity (team or user); None = the account's default."""
    group: Optional[str] = None
    """W&B group; None = the recipe name."""
    job_type: Optional[str] = None
    """W&B job type; None = the recipe name."""
    tags: list[str] = field(default_factory=list)
    """W&B tags."""
    log_every_steps: int = 10
    """Log training metrics every N optimiser steps."""


@dataclass
class TrainConfig:
    max_steps: int = 0
    """Optimiser steps to train (0 = ``epochs`` full epochs)."""
    epochs: int = 1
    """Epochs to train when ``max_steps`` is 0."""
    eval_every_steps: int = 0
    """Evaluate every N optimiser steps (0 = only at the end)."""
    seed: int = 0
    """Seed for model initialisation, data order and augmentation."""


@dataclass
class RunConfig:
    name: str = "run"
    """Run name; the run directory is ``output_dir/name``."""
    output_dir: str = "runs"
    """Parent directory of run directories."""
    recipe: str = "supervised"
    """Recipe that wrote this config (set by the recipe)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# Allowed values of every string field that is a choice; checked by validate().
CHOICES: dict[str, tuple[str, ...]] = {
    "model.name": MODEL_NAMES,
    "data.dataset": ("fashion_mnist", "synthetic"),
    "data.sampling": ("instance", "class_balanced", "sqrt", "progressive"),
    "data.augment": ("none", "flip", "standard", "strong"),
    "optim.name": ("sgd", "adamw", "lars"),
    "schedule.name": ("constant", "cosine", "step", "onecycle"),
    "dist.strategy": ("auto", "none", "ddp", "zero1", "zero2", "zero3"),
    "dist.precision": ("auto", "fp32", "bf16", "fp16"),
    "tracking.wandb_mode": ("", "online", "offline", "disabled"),
}


def load_config(
    *, yaml_paths: Sequence[str | Path] = (), overrides: Sequence[str] = (), schema: type = RunConfig
) -> Any:
    """Build a typed config: ``schema`` defaults, then each YAML file in order, then ``key=value``
    overrides.

    Raises ConfigError for a missing or malformed file, an unknown key or a wrong type.
    Returns an instance of ``schema`` (a plain dataclass, not an OmegaConf object).
    """
    layers = [OmegaConf.structured(schema)]
    for yaml_path in yaml_paths:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; pass an existing YAML file")
        try:
            layers.append(OmegaConf.load(path))
        except Exception as error:  # yaml.YAMLError and friends
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=0.05)")
    for item in overrides:
        try:
            layers.append(OmegaConf.from_dotlist([item]))
        except Exception as error:  # yaml.YAMLError from the value's YAML parse
            raise ConfigError(
                f"override {item!r}: the value is not valid YAML ({str(error).splitlines()[0]}); quote values "
                "holding braces, commas or colons, e.g. data.train_shards=['shards/train-{000000..000009}.tar']"
            ) from None
    try:
        return OmegaConf.to_object(OmegaConf.merge(*layers))
    except OmegaConfBaseException as error:
        raise ConfigError(_explain_omegaconf_error(error, schema)) from None


def _explain_omegaconf_error(error: OmegaConfBaseException, schema: type) -> str:
    key = getattr(error, "full_key", None) or "?"
    message = str(error).splitlines()[0]
    if type(error).__name__ == "ConfigKeyError":
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        allowed = _keys_of(schema, parent)
        return f"unknown config key {key!r}; allowed keys{' under ' + parent if parent else ''}: {', '.join(allowed)}"
    return f"bad value for config key {key!r}: {message}"


def _keys_of(schema: type, dotted_parent: str) -> list[str]:
    config_class = schema
    for part in filter(None, dotted_parent.split(".")):
        hints = {f.name: f for f in dataclasses.fields(config_class)}
        if part not in hints:
            return []
        config_class = type(hints[part].default_factory())  # type: ignore[misc]
    return [f.name for f in dataclasses.fields(config_class)]


def get_by_path(config: Any, dotted: str) -> Any:
    """``get_by_path(cfg, "optim.lr")`` -> ``cfg.optim.lr``."""
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def validate(config: RunConfig, *, world_size: int) -> None:
    """Check choices and combinations that types cannot express; raise ConfigError on the first."""
    for key, allowed in CHOICES.items():
        value = get_by_path(config, key)
        if value not in allowed and not (key == "model.name" and str(value).startswith("timm:")):
            shown = ", ".join(repr(a) for a in allowed)
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {shown}"
                              + (" or timm:<name>" if key == "model.name" else ""))
    positive = {
        "data.global_batch_size": config.data.global_batch_size,
        "optim.accum_steps": config.optim.accum_steps,
        "optim.lr": config.optim.lr,
        "checkpoint.keep_last": config.checkpoint.keep_last,
        "tracking.log_every_steps": config.tracking.log_every_steps,
        "model.num_classes": config.model.num_classes,
        "model.in_channels": config.model.in_channels,
        "data.image_size": config.data.image_size,
        "data.eval_batch_size": config.data.eval_batch_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}={value} must be > 0")
    non_negative = {
        "data.num_workers": config.data.num_workers,
        "data.num_samples": config.data.num_samples,
        "data.shuffle_buffer": config.data.shuffle_buffer,
        "data.max_corrupt": config.data.max_corrupt,
        "data.num_train_samples": config.data.num_train_samples,
        "data.num_eval_samples": config.data.num_eval_samples,
        "train.max_steps": config.train.max_steps,
        "train.epochs": config.train.epochs,
        "train.eval_every_steps": config.train.eval_every_steps,
        "checkpoint.every_steps": config.checkpoint.every_steps,
        "schedule.warmup_steps": config.schedule.warmup_steps,
        "optim.grad_clip_norm": config.optim.grad_clip_norm,
        "optim.weight_decay": config.optim.weight_decay,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key}={value} must be >= 0")
    if config.train.max_steps == 0 and config.train.epochs == 0:
        raise ConfigError("train.max_steps and train.epochs are both 0; set one of them > 0")
    divisor = world_size * config.optim.accum_steps
    if config.data.global_batch_size % divisor != 0:
        raise ConfigError(
            f"data.global_batch_size={config.data.global_batch_size} is not divisible by "
            f"processes x optim.accum_steps = {world_size} x {config.optim.accum_steps} = {divisor}; "
            f"use a multiple of {divisor}"
        )
    if config.dist.deepspeed_config and not config.dist.strategy.startswith("zero"):
        raise ConfigError(f"dist.deepspeed_config={config.dist.deepspeed_config!r} applies to ZeRO only but "
                          f"dist.strategy={config.dist.strategy!r}; set dist.strategy=zero1/zero2/zero3 or remove it")
    if config.dist.strategy == "none" and world_size > 1:
        raise ConfigError(
            f"dist.strategy='none' runs one process but {world_size} were started; "
            "use dist.strategy=ddp (or auto, zero1, zero2, zero3)"
        )
    for key in ("data.mean", "data.std"):
        if len(get_by_path(config, key)) != config.model.in_channels:
            raise ConfigError(f"{key}={get_by_path(config, key)} needs one value per channel "
                              f"(model.in_channels={config.model.in_channels})")
    if any(scale <= 0 for scale in config.data.multi_scale):
        raise ConfigError(f"data.multi_scale={config.data.multi_scale} must hold positive factors, e.g. [0.5, 1.0, 1.5]")
    if config.data.train_weights and len(config.data.train_weights) != len(config.data.train_shards):
        raise ConfigError(f"data.train_weights has {len(config.data.train_weights)} values for "
                          f"{len(config.data.train_shards)} data.train_shards sources; give one per source")
    if len(config.optim.betas) != 2:
        raise ConfigError(f"optim.betas={config.optim.betas} must have two values, e.g. [0.9, 0.999]")
    if not 0.0 <= config.schedule.min_lr_ratio <= 1.0:
        raise ConfigError(f"schedule.min_lr_ratio={config.schedule.min_lr_ratio} must lie in [0, 1]")
    if not 0.0 < config.schedule.pct_start < 1.0:
        raise ConfigError(f"schedule.pct_start={config.schedule.pct_start} must lie in (0, 1)")
    if sorted(config.schedule.milestones) != list(config.schedule.milestones):
        raise ConfigError(f"schedule.milestones={config.schedule.milestones} must be increasing")
    resume = config.checkpoint.resume
    if resume not in ("none", "auto") and not Path(resume).exists():
        raise ConfigError(
            f"checkpoint.resume={resume!r}: no such checkpoint; use 'none', 'auto' or an existing path"
        )
    if "/" in config.name or config.name in ("", ".", ".."):
        raise ConfigError(f"name={config.name!r} must be a plain directory name (no '/')")


def to_yaml(config: Any) -> str:
    """The resolved config as YAML text (what is written to ``config.yaml``)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_dict(config: Any) -> dict:
    """The resolved config as plain nested dicts (for W&B and run records)."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)  # type: ignore[return-value]


RECIPE_USAGE = """usage: {prog} [--config FILE.yaml] [key=value ...]

Runs the recipe with its defaults ({defaults}), then FILE.yaml, then the overrides,
e.g. optim.lr=0.05 dist.strategy=zero2 train.max_steps=100 name=my-run.
Config sections: {sections}."""


def load_recipe_config(argv: Sequence[str], *, default_yaml: str | Path, recipe: str,
                       schema: type = RunConfig) -> Any:
    """Parse a recipe's command line (``[--config FILE] key=value ...``) into a typed config.

    The recipe's own YAML is applied first, then ``--config`` files, then overrides. ``-h``
    prints the usage and the top-level sections and exits.
    """
    overrides, yaml_paths = [], [default_yaml]
    items = list(argv)
    while items:
        item = items.pop(0)
        if item in ("-h", "--help"):
            sections = ", ".join(f.name for f in dataclasses.fields(schema))
            print(RECIPE_USAGE.format(prog=recipe, defaults=default_yaml, sections=sections))
            raise SystemExit(0)
        if item == "--config":
            if not items:
                raise ConfigError("--config needs a file name")
            yaml_paths.append(items.pop(0))
        elif item.startswith("--config="):
            yaml_paths.append(item.split("=", 1)[1])
        elif item.startswith("-"):
            raise ConfigError(f"unknown option {item!r}; pass settings as key=value (e.g. optim.lr=0.05)")
        else:
            overrides.append(item)
    config = load_config(yaml_paths=yaml_paths, overrides=overrides, schema=schema)
    config.recipe = recipe
    return config


# --- Long-tail recipe (recipes/longtail.py): extra sections on top of RunConfig --------------------
# Imported here rather than at the top: only this appended part needs the loss registry.
from cvdist.losses.longtail import LOSS_NAMES, loss_options  # noqa: E402


@dataclass
class LossConfig:
    """The training loss (``cvdist.losses.longtail.build_longtail_loss``); each option applies to
    the losses named in its docstring and is refused, when changed, for any other loss."""

    name: str = "balanced_softmax"
    """``ce``, ``weighted_ce``, ``class_balanced``, ``focal``, ``ldam``, ``balanced_softmax``, ``logit_adjusted``."""
    label_smoothing: float = 0.0
    """Label smoothing in [0, 1) (ce, weighted_ce, class_balanced, logit_adjusted)."""
    weights: list[float] = field(default_factory=list)
    """weighted_ce: one weight per class (empty = inverse frequency, mean 1)."""
    beta: float = 0.9999
    """class_balanced: effective-number beta in [0, 1)."""
    base: str = "ce"
    """class_balanced: ``ce`` or ``focal``."""
    gamma: float = 2.0
    """focal, class_balanced with base=focal: focusing exponent."""
    alpha: Optional[float] = None
    """focal: one weight for every class (None = 1)."""
    max_m: float = 0.5
    """ldam: largest margin (rarest class)."""
    s: float = 1.0
    """ldam: logit scale; 1 for cvdist's linear heads (the paper's 30 assumes cosine logits)."""
    drw_epoch: Optional[int] = None
    """ldam: epoch (0-based) from which deferred re-weighting (DRW) applies; None = never."""
    drw_beta: float = 0.9999
    """ldam: class-balanced beta of the DRW weights."""
    tau: float = 1.0
    """logit_adjusted: offset scale tau >= 0."""
    reduction: str = "mean"
    """weighted_ce, class_balanced, focal, ldam: ``mean`` (plain batch mean) or ``weighted_mean``."""


@dataclass
class LongtailConfig:
    """Long-tail training stages, built-in long-tailed data, evaluation and tau-normalisation."""

    stage: str = "joint"
    """``joint`` (train the whole model) or ``crt`` (classifier re-training: the backbone loaded from
    ``transfer.from_path`` is frozen, the head re-initialised; needs ``data.sampling`` != instance)."""
    imbalance_factor: float = 1.0
    """Built-in data only (ignored with ``data.train_shards``, like ``data.dataset``): keep
    ``floor(n_max * IF^(-c/(C-1)))`` training samples of class c (``cvdist shards longtail``'s
    profile; 1 = keep all). For shards, write a long-tailed set with ``cvdist shards longtail``."""
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
    loss: LossConfig = field(default_factory=LossConfig)
    longtail: LongtailConfig = field(default_factory=LongtailConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    multitask: MultitaskConfig = field(default_factory=MultitaskConfig)


LONGTAIL_CHOICES: dict[str, tuple[str, ...]] = {
    "loss.name": LOSS_NAMES,
    "loss.base": ("ce", "focal"),
    "loss.reduction": ("mean", "weighted_mean"),
    "longtail.stage": ("joint", "crt"),
}


def longtail_loss_options(loss: LossConfig) -> dict[str, Any]:
    """The ``build_longtail_loss`` keyword options of ``loss`` that its ``name`` accepts."""
    options = {name: getattr(loss, name) for name in loss_options(loss.name)}
    if "weights" in options:
        options["weights"] = list(options["weights"]) or None
    return options


def check_loss_options(loss: LossConfig) -> None:
    # A changed option that the chosen loss ignores is a mistake the user should hear about.
    accepted, defaults = set(loss_options(loss.name)), LossConfig()
    for item in dataclasses.fields(LossConfig):
        if item.name != "name" and item.name not in accepted and getattr(loss, item.name) != getattr(defaults, item.name):
            users = [n for n in LOSS_NAMES if item.name in loss_options(n)]
            raise ConfigError(f"loss.{item.name} is not used by loss.name={loss.name!r}; it applies to "
                              f"{', '.join(users)}. Remove the override or choose one of those losses")


def _check_longtail_data(config: LongtailRunConfig) -> None:
    lt, shards = config.longtail, bool(config.data.train_shards)
    if lt.imbalance_factor < 1:
        raise ConfigError(f"longtail.imbalance_factor={lt.imbalance_factor} must be >= 1 (1 = keep all samples)")
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
    for key, allowed in LONGTAIL_CHOICES.items():
        value = get_by_path(config, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(repr(a) for a in allowed)}")
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
