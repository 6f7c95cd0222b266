"""Decoders and pretext heads that sit on a backbone trunk's pooled (B, D) features.

:class:`ConvDecoder` turns the feature vector back into an image: a linear map to a small
feature map, transposed convolutions that double its side, and a 3x3 conv to the image's
channels (no output activation: the targets are normalised images). :class:`PretrainHeads`
holds the heads of (multi-task) pretraining and returns each head's output by name.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class ConvDecoder(nn.Module):
    """(B, feature_dim) -> (B, out_channels, image_size, image_size).

    ``channels`` are the widths from the first feature map to the last: ``[128, 64, 32]`` starts
    at ``image_size / 4`` (7 px for 28 px images) and doubles twice."""

    def __init__(self, *, feature_dim: int, out_channels: int, image_size: int, channels: tuple[int, ...] = (128, 64, 32)):
        super().__init__()
        if not channels or any(c <= 0 for c in channels):
            raise ValueError(f"decoder channels {list(channels)} must be a non-empty list of positive widths")
        factor = 2 ** (len(channels) - 1)
        if image_size % factor:
            raise ValueError(f"image size {image_size} is not divisible by 2^{len(channels) - 1} = {factor} (the "
                             f"decoder doubles {len(channels) - 1} times for channels {list(channels)}); use fewer "
                             "decoder channels or another image size")
        self.start_channels, self.start_size = channels[0], image_size // factor
        self.project = nn.Sequential(nn.Linear(feature_dim, channels[0] * self.start_size ** 2), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(channels[-1], out_channels, kernel_size=3, padding=1))
        self.upsample = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.project(features).view(-1, self.start_channels, self.start_size, self.start_size)
        return self.upsample(x)


class PretrainHeads(nn.Module):
    """Pretraining heads on one trunk's features: ``forward(features) -> {"features", and
    "reconstruction" / "rotation" / "projection" for the heads present}``.

    Mounted where a classifier's head is (``cvdist.tasks.autoencoder``), so that the model's
    state-dict keys are the classifier's trunk keys plus ``<head>.*``, which transfer drops."""

    def __init__(self, *, decoder: Optional[nn.Module] = None, rotation: Optional[nn.Module] = None,
                 projection: Optional[nn.Module] = None):
        super().__init__()
        self.decoder, self.rotation, self.projection = decoder, rotation, projection

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = {"features": features}
        for name, head in (("reconstruction", self.decoder), ("rotation", self.rotation),
                           ("projection", self.projection)):
            if head is not None:
                outputs[name] = head(features)
        return outputs
