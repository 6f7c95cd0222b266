"""The supervised task: config, training step, evaluation glue and ``main``."""

from cvdist.tasks.supervised.main import main

__all__ = ["main"]
