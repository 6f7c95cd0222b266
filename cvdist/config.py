"""Typed run configuration: the shared sections (dataclasses), their checks, and the resolved
config as written to ``config.yaml`` / W&B.

A recipe's YAML file gives its defaults; ``key=value`` overrides (``optim.lr=0.05
dist.strategy=zero2``) are applied on top (:mod:`cvdist.config_loading`). OmegaConf checks keys
and types against the dataclasses below; :func:`validate` then checks ranges and combinations.
Every problem raises :class:`ConfigError` naming the key and what is allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Sequence

from omegaconf import OmegaConf

from cvdist.models.classifiers import MODEL_NAMES
from cvdist.redact import redact, redact_text


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
    ``train-{000000..000099}.tar``, ``pipe:...``, ``https://...``). Empty = the built-in data set
    (``dataset``), written as shards into ``cache_dir`` on first use and read the same way."""
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
    sampling: Literal["instance", "class_balanced", "sqrt", "progressive"] = "instance"
    """Class-aware re-sampling: ``instance``, ``class_balanced``, ``sqrt`` or ``progressive``."""
    max_corrupt: int = 100
    """Corrupt samples / shards a rank may skip per epoch before the run stops."""
    max_member_bytes: int = 64 * 1024 * 1024
    """Largest image / label member read from a shard; a larger one is a corrupt shard, refused
    from its tar header before any byte of it is read (64 MiB)."""
    max_image_pixels: int = 4096 * 4096
    """Largest image decoded (width x height, read from the image header before decoding); a
    larger one is a corrupt sample (16.8 megapixels: 48 MiB decoded as RGB)."""
    augment: Literal["none", "flip", "standard", "strong"] = "flip"
    """Augmentation preset for training: ``none``, ``flip``, ``standard``, ``strong``; the five
    options below override its defaults (None / empty = the preset's; see README "Augmentation")."""
    hflip: Optional[float] = None
    """Horizontal flip probability (presets flip, standard, strong; default 0.5)."""
    vflip: Optional[float] = None
    """Vertical flip probability (presets flip, standard, strong; default 0)."""
    rotation_degrees: Optional[float] = None
    """Random rotation by up to this many degrees either way (presets standard: default 0, strong: 15)."""
    color_jitter: Optional[float] = None
    """Colour jitter strength (preset strong; default 0.4)."""
    crop_scale: list[float] = field(default_factory=list)
    """RandomResizedCrop's area range [low, high] (presets standard, strong; default [0.35, 1])."""
    jpeg_draft: bool = True
    """Presets standard, strong: decode a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) when
    its random crop is still at least ``image_size`` there; the crop is drawn from the full-size
    image as before (same seeds, same crops) and the pixels differ from full decoding by a small
    tolerance (see cvdist/data/jpeg_draft.py). False = decode every image in full, bit-identical
    to earlier versions. PNG / WebP images and the other presets are unaffected."""
    device_normalise: Optional[bool] = None
    """Where training batches become normalised float32: ``true``: on the training device, after
    the uint8 batch is copied there (4x fewer bytes to copy; pinned memory, non-blocking);
    ``false``: in the data pipeline's main process; null (default): on the device when it is a
    GPU. Same values either way (the same torchvision kernels). Not with ``multi_scale``."""
    image_size: int = 28
    """Side of the (square) training and evaluation images."""
    mean: list[float] = field(default_factory=lambda: [0.5])
    """Normalisation mean per channel."""
    std: list[float] = field(default_factory=lambda: [0.5])
    """Normalisation std per channel."""
    multi_scale: list[float] = field(default_factory=list)
    """Multi-scale training: each batch resized to one of these multiples of ``image_size`` (empty = off)."""
    dataset: Literal["fashion_mnist", "synthetic"] = "fashion_mnist"
    """Built-in data set when ``train_shards`` is empty: ``fashion_mnist`` (Debian package files) or ``synthetic``."""
    root: str = "/usr/share/datasets/fashion-mnist"
    """Directory with the Fashion-MNIST IDX files (``*-ubyte`` or ``*-ubyte.gz``)."""
    num_train_samples: int = 0
    """Built-in data: use only the first N training samples (0 = all)."""
    num_eval_samples: int = 0
    """Built-in data: use only the first N evaluation samples (0 = all)."""
    imbalance_factor: float = 1.0
    """Built-in data only (ignored with ``train_shards``, like ``dataset``): keep
    ``floor(n_max * IF^(-c/(C-1)))`` training samples of class c (``cvdist shards longtail``'s
    profile, class 0 the head; 1 = keep all). For shards, write a long-tailed set with
    ``cvdist shards longtail``."""
    cache_dir: str = ""
    """Local cache: the built-in data written as shards on first use, and ``http(s)://`` /
    ``pipe:`` shards fetched once into ``remote-shards/`` (empty = ``$CVDIST_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/cvdist``, else ``~/.cache/cvdist``); see ``cvdist/data/builtin_shards.py``
    and ``cvdist/data/remote_cache.py``."""
    cache_limit_gb: float = 50.0
    """Size limit of the remote-shard cache (``cache_dir/remote-shards``) in GB (2**30 bytes):
    least recently used whole shards are deleted beyond it, never one a reader has open."""
    remote_retries: int = 3
    """Retries of a remote shard fetch after a transient error (connection reset, timeout, HTTP
    5xx, truncated body, failing ``pipe:`` command), with exponential back-off; each is counted
    (``data/remote_retries``) and the final failure is a corrupt shard."""
    remote_timeout_s: float = 60.0
    """Seconds a remote fetch may go without receiving a byte (socket timeout) before the attempt fails."""
    global_batch_size: int = 128
    """Samples per optimiser step over all processes and accumulation steps."""
    eval_batch_size: int = 256
    """Evaluation batch per process."""
    num_workers: int = 0
    """DataLoader worker processes per training process."""
    persistent_workers: bool = True
    """Keep the DataLoader workers alive across epochs (each epoch's plan reaches them through shared
    memory) instead of starting them again every epoch; the batches are the same either way."""
    allow_pipe: bool = False
    """Allow ``pipe:`` sources, which run a shell command from the config (each command is
    logged once); off by default so a config from elsewhere cannot run code."""


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw", "lars"] = "sgd"
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
    name: Literal["constant", "cosine", "step", "onecycle"] = "cosine"
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
    strategy: Literal["auto", "none", "ddp", "zero1", "zero2", "zero3", "fsdp"] = "auto"
    """``auto`` (ddp with several processes, else none), ``none``, ``ddp``, ``zero1``, ``zero2``, ``zero3``,
    ``fsdp`` (PyTorch's FSDP2, ``fully_shard`` per block: cvdist/engine/fsdp.py)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """``auto`` (bf16 on GPUs that support it, else fp32), ``fp32``, ``bf16`` (GPU, or CPU autocast),
    ``fp16`` (GPU only)."""
    deepspeed_config: str = ""
    """ZeRO only: a DeepSpeed JSON file merged into cvdist's config (offload, buckets, ...); batch
    sizes, precision, clipping, optimiser and schedule stay cvdist's (see launch/deepspeed/)."""
    activation_checkpointing: bool = False
    """Keep only the inputs of each residual block / transformer layer / conv block in the forward
    pass and recompute its activations in the backward pass: less activation memory for about one
    more forward pass of compute (``cvdist/models/checkpointing.py``, bench/activation_checkpointing.py)."""
    channels_last: bool = True
    """Keep conv weights and image batches in channels-last memory format: the layout oneDNN (CPU)
    and cuDNN's tensor cores (GPU) convolve fastest (1.27-1.62x per training step for cvdist's CNNs
    on 2 CPU cores, bench/channels_last.py). Only the layout changes, not the values. Strategies
    none and ddp; ZeRO keeps NCHW (DeepSpeed packs parameters into flat buffers)."""
    compile: bool = False
    """``torch.compile`` the model (strategies none and ddp; fsdp: each block before it is sharded):
    the first forward pays the compilation
    (logged); off by default because a small CNN on 2 CPU cores ran slower compiled (bench/cpu_steps.py)."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    """``torch.compile``'s mode when ``dist.compile`` is on."""
    fsdp_reshard_after_forward: bool = True
    """fsdp: free each block's gathered parameters after its forward and gather them again for the
    backward (least memory, like ZeRO-3); ``false`` keeps them until the backward (like ZeRO-2)."""
    fsdp_cpu_offload: bool = False
    """fsdp: keep the parameter shards, gradients and optimiser state in host memory (FSDP2's
    ``CPUOffloadPolicy``) and step the optimiser there; on GPUs, for models whose state does not fit."""
    fsdp_checkpoint: Literal["sharded", "full"] = "sharded"
    """fsdp: ``sharded`` (every rank writes its shards with torch.distributed.checkpoint; loads
    with any number of processes) or ``full`` (gathered; rank 0 writes a plain ``model.pt``)."""
    timeout_s: int = 600
    """Seconds a rank waits in one collective (gradient all-reduce, barrier, ...) before it gives
    up: a dead or hung rank ends the job within about this time, with an error naming it (DDP and
    ZeRO; torch's own default is 30 minutes for gloo). Raise it when one rank may work alone for
    longer, e.g. a first-time scan of many shards."""


@dataclass
class CheckpointConfig:
    every_steps: int = 200
    """Save every N optimiser steps (0 = only at the end and on a stop signal)."""
    keep_last: int = 2
    """How many complete checkpoints to keep (older ones are deleted)."""
    resume: str = "none"
    """``none`` (a new run), ``auto`` (newest complete checkpoint of this run, if any) or a checkpoint path."""
    lock_stale_after_s: int = 3600
    """A run directory's lock whose heartbeat (renewed at every log row and checkpoint) is older
    than this is taken over as left by a dead job (dead processes on the same machine and a
    requeue of the same SLURM job are recognised at once)."""


@dataclass
class TrackingConfig:
    wandb_mode: Literal["", "online", "offline", "disabled"] = ""
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
    log_every_steps: int = 20
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
    max_nonfinite_steps: int = 0
    """Optimiser steps with a NaN / inf loss (on any rank) to skip without an update, as loss
    scaling does; the next one stops the run with an error (0 = stop at the first). none / ddp only."""


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


def section(schema: type, **values: Any) -> Any:
    """A dataclass field whose default is ``schema(**values)``: how a task states its own defaults
    for a shared section (e.g. ``model: ModelConfig = section(ModelConfig, name="small_cnn")``).
    A task's defaults live in its schema; its recipe YAML repeats them for reading and a test
    keeps the two equal."""
    return field(default_factory=lambda: schema(**values))


def leaf_values(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every leaf of a config (dataclasses, dicts, lists, nested):
    ``("optim.lr", 0.1)``, ``("data.train_shards[0]", "shards/x")``."""
    items = ({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}.items()
             if dataclasses.is_dataclass(value) else value.items() if isinstance(value, dict)
             else enumerate(value) if isinstance(value, list) else None)
    if items is None:
        yield key, value
        return
    for name, item in items:
        yield from leaf_values(item, f"{key}[{name}]" if isinstance(name, int) else f"{key}.{name}" if key else str(name))


def not_allowed(key: str, value: Any, allowed: Sequence[Any], *, also: str = "") -> str:
    """The one message for a value outside a choice field's allowed values."""
    return f"{key}={value!r} is not allowed; choose one of {', '.join(repr(a) for a in allowed)}{also}"


def get_by_path(config: Any, dotted: str) -> Any:
    """``get_by_path(cfg, "optim.lr")`` -> ``cfg.optim.lr``."""
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _check_pipe_sources(config: Any) -> None:
    """ConfigError naming the first field (of any section) that holds a ``pipe:`` shard source
    while ``data.allow_pipe`` is off."""
    if config.data.allow_pipe:
        return
    for key, value in leaf_values(config):
        if isinstance(value, str) and any(part.startswith("pipe:") for part in value.split("::")):
            raise ConfigError(f"{key}={redact_text(value)!r} runs a shell command (a pipe: source); set "
                              "data.allow_pipe=true if you trust this config, or copy the shards to a local directory")


def validate(config: RunConfig, *, world_size: int) -> None:
    """Check what types cannot express (choice fields are ``Literal`` types, checked when the
    config loads): ranges, combinations and the launch; raise ConfigError on the first problem."""
    name = config.model.name
    if name not in MODEL_NAMES and not name.startswith("timm:"):
        raise ConfigError(not_allowed("model.name", name, MODEL_NAMES, also=" or timm:<name>"))
    _check_ranges(config)
    _check_launch(config, world_size=world_size)
    _check_data_and_schedule(config)
    _check_pipe_sources(config)
    resume = config.checkpoint.resume
    if resume not in ("none", "auto") and not Path(resume).exists():
        raise ConfigError(
            f"checkpoint.resume={resume!r}: no such checkpoint; use 'none', 'auto' or an existing path"
        )
    if "/" in config.name or config.name in ("", ".", ".."):
        raise ConfigError(f"name={config.name!r} must be a plain directory name (no '/')")


_POSITIVE = ("data.global_batch_size", "optim.accum_steps", "optim.lr", "checkpoint.keep_last",
             "checkpoint.lock_stale_after_s", "tracking.log_every_steps", "model.num_classes", "model.in_channels",
             "data.image_size", "data.eval_batch_size", "dist.timeout_s", "data.max_member_bytes",
             "data.max_image_pixels", "data.cache_limit_gb", "data.remote_timeout_s")
_NON_NEGATIVE = ("data.num_workers", "data.num_samples", "data.shuffle_buffer", "data.max_corrupt", "data.remote_retries",
                 "data.num_train_samples", "data.num_eval_samples", "train.max_steps", "train.epochs",
                 "train.eval_every_steps", "train.max_nonfinite_steps", "checkpoint.every_steps",
                 "schedule.warmup_steps", "optim.grad_clip_norm", "optim.weight_decay")


def _check_ranges(config: RunConfig) -> None:
    for key in _POSITIVE:
        if get_by_path(config, key) <= 0:
            raise ConfigError(f"{key}={get_by_path(config, key)} must be > 0")
    for key in _NON_NEGATIVE:
        if get_by_path(config, key) < 0:
            raise ConfigError(f"{key}={get_by_path(config, key)} must be >= 0")
    if config.train.max_steps == 0 and config.train.epochs == 0:
        raise ConfigError("train.max_steps and train.epochs are both 0; set one of them > 0")


def _check_launch(config: RunConfig, *, world_size: int) -> None:
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
    if config.train.max_nonfinite_steps and config.dist.strategy.startswith("zero"):
        # DeepSpeed steps its optimiser inside the accumulation boundary's backward, with no
        # hook to drop one update; under ZeRO a non-finite loss always stops the run.
        raise ConfigError(f"train.max_nonfinite_steps={config.train.max_nonfinite_steps} (skipping steps) is not "
                          f"available under dist.strategy={config.dist.strategy}; set it to 0 (stop at the first "
                          "NaN / inf loss) or use dist.strategy=ddp")
    if config.dist.compile and config.dist.strategy.startswith("zero"):
        raise ConfigError(f"dist.compile=true works with dist.strategy none / ddp / fsdp / auto, not "
                          f"{config.dist.strategy} (DeepSpeed's engine is not compiled by cvdist); set dist.compile=false")
    if config.dist.strategy == "none" and world_size > 1:
        raise ConfigError(
            f"dist.strategy='none' runs one process but {world_size} were started; "
            "use dist.strategy=ddp (or auto, zero1, zero2, zero3, fsdp)"
        )
    _check_fsdp_options(config.dist)


def _check_fsdp_options(dist: DistConfig) -> None:
    """The ``dist.fsdp_*`` options mean something only under ``dist.strategy=fsdp``."""
    if dist.strategy == "fsdp":
        return
    defaults = DistConfig()
    for name in ("fsdp_reshard_after_forward", "fsdp_cpu_offload", "fsdp_checkpoint"):
        if getattr(dist, name) != getattr(defaults, name):
            raise ConfigError(f"dist.{name} is an FSDP option but dist.strategy={dist.strategy!r}; "
                              f"set dist.strategy=fsdp or remove dist.{name}")


def _check_data_and_schedule(config: RunConfig) -> None:
    for key in ("data.mean", "data.std"):
        if len(get_by_path(config, key)) != config.model.in_channels:
            raise ConfigError(f"{key}={get_by_path(config, key)} needs one value per channel "
                              f"(model.in_channels={config.model.in_channels})")
    if config.data.imbalance_factor < 1:
        raise ConfigError(f"data.imbalance_factor={config.data.imbalance_factor} must be >= 1 (1 = keep all samples)")
    if any(scale <= 0 for scale in config.data.multi_scale):
        raise ConfigError(f"data.multi_scale={config.data.multi_scale} must hold positive factors, e.g. [0.5, 1.0, 1.5]")
    if config.data.train_weights and len(config.data.train_weights) != len(config.data.train_shards):
        raise ConfigError(f"data.train_weights has {len(config.data.train_weights)} values for "
                          f"{len(config.data.train_shards)} data.train_shards sources; give one per source")
    if len(config.optim.betas) != 2 or not all(0 <= b < 1 for b in config.optim.betas):
        raise ConfigError(f"optim.betas={config.optim.betas} must be two values in [0, 1), e.g. [0.9, 0.999]")
    if not 0 <= config.optim.momentum < 1:
        raise ConfigError(f"optim.momentum={config.optim.momentum} must lie in [0, 1) (e.g. 0.9)")
    if any(s <= 0 for s in config.data.std):
        raise ConfigError(f"data.std={config.data.std} must be > 0 per channel (it divides the pixels)")
    if any(w < 0 for w in config.data.train_weights) or (config.data.train_weights and not sum(config.data.train_weights)):
        raise ConfigError(f"data.train_weights={config.data.train_weights} must be >= 0 with a positive sum")
    if not 0.0 <= config.schedule.min_lr_ratio <= 1.0:
        raise ConfigError(f"schedule.min_lr_ratio={config.schedule.min_lr_ratio} must lie in [0, 1]")
    if not 0.0 < config.schedule.pct_start < 1.0:
        raise ConfigError(f"schedule.pct_start={config.schedule.pct_start} must lie in (0, 1)")
    milestones = list(config.schedule.milestones)
    if sorted(set(milestones)) != milestones or any(m <= 0 for m in milestones):
        raise ConfigError(f"schedule.milestones={milestones} must be positive and strictly increasing")


def to_yaml(config: Any) -> str:
    """The resolved config as YAML text (what is written to ``config.yaml``), credentials in
    URLs and commands redacted (:mod:`cvdist.redact`)."""
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(config)))


def to_dict(config: Any) -> dict:
    """The resolved config as plain nested dicts (for W&B and run records), credentials in URLs
    and commands redacted (:mod:`cvdist.redact`)."""
    # (resolve=False: the dataclass holds plain values; a "${" left in one is a user's escaped text)
    return redact(OmegaConf.to_container(OmegaConf.structured(config), resolve=False))
