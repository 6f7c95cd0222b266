"""Loading checkpoints without unpickling arbitrary objects (``torch.load(weights_only=True)``).

DeepSpeed's checkpoint files hold tensors plus three small DeepSpeed classes; DeepSpeed itself
loads them with ``weights_only=False``, which would run any code a tampered file carries. We
allow exactly those classes and nothing else.
"""

from __future__ import annotations

import contextlib
import functools
import pickle
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


def _unsafe(path: Any, error: Exception) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{path} holds objects other than tensors and plain containers, so cvdist will not "
        f"load it (weights_only=True). If you wrote it yourself, re-save it as a plain "
        f"state_dict. Details: {(str(error).strip().splitlines() or [''])[-1][:300]}")


def load_weights_only(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load`` restricted to tensors and plain containers; a clear error otherwise."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise _unsafe(path, error) from None


@contextlib.contextmanager
def weights_only_torch_load() -> Iterator[None]:
    """Inside this block, every ``torch.load`` call uses ``weights_only=True`` with DeepSpeed's
    own checkpoint classes allowed, whatever the caller asks for: DeepSpeed utilities and load
    paths that call ``torch.load(..., weights_only=False)`` themselves (``zero_to_fp32``, the
    universal-checkpoint and MoE loaders) are covered too. A refused file raises
    :class:`UnsafeCheckpointError`."""
    original = torch.load

    @functools.wraps(original)
    def guarded(*args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return original(*args, **kwargs)
        except pickle.UnpicklingError as error:  # what weights_only raises for a forbidden object
            raise _unsafe(args[0] if args else kwargs.get("f"), error) from None

    torch.load = guarded
    try:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            yield
    finally:
        torch.load = original
