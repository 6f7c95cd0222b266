"""Losses: pure functions and small modules, importable without accelerate, deepspeed or wandb."""

from cvdist.losses.longtail import LOSS_NAMES, LongTailLoss, build_longtail_loss, posthoc_logit_adjustment

__all__ = ["LOSS_NAMES", "LongTailLoss", "build_longtail_loss", "posthoc_logit_adjustment"]
