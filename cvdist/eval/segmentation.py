"""Semantic segmentation metrics over evaluation data sharded across ranks: mIoU, pixel accuracy
and per-class IoU from one confusion matrix.

Each rank adds its valid images' pixels to a ``[C, C]`` count matrix (rows: true class, columns:
predicted class; pixels labelled ``ignore_index`` are left out); the matrices are summed over
ranks, so every pixel counts once whatever the split. IoU of class c is
``TP / (TP + FP + FN)``; mIoU averages the classes that occur in the ground truth or the
predictions (a class absent from both has no IoU: -1 in ``IoU/<name>``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from cvdist import comm


class SegmentationAccumulator:
    """The confusion matrix of one rank; :meth:`compute` sums it over ranks and scores it."""

    def __init__(self, *, class_names: Sequence[str], ignore_index: int = 255):
        self.class_names, self.ignore_index = list(class_names), ignore_index
        self.confusion = torch.zeros(len(self.class_names), len(self.class_names), dtype=torch.int64)

    def add(self, *, predictions: torch.Tensor, targets: torch.Tensor,
            valid: Optional[torch.Tensor] = None) -> None:
        """``predictions`` and ``targets``: class indices ``[B, H, W]``; images with ``valid``
        false (padding) are skipped."""
        if predictions.shape != targets.shape:
            raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ")
        if valid is not None:
            predictions, targets = predictions[valid.bool()], targets[valid.bool()]
        kept = targets != self.ignore_index
        truth, predicted = targets[kept].long().cpu(), predictions[kept].long().cpu()
        num_classes = len(self.class_names)
        if truth.numel() and (truth.min() < 0 or truth.max() >= num_classes):
            raise ValueError(f"target classes outside 0..{num_classes - 1} (and not ignore_index {self.ignore_index})")
        self.confusion += torch.bincount(truth * num_classes + predicted.clamp(0, num_classes - 1),
                                         minlength=num_classes * num_classes).reshape(num_classes, num_classes)

    def compute(self, *, device: torch.device) -> dict[str, float]:
        """``mIoU``, ``pixel_accuracy`` and ``IoU/<class name>`` over every rank (call on every rank)."""
        rows = comm.all_gather_rows(self.confusion[None], device)
        confusion = torch.cat(rows).sum(0).double()
        true_positive = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - true_positive
        present = union > 0
        iou = torch.where(present, true_positive / union.clamp(min=1), torch.full_like(union, -1.0))
        metrics = {"mIoU": float(iou[present].mean()) if present.any() else 0.0,
                   "pixel_accuracy": float(true_positive.sum() / confusion.sum().clamp(min=1))}
        metrics.update({f"IoU/{name}": float(value) for name, value in zip(self.class_names, iou)})
        return metrics
