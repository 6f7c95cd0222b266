"""The long-tail training step: mixup / CutMix, an EMA of the weights, and the ``compute_loss``
step that uses them (the loss, LDAM-DRW's epoch and the multi-task heads' losses). The data
(long-tailed built-in sets, held-out split, re-sampling) is :mod:`cvdist.data.longtail_data`.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

from cvdist.engine import Progress


def mix_batch(images: torch.Tensor, *, mixup_alpha: float,
              cutmix_alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a batch with a permutation of
    itself: ``(images, partner index of each sample, lam)``; the loss is ``lam * L(y) + (1 - lam)
    * L(y[partner])``. With both alphas > 0, one of the two per batch, at random. Draws from the
    torch RNG, which the engine seeds per rank and restores on resume."""
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha == 0 or bool(torch.rand(()) < 0.5))
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    partner = torch.randperm(images.shape[0]).to(images.device)
    if not use_cutmix:
        return lam * images + (1 - lam) * images[partner], partner, lam
    height, width = images.shape[-2:]
    ratio = math.sqrt(1 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    mixed = images.clone()
    mixed[..., y0:y1, x0:x1] = images[partner][..., y0:y1, x0:x1]
    # the box was clipped at the border: lam is the share of the image that is really the original
    return mixed, partner, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


class WeightEma:
    """Exponential moving average of a model's weights (float buffers too, as timm's ModelEmaV2),
    with the usual warm-up ``decay_n = min(decay, (1 + n) / (10 + n))``.

    The copy is made from the model the loop trains (unwrapped from DDP / DeepSpeed) at the first
    step, so it lives on the training device; it is kept in float32. It goes into checkpoints
    (``state_dict`` / ``load_state_dict``, the engine's ``TrainTask.extra_state``), so a resumed run
    continues the same average."""

    def __init__(self, *, decay: float):
        self.decay = decay
        self.module: Optional[nn.Module] = None
        self.folded_step = 0
        self.num_updates = 0
        self._pending: Optional[dict] = None  # loaded before the model copy exists

    def state_dict(self) -> dict:
        if self.module is None:
            return {"average": None, "folded_step": self.folded_step, "num_updates": self.num_updates}
        return {"average": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
                "folded_step": self.folded_step, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self._pending = state if state.get("average") is not None else None
        self.folded_step, self.num_updates = state["folded_step"], state["num_updates"]

    def catch_up(self, model: nn.Module, steps_done: int) -> None:
        """Fold the weights of optimiser step ``steps_done`` in, once per step."""
        plain = getattr(model, "module", model)
        if self.module is None:
            # fp32 even when DeepSpeed trains bf16 weights: a 0.999 average of bf16 values would
            # round most updates away
            self.module = copy.deepcopy(plain).float().eval()
            self.module.requires_grad_(False)
            if self._pending is None:
                self.folded_step = steps_done
                return
            self.module.load_state_dict(self._pending["average"])  # resumed: continue the saved average
            self._pending = None
        if steps_done <= self.folded_step:
            return
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        with torch.no_grad():
            for average, current in zip(self.module.state_dict().values(), plain.state_dict().values()):
                if average.is_floating_point():
                    average.lerp_(current.detach().to(average.dtype), 1.0 - decay)
                else:
                    average.copy_(current)
        self.folded_step, self.num_updates = steps_done, self.num_updates + 1


class LongtailTrainStep:
    """The task's ``compute_loss``: the long-tail loss (told the batch's epoch, for LDAM-DRW),
    optionally on mixed batches, plus the
    auxiliary heads' cross-entropy weighted by ``aux_weights`` (label name -> weight; the model is
    then a :class:`cvdist.models.multitask.AuxHeadsModel`), keeping the EMA (if any) one optimiser
    step behind the model (the evaluation catches it up). With auxiliary heads, each loss is
    logged unweighted: ``train/loss_main``, ``train/loss_<label>``."""

    def __init__(self, *, loss: nn.Module, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 ema: Optional[WeightEma] = None, aux_weights: Optional[dict[str, float]] = None):
        self.loss, self.ema = loss, ema
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.aux_weights = dict(aux_weights or {})

    def __call__(self, model: nn.Module, batch: dict, progress: Progress) -> tuple[torch.Tensor, dict[str, Any]]:
        self.loss.set_epoch(progress.epoch)
        if self.ema is not None:
            self.ema.catch_up(model, progress.step)
        images, labels = batch["image"], batch["label"]
        partner, lam = None, 1.0
        if self.mixup_alpha > 0 or self.cutmix_alpha > 0:
            images, partner, lam = mix_batch(images, mixup_alpha=self.mixup_alpha, cutmix_alpha=self.cutmix_alpha)

        def mixed(loss_fn: Callable, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            if partner is None:
                return loss_fn(logits, targets)
            return lam * loss_fn(logits, targets) + (1 - lam) * loss_fn(logits, targets[partner])

        if not self.aux_weights:
            return mixed(self.loss, model(images), labels), {}
        logits, aux_logits = model(images, with_aux=True)
        main = mixed(self.loss, logits, labels)
        aux = {name: mixed(F.cross_entropy, aux_logits[name], batch[name]) for name in self.aux_weights}
        total = main + sum(self.aux_weights[name] * value for name, value in aux.items())
        return total, {"train/loss_main": main.detach(), **{f"train/loss_{k}": v.detach() for k, v in aux.items()}}
