"""The built-in dense data set: scenes composed of small items pasted on a canvas.

A scene is a square canvas (``canvas_size`` px, dark noisy background) with 1..``max_items``
items (Fashion-MNIST images, or the synthetic set's patterns) pasted at random side lengths in
``[min_item_size, max_item_size]`` and random positions. An item's silhouette is its resized
pixels at or above ``SILHOUETTE_THRESHOLD``; pasting copies exactly the silhouette's pixels, so
what is visible of an item is its silhouette minus what later items cover. From that:

- the instance map (uint8): 0 background, ``i`` on the visible pixels of the i-th kept instance;
- the semantic map (uint8): 0 background, ``category + 1`` on each instance's visible pixels;
- boxes in pixel ``xyxy`` with exclusive ends (a box covers ``x0 <= x < x1``, ``y0 <= y < y1``):
  the extent of each instance's visible pixels, so box and mask always agree.

Without ``occlusion`` an item is only placed where its box does not touch an earlier item's box
(a few seeded tries, else the item is left out); with it items may overlap, and an instance with
fewer than ``MIN_VISIBLE_PIXELS`` visible pixels is dropped. ``imbalance_factor`` draws item
categories from the long-tail profile ``p_c ~ IF ** (-c / (C - 1))`` (category 0 the head), so
the per-category instance counts form a long tail. Everything is drawn from the generator given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

SILHOUETTE_THRESHOLD = 24
"""Item pixels (0-255) at or above this belong to the item's silhouette; below are background."""
MIN_VISIBLE_PIXELS = 16
"""An instance with fewer visible pixels (after occlusion) is not annotated."""
_PLACEMENT_TRIES = 20
_BACKGROUND_MAX = 24
"""Background noise is uniform in [0, _BACKGROUND_MAX) (below the silhouette threshold)."""


@dataclass(frozen=True)
class SceneOptions:
    """How scenes are composed (see the module docstring)."""

    canvas_size: int = 96
    max_items: int = 4
    min_item_size: int = 20
    max_item_size: int = 44
    occlusion: bool = False
    imbalance_factor: float = 1.0
    tint: bool = False
    """Colour each item with a random RGB tint (3-channel scenes) instead of grey (1 channel)."""

    def check(self) -> None:
        """Raise ValueError naming a bad option and the fix."""
        if not 32 <= self.canvas_size <= 1024:
            raise ValueError(f"canvas size {self.canvas_size} must be in 32..1024 pixels (e.g. 96 or 128)")
        if not 1 <= self.max_items <= 64:
            raise ValueError(f"max items {self.max_items} must be in 1..64")
        if not 4 <= self.min_item_size <= self.max_item_size <= self.canvas_size:
            raise ValueError(f"item sizes {self.min_item_size}..{self.max_item_size} must satisfy "
                             f"4 <= min <= max <= canvas size ({self.canvas_size})")
        if not np.isfinite(self.imbalance_factor) or self.imbalance_factor < 1:
            raise ValueError(f"imbalance factor {self.imbalance_factor} must be a finite number >= 1 (1 = balanced)")


@dataclass
class Scene:
    """One composed scene and its annotations (instance ``i`` has id ``i + 1`` in ``instances``)."""

    pixels: np.ndarray
    """uint8 ``[H, W]`` (grey) or ``[H, W, 3]`` (tinted)."""
    boxes: list[list[int]]
    """Pixel ``xyxy``, exclusive ends, one per instance."""
    categories: list[int]
    instances: np.ndarray
    """uint8 ``[H, W]``: 0 background, instance id ``i + 1``."""
    semantic: np.ndarray
    """uint8 ``[H, W]``: 0 background, ``category + 1``."""


def category_probabilities(*, num_categories: int, imbalance_factor: float) -> np.ndarray:
    """``p_c ~ IF ** (-c / (C - 1))``, normalised (uniform for IF = 1 or a single category)."""
    if num_categories < 1:
        raise ValueError("scenes need at least one item category")
    if num_categories == 1:
        return np.ones(1)
    weights = imbalance_factor ** (-np.arange(num_categories) / (num_categories - 1))
    return weights / weights.sum()


def _silhouette_item(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The item resized to ``size`` x ``size`` and its silhouette (bool)."""
    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    return resized, resized >= SILHOUETTE_THRESHOLD


def _boxes_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place(rng: np.random.Generator, size: int, canvas: int, taken: list, occlusion: bool):
    """A top-left corner for a ``size`` square, or None when no free spot was found."""
    for _ in range(1 if occlusion else _PLACEMENT_TRIES):
        x, y = (int(v) for v in rng.integers(0, canvas - size + 1, size=2))
        square = (x, y, x + size, y + size)
        if occlusion or not any(_boxes_overlap(square, other) for other in taken):
            return x, y
    return None


def _mask_box(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def compose_scene(*, items: np.ndarray, item_labels: np.ndarray, rng: np.random.Generator,
                  options: SceneOptions, num_categories: int) -> Scene:
    """One scene from the pool ``items`` (uint8 ``[N, h, w]``) with categories ``item_labels``.

    Always returns at least one instance (a scene whose items were all dropped is drawn again).
    """
    probabilities = category_probabilities(num_categories=num_categories, imbalance_factor=options.imbalance_factor)
    by_category = [np.flatnonzero(item_labels == c) for c in range(num_categories)]
    if any(len(members) == 0 for members in by_category):
        missing = [c for c, members in enumerate(by_category) if len(members) == 0]
        raise ValueError(f"the item pool has no item of categories {missing}; use more source items")
    while True:
        scene = _try_scene(items, by_category, probabilities, rng, options)
        if scene.categories:
            return scene


def _try_scene(items, by_category, probabilities, rng, options: SceneOptions) -> Scene:
    size = options.canvas_size
    channels = 3 if options.tint else 1
    canvas = rng.integers(0, _BACKGROUND_MAX, size=(size, size, channels), dtype=np.uint8)
    owner = np.zeros((size, size), dtype=np.int32)  # index + 1 of the item owning each pixel
    categories, taken = [], []
    for _ in range(int(rng.integers(1, options.max_items + 1))):
        category = int(rng.choice(len(probabilities), p=probabilities))
        item = items[int(rng.choice(by_category[category]))]
        side = int(rng.integers(options.min_item_size, options.max_item_size + 1))
        spot = _place(rng, side, size, taken, options.occlusion)
        tint = rng.uniform(0.4, 1.0, size=channels) if options.tint else np.ones(1)
        if spot is None:
            continue
        x, y = spot
        resized, silhouette = _silhouette_item(item, side)
        region = canvas[y:y + side, x:x + side]
        region[silhouette] = np.clip(resized[silhouette, None] * tint, 0, 255).astype(np.uint8)
        owner[y:y + side, x:x + side][silhouette] = len(categories) + 1
        categories.append(category)
        taken.append((x, y, x + side, y + side))
    return _annotate(canvas if options.tint else canvas[..., 0], owner, categories)


def _annotate(pixels: np.ndarray, owner: np.ndarray, categories: list[int]) -> Scene:
    """Boxes and maps from the visible pixels; instances below MIN_VISIBLE_PIXELS are dropped."""
    instances = np.zeros(owner.shape, dtype=np.uint8)
    semantic = np.zeros(owner.shape, dtype=np.uint8)
    boxes, kept = [], []
    for index, category in enumerate(categories):
        visible = owner == index + 1
        if visible.sum() < MIN_VISIBLE_PIXELS:
            continue  # (almost) hidden behind later items: not annotated, but its pixels stay drawn
        kept.append(category)
        boxes.append(_mask_box(visible))
        instances[visible] = len(kept)
        semantic[visible] = category + 1
    return Scene(pixels=pixels, boxes=boxes, categories=kept, instances=instances, semantic=semantic)
