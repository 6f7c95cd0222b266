"""Parts of the contrastive pretraining recipe: the model and the training step (two views, the
loss, the momentum update); the kNN / linear-probe evaluation is :class:`cvdist.eval.knn.KnnEvaluator`.

The model is :class:`cvdist.models.heads.SSLModel`: the classifier of ``model.name`` with its
head slot holding the projector (and, for MoCo v3, predictor and momentum encoder), so its keys
are the classifier's trunk keys plus ``<head>.*``, and ``recipes/longtail.py
transfer.from_path=<run>`` loads the trunk. Everything a resumed run needs lives in the model
(momentum encoder) or in the step's ``state_dict`` (how many batches it augmented, saved as the
engine's ``extra_state``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cvdist.config import DataConfig
from cvdist.data.batch_views import ViewAugmentation, two_views
from cvdist.engine import Progress
from cvdist.losses.contrastive import moco_v3_loss, nt_xent_loss, triplet_margin_loss
from cvdist.models import build_model
from cvdist.models.backbones import remove_head
from cvdist.models.heads import PredictionHead, ProjectionMLP, SSLHeads, SSLModel, momentum_at, update_momentum_encoder
from cvdist.tasks.contrastive.config import ContrastiveRunConfig, SSLConfig


def build_contrastive_model(config: ContrastiveRunConfig) -> SSLModel:
    """The trunk of ``model.name`` with the heads ``ssl.method`` needs."""
    ssl, model_cfg = config.ssl, config.model
    trunk = build_model(name=model_cfg.name, num_classes=model_cfg.num_classes, in_channels=model_cfg.in_channels,
                        small_stem=model_cfg.small_stem)
    head_name, feature_dim = remove_head(trunk)
    moco = ssl.method == "moco_v3"
    projector = ProjectionMLP(feature_dim, hidden_dim=ssl.projection_hidden_dim, out_dim=ssl.projection_dim,
                              num_layers=ssl.projection_layers, last_bn=moco)
    predictor = PredictionHead(ssl.projection_dim, hidden_dim=ssl.prediction_hidden_dim) if moco else None
    return SSLModel(trunk, head_name=head_name, heads=SSLHeads(trunk, projector=projector, predictor=predictor,
                                                               momentum=moco))


def view_augmentation(ssl: SSLConfig) -> ViewAugmentation:
    """The ``ssl.view_*`` settings."""
    return ViewAugmentation(scale=tuple(ssl.view_scale), ratio=tuple(ssl.view_ratio), flip=ssl.view_flip,
                            vflip=ssl.view_vflip, rotation_degrees=ssl.view_rotation_degrees,
                            brightness=ssl.view_brightness, contrast=ssl.view_contrast)


class ContrastiveStep:
    """The task's ``compute_loss`` (two views of the batch, the method's loss; labels unused) and
    ``on_step_end`` (MoCo v3's momentum update). The views are seeded by (seed, rank, the run-wide
    micro-batch index of ``Progress``), so a resumed run draws the same ones."""

    def __init__(self, *, model: SSLModel, ssl: SSLConfig, data: DataConfig, seed: int, rank: int, world_size: int):
        self.model, self.ssl, self.augmentation = model, ssl, view_augmentation(ssl)
        self.mean, self.std, self.seed = list(data.mean), list(data.std), seed
        self.rank, self.world_size = rank, world_size

    def __call__(self, model: nn.Module, batch: dict, progress: Progress) -> tuple[torch.Tensor, dict[str, Any]]:
        view_a, view_b = two_views(batch["image"], self.augmentation, seed=self.seed, rank=self.rank,
                                   index=progress.micro_batch, mean=self.mean, std=self.std)
        out = model(view_a, view_b)
        common = dict(rank=self.rank, world_size=self.world_size)
        if self.ssl.method == "simclr":
            loss = nt_xent_loss(out["z_a"], out["z_b"], temperature=self.ssl.temperature, **common)
        elif self.ssl.method == "moco_v3":
            loss = moco_v3_loss(out["p_a"], out["p_b"], out["k_a"], out["k_b"], temperature=self.ssl.temperature,
                                **common)
        else:
            loss = triplet_margin_loss(out["z_a"], out["z_b"], margin=self.ssl.triplet_margin, **common)
        return loss, {}

    def on_step_end(self, progress: Progress) -> None:
        """MoCo v3: EMA of the online trunk and projector into the momentum encoder."""
        if self.ssl.method == "moco_v3":
            update_momentum_encoder(self.model, momentum=momentum_at(progress.step, total_steps=progress.total_steps,
                                                                     base=self.ssl.momentum))
