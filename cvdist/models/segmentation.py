"""Semantic segmentation heads (torchvision's FCN and DeepLabv3 heads) on any cvdist CNN backbone.

The trunk is a cvdist classifier, as for detection (``cvdist.models.detection``): its deepest
stage output (found by :func:`cvdist.models.detection.pyramid_nodes`, taken with torchvision's
``create_feature_extractor``) feeds the head, whose logits are upsampled bilinearly to the input
size. DeepLabv3's atrous rates are scaled down for the small feature maps of 64-128 px images.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

from cvdist.models.detection import pyramid_nodes

SEGMENTATION_HEADS = ("fcn", "deeplabv3")
_SMALL_ATROUS_RATES = (2, 4, 6)
"""DeepLabv3's rates for 6-24 px feature maps (torchvision's 12 / 24 / 36 suit 64 px maps and up)."""


class Segmenter(nn.Module):
    """``images [B, C, H, W] -> logits [B, num_classes, H, W]``."""

    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body, self.head = body, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.body(images)["out"])
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def build_segmenter(*, head: str, classifier: nn.Module, num_classes: int, in_channels: int,
                    image_size: int) -> Segmenter:
    """The ``head`` (one of SEGMENTATION_HEADS) on the deepest stage of ``classifier``'s trunk;
    ``num_classes`` counts the background class too."""
    if head not in SEGMENTATION_HEADS:
        raise ValueError(f"segmentation head {head!r} unknown; use one of {', '.join(SEGMENTATION_HEADS)}")
    node, channels = pyramid_nodes(classifier, in_channels=in_channels, image_size=image_size)[-1]
    body = create_feature_extractor(classifier, return_nodes={node: "out"})
    module = FCNHead(channels, num_classes) if head == "fcn" else DeepLabHead(channels, num_classes,
                                                                              atrous_rates=_SMALL_ATROUS_RATES)
    return Segmenter(body, module)
