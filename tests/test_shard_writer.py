"""Shard writer, sources, manifest and long-tail subsets, on tiny data written into tmp_path."""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvdist.commands.shards import add_shards_commands
from cvdist.data import shard_writer
from cvdist.data.builtin import FASHION_MNIST_CLASSES
from cvdist.data.converters import (FASHION_MNIST_COARSE, Sample, SourceDataset, SourceSplit,
                                    build_fashion_mnist_source, build_folder_source)
from cvdist.data.longtail import longtail_counts, write_longtail_shards
from cvdist.data.manifest import ManifestError, load_manifest, write_manifest
from cvdist.data.shard_writer import write_dataset_shards
from tests.helpers.shards import make_cifar10, read_webdataset

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(root: Path, *, num_train: int = 25, num_test: int = 7) -> dict[str, tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    data = {}
    for split, prefix, count in (("train", "train", num_train), ("test", "t10k", num_test)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
        data[split] = (images, labels)
    return data


def tar_class_counts(path: str, num_classes: int) -> list[int]:
    counts = [0] * num_classes
    with tarfile.open(path) as tar:
        for info in tar:
            if info.name.endswith(".cls"):
                counts[int(tar.extractfile(info).read())] += 1
    return counts


def tar_members(path: str) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {info.name: tar.extractfile(info).read() for info in tar}


def dir_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def build_cli_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvdist")
    add_shards_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def run_cli(argv: list[str]) -> int:
    args = build_cli_parser().parse_args(argv)
    return args.handler(args)


def balanced_source(*, num_classes: int = 10, per_class: int = 100, num_test_per_class: int = 3) -> SourceDataset:
    """A tiny in-memory source: 4x4 grey images whose pixels encode the sample index."""
    def split(count: int, offset: int) -> SourceSplit:
        labels = np.arange(count) % num_classes
        images = ((np.arange(count)[:, None, None] + offset + np.arange(16).reshape(4, 4)) % 256).astype(np.uint8)
        return SourceSplit(num_samples=count, read_sample=lambda i: Sample(label=int(labels[i]), pixels=images[i],
                                                                           extras={"parity": int(labels[i]) % 2}))
    return SourceDataset(description="synthetic", class_names=[f"c{i}" for i in range(num_classes)],
                         splits={"train": split(num_classes * per_class, 0),
                                 "test": split(num_classes * num_test_per_class, 7)},
                         extra_labels={"parity": ["even", "odd"]})


@pytest.fixture(scope="module")
def balanced_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("balanced") / "shards"
    write_dataset_shards(source=balanced_source(), out_dir=out, samples_per_shard=300, shuffle_seed=1)
    return out


# ----------------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_shards_read_back_with_webdataset(tmp_path):
    data = fake_fashion_mnist(tmp_path / "fm")
    manifest = write_dataset_shards(source=build_fashion_mnist_source(root=tmp_path / "fm"), out_dir=tmp_path / "out",
                                    samples_per_shard=10)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "manifest.json", "test-000000.tar", "train-000000.tar", "train-000001.tar", "train-000002.tar"]
    loaded = load_manifest(tmp_path / "out")
    assert loaded.to_dict() == manifest.to_dict()
    assert loaded.class_names == list(FASHION_MNIST_CLASSES)
    assert loaded.extra_labels == {"coarse": ["tops", "bottoms", "footwear", "bags"]}
    for split, (images, labels) in data.items():
        samples = read_webdataset(loaded.shard_paths(split))
        assert [s["__key__"] for s in samples] == [f"{split}-{i:08d}" for i in range(len(labels))]
        assert [s["cls"] for s in samples] == labels.tolist()
        assert [s["json"]["coarse"] for s in samples] == [FASHION_MNIST_COARSE[c] for c in labels]
        for sample, pixels in zip(samples, images):
            assert np.array_equal(np.asarray(sample["png"].convert("L")), pixels)
        assert loaded.num_samples(split) == len(labels)
        assert loaded.class_counts(split) == np.bincount(labels, minlength=10).tolist()
        for path, counts in zip(loaded.shard_paths(split), loaded.shard_class_counts(split)):
            assert os.path.isabs(path) and tar_class_counts(path, 10) == counts
    assert loaded.shard_sample_counts("train") == [10, 10, 5]


def test_same_input_gives_identical_shards_and_limit(tmp_path):
    fake_fashion_mnist(tmp_path / "fm")
    for name in ("a", "b"):
        write_dataset_shards(source=build_fashion_mnist_source(root=tmp_path / "fm", limit=12), out_dir=tmp_path / name,
                             samples_per_shard=5)
    assert dir_bytes(tmp_path / "a") == dir_bytes(tmp_path / "b")
    manifest = load_manifest(tmp_path / "a" / "manifest.json")
    assert manifest.num_samples("train") == 12 and manifest.num_samples("test") == 7  # test has only 7
    assert manifest.shard_sample_counts("train") == [5, 5, 2]


@pytest.mark.parametrize("image_format", ["jpg", "webp"])
def test_lossy_formats(tmp_path, image_format):
    data = fake_fashion_mnist(tmp_path / "fm", num_train=4, num_test=2)
    smooth = np.tile(np.linspace(0, 255, 28, dtype=np.uint8), (28, 1))  # compresses well, unlike noise
    source = build_fashion_mnist_source(root=tmp_path / "fm")
    source.splits["train"] = SourceSplit(num_samples=1, read_sample=lambda i: Sample(label=3, pixels=smooth))
    manifest = write_dataset_shards(source=source, out_dir=tmp_path / "out", image_format=image_format, quality=90)
    assert manifest.image_format == image_format and len(data["test"][1]) == 2
    [sample] = read_webdataset(manifest.shard_paths("train"))
    error = np.abs(np.asarray(sample[image_format].convert("L"), dtype=float) - smooth).mean()
    assert sample["cls"] == 3 and error < 4
    with pytest.raises(ValueError, match="--quality applies to jpg and webp only"):
        write_dataset_shards(source=source, out_dir=tmp_path / "png", image_format="png", quality=90)


def test_real_fashion_mnist_subset(tmp_path):
    assert (REAL_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), (
        "Debian's dataset-fashion-mnist is missing: `make data` installs it")
    manifest = write_dataset_shards(source=build_fashion_mnist_source(root=REAL_FASHION_MNIST, limit=20),
                                    out_dir=tmp_path / "out")
    samples = read_webdataset(manifest.shard_paths("train"))
    assert len(samples) == 20 and samples[0]["cls"] == 9  # the first training image is an ankle boot
    assert samples[0]["png"].size == (28, 28)


# ------------------------------------------------------------------------------------ image folder


def make_folder(root: Path, *, seed: int = 0) -> list[tuple[Path, int]]:
    """ant/ cat/ dog/ with png images of several sizes and one jpg; returns files in sorted order."""
    rng = np.random.default_rng(seed)
    files = []
    for label, name in enumerate(["ant", "cat", "dog"]):
        (root / name / "sub").mkdir(parents=True)
        for i in range(3):
            path = root / name / ("sub" if i == 2 else "") / f"img{i}.png"
            Image.fromarray(rng.integers(0, 256, size=(5 + i, 6, 3), dtype=np.uint8)).save(path)
        jpg = root / name / "photo.jpg"
        Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(jpg, quality=80)
        files += [(p, label) for p in sorted([*(root / name).rglob("*.png"), jpg])]
    (root / "cat" / "README.txt").write_text("not an image")
    return files


def test_image_folder_source(tmp_path):
    files = make_folder(tmp_path / "train")
    test_files = make_folder(tmp_path / "test", seed=1)
    source = build_folder_source(splits={"train": tmp_path / "train", "test": tmp_path / "test"})
    manifest = write_dataset_shards(source=source, out_dir=tmp_path / "out", samples_per_shard=5, shuffle_seed=0)
    assert manifest.class_names == ["ant", "cat", "dog"]
    assert manifest.class_counts("train") == [4, 4, 4] and manifest.shard_sample_counts("train") == [5, 5, 2]
    for split, expected in (("train", files), ("test", test_files)):
        samples = read_webdataset(manifest.shard_paths(split))
        keys = [s["__key__"] for s in samples]
        assert sorted(keys) == [f"{split}-{i:08d}" for i in range(12)]
        assert keys != sorted(keys)  # shuffled, so shards mix classes
        for sample in samples:
            path, label = expected[int(sample["__key__"].split("-")[1])]
            assert sample["cls"] == label and "json" not in sample
            assert np.array_equal(np.asarray(sample["png"]), np.asarray(Image.open(path).convert("RGB")))
    # Files already in the output format keep their bytes; others are encoded.
    jpg_dir = write_dataset_shards(source=build_folder_source(splits={"train": tmp_path / "train"}, image_format="jpg"),
                                   out_dir=tmp_path / "jpg", image_format="jpg").shard_paths("train")
    members = tar_members(jpg_dir[0])
    for index, (path, _) in enumerate(files):
        data = members[f"train-{index:08d}.jpg"]
        assert (data == path.read_bytes()) == (path.suffix == ".jpg")
        assert Image.open(io.BytesIO(data)).format == "JPEG"


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        build_folder_source(splits={"train": tmp_path / "nowhere"})
    make_folder(tmp_path / "a")
    (tmp_path / "b" / "ant").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images"):
        build_folder_source(splits={"train": tmp_path / "b"})
    (tmp_path / "b" / "ant" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="same class directories"):
        build_folder_source(splits={"train": tmp_path / "a", "test": tmp_path / "b"})
    source = build_folder_source(splits={"train": tmp_path / "b"})
    with pytest.raises(ValueError, match=r"cannot read image .*x\.png"):
        write_dataset_shards(source=source, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------- long tail


def test_longtail_counts_match_published_cifar10_lt():
    # CIFAR-10-LT with imbalance factor 100 (Cao et al., LDAM-DRW): 12,406 training images.
    counts = longtail_counts(n_max=5000, num_classes=10, imbalance_factor=100)
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50] and sum(counts) == 12406
    with pytest.raises(ValueError, match="leaves the tail class with 0 samples"):
        longtail_counts(n_max=50, num_classes=10, imbalance_factor=100)
    with pytest.raises(ValueError, match=">= 1"):
        longtail_counts(n_max=50, num_classes=10, imbalance_factor=0.5)


@pytest.mark.parametrize("imbalance_factor, expected", [
    (10, [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]),
    (100, [100, 59, 35, 21, 12, 7, 4, 2, 1, 1]),
])
def test_longtail_profile(balanced_dir, tmp_path, imbalance_factor, expected):
    manifest = write_longtail_shards(source_dir=balanced_dir, out_dir=tmp_path / "lt",
                                     imbalance_factor=imbalance_factor, seed=0, samples_per_shard=100)
    loaded = load_manifest(tmp_path / "lt")
    assert loaded.to_dict() == manifest.to_dict()
    assert loaded.class_counts("train") == expected == loaded.longtail.kept_per_class
    assert (loaded.longtail.imbalance_factor, loaded.longtail.seed) == (imbalance_factor, 0)
    assert loaded.longtail.source_manifest == str(balanced_dir.resolve() / "manifest.json")
    for path, counts in zip(loaded.shard_paths("train"), loaded.shard_class_counts("train")):
        assert tar_class_counts(path, 10) == counts
    samples = read_webdataset(loaded.shard_paths("train"))
    assert np.bincount([s["cls"] for s in samples], minlength=10).tolist() == expected
    assert all(s["json"] == {"parity": s["cls"] % 2} for s in samples)


def test_longtail_seeds_subsets_and_unchanged_test_split(balanced_dir, tmp_path):
    def keys_and_members(out: Path) -> tuple[list[str], dict[str, bytes]]:
        manifest = load_manifest(out)
        members = {k: v for p in manifest.shard_paths("train") for k, v in tar_members(p).items()}
        return sorted({name.split(".")[0] for name in members}), members

    for name, factor, seed in (("a", 10, 0), ("b", 10, 0), ("c", 10, 1), ("d", 100, 0)):
        write_longtail_shards(source_dir=balanced_dir, out_dir=tmp_path / name, imbalance_factor=factor, seed=seed)
    assert dir_bytes(tmp_path / "a") == dir_bytes(tmp_path / "b")  # same seed, same bytes
    keys_a, members_a = keys_and_members(tmp_path / "a")
    keys_c, _ = keys_and_members(tmp_path / "c")
    keys_d, _ = keys_and_members(tmp_path / "d")
    assert keys_a != keys_c and len(keys_a) == len(keys_c)  # another seed, another subset of the same size
    assert set(keys_d) < set(keys_a)  # a larger imbalance factor keeps a subset
    source = load_manifest(balanced_dir)
    source_members = {k: v for p in source.shard_paths("train") for k, v in tar_members(p).items()}
    assert all(source_members[name] == data for name, data in members_a.items())  # no re-encoding
    lt = load_manifest(tmp_path / "a")
    assert lt.split("test") == source.split("test")
    for copied, original in zip(lt.shard_paths("test"), source.shard_paths("test"), strict=True):
        assert Path(copied).read_bytes() == Path(original).read_bytes()


def test_longtail_refuses_foreign_members(balanced_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in dir_bytes(balanced_dir).items():
        (copy / name).write_bytes(data)
    with tarfile.open(copy / "train-000000.tar", "a") as tar:
        info = tarfile.TarInfo("train-00000000.pyd")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(ValueError, match="train-00000000.pyd"):
        write_longtail_shards(source_dir=copy, out_dir=tmp_path / "lt", imbalance_factor=10, seed=0)
    assert not (tmp_path / "lt").exists()


# ---------------------------------------------------------------------- output directory handling


def test_existing_output_is_refused_or_replaced_whole(tmp_path, balanced_dir):
    fake_fashion_mnist(tmp_path / "fm")
    source = build_fashion_mnist_source(root=tmp_path / "fm")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    for overwrite, message in ((False, "exists and is not empty.*--overwrite"), (True, "not a cvdist shard directory")):
        with pytest.raises(ValueError, match=message):
            write_dataset_shards(source=source, out_dir=out, overwrite=overwrite)
        assert dir_bytes(out) == {"keep.txt": b"precious"}
    (out / "keep.txt").unlink()  # an empty directory is fine
    write_dataset_shards(source=source, out_dir=out, samples_per_shard=5)
    assert len(load_manifest(out).shard_paths("train")) == 5
    write_dataset_shards(source=source, out_dir=out, samples_per_shard=25, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test-000000.tar", "train-000000.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fm", "out"]  # no temporary or old directory left
    with pytest.raises(ValueError, match="overlap"):
        write_longtail_shards(source_dir=balanced_dir, out_dir=balanced_dir, imbalance_factor=10, seed=0,
                              overwrite=True)


def test_missing_sources_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere'} is not a directory.*train-images-idx3-ubyte"):
        build_fashion_mnist_source(root=tmp_path / "nowhere")
    (tmp_path / "partial").mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        build_fashion_mnist_source(root=tmp_path / "partial")
    with pytest.raises(FileNotFoundError, match=f"shard directory {tmp_path / 'nowhere'} does not exist"):
        write_longtail_shards(source_dir=tmp_path / "nowhere", out_dir=tmp_path / "lt", imbalance_factor=10, seed=0)
    with pytest.raises(FileNotFoundError, match=f"no shard manifest at {tmp_path / 'partial' / 'manifest.json'}"):
        write_longtail_shards(source_dir=tmp_path / "partial", out_dir=tmp_path / "lt", imbalance_factor=10, seed=0)


def test_crash_midway_leaves_no_output(tmp_path, monkeypatch):
    fake_fashion_mnist(tmp_path / "fm")
    source = build_fashion_mnist_source(root=tmp_path / "fm")
    write_dataset_shards(source=source, out_dir=tmp_path / "old", samples_per_shard=5)
    old_bytes = dir_bytes(tmp_path / "old")
    real_encode, calls = shard_writer.encode_image, []

    def failing_encode(pixels, **kwargs):
        calls.append(1)
        if len(calls) > 7:  # after one full shard of 5 and part of the next
            raise RuntimeError("disk on fire")
        return real_encode(pixels, **kwargs)

    monkeypatch.setattr(shard_writer, "encode_image", failing_encode)
    for out, overwrite in ((tmp_path / "new", False), (tmp_path / "old", True)):
        calls.clear()
        with pytest.raises(RuntimeError, match="disk on fire"):
            write_dataset_shards(source=source, out_dir=out, samples_per_shard=5, overwrite=overwrite)
    assert not (tmp_path / "new").exists()
    assert dir_bytes(tmp_path / "old") == old_bytes  # the previous output survives a failed overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fm", "old"]


# ---------------------------------------------------------------------------------------- manifest


def test_manifest_validation(balanced_dir, tmp_path):
    good = json.loads((balanced_dir / "manifest.json").read_text())

    def load_edited(edit) -> None:
        data = json.loads(json.dumps(good))
        edit(data)
        target = tmp_path / "m"
        target.mkdir(exist_ok=True)
        (target / "manifest.json").write_text(json.dumps(data))
        load_manifest(target, check_files=False)

    cases = [
        (lambda d: d.update(format="cvdist-shards/0"), "format is 'cvdist-shards/0'"),
        (lambda d: d.update(colour="red"), "unknown key.*colour"),
        (lambda d: d["splits"]["train"]["class_counts"].pop(), r"splits.train.class_counts has 9 entries"),
        (lambda d: d["splits"]["train"].update(num_samples=5), "has num_samples 5"),
        (lambda d: d["splits"]["train"]["shards"][0].update(file="../x.tar"), r"plain \*\.tar file name"),
        (lambda d: d["splits"]["train"]["shards"][0]["class_counts"].__setitem__(0, 0),
         r"splits.train.shards\[0\] has num_samples"),
        (lambda d: d.update(image_format="gif"), "image_format is 'gif'"),
        (lambda d: d.update(longtail={"imbalance_factor": 0, "seed": 0, "source_manifest": "x",
                                      "kept_per_class": [1] * 10}), "longtail.imbalance_factor must be"),
    ]
    for edit, message in cases:
        with pytest.raises(ManifestError, match=message):
            load_edited(edit)
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(good))
    with pytest.raises(FileNotFoundError, match="train-000000.tar of split 'train'.*is missing"):
        load_manifest(tmp_path / "m")
    manifest = load_manifest(balanced_dir)
    with pytest.raises(ValueError, match="has no split 'val'; available splits: test, train"):
        manifest.shard_paths("val")
    manifest.splits["train"].class_counts[0] += 1
    with pytest.raises(ManifestError):
        write_manifest(manifest, tmp_path / "m")


# --------------------------------------------------------------------------------------------- CLI


def test_cli_commands(tmp_path, capsys):
    fake_fashion_mnist(tmp_path / "fm")
    assert run_cli(["shards", "fashion-mnist", "--root", str(tmp_path / "fm"), "--out", str(tmp_path / "out"),
                    "--samples-per-shard", "10", "--limit", "20", "--quiet"]) == 0
    assert "train 20 samples in 2 shards" in capsys.readouterr().out
    assert run_cli(["shards", "longtail", "--source", str(tmp_path / "out"), "--out", str(tmp_path / "lt"),
                    "--imbalance-factor", "2", "--seed", "3", "--quiet"]) == 0
    assert load_manifest(tmp_path / "lt").longtail.seed == 3
    make_folder(tmp_path / "tree")
    assert run_cli(["shards", "folder", "--root", str(tmp_path / "tree"), "--out", str(tmp_path / "folder"),
                    "--split-name", "val", "--quiet"]) == 0
    assert list(load_manifest(tmp_path / "folder").splits) == ["val"]
    make_cifar10(tmp_path / "cifar")
    assert run_cli(["shards", "cifar", "--archive", str(tmp_path / "cifar"), "--out", str(tmp_path / "c"), "--quiet",
                    "--image-format", "webp"]) == 0
    with pytest.raises(ValueError, match="exists and is not empty"):
        run_cli(["shards", "cifar", "--archive", str(tmp_path / "cifar"), "--out", str(tmp_path / "c")])
