"""Built-in data sets held in memory: Fashion-MNIST from its IDX files, and a synthetic set.

These serve the demo and the tests until a run points at WebDataset shards.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_INSTALL_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist) "
    "or set data.root to a directory holding the four IDX files"
)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a uint8 array; ValueError (one line
    naming the file) for a damaged or foreign file, a broken gzip stream included."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise ValueError(f"{path} is not a readable gzip file ({error}); re-install or re-download it") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    num_dims = data[3]
    if len(data) < 4 + 4 * num_dims:
        raise ValueError(f"{path} is truncated inside its IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(num_dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * num_dims)
    if body.size != math.prod(shape):  # (math.prod: exact, where NumPy's product can overflow)
        raise ValueError(f"{path} is truncated or damaged: its header says {math.prod(shape)} values, "
                         f"it holds {body.size}")
    return body.reshape(shape)


def _find_idx(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz", root / "FashionMNIST" / "raw" / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Fashion-MNIST file {name}(.gz) not found under {root}; {_INSTALL_HINT}")


def load_fashion_mnist(*, root: str | Path, split: str, num_samples: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 ``[N, 1, 28, 28]`` and labels as int64 ``[N]`` (first ``num_samples`` if > 0)."""
    if split not in _IDX_FILES:
        raise ValueError(f"split={split!r} must be 'train' or 'test'")
    image_file, label_file = (_find_idx(Path(root), name) for name in _IDX_FILES[split])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(f"{image_file} / {label_file} hold arrays of shapes {images.shape} / {labels.shape}; "
                         "expected N x H x W images and N labels (not the Fashion-MNIST IDX files?)")
    if num_samples:
        images, labels = images[:num_samples], labels[:num_samples]
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def make_synthetic(*, num_samples: int, num_classes: int, channels: int = 1, size: int = 28,
                   seed: int = 0, sample_seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable synthetic set: each class is a fixed random pattern plus noise (uint8 images).

    The class patterns come from ``seed``; ``sample_seed`` (if given) draws other samples of the
    same classes, e.g. a test split for a training split made with the same ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, channels, size, size, generator=generator)
    if sample_seed is not None:
        generator.manual_seed(sample_seed)
    labels = torch.arange(num_samples) % num_classes
    labels = labels[torch.randperm(num_samples, generator=generator)]
    noise = torch.rand(num_samples, channels, size, size, generator=generator)
    images = (0.6 * prototypes[labels] + 0.4 * noise) * 255
    return images.to(torch.uint8), labels
