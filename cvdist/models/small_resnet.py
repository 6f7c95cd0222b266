"""A small residual network for 28-32 px images, sized for CPU training.

``small_resnet`` (width 32, ~0.14 M parameters) has no layer at full resolution: a stride-2
stem, then one basic residual block at 14x14 and one at 7x7:

    conv3x3 stride 2 (C->w) BN ReLU          28 -> 14
    basic block(w)                           14x14
    conv3x3 stride 2 (w->2w) BN ReLU         14 -> 7
    basic block(2w)                          7x7
    average pool to a 7x7 grid, flatten, linear(2w * 49 -> classes)

The head reads the 7x7 feature grid (``head_grid=7``; the identity at 28 px, an adaptive average
pool at other sizes, so any 28-64 px side works) instead of the globally pooled vector: small
centred images such as Fashion-MNIST's keep their classes' layout there, and the spatial head
reached 91.6 % test top-1 after a 4-epoch one-cycle run where global pooling reached 91.0 % (same
trunk, same steps; +31 k head parameters, no measurable cost per step). ``head_grid=1`` is global
average pooling.

Full-resolution feature maps are what make plain 5-conv CNNs slow on a CPU (``small_cnn`` runs
two 32-channel convs, their BNs and ReLUs at 28x28, memory-bound work); without them a training
step costs about a third of ``small_cnn``'s (1,670 vs 520 images/s at batch 128 on 2 cores
here; 1.27x more with channels-last layout). With a one-cycle schedule it reaches 92 %
Fashion-MNIST test top-1 in 6 epochs (``bench/time_to_accuracy.py``); more capacity (width) buys
accuracy at a proportional cost. Layer names follow torchvision's ResNets where they overlap
(``conv1``/``bn1``, ``fc`` last), so :mod:`cvdist.models.transfer` finds the head the same way.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut (ResNet's basic block, same width)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        # zero-initialised last BN: each block starts as the identity (Goyal et al. 2017), which
        # lets a short, high-LR schedule (one-cycle) train from the first steps
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


def _conv_bn_relu(in_channels: int, out_channels: int, *, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class SmallResNet(nn.Module):
    """See the module docstring; ``width`` is the first stage's channel count, ``head_grid`` the
    side of the feature grid the linear head reads (1 = global average pooling)."""

    def __init__(self, *, num_classes: int, in_channels: int, width: int = 32, head_grid: int = 7):
        super().__init__()
        if width <= 0:
            raise ValueError(f"small_resnet width {width} must be > 0")
        if head_grid <= 0:
            raise ValueError(f"small_resnet head_grid {head_grid} must be > 0")
        self.stem = _conv_bn_relu(in_channels, width, stride=2)
        self.layer1 = BasicBlock(width)
        self.down = _conv_bn_relu(width, 2 * width, stride=2)
        self.layer2 = BasicBlock(2 * width)
        self.avgpool = nn.AdaptiveAvgPool2d(head_grid)
        # registered last: the head cvdist.models.transfer replaces
        self.fc = nn.Linear(2 * width * head_grid * head_grid, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.stem(x))
        x = self.layer2(self.down(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_small_resnet(*, num_classes: int, in_channels: int, width: int = 32, head_grid: int = 7) -> SmallResNet:
    """``small_resnet``: the CPU-sized residual network of this module."""
    return SmallResNet(num_classes=num_classes, in_channels=in_channels, width=width, head_grid=head_grid)
