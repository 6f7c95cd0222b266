"""Small WebDataset shards written by hand for the data tests."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

UNEVEN = [3, 41, 7, 22, 15]  # 88 samples in 5 shards of very different sizes


def png_bytes(value: int) -> bytes:
    """An 8x8 grey PNG of one pixel value (``value`` mod 256)."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), value % 256, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """A tar of ``(key, {extension: bytes})`` samples, as webdataset reads them."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path

