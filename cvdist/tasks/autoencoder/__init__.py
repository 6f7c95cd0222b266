"""The autoencoder task: config, training step, evaluation glue and ``main``."""

from cvdist.tasks.autoencoder.main import main

__all__ = ["main"]
