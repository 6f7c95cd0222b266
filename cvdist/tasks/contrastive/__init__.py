"""The contrastive task: config, training step, evaluation glue and ``main``."""

from cvdist.tasks.contrastive.main import main

__all__ = ["main"]
