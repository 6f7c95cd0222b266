"""A non-finite training loss: stop at that step (default) or skip a bounded number of steps.

The check runs on every micro-batch's loss before its backward, and the verdict is reduced over
all ranks, so a NaN on one rank stops (or skips) every rank at the same micro-batch and no
rank's optimiser ever applies a non-finite update: the weights, and so every checkpoint, stay
those of the last good step. A skipped step is one without an optimiser update, as dynamic
loss scaling does on an overflow; its data is consumed and the schedule moves on.
"""

from __future__ import annotations

import math

import torch

from cvdist import comm


class NonFiniteLossError(ValueError):
    """The training loss was NaN or infinite (on at least one rank) beyond the allowed skips."""


_FIXES = ("likely fixes: lower optim.lr or raise schedule.warmup_steps, set optim.grad_clip_norm (e.g. 1.0), "
          "check the input data and data.mean / data.std, use fp32 or bf16 instead of fp16")


class NonFiniteGuard:
    """Counts non-finite steps of a run; ``max_skips`` of them are skipped, the next one stops."""

    def __init__(self, *, max_skips: int, device: torch.device, skipped: int = 0):
        self.max_skips, self.device, self.skipped = max_skips, device, skipped

    def step_is_skipped(self, loss: torch.Tensor, *, step: int, newest_checkpoint: str) -> bool:
        """True when ``loss`` is non-finite on any rank and a skip is allowed (a collective: every
        rank calls it for every micro-batch); raise :class:`NonFiniteLossError` when none is left.
        ``step`` is the 1-based step being computed, ``newest_checkpoint`` the last good one's name."""
        # A sum over ranks is non-finite exactly when one rank's loss is (float64: no overflow).
        total = comm.all_reduce_sum({"loss": float(loss.detach().float())}, self.device)["loss"]
        if math.isfinite(total):
            return False
        if self.skipped < self.max_skips:
            self.skipped += 1
            return True
        allowance = (f"after {self.skipped} skipped step(s), the most train.max_nonfinite_steps={self.max_skips} "
                     "allows" if self.max_skips else "(train.max_nonfinite_steps=0)")
        raise NonFiniteLossError(
            f"non-finite training loss ({total}) at step {step} {allowance}: stopped before the optimiser step, "
            f"so no checkpoint holds this state (newest good checkpoint: {newest_checkpoint}); {_FIXES}; "
            "or skip up to N such steps with train.max_nonfinite_steps=N")
