"""Long-tail metrics on a hand-made confusion example; accumulator reduce with a fake all-reduce."""

import math

import pytest
import torch
from PIL import Image

from cvdist.eval.longtail import (ConfusionAccumulator, ShotThresholds, confusion_matrix, longtail_metrics,
                                  plot_per_class_accuracy, scaled_shot_thresholds, shot_groups)

# class 0: 3 of 4 right, class 1: 1 of 2, class 2: 1 of 2
LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
PREDS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 0])
CONFUSION = [[3, 1, 0], [0, 1, 1], [1, 0, 1]]
TRAIN_COUNTS = [200, 50, 5]  # many, medium, few with thresholds (100, 20)


def test_hand_made_example():
    result = longtail_metrics(PREDS, LABELS, train_class_counts=TRAIN_COUNTS, thresholds=(100, 20))
    assert result["confusion"] == CONFUSION
    assert result["top1"] == pytest.approx(5 / 8)
    assert result["per_class"] == pytest.approx([0.75, 0.5, 0.5])
    assert result["balanced_acc"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert (result["many"], result["medium"], result["few"]) == pytest.approx((0.75, 0.5, 0.5))
    assert set(result) == {"top1", "balanced_acc", "many", "medium", "few", "per_class", "confusion"}


def test_logits_give_the_same_metrics_as_predictions():
    logits = torch.nn.functional.one_hot(PREDS, 3).float() * 5 + 0.1 * torch.randn(8, 3)
    assert longtail_metrics(logits, LABELS, train_class_counts=TRAIN_COUNTS) == \
        longtail_metrics(PREDS, LABELS, train_class_counts=TRAIN_COUNTS)


def test_grouping_boundaries_and_empty_groups_are_nan():
    groups = shot_groups([101, 100, 20, 19, 0], thresholds=ShotThresholds(many=100, few=20))
    assert groups == {"many": [0], "medium": [1, 2], "few": [3, 4]}
    result = longtail_metrics(PREDS, LABELS, train_class_counts=[300, 200, 150], thresholds=(100, 20))
    assert result["many"] == pytest.approx(result["balanced_acc"])
    assert math.isnan(result["medium"]) and math.isnan(result["few"])


def test_class_absent_from_test_set_is_nan_and_left_out_of_balanced_accuracy():
    result = longtail_metrics(PREDS, LABELS, train_class_counts=[200, 50, 5, 3], thresholds=(100, 20))
    assert math.isnan(result["per_class"][3])
    assert result["balanced_acc"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert result["few"] == pytest.approx(0.5)  # class 3 is few-shot but has no test samples
    assert result["confusion"][3] == [0, 0, 0, 0]


def test_valid_mask_excludes_padding():
    labels = torch.cat([LABELS, torch.tensor([-1, 2, 7])])
    preds = torch.cat([PREDS, torch.tensor([0, 0, -5])])
    valid = torch.cat([torch.ones(8, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)])
    matrix = confusion_matrix(preds, labels, num_classes=3, valid_mask=valid)
    assert matrix.dtype == torch.int64 and matrix.tolist() == CONFUSION
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\]"):
        confusion_matrix(preds, labels, num_classes=3)


def test_accumulator_reduce_with_fake_all_reduce():
    accumulator = ConfusionAccumulator(3)
    accumulator.update(PREDS[:5], LABELS[:5])
    accumulator.update(PREDS[5:], LABELS[5:], valid_mask=torch.tensor([True, True, True]))
    assert accumulator.confusion.tolist() == CONFUSION
    assert accumulator.reduce(lambda t: t * 2) is accumulator  # two ranks with identical data
    assert accumulator.confusion.tolist() == [[2 * v for v in row] for row in CONFUSION]
    result = accumulator.metrics(train_class_counts=TRAIN_COUNTS, thresholds=(100, 20))
    assert result["top1"] == pytest.approx(5 / 8) and result["few"] == pytest.approx(0.5)
    with pytest.raises(RuntimeError, match="already"):
        accumulator.reduce(lambda t: t)
    with pytest.raises(RuntimeError, match="reset"):
        accumulator.update(PREDS, LABELS)
    accumulator.reset()
    assert accumulator.confusion.sum() == 0


def test_accumulator_in_place_reduce_and_bad_callable():
    other_rank = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 0, 2]])

    def in_place_sum(tensor):  # the shape of torch.distributed.all_reduce + return
        tensor += other_rank
        return tensor

    accumulator = ConfusionAccumulator(3)
    accumulator.update(PREDS, LABELS)
    accumulator.reduce(in_place_sum)
    assert accumulator.confusion.tolist() == [[4, 1, 0], [0, 1, 1], [1, 0, 3]]
    fresh = ConfusionAccumulator(3)
    with pytest.raises(TypeError, match="must return the summed"):
        fresh.reduce(lambda t: None)
    single = ConfusionAccumulator(3)
    single.update(PREDS, LABELS)
    assert single.reduce(None).confusion.tolist() == CONFUSION


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="train_class_counts has 2 entries but there are 3 classes"):
        ConfusionAccumulator(3).metrics(train_class_counts=[1, 2])
    with pytest.raises(ValueError, match="few <= many"):
        scaled_shot_thresholds(TRAIN_COUNTS, many=10, few=20)
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionAccumulator(0)


def test_scaled_shot_thresholds():
    assert scaled_shot_thresholds([500, 5]) == ShotThresholds(100, 20)
    assert scaled_shot_thresholds([1280, 5]) == ShotThresholds(100, 20)  # never scaled up
    assert scaled_shot_thresholds([50, 1]) == pytest.approx((10, 2))
    assert scaled_shot_thresholds([150, 1]).few == 6  # exactly: a 6-image class is medium-shot
    assert scaled_shot_thresholds([50, 1], many=200, few=40, reference_max=100) == pytest.approx((100, 20))
    # default thresholds of the metrics are the scaled ones: head 50 -> many > 10, few < 2
    result = longtail_metrics(PREDS, LABELS, train_class_counts=[50, 10, 1])
    assert (result["many"], result["medium"], result["few"]) == pytest.approx((0.75, 0.5, 0.5))


def test_plot_writes_png_of_the_requested_size(tmp_path):
    path = plot_per_class_accuracy([0.75, 0.5, float("nan")], train_class_counts=TRAIN_COUNTS,
                                   class_names=["cat", "dog", "eel"], path=tmp_path / "sub" / "acc.png",
                                   thresholds=(100, 20), figsize=(6, 3), dpi=100)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (600, 300)
    default = plot_per_class_accuracy([0.1, 0.2, 0.3], train_class_counts=[0, 5, 9], path=tmp_path / "d.png")
    with Image.open(default) as image:
        assert image.size == (600, 400)
    with pytest.raises(ValueError, match="class_names has 2 entries"):
        plot_per_class_accuracy([0.1, 0.2, 0.3], train_class_counts=TRAIN_COUNTS, class_names=["a", "b"],
                                path=tmp_path / "x.png")
    with pytest.raises(ValueError, match="must end in .png"):
        plot_per_class_accuracy([0.1, 0.2, 0.3], train_class_counts=TRAIN_COUNTS, path=tmp_path / "x.jpg")
