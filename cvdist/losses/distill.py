"""Knowledge-distillation losses: Hinton logit KD and feature (hint) KD.

Logit KD (Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network"): with
temperature ``T``, teacher soft labels ``q = softmax(t / T)`` and the student's tempered
log-probabilities ``log p = log_softmax(s / T)``,

    L_kd  = T^2 * mean_i sum_c -q_ic log p_ic          (cross-entropy to the soft labels)
    L     = alpha * L_kd + (1 - alpha) * L_label(s, y)

``T^2`` keeps the soft term's gradient scale independent of ``T`` (the gradients of the tempered
softmax shrink as 1/T^2). The soft term is the cross-entropy, not the KL divergence: the two
differ by the teacher's entropy, a constant for the student, so the gradients are the same, and
at ``T = 1, alpha = 1`` the loss is exactly the cross-entropy to the teacher's soft labels. (So the
logged soft term does not fall towards 0: its floor is ``T^2`` times the teacher's mean entropy.)
``L_label`` is any classification loss ``(logits, labels) -> scalar``, e.g. a long-tail loss
from :func:`cvdist.losses.longtail.build_longtail_loss` (balanced softmax, LDAM, ...).

Feature KD (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"): a student hint layer,
mapped by a trainable adapter (:class:`HintAdapter`, a 1x1 convolution or a linear layer) to the
teacher hint's shape, is matched to the teacher's hint by mean squared error or by the cosine
distance ``1 - cos`` of the flattened features; weighted by ``feature_weight``.

Long-tail aware soft term (``kd_offset``): with a vector ``a`` (``tau * log prior`` of the
training classes, :func:`kd_logit_offset`), the soft term compares ``softmax((t + a) / T)`` and
``log_softmax((s + a) / T)``: balanced softmax (Ren et al. 2020) applied to distillation. A
teacher trained with balanced softmax / logit adjustment has balanced raw logits; adding the
prior turns them into the training-distribution posterior the student is trained against through
the same offset, so the student's raw logits, used at test time, stay balanced. With a
long-tail label loss (balanced softmax, LDAM, ...) the whole objective is then long-tail aware.

All terms are computed in float32 (bf16 / fp16 logits lose the small differences the soft
labels carry).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

FEATURE_LOSSES = ("mse", "cosine")


def kd_logit_offset(class_counts, *, tau: float) -> torch.Tensor:
    """``tau * log(n_c / N)`` (float32) for the long-tail aware soft term; ValueError for a class
    without training samples (its offset would be -inf) when ``tau > 0``."""
    counts = torch.tensor([float(n) for n in class_counts], dtype=torch.float64)
    if tau < 0:
        raise ValueError(f"tau={tau} must be >= 0")
    if tau > 0 and bool((counts <= 0).any()):
        empty = int((counts <= 0).nonzero()[0])
        raise ValueError(f"class {empty} has no training samples, so its log prior is -inf; use tau=0 or data "
                         "with samples of every class")
    if tau == 0:
        return torch.zeros(len(counts))
    return (tau * torch.log(counts / counts.sum())).float()


def soft_label_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                             temperature: float, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``T^2 * mean_i sum_c -softmax(t/T)_ic * log_softmax(s/T)_ic`` (the Hinton soft term), both
    logits shifted by ``offset`` first when given (see the module docstring)."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ; both models need the same number of classes")
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    if offset is not None:
        offset = offset.to(student_logits.device)
        student_logits, teacher_logits = student_logits + offset, teacher_logits + offset
    soft = F.softmax(teacher_logits / temperature, dim=1)
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    return -(soft * log_p).sum(dim=1).mean() * temperature ** 2


def feature_distance(student_hint: torch.Tensor, teacher_hint: torch.Tensor, *, kind: str) -> torch.Tensor:
    """``mse``: mean squared error; ``cosine``: mean over samples of ``1 - cos`` of the flattened
    features. Shapes must match (the adapter's job)."""
    if student_hint.shape != teacher_hint.shape:
        raise ValueError(f"adapted student hint {tuple(student_hint.shape)} and teacher hint "
                         f"{tuple(teacher_hint.shape)} differ in shape")
    student_hint, teacher_hint = student_hint.float(), teacher_hint.float()
    if kind == "mse":
        return F.mse_loss(student_hint, teacher_hint)
    if kind == "cosine":
        cos = F.cosine_similarity(student_hint.flatten(1), teacher_hint.flatten(1), dim=1)
        return (1.0 - cos).mean()
    raise ValueError(f"feature loss {kind!r} is not one of {', '.join(FEATURE_LOSSES)}")


class HintAdapter(nn.Module):
    """Maps a student hint to the teacher hint's shape: a 1x1 convolution for feature maps
    ``[B, C, H, W]`` (then average-pooled to the teacher's ``H x W`` when they differ), a linear
    layer for vectors ``[B, C]``."""

    def __init__(self, *, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]):
        super().__init__()
        if len(student_shape) != len(teacher_shape) or len(student_shape) not in (2, 4):
            raise ValueError(f"hint shapes {student_shape} (student) and {teacher_shape} (teacher) must both be "
                             "[B, C, H, W] feature maps or both [B, C] vectors")
        self.spatial = tuple(teacher_shape[2:])
        if len(student_shape) == 4:
            self.project: nn.Module = nn.Conv2d(student_shape[1], teacher_shape[1], kernel_size=1)
        else:
            self.project = nn.Linear(student_shape[1], teacher_shape[1])

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        out = self.project(hint)
        if self.spatial and tuple(out.shape[2:]) != self.spatial:
            out = F.adaptive_avg_pool2d(out, self.spatial)
        return out


class DistillationLoss(nn.Module):
    """``alpha * T^2 * CE(soft teacher labels) + (1 - alpha) * label_loss + feature_weight *
    feature distance``. ``forward`` returns the total and the unweighted parts (for logging).
    ``kd_offset``: the long-tail aware soft term's logit offset (:func:`kd_logit_offset`)."""

    def __init__(self, *, temperature: float, alpha: float, label_loss: Optional[nn.Module] = None,
                 feature_weight: float = 0.0, feature_loss: str = "mse", kd_offset: Optional[torch.Tensor] = None):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha} must lie in [0, 1] (1 = soft labels only, 0 = label loss only)")
        if feature_weight < 0:
            raise ValueError(f"feature_weight={feature_weight} must be >= 0")
        if feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"feature_loss={feature_loss!r} is not one of {', '.join(FEATURE_LOSSES)}")
        self.temperature, self.alpha = temperature, alpha
        self.feature_weight, self.feature_loss = feature_weight, feature_loss
        self.label_loss = label_loss if label_loss is not None else nn.CrossEntropyLoss()
        self.register_buffer("kd_offset", kd_offset, persistent=False)

    def forward(self, student_logits: torch.Tensor, teacher_logits: Optional[torch.Tensor], labels: torch.Tensor, *,
                student_hint: Optional[torch.Tensor] = None,
                teacher_hint: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``teacher_logits`` may be None when ``alpha`` is 0 (no soft term)."""
        parts: dict[str, torch.Tensor] = {}
        total = student_logits.new_zeros((), dtype=torch.float32)
        if self.alpha > 0:
            parts["kd"] = soft_label_cross_entropy(student_logits, teacher_logits, temperature=self.temperature,
                                                   offset=self.kd_offset)
            total = total + self.alpha * parts["kd"]
        if self.alpha < 1:
            parts["label"] = self.label_loss(student_logits.float(), labels)
            total = total + (1.0 - self.alpha) * parts["label"]
        if self.feature_weight > 0:
            if student_hint is None or teacher_hint is None:
                raise ValueError("feature_weight > 0 needs the student's adapted hint and the teacher's hint")
            parts["feature"] = feature_distance(student_hint, teacher_hint, kind=self.feature_loss)
            total = total + self.feature_weight * parts["feature"]
        return total, parts
