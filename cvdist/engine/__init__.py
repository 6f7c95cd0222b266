"""The engine: the only package that imports accelerate and deepspeed.

Recipes call :func:`start_session`, build their data and model with the session's rank and
world size, then call :func:`fit` with a :class:`TrainTask`.

The names below load on first use (PEP 562), so that ``cvdist.engine.signals`` can be imported
in the first line of a recipe without importing torch (see that module).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cvdist.engine.loop import AfterTraining, BatchSource, FitResult, Progress, TrainTask, fit
    from cvdist.engine.session import Session, start_session

_HOMES = {"AfterTraining": "loop", "BatchSource": "loop", "FitResult": "loop", "Progress": "loop",
          "TrainTask": "loop", "fit": "loop", "Session": "session", "start_session": "session"}

__all__ = ["AfterTraining", "BatchSource", "FitResult", "Progress", "Session", "TrainTask", "fit", "start_session"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'cvdist.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cvdist.engine.{_HOMES[name]}"), name)
