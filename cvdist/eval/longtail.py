"""Long-tail classification metrics: top-1, balanced accuracy, per-class and many/medium/few-shot
accuracy, all from one C x C confusion matrix (rows = true class, columns = prediction).

The confusion matrix is the sufficient statistic: every metric here is a function of it, and
summing it over ranks gives exactly the matrix of the whole evaluation set. Distributed
evaluation therefore accumulates it per rank (:class:`ConfusionAccumulator`), sums it with a
callable the caller provides (this module never touches ``torch.distributed``), and computes
metrics once. All accuracies are fractions in [0, 1]; an undefined value (a class absent from
the test set, a shot group without classes) is NaN rather than an error.

Shot groups follow Liu et al. 2019, "Large-Scale Long-Tailed Recognition in an Open World"
(OLTR, CVPR): many-shot classes have more than 100 training images, few-shot fewer than 20,
medium-shot the rest (20-100 inclusive). A group's accuracy is the mean per-class accuracy of
its classes that occur in the test set, as in OLTR's ``shot_acc``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch

SHOT_REFERENCE_MAX = 500
"""Head-class size the standard shot thresholds are scaled against: CIFAR-100-LT's 500 images
(see :func:`scaled_shot_thresholds`)."""
SHOT_GROUPS = ("many", "medium", "few")


class ShotThresholds(NamedTuple):
    """Class c is many-shot if ``n_c > many``, few-shot if ``n_c < few``, else medium-shot."""
    many: float = 100.0
    few: float = 20.0


def _check_counts(train_class_counts: Sequence[int], *, num_classes: int | None = None) -> list[int]:
    counts = [float(n) for n in train_class_counts]
    if not all(math.isfinite(n) and n >= 0 and n == int(n) for n in counts):
        raise ValueError(f"train_class_counts must be integers >= 0, got {list(train_class_counts)!r}")
    if num_classes is not None and len(counts) != num_classes:
        raise ValueError(f"train_class_counts has {len(counts)} entries but there are {num_classes} classes")
    if not counts:
        raise ValueError("train_class_counts is empty; it needs the training images of every class")
    return [int(n) for n in counts]


def scaled_shot_thresholds(class_counts: Sequence[int], *, many: float = 100, few: float = 20,
                           reference_max: int | None = None) -> ShotThresholds:
    """Many/few-shot thresholds for a training set with per-class ``class_counts``.

    Rule: ``factor = min(1, max(class_counts) / reference_max)``; thresholds are ``many * factor``
    and ``few * factor`` (floats, not rounded). ``reference_max`` defaults to
    :data:`SHOT_REFERENCE_MAX` = 500, the head size of CIFAR-100-LT, the smallest head among the
    standard benchmarks that use 100 / 20 unchanged (CIFAR-100-LT 500, iNaturalist 2018 1000,
    ImageNet-LT 1280, Places-LT 4980). So benchmark-sized data sets keep the literature's
    thresholds and stay comparable with published numbers (the factor never exceeds 1), while
    a smaller set (a quick subset with a head of 50 images) keeps the same *relative* split as
    CIFAR-100-LT: many-shot above 20 % of the head size, few-shot below 4 %. Without scaling,
    such a set would have every class in the few-shot group.
    """
    counts = _check_counts(class_counts)
    reference = SHOT_REFERENCE_MAX if reference_max is None else reference_max
    if not (isinstance(reference, (int, float)) and reference > 0):
        raise ValueError(f"reference_max = {reference_max!r} must be a number > 0 (or None for {SHOT_REFERENCE_MAX})")
    if not (0 <= few <= many):
        raise ValueError(f"shot thresholds need 0 <= few <= many, got few = {few!r}, many = {many!r}")
    if max(counts) >= reference:
        return ShotThresholds(many=many, few=few)
    # multiply before dividing: 20 * 150 / 500 is exactly 6.0, 20 * (150 / 500) is 6.000000000000001,
    # which would move a 6-image class from medium- to few-shot
    return ShotThresholds(many=many * max(counts) / reference, few=few * max(counts) / reference)


def shot_groups(train_class_counts: Sequence[int], *, thresholds: ShotThresholds) -> dict[str, list[int]]:
    """Class indices of the ``many``, ``medium`` and ``few`` groups (a class without training
    images is few-shot)."""
    many, few = thresholds
    if not (0 <= few <= many):
        raise ValueError(f"thresholds need 0 <= few <= many, got {tuple(thresholds)!r}")
    counts = _check_counts(train_class_counts)
    return {"many": [c for c, n in enumerate(counts) if n > many],
            "medium": [c for c, n in enumerate(counts) if few <= n <= many],
            "few": [c for c, n in enumerate(counts) if n < few]}


def confusion_matrix(logits_or_preds: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
                     valid_mask: torch.Tensor | None = None) -> torch.Tensor:
    """C x C int64 counts, ``[true, predicted]``, on the inputs' device.

    ``logits_or_preds`` are logits [B, C] (argmax is taken) or predicted classes [B];
    ``valid_mask`` [B] (bool) drops padding, whose labels may be anything (e.g. -1)."""
    preds = logits_or_preds.argmax(dim=1) if logits_or_preds.ndim == 2 else logits_or_preds
    if logits_or_preds.ndim == 2 and logits_or_preds.shape[1] != num_classes:
        raise ValueError(f"logits have {logits_or_preds.shape[1]} classes, expected num_classes = {num_classes}")
    if preds.ndim != 1 or labels.shape != preds.shape or preds.dtype.is_floating_point:
        raise ValueError(f"expected logits [B, C] or integer predictions [B] and labels [B], got "
                         f"{tuple(logits_or_preds.shape)} and {tuple(labels.shape)}")
    valid = (torch.ones_like(labels, dtype=torch.bool) if valid_mask is None
             else valid_mask.to(labels.device, torch.bool))
    if valid.shape != labels.shape:
        raise ValueError(f"valid_mask must have shape {tuple(labels.shape)}, got {tuple(valid_mask.shape)}")
    labels = labels.long()
    preds = preds.to(labels.device).long()
    out_of_range = (labels < 0) | (labels >= num_classes) | (preds < 0) | (preds >= num_classes)
    if bool((out_of_range & valid).any()):
        raise ValueError(f"labels and predictions of valid samples must lie in [0, {num_classes - 1}]")
    # Padding is clamped into range and counted with weight 0: no boolean indexing, so no
    # data-dependent shapes in the accumulation itself.
    flat = labels.clamp(0, num_classes - 1) * num_classes + preds.clamp(0, num_classes - 1)
    counts = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=labels.device)
    counts.scatter_add_(0, flat, valid.long())
    return counts.view(num_classes, num_classes)


def metrics_from_confusion(confusion: torch.Tensor, *, train_class_counts: Sequence[int],
                           thresholds: ShotThresholds | Sequence[float] | None = None) -> dict:
    """``top1``, ``balanced_acc``, ``many``, ``medium``, ``few`` (floats), ``per_class`` (list of
    floats, NaN for classes absent from the test set) and ``confusion`` (nested list of ints).

    ``balanced_acc`` is the mean per-class recall over the classes present in the test set.
    ``thresholds`` default to :func:`scaled_shot_thresholds` of ``train_class_counts``."""
    num_classes = confusion.shape[0]
    if confusion.shape != (num_classes, num_classes):
        raise ValueError(f"confusion must be a square C x C matrix, got {tuple(confusion.shape)}")
    counts = _check_counts(train_class_counts, num_classes=num_classes)
    thresholds = scaled_shot_thresholds(counts) if thresholds is None else ShotThresholds(*thresholds)
    matrix = confusion.detach().to("cpu", torch.float64)
    support = matrix.sum(dim=1)
    correct = matrix.diagonal()
    present = support > 0
    per_class = torch.where(present, correct / support.clamp_min(1), torch.tensor(math.nan, dtype=torch.float64))

    def mean_over(classes: list[int]) -> float:
        chosen = [c for c in classes if present[c]]
        return float(per_class[chosen].mean()) if chosen else math.nan

    total = float(support.sum())
    result = {"top1": float(correct.sum()) / total if total > 0 else math.nan,
              "balanced_acc": mean_over(list(range(num_classes)))}
    for group, classes in shot_groups(counts, thresholds=thresholds).items():
        result[group] = mean_over(classes)
    result["per_class"] = per_class.tolist()
    result["confusion"] = confusion.detach().to("cpu", torch.int64).tolist()
    return result


def longtail_metrics(logits_or_preds: torch.Tensor, labels: torch.Tensor, *, train_class_counts: Sequence[int],
                     thresholds: ShotThresholds | Sequence[float] | None = None,
                     valid_mask: torch.Tensor | None = None) -> dict:
    """:func:`metrics_from_confusion` of one process's predictions (no reduction across ranks)."""
    confusion = confusion_matrix(logits_or_preds, labels, num_classes=len(train_class_counts), valid_mask=valid_mask)
    return metrics_from_confusion(confusion, train_class_counts=train_class_counts, thresholds=thresholds)


class ConfusionAccumulator:
    """Accumulates a confusion matrix over evaluation batches, then sums it over ranks.

    ``update`` per batch on every rank; ``reduce(all_reduce_sum)`` once, on every rank, with a
    callable that returns the element-wise sum of its tensor over all ranks, e.g.
    ``lambda t: accelerator.reduce(t, reduction="sum")`` or a function that runs
    ``torch.distributed.all_reduce(t)`` and returns ``t``; then ``metrics(...)``. The matrix
    stays int64 (exact counts; float32 would round above 2^24 samples) on ``device`` or, when
    none is given, on the device of the first batch. Pass ``device`` when a rank may see no
    batch, so that every rank's matrix is on the device its collective backend needs.
    """

    def __init__(self, num_classes: int, *, device: torch.device | str | None = None) -> None:
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"num_classes = {num_classes!r} must be an int >= 1")
        self.num_classes = num_classes
        self._device = None if device is None else torch.device(device)
        self.reset()

    def reset(self) -> None:
        """Start over with an all-zero matrix."""
        self.confusion = torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64,
                                     device=self._device or "cpu")
        self.reduced = False

    def update(self, logits_or_preds: torch.Tensor, labels: torch.Tensor,
               valid_mask: torch.Tensor | None = None) -> None:
        """Add a batch: logits [B, C] or predictions [B], labels [B], optional bool ``valid_mask`` [B]."""
        if self.reduced:
            raise RuntimeError("update() after reduce() would mix global and local counts; call reset() first")
        batch = confusion_matrix(logits_or_preds, labels, num_classes=self.num_classes, valid_mask=valid_mask)
        if self._device is None and self.confusion.device != batch.device:
            self.confusion = self.confusion.to(batch.device)
        self.confusion += batch.to(self.confusion.device)

    def reduce(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> "ConfusionAccumulator":
        """Sum the matrix over ranks with ``all_reduce_sum`` (``None``: a single process, no-op).
        Call it once, on every rank; returns ``self``."""
        if self.reduced:
            raise RuntimeError("reduce() was already called; a second sum over ranks would count samples twice")
        if all_reduce_sum is not None:
            # a copy, so an in-place collective that fails leaves this rank's counts intact
            summed = all_reduce_sum(self.confusion.clone())
            if not isinstance(summed, torch.Tensor) or summed.shape != self.confusion.shape:
                raise TypeError(f"all_reduce_sum must return the summed {tuple(self.confusion.shape)} tensor, "
                                f"got {type(summed).__name__}")
            self.confusion = summed.to(torch.int64)
        self.reduced = True
        return self

    def metrics(self, *, train_class_counts: Sequence[int],
                thresholds: ShotThresholds | Sequence[float] | None = None) -> dict:
        """:func:`metrics_from_confusion` of the accumulated (reduced) matrix."""
        return metrics_from_confusion(self.confusion, train_class_counts=train_class_counts, thresholds=thresholds)


def plot_per_class_accuracy(per_class: Sequence[float], *, train_class_counts: Sequence[int],
                            class_names: Sequence[str] | None = None, path: str | Path,
                            thresholds: ShotThresholds | Sequence[float] | None = None,
                            figsize: tuple[float, float] | None = None, dpi: int = 100) -> Path:
    """Write a PNG bar chart of per-class accuracy, classes sorted by training frequency (head on
    the left), bars coloured by shot group, training counts as a line on a second axis.

    The image is exactly ``figsize * dpi`` pixels (default width grows with the number of
    classes: ``clip(0.3 * C + 2, 6, 30)`` x 4 inches). Classes absent from the test set (NaN)
    get no bar. Returns the path written."""
    from matplotlib.patches import Patch  # imported on use: metric code must import fast on every rank

    from cvdist.plotting import new_figure

    num_classes = len(per_class)
    counts = _check_counts(train_class_counts, num_classes=num_classes)
    names = [str(c) for c in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} entries but per_class has {num_classes}")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path = {str(path)!r} must end in .png")
    thresholds = scaled_shot_thresholds(counts) if thresholds is None else ShotThresholds(*thresholds)
    group_of = {c: g for g, classes in shot_groups(counts, thresholds=thresholds).items() for c in classes}
    colours = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
    order = sorted(range(num_classes), key=lambda c: (-counts[c], c))
    x = list(range(num_classes))

    width, height = figsize or (min(max(0.3 * num_classes + 2, 6.0), 30.0), 4.0)
    fig = new_figure(width=width, height=height, dpi=dpi, layout=None)
    ax = fig.add_subplot()
    heights = [0.0 if math.isnan(per_class[c]) else float(per_class[c]) for c in order]
    ax.bar(x, heights, color=[colours[group_of[c]] for c in order])
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.set_xlabel("class (sorted by training images)")
    ax.set_xticks(x, [names[c] for c in order] if num_classes <= 60 else [""] * num_classes,
                  rotation=90, fontsize=7)
    ax.legend(handles=[Patch(color=colour, label=f"{group}-shot") for group, colour in colours.items()],
              loc="upper right", fontsize=7)
    counts_axis = ax.twinx()
    counts_axis.plot(x, [counts[c] for c in order], color="black", marker=".", linewidth=1)
    if min(counts) > 0:
        counts_axis.set_yscale("log")
    counts_axis.set_ylabel("training images")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
