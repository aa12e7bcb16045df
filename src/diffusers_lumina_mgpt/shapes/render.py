"""ShapesWorld rendering: scenes to flat-colour RGB images, segmentation maps, depth maps.

Rasterisation is anti-aliasing-free: a pixel takes an object's colour iff its centre lies inside
the shape, with each shape defined in its box's unit square. `shape_mask` is shared with the
scorer, which matches recovered components against these same templates.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .scene import BACKGROUND_COLORS, OBJECT_COLORS, SHAPES, Scene, depth_order

# semantic segmentation: one fixed colour per shape class, black background
SEGMENT_COLORS: dict[str, tuple[int, int, int]] = {
    "background": (0, 0, 0),
    "circle": (255, 0, 0),
    "square": (0, 255, 0),
    "triangle": (0, 0, 255),
    "diamond": (255, 255, 0),
    "cross": (255, 0, 255),
}
# depth map: background is 0 (far); objects from NEAR_LEVEL (nearest) down to FAR_LEVEL
NEAR_LEVEL, FAR_LEVEL = 255, 64
DEGRADATIONS: tuple[str, ...] = ("none", "noise", "jpeg")


def shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    """Boolean (height, width) mask of `shape` filling a width x height box (pixel-centre rule)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")
    u = (np.arange(width) + 0.5)[None, :] / width  # (1, w)
    v = (np.arange(height) + 0.5)[:, None] / height  # (h, 1)
    eps = 1e-9
    if shape == "circle":
        mask = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25 + eps
    elif shape == "square":
        mask = np.ones((height, width), dtype=bool)
    elif shape == "triangle":  # apex at top centre, base along the bottom edge
        v_bottom = (np.arange(height) + 1.0)[:, None] / height
        mask = np.abs(u - 0.5) <= v_bottom / 2 + eps
    elif shape == "diamond":
        mask = np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5 + eps
    else:  # cross: two bars one third of the box thick
        mask = (np.abs(u - 0.5) <= 1 / 6 + eps) | (np.abs(v - 0.5) <= 1 / 6 + eps)
    return np.broadcast_to(mask, (height, width)).copy()


def label_map(scene: Scene) -> np.ndarray:
    """(height, width) int array: index of the object covering each pixel, -1 for background."""
    labels = np.full((scene.height, scene.width), -1, dtype=np.int32)
    for i, obj in enumerate(scene.objects):
        x0, y0, x1, y1 = obj.box
        region = labels[y0:y1, x0:x1]
        region[shape_mask(obj.shape, obj.size, obj.size)] = i
    return labels


def _paint(labels: np.ndarray, background: tuple[int, int, int], colors: list[tuple[int, int, int]]) -> Image.Image:
    table = np.array([*colors, background], dtype=np.uint8)  # index -1 -> background (last row)
    return Image.fromarray(table[labels], mode="RGB")


def render_scene(scene: Scene) -> Image.Image:
    """The scene as a flat-colour RGB image."""
    return _paint(label_map(scene), BACKGROUND_COLORS[scene.background],
                  [OBJECT_COLORS[o.color] for o in scene.objects])


def render_segmentation(scene: Scene) -> Image.Image:
    """Semantic segmentation map: `SEGMENT_COLORS[shape]` per object pixel, black elsewhere."""
    return _paint(label_map(scene), SEGMENT_COLORS["background"],
                  [SEGMENT_COLORS[o.shape] for o in scene.objects])


def depth_levels(scene: Scene) -> list[int]:
    """Grey level of each object in the depth map (nearest = NEAR_LEVEL, evenly spaced to FAR_LEVEL)."""
    ranks = depth_order(scene)
    n = len(ranks)
    step = (NEAR_LEVEL - FAR_LEVEL) / max(n - 1, 1)
    return [int(round(NEAR_LEVEL - r * step)) for r in ranks]


def render_depth(scene: Scene) -> Image.Image:
    """Depth map as a grey RGB image: background 0, objects brighter the nearer they are."""
    return _paint(label_map(scene), (0, 0, 0), [(g, g, g) for g in depth_levels(scene)])


def degrade(image: Image.Image, rng: np.random.Generator, kind: str) -> Image.Image:
    """The image with Gaussian noise (sigma 6-16) or JPEG artefacts (quality 25-60), or unchanged."""
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; use one of {DEGRADATIONS}")
    if kind == "none":
        return image.copy()
    if kind == "noise":
        sigma = float(rng.uniform(6, 16))
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, sigma, (image.height, image.width, 3))
        return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), mode="RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(25, 61)))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def upscale(image: Image.Image, factor: int) -> Image.Image:
    """Nearest-neighbour upscale, for looking at small renders."""
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)
