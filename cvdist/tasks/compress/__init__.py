"""The compress task: config, training step, evaluation glue and ``main``."""

from cvdist.tasks.compress.main import main

__all__ = ["main"]
