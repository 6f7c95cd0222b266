"""mIoU, pixel accuracy and per-class IoU by hand; 2 ranks == 1 rank."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from cvdist.eval.segmentation import SegmentationAccumulator
from tests.helpers.spawn import run_ranks

CPU = torch.device("cpu")


def test_miou_pixel_accuracy_and_ignored_pixels_by_hand():
    # one 2x3 image, classes 0..2 (class 2 absent everywhere), one ignored pixel (255):
    #   truth      0 0 1        prediction  0 1 1
    #              1 1 255                  0 1 0
    # class 0: TP 1, FP 1, FN 1 -> IoU 1/3; class 1: TP 2, FP 1, FN 1 -> IoU 2/4; 5 pixels, 3 right
    accumulator = SegmentationAccumulator(class_names=["bg", "a", "b"])
    accumulator.add(predictions=torch.tensor([[[0, 1, 1], [0, 1, 0]]]),
                    targets=torch.tensor([[[0, 0, 1], [1, 1, 255]]]))
    metrics = accumulator.compute(device=CPU)
    assert metrics["IoU/bg"] == pytest.approx(1 / 3) and metrics["IoU/a"] == pytest.approx(0.5)
    assert metrics["IoU/b"] == -1 and metrics["mIoU"] == pytest.approx((1 / 3 + 0.5) / 2)
    assert metrics["pixel_accuracy"] == pytest.approx(3 / 5)


def test_padding_is_skipped_and_bad_classes_refused():
    accumulator = SegmentationAccumulator(class_names=["bg", "a"])
    accumulator.add(predictions=torch.zeros(2, 2, 2, dtype=torch.long), targets=torch.zeros(2, 2, 2, dtype=torch.long),
                    valid=torch.tensor([True, False]))
    assert int(accumulator.confusion.sum()) == 4
    with pytest.raises(ValueError, match="outside 0..1"):
        accumulator.add(predictions=torch.zeros(1, 1, 1, dtype=torch.long), targets=torch.full((1, 1, 1), 5))


def _data():
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 4, (5, 6, 6), generator=generator)
    predictions = torch.where(torch.rand(5, 6, 6, generator=generator) < 0.6, targets,
                              torch.randint(0, 4, (5, 6, 6), generator=generator))
    return predictions, targets


def _worker(rank: int, world_size: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        predictions, targets = (t[rank::2] for t in _data())  # 3 and 2 images
        accumulator = SegmentationAccumulator(class_names=["a", "b", "c", "d"])
        accumulator.add(predictions=predictions, targets=targets)
        queue.put((rank, accumulator.compute(device=CPU)))
    finally:
        dist.destroy_process_group()


def test_two_ranks_give_exactly_the_one_rank_metrics():
    results = run_ranks(_worker, world_size=2)
    single = SegmentationAccumulator(class_names=["a", "b", "c", "d"])
    predictions, targets = _data()
    single.add(predictions=predictions, targets=targets)
    expected = single.compute(device=CPU)
    assert 0 < expected["mIoU"] < 1 and results[0] == results[1] == expected
