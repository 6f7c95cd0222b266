"""A PNG of evaluation images with their ground-truth boxes (green) and predicted boxes (red,
with category name and score; Mask R-CNN's predicted masks tinted red under them), written at
each evaluation of the detection task."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from cvdist.io import atomic_write_bytes

GROUND_TRUTH_COLOUR, PREDICTION_COLOUR = (0, 220, 0), (255, 40, 40)


def image_panel(image: torch.Tensor, *, scale: int) -> Image.Image:
    """A ``[C, H, W]`` image in [0, 1] (grey or RGB) as an RGB picture ``scale`` times larger."""
    pixels = (image.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return Image.fromarray(pixels).resize((pixels.shape[1] * scale, pixels.shape[0] * scale), Image.NEAREST)


def save_panel_grid(rows: Sequence[Sequence[Image.Image]], *, path: str | Path, gap: int = 4) -> Path:
    """Pictures in rows (``gap`` px apart) as one PNG, written atomically; returns ``path``."""
    if not rows or not all(rows):
        raise ValueError("no image to draw")
    widths = [sum(p.width for p in row) + gap * (len(row) - 1) for row in rows]
    heights = [max(p.height for p in row) for row in rows]
    grid = Image.new("RGB", (max(widths), sum(heights) + gap * (len(rows) - 1)))
    y = 0
    for row, height in zip(rows, heights):
        x = 0
        for panel in row:
            grid.paste(panel, (x, y))
            x += panel.width + gap
        y += height + gap
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _tinted(panel: Image.Image, prediction: dict, *, scale: int, min_score: float) -> Image.Image:
    """``panel`` half-way towards red where a drawn (score >= ``min_score``) predicted mask is on."""
    shown = prediction["scores"] >= min_score
    if not shown.any():
        return panel
    covered = (prediction["masks"][shown, 0] > 0.5).any(dim=0).numpy().repeat(scale, 0).repeat(scale, 1)
    pixels = np.array(panel)
    pixels[covered] = (pixels[covered] // 2 + np.array(PREDICTION_COLOUR) // 2).astype(np.uint8)
    return Image.fromarray(pixels)


def _panel(image: torch.Tensor, target: dict, prediction: dict, *, names: Sequence[str], scale: int,
           min_score: float) -> Image.Image:
    panel = image_panel(image, scale=scale)
    if "masks" in prediction:
        panel = _tinted(panel, prediction, scale=scale, min_score=min_score)
    draw = ImageDraw.Draw(panel)
    for box in target["boxes"].tolist():
        draw.rectangle([v * scale for v in box], outline=GROUND_TRUTH_COLOUR)
    for box, label, score in zip(prediction["boxes"].tolist(), prediction["labels"].tolist(),
                                 prediction["scores"].tolist()):
        if score >= min_score:
            draw.rectangle([v * scale for v in box], outline=PREDICTION_COLOUR)
            draw.text((box[0] * scale + 2, box[1] * scale + 1), f"{names[label]} {score:.2f}", fill=PREDICTION_COLOUR)
    return panel


def save_detection_grid(images: Sequence[torch.Tensor], targets: Sequence[dict], predictions: Sequence[dict], *,
                        path: str | Path, category_names: Sequence[str], scale: int = 3,
                        min_score: float = 0.3) -> Path:
    """One row of panels (images scaled ``scale`` times; images in [0, 1]); predictions below
    ``min_score`` are not drawn. Written atomically; returns ``path``."""
    panels = [_panel(i, t, p, names=category_names, scale=scale, min_score=min_score)
              for i, t, p in zip(images, targets, predictions, strict=True)]
    return save_panel_grid([panels], path=path)
