"""Glue that several tasks share (and nothing task-specific): the long-tail loss section used by
the long-tail and distillation tasks, the step counter and epoch hook their training steps use,
and a helper to take a few images out of a batch stream. A task imports this module, never
another task; what grows beyond glue moves down into a building block.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch

from cvdist.config import ConfigError
from cvdist.losses.longtail import LOSS_NAMES, build_longtail_loss, loss_options


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


class EpochHook:
    """A ``BatchSource`` wrapper that calls ``on_epoch(epoch)`` whenever the training loop starts
    an epoch, including the epoch a resumed run continues in (the loop asks the source for it),
    e.g. ``loss.set_epoch`` for LDAM-DRW. Everything else is the wrapped source's."""

    def __init__(self, source: Any, on_epoch: Callable[[int], None]):
        self.source, self.on_epoch = source, on_epoch

    def batches_in_epoch(self, epoch: int) -> int:
        return self.source.batches_in_epoch(epoch)

    def iterate(self, *, epoch: int, start_batch: int = 0) -> Iterator[Any]:
        self.on_epoch(epoch)
        return self.source.iterate(epoch=epoch, start_batch=start_batch)

    def state(self) -> dict:
        return self.source.state()

    def load_state(self, state: dict) -> None:
        self.source.load_state(state)

    def __getattr__(self, name: str) -> Any:  # e.g. the stream's ``metrics``
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)


class StepCounter:
    """Optimiser steps done, counted from ``compute_loss`` calls (the loop has no step hook)."""

    def __init__(self, *, start_step: int, accum_steps: int):
        self.start_step, self.accum_steps, self.micro_batches = start_step, accum_steps, 0

    @property
    def steps_done(self) -> int:
        return self.start_step + self.micro_batches // self.accum_steps

    def next_micro_batch(self) -> int:
        """Count one micro-batch; return the optimiser steps done before it."""
        done = self.steps_done
        self.micro_batches += 1
        return done


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
