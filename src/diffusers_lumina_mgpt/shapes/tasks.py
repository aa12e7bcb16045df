"""ShapesWorld tasks: records with exact ground truth in the Lumina-mGPT conversation format.

A record is `{"conversations": [{"from": "human"|"gpt", "value": ...}], "image": [...]}`, images
in order of their `<|image|>` placeholders, plus a `shapes` entry holding the ground truth: one
`target` per gpt turn, which `scorer.score_target` judges a model's output against.

Tasks: t2i, caption, vqa, edit, multiedit, segmentation, depth, noedit (see TASKS). `make_family_t2i`
adds text-to-image records whose prompts all come from one scored family (`t2i:FAMILY` in training
sources), for a recipe that needs more of one family than random scenes give.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..prompts import DEPTH_TEXT, IMAGE_PLACEHOLDER, SEGMENTATION_TEXT, TEXT_TO_IMAGE_TEMPLATE
from .language import (
    FAMILIES, NOEDIT_INSTRUCTIONS, PROMPT_PREFIX, QUESTION_KINDS, ObjectSpec, PromptSpec, caption, edit_instruction,
    make_prompt, make_question, prompt_from_scene, prompt_text, question_kinds,
)
from .render import DEGRADATIONS, degrade, render_depth, render_scene, render_segmentation
from .scene import (
    BACKGROUNDS, COLORS, MAX_OBJECTS, REGIONS, Scene, check_split, clear_relation, combo_allowed, place_object,
    region_of, sample_combo, sample_scene, sample_size,
)
from .scorer import TurnScore, score_target

IMAGE = IMAGE_PLACEHOLDER
CAPTION_PROMPTS = ("Describe the image in detail.", "Describe this image.", "What is in this image?")
EDIT_KINDS = ("recolor", "remove", "add", "move")


@dataclass
class TaskRecord:
    """One training/eval example: the conversation, its images (PIL, in placeholder order), and per
    gpt turn a ground-truth target for the scorer."""

    task: str
    conversations: list[dict[str, str]]
    images: list[Image.Image]
    targets: list[dict[str, Any]]
    split: str = "train"
    heldout: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def gpt_turns(self) -> list[int]:
        return [i for i, turn in enumerate(self.conversations) if turn["from"] == "gpt"]

    def ground_truth_outputs(self) -> list[str | Image.Image]:
        """The reference output of each gpt turn: its text, or the image its placeholder stands for."""
        outputs: list[str | Image.Image] = []
        seen = 0
        for turn in self.conversations:
            count = turn["value"].count(IMAGE)
            if turn["from"] == "gpt":
                outputs.append(self.images[seen] if count else turn["value"])
            seen += count
        return outputs

    def score(self, outputs: list[str | Image.Image]) -> list[TurnScore]:
        """Scores of a model's outputs, one per gpt turn."""
        if len(outputs) != len(self.targets):
            raise ValueError(f"{self.task} record has {len(self.targets)} gpt turns, got {len(outputs)} outputs")
        return [score_target(t, o) for t, o in zip(self.targets, outputs)]

    def to_json(self, image_paths: list[str]) -> dict[str, Any]:
        return {"conversations": self.conversations, "image": image_paths,
                "shapes": {"task": self.task, "split": self.split, "heldout": self.heldout,
                           "targets": self.targets, **self.extra}}


def _turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    out = []
    for human, gpt in pairs:
        out += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    return out


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


# ----------------------------------------------------------------------------- editing
def random_edit(scene: Scene, rng: np.random.Generator, split: str, regions: dict[int, str] | None = None,
                kinds: tuple[str, ...] = EDIT_KINDS) -> tuple[str, str, Scene, dict[int, str]] | None:
    """(kind, instruction, edited scene, region constraints) for one random feasible edit, or None.

    `regions` maps object index -> 3x3 cell for objects whose exact position is free (added or moved
    earlier); they are carried through the edit with their indices updated.
    """
    regions = dict(regions or {})
    unique = scene.unique_objects()
    objs = list(scene.objects)
    for kind in rng.permutation(list(kinds)):
        kind = str(kind)
        if kind in ("recolor", "remove", "move") and not unique:
            continue
        i = int(rng.choice(unique)) if unique else -1
        if kind == "recolor":
            obj = objs[i]
            colors = [c for c in COLORS if c != obj.color and combo_allowed(c, obj.shape, split)]
            new = _pick(rng, colors)
            objs[i] = type(obj)(obj.shape, new, obj.x, obj.y, obj.size)
            return kind, edit_instruction(kind, obj, rng, new_color=new), scene.replace_objects(objs), regions
        if kind == "remove" and len(objs) >= 2:
            text = edit_instruction(kind, objs[i], rng)
            del objs[i]
            moved = {(k - (k > i)): v for k, v in regions.items() if k != i}
            return kind, text, scene.replace_objects(objs), moved
        if kind == "add" and len(objs) < MAX_OBJECTS + 1:
            color, shape = sample_combo(rng, split)
            for region in rng.permutation(list(REGIONS)):
                new = place_object(rng, scene, shape, color, region=str(region), tries=30)
                if new is not None:
                    regions[len(objs)] = str(region)
                    return kind, edit_instruction(kind, new, rng, region=str(region)), scene.replace_objects([*objs, new]), regions
        if kind == "move":
            obj = objs[i]
            here = region_of(scene.width, scene.height, obj.cx, obj.cy)
            for region in rng.permutation([r for r in REGIONS if r != here]):
                new = place_object(rng, scene, obj.shape, obj.color, size=obj.size, region=str(region), ignore=i, tries=30)
                if new is not None:
                    objs[i] = new
                    regions[i] = str(region)
                    return kind, edit_instruction(kind, obj, rng, region=str(region)), scene.replace_objects(objs), regions
    return None


def _scene_target(scene: Scene, regions: dict[int, str] | None = None) -> dict[str, Any]:
    return {"kind": "scene", "scene": scene.to_dict(), "regions": {str(k): v for k, v in (regions or {}).items()}}


# ----------------------------------------------------------------------------- task builders
def make_t2i(rng: np.random.Generator, split: str, size: tuple[int, int] | None = None) -> TaskRecord:
    scene = sample_scene(rng, split=split, size=size)
    spec = prompt_from_scene(scene, rng) if rng.random() < 0.5 else None
    return _t2i_record(scene, spec.text if spec is not None else caption(scene, rng), spec, split)


def _t2i_record(scene: Scene, text: str, spec: PromptSpec | None, split: str) -> TaskRecord:
    """A text-to-image record: `text` asks for `scene` (a family prompt's `spec`, or None for a caption)."""
    human = TEXT_TO_IMAGE_TEMPLATE.format(width=scene.width, height=scene.height, prompt=text)
    target = {"kind": "prompt", "text": text, "spec": spec.to_dict() if spec else None, "scene": scene.to_dict()}
    return TaskRecord("t2i", _turns((human, IMAGE)), [render_scene(scene)], [target], split, scene.heldout)


def make_family_t2i(rng: np.random.Generator, split: str, family: str, size: tuple[int, int] | None = None) -> TaskRecord:
    """A text-to-image record whose prompt is one of `family`'s, with a scene laid out for it.

    Phrased as `prompt_from_scene` phrases training prompts: colours named half the time where the family
    leaves them free (position, two_object, single_object), and 30% without the leading "an image of"."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; use any of {', '.join(FAMILIES)}")
    spec = make_prompt(family, rng, split)
    scene = scene_for_prompt(spec, rng, size, split=split)
    objects = spec.objects
    if family in ("position", "two_object", "single_object") and rng.random() < 0.5:
        objects = tuple(ObjectSpec(o.shape, o.color) for o in scene.objects)
    text = prompt_text(family, objects, spec.relation)
    text = text.removeprefix(PROMPT_PREFIX) if rng.random() < 0.3 else text
    return _t2i_record(scene, text, PromptSpec(family, text, objects, spec.relation), split)


def make_caption(rng: np.random.Generator, split: str, size: tuple[int, int] | None = None) -> TaskRecord:
    scene = sample_scene(rng, split=split, size=size)
    text = caption(scene, rng)
    conv = _turns((f"{_pick(rng, CAPTION_PROMPTS)} {IMAGE}", text))
    return TaskRecord("caption", conv, [render_scene(scene)], [{"kind": "caption", "scene": scene.to_dict()}],
                      split, scene.heldout)


def make_vqa(rng: np.random.Generator, split: str, kind: str | None = None, size: tuple[int, int] | None = None) -> TaskRecord:
    """One to three questions about a scene; with `kind` (one of QUESTION_KINDS), questions of that kind only,
    on a scene that fits it, and no question asked twice."""
    if kind is not None and kind not in QUESTION_KINDS:
        raise ValueError(f"unknown question kind {kind!r}; use one of {', '.join(QUESTION_KINDS)}")
    scene = sample_scene(rng, split=split, size=size)
    while kind is not None and kind not in question_kinds(scene):
        scene = sample_scene(rng, split=split, size=size)
    pairs, targets, asked = [], [], set()
    for turn in range(int(rng.integers(1, 4))):
        for _ in range(10):  # avoid repeating a question
            question, answer, asked_kind = make_question(scene, rng, kind)
            if question not in asked:
                break
        if kind is not None and question in asked:
            break  # this scene has no other question of that kind (the background's colour: one)
        asked.add(question)
        pairs.append((f"{question} {IMAGE}" if turn == 0 else question, answer))
        targets.append({"kind": "answer", "answer": answer, "question_kind": asked_kind})
    return TaskRecord("vqa", _turns(*pairs), [render_scene(scene)], targets, split, scene.heldout)


def _make_edits(rng: np.random.Generator, split: str, n_edits: int, task: str, size: tuple[int, int] | None,
                kind: str | None = None) -> TaskRecord:
    if kind is not None and kind not in EDIT_KINDS:
        raise ValueError(f"unknown edit kind {kind!r}; use one of {', '.join(EDIT_KINDS)}")
    kinds = EDIT_KINDS if kind is None else (kind,)
    for _ in range(50):
        scene = sample_scene(rng, split=split, unique_refs=1, size=size)
        current, regions, pairs, images, targets = scene, {}, [], [render_scene(scene)], []
        for turn in range(n_edits):
            edit = random_edit(current, rng, split, regions, kinds)
            if edit is None:
                break
            done, text, current, regions = edit
            pairs.append((f"{text} {IMAGE}" if turn == 0 else text, IMAGE))
            images.append(render_scene(current))
            targets.append({**_scene_target(current, regions), "edit_kind": done})
        if len(pairs) == n_edits:
            heldout = scene.heldout or any(Scene.from_dict(t["scene"]).heldout for t in targets)
            return TaskRecord(task, _turns(*pairs), images, targets, split, heldout,
                              {"source": scene.to_dict()})
    raise ValueError("could not sample a feasible edit sequence")  # pragma: no cover - needs 50 failures


def make_edit(rng: np.random.Generator, split: str, size: tuple[int, int] | None = None,
              kind: str | None = None) -> TaskRecord:
    """One edit; with `kind` (one of EDIT_KINDS), an edit of that kind."""
    return _make_edits(rng, split, 1, "edit", size, kind)


def make_multiedit(rng: np.random.Generator, split: str, size: tuple[int, int] | None = None,
                   kind: str | None = None) -> TaskRecord:
    """Two or three edits in turn; with `kind`, every turn of that kind."""
    return _make_edits(rng, split, int(rng.integers(2, 4)), "multiedit", size, kind)


def make_segmentation(rng: np.random.Generator, split: str, size: tuple[int, int] | None = None) -> TaskRecord:
    scene = sample_scene(rng, split=split, size=size)
    conv = _turns((f"{SEGMENTATION_TEXT} {IMAGE}", IMAGE))
    return TaskRecord("segmentation", conv, [render_scene(scene), render_segmentation(scene)],
                      [{"kind": "segmentation", "scene": scene.to_dict()}], split, scene.heldout)


def make_depth(rng: np.random.Generator, split: str, size: tuple[int, int] | None = None) -> TaskRecord:
    scene = sample_scene(rng, split=split, size=size)
    conv = _turns((f"{DEPTH_TEXT} {IMAGE}", IMAGE))
    return TaskRecord("depth", conv, [render_scene(scene), render_depth(scene)],
                      [{"kind": "depth", "scene": scene.to_dict()}], split, scene.heldout)


def make_noedit(rng: np.random.Generator, split: str, size: tuple[int, int] | None = None) -> TaskRecord:
    scene = sample_scene(rng, split=split, size=size)
    clean = render_scene(scene)
    kind = _pick(rng, DEGRADATIONS)
    conv = _turns((f"{_pick(rng, NOEDIT_INSTRUCTIONS)} {IMAGE}", IMAGE))
    return TaskRecord("noedit", conv, [degrade(clean, rng, kind), clean], [_scene_target(scene)], split,
                      scene.heldout, {"degradation": kind})


# every builder takes (rng, split, size=None): size (width, height) fixes the picture's size, None draws a bucket
TASKS: dict[str, Callable[..., TaskRecord]] = {
    "t2i": make_t2i, "caption": make_caption, "vqa": make_vqa, "edit": make_edit, "multiedit": make_multiedit,
    "segmentation": make_segmentation, "depth": make_depth, "noedit": make_noedit,
}


def make_records(task: str, n: int, seed: int = 0, split: str = "train") -> list[TaskRecord]:
    """`n` records of `task` ("all" cycles through every task), deterministic in `seed`."""
    check_split(split)
    if task != "all" and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)} or all")
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    names = list(TASKS) if task == "all" else [task]
    rng = np.random.default_rng(seed)
    return [TASKS[names[i % len(names)]](rng, split) for i in range(n)]


def write_records(records: list[TaskRecord], out_dir: str | Path, relative: bool = False) -> Path:
    """Write `records.jsonl` and `images/*.png` under `out_dir`; image paths are absolute unless `relative`
    (then relative to `out_dir`). Returns the JSONL path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    path = out / "records.jsonl"
    with path.open("w") as f:
        for i, rec in enumerate(records):
            paths = []
            for k, image in enumerate(rec.images):
                file = out / "images" / f"{i:06d}_{rec.task}_{k}.png"
                image.save(file)
                paths.append(str(file.relative_to(out)) if relative else str(file.resolve()))
            f.write(json.dumps(rec.to_json(paths)) + "\n")
    return path


def read_records(path: str | Path) -> list[TaskRecord]:
    """Records written by `write_records` (relative image paths resolved against the file's folder)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; write one with `lumina-mgpt shapes make`")
    records = []
    for line in path.read_text().splitlines():
        data = json.loads(line)
        meta = data.get("shapes")
        if meta is None:
            raise ValueError(f"{path} holds a record without a 'shapes' ground-truth entry; was it made by shapes make?")
        images = [Image.open(p if Path(p).is_absolute() else path.parent / p).convert("RGB") for p in data["image"]]
        extra = {k: v for k, v in meta.items() if k not in ("task", "split", "heldout", "targets")}
        records.append(TaskRecord(meta["task"], data["conversations"], images, meta["targets"], meta["split"],
                                  meta["heldout"], extra))
    return records


# ----------------------------------------------------------------------------- prompts -> scenes
def scene_for_prompt(spec: PromptSpec, rng: np.random.Generator, size: tuple[int, int] | None = None,
                     split: str = "train") -> Scene:
    """A ground-truth scene for a prompt: exactly its objects, free attributes sampled by `split`,
    the relation (if any) holding with a clear margin."""
    for _ in range(200):
        w, h = size if size is not None else sample_size(rng)
        scene = Scene(w, h, _pick(rng, BACKGROUNDS), ())
        objs = []
        for o in spec.objects:
            color = o.color or sample_combo(rng, split, shape=o.shape)[0]
            new = place_object(rng, scene, o.shape, color)
            if new is None:
                break
            objs.append(new)
            scene = scene.replace_objects(objs)
        if len(objs) == len(spec.objects) and (spec.relation is None or clear_relation(objs[0], objs[1]) == spec.relation):
            return scene
    raise ValueError(f"could not lay out {spec.text!r} in a {size} image; use a larger --size")


__all__ = ["EDIT_KINDS", "TASKS", "TaskRecord", "make_family_t2i", "make_records", "read_records", "random_edit",
           "scene_for_prompt", "write_records"]
