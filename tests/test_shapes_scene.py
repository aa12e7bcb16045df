"""ShapesWorld scene sampler and renderer: seeded determinism, layout rules, held-out split, maps."""

from __future__ import annotations

import numpy as np
import pytest

from diffusers_lumina_mgpt.shapes.render import (
    FAR_LEVEL, NEAR_LEVEL, SEGMENT_COLORS, degrade, label_map, render_depth, render_scene, render_segmentation,
    shape_mask,
)
from diffusers_lumina_mgpt.shapes.scene import (
    BACKGROUND_COLORS, BORDER, GRID, HELDOUT_COMBOS, MIN_GAP, MIN_OBJECT_SIZE, OBJECT_COLORS, SHAPES, SIZE_BUCKETS, Scene,
    ShapeObject, boxes_clear, clear_relation, depth_order, max_object_size, relation, sample_scene,
)


def scenes(n: int, seed: int = 0, split: str = "all") -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, split=split) for _ in range(n)]


def test_vocabulary_is_large_enough_and_separable():
    assert len(OBJECT_COLORS) >= 8 and {"circle", "square", "triangle"} <= set(SHAPES) and len(SHAPES) >= 4
    palette = np.array([*OBJECT_COLORS.values(), *BACKGROUND_COLORS.values()], dtype=float)
    dists = np.linalg.norm(palette[:, None] - palette[None], axis=-1) + np.eye(len(palette)) * 1e9
    assert dists.min() > 60  # nearest-colour decisions have a wide margin
    assert max(max(w / h, h / w) for w, h in SIZE_BUCKETS) == 4


def test_sampler_is_deterministic_in_seed():
    assert scenes(30, seed=5) == scenes(30, seed=5)
    assert scenes(30, seed=5) != scenes(30, seed=6)


def test_layout_rules_hold():
    for scene in scenes(400, seed=1):
        assert (scene.width, scene.height) in SIZE_BUCKETS and 1 <= len(scene.objects) <= 4
        for k, o in enumerate(scene.objects):
            x0, y0, x1, y1 = o.box
            assert x0 >= BORDER and y0 >= BORDER and x1 <= scene.width - BORDER and y1 <= scene.height - BORDER
            assert MIN_OBJECT_SIZE <= o.size <= max_object_size(scene.width, scene.height)
            assert o.x % GRID == 0 and o.y % GRID == 0 and o.size % GRID == 0  # whole tokenizer cells
            assert all(boxes_clear(o.box, p.box, MIN_GAP) for p in scene.objects[k + 1:])
        assert scene == Scene.from_dict(scene.to_dict())


def test_every_bucket_holds_four_objects_and_every_edit_stays_on_the_grid():
    from diffusers_lumina_mgpt.shapes.tasks import make_records

    rng = np.random.default_rng(3)
    for size in SIZE_BUCKETS:
        assert len(sample_scene(rng, size=size, n_objects=4).objects) == 4
    for rec in make_records("edit", 40, seed=4) + make_records("multiedit", 20, seed=4):
        scenes_after = [Scene.from_dict(t["scene"]) for t in rec.targets if t["kind"] == "scene"]
        assert scenes_after and all(o.x % GRID == 0 and o.y % GRID == 0 for s in scenes_after for o in s.objects)


def test_heldout_split():
    assert not any(s.heldout for s in scenes(300, seed=2, split="train"))
    assert all(s.heldout for s in scenes(100, seed=2, split="heldout"))
    combos = {(o.color, o.shape) for s in scenes(300, seed=2, split="all") for o in s.objects}
    assert HELDOUT_COMBOS <= combos


def test_relations_and_depth_order():
    a, b = ShapeObject("circle", "red", 2, 20, 10), ShapeObject("square", "blue", 40, 22, 10)
    assert relation(a, b) == "left" and relation(b, a) == "right" and clear_relation(a, b) == "left"
    c = ShapeObject("circle", "red", 20, 40, 10)
    assert relation(a, c) == "above" and relation(c, a) == "below"
    near_diagonal = ShapeObject("cross", "green", 20, 39, 10)  # dx 18, dy 19
    assert relation(a, near_diagonal) == "above" and clear_relation(a, near_diagonal) is None
    scene = Scene(64, 64, "white", (a, b, c))
    assert depth_order(scene) == [2, 1, 0]  # lowest bottom edge is nearest


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [10, 11, 17, 28])
def test_shape_masks_fill_their_box(shape, size):
    mask = shape_mask(shape, size, size)
    assert mask.any(0).all() and mask.any(1).all()  # the box is the tight bounding box
    assert np.array_equal(mask, mask[:, ::-1])  # left-right symmetric
    fill = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5, "cross": 5 / 9}[shape]
    assert abs(mask.mean() - fill) < 0.12


def test_render_is_flat_and_maps_agree():
    for scene in scenes(100, seed=3):
        image = np.asarray(render_scene(scene))
        labels = label_map(scene)
        colors = {tuple(c) for c in image.reshape(-1, 3)}
        assert colors == {BACKGROUND_COLORS[scene.background], *(OBJECT_COLORS[o.color] for o in scene.objects)}
        for i, o in enumerate(scene.objects):
            assert (image[labels == i] == OBJECT_COLORS[o.color]).all()
            assert (labels == i).sum() == shape_mask(o.shape, o.size, o.size).sum()  # never clipped or covered
        seg = np.asarray(render_segmentation(scene))
        assert (seg[labels == -1] == SEGMENT_COLORS["background"]).all()
        depth = np.asarray(render_depth(scene))[:, :, 0]
        assert (depth[labels == -1] == 0).all()
        levels = [int(depth[labels == i][0]) for i in range(len(scene.objects))]
        ranks = depth_order(scene)
        assert levels[ranks.index(0)] == NEAR_LEVEL and min(levels) >= FAR_LEVEL
        assert sorted(levels, reverse=True) == [levels[ranks.index(r)] for r in range(len(ranks))]


def test_degrade_changes_pixels_but_keeps_size():
    scene = scenes(1, seed=4)[0]
    clean = render_scene(scene)
    rng = np.random.default_rng(0)
    assert np.array_equal(np.asarray(degrade(clean, rng, "none")), np.asarray(clean))
    for kind in ("noise", "jpeg"):
        out = degrade(clean, rng, kind)
        assert out.size == clean.size and not np.array_equal(np.asarray(out), np.asarray(clean))
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(clean, rng, "blur")
