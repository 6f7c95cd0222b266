"""Small WebDataset shards written by hand for the data tests."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import webdataset as wds
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


def read_webdataset(paths: list[str]) -> list[dict]:
    """Every sample of ``paths`` as stock webdataset decodes it (PIL images)."""
    return list(wds.WebDataset(paths, shardshuffle=False).decode("pil"))


# CIFAR archives in the real layout, for `cvdist shards cifar`.

def cifar_batch(rng, count: int, label_keys: dict[bytes, int]) -> dict:
    """One CIFAR batch dict: random 32x32x3 images and random labels for each of ``label_keys``."""
    batch = {b"data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8), b"batch_label": b"fake"}
    batch.update({key: rng.integers(0, bound, size=count).tolist() for key, bound in label_keys.items()})
    return batch


def make_cifar10(directory: Path) -> dict[str, list[dict]]:
    """The real cifar-10-batches-py layout (pickle protocol 2, like the original files)."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    batches = {"train": [cifar_batch(rng, 3, {b"labels": 10}) for _ in range(5)],
               "test": [cifar_batch(rng, 4, {b"labels": 10})]}
    files = {f"data_batch_{i + 1}": b for i, b in enumerate(batches["train"])}
    files["test_batch"] = batches["test"][0]
    files["batches.meta"] = {b"label_names": [f"name{i}".encode() for i in range(10)], b"num_vis": 3072}
    for name, value in files.items():
        # The original files name numpy's pre-2.0 module, as a numpy 1.x pickle does.
        data = pickle.dumps(value, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (directory / name).write_bytes(data)
    return batches


def tar_gz(source: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=source.name)
    return archive

