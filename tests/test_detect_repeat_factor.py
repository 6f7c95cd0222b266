"""LVIS repeat-factor sampling on dense shards: factors by hand, the rare categories' share of
training instances moving to the formula's expectation, equal batches per rank, exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cvdist.data.dense_decode import build_dense_decoder
from cvdist.data.dense_shards import parse_annotations, write_scene_shards
from cvdist.data.repeat_factor import (build_repeat_factor, category_image_fractions, expected_instance_shares,
                                       read_image_categories)
from cvdist.data.scenes import SceneOptions
from cvdist.data.stream import ShardSet, ShardStream


def _annotations(categories: list[int]) -> bytes:
    boxes = [[0, 0, 4, 4]] * len(categories)
    return json.dumps({"width": 8, "height": 8, "boxes": boxes, "category_ids": categories}).encode()


def test_repeat_factors_by_hand(tmp_path):
    from tests.helpers.shards import write_tar

    # 4 images: category 0 in all (f = 1), category 1 in one (twice: still f = 1/4), category 2 in one.
    images = [[0], [0, 1, 1], [0], [2, 0]]
    write_tar(tmp_path / "a.tar", [(f"s{i}", {"json": _annotations(c), "cls": b"0"}) for i, c in enumerate(images)])
    urls = [str(tmp_path / "a.tar")]
    assert read_image_categories(urls, num_categories=3) == images
    assert category_image_fractions(images, num_categories=3) == [1.0, 0.25, 0.25]
    repeat = build_repeat_factor(urls, threshold=0.5, num_categories=3)
    # r_c = max(1, sqrt(0.5 / f_c)): 1 for category 0, sqrt(2) for 1 and 2; r_i = max over the image
    assert repeat.category_factors == pytest.approx((1.0, math.sqrt(2), math.sqrt(2)))
    assert [repeat({"json": _annotations(c)}) for c in images] == pytest.approx([1, math.sqrt(2), 1, math.sqrt(2)])
    assert build_repeat_factor(urls, threshold=0.1, num_categories=3).category_factors == (1.0, 1.0, 1.0)
    assert repeat({"json": b"not json"}) is None  # passed on once; the decoder counts it as corrupt


class _Categories:
    """A decoder that only reads the categories (the share test needs no pixels)."""

    def __call__(self, sample: dict) -> tuple[list[int], str]:
        return parse_annotations(sample["json"], num_categories=10)["labels"].tolist(), sample["__key__"]

    @staticmethod
    def collate(items):
        return {"categories": [item[0] for item in items], "key": [item[1] for item in items]}


def _scenes(tmp_path, *, num_train: int, imbalance_factor: float = 1.0, size: int = 32):
    options = SceneOptions(canvas_size=size, min_item_size=8, max_item_size=14, max_items=2,
                           imbalance_factor=imbalance_factor)
    manifest = write_scene_shards(out_dir=tmp_path / "s", dataset="synthetic", num_train=num_train, num_test=2,
                                  options=options, seed=0, samples_per_shard=25)
    return ShardSet(urls=manifest.shard_paths("train"), shard_sizes=manifest.shard_sample_counts("train"))


def _tail_share(source: ShardSet, repeat, *, epochs: int, tail: range) -> float:
    stream = ShardStream(sources=[source], rank=0, world_size=1, num_workers=0, batch_size=10, seed=0,
                         decoder=_Categories(), shuffle_buffer=50, sample_repeat=repeat)
    seen = [c for epoch in range(epochs) for batch in stream.iterate(epoch=epoch)
            for categories in batch["categories"] for c in categories]
    return sum(c in tail for c in seen) / len(seen)


def test_rare_categories_share_rises_to_the_expected_share(tmp_path):
    source = _scenes(tmp_path, num_train=400, imbalance_factor=50)
    images = read_image_categories(source.urls, num_categories=10)
    repeat = build_repeat_factor(source.urls, threshold=0.1, num_categories=10)
    tail = range(6, 10)  # the four rarest categories (about 6 % of the instances)
    natural = sum(c in tail for i in images for c in i) / sum(len(i) for i in images)
    expected = sum(expected_instance_shares(images, [repeat(s) for s in _json_samples(images)],
                                            num_categories=10)[c] for c in tail)
    assert expected > 1.8 * natural  # what the formula promises at t = 0.1 on this profile
    plain = _tail_share(source, None, epochs=4, tail=tail)
    resampled = _tail_share(source, repeat, epochs=4, tail=tail)
    assert plain == pytest.approx(natural, rel=0.02)  # (4 epochs of plain sampling: every image 4 times)
    assert resampled == pytest.approx(expected, rel=0.2), (natural, expected, resampled)


def _json_samples(images):
    return [{"json": _annotations(categories)} for categories in images]


def test_equal_batches_per_rank_and_exact_resume_with_repeat_factors(tmp_path):
    source = _scenes(tmp_path, num_train=48, imbalance_factor=20, size=48)
    repeat = build_repeat_factor(source.urls, threshold=0.3, num_categories=10)
    assert max(repeat.category_factors) > 1.5

    def stream(rank: int = 1):
        return ShardStream(sources=[source], rank=rank, world_size=2, num_workers=0, batch_size=3, seed=0,
                           decoder=build_dense_decoder(num_categories=10, train=True, size=48), shuffle_buffer=8,
                           sample_repeat=repeat)

    batches = list(stream().iterate(epoch=1))
    assert len(batches) == len(list(stream(rank=0).iterate(epoch=1))) == stream().batches_in_epoch(1) == 8
    keys = [k for b in batches for k in b["key"]]
    assert len(set(keys)) < len(keys)  # some rare-category images repeat within the epoch
    resumed, partial = stream(), stream()
    for _ in zip(range(3), partial.iterate(epoch=1)):
        pass
    resumed.load_state(partial.state())
    for got, want in zip(resumed.iterate(epoch=1, start_batch=3), batches[3:], strict=True):
        assert got["key"] == want["key"]
        assert all(torch.equal(a, b) for a, b in zip(got["image"], want["image"]))
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(got["target"], want["target"]))
