"""Heads for self-supervised pretraining and the model that carries them on a trunk.

* :class:`ProjectionMLP` (Linear-BN-ReLU ... Linear, optionally a last BN as in MoCo v3) and
  :class:`PredictionHead` (the same MLP shape, for MoCo v3 / BYOL's online branch).
* :class:`SSLModel`: a classifier trunk (:func:`cvdist.models.backbones.remove_head`) plus a
  :class:`SSLHeads` module in the classifier head's slot. The trunk's children are registered as
  the model's own (no key prefix) and everything else lives under the head's name, so the
  ``state_dict`` keys are the classifier's trunk keys plus ``<head>.*``, which
  :mod:`cvdist.models.transfer` drops: a pretraining run transfers into ``recipes/longtail.py`` as is.
* :class:`DINOHead`: MLP to a bottleneck, L2 normalisation, weight-normalised prototype layer.
* The momentum encoder (MoCo v3, BYOL, DINO's teacher): a frozen copy of trunk and projector inside :class:`SSLHeads`
  (so checkpoints carry it), updated with :func:`momentum_update` after each optimiser step.
"""

from __future__ import annotations

import copy
import math
from typing import Optional

import torch
from torch import nn


class ProjectionMLP(nn.Sequential):
    """``num_layers`` linear layers, BN + ReLU between them; ``last_bn`` adds an affine-free BN
    after the last one (MoCo v3's projector)."""

    def __init__(self, in_dim: int, *, hidden_dim: int, out_dim: int, num_layers: int = 2, last_bn: bool = False):
        if num_layers < 1:
            raise ValueError(f"num_layers={num_layers} must be >= 1")
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == num_layers - 1
            layers.append(nn.Linear(d_in, d_out, bias=last and not last_bn))
            if not last:
                layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        if last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        super().__init__(*layers)


class PredictionHead(ProjectionMLP):
    """MoCo v3 / BYOL's predictor: a 2-layer MLP from the projection space back to it."""

    def __init__(self, dim: int, *, hidden_dim: int):
        super().__init__(dim, hidden_dim=hidden_dim, out_dim=dim, num_layers=2)


class DINOHead(nn.Module):
    """DINO's head: an MLP (:class:`ProjectionMLP`) to ``bottleneck_dim``, L2 normalisation, then
    ``num_prototypes`` scores against unit-norm prototypes (the weight-normalised last layer with
    its norm fixed to 1, the paper's ``norm_last_layer``)."""

    def __init__(self, in_dim: int, *, hidden_dim: int, bottleneck_dim: int, num_prototypes: int, num_layers: int = 3):
        super().__init__()
        self.mlp = ProjectionMLP(in_dim, hidden_dim=hidden_dim, out_dim=bottleneck_dim, num_layers=num_layers)
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = nn.functional.normalize(self.mlp(features), dim=-1)
        return nn.functional.linear(x, nn.functional.normalize(self.prototypes, dim=-1))


class SSLHeads(nn.Module):
    """What a pretraining method adds to the trunk: projector, optional predictor, optional
    momentum copies of trunk and projector (frozen: no gradients, updated by EMA), and with
    ``center_dim`` DINO's center (a buffer, so checkpoints carry it)."""

    def __init__(self, trunk: nn.Module, *, projector: nn.Module, predictor: Optional[nn.Module] = None,
                 momentum: bool = False, center_dim: int = 0):
        super().__init__()
        self.projector, self.predictor = projector, predictor
        self.center: Optional[torch.Tensor]
        self.register_buffer("center", torch.zeros(center_dim) if center_dim else None)
        self.momentum_trunk: Optional[nn.Module] = None
        self.momentum_projector: Optional[nn.Module] = None
        if momentum:
            self.momentum_trunk, self.momentum_projector = copy.deepcopy(trunk), copy.deepcopy(projector)
            for parameter in [*self.momentum_trunk.parameters(), *self.momentum_projector.parameters()]:
                parameter.requires_grad_(False)


class SSLModel(nn.Module):
    """``trunk`` (a classifier whose head slot ``head_name`` holds ``nn.Identity``) with ``heads``
    registered in that slot (see the module docstring for the key layout).

    ``model(images)`` returns the trunk's features; ``model(view_a, view_b)`` returns
    ``{"z_a", "z_b"}`` projections, plus ``"p_a", "p_b"`` (predictor) and ``"k_a", "k_b"``
    (momentum encoder, no gradient) when the heads have them; ``model(view_a, view_b, local)``
    adds ``"z_local"``, the projections of the local crops (any size the trunk accepts; the
    momentum encoder sees the global views only, as DINO's teacher). DDP / DeepSpeed pass all views."""

    def __init__(self, trunk: nn.Module, *, head_name: str, heads: SSLHeads):
        super().__init__()
        if not isinstance(trunk.get_submodule(head_name), nn.Identity):
            raise ValueError(f"the trunk's head slot {head_name!r} must hold nn.Identity (use remove_head)")
        own = [n for n, _ in trunk.named_parameters(recurse=False)] + [n for n, _ in trunk.named_buffers(recurse=False)]
        if own or "." in head_name:
            raise ValueError("SSLModel needs a trunk whose weights live in submodules and a top-level head slot")
        for name, child in trunk.named_children():
            if name != head_name:
                self.add_module(name, child)
        self.add_module(head_name, heads)
        self.head_name = head_name
        self._trunk = (trunk,)  # a tuple: the trunk's modules are registered above, without a prefix

    @property
    def heads(self) -> SSLHeads:
        return self.get_submodule(self.head_name)

    @property
    def trunk(self) -> nn.Module:
        return self._trunk[0]

    def train(self, mode: bool = True) -> "SSLModel":
        super().train(mode)
        self.trunk.training = mode  # the children are shared; keep the trunk's own flag in step
        return self

    def forward(self, images: torch.Tensor, second: Optional[torch.Tensor] = None,
                local: Optional[torch.Tensor] = None):
        if second is None:
            return self.trunk(images)
        heads, rows = self.heads, images.shape[0]
        both = torch.cat([images, second])
        z = heads.projector(self.trunk(both))
        out = {"z_a": z[:rows], "z_b": z[rows:]}
        if local is not None:  # a separate pass: the local crops are smaller
            out["z_local"] = heads.projector(self.trunk(local))
        if heads.predictor is not None:
            p = heads.predictor(z)
            out.update(p_a=p[:rows], p_b=p[rows:])
        if heads.momentum_trunk is not None:
            with torch.no_grad():
                k = heads.momentum_projector(heads.momentum_trunk(both))
            out.update(k_a=k[:rows], k_b=k[rows:])
        return out


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, *, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online`` for every parameter (same
    structure); buffers (BN statistics) are left to the target's own forward passes."""
    online_params, target_params = list(online.parameters()), list(target.parameters())
    if len(online_params) != len(target_params):
        raise ValueError("online and target modules differ in structure")
    for source, dest in zip(online_params, target_params):
        dest.mul_(momentum).add_(source.detach().to(dest.dtype), alpha=1.0 - momentum)


def momentum_at(step: int, *, total_steps: int, base: float) -> float:
    """MoCo v3 / BYOL's schedule: ``base`` at step 0, rising to 1 along a half cosine."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def update_momentum_encoder(model: SSLModel, *, momentum: float) -> None:
    """One EMA step of ``model``'s momentum trunk and projector towards the online ones."""
    heads = model.heads
    if heads.momentum_trunk is None:
        raise ValueError("the model has no momentum encoder (built with momentum=False)")
    momentum_update(model.trunk, heads.momentum_trunk, momentum=momentum)
    momentum_update(heads.projector, heads.momentum_projector, momentum=momentum)
