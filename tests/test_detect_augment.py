"""Dense decoding + joint image / box / mask augmentation, and dense batches through ShardStream."""

from __future__ import annotations

import numpy as np
import torch

from cvdist.data.dense_decode import build_dense_decoder
from cvdist.data.dense_shards import scene_sample, write_scene_shards
from cvdist.data.manifest import load_manifest
from cvdist.data.scenes import Scene, SceneOptions
from cvdist.data.shard_writer import encode_image
from cvdist.data.stream import ShardSet, ShardStream


def _raw_sample() -> dict:
    """A 96x96 grey scene: instance 1 (category 2) fills box [10, 20, 30, 40), instance 2
    (category 0) fills [80, 0, 96, 8)."""
    instances = np.zeros((96, 96), dtype=np.uint8)
    instances[20:40, 10:30] = 1
    instances[0:8, 80:96] = 2
    semantic = np.where(instances == 1, 3, np.where(instances == 2, 1, 0)).astype(np.uint8)
    scene = Scene(pixels=(instances * 100).astype(np.uint8), boxes=[[10, 20, 30, 40], [80, 0, 96, 8]],
                  categories=[2, 0], instances=instances, semantic=semantic)
    sample = scene_sample(scene, key="k")
    return {"__key__": "k", "png": encode_image(scene.pixels, image_format="png"),
            **{ext: data for ext, data in sample.members.items()}}


def _decode(**options):
    decoder = build_dense_decoder(num_categories=3, train=True, size=96, with_masks=True, with_semantic=True,
                                  **options)
    return decoder(_raw_sample())


def _extent(mask: torch.Tensor) -> list[int]:
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]


def test_evaluation_decoding_keeps_everything_as_written():
    image, target, key = build_dense_decoder(num_categories=3, train=False, size=96, with_masks=True)(_raw_sample())
    assert key == "k" and image.dtype == torch.float32 and image.shape == (1, 96, 96)
    assert abs(float(image[0, 25, 15]) - 100 / 255) < 1e-6
    assert target["boxes"].tolist() == [[10, 20, 30, 40], [80, 0, 96, 8]]
    assert target["labels"].tolist() == [2, 0] and target["iscrowd"].tolist() == [0, 0]
    assert [_extent(m) for m in target["masks"]] == target["boxes"].int().tolist()


def test_horizontal_flip_of_a_known_box():
    image, target, _ = _decode(hflip=1.0, scale_range=(1.0, 1.0))
    # x -> W - x with exclusive ends: [10, 30) -> [66, 86), [80, 96) -> [0, 16)
    assert target["boxes"].tolist() == [[66, 20, 86, 40], [0, 0, 16, 8]]
    assert [_extent(m) for m in target["masks"]] == target["boxes"].int().tolist()
    assert target["semantic"][25, 70] == 3 and target["semantic"][25, 15] == 0
    assert abs(float(image[0, 25, 70]) - 100 / 255) < 1e-6


def test_scale_jitter_halves_boxes_and_masks_together():
    _, target, _ = _decode(hflip=0.0, scale_range=(0.5, 0.5))
    sizes = (target["boxes"][:, 2:] - target["boxes"][:, :2]).tolist()
    assert sizes == [[10, 10], [8, 4]]  # 20x20 and 16x8 at half scale (the crop only pads: 48 -> 96)
    assert [_extent(m) for m in target["masks"]] == target["boxes"].int().tolist()


def test_crop_after_upscaling_clips_and_drops_boxes_with_their_labels_and_masks():
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        image, target, _ = _decode(hflip=0.0, scale_range=(2.0, 2.0))  # 192 px, cropped to 96
        assert image.shape == (1, 96, 96) and target["semantic"].shape == (96, 96)
        boxes = target["boxes"].int().tolist()
        assert len(boxes) == len(target["labels"]) == len(target["iscrowd"]) == len(target["masks"])
        assert [_extent(m) for m in target["masks"]] == boxes  # integer scale: exact
        seen.add(tuple(target["labels"].tolist()))
    assert (2,) in seen or (0,) in seen  # some crops lose one of the two instances


def test_dense_batches_flow_through_the_shard_stream_and_resume_exactly(tmp_path):
    manifest = write_scene_shards(out_dir=tmp_path / "s", dataset="synthetic", num_train=24, num_test=2,
                                  options=SceneOptions(canvas_size=48, min_item_size=12, max_item_size=24), seed=0,
                                  samples_per_shard=6)
    load_manifest(tmp_path / "s")
    source = ShardSet(urls=manifest.shard_paths("train"), shard_sizes=manifest.shard_sample_counts("train"))

    def stream():
        return ShardStream(sources=[source], rank=1, world_size=2, num_workers=0, batch_size=3, seed=0,
                           decoder=build_dense_decoder(num_categories=10, train=True, size=48), shuffle_buffer=8)

    first = stream()
    batches = list(first.iterate(epoch=0))
    assert len(batches) == first.batches_in_epoch(0) == 4
    assert all(len(b["image"]) == len(b["target"]) == 3 and b["image"][0].shape == (1, 48, 48) for b in batches)
    resumed, partial = stream(), stream()
    for _ in zip(range(2), partial.iterate(epoch=0)):
        pass
    resumed.load_state(partial.state())
    rest = list(resumed.iterate(epoch=0, start_batch=2))
    for got, want in zip(rest, batches[2:], strict=True):
        assert got["key"] == want["key"]
        assert all(torch.equal(a, b) for a, b in zip(got["image"], want["image"]))
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(got["target"], want["target"]))
