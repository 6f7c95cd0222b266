"""Long-tail evaluation over rank-sharded data, and tau-normalisation of the classifier.

:class:`LongtailEvaluator` is the recipe's ``evaluate``: top-1, balanced accuracy and many /
medium / few-shot accuracy (``cvdist.eval.longtail``) of the model, and alongside, when asked,
of post-hoc logit adjustment (``*_posthoc``) and of the weights' EMA (``*_ema``). Metrics rows
hold scalars only, so per-class accuracy and the confusion matrix of every evaluation go to
``longtail_eval.jsonl`` in the run directory (one row per evaluation, cut back on resume like
``metrics.jsonl``). A multi-task model's auxiliary heads are scored too: ``<label>_top1``.

Tau-normalisation (Kang et al. 2020, "Decoupling Representation and Classifier for Long-Tailed
Recognition", ICLR) rescales each class's weight vector to ``w_c / ||w_c||^tau``; the bias is
left as trained, so tau = 0 is exactly the trained model. tau is chosen by balanced accuracy on
a held-out split (features are computed once, every tau is a matrix product).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn import functional as F

from cvdist import comm
from cvdist.eval.longtail import ShotThresholds, confusion_matrix, metrics_from_confusion
from cvdist.losses.longtail import posthoc_logit_adjustment

LONGTAIL_EVAL_FILE = "longtail_eval.jsonl"
SCALAR_METRICS = ("top1", "balanced_acc", "many", "medium", "few")


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (no-op in one process); returns it."""
    if comm.is_distributed():
        torch_dist.all_reduce(tensor)
    return tensor


def fp32_mover(device: torch.device) -> Callable[[Any], Any]:
    """A ``to_device`` for a plain fp32 model: moves tensors and makes floating ones float32 (the
    engine's own ``to_device`` casts images to bf16 / fp16 under DeepSpeed half precision)."""
    def move(batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            batch = batch.to(device)
            return batch.float() if batch.is_floating_point() else batch
        if isinstance(batch, (list, tuple)):
            return type(batch)(move(item) for item in batch)
        if isinstance(batch, dict):
            return {key: move(value) for key, value in batch.items()}
        return batch
    return move


Variant = tuple[str, nn.Module, bool]
"""``(suffix, model, post-hoc adjusted)``: one set of predictions to score."""


def _input_dtype(model: nn.Module, images: torch.Tensor) -> torch.dtype:
    # the fp32 EMA copy evaluated beside a DeepSpeed model that trains (and is fed) bf16 / fp16
    parameter = next(model.parameters(), None)
    return parameter.dtype if parameter is not None and images.is_floating_point() else images.dtype


def evaluate_variants(variants: Sequence[Variant], batches: Iterable[dict], *, class_counts: Sequence[int],
                      thresholds: ShotThresholds, posthoc_tau: float, to_device: Callable[[Any], Any],
                      device: torch.device, aux_keys: Sequence[str] = ()) -> dict[str, dict]:
    """One pass over this rank's ``batches``; per variant suffix, the metrics of
    :func:`cvdist.eval.longtail.metrics_from_confusion` over all ranks plus ``loss`` (mean CE).
    With ``aux_keys``, the first variant's model is a multi-task model: its auxiliary heads'
    top-1 against ``batch[key]`` goes into that variant's metrics as ``<key>_top1``."""
    num_classes = len(class_counts)
    confusions = torch.zeros(len(variants), num_classes, num_classes, dtype=torch.int64, device=device)
    losses = torch.zeros(len(variants) + 1, dtype=torch.float64, device=device)  # last entry: sample count
    aux_correct = torch.zeros(len(aux_keys), dtype=torch.float64, device=device)
    for batch in batches:
        images, labels, valid = to_device((batch["image"], batch["label"], batch["valid"]))
        outputs: dict[int, torch.Tensor] = {}
        for index, (_, model, adjusted) in enumerate(variants):
            if id(model) not in outputs:
                inputs = images.to(_input_dtype(model, images))
                if index == 0 and aux_keys:
                    logits, aux_logits = model(inputs, with_aux=True)
                    for k, key in enumerate(aux_keys):
                        hits = aux_logits[key].argmax(1) == to_device(batch[key])
                        aux_correct[k] += (hits & valid).sum().double()
                else:
                    logits = model(inputs)
                outputs[id(model)] = logits.float()
            logits = outputs[id(model)]
            if adjusted:
                logits = posthoc_logit_adjustment(logits, class_counts=class_counts, tau=posthoc_tau)
            confusions[index] += confusion_matrix(logits, labels, num_classes=num_classes, valid_mask=valid)
            per_sample = F.cross_entropy(logits, labels.clamp(0, num_classes - 1), reduction="none")
            losses[index] += per_sample[valid].sum().double()
        losses[-1] += valid.sum()
    all_reduce_sum_(confusions)
    all_reduce_sum_(losses)
    if aux_keys:
        all_reduce_sum_(aux_correct)
    results = {}
    for index, (suffix, _, _) in enumerate(variants):
        metrics = metrics_from_confusion(confusions[index], train_class_counts=class_counts, thresholds=thresholds)
        metrics["loss"] = float(losses[index] / losses[-1].clamp_min(1))
        if index == 0:
            metrics["aux_top1"] = {key: float(aux_correct[k] / losses[-1].clamp_min(1))
                                   for k, key in enumerate(aux_keys)}
        results[suffix] = metrics
    return results


def scalar_metrics(results: dict[str, dict]) -> dict[str, float]:
    """``{"top1": .., "balanced_acc_posthoc": .., "coarse_top1": .., ...}``: the scalars of every
    variant and of the auxiliary heads."""
    row = {}
    for suffix, metrics in results.items():
        for name in (*SCALAR_METRICS, "loss"):
            row[name + suffix] = metrics[name]
        row.update({f"{key}_top1{suffix}": value for key, value in metrics.get("aux_top1", {}).items()})
    return row


class LongtailEvaluator:
    """The task's ``evaluate(model, progress) -> scalars`` (``progress``: the engine's ``Progress``;
    only its ``step`` is read); also writes the list-valued metrics (rank 0)."""

    def __init__(self, *, eval_batches: Callable[[], Iterator[dict]], class_counts: Sequence[int],
                 thresholds: ShotThresholds, posthoc_tau: float, to_device: Callable[[Any], Any], device: torch.device,
                 run_dir: Path, is_main: bool, resumed_step: Optional[int],
                 ema: Any = None, aux_keys: Sequence[str] = ()):
        self.eval_batches, self.class_counts, self.thresholds = eval_batches, list(class_counts), thresholds
        self.posthoc_tau, self.to_device, self.device = posthoc_tau, to_device, device
        self.path, self.is_main = Path(run_dir) / LONGTAIL_EVAL_FILE, is_main
        self.resumed_step, self.ema, self.aux_keys = resumed_step, ema, tuple(aux_keys)
        self.started = False
        self.last: dict[str, dict] = {}
        empty = [c for c, n in enumerate(self.class_counts) if n == 0]
        if posthoc_tau > 0 and empty:
            raise ValueError(f"longtail.posthoc_tau={posthoc_tau} needs training samples of every class, but class "
                             f"{empty[0]} has none (its adjustment would be +inf); set longtail.posthoc_tau=0")

    def variants(self, model: nn.Module) -> list[Variant]:
        chosen: list[Variant] = [("", model, False)]
        if self.posthoc_tau > 0:
            chosen.append(("_posthoc", model, True))
        if self.ema is not None and self.ema.module is not None:
            chosen.append(("_ema", self.ema.module, False))
        return chosen

    def __call__(self, model: nn.Module, progress: Any) -> dict[str, float]:
        if self.ema is not None:
            self.ema.catch_up(model, progress.step)  # fold in the step just taken
        self.last = evaluate_variants(self.variants(model), self.eval_batches(), class_counts=self.class_counts,
                                      thresholds=self.thresholds, posthoc_tau=self.posthoc_tau,
                                      to_device=self.to_device, device=self.device, aux_keys=self.aux_keys)
        self._write(self.last, step=progress.step)
        return scalar_metrics(self.last)

    def _write(self, results: dict[str, dict], *, step: int) -> None:
        if not self.is_main:
            return
        if not self.started:
            # a resumed run keeps the rows up to its checkpoint, as metrics.jsonl does
            kept = [row for row in read_longtail_eval(self.path.parent)
                    if self.resumed_step is not None and row["step"] <= self.resumed_step]
            self.path.write_text("".join(json.dumps(row) + "\n" for row in kept))
            self.started = True
        row = {"step": step, "thresholds": list(self.thresholds)}
        for suffix, metrics in results.items():
            row["per_class" + suffix] = metrics["per_class"]
            row["confusion" + suffix] = metrics["confusion"]
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")


def read_longtail_eval(run_dir: str | Path) -> list[dict]:
    """The rows of a run's ``longtail_eval.jsonl`` (a line cut off by a crash is ignored)."""
    path = Path(run_dir) / LONGTAIL_EVAL_FILE
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def tau_normalised(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """``w_c / ||w_c||^tau`` for each row (class) of ``weight``."""
    norms = weight.norm(dim=1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)
    return weight / norms.pow(tau)


def _head_inputs(model: nn.Module, head: nn.Module, batches: Iterable[dict], *,
                 to_device: Callable[[Any], Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach().float()))
    labels, valid = [], []
    try:
        for batch in batches:
            images, batch_labels, batch_valid = to_device((batch["image"], batch["label"], batch["valid"]))
            model(images)
            labels.append(batch_labels)
            valid.append(batch_valid)
    finally:
        handle.remove()
    if not captured:
        raise ValueError("the held-out split gave this rank no batch; every rank needs at least one")
    return torch.cat(captured), torch.cat(labels), torch.cat(valid)


def search_tau(model: nn.Module, *, head_name: str, batches: Iterable[dict], taus: Sequence[float],
               class_counts: Sequence[int], to_device: Callable[[Any], Any], device: torch.device) -> tuple[float, dict]:
    """The tau of ``taus`` with the best balanced accuracy of ``model`` on ``batches`` (all ranks;
    ties go to the smaller tau), and ``{tau: balanced accuracy}``. ``model`` is in eval mode."""
    head = model.get_submodule(head_name)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"tau-normalisation needs a linear head; '{head_name}' is a {type(head).__name__}")
    num_classes = len(class_counts)
    with torch.no_grad():
        features, labels, valid = _head_inputs(model, head, batches, to_device=to_device)
        weight, bias = head.weight.float(), None if head.bias is None else head.bias.float()
        confusions = torch.stack([
            confusion_matrix(F.linear(features, tau_normalised(weight, tau), bias), labels,
                             num_classes=num_classes, valid_mask=valid) for tau in taus]).to(device)
    all_reduce_sum_(confusions)
    scores = {float(tau): metrics_from_confusion(confusion, train_class_counts=class_counts)["balanced_acc"]
              for tau, confusion in zip(taus, confusions)}
    best = None
    for tau in sorted(scores):
        if not math.isnan(scores[tau]) and (best is None or scores[tau] > scores[best]):
            best = tau
    if best is None:
        raise ValueError("the held-out split has no samples; tau cannot be chosen")
    return best, scores


def apply_tau_norm(model: nn.Module, *, head_name: str, tau: float) -> None:
    """Replace the head's weight by its tau-normalised version, in place."""
    head = model.get_submodule(head_name)
    with torch.no_grad():
        head.weight.copy_(tau_normalised(head.weight.float(), tau).to(head.weight.dtype))


def tau_norm_and_evaluate(model: nn.Module, *, head_name: str, holdout_batches: Iterable[dict],
                          eval_batches: Iterable[dict], taus: Sequence[float], class_counts: Sequence[int],
                          thresholds: ShotThresholds, to_device: Callable[[Any], Any],
                          device: torch.device) -> tuple[float, dict, dict]:
    """Choose tau on ``holdout_batches``, tau-normalise ``model``'s head in place and evaluate it on
    ``eval_batches``: ``(tau, {tau: held-out balanced accuracy}, metrics)`` (metrics as
    :func:`evaluate_variants` gives them for one model)."""
    model.eval()
    tau, scores = search_tau(model, head_name=head_name, batches=holdout_batches, taus=taus,
                             class_counts=class_counts, to_device=to_device, device=device)
    apply_tau_norm(model, head_name=head_name, tau=tau)
    with torch.no_grad():
        results = evaluate_variants([("", model, False)], eval_batches, class_counts=class_counts,
                                    thresholds=thresholds, posthoc_tau=0.0, to_device=to_device, device=device)
    return tau, scores, results[""]
