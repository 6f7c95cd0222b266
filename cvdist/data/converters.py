"""Readers of source data sets that `cvdist shards` converts: Fashion-MNIST IDX files, an image
folder tree, and the CIFAR-10 / CIFAR-100 python archives.

Each reader returns a :class:`SourceDataset`: class names, extra label names and, per split, a
sample count plus random access to samples by index (so the writer can shuffle without holding
encoded images in memory). A sample carries either decoded pixels (encoded by the writer) or the
image file's bytes (copied unchanged into the shard).
"""

from __future__ import annotations

import codecs
import importlib
import io
import os
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from cvdist.data.builtin import FASHION_MNIST_CLASSES, load_fashion_mnist
from cvdist.data.decode import DEFAULT_MAX_IMAGE_PIXELS

# Coarse Fashion-MNIST groups. Dress is a one-piece garment; it goes with "tops" because it is
# worn from the shoulders and its 28x28 silhouette (a long torso shape) looks like a coat or
# shirt, while "bottoms" keeps only Trouser, the one garment worn from the waist down.
FASHION_MNIST_COARSE_NAMES = ("tops", "bottoms", "footwear", "bags")
FASHION_MNIST_COARSE = (0, 1, 0, 0, 0, 2, 0, 2, 3, 2)
"""Coarse label of each fine class, in ``FASHION_MNIST_CLASSES`` order."""

FOLDER_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".gif": "GIF",
                  ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM", ".pgm": "PPM"}
"""Files of an image folder that are read, and the one PIL format each extension may hold;
other files (README, .DS_Store, ...) are skipped."""
IMAGE_EXTENSIONS = tuple(FOLDER_FORMATS)
_PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


@dataclass(frozen=True)
class Sample:
    """One sample for the shard writer: exactly one of ``pixels`` / ``image_bytes`` is set."""

    label: int
    pixels: np.ndarray | None = None
    """uint8 ``[H, W]`` (grey) or ``[H, W, 3|4]``; the writer encodes it."""
    image_bytes: bytes | None = None
    """An already-encoded image in the output format, copied into the shard unchanged."""
    extras: dict[str, int] = field(default_factory=dict)
    """Extra labels (written as the .json member), indices into the manifest's extra_labels."""
    key: str = ""
    """WebDataset key (no dots); ``write_dataset_shards`` sets it to ``<split>-<source index:08d>``."""
    members: dict[str, bytes] = field(default_factory=dict)
    """Further encoded members by extension (``{"json": ..., "inst.png": ...}``: dense annotations),
    written as ``<key>.<extension>`` after the image and ``.cls``; ``json`` excludes ``extras``."""


@dataclass(frozen=True)
class SourceSplit:
    """One split of a source: ``read_sample(i)`` for ``0 <= i < num_samples``."""

    num_samples: int
    read_sample: Callable[[int], Sample]


@dataclass(frozen=True)
class SourceDataset:
    """What the writer needs from a source data set."""

    description: str
    class_names: list[str]
    splits: dict[str, SourceSplit]
    extra_labels: dict[str, list[str]] = field(default_factory=dict)


def array_source_split(images: np.ndarray, labels: np.ndarray, extras: dict[str, np.ndarray] | None = None) -> SourceSplit:
    extras = extras or {}

    def read(index: int) -> Sample:
        return Sample(label=int(labels[index]), pixels=images[index],
                      extras={name: int(values[index]) for name, values in extras.items()})

    return SourceSplit(num_samples=len(labels), read_sample=read)


def build_fashion_mnist_source(*, root: str | Path, limit: int = 0) -> SourceDataset:
    """Fashion-MNIST from its IDX files (the Debian package's ``*.gz`` files or un-gzipped ones).

    ``limit`` > 0 keeps the first ``limit`` samples of each split (a quick subset). Each sample
    gets a ``coarse`` extra label: tops / bottoms / footwear / bags (see FASHION_MNIST_COARSE).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST root {root} is not a directory; expected the directory holding "
                                "train-images-idx3-ubyte.gz and the other IDX files (`apt-get install "
                                "dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist)")
    if limit < 0:
        raise ValueError(f"limit={limit} must be >= 0 (0 = all samples)")
    coarse_of = np.asarray(FASHION_MNIST_COARSE, dtype=np.int64)
    splits = {}
    for split in ("train", "test"):
        images, labels = load_fashion_mnist(root=root, split=split, num_samples=limit)
        images_np, labels_np = images[:, 0].numpy(), labels.numpy()
        if labels_np.size and (labels_np.min() < 0 or labels_np.max() >= len(FASHION_MNIST_CLASSES)):
            raise ValueError(f"Fashion-MNIST {split} labels under {root} are outside 0..9; the IDX files are damaged")
        if len(images_np) != len(labels_np):
            raise ValueError(f"Fashion-MNIST {split} under {root}: {len(images_np)} images but {len(labels_np)} labels")
        splits[split] = array_source_split(images_np, labels_np, {"coarse": coarse_of[labels_np]})
    subset = f" (first {limit} per split)" if limit else ""
    return SourceDataset(description=f"Fashion-MNIST IDX files in {root.resolve()}{subset}",
                         class_names=list(FASHION_MNIST_CLASSES), splits=splits,
                         extra_labels={"coarse": list(FASHION_MNIST_COARSE_NAMES)})


# ---------------------------------------------------------------------------------------------
# Image folders: root/<class>/<image>, classes sorted by name (torchvision ImageFolder order).


def _list_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory; expected "
                                "root/<class name>/<image files>")
    class_names = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not class_names:
        raise ValueError(f"image folder {root} has no class sub-directories; expected root/<class name>/<image files>")
    files = []
    for label, name in enumerate(class_names):
        found = sorted(Path(dirpath, f) for dirpath, _, names in os.walk(root / name, followlinks=True)
                       for f in names if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        if not found:
            raise ValueError(f"class directory {root / name} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                             "add images or remove the directory")
        files.extend((path, label) for path in found)
    return class_names, files


def read_image_file(path: Path, label: int, image_format: str) -> Sample:
    """One image file as a sample: its bytes when already ``image_format``, else its pixels.
    Opened only in the format its extension declares (``FOLDER_FORMATS``), refused above the
    training pixel cap."""
    # Any failure (unreadable file, wrong format, decompression bomb, damaged pixels, ...) is one
    # ValueError naming the file: `cvdist shards` prints it as one line, never a traceback.
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data), formats=[FOLDER_FORMATS[path.suffix.lower()]]) as image:
            if image.width * image.height > DEFAULT_MAX_IMAGE_PIXELS:
                raise ValueError(f"{image.width} x {image.height} pixels, more than training reads "
                                 f"(data.max_image_pixels' default {DEFAULT_MAX_IMAGE_PIXELS}); downscale it")
            image.load()  # decode fully: a truncated file must fail here, not in a training job
            if image.format == _PIL_FORMATS[image_format]:
                # Already in the output format: keep the file's bytes (no second lossy encode).
                return Sample(label=label, image_bytes=data)
            return Sample(label=label, pixels=np.asarray(_output_mode(image, image_format)))
    except Exception as error:  # noqa: BLE001 - see above
        raise ValueError(f"cannot read image {path} ({type(error).__name__}: {error}); "
                         "fix or remove the file") from None


def _output_mode(image: Image.Image, image_format: str) -> Image.Image:
    if image.mode in ("L", "RGB"):
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if has_alpha and image_format != "jpg":  # JPEG has no alpha channel
        return image.convert("RGBA")
    return image.convert("RGB")


def build_folder_source(*, splits: dict[str, str | Path], image_format: str = "png") -> SourceDataset:
    """Image-folder trees, one per split: ``{"train": "data/train", ...}``, each ``<class>/<image>``.

    Classes are the sub-directory names sorted; every split must have the same classes. Images
    are listed recursively and sorted by path. Files already in ``image_format`` are copied
    unchanged; others are decoded here and encoded by the writer.
    """
    if image_format not in _PIL_FORMATS:
        raise ValueError(f"image_format={image_format!r}; allowed: {', '.join(_PIL_FORMATS)}")
    if not splits:
        raise ValueError("no split given; pass at least one image folder")
    class_names: list[str] | None = None
    source_splits = {}
    for split, root in splits.items():
        names, files = _list_folder(Path(root))
        if class_names is not None and names != class_names:
            raise ValueError(f"image folder {root} (split {split!r}) has classes {names}, but the first split has "
                             f"{class_names}; every split needs the same class directories")
        class_names = names

        def read(index: int, files=files) -> Sample:
            path, label = files[index]
            return read_image_file(path, label, image_format)

        source_splits[split] = SourceSplit(num_samples=len(files), read_sample=read)
    roots = ", ".join(f"{split}={Path(root).resolve()}" for split, root in splits.items())
    return SourceDataset(description=f"image folders {roots}", class_names=class_names or [], splits=source_splits)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 python archives.

_CIFAR_LAYOUTS = {
    # name: (sub-directory in the archive, meta file, train files, test files)
    "CIFAR-10": ("cifar-10-batches-py", "batches.meta", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
    "CIFAR-100": ("cifar-100-python", "meta", ["train"], ["test"]),
}


def _numpy_module(name: str):
    # numpy 2 moved numpy.core to numpy._core; old pickles (the real CIFAR files) name the old one.
    try:
        return importlib.import_module(name.replace("numpy.core", "numpy._core"))
    except ImportError:
        return importlib.import_module(name.replace("numpy._core", "numpy.core"))


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR batches contain: dicts, lists, bytes and numpy arrays."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"the file refers to {module}.{name}, which a CIFAR batch never holds")
        if module == "_codecs":
            return codecs.encode
        if module == "numpy":
            return getattr(np, name)
        return getattr(_numpy_module(module), name)


def _unpickle_cifar(handle, where: str) -> dict:
    # The CIFAR python archives are Python pickles. The user already has these files and asked
    # to convert them with this explicit command, so they are unpickled here, and only here
    # (`encoding="bytes"` as the data set's authors document). cvdist never unpickles shard
    # members. The restricted unpickler above also refuses any global a CIFAR batch cannot contain.
    try:
        value = _CifarUnpickler(handle, encoding="bytes").load()
    except Exception as error:  # noqa: BLE001 - a damaged pickle fails in many ways; each is one line
        raise ValueError(f"{where} is not a CIFAR python batch ({error}); pass the original "
                         "cifar-10-python.tar.gz / cifar-100-python.tar.gz or its extracted directory") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where} holds a {type(value).__name__}, expected a CIFAR batch dict")
    return value


def _read_cifar_files(archive: Path) -> tuple[str, dict[str, dict]]:
    """Locate the CIFAR layout in a tar(.gz) or directory; return its name and unpickled files."""
    if archive.is_file():
        return _read_cifar_tar(archive)
    if not archive.is_dir():
        raise FileNotFoundError(f"CIFAR archive {archive} does not exist; expected cifar-10-python.tar.gz, "
                                "cifar-100-python.tar.gz or the extracted cifar-10-batches-py / "
                                "cifar-100-python directory")
    for kind, (subdir, meta, train, test) in _CIFAR_LAYOUTS.items():
        for directory in (archive, archive / subdir):
            if (directory / meta).is_file():
                absent = [n for n in (*train, *test) if not (directory / n).is_file()]
                if absent:
                    raise FileNotFoundError(f"{directory} lacks {', '.join(absent)} of the {kind} layout")
                files = {}
                for name in (meta, *train, *test):
                    with open(directory / name, "rb") as handle:
                        files[name] = _unpickle_cifar(handle, str(directory / name))
                return kind, files
    raise _missing_cifar(archive)


def _read_cifar_tar(archive: Path) -> tuple[str, dict[str, dict]]:
    # One pass over the members: seeking backwards in a .tar.gz would decompress it again.
    wanted = {name for _, meta, train, test in _CIFAR_LAYOUTS.values() for name in (meta, *train, *test)}
    files = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = Path(member.name).name
                if member.isfile() and name in wanted and name not in files:
                    files[name] = _unpickle_cifar(tar.extractfile(member), f"{archive}:{member.name}")
    except ValueError:
        raise  # already one line naming the file (a damaged CIFAR batch inside the archive)
    except Exception as error:  # noqa: BLE001 - tarfile / gzip / zlib errors of a damaged archive
        detail = (str(error).splitlines() or [type(error).__name__])[0].rstrip(":")  # tarfile lists every method
        raise ValueError(f"{archive} is not a readable tar archive ({detail}); expected "
                         "cifar-10-python.tar.gz, cifar-100-python.tar.gz or an extracted directory") from None
    for kind, (_, meta, train, test) in _CIFAR_LAYOUTS.items():
        if meta in files:
            absent = [n for n in (*train, *test) if n not in files]
            if absent:
                raise FileNotFoundError(f"{archive} lacks {', '.join(absent)} of the {kind} layout")
            return kind, files
    raise _missing_cifar(archive)


def _missing_cifar(archive: Path) -> FileNotFoundError:
    return FileNotFoundError(f"{archive} holds neither CIFAR-10 (cifar-10-batches-py/batches.meta, data_batch_1..5, "
                             "test_batch) nor CIFAR-100 (cifar-100-python/meta, train, test) files")


def _cifar_field(batch: dict, key: bytes, where: str):
    if key not in batch:
        raise ValueError(f"{where} lacks the {key!r} entry of a CIFAR batch; the file is damaged or not CIFAR")
    return batch[key]


def _cifar_arrays(batches: list[tuple[str, dict]], label_keys: list[bytes]) -> tuple[np.ndarray, list[np.ndarray]]:
    images, labels = [], [[] for _ in label_keys]
    for where, batch in batches:
        data = np.asarray(_cifar_field(batch, b"data", where))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{where}: b'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
        # Rows are channel-major (1024 red, 1024 green, 1024 blue values, each row by row).
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        for out, key in zip(labels, label_keys):
            values = np.asarray(_cifar_field(batch, key, where), dtype=np.int64)
            if values.shape != (len(data),):
                raise ValueError(f"{where}: {len(values)} {key!r} for {len(data)} images")
            out.append(values)
    return np.concatenate(images), [np.concatenate(parts) for parts in labels]


def _label_names(meta: dict, key: bytes, where: str) -> list[str]:
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in _cifar_field(meta, key, where)]


def build_cifar_source(*, archive: str | Path) -> SourceDataset:
    """CIFAR-10 or CIFAR-100 from the python archive (``*.tar.gz``) or its extracted directory.

    CIFAR-100 samples use the fine label as ``.cls`` and carry the coarse (super-class) label
    as the ``coarse`` extra label.
    """
    archive = Path(archive)
    kind, files = _read_cifar_files(archive)
    _, meta_name, train, test = _CIFAR_LAYOUTS[kind]
    meta, where = files[meta_name], f"{archive}:{meta_name}"
    if kind == "CIFAR-10":
        class_names, extra, label_keys = _label_names(meta, b"label_names", where), {}, [b"labels"]
    else:
        class_names = _label_names(meta, b"fine_label_names", where)
        extra = {"coarse": _label_names(meta, b"coarse_label_names", where)}
        label_keys = [b"fine_labels", b"coarse_labels"]
    splits = {}
    for split, names in (("train", train), ("test", test)):
        images, labels = _cifar_arrays([(f"{archive}:{n}", files[n]) for n in names], label_keys)
        bounds = [len(class_names)] + [len(v) for v in extra.values()]
        for values, bound, key in zip(labels, bounds, label_keys):
            if values.size and (values.min() < 0 or values.max() >= bound):
                raise ValueError(f"{archive}: {split} {key!r} outside 0..{bound - 1}; the archive is damaged")
        splits[split] = array_source_split(images, labels[0], {"coarse": labels[1]} if extra else None)
    return SourceDataset(description=f"{kind} python archive {archive.resolve()}", class_names=class_names,
                         splits=splits, extra_labels=extra)
