"""`cvdist shards segfolder` on a tiny images + label-map folder the test writes, read back by plain
webdataset and by the dense decoder; bad label maps are refused, missing ones counted and skipped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from cvdist.cli import main as cli_main
from cvdist.data.dense_decode import build_dense_decoder
from cvdist.data.dense_shards import decode_png_map
from cvdist.data.segfolder_import import write_segfolder_shards
from cvdist.data.shard_writer import encode_image


def _label_map(value_at_centre: int, *, border: bool = True) -> np.ndarray:
    labels = np.zeros((20, 24), dtype=np.uint8)
    labels[5:15, 6:18] = value_at_centre
    if border:
        labels[4, 6:18] = 255  # VOC's void border
    return labels


def _write_folder(root, *, splits=("train", "val"), bad_value=None, palette=True):
    for split in splits:
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for index, value in enumerate((1, 2, 2)):
            stem = f"{split}_{index}"
            (root / "images" / split / f"{stem}.png").write_bytes(
                encode_image(np.full((20, 24, 3), 40 * index, dtype=np.uint8), image_format="png"))
            if index == 2 and split == "train":
                continue  # an image without a label map: skipped and counted
            labels = Image.fromarray(_label_map(bad_value if bad_value and index == 1 else value))
            if palette:  # VOC stores its maps as palette PNGs: the indices are the labels
                labels = labels.convert("P")
            labels.save(root / "labels" / split / f"{stem}.png")
    (root / "classes.txt").write_text("cat\ndog\n")


def test_segfolder_becomes_dense_shards_readable_by_plain_webdataset(tmp_path, capsys):
    _write_folder(tmp_path / "voc")
    assert cli_main(["shards", "segfolder", "--root", str(tmp_path / "voc"), "--out", str(tmp_path / "out"),
                     "--quiet"]) == 0
    assert "left out: 1 images without a label map" in capsys.readouterr().out
    result = write_segfolder_shards(root=tmp_path / "voc", out_dir=tmp_path / "again")
    manifest = result.manifest
    assert result.skipped_images == 1 and manifest.class_names == ["cat", "dog"]
    assert manifest.num_samples("train") == 2 and manifest.num_samples("val") == 3
    samples = {s["__key__"]: s for s in wds.WebDataset(manifest.shard_paths("train"), shardshuffle=False)}
    assert sorted(samples) == ["train-00000000", "train-00000001"]
    first = samples["train-00000000"]
    assert first["cls"] == b"0" and samples["train-00000001"]["cls"] == b"1"  # the category with most pixels
    assert json.loads(first["json"])["boxes"] == []
    semantic = decode_png_map(first["sem.png"])
    assert semantic[10, 10] == 1 and semantic[0, 0] == 0 and semantic[4, 10] == 255  # unchanged, 255 kept
    image, target, _ = build_dense_decoder(num_categories=2, train=False, size=24, with_semantic=True)(first)
    assert image.shape == (3, 20, 24) and target["semantic"].shape == (20, 24) and len(target["boxes"]) == 0


def test_flat_folder_is_one_named_split_and_classes_can_be_counted(tmp_path):
    root = tmp_path / "flat"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    (root / "images" / "x.jpg").write_bytes(encode_image(np.zeros((20, 24, 3), dtype=np.uint8), image_format="jpg"))
    Image.fromarray(_label_map(3, border=False)).save(root / "annotations" / "x.png")
    manifest = write_segfolder_shards(root=root, out_dir=tmp_path / "out", num_classes=3, split="training").manifest
    assert manifest.class_names == ["class_0", "class_1", "class_2"] and manifest.num_samples("training") == 1


def test_bad_label_maps_are_refused_naming_the_file(tmp_path):
    _write_folder(tmp_path / "big", splits=("train",), bad_value=7)
    with pytest.raises(ValueError, match=r"train_1.png holds value 7, but 2 classes allow 0 \(background\), 1..2 "
                                         r"and 255 \(ignore\)"):
        write_segfolder_shards(root=tmp_path / "big", out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()  # all or nothing
    _write_folder(tmp_path / "rgb", splits=("train",))
    Image.new("RGB", (24, 20)).save(tmp_path / "rgb" / "labels" / "train" / "train_0.png")
    with pytest.raises(ValueError, match="train_0.png .*mode RGB; label maps are 8-bit single-channel"):
        write_segfolder_shards(root=tmp_path / "rgb", out_dir=tmp_path / "y")
    _write_folder(tmp_path / "size", splits=("train",))
    Image.new("L", (10, 10)).save(tmp_path / "size" / "labels" / "train" / "train_0.png")
    with pytest.raises(ValueError, match="train_0.png is 24x20 px but its label map .* is 10x10"):
        write_segfolder_shards(root=tmp_path / "size", out_dir=tmp_path / "z")
    (tmp_path / "size" / "images" / "extra").mkdir()
    with pytest.raises(FileNotFoundError, match="no sub-folder for the split.s. extra that images/ has"):
        write_segfolder_shards(root=tmp_path / "size", out_dir=tmp_path / "u")
    with pytest.raises(FileNotFoundError, match="needs images/ and labels/"):
        write_segfolder_shards(root=tmp_path / "nothing", out_dir=tmp_path / "w", num_classes=2)
    (tmp_path / "nameless" / "images").mkdir(parents=True)
    (tmp_path / "nameless" / "labels").mkdir()
    with pytest.raises(ValueError, match="no .*classes.txt: give the class names there"):
        write_segfolder_shards(root=tmp_path / "nameless", out_dir=tmp_path / "v")
