"""Long-tail losses against hand-computed values on 2-3 classes and 2-4 samples."""

import math

import pytest
import torch
from torch.nn import functional as F

from cvdist.losses import LOSS_NAMES, build_longtail_loss, posthoc_logit_adjustment
from cvdist.losses.longtail import class_balanced_weights, inverse_frequency_weights, ldam_margins, loss_options

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.0, 0.0], [0.0, 0.3, 1.5], [1.0, 1.0, 1.0]])
LABELS = torch.tensor([0, 1, 2, 0])
COUNTS = [8, 4, 2]


def ce_terms(logits, labels):
    """-log softmax(logits)[y] per sample, written out."""
    return [math.log(sum(math.exp(v) for v in row)) - row[y] for row, y in zip(logits.tolist(), labels.tolist())]


def test_ce_matches_hand_value_and_label_smoothing_matches_torch():
    expected = sum(ce_terms(LOGITS, LABELS)) / 4
    assert build_longtail_loss(name="ce", class_counts=COUNTS)(LOGITS, LABELS).item() == pytest.approx(expected)
    smoothed = build_longtail_loss(name="ce", class_counts=COUNTS, label_smoothing=0.1)(LOGITS, LABELS)
    assert smoothed.item() == pytest.approx(F.cross_entropy(LOGITS, LABELS, label_smoothing=0.1).item())


def test_weighted_ce_inverse_frequency_and_explicit_weights():
    # 1/n = [1/8, 1/4, 1/2], mean 7/24 -> weights [3/7, 6/7, 12/7] average 1
    weights = inverse_frequency_weights(COUNTS)
    assert weights.tolist() == pytest.approx([3 / 7, 6 / 7, 12 / 7])
    terms = ce_terms(LOGITS, LABELS)
    expected = (3 / 7 * terms[0] + 6 / 7 * terms[1] + 12 / 7 * terms[2] + 3 / 7 * terms[3]) / 4
    loss = build_longtail_loss(name="weighted_ce", class_counts=COUNTS)
    assert loss(LOGITS, LABELS).item() == pytest.approx(expected)
    explicit = build_longtail_loss(name="weighted_ce", class_counts=COUNTS, weights=[1.0, 0.0, 2.0])
    assert explicit(LOGITS, LABELS).item() == pytest.approx((terms[0] + 2 * terms[2] + terms[3]) / 4)
    torch_convention = build_longtail_loss(name="weighted_ce", class_counts=COUNTS, reduction="weighted_mean")
    assert torch_convention(LOGITS, LABELS).item() == pytest.approx(
        F.cross_entropy(LOGITS, LABELS, weight=weights.float()).item())


def test_weighted_ce_gives_empty_classes_weight_zero():
    # present classes [1/4, 1] averaged to 1 over the 2 present classes -> [0.4, 1.6]
    assert inverse_frequency_weights([4, 0, 1]).tolist() == pytest.approx([0.4, 0.0, 1.6])
    with pytest.raises(ValueError, match="weights must be 3"):
        build_longtail_loss(name="weighted_ce", class_counts=COUNTS, weights=[1.0, 2.0])


def test_class_balanced_weights_formula_and_loss():
    # beta = 0.5, n = [2, 1]: (1 - b) / (1 - b^n) = [2/3, 1], normalised to sum 2 -> [0.8, 1.2]
    assert class_balanced_weights([2, 1], beta=0.5).tolist() == pytest.approx([0.8, 1.2])
    assert class_balanced_weights([5, 0, 1], beta=0.0).tolist() == pytest.approx([1.0, 0.0, 1.0])
    raw = [(1 - 0.999) / (1 - 0.999 ** n) for n in COUNTS]
    weights = [3 * w / sum(raw) for w in raw]
    terms = ce_terms(LOGITS, LABELS)
    expected = sum(weights[y] * t for y, t in zip(LABELS.tolist(), terms)) / 4
    loss = build_longtail_loss(name="class_balanced", class_counts=COUNTS, beta=0.999)
    assert loss(LOGITS, LABELS).item() == pytest.approx(expected)
    focal = build_longtail_loss(name="class_balanced", class_counts=COUNTS, beta=0.999, base="focal", gamma=1.0)
    probs = [math.exp(-t) for t in terms]
    expected_focal = sum(weights[y] * (1 - p) * t for y, p, t in zip(LABELS.tolist(), probs, terms)) / 4
    assert focal(LOGITS, LABELS).item() == pytest.approx(expected_focal)
    with pytest.raises(ValueError, match="beta"):
        build_longtail_loss(name="class_balanced", class_counts=COUNTS, beta=1.0)
    with pytest.raises(ValueError, match="base = 'sigmoid'; allowed: ce, focal"):
        build_longtail_loss(name="class_balanced", class_counts=COUNTS, base="sigmoid")


def test_focal_gamma_zero_is_ce_and_gamma_two_matches_hand_value():
    ce = build_longtail_loss(name="ce", class_counts=COUNTS)(LOGITS, LABELS)
    focal = build_longtail_loss(name="focal", class_counts=COUNTS, gamma=0.0)
    assert focal(LOGITS, LABELS).item() == pytest.approx(ce.item())
    logits, labels = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0])
    p = [math.e / (math.e + 1), 1 / (1 + math.e ** 2)]
    expected = sum(-(1 - q) ** 2 * math.log(q) for q in p) / 2
    assert build_longtail_loss(name="focal", class_counts=[1, 1])(logits, labels).item() == pytest.approx(expected)
    alpha = build_longtail_loss(name="focal", class_counts=[1, 1], alpha=[0.25, 0.75])(logits, labels)
    assert alpha.item() == pytest.approx(0.25 * expected)


def test_ldam_margin_only_on_true_class():
    # n = [16, 1]: n^(-1/4) = [0.5, 1] -> scaled to max 0.5: [0.25, 0.5]
    assert ldam_margins([16, 1], max_m=0.5).tolist() == pytest.approx([0.25, 0.5])
    logits, labels = torch.tensor([[1.0, 0.0], [0.5, 0.2]]), torch.tensor([0, 1])
    loss = build_longtail_loss(name="ldam", class_counts=[16, 1], s=2.0)
    adjusted = torch.tensor([[2 * (1.0 - 0.25), 0.0], [2 * 0.5, 2 * (0.2 - 0.5)]])
    assert loss(logits, labels).item() == pytest.approx(sum(ce_terms(adjusted, labels)) / 2)


def test_ldam_drw_switches_weights_on_at_drw_epoch():
    logits, labels = torch.tensor([[1.0, 0.0], [0.5, 0.2]]), torch.tensor([0, 1])
    plain = build_longtail_loss(name="ldam", class_counts=[16, 1], s=2.0)(logits, labels).item()
    drw = build_longtail_loss(name="ldam", class_counts=[16, 1], s=2.0, drw_epoch=2)
    drw.set_epoch(1)
    assert drw(logits, labels).item() == pytest.approx(plain)
    drw.set_epoch(2)
    raw = [(1 - 0.9999) / (1 - 0.9999 ** n) for n in (16, 1)]
    weights = [2 * w / sum(raw) for w in raw]
    adjusted = torch.tensor([[1.5, 0.0], [1.0, -0.6]])
    terms = ce_terms(adjusted, labels)
    assert drw(logits, labels).item() == pytest.approx((weights[0] * terms[0] + weights[1] * terms[1]) / 2)
    drw.set_epoch(0)  # a resume into an earlier epoch goes back to unweighted
    assert drw(logits, labels).item() == pytest.approx(plain)
    with pytest.raises(ValueError, match="epoch"):
        drw.set_epoch(-1)


def test_balanced_softmax_is_ce_of_logits_plus_log_counts():
    loss = build_longtail_loss(name="balanced_softmax", class_counts=COUNTS)
    expected = F.cross_entropy(LOGITS + torch.tensor(COUNTS, dtype=torch.float).log(), LABELS)
    assert loss(LOGITS, LABELS).item() == pytest.approx(expected.item())


def test_logit_adjusted_tau_zero_is_ce_and_tau_scales_log_prior():
    ce = F.cross_entropy(LOGITS, LABELS).item()
    tau_zero = build_longtail_loss(name="logit_adjusted", class_counts=COUNTS, tau=0.0)
    assert tau_zero(LOGITS, LABELS).item() == pytest.approx(ce)
    prior = torch.tensor(COUNTS, dtype=torch.float) / sum(COUNTS)
    half = build_longtail_loss(name="logit_adjusted", class_counts=COUNTS, tau=0.5, label_smoothing=0.1)
    expected = F.cross_entropy(LOGITS + 0.5 * prior.log(), LABELS, label_smoothing=0.1)
    assert half(LOGITS, LABELS).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="tau"):
        build_longtail_loss(name="logit_adjusted", class_counts=COUNTS, tau=-1.0)


def test_posthoc_logit_adjustment():
    prior = torch.tensor(COUNTS, dtype=torch.float) / sum(COUNTS)
    adjusted = posthoc_logit_adjustment(LOGITS, class_counts=COUNTS, tau=1.5)
    assert torch.allclose(adjusted, LOGITS - 1.5 * prior.log())
    assert torch.equal(posthoc_logit_adjustment(LOGITS, class_counts=[3, 0, 1], tau=0.0), LOGITS)
    with pytest.raises(ValueError, match="class 1 has 0 training samples"):
        posthoc_logit_adjustment(LOGITS, class_counts=[3, 0, 1], tau=1.0)
    with pytest.raises(ValueError, match="2 entries|has 2"):
        posthoc_logit_adjustment(LOGITS, class_counts=[3, 1], tau=1.0)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_backpropagates_finite_gradients(name):
    logits = LOGITS.clone().requires_grad_(True)
    loss = build_longtail_loss(name=name, class_counts=COUNTS, **({"s": 1.0, "drw_epoch": 0} if name == "ldam" else {}))
    value = loss(logits, LABELS)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert torch.isfinite(loss(LOGITS.bfloat16(), LABELS))  # computed in float32


@pytest.mark.parametrize("name", ["ce", "weighted_ce", "class_balanced", "focal", "balanced_softmax", "logit_adjusted"])
def test_empty_class_is_handled_for_labels_of_present_classes(name):
    logits = LOGITS.clone().requires_grad_(True)
    labels = torch.tensor([0, 2, 2, 0])
    value = build_longtail_loss(name=name, class_counts=[8, 0, 2])(logits, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_losses_that_cannot_handle_empty_classes_name_them():
    with pytest.raises(ValueError, match=r"ldam: class 1 has 0 training samples \(class_counts\[1\] = 0\)"):
        build_longtail_loss(name="ldam", class_counts=[8, 0, 2])
    with pytest.raises(ValueError, match="label_smoothing .* class 1"):
        build_longtail_loss(name="logit_adjusted", class_counts=[8, 0, 2], label_smoothing=0.1)
    with pytest.raises(ValueError, match="all 0"):
        build_longtail_loss(name="ce", class_counts=[0, 0])
    with pytest.raises(ValueError, match=r"class_counts\[1\]"):
        build_longtail_loss(name="ce", class_counts=[3, -1])


def test_unknown_name_and_option_errors_list_allowed_values():
    with pytest.raises(ValueError, match="unknown long-tail loss name = 'ldma'; allowed: ce, weighted_ce, "
                                         "class_balanced, focal, ldam, balanced_softmax, logit_adjusted"):
        build_longtail_loss(name="ldma", class_counts=COUNTS)
    with pytest.raises(ValueError, match="unknown option.*label_smoothing; allowed: gamma, alpha, reduction"):
        build_longtail_loss(name="focal", class_counts=COUNTS, label_smoothing=0.1)
    with pytest.raises(ValueError, match="reduction = 'sum'; allowed: mean, weighted_mean"):
        build_longtail_loss(name="weighted_ce", class_counts=COUNTS, reduction="sum")
    assert loss_options("balanced_softmax") == ()


def test_shape_errors():
    loss = build_longtail_loss(name="ce", class_counts=COUNTS)
    with pytest.raises(ValueError, match=r"logits must have shape \[B, 3\]"):
        loss(LOGITS[:, :2], LABELS)
    with pytest.raises(ValueError, match="labels must be integer"):
        loss(LOGITS, LABELS.float())
