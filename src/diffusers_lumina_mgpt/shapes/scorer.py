"""ShapesWorld scorer: recover the objects in an image and judge it against a prompt, a scene or an answer.

Detection: every pixel takes the nearest palette colour (object and background colours); the
background is the most common colour on the image border; pixels of one object colour that touch
(4-connectivity) form a component; components smaller than `min_area` are noise; a component's
shape is the `render.shape_mask` template (drawn in the component's bounding box) with the
highest IoU, or "unknown" below `MIN_SHAPE_IOU`. The same rules judge every generator, so scores
are comparable across models.

Judgements (`score_target` dispatches on a target's "kind"):
- prompt: GenEval-style, closed world; passes only if everything the prompt asks holds;
- t2i caption prompt / caption text: object multiset, background and stated relations agree;
- answer: exact match after `normalize_answer`;
- scene (editing, no-edit): same objects, each within a position tolerance or inside its region;
- segmentation: mean IoU over classes (passes at >= 0.9); depth: pairwise depth-order accuracy
  (passes when every pair is ordered right and the foreground IoU is >= 0.9).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .language import ObjectSpec, PromptSpec, normalize_answer, parse_caption
from .render import FAR_LEVEL, SEGMENT_COLORS, label_map, shape_mask
from .scene import BACKGROUND_COLORS, OBJECT_COLORS, SHAPES, Scene, depth_order, region_of, relation

PALETTE_NAMES: tuple[str, ...] = (*OBJECT_COLORS, *BACKGROUND_COLORS)
_PALETTE = np.array([*OBJECT_COLORS.values(), *BACKGROUND_COLORS.values()], dtype=np.int32)  # (P, 3)
MIN_SHAPE_IOU = 0.6
SEGMENTATION_PASS_IOU = 0.9


@dataclass(frozen=True)
class DetectedObject:
    """A recovered object: bounding box [x0, x1) x [y0, y1) in image pixels."""

    shape: str
    color: str
    x0: int
    y0: int
    x1: int
    y1: int
    area: int
    shape_iou: float

    @property
    def cx(self) -> float:
        return (self.x0 + self.x1) / 2

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2

    @property
    def size(self) -> float:
        return float(max(self.x1 - self.x0, self.y1 - self.y0))


@dataclass(frozen=True)
class Detection:
    width: int
    height: int
    background: str
    objects: tuple[DetectedObject, ...]


def _as_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.int32)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8:  # floats in [0, 1]
        arr = np.clip(np.round(arr * 255), 0, 255)
    return arr.astype(np.int32)


def quantize(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W) index into PALETTE_NAMES of each pixel's nearest palette colour."""
    rgb = _as_rgb(image)
    dist = ((rgb[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)  # (H, W, P)
    return dist.argmin(-1)


def connected_components(classes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W) component id (0..K-1) of masked pixels joined to equal-class 4-neighbours; -1 elsewhere.

    Min-label propagation with pointer jumping, vectorised in numpy.
    """
    h, w = classes.shape
    big = h * w
    lab = np.where(mask, np.arange(big).reshape(h, w), big)
    down = mask[1:] & mask[:-1] & (classes[1:] == classes[:-1])  # pixel (y+1, x) joins (y, x)
    right = mask[:, 1:] & mask[:, :-1] & (classes[:, 1:] == classes[:, :-1])
    while True:
        new = lab.copy()
        new[1:] = np.where(down, np.minimum(new[1:], lab[:-1]), new[1:])
        new[:-1] = np.where(down, np.minimum(new[:-1], lab[1:]), new[:-1])
        new[:, 1:] = np.where(right, np.minimum(new[:, 1:], lab[:, :-1]), new[:, 1:])
        new[:, :-1] = np.where(right, np.minimum(new[:, :-1], lab[:, 1:]), new[:, :-1])
        flat = new.ravel()
        inside = flat < big
        flat[inside] = flat[flat[inside]]  # labels point at pixels of the same component
        if np.array_equal(new, lab):
            break
        lab = new
    out = np.full((h, w), -1, dtype=np.int64)
    _, out[mask] = np.unique(lab[mask], return_inverse=True)
    return out


def classify_shape(component: np.ndarray, slack: int = 2) -> tuple[str, float]:
    """Best-matching shape of a cropped boolean component mask, and its IoU ("unknown" if too low).

    Templates are drawn in the component's box grown by 0..`slack` px per axis at every offset,
    so shapes whose edges were eroded (JPEG, VQ reconstructions) still match their template.
    Every shape has a square box, so an elongated component (aspect > 1.25, beyond `slack`) is "unknown".
    """
    h, w = component.shape
    if max(w, h) > 1.25 * min(w, h) + slack:
        return "unknown", 0.0
    best, best_iou = "unknown", 0.0
    for eh in range(slack + 1):
        for ew in range(slack + 1):
            for shape in SHAPES:
                template = shape_mask(shape, w + ew, h + eh)
                for oy in range(eh + 1):
                    for ox in range(ew + 1):
                        inside = template[oy:oy + h, ox:ox + w]
                        inter = int((inside & component).sum())
                        iou = inter / (int(template.sum()) + int(component.sum()) - inter)
                        if iou > best_iou:
                            best, best_iou = shape, iou
    return (best if best_iou >= MIN_SHAPE_IOU else "unknown"), best_iou


def detect(image: Image.Image | np.ndarray, min_area: int | None = None) -> Detection:
    """Recover background colour and objects from an image of any size."""
    classes = quantize(image)
    h, w = classes.shape
    min_area = min_area if min_area is not None else max(8, int(round(0.0025 * h * w)))
    border = np.concatenate([classes[0], classes[-1], classes[:, 0], classes[:, -1]])
    bg_index = int(np.bincount(border, minlength=len(PALETTE_NAMES)).argmax())
    mask = (classes != bg_index) & (classes < len(OBJECT_COLORS))  # background-palette pixels are never objects
    comps = connected_components(classes, mask)
    objects = []
    for k in range(int(comps.max()) + 1):
        ys, xs = np.nonzero(comps == k)
        if len(ys) < min_area:
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        shape, iou = classify_shape(comps[y0:y1, x0:x1] == k)
        objects.append(DetectedObject(shape, PALETTE_NAMES[classes[ys[0], xs[0]]], int(x0), int(y0), int(x1), int(y1),
                                      len(ys), iou))
    objects.sort(key=lambda o: (o.y0, o.x0))
    return Detection(w, h, PALETTE_NAMES[bg_index], tuple(objects))


# ----------------------------------------------------------------------------- judgements
def check_spec(spec: PromptSpec, objects: tuple | list) -> tuple[bool, str]:
    """Whether `objects` (detected or scene objects) satisfy a prompt, closed world; with a reason."""
    if len(objects) != len(spec.objects):
        return False, f"{len(objects)} objects, prompt has {len(spec.objects)}"

    def fits(o: Any, s: ObjectSpec) -> bool:
        return o.shape == s.shape and (s.color is None or o.color == s.color)

    reason = "objects do not match"
    for perm in itertools.permutations(range(len(objects))):
        if all(fits(objects[p], s) for p, s in zip(perm, spec.objects)):
            if spec.relation is None or relation(objects[perm[0]], objects[perm[1]]) == spec.relation:
                return True, "ok"
            reason = "relation does not hold"  # the right objects in the wrong places, whatever other orders give
    return False, reason


def caption_holds(text: str, objects: tuple | list, background: str) -> bool:
    """Whether a caption's objects, background and stated relations hold for these objects."""
    parsed = parse_caption(text)
    if not parsed.objects or parsed.background is None:
        return False
    if parsed.background != background or Counter((o.color, o.shape) for o in objects) != parsed.objects:
        return False
    for ca, sa, rel, cb, sb in parsed.relations:
        a = [o for o in objects if (o.color, o.shape) == (ca, sa)]
        b = [o for o in objects if (o.color, o.shape) == (cb, sb)]
        if len(a) != 1 or len(b) != 1 or relation(a[0], b[0]) != rel:
            return False
    return True


def scene_matches(detection: Detection, scene: Scene, regions: dict[int, str] | None = None) -> bool:
    """Whether a detection shows `scene`: background, and each object (same colour and shape) either
    within a position/size tolerance or, for indices in `regions`, centred in the named 3x3 cell.
    Detections of another size are compared in scene coordinates."""
    regions = regions or {}
    if detection.background != scene.background or len(detection.objects) != len(scene.objects):
        return False
    sx, sy = scene.width / detection.width, scene.height / detection.height
    tol = max(3.0, 0.08 * min(scene.width, scene.height))

    def ok(det: DetectedObject, i: int) -> bool:
        obj = scene.objects[i]
        if (det.color, det.shape) != (obj.color, obj.shape):
            return False
        cx, cy = det.cx * sx, det.cy * sy
        if i in regions:
            return region_of(scene.width, scene.height, cx, cy) == regions[i]
        size = det.size * max(sx, sy)
        return abs(cx - obj.cx) <= tol and abs(cy - obj.cy) <= tol and abs(size - obj.size) <= max(2.0, 0.25 * obj.size)

    return any(all(ok(d, i) for d, i in zip(detection.objects, perm))
               for perm in itertools.permutations(range(len(scene.objects))))


def _resize_to(image: Image.Image | np.ndarray, width: int, height: int) -> np.ndarray:
    img = image if isinstance(image, Image.Image) else Image.fromarray(_as_rgb(image).astype(np.uint8))
    img = img.convert("RGB")
    if img.size != (width, height):
        img = img.resize((width, height), Image.NEAREST)
    return np.asarray(img, dtype=np.int32)


def segmentation_iou(image: Image.Image | np.ndarray, scene: Scene) -> float:
    """Mean IoU over classes present in the truth or the prediction (nearest class colour per pixel)."""
    rgb = _resize_to(image, scene.width, scene.height)
    names = list(SEGMENT_COLORS)
    colors = np.array(list(SEGMENT_COLORS.values()), dtype=np.int32)
    pred = ((rgb[:, :, None, :] - colors[None, None]) ** 2).sum(-1).argmin(-1)
    labels = label_map(scene)
    shape_ids = np.array([names.index(o.shape) for o in scene.objects] + [0])  # index -1 -> background
    truth = shape_ids[labels]
    ious = []
    for c in np.union1d(np.unique(pred), np.unique(truth)):
        inter = np.logical_and(pred == c, truth == c).sum()
        ious.append(inter / np.logical_or(pred == c, truth == c).sum())
    return float(np.mean(ious))


def depth_foreground_iou(image: Image.Image | np.ndarray, scene: Scene) -> float:
    """IoU of the predicted foreground (grey > FAR_LEVEL / 2) with the union of the objects."""
    fg = _resize_to(image, scene.width, scene.height).mean(-1) > FAR_LEVEL / 2
    truth = label_map(scene) >= 0
    return float((fg & truth).sum() / max(1, (fg | truth).sum()))


def depth_order_accuracy(image: Image.Image | np.ndarray, scene: Scene) -> float:
    """Fraction of ordered pairs (object vs object by depth rank, object vs background) whose median
    grey levels in the predicted map are ordered correctly (nearer = brighter)."""
    grey = _resize_to(image, scene.width, scene.height).mean(-1)
    labels = label_map(scene)
    levels = [float(np.median(grey[labels == i])) for i in range(len(scene.objects))]
    bg = float(np.median(grey[labels == -1])) if (labels == -1).any() else -1.0
    ranks = depth_order(scene)
    checks = [levels[i] > bg for i in range(len(levels))]
    for i, j in itertools.combinations(range(len(levels)), 2):
        near, far = (i, j) if ranks[i] < ranks[j] else (j, i)
        checks.append(levels[near] > levels[far])
    return float(np.mean(checks))


@dataclass(frozen=True)
class TurnScore:
    passed: bool
    score: float  # in [0, 1]: 1/0 for pass/fail judgements, mIoU or order accuracy for dense maps


def score_target(target: dict[str, Any], output: str | Image.Image | np.ndarray) -> TurnScore:
    """Judge one model output against one ground-truth target (a record's `targets` entry)."""
    kind = target["kind"]
    if kind in ("caption", "answer"):
        if not isinstance(output, str):
            raise ValueError(f"a {kind} target needs a text output, got {type(output).__name__}")
        if kind == "answer":
            ok = normalize_answer(output) == normalize_answer(target["answer"])
        else:
            scene = Scene.from_dict(target["scene"])
            ok = caption_holds(output, scene.objects, scene.background)
        return TurnScore(ok, float(ok))
    if isinstance(output, str):
        raise ValueError(f"a {kind} target needs an image output, got text")
    scene = Scene.from_dict(target["scene"])
    if kind == "prompt":
        det = detect(output)
        if target.get("spec") is not None:
            ok = check_spec(PromptSpec.from_dict(target["spec"]), det.objects)[0]
        else:
            ok = caption_holds(target["text"], det.objects, det.background)
    elif kind == "scene":
        regions = {int(k): v for k, v in target.get("regions", {}).items()}
        ok = scene_matches(detect(output), scene, regions)
    elif kind == "segmentation":
        iou = segmentation_iou(output, scene)
        return TurnScore(iou >= SEGMENTATION_PASS_IOU, iou)
    elif kind == "depth":
        acc = depth_order_accuracy(output, scene)
        return TurnScore(acc == 1.0 and depth_foreground_iou(output, scene) >= SEGMENTATION_PASS_IOU, acc)
    else:
        raise ValueError(f"unknown target kind {kind!r}")
    return TurnScore(ok, float(ok))


def scene_satisfies(spec: PromptSpec, scene: Scene) -> bool:
    """Symbolic truth: does the scene itself satisfy the prompt (no pixels involved)."""
    return check_spec(spec, scene.objects)[0]

