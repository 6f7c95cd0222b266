"""Semantic segmentation heads on any cvdist backbone: torchvision's FCN and DeepLabv3 heads, a
light U-Net-style decoder, and a linear head on frozen features.

The trunk is a cvdist classifier, as for detection (``cvdist.models.detection``). For a CNN its
stage outputs are found by :func:`cvdist.models.detection.pyramid_nodes` and taken with
torchvision's ``create_feature_extractor``. For a cvdist ViT (``vit_*``) the feature map is the
last block's patch tokens on their grid (``cvdist.models.vit_pyramid.VitTrunk``, the images
padded to a square multiple of the patch size and the map cropped back); ``unet`` takes its
stages from ViTDet's simple feature pyramid instead (``SimpleFeaturePyramid``: strides p/2, p,
2p with an FPN, as the detectors use). Heads:

- ``fcn`` / ``deeplabv3``: torchvision's heads on the deepest feature map (DeepLabv3's atrous
  rates scaled down for the small feature maps of 64-128 px images).
- ``unet``: from the deepest stage up, each step upsamples, concatenates the next finer stage's
  output (the skip connection) and applies conv-BN-ReLU at ``decoder_channels``.
- ``linear``: BatchNorm + a 1x1 convolution on the deepest map of a FROZEN trunk (the DINOv2
  linear protocol: it measures the features, so the trunk gets no gradient and its BatchNorm
  keeps its running statistics).

Logits are upsampled bilinearly to the input size. Images enter in [0, 1] and are normalised
by ``image_mean`` / ``image_std`` inside the model (as torchvision's detectors do), so a saved
model is used without knowing the data section.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.ops import Conv2dNormActivation

from cvdist.models.detection import pyramid_nodes
from cvdist.models.vit import VisionTransformer
from cvdist.models.vit_pyramid import SimpleFeaturePyramid, VitTrunk

SEGMENTATION_HEADS = ("fcn", "deeplabv3", "unet", "linear")
_SMALL_ATROUS_RATES = (2, 4, 6)
"""DeepLabv3's rates for 6-24 px feature maps (torchvision's 12 / 24 / 36 suit 64 px maps and up)."""


class VitGrid(nn.Module):
    """A cvdist ViT's last-block patch tokens as ``{"out": [B, dim, ceil(H/p), ceil(W/p)]}`` for
    any image size (padded bottom / right to a square multiple of the patch size p, for the
    ViT's square sine-cosine positions, then cropped back)."""

    def __init__(self, vit: VisionTransformer):
        super().__init__()
        self.trunk = VitTrunk(vit)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = images.shape[-2:]
        patch = self.trunk.patch_size
        side = math.ceil(max(height, width) / patch) * patch
        grid = self.trunk(F.pad(images, (0, side - width, 0, side - height)))
        return {"out": grid[..., :math.ceil(height / patch), :math.ceil(width / patch)]}


_VIT_UNET_LEVELS = 3
"""Simple-pyramid levels under ``unet`` on a ViT: strides p/2, p, 2p (valid for every patch size)."""


class UNetDecoder(nn.Module):
    """Deepest stage upwards: upsample, concatenate the finer stage, conv-BN-ReLU; then 1x1 logits."""

    def __init__(self, channels: Sequence[int], *, width: int, num_classes: int):
        super().__init__()
        deepest, *finer = list(channels)[::-1]
        self.reduce = Conv2dNormActivation(deepest, width, kernel_size=1)
        self.fuse = nn.ModuleList(Conv2dNormActivation(width + skip, width, kernel_size=3) for skip in finer)
        self.classifier = nn.Conv2d(width, num_classes, kernel_size=1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        deepest, *finer = [features[key] for key in sorted(features, key=int, reverse=True)]  # keys: stage index
        x = self.reduce(deepest)
        for fuse, skip in zip(self.fuse, finer):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = fuse(torch.cat([x, skip], dim=1))
        return self.classifier(x)


class Segmenter(nn.Module):
    """``images [B, C, H, W] in [0, 1] -> logits [B, num_classes, H, W]``; with ``frozen_body``
    the trunk never trains (no gradients, BatchNorm / dropout always in eval mode)."""

    def __init__(self, body: nn.Module, head: nn.Module, *, multi_scale: bool = False, frozen_body: bool = False,
                 image_mean: Sequence[float] = (0.0,), image_std: Sequence[float] = (1.0,)):
        super().__init__()
        self.body, self.head, self.multi_scale, self.frozen_body = body, head, multi_scale, frozen_body
        # not persistent: the checkpoint keeps only learned weights; the values come from the config
        self.register_buffer("mean", torch.tensor(list(image_mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(image_std)).view(1, -1, 1, 1), persistent=False)
        if frozen_body:
            self.body.requires_grad_(False)
            self.body.eval()

    def train(self, mode: bool = True) -> "Segmenter":
        super().train(mode)
        if self.frozen_body:
            self.body.eval()  # the training loop's model.train() must not touch a frozen trunk's statistics
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.body((images - self.mean) / self.std)
        logits = self.head(features if self.multi_scale else features["out"])
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def _linear_head(channels: int, num_classes: int) -> nn.Module:
    # BatchNorm first, as DINOv2's linear head: feature scales differ a lot between trunks
    return nn.Sequential(nn.BatchNorm2d(channels), nn.Conv2d(channels, num_classes, kernel_size=1))


def build_segmenter(*, head: str, classifier: nn.Module, num_classes: int, in_channels: int, image_size: int,
                    decoder_channels: int = 32, image_mean: Sequence[float] = (0.0,),
                    image_std: Sequence[float] = (1.0,)) -> Segmenter:
    """The ``head`` (one of SEGMENTATION_HEADS) on ``classifier``'s trunk (see the module doc);
    ``num_classes`` counts the background class too. ValueError for an unknown head or a
    backbone without feature maps (timm ViTs)."""
    if head not in SEGMENTATION_HEADS:
        raise ValueError(f"segmentation head {head!r} unknown; use one of {', '.join(SEGMENTATION_HEADS)}")
    norm = dict(image_mean=image_mean, image_std=image_std)
    if isinstance(classifier, VisionTransformer):
        if head == "unet":  # the pyramid's FPN outputs are the stages, all decoder_channels wide
            body = SimpleFeaturePyramid(classifier, num_levels=_VIT_UNET_LEVELS, out_channels=decoder_channels)
            decoder = UNetDecoder([decoder_channels] * _VIT_UNET_LEVELS, width=decoder_channels,
                                  num_classes=num_classes)
            return Segmenter(body, decoder, multi_scale=True, **norm)
        body, channels, nodes = VitGrid(classifier), classifier.feature_dim, None
    else:
        nodes = pyramid_nodes(classifier, in_channels=in_channels, image_size=image_size)
        channels = nodes[-1][1]
    if head == "unet":
        body = create_feature_extractor(classifier, return_nodes={name: str(i) for i, (name, _) in enumerate(nodes)})
        decoder = UNetDecoder([c for _, c in nodes], width=decoder_channels, num_classes=num_classes)
        return Segmenter(body, decoder, multi_scale=True, **norm)
    if nodes is not None:
        body = create_feature_extractor(classifier, return_nodes={nodes[-1][0]: "out"})
    if head == "linear":
        return Segmenter(body, _linear_head(channels, num_classes), frozen_body=True, **norm)
    module = FCNHead(channels, num_classes) if head == "fcn" else DeepLabHead(channels, num_classes,
                                                                              atrous_rates=_SMALL_ATROUS_RATES)
    return Segmenter(body, module, **norm)
