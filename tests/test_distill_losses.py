"""Distillation losses against hand-computed values and their defining identities."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from cvdist.losses.distill import (DistillationLoss, HintAdapter, feature_distance, kd_logit_offset,
                                   soft_label_cross_entropy)
from cvdist.losses.longtail import build_longtail_loss


def _softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_kd_loss_matches_a_hand_computed_value():
    student, teacher, labels = [[1.0, 2.0, 0.0]], [[2.0, 0.0, 1.0]], [1]
    T, alpha = 2.0, 0.7
    q = _softmax([v / T for v in teacher[0]])
    p = _softmax([v / T for v in student[0]])
    soft = -sum(qc * math.log(pc) for qc, pc in zip(q, p)) * T * T
    hard = -math.log(_softmax(student[0])[labels[0]])
    expected = alpha * soft + (1 - alpha) * hard
    loss = DistillationLoss(temperature=T, alpha=alpha)
    total, parts = loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels))
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert parts["kd"].item() == pytest.approx(soft, rel=1e-6)
    assert parts["label"].item() == pytest.approx(hard, rel=1e-6)


def test_t1_alpha1_is_the_cross_entropy_to_the_teachers_soft_labels():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(16, 10, generator=generator), torch.randn(16, 10, generator=generator)
    labels = torch.randint(0, 10, (16,), generator=generator)
    total, parts = DistillationLoss(temperature=1.0, alpha=1.0)(student, teacher, labels)
    assert set(parts) == {"kd"}  # the label loss is not even computed
    expected = F.cross_entropy(student, F.softmax(teacher, dim=1))  # PyTorch's probability-target CE
    torch.testing.assert_close(total, expected)


def test_soft_term_gradient_equals_kl_gradient_and_scales_with_t_squared():
    student = torch.randn(8, 5, requires_grad=True)
    teacher = torch.randn(8, 5)
    T = 4.0
    soft_label_cross_entropy(student, teacher, temperature=T).backward()
    ce_grad = student.grad.clone()
    student.grad = None
    kl = F.kl_div(F.log_softmax(student / T, 1), F.softmax(teacher / T, 1), reduction="batchmean") * T * T
    kl.backward()
    torch.testing.assert_close(ce_grad, student.grad)
    # analytic gradient: T * (p - q) / B
    p, q = F.softmax(student.detach() / T, 1), F.softmax(teacher / T, 1)
    torch.testing.assert_close(ce_grad, T * (p - q) / 8)


def test_alpha0_is_the_label_loss_which_may_be_a_longtail_loss():
    counts = [100, 10, 1]
    label_loss = build_longtail_loss(name="balanced_softmax", class_counts=counts)
    student, teacher, labels = torch.randn(6, 3), torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    total, parts = DistillationLoss(temperature=3.0, alpha=0.0, label_loss=label_loss)(student, teacher, labels)
    torch.testing.assert_close(total, label_loss(student, labels))
    # balanced softmax = CE on logits + log prior
    prior = torch.tensor(counts, dtype=torch.float32) / sum(counts)
    torch.testing.assert_close(total, F.cross_entropy(student + prior.log(), labels))


def test_feature_distances_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert feature_distance(a, b, kind="mse").item() == pytest.approx((1 + 1 + 1 + 1) / 4)
    # sample 0 orthogonal (1 - 0), sample 1 parallel (1 - 1)
    assert feature_distance(a, b, kind="cosine").item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="differ in shape"):
        feature_distance(a, b[:, :1], kind="mse")


def test_feature_term_adds_with_its_weight_and_trains_the_adapter():
    adapter = HintAdapter(student_shape=(2, 4, 8, 8), teacher_shape=(2, 6, 4, 4))
    student_hint, teacher_hint = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)
    adapted = adapter(student_hint)
    assert adapted.shape == teacher_hint.shape
    logits, teacher_logits, labels = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1])
    loss = DistillationLoss(temperature=2.0, alpha=0.5, feature_weight=3.0, feature_loss="mse")
    total, parts = loss(logits, teacher_logits, labels, student_hint=adapted, teacher_hint=teacher_hint)
    expected = 0.5 * parts["kd"] + 0.5 * parts["label"] + 3.0 * F.mse_loss(adapted, teacher_hint)
    torch.testing.assert_close(total, expected)
    total.backward()
    assert adapter.project.weight.grad is not None and adapter.project.weight.grad.abs().sum() > 0
    vector_adapter = HintAdapter(student_shape=(2, 16), teacher_shape=(2, 32))
    assert vector_adapter(torch.randn(2, 16)).shape == (2, 32)


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0.0, alpha=0.5), "temperature"),
    (dict(temperature=2.0, alpha=1.5), "alpha"),
    (dict(temperature=2.0, alpha=0.5, feature_weight=-1.0), "feature_weight"),
    (dict(temperature=2.0, alpha=0.5, feature_loss="l1"), "feature_loss"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillationLoss(**kwargs)


def test_mismatched_class_counts_are_refused():
    with pytest.raises(ValueError, match="same number of classes"):
        soft_label_cross_entropy(torch.randn(2, 3), torch.randn(2, 4), temperature=1.0)


def test_long_tail_aware_soft_term_shifts_both_logits_by_the_log_prior():
    counts = [80, 15, 5]
    offset = kd_logit_offset(counts, tau=1.0)
    torch.testing.assert_close(offset, torch.tensor([math.log(0.8), math.log(0.15), math.log(0.05)]))
    student, teacher, labels = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    loss = DistillationLoss(temperature=2.0, alpha=1.0, kd_offset=offset)
    total, _ = loss(student, teacher, labels)
    expected = soft_label_cross_entropy(student + offset, teacher + offset, temperature=2.0)
    torch.testing.assert_close(total, expected)
    assert not torch.allclose(total, soft_label_cross_entropy(student, teacher, temperature=2.0))
    assert torch.equal(kd_logit_offset(counts, tau=0.0), torch.zeros(3))
    with pytest.raises(ValueError, match="class 1 has no training samples"):
        kd_logit_offset([5, 0, 3], tau=1.0)
