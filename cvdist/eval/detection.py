"""COCO box AP (and mask AP) of a detector over evaluation data sharded across ranks (pycocotools
computes it).

Each rank collects, for its valid evaluation images, the ground truth and the predictions; they
are gathered to every rank as tensors (no pickling), checked for an image seen twice, ordered by
sample key (so the result does not depend on how images were dealt to ranks: 2 ranks give
exactly the 1-rank value) and handed to pycocotools' ``COCOeval`` with ``iouType="bbox"``.

Boxes are pixel xyxy with exclusive ends (COCO's ``[x, y, w, h]`` is ``[x0, y0, x1 - x0,
y1 - y0]``); a ground-truth area is its box area. Metrics: ``AP`` (IoU 0.50:0.95), ``AP50``,
``AP75``, ``APs`` / ``APm`` / ``APl`` (areas below 32^2, up to 96^2, above; -1 where a range has
no ground truth, COCO's convention), per-category ``AP/<name>`` and, given the training
instance counts, LVIS-style ``APr`` / ``APc`` / ``APf``: the mean AP of the categories with at most
``rare_max``, at most ``common_max``, and more training instances (-1 for an empty bucket).

Mask AP (``with_masks=True``, Mask R-CNN): targets carry ``masks`` ``[N, H, W]`` and predictions
``masks`` ``[N, 1, H, W]`` probabilities, thresholded at 0.5. Each rank encodes every mask to
COCO RLE as the batch arrives (so no full-size mask is kept or gathered; an RLE of a 96 px mask
is tens of bytes), the RLE strings are gathered as bytes with the rows, and ``COCOeval`` runs
again with ``iouType="segm"`` (ground-truth area = mask area there, as in COCO):
``mask_AP`` (IoU 0.50:0.95), ``mask_AP50``, ``mask_AP75``.
"""

from __future__ import annotations

import contextlib
import io
from typing import Optional, Sequence

import numpy as np
import torch

from cvdist import comm

_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_MASK_STAT_NAMES = ("mask_AP", "mask_AP50", "mask_AP75")
_GT, _PRED = 0.0, 1.0
MASK_THRESHOLD = 0.5
"""Predicted mask probabilities above this are the object (Mask R-CNN's convention)."""


def encode_masks(masks: torch.Tensor) -> list[bytes]:
    """``[N, H, W]`` binary masks -> one ``b"H W <COCO RLE counts>"`` per mask (pycocotools' RLE;
    its counts use the characters 48..111, so spaces and newlines can delimit them)."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    array = np.asfortranarray(masks.to(torch.uint8).permute(1, 2, 0).numpy())
    return [f"{rle['size'][0]} {rle['size'][1]} ".encode() + rle["counts"] for rle in mask_utils.encode(array)]


def _rle(encoded: bytes) -> dict:
    height, width, counts = encoded.split(b" ", 2)
    return {"size": [int(height), int(width)], "counts": counts}


def _gather_lines(lines: list[bytes], device: torch.device) -> list[list[bytes]]:
    """Every rank's ``lines`` (newline-free byte strings), in rank order, as one uint8 tensor per rank."""
    blob = torch.frombuffer(bytearray(b"".join(line + b"\n" for line in lines) or b"\n"), dtype=torch.uint8)
    parts = comm.all_gather_rows(blob[:-1] if not lines else blob, device)  # b"" for none: an empty tensor
    return [part.numpy().tobytes().split(b"\n")[:-1] for part in parts]


class DetectionAccumulator:
    """Collects one rank's ground truth and predictions; :meth:`compute` gathers and scores them."""

    def __init__(self, *, category_names: Sequence[str], with_masks: bool = False):
        self.category_names, self.with_masks = list(category_names), with_masks
        self.keys: list[str] = []
        self.rows: list[list[float]] = []  # [image, kind, x0, y0, x1, y1, category, score or iscrowd]
        self.masks: list[bytes] = []  # with_masks: the RLE of each row's mask (see encode_masks)

    def add(self, *, keys: Sequence[str], targets: Sequence[dict], predictions: Sequence[dict],
            valid: Optional[Sequence[bool]] = None) -> None:
        """One batch: per image its key, target (``boxes``, ``labels``, optional ``iscrowd``) and
        prediction (``boxes``, ``scores``, ``labels``, and with masks ``masks`` on both); images
        with ``valid`` false are padding."""
        for index, (key, target, prediction) in enumerate(zip(keys, targets, predictions, strict=True)):
            if valid is not None and not bool(valid[index]):
                continue
            image = float(len(self.keys))
            self.keys.append(key)
            iscrowd = target.get("iscrowd", torch.zeros(len(target["labels"])))
            for box, label, crowd in zip(target["boxes"].tolist(), target["labels"].tolist(), iscrowd.tolist()):
                self.rows.append([image, _GT, *box, label, crowd])
            for box, label, score in zip(prediction["boxes"].tolist(), prediction["labels"].tolist(),
                                         prediction["scores"].tolist()):
                self.rows.append([image, _PRED, *box, label, score])
            if self.with_masks:  # encoded now: a batch's float masks are freed with the batch
                self.masks += encode_masks(target["masks"].bool())
                self.masks += encode_masks(prediction["masks"][:, 0] > MASK_THRESHOLD)

    def compute(self, *, device: torch.device, train_instance_counts: Optional[Sequence[int]] = None,
                rare_max: int = 10, common_max: int = 100) -> dict[str, float]:
        """The metrics of the module doc over every rank's images (call on every rank)."""
        keys, rows = self._gathered(device)
        metrics = coco_box_metrics(keys=keys, rows=rows, category_names=self.category_names,
                                   train_instance_counts=train_instance_counts, rare_max=rare_max,
                                   common_max=common_max)
        if self.with_masks:
            masks = [line for part in _gather_lines(self.masks, device) for line in part]
            metrics.update(coco_mask_metrics(keys=keys, rows=rows, masks=masks,
                                             num_categories=len(self.category_names)))
        return metrics

    def _gathered(self, device: torch.device) -> tuple[list[str], np.ndarray]:
        key_parts = _gather_lines([key.encode() for key in self.keys], device)
        row_parts = comm.all_gather_rows(torch.tensor(self.rows, dtype=torch.float64).reshape(-1, 8), device)
        keys, rows = [], []
        for key_part, row_part in zip(key_parts, row_parts):
            rank_keys = [key.decode() for key in key_part]
            row_part = row_part.clone()
            row_part[:, 0] += len(keys)  # image indices become global
            keys.extend(rank_keys)
            rows.append(row_part.numpy())
        duplicates = sorted({k for k in keys if keys.count(k) > 1}) if len(set(keys)) != len(keys) else []
        if duplicates:
            raise ValueError(f"evaluation images counted twice: {duplicates[:5]}; the evaluation shards hold a key "
                             "twice, or the reader dealt an image to two ranks")
        return keys, np.concatenate(rows) if rows else np.zeros((0, 8))


def _coco_inputs(keys: list[str], rows: np.ndarray, num_categories: int,
                 masks: Optional[list[bytes]] = None) -> tuple[dict, list[dict]]:
    """COCO ground truth and results; with ``masks`` (one RLE per row) each gets its
    ``segmentation`` and a ground truth its mask area (COCO's area for ``segm``)."""
    from pycocotools import mask as mask_utils

    order = {index: rank for rank, index in enumerate(sorted(range(len(keys)), key=keys.__getitem__))}
    images = [{"id": i + 1} for i in range(len(keys))]
    annotations, results = [], []
    for index, (image, kind, x0, y0, x1, y1, category, extra) in enumerate(rows.tolist()):
        entry = {"image_id": order[int(image)] + 1, "category_id": int(category) + 1,
                 "bbox": [x0, y0, x1 - x0, y1 - y0]}
        area = (x1 - x0) * (y1 - y0)
        if masks is not None:
            entry["segmentation"] = _rle(masks[index])
            area = float(mask_utils.area(entry["segmentation"]))
            height, width = entry["segmentation"]["size"]  # COCO's segm evaluation reads the image's size
            images[entry["image_id"] - 1].update(height=height, width=width)
        if kind == _GT:
            annotations.append({**entry, "id": len(annotations) + 1, "area": area, "iscrowd": int(extra)})
        else:
            results.append({**entry, "score": extra})
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_categories)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def coco_box_metrics(*, keys: list[str], rows: np.ndarray, category_names: Sequence[str],
                     train_instance_counts: Optional[Sequence[int]] = None, rare_max: int = 10,
                     common_max: int = 100) -> dict[str, float]:
    """pycocotools' bbox evaluation of the gathered ``rows`` (see :class:`DetectionAccumulator`)."""
    evaluation = _evaluate(*_coco_inputs(keys, rows, len(category_names)), iou_type="bbox")
    metrics = {name: float(value) for name, value in zip(_STAT_NAMES, evaluation.stats)}
    per_category = _per_category_ap(evaluation.eval["precision"])
    metrics.update({f"AP/{name}": float(ap) for name, ap in zip(category_names, per_category)})
    if train_instance_counts is not None:
        counts = np.asarray(train_instance_counts)
        for bucket, chosen in (("APr", counts <= rare_max), ("APc", (counts > rare_max) & (counts <= common_max)),
                               ("APf", counts > common_max)):
            defined = chosen & (per_category >= 0)
            metrics[bucket] = float(per_category[defined].mean()) if defined.any() else -1.0
    return metrics


def coco_mask_metrics(*, keys: list[str], rows: np.ndarray, masks: list[bytes],
                      num_categories: int) -> dict[str, float]:
    """pycocotools' segm evaluation (``mask_AP``, ``mask_AP50``, ``mask_AP75``) of the gathered
    ``rows`` and their RLE ``masks`` (one per row, see :func:`encode_masks`)."""
    if len(masks) != len(rows):
        raise ValueError(f"{len(masks)} masks for {len(rows)} boxes: every target and prediction needs its mask")
    evaluation = _evaluate(*_coco_inputs(keys, rows, num_categories, masks), iou_type="segm")
    return {name: float(value) for name, value in zip(_MASK_STAT_NAMES, evaluation.stats)}


def _evaluate(dataset: dict, results: list[dict], *, iou_type: str):
    """A summarised ``COCOeval`` of ``results`` against ``dataset``."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ground_truth = _coco(dataset)
        # loadRes refuses an empty list: no prediction at all is an empty result set
        detections = ground_truth.loadRes(results) if results else _coco({**dataset, "annotations": []})
        evaluation = COCOeval(ground_truth, detections, iouType=iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def _coco(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _per_category_ap(precision: np.ndarray) -> np.ndarray:
    """AP per category from COCOeval's ``precision[T, R, K, area, maxDets]`` (all areas, 100
    detections), -1 for a category without ground truth."""
    values = precision[:, :, :, 0, -1]
    out = np.full(values.shape[2], -1.0)
    for k in range(values.shape[2]):
        defined = values[:, :, k][values[:, :, k] > -1]
        if defined.size:
            out[k] = defined.mean()
    return out
