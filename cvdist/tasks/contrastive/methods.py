"""The methods of ``ssl.method``: the heads each one puts on the trunk and its loss on the
model's outputs (the dict :class:`cvdist.models.heads.SSLModel` returns for the views).

| method        | heads                                      | loss (cvdist.losses)              |
| simclr        | projector                                  | nt_xent_loss                      |
| triplet       | projector                                  | triplet_margin_loss               |
| moco_v3       | projector (last BN), predictor, momentum   | moco_v3_loss                      |
| byol          | projector, predictor, momentum             | byol_loss                         |
| simsiam       | projector (last BN), predictor             | simsiam_loss                      |
| dino          | DINO head, momentum (teacher), center      | dino_loss (center updated here)   |
| vicreg        | projector                                  | vicreg_loss                       |
| barlow_twins  | projector                                  | barlow_twins_loss                 |
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cvdist.losses.contrastive import moco_v3_loss, nt_xent_loss, triplet_margin_loss
from cvdist.losses.ssl import barlow_twins_loss, byol_loss, dino_loss, simsiam_loss, vicreg_loss
from cvdist.models.heads import DINOHead, PredictionHead, ProjectionMLP, SSLHeads
from cvdist.tasks.contrastive.config import MOMENTUM_METHODS, SSLConfig


def build_heads(trunk: nn.Module, *, feature_dim: int, ssl: SSLConfig) -> SSLHeads:
    """The heads ``ssl.method`` needs on ``trunk`` (features of size ``feature_dim``)."""
    method = ssl.method
    if method == "dino":
        projector: nn.Module = DINOHead(feature_dim, hidden_dim=ssl.projection_hidden_dim,
                                        bottleneck_dim=ssl.dino_bottleneck_dim, num_prototypes=ssl.dino_num_prototypes,
                                        num_layers=ssl.projection_layers)
        return SSLHeads(trunk, projector=projector, momentum=True, center_dim=ssl.dino_num_prototypes)
    last_bn = method in ("moco_v3", "simsiam")  # as in their papers
    projector = ProjectionMLP(feature_dim, hidden_dim=ssl.projection_hidden_dim, out_dim=ssl.projection_dim,
                              num_layers=ssl.projection_layers, last_bn=last_bn)
    predictor = None
    if method in ("moco_v3", "byol", "simsiam"):
        predictor = PredictionHead(ssl.projection_dim, hidden_dim=ssl.prediction_hidden_dim)
    return SSLHeads(trunk, projector=projector, predictor=predictor, momentum=method in MOMENTUM_METHODS)


def teacher_temperature_at(step: int, *, ssl: SSLConfig) -> float:
    """DINO's teacher temperature: linear from the warmup value to the final one over the warmup
    steps, then constant (a function of the step, so a resumed run continues it exactly)."""
    if step >= ssl.dino_teacher_warmup_steps:
        return ssl.dino_teacher_temperature
    fraction = step / ssl.dino_teacher_warmup_steps
    return ssl.dino_warmup_teacher_temperature + fraction * (ssl.dino_teacher_temperature
                                                             - ssl.dino_warmup_teacher_temperature)


def _dino(out: dict, *, ssl: SSLConfig, heads: SSLHeads, step: int, world_size: int) -> tuple[torch.Tensor, dict]:
    student = [out["z_a"], out["z_b"]]
    if "z_local" in out:
        student += list(out["z_local"].chunk(ssl.num_local_crops))
    temperature = teacher_temperature_at(step, ssl=ssl)
    loss, center = dino_loss(torch.stack(student), torch.stack([out["k_a"], out["k_b"]]), center=heads.center,
                             student_temperature=ssl.dino_student_temperature, teacher_temperature=temperature,
                             center_momentum=ssl.dino_center_momentum, world_size=world_size)
    with torch.no_grad():  # the center is state: the next batch's teacher is centred with it
        heads.center.copy_(center)
    return loss, {"train/teacher_temperature": temperature}


def ssl_loss(out: dict, *, ssl: SSLConfig, heads: SSLHeads, step: int, rank: int,
             world_size: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """The loss of ``ssl.method`` on the model's outputs ``out`` and the metrics to log; DINO
    also moves ``heads.center``. ``step``: optimiser steps taken (for the schedules)."""
    method, common = ssl.method, dict(rank=rank, world_size=world_size)
    if method == "dino":
        return _dino(out, ssl=ssl, heads=heads, step=step, world_size=world_size)
    if method == "simclr":
        loss = nt_xent_loss(out["z_a"], out["z_b"], temperature=ssl.temperature, **common)
    elif method == "moco_v3":
        loss = moco_v3_loss(out["p_a"], out["p_b"], out["k_a"], out["k_b"], temperature=ssl.temperature, **common)
    elif method == "triplet":
        loss = triplet_margin_loss(out["z_a"], out["z_b"], margin=ssl.triplet_margin, **common)
    elif method == "byol":
        loss = byol_loss(out["p_a"], out["p_b"], out["k_a"], out["k_b"])
    elif method == "simsiam":
        loss = simsiam_loss(out["p_a"], out["p_b"], out["z_a"], out["z_b"])
    elif method == "vicreg":
        loss = vicreg_loss(out["z_a"], out["z_b"], invariance_weight=ssl.vicreg_invariance_weight,
                           variance_weight=ssl.vicreg_variance_weight, covariance_weight=ssl.vicreg_covariance_weight,
                           world_size=world_size)
    else:
        loss = barlow_twins_loss(out["z_a"], out["z_b"], off_diagonal_weight=ssl.barlow_lambda, world_size=world_size)
    return loss, {}
