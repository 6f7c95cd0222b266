"""Glue that several tasks share (and nothing task-specific): the long-tail loss section used by
the long-tail and distillation tasks, the label-loss builder they share, a run's labelled data,
a helper to take a few images out of a batch stream, and the built-in scenes' section of the
dense tasks (detection, segmentation). A task imports this module, never
another task; what grows beyond glue moves down into a building block.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

import torch

from cvdist.config import ConfigError
from cvdist.data.from_config import LabelledData, build_labelled_data
from cvdist.data.scenes import SceneOptions
from cvdist.losses.longtail import LOSS_NAMES, build_longtail_loss, loss_options


@dataclass
class LossConfig:
    """The training loss (``cvdist.losses.longtail.build_longtail_loss``); each option applies to
    the losses named in its docstring and is refused, when changed, for any other loss."""

    name: Literal[LOSS_NAMES] = "balanced_softmax"
    """``ce``, ``weighted_ce``, ``class_balanced``, ``focal``, ``ldam``, ``balanced_softmax``, ``logit_adjusted``."""
    label_smoothing: float = 0.0
    """Label smoothing in [0, 1) (ce, weighted_ce, class_balanced, logit_adjusted)."""
    weights: list[float] = field(default_factory=list)
    """weighted_ce: one weight per class (empty = inverse frequency, mean 1)."""
    beta: float = 0.9999
    """class_balanced: effective-number beta in [0, 1)."""
    base: Literal["ce", "focal"] = "ce"
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
    reduction: Literal["mean", "weighted_mean"] = "mean"
    """weighted_ce, class_balanced, focal, ldam: ``mean`` (plain batch mean) or ``weighted_mean``."""


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


def build_label_loss(loss: LossConfig, class_counts: list[int]) -> torch.nn.Module:
    """The long-tail loss ``loss`` describes for these training class counts; ConfigError naming
    ``loss.name`` when the counts do not fit it."""
    try:
        return build_longtail_loss(name=loss.name, class_counts=class_counts, **longtail_loss_options(loss))
    except ValueError as error:
        raise ConfigError(f"loss.name={loss.name!r}: {error}") from None


def first_images(batches, count: int) -> torch.Tensor:
    """The first ``count`` valid images of ``batches`` (fewer if the data has fewer), float32 CPU."""
    taken, total = [], 0
    for batch in batches:
        images = batch["image"][batch["valid"]] if "valid" in batch else batch["image"]
        taken.append(images[:count - total].float().cpu())
        total += len(taken[-1])
        if total >= count:
            break
    return torch.cat(taken)


def build_run_data(config: Any, session: Any) -> LabelledData:
    """The labelled training stream and evaluation batches of a run: ``config.data`` for
    ``config.model``'s classes and channels, sharded for ``session``'s rank."""
    env = session.env
    return build_labelled_data(config.data, in_channels=config.model.in_channels, num_classes=config.model.num_classes,
                               rank=env.rank, world_size=env.world_size, micro_batch_size=session.micro_batch_size,
                               seed=config.train.seed, num_epochs=config.train.epochs)


@dataclass
class ScenesConfig:
    """The built-in scenes (when ``data.train_shards`` is empty), see ``cvdist.data.scenes``."""

    max_items: int = 4
    """Items per scene: 1 to this many."""
    min_item_size: int = 20
    """Smallest pasted item side in pixels."""
    max_item_size: int = 44
    """Largest pasted item side in pixels."""
    occlusion: bool = False
    """Let items overlap (boxes then cover the visible pixels)."""
    tint: bool = False
    """RGB scenes with a random tint per item (needs ``model.in_channels=3``)."""

    def options(self) -> SceneOptions:
        """The scene options (canvas and long-tail profile come from ``data``)."""
        return SceneOptions(max_items=self.max_items, min_item_size=self.min_item_size,
                            max_item_size=self.max_item_size, occlusion=self.occlusion, tint=self.tint)


_NOT_DENSE = ("vflip", "rotation_degrees", "color_jitter")


def check_dense_sections(config: Any, *, task: str, jitter_key: str, follows: str) -> None:
    """The shared ``data`` / ``model`` / ``scenes`` checks of a dense task (``task``: its name in
    messages; ``jitter_key``: its scale-jitter key; ``follows``: what moves with the image)."""
    data = config.data
    for key in _NOT_DENSE:
        if getattr(data, key) is not None:
            raise ConfigError(f"data.{key} does not apply to {task} ({follows} follow flips and scale jitter only); "
                              "remove it")
    if data.crop_scale or data.multi_scale:
        raise ConfigError(f"data.crop_scale / data.multi_scale do not apply to {task}; use {jitter_key}")
    if data.hflip is not None and not 0 <= data.hflip <= 1:
        raise ConfigError(f"data.hflip={data.hflip} must lie in [0, 1]")
    if not data.train_shards and config.scenes.tint != (config.model.in_channels == 3):
        raise ConfigError(f"scenes.tint={config.scenes.tint} makes {'RGB' if config.scenes.tint else 'grey'} scenes; "
                          f"set model.in_channels={3 if config.scenes.tint else 1}")
    if len(data.mean) != config.model.in_channels or len(data.std) != config.model.in_channels:
        raise ConfigError(f"data.mean / data.std need {config.model.in_channels} values (model.in_channels)")


def backbone_loader(session: Any, source: str) -> Callable[[torch.nn.Module], None]:
    """The ``load_trunk`` callback of the dense model builders: loads ``source`` (a cvdist run,
    checkpoint or weights file; ``""`` = random init) into the classifier the backbone comes from,
    except when the run resumes (it has its own weights then), and records the lineage."""
    from cvdist.engine.transfer import load_backbone

    if source:
        session.add_input(source)  # lineage: inputs.json and the W&B input artifact
    source = source if session.resume_from is None else ""

    def load_trunk(classifier: torch.nn.Module) -> None:
        if source:
            load_backbone(classifier, source=source, log=session.print)
            session.print(f"[cvdist] backbone weights from {source}")

    return load_trunk
