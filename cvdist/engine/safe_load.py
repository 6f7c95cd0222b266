"""Loading checkpoints without unpickling arbitrary objects (``torch.load(weights_only=True)``).

DeepSpeed's checkpoint files hold tensors plus three small DeepSpeed classes; DeepSpeed itself
loads them with ``weights_only=False``, which would run any code a tampered file carries. We
allow exactly those classes and nothing else.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, Iterator

import torch


def _deepspeed_safe_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds objects other than tensors and plain containers."""


def load_weights_only(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load`` restricted to tensors and plain containers; a clear error otherwise."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise UnsafeCheckpointError(
            f"{path} holds objects other than tensors and plain containers, so cvdist will not "
            f"load it (weights_only=True). If you wrote it yourself, re-save it as a plain "
            f"state_dict. Details: {str(error).splitlines()[-1][:300]}"
        ) from None


@contextlib.contextmanager
def weights_only_torch_load() -> Iterator[None]:
    """Inside this block, every ``torch.load`` call uses ``weights_only=True`` with DeepSpeed's
    own checkpoint classes allowed; for DeepSpeed utilities that call ``torch.load`` themselves
    (``zero_to_fp32``)."""
    original = torch.load

    @functools.wraps(original)
    def guarded(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = guarded
    try:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            yield
    finally:
        torch.load = original


class WeightsOnlyCheckpointEngine:
    """Wraps a DeepSpeed checkpoint engine so its ``load`` uses ``weights_only=True``."""

    def __init__(self, inner: Any):
        self._inner = inner

    def load(self, path: str, map_location: Any = None) -> Any:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
