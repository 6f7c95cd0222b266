"""The longtail task: config, training step, evaluation glue and ``main``."""

from cvdist.tasks.longtail.main import main

__all__ = ["main"]
