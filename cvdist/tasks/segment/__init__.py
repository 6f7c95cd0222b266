"""The semantic segmentation task: config, training step, evaluation glue and ``main``."""

from cvdist.tasks.segment.main import main

__all__ = ["main"]
