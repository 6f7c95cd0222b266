"""A PNG of evaluation images with their true and predicted class maps side by side (one row per
image: image | truth | prediction), written at each evaluation of the segmentation task.

Class colours are PASCAL VOC's colour map (background black, then distinct colours; the same
class has the same colour in every picture of every run); ignored pixels are white.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from cvdist.eval.detection_plot import image_panel, save_panel_grid

IGNORED_COLOUR = (255, 255, 255)


def class_colours(num: int = 256) -> np.ndarray:
    """``[num, 3]`` uint8: PASCAL VOC's colour map (the bits of the class index spread over R, G, B)."""
    colours = np.zeros((num, 3), dtype=np.uint8)
    for index in range(num):
        value, shift = index, 7
        while value:
            for channel in range(3):
                colours[index, channel] |= ((value >> channel) & 1) << shift
            value, shift = value >> 3, shift - 1
    return colours


_COLOURS = class_colours()


def label_panel(labels: torch.Tensor, *, scale: int, ignore_index: int = 255) -> Image.Image:
    """A ``[H, W]`` class map in colour (``ignore_index`` white), ``scale`` times larger."""
    values = labels.cpu().numpy().astype(np.int64)
    pixels = _COLOURS[np.clip(values, 0, 255)]
    pixels[values == ignore_index] = IGNORED_COLOUR
    return Image.fromarray(pixels).resize((values.shape[1] * scale, values.shape[0] * scale), Image.NEAREST)


def save_segmentation_grid(images: Sequence[torch.Tensor], truths: Sequence[torch.Tensor],
                           predictions: Sequence[torch.Tensor], *, path: str | Path, scale: int = 3,
                           ignore_index: int = 255) -> Path:
    """One row per image (images ``[C, H, W]`` in [0, 1], class maps ``[H, W]``): the image, its
    true and its predicted map. Written atomically; returns ``path``."""
    rows = [[image_panel(image, scale=scale), label_panel(truth, scale=scale, ignore_index=ignore_index),
             label_panel(prediction, scale=scale, ignore_index=ignore_index)]
            for image, truth, prediction in zip(images, truths, predictions, strict=True)]
    return save_panel_grid(rows, path=path)
