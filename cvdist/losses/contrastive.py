"""Contrastive losses with negatives from every rank: NT-Xent (SimCLR), InfoNCE (MoCo v3) and the
triplet margin loss. Pure functions; no process group is needed when ``world_size`` is 1.

Signatures (stable; other recipes import them)::

    nt_xent_loss(z_a, z_b, *, temperature=0.1, rank=0, world_size=1, gather_fn=None) -> Tensor
    info_nce_loss(queries, keys, *, temperature=0.2, rank=0, world_size=1, gather_fn=None) -> Tensor
    moco_v3_loss(q_a, q_b, k_a, k_b, *, temperature=0.2, rank=0, world_size=1, gather_fn=None) -> Tensor
    triplet_margin_loss(z_a, z_b, *, margin=0.2, rank=0, world_size=1, gather_fn=None) -> Tensor
    gather_with_grad(tensor) -> Tensor      # all ranks' rows, in rank order, gradients flow back

``z_a[i]`` and ``z_b[i]`` are the embeddings of two views of this rank's image ``i`` (B rows on
every rank). With ``world_size`` > 1 the rows of all ranks are gathered (``gather_fn``, default
:func:`gather_with_grad` on the default process group) and serve as negatives; each rank's loss
averages over its own anchors only. The mean of the ranks' losses is then the single-process
loss on the concatenated batch of ``world_size * B`` images, and the gradients DDP averages are
the single-process gradients: the gather's backward sums every rank's gradient for a rank's rows
(all-reduce), so each rank back-propagates ``world_size`` times its share, which DDP's mean over
ranks divides back out.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch.nn import functional as F

GatherFn = Callable[[torch.Tensor], torch.Tensor]


def _unit(z: torch.Tensor) -> torch.Tensor:
    """L2-normalised rows, in float32 at least (half-precision logits overflow at low temperatures)."""
    return F.normalize(z if z.dtype == torch.float64 else z.float(), dim=1)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward all-reduces the gradients and returns this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` (same shape on all ranks) concatenated in rank order, with
    gradients flowing back to each rank's own rows; ``tensor`` itself without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def _gathered(tensor: torch.Tensor, *, world_size: int, gather_fn: Optional[GatherFn]) -> torch.Tensor:
    if world_size == 1:
        return tensor
    out = (gather_fn or gather_with_grad)(tensor)
    if out.shape[0] != world_size * tensor.shape[0]:
        raise ValueError(f"gathered {out.shape[0]} rows from {tensor.shape[0]} per rank and world_size={world_size}; "
                         "every rank needs the same batch size, and world_size must match the process group")
    return out


def nt_xent_loss(z_a: torch.Tensor, z_b: torch.Tensor, *, temperature: float = 0.1, rank: int = 0,
                 world_size: int = 1, gather_fn: Optional[GatherFn] = None) -> torch.Tensor:
    """SimCLR's NT-Xent: for each of the 2B local anchors (both views), cross-entropy of its
    positive (the other view of its image) against all 2NB - 1 other embeddings of all ranks,
    cosine similarities divided by ``temperature``; mean over the local anchors."""
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"z_a {tuple(z_a.shape)} and z_b {tuple(z_b.shape)} must both be (B, D)")
    z_a, z_b = _unit(z_a), _unit(z_b)
    rows = z_a.shape[0]
    keys = torch.cat([_gathered(z_a, world_size=world_size, gather_fn=gather_fn),
                      _gathered(z_b, world_size=world_size, gather_fn=gather_fn)])
    total = keys.shape[0] // 2  # N * B images over all ranks
    anchors = torch.cat([z_a, z_b])
    logits = anchors @ keys.T / temperature
    local = torch.arange(rows, device=z_a.device) + rank * rows
    own = torch.cat([local, local + total])  # each anchor's own column
    positive = torch.cat([local + total, local])
    is_own = torch.zeros_like(logits, dtype=torch.bool)
    is_own[torch.arange(2 * rows, device=z_a.device), own] = True
    return F.cross_entropy(logits.masked_fill(is_own, float("-inf")), positive)


def info_nce_loss(queries: torch.Tensor, keys: torch.Tensor, *, temperature: float = 0.2, rank: int = 0,
                  world_size: int = 1, gather_fn: Optional[GatherFn] = None) -> torch.Tensor:
    """InfoNCE: query ``i`` against all ranks' keys, its positive being its own key ``i``;
    cosine similarities / ``temperature``, mean over the local queries. Keys that need no
    gradient (a momentum encoder's) are gathered without one."""
    queries, keys = _unit(queries), _unit(keys)
    all_keys = _gathered(keys, world_size=world_size, gather_fn=gather_fn)
    logits = queries @ all_keys.T / temperature
    labels = torch.arange(queries.shape[0], device=queries.device) + rank * queries.shape[0]
    return F.cross_entropy(logits, labels)


def moco_v3_loss(q_a: torch.Tensor, q_b: torch.Tensor, k_a: torch.Tensor, k_b: torch.Tensor, *,
                 temperature: float = 0.2, rank: int = 0, world_size: int = 1,
                 gather_fn: Optional[GatherFn] = None) -> torch.Tensor:
    """MoCo v3's symmetrised loss: ``2 * temperature * (InfoNCE(q_a, k_b) + InfoNCE(q_b, k_a))``,
    queries from the online encoder's predictor, keys from the momentum encoder (detached)."""
    common = dict(temperature=temperature, rank=rank, world_size=world_size, gather_fn=gather_fn)
    return 2 * temperature * (info_nce_loss(q_a, k_b.detach(), **common) + info_nce_loss(q_b, k_a.detach(), **common))


def triplet_margin_loss(z_a: torch.Tensor, z_b: torch.Tensor, *, margin: float = 0.2, rank: int = 0,
                        world_size: int = 1, gather_fn: Optional[GatherFn] = None) -> torch.Tensor:
    """Triplet margin loss on L2-normalised embeddings: anchor ``z_a[i]``, positive ``z_b[i]``
    (the other view), negative the hardest (closest) other image's second view on any rank;
    ``mean(relu(d(a, p) - d(a, n) + margin))`` with Euclidean distances."""
    z_a, z_b = _unit(z_a), _unit(z_b)
    keys = _gathered(z_b, world_size=world_size, gather_fn=gather_fn)
    # ||a - b||^2 = 2 - 2 a.b for unit vectors; clamped so the square root's gradient stays finite
    distances = (2 - 2 * z_a @ keys.T).clamp_min(1e-12).sqrt()
    rows = torch.arange(z_a.shape[0], device=z_a.device)
    own = rows + rank * z_a.shape[0]
    positive = distances[rows, own]
    negative = distances.index_put((rows, own), torch.full_like(positive, float("inf"))).min(dim=1).values
    return F.relu(positive - negative + margin).mean()
