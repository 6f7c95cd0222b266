"""The engine: the only package that imports accelerate and deepspeed.

Recipes call :func:`start_session`, build their data and model with the session's rank and
world size, then call :func:`fit` with a :class:`TrainTask`.
"""

from cvdist.engine.loop import AfterTraining, BatchSource, FitResult, Progress, TrainTask, fit
from cvdist.engine.session import Session, start_session

__all__ = ["AfterTraining", "BatchSource", "FitResult", "Progress", "Session", "TrainTask", "fit", "start_session"]
