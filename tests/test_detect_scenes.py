"""The dense shard convention and the `cvdist shards scenes` writer."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import webdataset as wds
from hypothesis import given, settings, strategies as st
from PIL import Image

from cvdist.cli import main as cli_main
from cvdist.data.dense_shards import parse_annotations, write_scene_shards
from cvdist.data.manifest import load_manifest
from cvdist.data.scenes import SILHOUETTE_THRESHOLD, SceneOptions, compose_scene

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _bar_item() -> np.ndarray:
    """A 28x28 item whose silhouette is rows 5..9 and columns 3..11 (value 200)."""
    item = np.zeros((28, 28), dtype=np.uint8)
    item[5:10, 3:12] = 200
    return item


def test_box_is_the_pasted_items_pixel_extent_hand_checked():
    # One item, pasted unscaled (28 px): its box is the bar's 9 x 5 extent at the paste position.
    options = SceneOptions(canvas_size=32, max_items=1, min_item_size=28, max_item_size=28)
    for seed in range(5):
        scene = compose_scene(items=_bar_item()[None], item_labels=np.array([0]), rng=np.random.default_rng(seed),
                              options=options, num_categories=1)
        rows, cols = np.nonzero(scene.pixels >= SILHOUETTE_THRESHOLD)  # background stays below the threshold
        assert (scene.pixels[rows, cols] == 200).all()
        (x0, y0, x1, y1), = scene.boxes
        assert (x1 - x0, y1 - y0) == (9, 5)
        assert [x0, y0, x1, y1] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        assert 3 <= x0 <= 3 + 4 and 5 <= y0 <= 5 + 4  # the item's top-left lies in 0..4 on a 32 px canvas
        assert scene.categories == [0]
        assert set(np.unique(scene.instances)) == {0, 1} and (scene.semantic == scene.instances).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), occlusion=st.booleans(), tint=st.booleans())
def test_masks_agree_with_boxes_and_categories(seed, occlusion, tint):
    rng = np.random.default_rng(seed)
    items = rng.integers(0, 255, size=(6, 28, 28), dtype=np.uint8)
    options = SceneOptions(canvas_size=48, max_items=5, min_item_size=8, max_item_size=30, occlusion=occlusion,
                           tint=tint)
    scene = compose_scene(items=items, item_labels=np.array([0, 1, 2, 0, 1, 2]), rng=rng, options=options,
                          num_categories=3)
    assert scene.pixels.shape == ((48, 48, 3) if tint else (48, 48))
    assert len(scene.boxes) == len(scene.categories) >= 1
    for index, (box, category) in enumerate(zip(scene.boxes, scene.categories)):
        rows, cols = np.nonzero(scene.instances == index + 1)
        assert box == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        assert (scene.semantic[rows, cols] == category + 1).all()
    assert ((scene.semantic == 0) == (scene.instances == 0)).all()
    if not occlusion:  # boxes of items placed without occlusion never overlap
        for a in scene.boxes:
            for b in scene.boxes:
                assert a is b or not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])


def test_written_shards_read_back_with_plain_webdataset(tmp_path):
    options = SceneOptions(canvas_size=64, max_items=3, min_item_size=16, max_item_size=32, occlusion=True)
    manifest = write_scene_shards(out_dir=tmp_path / "s", dataset="synthetic", num_train=12, num_test=5,
                                  options=options, seed=3, samples_per_shard=5)
    assert manifest.num_samples("train") == 12 and len(manifest.shard_paths("train")) == 3
    counts = [0] * 10
    for sample in wds.WebDataset(manifest.shard_paths("train"), shardshuffle=False).decode("l"):
        annotations = sample["json"]
        image, instances, semantic = sample["png"], sample["inst.png"], sample["sem.png"]
        assert image.shape == instances.shape == semantic.shape == (64, 64)
        parsed = parse_annotations(json.dumps(annotations).encode(), num_categories=10)
        for box, label, instance in zip(parsed["boxes"], parsed["labels"], parsed["instance_ids"]):
            rows, cols = np.nonzero(np.round(instances * 255) == instance)
            assert box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            counts[label] += 1
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in annotations["boxes"]]
        assert int(sample["cls"]) == annotations["category_ids"][int(np.argmax(areas))]
    assert load_manifest(tmp_path / "s").dense.instance_counts["train"] == counts == manifest.dense.instance_counts[
        "train"]


def test_cli_scenes_is_seeded_and_long_tailed(tmp_path, capsys):
    args = ["shards", "scenes", "--items", "synthetic", "--num-train", "150", "--num-test", "4",
            "--imbalance-factor", "20", "--canvas-size", "48", "--max-items", "3", "--min-item-size", "12",
            "--max-item-size", "20", "--quiet", "--seed", "1"]
    assert cli_main(args + ["--out", str(tmp_path / "a")]) == 0
    assert cli_main(args + ["--out", str(tmp_path / "b")]) == 0
    assert "instances per category" in capsys.readouterr().out
    for name in ("train-000000.tar", "test-000000.tar", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    counts = load_manifest(tmp_path / "a").dense.instance_counts["train"]
    assert counts[0] > 4 * counts[9] and sum(counts[:3]) > sum(counts[7:])  # p_0 / p_9 = 20
    assert cli_main(args + ["--out", str(tmp_path / "c"), "--canvas-size", "16"]) == 2
    assert "canvas size 16 must be in 32..1024" in capsys.readouterr().err


def test_fashion_mnist_scenes(tmp_path):
    manifest = write_scene_shards(out_dir=tmp_path / "f", root=FASHION_MNIST, num_train=4, num_test=2)
    assert manifest.class_names[0] == "T-shirt/top" and manifest.num_samples("test") == 2
    sample = next(iter(wds.WebDataset(manifest.shard_paths("train"), shardshuffle=False)))
    assert Image.open(io.BytesIO(sample["png"])).size == (96, 96)
