"""Mask R-CNN: COCO mask AP (pycocotools segm) against pycocotools called directly, a perfect
prediction scoring 1, 2 ranks == 1 rank; shards without instance masks refused in one line."""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist

from cvdist.config import ConfigError
from cvdist.eval.detection import DetectionAccumulator, encode_masks
from tests.helpers.spawn import run_ranks

CPU = torch.device("cpu")
SIZE = 32


def _mask(*rects) -> torch.Tensor:
    mask = torch.zeros(SIZE, SIZE, dtype=torch.uint8)
    for x0, y0, x1, y1 in rects:
        mask[y0:y1, x0:x1] = 1
    return mask


def _box(mask: torch.Tensor) -> list[float]:
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return [float(cols.min()), float(rows.min()), float(cols.max()) + 1, float(rows.max()) + 1]


def _target(masks, labels):
    stacked = torch.stack(masks) if masks else torch.zeros(0, SIZE, SIZE, dtype=torch.uint8)
    return {"boxes": torch.tensor([_box(m) for m in masks]).reshape(-1, 4), "labels": torch.tensor(labels),
            "masks": stacked}


def _prediction(masks, labels, scores):
    target = _target(masks, labels)  # probabilities: 0.9 on, 0.2 off (thresholded at 0.5)
    return {**target, "masks": target["masks"][:, None].float() * 0.7 + 0.2, "scores": torch.tensor(scores)}


def _hand_made():
    """Two images, two categories: an L-shaped object half covered, a miss, a false positive."""
    return [
        ("a", _target([_mask((0, 0, 10, 10), (0, 10, 4, 20)), _mask((20, 20, 30, 30))], [0, 1]),
         _prediction([_mask((0, 0, 10, 10)), _mask((21, 20, 30, 30)), _mask((2, 24, 8, 30))], [0, 1, 1],
                     [0.9, 0.8, 0.95])),
        ("b", _target([_mask((5, 5, 25, 15))], [0]),
         _prediction([_mask((5, 5, 25, 13)), _mask((0, 20, 5, 25))], [0, 0], [0.6, 0.7])),
    ]


def _accumulate(images, *, valid=None) -> DetectionAccumulator:
    accumulator = DetectionAccumulator(category_names=["c0", "c1"], with_masks=True)
    keys, targets, predictions = zip(*images)
    accumulator.add(keys=keys, targets=targets, predictions=predictions, valid=valid)
    return accumulator


def _pycocotools_directly(images) -> list[float]:
    """COCOeval segm on the same images, built the plain COCO way (image ids in key order)."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(mask):
        return mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))

    annotations, results = [], []
    for image_id, (_, target, prediction) in enumerate(sorted(images, key=lambda i: i[0]), start=1):
        for mask, label in zip(target["masks"], target["labels"].tolist()):
            segmentation = rle(mask)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                "segmentation": segmentation, "area": float(mask_utils.area(segmentation)),
                                "bbox": list(mask_utils.toBbox(segmentation)), "iscrowd": 0})
        for mask, label, score in zip(prediction["masks"][:, 0] > 0.5, prediction["labels"].tolist(),
                                      prediction["scores"].tolist()):
            results.append({"image_id": image_id, "category_id": label + 1, "segmentation": rle(mask),
                            "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": [{"id": i + 1, "height": SIZE, "width": SIZE} for i in range(len(images))],
                         "annotations": annotations,
                         "categories": [{"id": 1}, {"id": 2}]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), iouType="segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return list(evaluation.stats[:3])


def test_mask_ap_equals_pycocotools_called_directly_and_differs_from_box_ap():
    images = _hand_made()
    metrics = _accumulate(images).compute(device=CPU)
    expected = _pycocotools_directly(images)
    assert [metrics["mask_AP"], metrics["mask_AP50"], metrics["mask_AP75"]] == pytest.approx(expected, abs=1e-12)
    assert 0 < metrics["mask_AP"] < 1
    assert metrics["mask_AP"] != pytest.approx(metrics["AP"])  # the L-shape's box is hit, its mask half


def test_perfect_masks_score_one_and_padding_does_not_count():
    masks = [_mask((3, 3, 12, 9), (3, 9, 6, 20)), _mask((15, 15, 31, 31))]
    target = _target(masks, [0, 1])
    perfect = _prediction(masks, [0, 1], [0.9, 0.8])
    pad = _prediction([_mask((0, 0, 2, 2))], [0], [0.99])
    metrics = _accumulate([("a", target, perfect), ("pad", _target(masks[:1], [0]), pad)],
                          valid=[True, False]).compute(device=CPU)
    assert (metrics["mask_AP"], metrics["mask_AP50"], metrics["mask_AP75"]) == pytest.approx((1.0, 1.0, 1.0))


def test_rle_lines_round_trip_without_delimiters():
    masks = torch.stack([_mask((0, 0, 32, 32)), _mask(), _mask((1, 2, 3, 4))])
    lines = encode_masks(masks)
    assert all(b"\n" not in line and line.count(b" ") == 2 for line in lines)
    from pycocotools import mask as mask_utils

    from cvdist.eval.detection import _rle
    decoded = [mask_utils.decode(_rle(line)) for line in lines]
    assert all(np.array_equal(d, m.numpy()) for d, m in zip(decoded, masks))


def _many(count: int = 7):
    generator = torch.Generator().manual_seed(1)
    images = []
    for index in range(count):
        rects = []
        for _ in range(2):
            x0, y0 = torch.randint(0, 20, (2,), generator=generator).tolist()
            width, height = torch.randint(3, 12, (2,), generator=generator).tolist()
            rects.append((x0, y0, x0 + width, y0 + height))
        truth = [_mask(r) for r in rects]
        guess = [_mask((r[0] + 1, r[1], r[2], r[3])) for r in rects]
        labels = torch.randint(0, 2, (2,), generator=generator).tolist()
        images.append((f"img-{index}", _target(truth, labels),
                       _prediction(guess, labels[::-1] if index % 3 else labels,
                                   torch.rand(2, generator=generator).tolist())))
    return images


def _worker(rank: int, world_size: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mine = _many()[rank::2]  # 4 and 3 images; rank 1 pads with a masked copy as the eval reader does
        valid = [True] * len(mine) + [False] * (4 - len(mine))
        queue.put((rank, _accumulate(mine + mine[:4 - len(mine)], valid=valid).compute(device=CPU)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_give_exactly_the_one_rank_mask_ap():
    results = run_ranks(_worker, world_size=2)
    single = _accumulate(_many()).compute(device=CPU)
    assert 0 < single["mask_AP"] < 1
    assert results[0] == results[1] == single


def test_shards_without_instance_masks_are_refused_in_one_line(tmp_path):
    from cvdist.data.dense_data import check_instance_masks
    from tests.helpers.shards import png_bytes, write_tar

    annotations = b'{"width":8,"height":8,"boxes":[[0,0,4,4]],"category_ids":[0],"iscrowd":[0],"instance_ids":[1]}'
    write_tar(tmp_path / "boxes.tar", [("s0", {"png": png_bytes(0), "cls": b"0", "json": annotations})])
    with pytest.raises(ConfigError, match=r"mask_rcnn needs instance masks.*s0 of .*boxes.tar has no \.inst\.png") \
            as error:
        check_instance_masks(str(tmp_path / "boxes.tar"), max_member_bytes=1 << 20)
    assert "\n" not in str(error.value)


def test_box_picture_tints_confident_predicted_masks(tmp_path):
    from PIL import Image

    from cvdist.eval.detection_plot import save_detection_grid

    target = _target([_mask((2, 2, 10, 10))], [0])
    prediction = _prediction([_mask((12, 4, 20, 16)), _mask((0, 20, 6, 30))], [1, 0], [0.9, 0.1])
    path = save_detection_grid([torch.zeros(1, SIZE, SIZE)], [target], [prediction], path=tmp_path / "boxes.png",
                               category_names=["a", "b"], scale=1, min_score=0.3)
    with Image.open(path) as picture:
        assert picture.getpixel((13, 14)) == (127, 20, 20)  # in the confident mask, left of its label: half red
        assert picture.getpixel((3, 25)) == (0, 0, 0)  # score 0.1: its mask is not drawn
