"""Parts of the autoencoder / multi-task pretraining recipe: the model, the training step, and
the evaluation that writes reconstruction grids.

Models keep the classifier's key layout so that the trained trunk transfers with
``cvdist.models.transfer`` (``recipes/longtail.py transfer.from_path=<run>``):

* ``conv``: ``cvdist.models.build_model(model.name)`` with its head (the last ``nn.Linear``)
  replaced, in the same slot, by :class:`cvdist.models.decoders.PretrainHeads` (decoder,
  rotation head, projector); the trunk's keys are the classifier's, the pretraining heads live
  under the head's name, which transfer drops.
* ``mae``: :class:`cvdist.models.vit.MaskedAutoencoder`, whose decoder is the ViT's ``head``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from cvdist import comm
from cvdist.data.batch_views import ViewAugmentation, two_views
from cvdist.data.from_config import build_bank_batches
from cvdist.engine import Progress
from cvdist.eval.knn import KnnEvaluator
from cvdist.losses.contrastive import nt_xent_loss
from cvdist.losses.reconstruction import (NUM_ROTATIONS, masked_mse, per_sample_mse, reconstruction_mse, rotation_batch,
                                          rotation_loss)
from cvdist.models import build_model
from cvdist.models.backbones import remove_head
from cvdist.models.decoders import ConvDecoder, PretrainHeads
from cvdist.models.heads import ProjectionMLP
from cvdist.models.vit import MaskedAutoencoder, build_mae, mae_reconstruction, patch_targets
from cvdist.tasks.autoencoder.config import AutoencoderRunConfig, active_tasks


def build_pretrain_model(config: AutoencoderRunConfig) -> nn.Module:
    """The model ``config.ae`` / ``config.multitask`` describe (see the module docstring)."""
    ae, model_cfg = config.ae, config.model
    if ae.kind == "mae":
        return build_mae(name=ae.vit, in_channels=model_cfg.in_channels, mask_ratio=ae.mask_ratio,
                         decoder_dim=ae.decoder_dim, decoder_depth=ae.decoder_depth, decoder_heads=ae.decoder_heads)
    model = build_model(name=model_cfg.name, num_classes=model_cfg.num_classes, in_channels=model_cfg.in_channels,
                        small_stem=model_cfg.small_stem)
    head_name, feature_dim = remove_head(model)
    tasks = active_tasks(config)
    heads = PretrainHeads(
        decoder=ConvDecoder(feature_dim=feature_dim, out_channels=model_cfg.in_channels,
                            image_size=config.data.image_size, channels=tuple(ae.decoder_channels)),
        rotation=nn.Linear(feature_dim, NUM_ROTATIONS) if "rotation" in tasks else None,
        projection=(ProjectionMLP(feature_dim, hidden_dim=config.multitask.projection_hidden_dim,
                                  out_dim=config.multitask.projection_dim) if "contrastive" in tasks else None))
    parent_name, _, child = head_name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, heads)
    return model


@dataclass
class ContrastiveViews:
    """How the multi-task step makes and compares two views: ``cvdist.data.batch_views`` crops
    (seeded by (seed, rank, batch index)) and NT-Xent with negatives from all ranks."""

    augmentation: ViewAugmentation
    temperature: float
    seed: int
    rank: int
    world_size: int
    mean: list[float]
    std: list[float]

    def views(self, images: torch.Tensor, *, index: int) -> torch.Tensor:
        """Both views of ``images``, stacked: (2B, C, H, W); ``index`` is the run-wide micro-batch
        index (``Progress.micro_batch``), so a resumed run draws the same views."""
        first, second = two_views(images, self.augmentation, seed=self.seed, rank=self.rank, index=index,
                                  mean=self.mean, std=self.std)
        return torch.cat([first, second])

    def loss(self, projections: torch.Tensor) -> torch.Tensor:
        z_a, z_b = projections.float().chunk(2)
        return nt_xent_loss(z_a, z_b, temperature=self.temperature, rank=self.rank, world_size=self.world_size)


class MultitaskStep:
    """``compute_loss`` of the conv autoencoder and multi-task pretraining, one forward pass:

    * contrastive on: the batch becomes its two augmented views (2B images);
    * rotation on: each image is rotated by its own random k * 90 degrees (both views of an image
      by the same k), k = 0 for a quarter of them;
    * the decoder reconstructs the image the trunk saw, the rotation head predicts k, the
      projections of the two views are compared by NT-Xent.

    Returns the weighted sum and each loss as ``train/loss_<name>``."""

    def __init__(self, *, weights: dict[str, float], contrastive: Optional[ContrastiveViews] = None):
        if ("contrastive" in weights) != (contrastive is not None):
            raise ValueError("the contrastive loss needs its ContrastiveViews settings (and only it does)")
        self.weights, self.contrastive = weights, contrastive

    def __call__(self, model: nn.Module, batch: dict, progress: Progress) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images = batch["image"]
        rows = images.shape[0]
        if self.contrastive is not None:
            images = self.contrastive.views(images, index=progress.micro_batch)
        rotations = None
        if "rotation" in self.weights:
            drawn = torch.randint(NUM_ROTATIONS, (rows,))
            images, rotations = rotation_batch(images, rotations=drawn.repeat(images.shape[0] // rows))
        outputs = model(images)
        losses = {}
        if "reconstruction" in self.weights:
            losses["reconstruction"] = reconstruction_mse(outputs["reconstruction"], images)
        if rotations is not None:
            losses["rotation"] = rotation_loss(outputs["rotation"], rotations)
        if self.contrastive is not None:
            losses["contrastive"] = self.contrastive.loss(outputs["projection"])
        total = sum(self.weights[name] * loss for name, loss in losses.items())
        return total, {f"train/loss_{name}": loss.detach() for name, loss in losses.items()}


class MaeStep:
    """``compute_loss`` of the masked autoencoder: MSE on the masked patches only."""

    def __init__(self, *, patch_size: int, norm_pix: bool):
        self.patch_size, self.norm_pix = patch_size, norm_pix

    def __call__(self, model: nn.Module, batch: dict, progress: Progress) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images = batch["image"]
        outputs = model(images)
        loss = masked_mse(outputs["pred"], patch_targets(images, patch_size=self.patch_size, norm_pix=self.norm_pix),
                          outputs["mask"])
        return loss, {"train/loss_reconstruction": loss.detach()}


def build_train_step(config: AutoencoderRunConfig, model: nn.Module, *, rank: int, world_size: int) -> Callable:
    """The recipe's ``compute_loss`` for ``config.ae.kind`` and ``config.multitask``."""
    if isinstance(model, MaskedAutoencoder):
        return MaeStep(patch_size=model.patch_size, norm_pix=config.ae.norm_pix_loss)
    weights, mt = active_tasks(config), config.multitask
    contrastive = None
    if "contrastive" in weights:
        contrastive = ContrastiveViews(
            augmentation=ViewAugmentation(scale=(mt.view_scale[0], mt.view_scale[1]), vflip=mt.view_vflip,
                                          rotation_degrees=mt.view_rotation_degrees), temperature=mt.temperature,
            seed=config.train.seed, rank=rank, world_size=world_size, mean=config.data.mean, std=config.data.std)
    return MultitaskStep(weights=weights, contrastive=contrastive)


def save_reconstruction_grid(inputs: torch.Tensor, reconstructions: torch.Tensor, *, path: Path,
                             mean: list[float], std: list[float]) -> Path:
    """A PNG with ``inputs`` (normalised images) on the top row and ``reconstructions`` below,
    both mapped back to pixels with the data's ``mean`` / ``std``."""
    from torchvision.utils import save_image

    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    images = torch.cat([inputs.float().cpu(), reconstructions.float().cpu()]) * std_t + mean_t
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.clamp(0, 1), path, nrow=len(inputs), padding=2)
    return path


def build_knn_monitor(config: AutoencoderRunConfig, *, eval_batches: Callable[[], Iterator[dict]], to_device: Callable,
                      rank: int, world_size: int) -> Optional[KnnEvaluator]:
    """The kNN monitor ``config.ae`` asks for (None with ``ae.knn_k=0``)."""
    ae = config.ae
    if not ae.knn_k:
        return None
    bank = build_bank_batches(config.data, in_channels=config.model.in_channels, num_classes=config.model.num_classes,
                              bank_size=ae.knn_bank_size, rank=rank, world_size=world_size, seed=config.train.seed)
    return KnnEvaluator(bank_batches=bank, eval_batches=eval_batches, to_device=to_device,
                        num_classes=config.model.num_classes, k=ae.knn_k, temperature=ae.knn_temperature)


def trunk_features(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``images -> (B, D)`` pooled trunk features of a pretraining model (through its DDP /
    DeepSpeed wrapper; the MAE encoder sees every patch)."""
    if isinstance(getattr(model, "module", model), MaskedAutoencoder):
        return lambda images: model(images, features_only=True)["features"]
    return lambda images: model(images)["features"]


class ReconstructionEvaluator:
    """The recipe's ``evaluate``: mean reconstruction loss over every rank's valid evaluation
    samples (``loss_reconstruction``; for the MAE on masks drawn from a fixed seed, so evaluations
    compare), rotation accuracy with k = index mod 4 (``rotation_top1``, multi-task), and on rank 0
    a grid of the first evaluation images and their reconstructions, ``recon_step<N>.png`` in the
    run directory, passed to ``log_image(key, path, step)``; with ``knn``, its ``knn_top1`` on the
    trunk's pooled features (:func:`trunk_features`).

    Every rank runs the same forward passes (no extra pass for the grid), as ZeRO-3 requires."""

    def __init__(self, *, eval_batches: Callable[[], Iterator[dict]], to_device: Callable, device: torch.device,
                 run_dir: Path, is_main: bool, num_grid_images: int, mean: list[float], std: list[float],
                 norm_pix: bool = False, log_image: Optional[Callable[..., None]] = None, seed: int = 0,
                 knn: Optional[KnnEvaluator] = None):
        self.eval_batches, self.to_device, self.device = eval_batches, to_device, device
        self.run_dir, self.is_main, self.num_grid_images = run_dir, is_main, num_grid_images
        self.mean, self.std, self.norm_pix, self.log_image, self.seed = mean, std, norm_pix, log_image, seed
        self.knn = knn

    def _forward(self, model: nn.Module, images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        plain = getattr(model, "module", model)
        if isinstance(plain, MaskedAutoencoder):
            out = model(images, generator=generator)
            target = patch_targets(images, patch_size=plain.patch_size, norm_pix=self.norm_pix)
            return {"loss": masked_mse(out["pred"], target, out["mask"], reduction="none"),
                    "image": mae_reconstruction(images, out["pred"], out["mask"], patch_size=plain.patch_size,
                                                norm_pix=self.norm_pix)}
        out = model(images)
        result = {"loss": per_sample_mse(out["reconstruction"], images), "image": out["reconstruction"]}
        if "rotation" in out:
            rotations = torch.arange(len(images), device=images.device) % NUM_ROTATIONS
            rotated, _ = rotation_batch(images, rotations=rotations)
            result["rotation_correct"] = (model(rotated)["rotation"].argmax(1) == rotations).float()
        return result

    def __call__(self, model: nn.Module, progress: Progress) -> dict[str, float]:
        generator = torch.Generator(device=self.device).manual_seed(self.seed + 7)
        sums: dict[str, float] = {"count": 0.0, "loss_reconstruction": 0.0}
        grid: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        for batch in self.eval_batches():
            images, valid = self.to_device((batch["image"], batch["valid"]))
            result = self._forward(model, images, generator)
            sums["count"] += float(valid.sum())
            sums["loss_reconstruction"] += float(result["loss"][valid].sum())
            if "rotation_correct" in result:
                sums["rotation_correct"] = sums.get("rotation_correct", 0.0) + float(result["rotation_correct"][valid].sum())
            if grid is None:
                n = min(self.num_grid_images, int(valid.sum()))
                grid = images[valid][:n], result["image"][valid][:n]
        total = comm.all_reduce_sum(sums, self.device)
        count = max(total.pop("count"), 1.0)
        metrics = {"loss_reconstruction": total["loss_reconstruction"] / count}
        if "rotation_correct" in total:
            metrics["rotation_top1"] = total["rotation_correct"] / count
        if self.knn is not None:
            metrics.update(self.knn(trunk_features(model)))
        if self.is_main and grid is not None and self.num_grid_images > 0 and len(grid[0]):
            path = save_reconstruction_grid(*grid, path=self.run_dir / f"recon_step{progress.step}.png",
                                            mean=self.mean, std=self.std)
            if self.log_image is not None:
                self.log_image("eval/reconstructions", path, step=progress.step)
        return metrics
