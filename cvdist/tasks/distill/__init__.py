"""The distill task: config, training step, evaluation glue and ``main``."""

from cvdist.tasks.distill.main import main

__all__ = ["main"]
