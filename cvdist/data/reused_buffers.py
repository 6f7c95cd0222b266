"""Batch-sized CPU tensors written again once nothing else holds them.

Why: the main process turns every uint8 batch into a new float32 one (32 x 3 x 224 x 224 is
19 MB). A fresh allocation that size is mapped fresh and the kernel zero-fills it page by page
as it is first written: measured 1,000-4,700 page faults and 7-17 ms per batch in the
normalisation step of the photo pipeline, where the arithmetic alone takes ~3 ms. A buffer that
the training step has finished with (no tensor, view or autograd record refers to its storage
any more) can be written again without any of that.

Whether a buffer is free is read from its storage's reference count, so a batch the caller still
holds, even through a view, is never overwritten: that batch's buffer is simply passed over and
a new one allocated.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

_storage_use_count: Optional[Callable[[int], int]] = getattr(torch._C, "_storage_Use_Count", None)
"""Torch's count of the references to a storage; None where this torch lacks it (then every
request allocates, exactly as without this module)."""


def storage_references(tensor: torch.Tensor) -> int:
    """How many tensors / storage objects refer to ``tensor``'s storage right now (views and
    autograd records included); -1 where torch cannot say."""
    if _storage_use_count is None:
        return -1
    return _storage_use_count(tensor.untyped_storage()._cdata)


class ReusedBuffers:
    """Hands out CPU tensors shaped like a request, reusing one of the last ``keep`` it handed
    out when nothing outside this object refers to that one's storage any more."""

    def __init__(self, keep: int = 3):
        self.keep = keep
        self._buffers: list[tuple[torch.Tensor, int]] = []  # (buffer, references when only held here)

    def empty_like(self, like: torch.Tensor, *, dtype: torch.dtype, contiguous: bool = False) -> torch.Tensor:
        """An uninitialised tensor with ``like``'s shape and strides (``contiguous=True``: row-major
        strides), of ``dtype`` (what ``torch.empty_like(like, dtype=dtype)``, or ``torch.empty(
        like.shape, dtype=dtype)``, gives): a reused free buffer where there is one."""
        if contiguous:
            return self.empty(like.shape, dtype=dtype)
        return self._reused_or_new(like.shape, like.stride(), dtype, lambda: torch.empty_like(like, dtype=dtype))

    def empty(self, shape: Sequence[int], *, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised contiguous tensor of ``shape`` and ``dtype``: a reused free buffer where
        there is one."""
        shape = torch.Size(shape)
        return self._reused_or_new(shape, _row_major_strides(shape), dtype, lambda: torch.empty(shape, dtype=dtype))

    def _reused_or_new(self, shape: torch.Size, strides: tuple[int, ...], dtype: torch.dtype,
                       allocate: Callable[[], torch.Tensor]) -> torch.Tensor:
        for buffer, alone in self._buffers:
            if (buffer.dtype == dtype and buffer.shape == shape and buffer.stride() == strides
                    and alone >= 0 and storage_references(buffer) == alone):
                return buffer.detach()
        buffer = allocate()
        if self.keep > 0:
            self._buffers = [*self._buffers[len(self._buffers) + 1 - self.keep:], (buffer, storage_references(buffer))]
        # A second tensor object on the same storage: while the caller holds it (or any view of
        # it), the storage has one reference more than ``alone`` and the buffer is passed over.
        return buffer.detach()

    def __getstate__(self) -> dict:
        # Sent to DataLoader workers inside the decoder: the buffers stay in this process.
        return {"keep": self.keep, "_buffers": []}


def _row_major_strides(shape: torch.Size) -> tuple[int, ...]:
    """The strides of a contiguous tensor of ``shape``."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))
