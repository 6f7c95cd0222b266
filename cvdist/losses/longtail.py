"""Long-tail classification losses, selected by name with :func:`build_longtail_loss`.

Every loss is one :class:`LongTailLoss`: softmax cross-entropy with the pieces the long-tail
papers add to it. For logits ``x`` [B, C] and labels ``y`` [B]:

    z     = scale * (x - m_y * onehot(y)) + a            (LDAM margin m, log-prior offset a)
    l_i   = (1 - p_{i,y_i})^gamma * CE(z_i, y_i)         (focal factor; gamma = 0 is plain CE)
    loss  = (1/B) * sum_i w_{y_i} * l_i                  (class weights w, plain batch mean)

Conventions:

* **Reduction.** The default is the plain batch mean above, not PyTorch's ``weight=`` mean
  (``sum w l / sum w``): a sample's loss then does not depend on which other samples share its
  batch, so gradient accumulation and averaging over DDP ranks give exactly the loss of the
  global batch, and the weights' normalisation (mean 1 over classes) sets the loss scale as in
  Cui et al. ``reduction="weighted_mean"`` gives PyTorch's convention, which the LDAM-DRW
  reference code uses (there the loss scale does not drop when DRW switches the weights on).
* **Label smoothing** (``ce``, ``weighted_ce``, ``class_balanced``, ``logit_adjusted``) replaces
  the CE term by ``(1 - eps) * CE + eps * mean_c(-log p_c)`` as PyTorch does; the class weight
  of the sample's label multiplies the whole term.
* **Classes with no training samples.** They cannot occur as labels, so: re-weighting gives
  them weight 0 and normalises over the classes that have samples; log-prior offsets give them
  ``-inf`` (the training prior is exactly 0, which removes them from the training softmax); a
  loss for which that has no meaning (LDAM margins, label smoothing over a ``-inf`` class)
  raises ``ValueError`` naming the class.
* Logits are cast to float32 first: with ``s = 30`` or offsets like ``log(1e-4)`` bf16/fp16
  would lose the small differences between logits that the losses depend on.

Call ``set_epoch(epoch)`` at the start of every epoch (also after a resume); only LDAM-DRW
changes with the epoch, for the others it is a no-op.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

REDUCTIONS = ("mean", "weighted_mean")
CLASS_BALANCED_BASES = ("ce", "focal")


def check_class_counts(class_counts: Sequence[int], *, name: str = "class_counts") -> list[int]:
    """``class_counts`` as a list of ints, or ``ValueError``: at least 2 classes, counts integral
    and >= 0, at least one class with samples."""
    counts = [float(c) for c in class_counts]
    if len(counts) < 2:
        raise ValueError(f"{name} must list the training samples of at least 2 classes, got {len(counts)}")
    for c, n in enumerate(counts):
        if not (math.isfinite(n) and n >= 0 and n == int(n)):
            raise ValueError(f"{name}[{c}] = {class_counts[c]!r}; counts must be integers >= 0")
    if sum(counts) == 0:
        raise ValueError(f"{name} are all 0; at least one class needs training samples")
    return [int(n) for n in counts]


def _normalise_over_present(raw: list[float], counts: list[int]) -> torch.Tensor:
    # Classes without samples keep weight 0 and do not count in the normalisation, so the
    # weights of the classes that can occur average to 1 whether or not empty classes exist.
    weights = torch.tensor(raw, dtype=torch.float64)
    num_present = sum(1 for n in counts if n > 0)
    return weights * (num_present / weights.sum())


def inverse_frequency_weights(class_counts: Sequence[int]) -> torch.Tensor:
    """``w_c ∝ 1 / n_c``, averaging 1 over the classes with samples (0 for empty classes); float64."""
    counts = check_class_counts(class_counts)
    return _normalise_over_present([1.0 / n if n > 0 else 0.0 for n in counts], counts)


def class_balanced_weights(class_counts: Sequence[int], *, beta: float) -> torch.Tensor:
    """Cui et al. 2019, "Class-Balanced Loss Based on Effective Number of Samples" (CVPR):
    ``w_c = (1 - beta) / (1 - beta^n_c)`` (the inverse effective number), normalised to sum to the
    number of classes with samples (C when none is empty); empty classes get 0. float64.

    ``beta = 0`` gives equal weights, ``beta -> 1`` inverse frequency; the paper uses 0.999-0.9999.
    """
    counts = check_class_counts(class_counts)
    if not (isinstance(beta, (int, float)) and 0.0 <= beta < 1.0):
        raise ValueError(f"beta = {beta!r} must be a number in [0, 1) (e.g. 0.999 or 0.9999)")
    return _normalise_over_present([(1.0 - beta) / (1.0 - beta ** n) if n > 0 else 0.0 for n in counts], counts)


def ldam_margins(class_counts: Sequence[int], *, max_m: float) -> torch.Tensor:
    """Cao et al. 2019, "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss"
    (NeurIPS): ``m_c ∝ n_c^(-1/4)``, scaled so the largest margin (rarest class) is ``max_m``. float64."""
    counts = check_class_counts(class_counts)
    if not (isinstance(max_m, (int, float)) and max_m > 0):
        raise ValueError(f"max_m = {max_m!r} must be a number > 0 (the paper uses 0.5)")
    empty = [c for c, n in enumerate(counts) if n == 0]
    if empty:
        raise ValueError(f"ldam: class {empty[0]} has 0 training samples (class_counts[{empty[0]}] = 0), so its "
                         f"margin n^(-1/4) is infinite; drop the class or use balanced_softmax / class_balanced")
    raw = torch.tensor(counts, dtype=torch.float64).pow(-0.25)
    return raw * (max_m / raw.max())


def log_prior(class_counts: Sequence[int]) -> torch.Tensor:
    """``log(n_c / N)`` of the training label distribution; ``-inf`` for empty classes. float64."""
    counts = torch.tensor(check_class_counts(class_counts), dtype=torch.float64)
    return torch.log(counts / counts.sum())


def _check_tau(tau: float) -> float:
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau = {tau!r} must be a finite number >= 0 (1.0 is the Bayes-optimal choice)")
    return float(tau)


def posthoc_logit_adjustment(logits: torch.Tensor, *, class_counts: Sequence[int], tau: float = 1.0) -> torch.Tensor:
    """Menon et al. 2021, "Long-tail learning via logit adjustment" (ICLR), post-hoc form:
    ``logits - tau * log(prior)`` over the last dimension, for evaluating a model trained with
    plain CE as if trained on balanced data. Raises ``ValueError`` for a class without training
    samples when ``tau > 0`` (its offset would be ``+inf``: it would always be predicted)."""
    tau = _check_tau(tau)
    prior = log_prior(class_counts)
    if logits.shape[-1] != len(prior):
        raise ValueError(f"logits have {logits.shape[-1]} classes in the last dimension but class_counts "
                         f"has {len(prior)}")
    if tau == 0:
        return logits
    empty = torch.isinf(prior).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"posthoc_logit_adjustment: class {empty[0]} has 0 training samples, its adjustment "
                         f"-tau * log(0) is +inf; pass tau = 0 or class_counts without empty classes")
    return logits - (tau * prior).to(device=logits.device, dtype=logits.dtype)


class LongTailLoss(nn.Module):
    """Softmax cross-entropy with class weights, LDAM margins, a logit scale, log-prior offsets,
    a focal factor and label smoothing (formula in the module docstring); built by
    :func:`build_longtail_loss`. ``forward(logits [B, C], labels [B]) -> scalar``.

    ``class_weights`` apply from epoch ``weights_from_epoch`` on (deferred re-weighting); the
    per-class tensors are non-persistent buffers: they follow ``.to(device)`` but stay out of
    checkpoints, since they are derived from the class counts of the config."""

    def __init__(self, *, num_classes: int, class_weights: torch.Tensor | None = None,
                 margins: torch.Tensor | None = None, scale: float = 1.0, adjustment: torch.Tensor | None = None,
                 gamma: float = 0.0, label_smoothing: float = 0.0, reduction: str = "mean",
                 weights_from_epoch: int = 0) -> None:
        super().__init__()
        if not (isinstance(label_smoothing, (int, float)) and 0.0 <= label_smoothing < 1.0):
            raise ValueError(f"label_smoothing = {label_smoothing!r} must be a number in [0, 1)")
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"gamma = {gamma!r} must be a finite number >= 0 (0 = cross-entropy; Lin et al. use 2)")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction = {reduction!r}; allowed: {', '.join(REDUCTIONS)}")
        if gamma > 0 and label_smoothing > 0:
            raise ValueError("label_smoothing is not supported with the focal factor (gamma > 0); set one to 0")
        if adjustment is not None and label_smoothing > 0 and torch.isinf(adjustment).any():
            empty = torch.isinf(adjustment).nonzero().flatten().tolist()
            raise ValueError(f"label_smoothing puts target mass on class {empty[0]}, which has 0 training samples "
                             f"and so a training probability of 0 (infinite loss); set label_smoothing = 0")
        self.num_classes = num_classes
        self.scale = float(scale)
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction
        self.weights_from_epoch = int(weights_from_epoch)
        self.epoch = 0
        for name, tensor in (("class_weights", class_weights), ("margins", margins), ("adjustment", adjustment)):
            if tensor is not None and tensor.shape != (num_classes,):
                raise ValueError(f"{name} must have shape ({num_classes},), got {tuple(tensor.shape)}")
            self.register_buffer(name, None if tensor is None else tensor.float(), persistent=False)

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss the current epoch (0-based); switches deferred class weights on."""
        if not (isinstance(epoch, numbers.Integral) and epoch >= 0):
            raise ValueError(f"epoch = {epoch!r} must be an int >= 0")
        self.epoch = int(epoch)

    @property
    def active_class_weights(self) -> torch.Tensor | None:
        """The class weights in force at the current epoch (``None`` = all 1)."""
        return self.class_weights if self.epoch >= self.weights_from_epoch else None

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape [B, {self.num_classes}], got {tuple(logits.shape)}")
        if labels.shape != logits.shape[:1] or labels.dtype.is_floating_point:
            raise ValueError(f"labels must be integer class indices of shape [{logits.shape[0]}], "
                             f"got {labels.dtype} {tuple(labels.shape)}")
        z = logits.float()
        index = labels.unsqueeze(1)
        if self.margins is not None:
            # scatter instead of one_hot: one_hot checks the label range with a device sync
            z = z - torch.zeros_like(z).scatter_(1, index, self.margins.to(z.device)[labels].unsqueeze(1))
        if self.scale != 1.0:
            z = z * self.scale
        if self.adjustment is not None:
            z = z + self.adjustment.to(z.device)
        log_probs = F.log_softmax(z, dim=1)
        per_sample = -log_probs.gather(1, index).squeeze(1)
        if self.gamma > 0:
            # 1 - p_t via expm1 keeps precision when p_t is close to 1; the clamp keeps the
            # gradient of x^gamma (gamma < 1) finite at p_t == 1
            one_minus_p = (-torch.expm1(-per_sample)).clamp_min(torch.finfo(z.dtype).tiny)
            per_sample = one_minus_p.pow(self.gamma) * per_sample
        if self.label_smoothing > 0:
            per_sample = (1 - self.label_smoothing) * per_sample - self.label_smoothing * log_probs.mean(dim=1)
        return self._reduce(per_sample, labels)

    def _reduce(self, per_sample: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weights = self.active_class_weights
        if weights is None:
            return per_sample.mean()
        sample_weights = weights.to(per_sample.device)[labels]
        if self.reduction == "mean":
            return (sample_weights * per_sample).mean()
        # a batch of only weight-0 (empty-class) labels gives 0 rather than 0 / 0
        return (sample_weights * per_sample).sum() / sample_weights.sum().clamp_min(torch.finfo(per_sample.dtype).tiny)


def _build_ce(*, class_counts: list[int], label_smoothing: float = 0.0) -> LongTailLoss:
    return LongTailLoss(num_classes=len(class_counts), label_smoothing=label_smoothing)


def _build_weighted_ce(*, class_counts: list[int], weights: Sequence[float] | None = None,
                       label_smoothing: float = 0.0, reduction: str = "mean") -> LongTailLoss:
    if weights is None:
        class_weights = inverse_frequency_weights(class_counts)
    else:
        class_weights = torch.tensor([float(w) for w in weights], dtype=torch.float64)
        if class_weights.shape != (len(class_counts),) or not bool((class_weights >= 0).all()) \
                or not bool(torch.isfinite(class_weights).all()):
            raise ValueError(f"weights must be {len(class_counts)} finite numbers >= 0 (one per class), "
                             f"got {weights!r}")
    return LongTailLoss(num_classes=len(class_counts), class_weights=class_weights,
                        label_smoothing=label_smoothing, reduction=reduction)


def _build_class_balanced(*, class_counts: list[int], beta: float = 0.9999, base: str = "ce", gamma: float = 2.0,
                          label_smoothing: float = 0.0, reduction: str = "mean") -> LongTailLoss:
    if base not in CLASS_BALANCED_BASES:
        raise ValueError(f"base = {base!r}; allowed: {', '.join(CLASS_BALANCED_BASES)}")
    return LongTailLoss(num_classes=len(class_counts), class_weights=class_balanced_weights(class_counts, beta=beta),
                        gamma=gamma if base == "focal" else 0.0, label_smoothing=label_smoothing, reduction=reduction)


def _build_focal(*, class_counts: list[int], gamma: float = 2.0, alpha: float | Sequence[float] | None = None,
                 reduction: str = "mean") -> LongTailLoss:
    # Lin et al.'s alpha balances positives against negatives of a sigmoid; with a softmax it
    # becomes a weight per class (a sequence) or one factor for all (a number).
    class_weights = None
    if alpha is not None:
        values = [float(alpha)] * len(class_counts) if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
        if len(values) != len(class_counts) or not all(math.isfinite(a) and a >= 0 for a in values):
            raise ValueError(f"alpha must be a number >= 0 or {len(class_counts)} numbers >= 0 (one per class), "
                             f"got {alpha!r}")
        class_weights = torch.tensor(values, dtype=torch.float64)
    return LongTailLoss(num_classes=len(class_counts), class_weights=class_weights, gamma=gamma, reduction=reduction)


def _build_ldam(*, class_counts: list[int], max_m: float = 0.5, s: float = 30.0, drw_epoch: int | None = None,
                drw_beta: float = 0.9999, reduction: str = "mean") -> LongTailLoss:
    if not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0):
        raise ValueError(f"s = {s!r} must be a finite number > 0 (30 for cosine logits, 1 for a plain linear head)")
    if drw_epoch is not None and not (isinstance(drw_epoch, numbers.Integral) and drw_epoch >= 0):
        raise ValueError(f"drw_epoch = {drw_epoch!r} must be an int >= 0, or None for no deferred re-weighting")
    class_weights = None if drw_epoch is None else class_balanced_weights(class_counts, beta=drw_beta)
    return LongTailLoss(num_classes=len(class_counts), margins=ldam_margins(class_counts, max_m=max_m), scale=s,
                        class_weights=class_weights, weights_from_epoch=int(drw_epoch or 0), reduction=reduction)


def _build_balanced_softmax(*, class_counts: list[int]) -> LongTailLoss:
    # log n_c and log(n_c / N) differ by a constant, which the softmax ignores
    return LongTailLoss(num_classes=len(class_counts), adjustment=log_prior(class_counts))


def _build_logit_adjusted(*, class_counts: list[int], tau: float = 1.0, label_smoothing: float = 0.0) -> LongTailLoss:
    tau = _check_tau(tau)
    prior = log_prior(class_counts)
    # tau = 0 must give plain CE, also for empty classes (0 * -inf would be NaN)
    adjustment = torch.where(torch.isinf(prior), prior if tau > 0 else 0.0, tau * prior)
    return LongTailLoss(num_classes=len(class_counts), adjustment=adjustment, label_smoothing=label_smoothing)


_BUILDERS: dict[str, Callable[..., LongTailLoss]] = {
    "ce": _build_ce,
    "weighted_ce": _build_weighted_ce,
    "class_balanced": _build_class_balanced,
    "focal": _build_focal,
    "ldam": _build_ldam,
    "balanced_softmax": _build_balanced_softmax,
    "logit_adjusted": _build_logit_adjusted,
}
LOSS_NAMES = tuple(_BUILDERS)
"""Names accepted by :func:`build_longtail_loss`."""


def loss_options(name: str) -> tuple[str, ...]:
    """The keyword options the loss ``name`` accepts (besides ``class_counts``)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown long-tail loss name = {name!r}; allowed: {', '.join(LOSS_NAMES)}")
    return tuple(p for p in inspect.signature(_BUILDERS[name]).parameters if p != "class_counts")


def build_longtail_loss(*, name: str, class_counts: Sequence[int], **options) -> LongTailLoss:
    """The long-tail loss ``name`` for training-set ``class_counts`` (samples per class).

    ``ce`` [label_smoothing]; ``weighted_ce`` [weights (default: inverse frequency, mean 1),
    label_smoothing, reduction]; ``class_balanced`` (Cui et al. 2019) [beta=0.9999, base="ce" or
    "focal", gamma=2.0 (focal base), label_smoothing, reduction]; ``focal`` (Lin et al. 2017,
    "Focal Loss for Dense Object Detection") [gamma=2.0, alpha, reduction]; ``ldam`` (Cao et al.
    2019) [max_m=0.5, s=30.0, drw_epoch=None, drw_beta=0.9999, reduction]; ``balanced_softmax``
    (Ren et al. 2020, "Balanced Meta-Softmax for Long-Tailed Visual Recognition": logits +
    log n_c); ``logit_adjusted`` (Menon et al. 2021: logits + tau * log prior) [tau=1.0,
    label_smoothing]. ``reduction`` is "mean" (default) or "weighted_mean" (module docstring).

    LDAM's ``s = 30`` assumes cosine logits (normalised features and weights, as in the paper);
    use ``s = 1`` with a plain linear head. Unknown names or options raise ``ValueError``.
    """
    allowed = loss_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"loss {name!r} got unknown option(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(allowed) or '(none)'}")
    return _BUILDERS[name](class_counts=check_class_counts(class_counts), **options)
