"""COCO box AP (pycocotools) on hand-made predictions, and 2 ranks == 1 rank."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from cvdist.eval.detection import DetectionAccumulator
from tests.helpers.spawn import run_ranks

CPU = torch.device("cpu")


def _target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}


def _prediction(boxes, labels, scores):
    return {**_target(boxes, labels), "scores": torch.tensor(scores)}


def test_ap_on_a_hand_made_prediction_set():
    # category 0: two objects (images a, b); the higher-scored prediction is a false positive, the
    # other hits a's object: precision 1/2 at recall 1/2 at every IoU threshold, so of COCO's 101
    # recall points the 51 up to 0.5 have interpolated precision 0.5: AP = 25.5 / 101.
    # category 1: one object in b predicted 4 px too tall: IoU 400 / 480 = 0.833, a hit at the
    # thresholds 0.50 ... 0.80 (7 of 10): AP = 0.7, AP50 = AP75 = 1.
    accumulator = DetectionAccumulator(category_names=["c0", "c1"])
    accumulator.add(keys=["a", "b"],
                    targets=[_target([[0, 0, 10, 10]], [0]), _target([[70, 70, 80, 80], [20, 20, 40, 40]], [0, 1])],
                    predictions=[_prediction([[50, 50, 60, 60], [0, 0, 10, 10]], [0, 0], [0.95, 0.9]),
                                 _prediction([[20, 20, 40, 44]], [1], [0.8])])
    metrics = accumulator.compute(device=CPU, train_instance_counts=[5, 500])
    half = 25.5 / 101
    assert metrics["AP/c0"] == pytest.approx(half) and metrics["AP/c1"] == pytest.approx(0.7)
    assert metrics["AP"] == pytest.approx((half + 0.7) / 2)
    assert metrics["AP50"] == pytest.approx((half + 1) / 2) and metrics["AP75"] == pytest.approx((half + 1) / 2)
    assert metrics["APs"] == pytest.approx(metrics["AP"]) and metrics["APm"] == metrics["APl"] == -1  # all small
    assert (metrics["APr"], metrics["APc"], metrics["APf"]) == (pytest.approx(half), -1.0, pytest.approx(0.7))


def test_perfect_and_empty_predictions_and_padding():
    accumulator = DetectionAccumulator(category_names=["c0"])
    target = _target([[0, 0, 40, 40]], [0])
    accumulator.add(keys=["a", "pad"], targets=[target, _target([[0, 0, 5, 5]], [0])],
                    predictions=[_prediction([[0, 0, 40, 40]], [0], [0.5]), _prediction([], [], [])],
                    valid=[True, False])  # the padded copy would halve the recall if it counted
    assert accumulator.compute(device=CPU)["AP"] == pytest.approx(1.0)
    empty = DetectionAccumulator(category_names=["c0"])
    empty.add(keys=["a"], targets=[target], predictions=[_prediction([], [], [])])
    metrics = empty.compute(device=CPU)
    assert (metrics["AP"], metrics["APm"], metrics["APs"], metrics["AP/c0"]) == (0.0, 0.0, -1.0, 0.0)  # a 40 px box


def test_an_image_counted_twice_is_an_error():
    accumulator = DetectionAccumulator(category_names=["c0"])
    for _ in range(2):
        accumulator.add(keys=["a"], targets=[_target([[0, 0, 4, 4]], [0])],
                        predictions=[_prediction([[0, 0, 4, 4]], [0], [0.3])])
    with pytest.raises(ValueError, match=r"counted twice: \['a'\]"):
        accumulator.compute(device=CPU)


def _images(count: int = 7):
    generator = torch.Generator().manual_seed(0)
    images = []
    for index in range(count):
        corners = torch.randint(0, 60, (3, 2), generator=generator).float()
        boxes = torch.cat([corners, corners + torch.randint(4, 30, (3, 2), generator=generator)], 1)
        jitter = boxes + torch.randint(-3, 4, boxes.shape, generator=generator)
        labels = torch.randint(0, 3, (3,), generator=generator)
        scores = torch.rand(3, generator=generator)
        images.append((f"img-{index}", {"boxes": boxes, "labels": labels},
                       {"boxes": jitter, "labels": labels.roll(index % 2), "scores": scores}))
    return images


def _score(images, *, valid=None):
    accumulator = DetectionAccumulator(category_names=["a", "b", "c"])
    keys, targets, predictions = zip(*images)
    accumulator.add(keys=keys, targets=targets, predictions=predictions, valid=valid)
    return accumulator


def _worker(rank: int, world_size: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mine = _images()[rank::2]  # 4 and 3 images; rank 1 pads with a masked copy as the eval reader does
        valid = [True] * len(mine) + [False] * (4 - len(mine))
        accumulator = _score(mine + mine[:4 - len(mine)], valid=valid)
        metrics = accumulator.compute(device=CPU, train_instance_counts=[9, 50, 200])
        queue.put((rank, metrics))
    finally:
        dist.destroy_process_group()


def test_two_ranks_give_exactly_the_one_rank_metrics():
    results = run_ranks(_worker, world_size=2)
    single = _score(_images()).compute(device=CPU, train_instance_counts=[9, 50, 200])
    assert 0 < single["AP"] < 1
    assert results[0] == results[1] == single


def test_box_picture_draws_truth_green_and_confident_predictions_red(tmp_path):
    from PIL import Image

    from cvdist.eval.detection_plot import GROUND_TRUTH_COLOUR, PREDICTION_COLOUR, save_detection_grid

    images = [torch.zeros(1, 20, 30), torch.zeros(1, 20, 30)]
    targets = [_target([[2, 2, 10, 10]], [0]), _target([], [])]
    predictions = [_prediction([[12, 4, 20, 16]], [1], [0.9]), _prediction([[1, 1, 5, 5]], [0], [0.1])]
    path = save_detection_grid(images, targets, predictions, path=tmp_path / "boxes.png", category_names=["a", "b"],
                               scale=2, min_score=0.3)
    with Image.open(path) as picture:
        assert picture.size == (2 * 60 + 4, 40)
        assert picture.getpixel((4, 4)) == GROUND_TRUTH_COLOUR  # the true box's corner, scaled by 2
        assert picture.getpixel((24, 20)) == PREDICTION_COLOUR  # the predicted box's left edge
        second = [picture.getpixel((64 + x, y)) for x in range(60) for y in range(40)]
        assert PREDICTION_COLOUR not in second  # score 0.1 < 0.3: not drawn
