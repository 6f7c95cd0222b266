"""Non-contrastive self-supervised losses: BYOL, SimSiam, DINO, VICReg and Barlow Twins. Pure
functions; no process group is needed when ``world_size`` is 1.

Signatures::

    byol_loss(p_a, p_b, k_a, k_b) -> Tensor
    simsiam_loss(p_a, p_b, z_a, z_b) -> Tensor
    dino_loss(student, teacher, *, center, student_temperature=0.1, teacher_temperature=0.04,
              center_momentum=0.9, world_size=1, all_reduce_fn=None) -> (Tensor, new center)
    vicreg_loss(z_a, z_b, *, invariance_weight=25, variance_weight=25, covariance_weight=1,
                world_size=1, gather_fn=None) -> Tensor
    barlow_twins_loss(z_a, z_b, *, off_diagonal_weight=0.005, world_size=1, all_reduce_fn=None) -> Tensor

What couples the batch, and how each loss stays equal to the single-process loss on the
concatenated batch of all ranks (``world_size * B`` images):

* BYOL, SimSiam: nothing (a mean of per-image terms); DDP's mean of the ranks' gradients is the
  gradient of the global mean, since every rank has B rows.
* DINO: the center, an EMA of the teacher outputs' batch mean, summed over ranks by
  ``all_reduce_fn`` (no gradient flows through it). The loss given the center is per-image.
* VICReg: the variance and covariance terms are statistics of the global batch: the rows of all
  ranks are gathered with :func:`cvdist.losses.contrastive.gather_with_grad` and every rank
  computes the whole loss; the gather's backward sums the ranks' gradients for a rank's rows, so
  each rank back-propagates ``world_size`` times the gradient, which DDP's mean divides back out.
* Barlow Twins: the batch-norm statistics and the cross-correlation matrix are sums over the
  global batch, all-reduced with :func:`all_reduce_with_grad` (backward: the same all-reduce of
  the gradients, the argument above once more).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch.nn import functional as F

from cvdist.losses.contrastive import GatherFn, _gathered

ReduceFn = Callable[[torch.Tensor], torch.Tensor]


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32 at least: half-precision statistics and softmaxes lose the small differences the
    losses are made of."""
    return x if x.dtype == torch.float64 else x.float()


def byol_loss(p_a: torch.Tensor, p_b: torch.Tensor, k_a: torch.Tensor, k_b: torch.Tensor) -> torch.Tensor:
    """BYOL's symmetrised loss: ``mean(2 - 2 cos(p_a, k_b)) + mean(2 - 2 cos(p_b, k_a))``, the
    squared distance of L2-normalised vectors; predictions ``p`` of the online branch, targets ``k``
    of the momentum branch (detached: no gradient reaches the target)."""
    def one(p: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (2 - 2 * F.cosine_similarity(_wide(p), _wide(k.detach()), dim=1)).mean()
    return one(p_a, k_b) + one(p_b, k_a)


def simsiam_loss(p_a: torch.Tensor, p_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """SimSiam's symmetrised negative cosine: ``-(mean cos(p_a, z_b) + mean cos(p_b, z_a)) / 2``
    with a stop-gradient on the projections ``z`` (the target branch)."""
    def one(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(_wide(p), _wide(z.detach()), dim=1).mean()
    return -(one(p_a, z_b) + one(p_b, z_a)) / 2


class _AllReduceWithGrad(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients over ranks.

    Ours rather than ``torch.distributed.nn.functional.all_reduce``: that function's default
    ``group=group.WORLD`` is evaluated when its module is first imported, so importing it after
    ``init_process_group`` pins the gloo group for the life of the process; its worker threads then
    outlive ``destroy_process_group`` and abort the interpreter's exit now and then ("terminate
    called without an active exception", SIGABRT after all work is done)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceWithGrad.apply(grad)


def all_reduce_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of every rank's ``tensor``; the backward sums the ranks' gradients the same way.
    ``tensor`` itself without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _AllReduceWithGrad.apply(tensor)


def _all_reduce_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, *, center: torch.Tensor,
              student_temperature: float = 0.1, teacher_temperature: float = 0.04, center_momentum: float = 0.9,
              world_size: int = 1, all_reduce_fn: Optional[ReduceFn] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """DINO's loss and the next center.

    ``student``: ``(V, B, K)`` prototype scores of V crops (the 2 global crops first, then the
    local ones); ``teacher``: ``(2, B, K)`` scores of the teacher on the 2 global crops. Loss: the
    mean over pairs (teacher view t, student view v != t) of the cross-entropy between
    ``softmax((teacher[t] - center) / teacher_temperature)`` (detached) and
    ``log_softmax(student[v] / student_temperature)``, averaged over the B images. Next center:
    ``center_momentum * center + (1 - center_momentum) * mean`` of the teacher rows of all ranks
    (summed by ``all_reduce_fn``, default ``torch.distributed.all_reduce``)."""
    if student.ndim != 3 or teacher.ndim != 3 or teacher.shape[0] != 2 or student.shape[0] < 2 \
            or student.shape[1:] != teacher.shape[1:]:
        raise ValueError(f"student {tuple(student.shape)} must be (V >= 2, B, K) and teacher "
                         f"{tuple(teacher.shape)} (2, B, K)")
    teacher = _wide(teacher.detach())
    targets = F.softmax((teacher - center) / teacher_temperature, dim=-1)
    log_probs = F.log_softmax(_wide(student) / student_temperature, dim=-1)
    terms = [(-targets[t] * log_probs[v]).sum(dim=-1).mean()
             for t in range(2) for v in range(student.shape[0]) if v != t]
    batch_sum = teacher.sum(dim=(0, 1))
    if world_size > 1:
        batch_sum = (all_reduce_fn or _all_reduce_no_grad)(batch_sum)
    rows = teacher.shape[0] * teacher.shape[1] * world_size
    new_center = center_momentum * center + (1 - center_momentum) * batch_sum / rows
    return torch.stack(terms).mean(), new_center


def vicreg_loss(z_a: torch.Tensor, z_b: torch.Tensor, *, invariance_weight: float = 25.0,
                variance_weight: float = 25.0, covariance_weight: float = 1.0, world_size: int = 1,
                gather_fn: Optional[GatherFn] = None) -> torch.Tensor:
    """VICReg on the rows of all ranks: ``invariance_weight * MSE(z_a, z_b)`` +
    ``variance_weight * mean_d relu(1 - sqrt(var_d + 1e-4))`` per branch +
    ``covariance_weight * sum of squared off-diagonal covariances / D`` per branch (unbiased
    batch variance and covariance, as in the paper)."""
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"z_a {tuple(z_a.shape)} and z_b {tuple(z_b.shape)} must both be (B, D)")
    z_a = _gathered(_wide(z_a), world_size=world_size, gather_fn=gather_fn)
    z_b = _gathered(_wide(z_b), world_size=world_size, gather_fn=gather_fn)
    rows, dim = z_a.shape
    if rows < 2:
        raise ValueError("vicreg_loss needs at least 2 rows over all ranks (a batch variance)")
    invariance = F.mse_loss(z_a, z_b)
    variance = covariance = 0.0
    for z in (z_a, z_b):
        z = z - z.mean(dim=0)
        variance = variance + F.relu(1 - torch.sqrt(z.var(dim=0) + 1e-4)).mean()
        cov = z.T @ z / (rows - 1)
        covariance = covariance + (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / dim
    return invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance


def barlow_twins_loss(z_a: torch.Tensor, z_b: torch.Tensor, *, off_diagonal_weight: float = 0.005,
                      world_size: int = 1, all_reduce_fn: Optional[ReduceFn] = None) -> torch.Tensor:
    """Barlow Twins: each branch normalised per dimension with the global batch's mean and
    (biased) standard deviation, as an affine-free BatchNorm would; cross-correlation
    ``c = z_a_n^T z_b_n / N`` over all ranks' N rows; loss ``sum_i (1 - c_ii)^2 +
    off_diagonal_weight * sum_{i != j} c_ij^2``. Sums over ranks by ``all_reduce_fn`` (default
    :func:`all_reduce_with_grad`)."""
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"z_a {tuple(z_a.shape)} and z_b {tuple(z_b.shape)} must both be (B, D)")
    reduce = (all_reduce_fn or all_reduce_with_grad) if world_size > 1 else (lambda t: t)
    rows = z_a.shape[0] * world_size

    def normalised(z: torch.Tensor) -> torch.Tensor:
        z = _wide(z)
        mean = reduce(z.sum(dim=0)) / rows
        var = reduce((z - mean).pow(2).sum(dim=0)) / rows
        return (z - mean) / torch.sqrt(var + 1e-5)  # BatchNorm1d's epsilon

    c = reduce(normalised(z_a).T @ normalised(z_b)) / rows
    on_diagonal = (1 - c.diagonal()).pow(2).sum()
    off_diagonal = c.pow(2).sum() - c.diagonal().pow(2).sum()
    return on_diagonal + off_diagonal_weight * off_diagonal
