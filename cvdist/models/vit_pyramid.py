"""A simple feature pyramid on a cvdist ViT (ViTDet: Li et al., "Exploring Plain Vision
Transformer Backbones for Object Detection", 2022), so the detectors of
:mod:`cvdist.models.detection` run on ``model.name=vit_*``.

A plain ViT has one feature map: its patch tokens after the last block (and the final norm),
reshaped to ``[B, D, H/p, W/p]`` (stride ``p``, the patch size; cvdist's ViTs have no class
token, so every token is a patch). ViTDet builds the pyramid from that map alone, scale by scale:

    stride p/4   two 2x2 stride-2 deconvolutions (LayerNorm + GELU between)   D/4 channels
    stride p/2   one 2x2 stride-2 deconvolution                               D/2 channels
    stride p     the map itself                                               D channels
    stride 2p    2x2 max-pool                                                 D channels

Of these four, the *deepest* ``num_levels`` are built (as the CNN path takes the deepest stages)
and feed torchvision's ``FeaturePyramidNetwork`` with the detector's extra block (max-pool for
Faster R-CNN, P6/P7 for RetinaNet and FCOS), exactly as for a CNN trunk.

Strides and anchors: torchvision's anchor generator reads each level's stride off the image and
map sizes and gives level ``i`` the anchor side ``anchor_base * 2**i``; FCOS uses that side as the
level's scale (regression range 4-8 sides, centre radius 1.5 sides). So the levels must halve in
resolution from one to the next, which these do (and the FPN extras continue). With patch 4
(``vit_micro`` / ``vit_tiny`` / ``vit_small``) and the default 3 levels the strides are 2, 4, 8
(+16, 32), anchors 8-128 px: the same strides and anchors as ``resnet18`` with its small stem on
64 px images. The ``_p8`` presets give strides 4, 8, 16: raise ``detect.anchor_base`` to 16 for the
same anchor-to-stride ratio.

Image sizes: the detectors pad batches to a multiple of 32, which patch sizes 4 and 8 divide;
other sizes and non-square batches are padded (bottom / right, zeros) to a square whose side is a
multiple of ``p`` (``2p`` with the max-pool level) before the ViT, whose sine-cosine positions are
for square grids, and the maps are cropped back to the batch's ``ceil(side / stride)``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import FeaturePyramidNetwork

from cvdist.models.vit import VisionTransformer

MAX_LEVELS = 4
_SCALES = (4, 2, 1, 0.5)
"""ViTDet's scale factors of the patch-token map, finest first (strides p/4, p/2, p, 2p)."""


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a ``[B, C, H, W]`` map (ViTDet's norm in the deconv branch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class VitTrunk(nn.Module):
    """A cvdist ViT's encoder without its head: the classifier's own ``patch_embed`` / ``blocks``
    / ``norm`` modules (shared, so the keys are the classifier's minus ``head.*``) and its
    ``tokens`` code; no unused head parameters for DDP to miss."""

    tokens = VisionTransformer.tokens  # the classifier's encoder code, run on the same modules

    def __init__(self, vit: VisionTransformer):
        super().__init__()
        self.patch_size, self.feature_dim = vit.patch_size, vit.feature_dim
        self.patch_embed, self.blocks, self.norm = vit.patch_embed, vit.blocks, vit.norm

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, S, S] -> [B, D, S/p, S/p]``, ``S`` a multiple of the patch size."""
        tokens = self.tokens(images)
        side = images.shape[-1] // self.patch_size
        assert tokens.shape[1] == side * side, "cvdist ViTs have patch tokens only"
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


def _scale_branch(scale: float, dim: int) -> tuple[nn.Module, int]:
    """The module taking the stride-p map to ``scale`` times its resolution, and its channels."""
    if scale == 4:
        return nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2), LayerNorm2d(dim // 2),
                             nn.GELU(), nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2)), dim // 4
    if scale == 2:
        return nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2), dim // 2
    if scale == 1:
        return nn.Identity(), dim
    return nn.MaxPool2d(kernel_size=2, stride=2), dim


def pyramid_strides(*, patch_size: int, num_levels: int) -> list[int]:
    """The strides of the deepest ``num_levels`` simple-pyramid levels, finest first; ValueError
    when there are not that many (see the module doc)."""
    if not 1 <= num_levels <= MAX_LEVELS:
        raise ValueError(f"detect.num_levels={num_levels}: a ViT's simple feature pyramid has 1 to {MAX_LEVELS} "
                         f"levels (strides p/4, p/2, p, 2p of the patch size p); set detect.num_levels <= {MAX_LEVELS}")
    scales = _SCALES[-num_levels:]
    if any(patch_size % scale for scale in scales if scale > 1):
        raise ValueError(f"detect.num_levels={num_levels} on a ViT of patch size {patch_size} needs stride "
                         f"{patch_size}/{int(max(scales))}, not a whole number of pixels; use fewer levels")
    return [int(patch_size / scale) for scale in scales]


class SimpleFeaturePyramid(nn.Module):
    """ViT trunk + simple pyramid + FPN: ``images -> OrderedDict`` of ``out_channels`` maps, the
    same interface as the CNN path's ``PyramidBackbone`` (see the module doc)."""

    def __init__(self, vit: VisionTransformer, *, num_levels: int, out_channels: int, extra_blocks=None):
        super().__init__()
        self.strides = pyramid_strides(patch_size=vit.patch_size, num_levels=num_levels)
        self.body = VitTrunk(vit)
        branches = [_scale_branch(scale, vit.feature_dim) for scale in _SCALES[-num_levels:]]
        self.scales = nn.ModuleList(branch for branch, _ in branches)
        self.fpn = FeaturePyramidNetwork([channels for _, channels in branches], out_channels,
                                         extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        height, width = images.shape[-2:]
        multiple = max(self.body.patch_size, self.strides[-1])  # the max-pool level halves the token map
        side = math.ceil(max(height, width) / multiple) * multiple
        if (height, width) != (side, side):  # see the module doc: square, a multiple of the patch size
            images = F.pad(images, (0, side - width, 0, side - height))
        tokens = self.body(images)
        maps = OrderedDict()
        for index, (branch, stride) in enumerate(zip(self.scales, self.strides)):
            maps[str(index)] = branch(tokens)[..., :math.ceil(height / stride), :math.ceil(width / stride)]
        return self.fpn(maps)
