"""The streaming shard pipeline: sharding, equal batches, exact resume, corrupt data, safety,
re-sampling and the shard forms users have."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset
from PIL import Image

from cvdist.data.decode import Decoder
from cvdist.data.resampling import target_distribution
from cvdist.data.sharding import consumed_per_worker, expand_shard_pattern, plan_epoch
from cvdist.data.stream import DataError, ShardSet, ShardStream
from cvdist.data.transforms import build_transform
from tests.helpers.shards import UNEVEN, png_bytes, write_tar

NUM_CLASSES = 4


def write_uneven_shards(directory: Path, sizes: list[int], *, label_of=lambda i: i % NUM_CLASSES) -> ShardSet:
    """Shards of the given sizes; sample i has key s{i:05d}, label label_of(i), pixel value i."""
    urls, counts, index = [], [0] * NUM_CLASSES, 0
    for shard, size in enumerate(sizes):
        samples = []
        for _ in range(size):
            label = label_of(index)
            counts[label] += 1
            samples.append((f"s{index:05d}", {"png": png_bytes(index), "cls": str(label).encode()}))
            index += 1
        urls.append(str(write_tar(directory / f"train-{shard:06d}.tar", samples)))
    return ShardSet(urls=urls, shard_sizes=list(sizes), class_counts=counts)


def plain_decoder(augment: bool = False) -> Decoder:
    transform = build_transform(preset="flip" if augment else "none", image_size=8, mean=[0.0], std=[1.0],
                                grey=True, train=True)
    return Decoder(transform, num_classes=NUM_CLASSES)


def make_stream(source: ShardSet, **overrides) -> ShardStream:
    options = dict(sources=[source], rank=0, world_size=1, num_workers=0, batch_size=4, seed=0,
                   decoder=plain_decoder(), shuffle_buffer=16)
    options.update(overrides)
    return ShardStream(**options)


def epoch_keys(stream: ShardStream, epoch: int = 0) -> list[list[str]]:
    return [batch["key"] for batch in stream.iterate(epoch=epoch)]


def test_very_uneven_shards_fall_back_to_sample_striding():
    plan = plan_epoch(shard_sizes=UNEVEN, num_shards=5, world_size=2, num_workers=2, batch_size=4, seed=0, epoch=0)
    assert all(slot.shard_indices == () and len(slot.shared_indices) == 5 for slot in plan.slots)
    assert plan.batches_per_slot == (sum(UNEVEN) // 4) // 4
    assert plan.dropped_samples <= 0.1 * sum(UNEVEN)


def test_plan_deals_uneven_shards_to_equal_batch_counts():
    sizes = [400, 410, 390, 420, 380]
    plan = plan_epoch(shard_sizes=sizes, num_shards=5, world_size=2, num_workers=2, batch_size=4, seed=0, epoch=0)
    dealt = sorted(s for slot in plan.slots for s in slot.shard_indices)
    shared = plan.slots[0].shared_indices
    assert len(dealt) == 4 and len(shared) == 1 and sorted(dealt + list(shared)) == [0, 1, 2, 3, 4]
    assert all(slot.shared_indices == shared for slot in plan.slots)
    assert [slot.sample_offset for slot in plan.slots] == [0, 1, 2, 3]
    assert plan.batches_per_slot >= 1
    assert plan.dropped_samples == sum(sizes) - plan.batches_per_slot * 4 * 4
    other = plan_epoch(shard_sizes=sizes, num_shards=5, world_size=2, num_workers=2, batch_size=4, seed=0, epoch=1)
    assert other.slots != plan.slots or other.batches_per_slot == plan.batches_per_slot


def test_fewer_shards_than_slots_splits_samples():
    plan = plan_epoch(shard_sizes=[40], num_shards=1, world_size=2, num_workers=2, batch_size=2, seed=0, epoch=0)
    assert [(s.shard_indices, s.shared_indices, s.sample_stride, s.sample_offset) for s in plan.slots] == [
        ((), (0,), 4, 0), ((), (0,), 4, 1), ((), (0,), 4, 2), ((), (0,), 4, 3)]
    assert plan.batches_per_slot == 5


def test_equal_shards_that_do_not_divide_evenly_lose_little():
    # 6 shards of 500 over 4 slots: 4 whole shards, 2 shared -> 750 samples per slot.
    plan = plan_epoch(shard_sizes=[500] * 6, num_shards=6, world_size=2, num_workers=2, batch_size=64, seed=0,
                      epoch=0)
    assert plan.batches_per_slot == 750 // 64
    assert plan.dropped_samples == 3000 - 4 * 64 * (750 // 64)


def test_consumed_per_worker_follows_round_robin():
    assert consumed_per_worker(5, 2) == [3, 2]
    assert consumed_per_worker(0, 3) == [0, 0, 0]
    assert consumed_per_worker(7, 1) == [7]


def test_two_ranks_two_workers_disjoint_and_equal(tmp_path):
    source = write_uneven_shards(tmp_path, UNEVEN)
    per_rank = []
    for rank in range(2):
        stream = make_stream(source, rank=rank, world_size=2, num_workers=2)
        batches = epoch_keys(stream)
        assert len(batches) == stream.batches_in_epoch(0)
        per_rank.append([key for batch in batches for key in batch])
    assert len(per_rank[0]) == len(per_rank[1])
    seen = per_rank[0] + per_rank[1]
    assert len(seen) == len(set(seen)), "a sample was read twice in one epoch"
    assert set(seen) <= {f"s{i:05d}" for i in range(sum(UNEVEN))}
    # Equal batch counts however the shards fall, in every epoch.
    for epoch in range(5):
        counts = {len(epoch_keys(make_stream(source, rank=r, world_size=2, num_workers=2), epoch)) for r in range(2)}
        assert len(counts) == 1


def test_same_seed_same_order_other_epoch_other_order(tmp_path):
    source = write_uneven_shards(tmp_path, [20, 20, 20])
    first, again = epoch_keys(make_stream(source)), epoch_keys(make_stream(source))
    assert first == again
    assert epoch_keys(make_stream(source), epoch=1) != first


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("cut", [1, 3, 6])
def test_resume_mid_epoch_continues_exactly(tmp_path, num_workers, cut):
    source = write_uneven_shards(tmp_path, UNEVEN, label_of=lambda i: 0 if i % 3 else i % NUM_CLASSES)
    options = dict(num_workers=num_workers, decoder=plain_decoder(augment=True), sampling="class_balanced")
    full = list(make_stream(source, **options).iterate(epoch=2))
    interrupted = make_stream(source, **options)
    iterator = interrupted.iterate(epoch=2)
    for _ in range(cut):
        next(iterator)
    state = interrupted.state()
    del iterator

    resumed = make_stream(source, **options)
    resumed.load_state(state)
    rest = list(resumed.iterate(epoch=2, start_batch=cut))
    assert len(rest) == len(full) - cut
    for expected, got in zip(full[cut:], rest):
        assert expected["key"] == got["key"]
        assert torch.equal(expected["image"], got["image"])  # augmentation included
        assert torch.equal(expected["label"], got["label"])


def test_resume_with_other_worker_count_is_refused(tmp_path):
    source = write_uneven_shards(tmp_path, UNEVEN)
    stream = make_stream(source, num_workers=2)
    with pytest.raises(DataError, match="data.num_workers"):
        stream.load_state({"epoch": 0, "batch": 3, "consumed": [1, 2, 3], "corrupt": 0})


class _CreatesFile:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_members_are_never_unpickled(tmp_path):
    victim = tmp_path / "pwned"
    payload = pickle.dumps(_CreatesFile(str(victim)))
    samples = [(f"k{i}", {"png": png_bytes(i), "cls": b"1", "pyd": payload, "pickle": payload}) for i in range(8)]
    url = str(write_tar(tmp_path / "evil-000000.tar", samples))
    stream = make_stream(ShardSet(urls=[url], shard_sizes=[8]), batch_size=2)
    batches = list(stream.iterate(epoch=0))
    assert sum(len(b["key"]) for b in batches) == 8
    assert not victim.exists()


def test_truncated_tar_and_corrupt_image_are_skipped_and_counted(tmp_path, capsys):
    good = write_uneven_shards(tmp_path, [12, 12])
    broken = [(f"b{i:03d}", {"png": b"not a png" if i == 2 else png_bytes(i), "cls": b"0"}) for i in range(12)]
    broken[5] = ("b005", {"png": png_bytes(5)})  # missing label
    write_tar(tmp_path / "train-000002.tar", broken)
    truncated = tmp_path / "train-000003.tar"
    write_tar(truncated, [(f"t{i:03d}", {"png": png_bytes(i), "cls": b"1"}) for i in range(12)])
    truncated.write_bytes(truncated.read_bytes()[:3000])
    source = ShardSet(urls=good.urls + [str(tmp_path / "train-000002.tar"), str(truncated)],
                      shard_sizes=[12, 12, 12, 12])
    stream = make_stream(source, max_corrupt=10)
    batches = list(stream.iterate(epoch=0))
    assert len(batches) == stream.batches_in_epoch(0)
    keys = [k for b in batches for k in b["key"]]
    assert "b002" not in keys and "b005" not in keys
    assert stream.metrics()["data/corrupt_skipped"] >= 3  # bad image, missing label, truncated tar
    output = capsys.readouterr().out
    assert "skipped corrupt data" in output and "truncated" in output

    strict = make_stream(source, max_corrupt=1)
    with pytest.raises(DataError, match="data.max_corrupt=1"):
        list(strict.iterate(epoch=0))


def test_shards_from_webdatasets_own_writer(tmp_path):
    pattern = str(tmp_path / "wds-%06d.tar")
    with webdataset.ShardWriter(pattern, maxcount=10) as writer:
        for i in range(25):
            writer.write({"__key__": f"w{i:04d}", "png": png_bytes(i), "cls": i % NUM_CLASSES})
    urls = expand_shard_pattern(str(tmp_path / "wds-{000000..000002}.tar"))
    assert len(urls) == 3
    stream = make_stream(ShardSet(urls=urls, shard_sizes=[10, 10, 5]), batch_size=5, shuffle=False)
    batches = list(stream.iterate(epoch=0))
    pixels = {k: int(img.max() * 255 + 0.5) for b in batches for k, img in zip(b["key"], b["image"])}
    labels = {k: int(l) for b in batches for k, l in zip(b["key"], b["label"])}
    assert len(pixels) == 25
    assert all(pixels[f"w{i:04d}"] == i and labels[f"w{i:04d}"] == i % NUM_CLASSES for i in range(25))


def test_globs_pipes_and_missing_shards(tmp_path):
    source = write_uneven_shards(tmp_path, [8, 8])
    assert expand_shard_pattern(str(tmp_path / "train-*.tar")) == source.urls
    with pytest.raises(FileNotFoundError, match="matches no files"):
        expand_shard_pattern(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        expand_shard_pattern(str(tmp_path / "train-{000000..000005}.tar"))
    piped = [f"pipe:cat {url}" for url in source.urls]
    assert expand_shard_pattern("::".join(piped), allow_pipe=True) == piped
    # No manifest for remote shards: the epoch length comes from num_samples.
    stream = make_stream(ShardSet(urls=piped), num_samples=16, shuffle=False)
    keys = sorted(k for batch in epoch_keys(stream) for k in batch)
    assert keys == [f"s{i:05d}" for i in range(16)]
    with pytest.raises(ValueError, match="num_samples"):
        make_stream(ShardSet(urls=piped))


@pytest.mark.parametrize("scheme", ["instance", "class_balanced", "sqrt", "progressive"])
def test_resampling_matches_the_scheme(tmp_path, scheme):
    # Long-tailed labels: class c has 400 / 4**c samples (400, 100, 25, 6).
    labels = [0] * 400 + [1] * 100 + [2] * 25 + [3] * 6
    rng = np.random.default_rng(0)
    rng.shuffle(labels)
    source = write_uneven_shards(tmp_path, [len(labels) // 4] * 3 + [len(labels) - 3 * (len(labels) // 4)],
                                 label_of=lambda i: labels[i])
    counts = Counter()
    num_epochs = 5
    epoch = 4 if scheme == "progressive" else 0  # the last epoch: fully class-balanced
    for seed in range(25):
        stream = make_stream(source, seed=seed, batch_size=8, sampling=scheme, num_epochs=num_epochs)
        for batch in stream.iterate(epoch=epoch):
            counts.update(batch["label"].tolist())
    total = sum(counts.values())
    expected = target_distribution(source.class_counts, scheme=scheme, epoch=epoch, num_epochs=num_epochs)
    for label in range(NUM_CLASSES):
        assert counts[label] / total == pytest.approx(expected[label], abs=0.03), (scheme, counts)


def test_two_sources_mix_by_weight(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_uneven_shards(tmp_path / "a", [50, 50], label_of=lambda i: 0)
    b = write_uneven_shards(tmp_path / "b", [50, 50], label_of=lambda i: 1)
    a.weight, b.weight = 3.0, 1.0
    stream = make_stream(a, sources=[a, b], num_samples=160, batch_size=8)
    labels = Counter(l for batch in stream.iterate(epoch=0) for l in batch["label"].tolist())
    assert sum(labels.values()) == 160
    assert labels[0] / 160 == pytest.approx(0.75, abs=0.1)


def test_shards_written_by_cvdist_read_through_the_config_path(tmp_path):
    from cvdist.config_loading import load_config
    from cvdist.data.converters import build_folder_source
    from cvdist.data.from_config import build_labelled_data
    from cvdist.data.shard_writer import write_dataset_shards

    for split, count in (("train", 30), ("test", 9)):
        for label, name in enumerate(("cat", "dog", "eel")):
            folder = tmp_path / "images" / split / name
            folder.mkdir(parents=True)
            for i in range(count // 3):
                Image.fromarray(np.full((8, 8), 10 * label + i, dtype=np.uint8)).save(folder / f"{i}.png")
    write_dataset_shards(source=build_folder_source(splits={s: tmp_path / "images" / s for s in ("train", "test")}),
                         out_dir=tmp_path / "shards", samples_per_shard=7, shuffle_seed=0)
    config = load_config(overrides=[f"data.train_shards=[{tmp_path / 'shards'}]", "data.image_size=8",
                                    "data.augment=none", "data.mean=[0]", "data.std=[1]", "data.eval_batch_size=4"])
    data = build_labelled_data(config.data, in_channels=1, num_classes=3, rank=0, world_size=1, micro_batch_size=5,
                               seed=0, num_epochs=1)
    assert data.class_counts == [10, 10, 10] and data.class_names == ["cat", "dog", "eel"]
    batches = list(data.train.iterate(epoch=0))
    assert len(batches) == data.train.batches_in_epoch(0) == 6
    for batch in batches:  # the pixel value encodes the class: 10 * label + i
        assert ((batch["image"][:, 0, 0, 0] * 255).round().long() // 10 == batch["label"]).all()
    evaluated = list(data.eval_batches())
    assert sum(int(b["valid"].sum()) for b in evaluated) == 9


def test_multi_scale_batches_follow_the_seeded_size_schedule(tmp_path):
    from cvdist.data.transforms import MultiScaleBatch

    source = write_uneven_shards(tmp_path, [40, 40])
    schedule = MultiScaleBatch(scales=[0.5, 1.0, 1.5], base_size=8, seed=3, divisor=2)
    stream = make_stream(source, multi_scale=schedule)
    sizes = [batch["image"].shape[-1] for batch in stream.iterate(epoch=1)]
    assert sizes == [schedule.size_for(1, index) for index in range(len(sizes))]
    assert set(sizes) == {4, 8, 12}
