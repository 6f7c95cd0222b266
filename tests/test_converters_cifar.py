"""`cvdist shards cifar`'s reader: the CIFAR-10 / CIFAR-100 python archives (and their extracted
directories), read without unpickling anything but the expected plain containers; tiny fake
archives in the real layout are written into tmp_path."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from cvdist.data.converters import build_cifar_source
from cvdist.data.shard_writer import write_dataset_shards
from tests.helpers.shards import cifar_batch, make_cifar10, read_webdataset, tar_gz


def test_cifar10_archive_and_extracted_directory(tmp_path):
    batches = make_cifar10(tmp_path / "cifar-10-batches-py")
    archive = tar_gz(tmp_path / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    manifest = write_dataset_shards(source=build_cifar_source(archive=archive), out_dir=tmp_path / "out",
                                    samples_per_shard=4)
    assert manifest.class_names == [f"name{i}" for i in range(10)] and manifest.extra_labels == {}
    for split in ("train", "test"):
        data = np.concatenate([b[b"data"] for b in batches[split]])
        labels = sum((b[b"labels"] for b in batches[split]), [])
        samples = read_webdataset(manifest.shard_paths(split))
        assert [s["cls"] for s in samples] == labels
        for sample, row in zip(samples, data):
            expected = row.reshape(3, 32, 32).transpose(1, 2, 0)  # channel-major rows
            assert np.array_equal(np.asarray(sample["png"]), expected)
    assert manifest.shard_sample_counts("train") == [4, 4, 4, 3]
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):  # parent or the batches directory itself
        other = write_dataset_shards(source=build_cifar_source(archive=root), samples_per_shard=4,
                                     out_dir=tmp_path / f"dir{len(root.parts)}")
        for a, b in zip(manifest.shard_paths("train"), other.shard_paths("train")):
            assert Path(a).read_bytes() == Path(b).read_bytes()


def test_cifar100_coarse_labels(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    keys = {b"fine_labels": 100, b"coarse_labels": 20}
    train, test = cifar_batch(rng, 6, keys), cifar_batch(rng, 2, keys)
    meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}
    for name, value in (("train", train), ("test", test), ("meta", meta)):
        (root / name).write_bytes(pickle.dumps(value))  # the current default protocol also loads
    manifest = write_dataset_shards(source=build_cifar_source(archive=tar_gz(root, tmp_path / "c100.tar.gz")),
                                    out_dir=tmp_path / "out")
    assert len(manifest.class_names) == 100 and manifest.extra_labels == {"coarse": [f"c{i}" for i in range(20)]}
    samples = read_webdataset(manifest.shard_paths("train"))
    assert [s["cls"] for s in samples] == train[b"fine_labels"]
    assert [s["json"] for s in samples] == [{"coarse": c} for c in train[b"coarse_labels"]]


class _NotCifar:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'missing.tar.gz'} does not exist"):
        build_cifar_source(archive=tmp_path / "missing.tar.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither CIFAR-10"):
        build_cifar_source(archive=tmp_path / "empty")
    (tmp_path / "garbage.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="not a readable tar archive"):
        build_cifar_source(archive=tmp_path / "garbage.tar.gz")
    make_cifar10(tmp_path / "evil")
    (tmp_path / "evil" / "batches.meta").write_bytes(pickle.dumps({b"label_names": _NotCifar()}))
    with pytest.raises(ValueError, match="getcwd, which a CIFAR batch never holds"):
        build_cifar_source(archive=tmp_path / "evil")
    os.remove(tmp_path / "evil" / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3"):
        build_cifar_source(archive=tmp_path / "evil")


