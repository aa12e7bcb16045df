"""ShapesWorld scenes: the vocabulary, a seeded scene sampler, spatial relations and the held-out split.

A scene is a background colour plus 1-4 flat-coloured objects; each object is a shape drawn in
a square box (`x`, `y` top-left, `size` side, in pixels) of an image of `width` x `height`.
Everything a caption, a question or a scorer needs (counts, colours, relations, depth order)
follows from this record, so every task built on a scene has exact ground truth.

Layout rules (the renderer and the scorer rely on them):
- objects are never clipped: every box lies inside the image (`BORDER` px in);
- objects never overlap: boxes are at least `MIN_GAP` px apart (so two same-coloured objects can
  never merge into one connected component);
- sizes lie in [`MIN_OBJECT_SIZE`, `max_object_size(w, h)`];
- objects sit on a `GRID` px grid: box corners and sizes are multiples of `GRID`. With the ShapesWorld
  tokenizer's 4 px cells, an object covers whole cells at 64 px and still does at half size (the 32 px
  FP-SFT stage), so a shape of a given size and colour is always the same block of VQ codes. An earlier
  world placed objects at any pixel; a 5.9M-parameter model trained on it for 5,750 steps drew blobs of
  the right colours but scored 0.08 on text-to-image (docs/training.md, "The fourth run").

Held-out split: the colour-shape pairs in `HELDOUT_COMBOS` are never sampled with `split="train"`;
`split="heldout"` puts at least one of them in every scene (or prompt), so generalisation to
unseen attribute bindings is measured separately.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

# object palette: well separated in RGB so the nearest-colour rule is unambiguous
OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (30, 160, 50),
    "cyan": (30, 210, 220),
    "blue": (30, 60, 210),
    "purple": (130, 40, 170),
    "pink": (245, 130, 200),
}
# backgrounds never share a colour with objects
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "gray": (128, 128, 128),
    "black": (10, 10, 10),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
COLORS: tuple[str, ...] = tuple(OBJECT_COLORS)
BACKGROUNDS: tuple[str, ...] = tuple(BACKGROUND_COLORS)

# (width, height) buckets: aspect ratios 1:1, 5:3 and 4:1 both ways, each the size Lumina's image
# processor keeps at a 64 px target and halves exactly at a 32 px one (so the object grid survives)
SIZE_BUCKETS: tuple[tuple[int, int], ...] = (
    (64, 64), (80, 48), (48, 80), (128, 32), (32, 128),
)
MIN_OBJECTS, MAX_OBJECTS = 1, 4
GRID = 8
MIN_OBJECT_SIZE = 16
BORDER = 0
MIN_GAP = 2
# a relation is stated as true only if the dominant axis wins by at least this many pixels
RELATION_MARGIN = 3.0

# colour-shape pairs that training never sees (one per shape, distinct colours)
HELDOUT_COMBOS: frozenset[tuple[str, str]] = frozenset({
    ("red", "triangle"), ("blue", "circle"), ("green", "diamond"), ("yellow", "square"), ("purple", "cross"),
})
SPLITS: tuple[str, ...] = ("train", "heldout", "all")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")


class HasCenter(Protocol):
    @property
    def cx(self) -> float: ...
    @property
    def cy(self) -> float: ...


@dataclass(frozen=True)
class ShapeObject:
    """One object: `shape` of `color` in the square box [x, x+size) x [y, y+size)."""

    shape: str
    color: str
    x: int
    y: int
    size: int

    @property
    def cx(self) -> float:
        return self.x + self.size / 2

    @property
    def cy(self) -> float:
        return self.y + self.size / 2

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), exclusive end."""
        return (self.x, self.y, self.x + self.size, self.y + self.size)

    @property
    def heldout(self) -> bool:
        return (self.color, self.shape) in HELDOUT_COMBOS

    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A background colour and its objects on a `width` x `height` canvas."""

    width: int
    height: int
    background: str
    objects: tuple[ShapeObject, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "background": self.background,
                "objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        return cls(int(data["width"]), int(data["height"]), str(data["background"]),
                   tuple(ShapeObject(**o) for o in data["objects"]))

    @property
    def heldout(self) -> bool:
        return any(o.heldout for o in self.objects)

    def replace_objects(self, objects: list[ShapeObject] | tuple[ShapeObject, ...]) -> Scene:
        return Scene(self.width, self.height, self.background, tuple(objects))

    def reading_order(self) -> list[ShapeObject]:
        """The objects top to bottom, then left to right (by box corner): the order in which a
        raster-scan model starts drawing them, and the order captions list them in."""
        return sorted(self.objects, key=lambda o: (o.y, o.x))

    def unique_objects(self) -> list[int]:
        """Indices of objects whose colour+shape is unique in the scene (unambiguous references)."""
        keys = [(o.color, o.shape) for o in self.objects]
        return [i for i, k in enumerate(keys) if keys.count(k) == 1]


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return split


def combo_allowed(color: str, shape: str, split: str) -> bool:
    """Whether `split` may sample this colour-shape pair ("heldout" may sample any)."""
    return split != "train" or (color, shape) not in HELDOUT_COMBOS


def max_object_size(width: int, height: int) -> int:
    return max(MIN_OBJECT_SIZE, min(28, int(0.6 * min(width, height))) // GRID * GRID)


def _grid_values(lo: float, hi: float) -> list[int]:
    """The multiples of `GRID` in [lo, hi]."""
    first = -(-int(np.ceil(lo)) // GRID) * GRID
    return list(range(first, int(np.floor(hi)) + 1, GRID))


def relation(a: HasCenter, b: HasCenter, margin: float = 0.0) -> str | None:
    """Where `a` is relative to `b` ("left", "right", "above", "below"), or None if ambiguous.

    The dominant axis of the centre offset decides; with `margin` > 0 it must win by that many
    pixels (used for statements of truth); with 0 it is the lenient rule used to judge images.
    """
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dx) - abs(dy) > margin:
        return "left" if dx < 0 else "right"
    if abs(dy) - abs(dx) > margin:
        return "above" if dy < 0 else "below"
    return None


def clear_relation(a: HasCenter, b: HasCenter) -> str | None:
    return relation(a, b, RELATION_MARGIN)


def depth_order(scene: Scene) -> list[int]:
    """Depth rank of each object, 0 = nearest.

    Ground-plane rule: the lower an object's bottom edge, the nearer it is; ties go to the
    larger object, then to the one further left.
    """
    keys = [(-(o.y + o.size), -o.size, o.x) for o in scene.objects]
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    ranks = [0] * len(keys)
    for rank, i in enumerate(order):
        ranks[i] = rank
    return ranks


def boxes_clear(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = MIN_GAP) -> bool:
    """True if boxes are at least `gap` px apart along some axis."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


REGIONS: tuple[str, ...] = (
    "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right",
)


def region_of(width: int, height: int, cx: float, cy: float) -> str:
    """The 3x3 grid cell a point falls in."""
    col = min(2, int(3 * cx / width))
    row = min(2, int(3 * cy / height))
    return REGIONS[3 * row + col]


def region_bounds(width: int, height: int, region: str) -> tuple[float, float, float, float]:
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; use one of {REGIONS}")
    k = REGIONS.index(region)
    row, col = divmod(k, 3)
    return (col * width / 3, row * height / 3, (col + 1) * width / 3, (row + 1) * height / 3)


def place_object(
    rng: np.random.Generator, scene: Scene, shape: str, color: str, *,
    size: int | None = None, region: str | None = None, ignore: int | None = None, tries: int = 60,
) -> ShapeObject | None:
    """A new object at a free position (centre inside `region` if given), or None if none fits.

    `ignore` is the index of an object to leave out of the collision test (the one being moved).
    """
    w, h = scene.width, scene.height
    hi = max_object_size(w, h)
    others = [o.box for i, o in enumerate(scene.objects) if i != ignore]
    sizes = _grid_values(MIN_OBJECT_SIZE, hi)
    smaller = _grid_values(MIN_OBJECT_SIZE, max(MIN_OBJECT_SIZE, (MIN_OBJECT_SIZE + hi) // 2))
    for attempt in range(tries):
        pick = smaller if attempt >= tries // 2 else sizes  # crowded: try smaller objects
        s = size if size is not None else pick[int(rng.integers(len(pick)))]
        if s > min(w, h) - 2 * BORDER:
            return None
        x0, y0, x1, y1 = BORDER, BORDER, w - BORDER - s, h - BORDER - s
        if region is not None:
            rx0, ry0, rx1, ry1 = region_bounds(w, h, region)
            # centre strictly inside the cell, at least 1 px from its edges
            x0, x1 = max(x0, int(np.ceil(rx0 + 1 - s / 2))), min(x1, int(np.floor(rx1 - 1 - s / 2)))
            y0, y1 = max(y0, int(np.ceil(ry0 + 1 - s / 2))), min(y1, int(np.floor(ry1 - 1 - s / 2)))
        xs, ys = _grid_values(x0, x1), _grid_values(y0, y1)
        if not xs or not ys:
            continue
        obj = ShapeObject(shape, color, xs[int(rng.integers(len(xs)))], ys[int(rng.integers(len(ys)))], s)
        if all(boxes_clear(obj.box, b) for b in others):
            return obj
    return None


def sample_combo(rng: np.random.Generator, split: str, *, shape: str | None = None,
                 color: str | None = None, heldout: bool = False) -> tuple[str, str]:
    """A (color, shape) pair allowed by `split`; `heldout=True` forces a held-out pair."""
    pool = [(c, s) for c in COLORS for s in SHAPES
            if (shape is None or s == shape) and (color is None or c == color)
            and ((c, s) in HELDOUT_COMBOS if heldout else combo_allowed(c, s, split))]
    if not pool:
        raise ValueError(f"no colour-shape pair fits shape={shape} color={color} split={split} heldout={heldout}")
    return pool[int(rng.integers(len(pool)))]


def sample_size(rng: np.random.Generator) -> tuple[int, int]:
    return SIZE_BUCKETS[int(rng.integers(len(SIZE_BUCKETS)))]


def sample_scene(
    rng: np.random.Generator, *, split: str = "train", size: tuple[int, int] | None = None,
    n_objects: int | None = None, unique_refs: int = 0,
) -> Scene:
    """A random scene. `size` is (width, height) (random bucket if None); `n_objects` 1-4 (random if None).

    `unique_refs`: at least this many objects have a colour+shape unique in the scene (so an
    instruction can name them unambiguously). With split="heldout" at least one object is a
    held-out pair; with "train" none is.
    """
    check_split(split)
    if n_objects is not None and not MIN_OBJECTS <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be in [{MIN_OBJECTS}, {MAX_OBJECTS}], got {n_objects}")
    for _ in range(200):
        w, h = size if size is not None else sample_size(rng)
        n = n_objects if n_objects is not None else int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
        scene = Scene(w, h, BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], ())
        force = int(rng.integers(n)) if split == "heldout" else -1
        objects: list[ShapeObject] = []
        for i in range(n):
            color, shape = sample_combo(rng, split, heldout=(i == force))
            obj = place_object(rng, scene, shape, color)
            if obj is None:
                break
            objects.append(obj)
            scene = scene.replace_objects(objects)
        if len(objects) == n and len(scene.unique_objects()) >= min(unique_refs, n):
            return scene
    raise ValueError(f"could not place {n_objects} objects in a {size} image; use a larger size or fewer objects")
