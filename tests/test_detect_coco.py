"""`cvdist shards coco` on a tiny hand-written COCO-format folder, read back by plain webdataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import webdataset as wds

from cvdist.cli import main as cli_main
from cvdist.data.coco_import import write_coco_shards
from cvdist.data.dense_decode import build_dense_decoder
from cvdist.data.shard_writer import encode_image

CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]  # cat (3) -> 0, dog (7) -> 1


def _write_coco(root, *, val_categories=CATEGORIES, b_height=24):
    (root / "images").mkdir(parents=True)
    for name, value in (("a", 50), ("b", 90), ("c", 130)):
        (root / "images" / f"{name}.png").write_bytes(
            encode_image(np.full((24, 32), value, dtype=np.uint8), image_format="png"))
    images = [{"id": 1, "file_name": "a.png", "width": 32, "height": 24},
              {"id": 2, "file_name": "b.png", "width": 32, "height": b_height},
              {"id": 3, "file_name": "c.png", "width": 32, "height": 24}]  # c: no annotation
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 3, 10, 8], "iscrowd": 0, "area": 80,
         "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]]},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [20, 10, 5, 5], "iscrowd": 0, "area": 25},  # no mask
        {"id": 3, "image_id": 1, "category_id": 7, "bbox": [4, 4, 0, 6], "iscrowd": 0, "area": 0},  # empty box
        {"id": 4, "image_id": 2, "category_id": 7, "bbox": [0, 0, 8, 8], "iscrowd": 1, "area": 64,
         "segmentation": [[0, 0, 8, 0, 8, 8, 0, 8]]},
    ]
    (root / "instances_train.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": CATEGORIES}))
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val.json").write_text(json.dumps(
        {"images": images[1:2], "annotations": annotations[3:], "categories": val_categories}))


def test_coco_folder_becomes_dense_shards_readable_by_plain_webdataset(tmp_path, capsys):
    _write_coco(tmp_path / "coco")
    assert cli_main(["shards", "coco", "--root", str(tmp_path / "coco"), "--out", str(tmp_path / "out"),
                     "--quiet"]) == 0
    assert "left out: 1 images without annotations, 1 empty boxes" in capsys.readouterr().out
    result = write_coco_shards(root=tmp_path / "coco", out_dir=tmp_path / "again")
    manifest = result.manifest
    assert manifest.class_names == ["cat", "dog"] and manifest.num_samples("train") == 2
    assert manifest.dense.instance_counts == {"train": [1, 2], "val": [0, 1]}
    samples = {s["__key__"]: s for s in wds.WebDataset(manifest.shard_paths("train"), shardshuffle=False)}
    assert sorted(samples) == ["train-00000001", "train-00000002"]
    a = samples["train-00000001"]
    assert a["png"] == (tmp_path / "coco" / "images" / "a.png").read_bytes()  # png copied unchanged
    annotations = json.loads(a["json"])
    assert annotations["boxes"] == [[2, 3, 12, 11], [20, 10, 25, 15]] and annotations["category_ids"] == [0, 1]
    assert a["cls"] == b"0"  # the cat's box is the larger
    image, target, _ = build_dense_decoder(num_categories=2, train=False, size=32, with_masks=True,
                                           with_semantic=True)(a)
    assert image.shape == (1, 24, 32) and target["labels"].tolist() == [0, 1]
    rows, cols = np.nonzero(target["masks"][0].numpy())
    assert target["masks"][0][7, 7] == 1 and cols.min() >= 2 and cols.max() < 12 and rows.min() >= 3 and rows.max() < 11
    assert target["masks"][1].sum() == 0  # no segmentation: box only
    assert target["semantic"][7, 7] == 1 and target["semantic"][12, 22] == 0
    b = json.loads(samples["train-00000002"]["json"])
    assert b["iscrowd"] == [1] and b["category_ids"] == [1]


def test_coco_errors_name_the_problem(tmp_path):
    _write_coco(tmp_path / "one", val_categories=CATEGORIES[:1])
    with pytest.raises(ValueError, match="instances_val.json lists other categories"):
        write_coco_shards(root=tmp_path / "one", out_dir=tmp_path / "x")
    _write_coco(tmp_path / "two", b_height=30)
    with pytest.raises(ValueError, match=r"b.png is 32x24 px but its COCO entry says 32x30"):
        write_coco_shards(root=tmp_path / "two", out_dir=tmp_path / "y")
    assert not (tmp_path / "y").exists()  # all or nothing
    with pytest.raises(FileNotFoundError, match="no instances_<split>.json"):
        write_coco_shards(root=tmp_path / "images-only", out_dir=tmp_path / "z")
