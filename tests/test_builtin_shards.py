"""One data path: the built-in data sets are written once as shards (atomically, into a keyed
cache, one writer among concurrent processes) and read through the same pipeline as user shards,
so augmentation presets and re-sampling apply to them as to any shards."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torchvision.transforms import v2

from cvdist.config import DataConfig
from cvdist.data.builtin_shards import BuiltinSpec, builtin_shard_dir, cache_key
from cvdist.data.fast_decode import FastDecoder
from cvdist.data.from_config import build_labelled_data
from cvdist.data.manifest import load_manifest
from tests.helpers.recipes import REPO, clean_env

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def spec(**changes) -> BuiltinSpec:
    values = dict(dataset="synthetic", root="", num_classes=4, in_channels=1, num_train_samples=64,
                  num_eval_samples=16, seed=0)
    return BuiltinSpec(**{**values, **changes})


def test_written_once_keyed_by_what_decides_the_content(tmp_path):
    logged = []
    first = builtin_shard_dir(spec(), cache_dir=tmp_path, log=logged.append)
    again = builtin_shard_dir(spec(), cache_dir=tmp_path, log=logged.append)
    assert first == again and len(logged) == 1  # the second call finds it
    manifest = load_manifest(first)
    assert manifest.num_samples("train") == 64 and manifest.num_samples("test") == 16
    assert manifest.extra_labels == {"coarse": ["even", "odd"]}
    keys = {cache_key(spec(**change)) for change in (
        {}, {"seed": 1}, {"num_train_samples": 65}, {"in_channels": 3}, {"imbalance_factor": 4.0},
        {"holdout_per_class": 2}, {"num_classes": 5}, {"num_eval_samples": 8})}
    assert len(keys) == 8
    assert cache_key(spec(root="/ignored/for/synthetic")) == cache_key(spec())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and "tmp" in p.name]  # no staging left


def test_long_tailed_builtin_set_has_a_balanced_val_split(tmp_path):
    directory = builtin_shard_dir(spec(num_train_samples=400, imbalance_factor=4.0, holdout_per_class=5),
                                  cache_dir=tmp_path)
    manifest = load_manifest(directory)
    assert manifest.class_counts("val") == [5, 5, 5, 5]
    counts = manifest.class_counts("train")
    assert counts[0] == 95 and counts[-1] == 23 and counts == sorted(counts, reverse=True)


def test_concurrent_processes_write_one_set(tmp_path):
    code = ("import sys; from cvdist.data.builtin_shards import BuiltinSpec, builtin_shard_dir; "
            "spec = BuiltinSpec(dataset='synthetic', root='', num_classes=4, in_channels=3, num_train_samples=3000, "
            "num_eval_samples=100, seed=0); print(builtin_shard_dir(spec, cache_dir=sys.argv[1]))")
    workers = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=clean_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), outputs
    assert len({out.strip().splitlines()[-1] for out, _ in outputs}) == 1
    assert sum("writing the built-in" in out for out, _ in outputs) == 1  # one writer, the others waited
    assert load_manifest(outputs[0][0].strip().splitlines()[-1]).num_samples("train") == 3000


def first_batch(tmp_path, augment: str) -> dict:
    data = DataConfig(root=FASHION_MNIST, num_train_samples=256, num_eval_samples=64, augment=augment,
                      shuffle_buffer=0, cache_dir=str(tmp_path))
    labelled = build_labelled_data(data, in_channels=1, num_classes=10, rank=0, world_size=1, micro_batch_size=64,
                                   seed=0, num_epochs=1)
    return next(labelled.train.iterate(epoch=0))


def test_strong_augmentation_applies_to_the_default_data(tmp_path):
    plain, flipped, strong = (first_batch(tmp_path, augment) for augment in ("none", "flip", "strong"))
    assert torch.equal(plain["label"], strong["label"])  # the same samples in the same order
    mirrored = plain["image"].flip(-1)
    # flip: every image is the original or its mirror image
    assert all(torch.equal(f, p) or torch.equal(f, m) for f, p, m in zip(flipped["image"], plain["image"], mirrored))
    # strong: crops, rotations and jitter change nearly every image beyond a flip
    changed = [not (torch.allclose(s, p, atol=1e-4) or torch.allclose(s, m, atol=1e-4))
               for s, p, m in zip(strong["image"], plain["image"], mirrored)]
    assert sum(changed) >= 60
    # and the transform is the preset's, not a flip in disguise
    labelled = build_labelled_data(DataConfig(root=FASHION_MNIST, num_train_samples=256, num_eval_samples=64,
                                              augment="strong", cache_dir=str(tmp_path)),
                                   in_channels=1, num_classes=10, rank=0, world_size=1, micro_batch_size=64, seed=0,
                                   num_epochs=1)
    decoder = labelled.train.dataset.decoder
    assert not isinstance(decoder, FastDecoder)
    kinds = {type(op) for op in decoder.transform.transforms}
    assert {v2.RandomResizedCrop, v2.RandomRotation} <= kinds
    assert any(isinstance(op, v2.ColorJitter) or "Jitter" in repr(op) for op in decoder.transform.transforms)


@pytest.mark.parametrize("sampling", ["instance", "class_balanced"])
def test_builtin_data_honours_sampling_in_every_recipe_path(tmp_path, sampling):
    data = DataConfig(dataset="synthetic", num_train_samples=600, num_eval_samples=50, sampling=sampling,
                      cache_dir=str(tmp_path))
    labelled = build_labelled_data(data, in_channels=1, num_classes=10, rank=0, world_size=1, micro_batch_size=50,
                                   seed=0, num_epochs=1)
    assert labelled.class_counts == [60] * 10
    assert labelled.train.sampling == sampling
