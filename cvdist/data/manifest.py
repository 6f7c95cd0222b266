"""The ``manifest.json`` that describes a directory of WebDataset shards written by cvdist.

One manifest per output directory, beside the shards (format ``cvdist-shards/1``)::

    {"format": "cvdist-shards/1",
     "source": "<free text: where the samples came from>",
     "class_names": ["T-shirt/top", ...],            # label i of a .cls member is class_names[i]
     "image_format": "png",                          # "png", "jpg" or "webp": the image member's extension
     "extra_labels": {"coarse": ["tops", ...]},      # or {}: name -> label names of the .json members
     "longtail": null,                               # or {"imbalance_factor": 100.0, "seed": 0,
                                                     #     "source_manifest": "/abs/.../manifest.json",
                                                     #     "kept_per_class": [...]} (the "train" split)
     "splits": {"train": {"num_samples": N, "class_counts": [per class],
                          "shards": [{"file": "train-000000.tar", "num_samples": n,
                                      "class_counts": [per class]}, ...]},
                "test": {...}},
     "dense": {"instance_counts": {"train": [per class], ...}}}   # only in dense shards (below)

Every count list has one entry per class name. A split's ``num_samples`` equals the sum of its
``class_counts`` and of its shards' ``num_samples``; its ``class_counts`` equal the sum of its
shards' ``class_counts``. Shard ``file`` names are plain file names inside the manifest's directory.
Each sample in a shard has the members ``<key>.<image_format>``, ``<key>.cls`` (ASCII integer) and,
when ``extra_labels`` is not empty, ``<key>.json`` (``{"coarse": 3}``: an index into the names).
Unknown keys are rejected: a new field means a new format version. The one optional key,
``dense``, marks dense shards (``cvdist.data.dense_shards``): each sample also has the members
``<key>.json`` (its annotations), ``<key>.inst.png`` and ``<key>.sem.png``; ``.cls`` is the
category of the sample's largest instance (so ``class_counts`` count images), and
``dense.instance_counts`` counts annotated instances per category in each split.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvdist.io import atomic_write_text

FORMAT = "cvdist-shards/1"
MANIFEST_NAME = "manifest.json"
IMAGE_FORMATS = ("png", "jpg", "webp")
"""Image member extensions cvdist writes; the manifest's ``image_format`` is one of these."""


class ManifestError(ValueError):
    """A manifest that does not follow the ``cvdist-shards/1`` contract; the message names the field."""


@dataclass(frozen=True)
class ShardInfo:
    """One tar file of a split."""

    file: str
    """File name inside the manifest's directory, e.g. ``train-000000.tar``."""
    num_samples: int
    class_counts: list[int]
    """Samples of each class in this shard (index = class label)."""


@dataclass(frozen=True)
class SplitInfo:
    """One split (``train``, ``test``, ...): totals and its shards in reading order."""

    num_samples: int
    class_counts: list[int]
    shards: list[ShardInfo]


@dataclass(frozen=True)
class LongtailInfo:
    """How a long-tailed ``train`` split was drawn from a balanced source (see ``longtail.py``)."""

    imbalance_factor: float
    seed: int
    source_manifest: str
    """Absolute path of the source directory's manifest.json at the time of writing."""
    kept_per_class: list[int]


@dataclass(frozen=True)
class DenseInfo:
    """What dense shards add: annotated instances per category (index = class label) per split."""

    instance_counts: dict[str, list[int]]


@dataclass
class Manifest:
    """A loaded manifest; ``directory`` (not stored in the file) is where its shards lie."""

    directory: Path
    source: str
    class_names: list[str]
    image_format: str
    extra_labels: dict[str, list[str]] = field(default_factory=dict)
    longtail: LongtailInfo | None = None
    splits: dict[str, SplitInfo] = field(default_factory=dict)
    dense: DenseInfo | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes (length of every per-class count list)."""
        return len(self.class_names)

    def split(self, split: str) -> SplitInfo:
        """The named split; a clear error lists the splits that exist."""
        if split not in self.splits:
            raise ValueError(f"{self.directory / MANIFEST_NAME} has no split {split!r}; "
                             f"available splits: {', '.join(sorted(self.splits)) or 'none'}")
        return self.splits[split]

    def shard_paths(self, split: str) -> list[str]:
        """Absolute paths of the split's shards, in order."""
        return [str((self.directory / shard.file).resolve()) for shard in self.split(split).shards]

    def num_samples(self, split: str) -> int:
        """Total samples in the split."""
        return self.split(split).num_samples

    def class_counts(self, split: str) -> list[int]:
        """Samples per class in the split (index = class label)."""
        return list(self.split(split).class_counts)

    def shard_sample_counts(self, split: str) -> list[int]:
        """Samples in each shard of the split, in the order of :meth:`shard_paths`."""
        return [shard.num_samples for shard in self.split(split).shards]

    def shard_class_counts(self, split: str) -> list[list[int]]:
        """Per-class counts of each shard of the split, in the order of :meth:`shard_paths`."""
        return [list(shard.class_counts) for shard in self.split(split).shards]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the manifest file (keys in contract order)."""
        longtail = None
        if self.longtail is not None:
            longtail = {"imbalance_factor": self.longtail.imbalance_factor, "seed": self.longtail.seed,
                        "source_manifest": self.longtail.source_manifest,
                        "kept_per_class": list(self.longtail.kept_per_class)}
        splits = {name: {"num_samples": info.num_samples, "class_counts": list(info.class_counts),
                         "shards": [{"file": s.file, "num_samples": s.num_samples,
                                     "class_counts": list(s.class_counts)} for s in info.shards]}
                  for name, info in self.splits.items()}
        data = {"format": FORMAT, "source": self.source, "class_names": list(self.class_names),
                "image_format": self.image_format, "extra_labels": {k: list(v) for k, v in self.extra_labels.items()},
                "longtail": longtail, "splits": splits}
        if self.dense is not None:  # absent, not null, for classification shards (their files are unchanged)
            data["dense"] = {"instance_counts": {k: list(v) for k, v in self.dense.instance_counts.items()}}
        return data


def write_manifest(manifest: Manifest, directory: str | Path | None = None) -> Path:
    """Validate ``manifest`` and write it atomically as ``<directory>/manifest.json``.

    ``directory`` defaults to ``manifest.directory``. Returns the written path.
    """
    path = Path(directory if directory is not None else manifest.directory) / MANIFEST_NAME
    data = manifest.to_dict()
    _parse(data, path)  # never write a manifest that load_manifest would refuse
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def load_manifest(path: str | Path, *, check_files: bool = True) -> Manifest:
    """Load and validate a manifest: ``path`` is a shard directory or its ``manifest.json``.

    With ``check_files`` every listed shard must exist. Raises ``FileNotFoundError`` for a missing
    manifest or shard and :class:`ManifestError` (a ``ValueError``) naming the offending field.
    """
    path = Path(path)
    expected = f"expected a directory written by `cvdist shards` (it holds {MANIFEST_NAME} beside the *.tar shards)"
    if not path.exists():
        raise FileNotFoundError(f"shard directory {path} does not exist; {expected}")
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no shard manifest at {path}; {expected}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{path} is not valid JSON ({error}); re-write the shards with `cvdist shards`") from None
    manifest = _parse(data, path)
    if check_files:
        for name, info in manifest.splits.items():
            for shard in info.shards:
                if not (manifest.directory / shard.file).is_file():
                    raise FileNotFoundError(f"shard {shard.file} of split {name!r} listed in {path} is missing; "
                                            "the directory is incomplete: re-write it with `cvdist shards`")
    return manifest


def parse_remote_manifest(text: bytes, *, url: str) -> Manifest:
    """A manifest fetched from ``url`` (``http(s)://.../manifest.json``), validated like a local one;
    its shards are the plain file names beside it (``Manifest.directory`` means nothing here)."""
    from cvdist.redact import redact_text

    where = Path(redact_text(url))
    try:
        data = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{where} is not valid JSON ({error}); it must be a manifest written by "
                            "`cvdist shards`") from None
    return _parse(data, where)


class _Checker:
    """Type and key checks that raise ManifestError naming the file and the field."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, problem: str) -> None:
        raise ManifestError(f"{self.path}: {where} {problem}")

    def obj(self, value: Any, where: str, keys: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"must be a JSON object, found {type(value).__name__}")
        missing = [k for k in keys if k not in value]
        unknown = [k for k in value if k not in keys]
        if missing:
            self.fail(where, f"lacks key(s) {', '.join(missing)}")
        if unknown:
            self.fail(where, f"has unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(keys)}")
        return value

    def count(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(where, f"must be a non-negative integer, found {value!r}")
        return value

    def counts(self, value: Any, where: str, num_classes: int) -> list[int]:
        if not isinstance(value, list):
            self.fail(where, f"must be a list of {num_classes} integers")
        if len(value) != num_classes:
            self.fail(where, f"has {len(value)} entries, expected {num_classes} (one per class_names entry)")
        return [self.count(v, f"{where}[{i}]") for i, v in enumerate(value)]

    def names(self, value: Any, where: str) -> list[str]:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            self.fail(where, "must be a non-empty list of strings")
        if len(set(value)) != len(value):
            self.fail(where, "has duplicate names")
        return list(value)


_TOP_KEYS = ("format", "source", "class_names", "image_format", "extra_labels", "longtail", "splits")


def _parse(data: Any, path: Path) -> Manifest:
    check = _Checker(path)
    if isinstance(data, dict) and data.get("format") != FORMAT:
        check.fail("format", f"is {data.get('format')!r}, expected {FORMAT!r}: not a cvdist shard manifest "
                   "or written by another cvdist version")
    optional = ("dense",) if isinstance(data, dict) and "dense" in data else ()
    data = check.obj(data, "the manifest", _TOP_KEYS + optional)
    if not isinstance(data["source"], str):
        check.fail("source", "must be a string")
    class_names = check.names(data["class_names"], "class_names")
    if data["image_format"] not in IMAGE_FORMATS:
        check.fail("image_format", f"is {data['image_format']!r}; allowed: {', '.join(IMAGE_FORMATS)}")
    if not isinstance(data["extra_labels"], dict):
        check.fail("extra_labels", "must be an object mapping a label name to its list of names")
    extra = {str(k): check.names(v, f"extra_labels.{k}") for k, v in data["extra_labels"].items()}
    splits_data = data["splits"]
    if not isinstance(splits_data, dict) or not splits_data:
        check.fail("splits", "must be a non-empty object mapping split names to splits")
    splits = {name: _parse_split(check, value, f"splits.{name}", len(class_names))
              for name, value in splits_data.items()}
    longtail = None
    if data["longtail"] is not None:
        longtail = _parse_longtail(check, data["longtail"], len(class_names))
    dense = _parse_dense(check, data["dense"], splits, len(class_names)) if "dense" in data else None
    return Manifest(directory=path.parent.resolve(), source=data["source"], class_names=class_names,
                    image_format=data["image_format"], extra_labels=extra, longtail=longtail, splits=splits,
                    dense=dense)


def _parse_dense(check: _Checker, value: Any, splits: dict, num_classes: int) -> DenseInfo:
    counts = check.obj(value, "dense", ("instance_counts",))["instance_counts"]
    if not isinstance(counts, dict) or set(counts) != set(splits):
        check.fail("dense.instance_counts", f"must map exactly the splits {sorted(splits)} to per-class counts")
    return DenseInfo(instance_counts={name: check.counts(v, f"dense.instance_counts.{name}", num_classes)
                                      for name, v in counts.items()})


def _parse_split(check: _Checker, value: Any, where: str, num_classes: int) -> SplitInfo:
    value = check.obj(value, where, ("num_samples", "class_counts", "shards"))
    num_samples = check.count(value["num_samples"], f"{where}.num_samples")
    class_counts = check.counts(value["class_counts"], f"{where}.class_counts", num_classes)
    if not isinstance(value["shards"], list):
        check.fail(f"{where}.shards", "must be a list")
    shards = []
    for i, item in enumerate(value["shards"]):
        at = f"{where}.shards[{i}]"
        item = check.obj(item, at, ("file", "num_samples", "class_counts"))
        name = item["file"]
        # A plain file name keeps shard_paths() inside the manifest's directory.
        if not isinstance(name, str) or not name.endswith(".tar") or Path(name).name != name or name.startswith("."):
            check.fail(f"{at}.file", f"is {name!r}; expected a plain *.tar file name in the manifest's directory")
        shard = ShardInfo(file=name, num_samples=check.count(item["num_samples"], f"{at}.num_samples"),
                          class_counts=check.counts(item["class_counts"], f"{at}.class_counts", num_classes))
        if sum(shard.class_counts) != shard.num_samples:
            check.fail(at, f"has num_samples {shard.num_samples} but its class_counts sum to "
                       f"{sum(shard.class_counts)}")
        shards.append(shard)
    if len({s.file for s in shards}) != len(shards):
        check.fail(f"{where}.shards", "lists a file twice")
    if sum(class_counts) != num_samples or sum(s.num_samples for s in shards) != num_samples:
        check.fail(where, f"has num_samples {num_samples}, but its class_counts sum to {sum(class_counts)} and "
                   f"its shards hold {sum(s.num_samples for s in shards)}")
    summed = [sum(s.class_counts[c] for s in shards) for c in range(num_classes)]
    if summed != class_counts:
        check.fail(f"{where}.class_counts", f"is {class_counts} but the shards' class_counts sum to {summed}")
    return SplitInfo(num_samples=num_samples, class_counts=class_counts, shards=shards)


def _parse_longtail(check: _Checker, value: Any, num_classes: int) -> LongtailInfo:
    keys = ("imbalance_factor", "seed", "source_manifest", "kept_per_class")
    value = check.obj(value, "longtail", keys)
    factor = value["imbalance_factor"]
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor < 1:
        check.fail("longtail.imbalance_factor", f"must be a number >= 1, found {factor!r}")
    if isinstance(value["seed"], bool) or not isinstance(value["seed"], int):
        check.fail("longtail.seed", f"must be an integer, found {value['seed']!r}")
    if not isinstance(value["source_manifest"], str):
        check.fail("longtail.source_manifest", "must be a string (a path)")
    kept = check.counts(value["kept_per_class"], "longtail.kept_per_class", num_classes)
    return LongtailInfo(imbalance_factor=float(factor), seed=value["seed"],
                        source_manifest=value["source_manifest"], kept_per_class=kept)
