"""Parts of the contrastive pretraining recipe: the model and the training step (two views, the
loss, the momentum update); the kNN / linear-probe evaluation is :class:`cvdist.eval.knn.KnnEvaluator`.

The model is :class:`cvdist.models.heads.SSLModel`: the classifier of ``model.name`` with its
head slot holding the method's heads (:mod:`cvdist.tasks.contrastive.methods`), so its keys
are the classifier's trunk keys plus ``<head>.*``, and ``recipes/longtail.py
transfer.from_path=<run>`` loads the trunk. Everything a resumed run needs lives in the model
(momentum encoder, DINO's center buffer) or follows from the engine's ``Progress`` restored
with the checkpoint (the view draws, the momentum and teacher-temperature schedules).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from cvdist.config import DataConfig
from cvdist.data.batch_views import ViewAugmentation, multi_crop_views, two_views
from cvdist.engine import Progress
from cvdist.models import build_model
from cvdist.models.backbones import remove_head
from cvdist.models.heads import SSLModel, momentum_at, update_momentum_encoder
from cvdist.tasks.contrastive.config import MOMENTUM_METHODS, ContrastiveRunConfig, SSLConfig
from cvdist.tasks.contrastive.methods import build_heads, ssl_loss


def build_contrastive_model(config: ContrastiveRunConfig) -> SSLModel:
    """The trunk of ``model.name`` with the heads ``ssl.method`` needs."""
    ssl, model_cfg = config.ssl, config.model
    trunk = build_model(name=model_cfg.name, num_classes=model_cfg.num_classes, in_channels=model_cfg.in_channels,
                        small_stem=model_cfg.small_stem)
    head_name, feature_dim = remove_head(trunk)
    return SSLModel(trunk, head_name=head_name, heads=build_heads(trunk, feature_dim=feature_dim, ssl=ssl))


def view_augmentation(ssl: SSLConfig) -> ViewAugmentation:
    """The ``ssl.view_*`` settings."""
    return ViewAugmentation(scale=tuple(ssl.view_scale), ratio=tuple(ssl.view_ratio), flip=ssl.view_flip,
                            vflip=ssl.view_vflip, rotation_degrees=ssl.view_rotation_degrees,
                            brightness=ssl.view_brightness, contrast=ssl.view_contrast)


class ContrastiveStep:
    """The task's ``compute_loss`` (two views of the batch, or two global + ``ssl.num_local_crops``
    local ones, and the method's loss; labels unused) and ``on_step_end`` (the momentum update of
    MoCo v3, BYOL and DINO). The views are seeded by (seed, rank, the run-wide micro-batch index of
    ``Progress``), so a resumed run draws the same ones; every schedule is a function of the step."""

    def __init__(self, *, model: SSLModel, ssl: SSLConfig, data: DataConfig, seed: int, rank: int, world_size: int):
        self.model, self.ssl, self.augmentation = model, ssl, view_augmentation(ssl)
        self.local_augmentation = replace(self.augmentation, scale=tuple(ssl.local_crop_scale))
        self.mean, self.std, self.seed = list(data.mean), list(data.std), seed
        self.rank, self.world_size = rank, world_size

    def __call__(self, model: nn.Module, batch: dict, progress: Progress) -> tuple[torch.Tensor, dict[str, Any]]:
        draw = dict(seed=self.seed, rank=self.rank, index=progress.micro_batch, mean=self.mean, std=self.std)
        if self.ssl.num_local_crops:
            views = multi_crop_views(batch["image"], self.augmentation, self.local_augmentation,
                                     num_local=self.ssl.num_local_crops, local_size=self.ssl.local_crop_size, **draw)
        else:
            views = two_views(batch["image"], self.augmentation, **draw)
        return ssl_loss(model(*views), ssl=self.ssl, heads=self.model.heads, step=progress.step, rank=self.rank,
                        world_size=self.world_size)

    def on_step_end(self, progress: Progress) -> None:
        """MoCo v3, BYOL, DINO: EMA of the online trunk and projector into the momentum encoder."""
        if self.ssl.method in MOMENTUM_METHODS:
            update_momentum_encoder(self.model, momentum=momentum_at(progress.step, total_steps=progress.total_steps,
                                                                     base=self.ssl.momentum))
