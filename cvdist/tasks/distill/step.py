"""Distillation parts the recipe wires together: the frozen teacher, the student with its hint
adapter, the ``compute_loss`` step, the data, and the teacher / student report at the end.

The teacher is replicated, not sharded: every process holds a full fp32 copy in eval mode with
``requires_grad`` off, outside the model the engine wraps (``TrainTask.model`` is the
:class:`DistillStudent` only), so DDP never synchronises it and ZeRO never partitions it or
gives it optimiser state. That costs one teacher's weights of memory per process and keeps the
teacher's forward pass local; for teachers too large to replicate, DeepSpeed's inference engine
(tensor-parallel) would be the next step.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from cvdist.compress.report import (ReportConfig, is_long_tailed, measure_row, report_table, table_columns, table_rows,
                                    write_report)
from cvdist.data.longtail_data import LongtailData
from cvdist.engine import Progress
from cvdist.engine.model_sources import ModelSpec, load_trained_model
from cvdist.eval.longtail import ShotThresholds
from cvdist.eval.longtail_evaluator import evaluate_variants, fp32_mover
from cvdist.losses.distill import DistillationLoss, HintAdapter
from cvdist.losses.longtail import LongTailLoss
from cvdist.models import build_model
from cvdist.tasks.common import first_images
from cvdist.tasks.distill.config import DistillRunConfig, check_hint_layer


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients for every parameter of ``module``; returns it."""
    module.eval()
    module.requires_grad_(False)
    return module


def load_teacher(config: DistillRunConfig, device: torch.device) -> nn.Module:
    """The frozen teacher of ``teacher.path`` on ``device`` (fp32); a weights file's missing
    architecture fields default to the student's classes and channels."""
    teacher, student = config.teacher, config.model
    given = ModelSpec(name=teacher.name, num_classes=teacher.num_classes, in_channels=teacher.in_channels,
                      small_stem=teacher.small_stem)
    if not Path(teacher.path).is_dir():
        given.num_classes = given.num_classes or student.num_classes
        given.in_channels = given.in_channels or student.in_channels
    model, spec = load_trained_model(teacher.path, given=given, field_prefix="teacher")
    if spec.num_classes != student.num_classes:
        raise ValueError(f"the teacher predicts {spec.num_classes} classes but model.num_classes="
                         f"{student.num_classes}; logit distillation needs the same classes")
    return freeze(model.float().to(device))


def state_fingerprint(module: nn.Module) -> str:
    """SHA-256 of every tensor of ``module.state_dict()`` (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class HintCapture:
    """Keeps the output of one submodule from the latest forward pass (a forward hook)."""

    def __init__(self, module: nn.Module):
        self.value: Optional[torch.Tensor] = None
        self.handle = module.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self.value = output


class DistillStudent(nn.Module):
    """The model the engine trains: the student classifier (``student.*`` in checkpoints) and,
    with feature KD, the hint adapter (``adapter.*``), so the adapter is optimised, sharded and
    saved with the student. ``forward(x)`` gives the logits; ``forward(x, with_hint=True)`` also
    the adapted hint."""

    def __init__(self, student: nn.Module, *, hint_layer: str = "", adapter: Optional[nn.Module] = None):
        super().__init__()
        self.student, self.adapter = student, adapter
        self.capture = HintCapture(student.get_submodule(hint_layer)) if adapter is not None else None

    def forward(self, images: torch.Tensor, with_hint: bool = False):
        logits = self.student(images)
        if not with_hint:
            return logits
        return logits, self.adapter(self.capture.value)


def build_student(config: DistillRunConfig, teacher: nn.Module, *,
                  probe: torch.Tensor) -> tuple[DistillStudent, Optional[HintCapture]]:
    """The student (with an adapter sized by running ``probe`` images through both models when
    feature KD is on) and the capture of the teacher's hint (None without feature KD)."""
    student = build_model(name=config.model.name, num_classes=config.model.num_classes,
                          in_channels=config.model.in_channels, small_stem=config.model.small_stem)
    kd = config.kd
    if kd.feature_weight == 0:
        return DistillStudent(student), None
    teacher_capture = HintCapture(check_hint_layer(teacher, kd.teacher_hint, key="kd.teacher_hint"))
    student_capture = HintCapture(check_hint_layer(student, kd.student_hint, key="kd.student_hint"))
    student.eval()
    with torch.no_grad():
        teacher(probe.to(next(teacher.parameters()).device))
        student(probe)
    student.train()
    student_capture.handle.remove()
    adapter = HintAdapter(student_shape=tuple(student_capture.value.shape),
                          teacher_shape=tuple(teacher_capture.value.shape))
    return DistillStudent(student, hint_layer=kd.student_hint, adapter=adapter), teacher_capture


class DistillStep:
    """The task's ``compute_loss``: the frozen teacher's logits (and hint) under ``no_grad``,
    the student's, and :class:`cvdist.losses.distill.DistillationLoss`; logs each part
    unweighted (``train/loss_kd``, ``train/loss_label``, ``train/loss_feature``)."""

    def __init__(self, *, teacher: nn.Module, loss: DistillationLoss, teacher_hint: Optional[HintCapture] = None):
        self.teacher, self.loss, self.teacher_hint = teacher, loss, teacher_hint

    def __call__(self, model: nn.Module, batch: dict, progress: Progress) -> tuple[torch.Tensor, dict[str, Any]]:
        if isinstance(self.loss.label_loss, LongTailLoss):
            self.loss.label_loss.set_epoch(progress.epoch)  # LDAM-DRW's deferred weights
        images, labels = batch["image"], batch["label"]
        teacher_logits = None
        if self.loss.alpha > 0 or self.teacher_hint is not None:  # alpha = 0 without hints: the student alone
            with torch.no_grad():
                teacher_logits = self.teacher(images.float())  # fp32 teacher, whatever the student's precision
        hints = {}
        if self.teacher_hint is not None:
            logits, student_hint = model(images, with_hint=True)
            hints = dict(student_hint=student_hint, teacher_hint=self.teacher_hint.value)
        else:
            logits = model(images)
        total, parts = self.loss(logits, teacher_logits, labels, **hints)
        return total, {f"train/loss_{name}": value.detach() for name, value in parts.items()}


def final_report(config: DistillRunConfig, *, session: Any, data: LongtailData, teacher: nn.Module,
                 thresholds: ShotThresholds, settings: ReportConfig) -> dict:
    """Evaluate the teacher and the trained student (its consolidated final weights, reloaded as
    a plain classifier as ``cvdist compress`` would) on the test split, write ``report.md`` and
    the W&B table ``report/models`` (rank 0); returns the table for ``summary.json["report"]``
    (empty on other ranks)."""
    env = session.env
    student, _ = load_trained_model(session.run_dir, given=ModelSpec(name=config.model.name,
                                    num_classes=config.model.num_classes, in_channels=config.model.in_channels),
                                    field_prefix="model")
    label = "student_kd" if config.kd.alpha > 0 or config.kd.feature_weight > 0 else "student"
    metrics = {}
    for name, model in (("teacher", teacher), (label, student.to(env.device))):
        with torch.no_grad():
            metrics[name] = evaluate_variants([("", model, False)], data.eval_batches(), class_counts=data.class_counts,
                                              thresholds=thresholds, posthoc_tau=0.0, to_device=fp32_mover(env.device),
                                              device=env.device)[""]
    if not env.is_main:
        return {}
    with_balanced = is_long_tailed(data.class_counts, setting=settings.balanced)
    images = first_images(data.eval_batches(), settings.latency_batch_size)
    rows = [measure_row(name, model.cpu(), metrics=metrics[name], latency_images=images, settings=settings,
                        with_balanced=with_balanced) for name, model in (("teacher", teacher), (label, student))]
    teacher.to(env.device)
    note = (f"CPU latency per batch of {len(images)} images: median of {settings.latency_batches} after "
            f"{settings.warmup_batches} warm-up, {settings.num_threads} thread(s).")
    write_report(rows, session.run_dir, note=note, with_summary=False)
    session.wandb.log_table("report/models", columns=table_columns(rows), rows=table_rows(rows))
    for row in rows:
        session.print(f"[cvdist] {row.model}: top-1 {row.top1:.4f}, {row.size_mb:.3f} MB, "
                      f"{row.latency_ms:.2f} ms/batch")
    return report_table(rows)
