"""The detection task: config, training step, evaluation glue and ``main``."""

from cvdist.tasks.detect.main import main

__all__ = ["main"]
