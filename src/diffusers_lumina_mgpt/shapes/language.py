"""ShapesWorld language: captions (several phrasings), their parser, GenEval-style prompt families,
VQA questions with exact answers, and editing instructions.

Prompt semantics are closed-world: a prompt describes every object in the image, so "an image of
a red circle" passes only on an image holding exactly one object, a red circle (attributes a
prompt leaves out, such as colour in `single_object`, are free). GenEval allows extra objects;
in a world of 1-4 objects that would let random images pass too often.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .scene import (
    BACKGROUNDS, COLORS, HELDOUT_COMBOS, RELATIONS, SHAPES, Scene, ShapeObject, clear_relation, region_of,
    sample_combo,
)

FAMILIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# families whose prompts bind colours to shapes, so they have a held-out variant
HELDOUT_FAMILIES: tuple[str, ...] = ("colors", "color_attr")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RELATION_PHRASES: dict[str, str] = {
    "left": "to the left of", "right": "to the right of", "above": "above", "below": "below",
}
REGION_PHRASES: dict[str, str] = {
    "top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left corner", "bottom": "at the bottom", "bottom right": "in the bottom right corner",
}
MOVE_PHRASES: dict[str, str] = {
    region: phrase.replace("in the ", "to the ").replace("at the ", "to the ").replace("on the ", "to the ")
    for region, phrase in REGION_PHRASES.items()
}
_COLOR_RE = "|".join(COLORS)
_SHAPE_RE = "|".join(SHAPES)
_OBJECT_RE = re.compile(rf"\b(a|an|one|two|three|four)\s+({_COLOR_RE})\s+({_SHAPE_RE})(?:es|s)?\b")
_BACKGROUND_RE = re.compile(rf"\b({'|'.join(BACKGROUNDS)}) background\b|\bbackground is ({'|'.join(BACKGROUNDS)})\b")
_RELATION_RE = re.compile(
    rf"\bthe ({_COLOR_RE}) ({_SHAPE_RE}) is ({'|'.join(RELATION_PHRASES.values())}) the ({_COLOR_RE}) ({_SHAPE_RE})\b"
)


def plural(shape: str, count: int = 2) -> str:
    if count == 1:
        return shape
    return shape + ("es" if shape.endswith("s") else "s")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def count_phrase(count: int, *words: str) -> str:
    """'a red circle', 'three red circles', 'an orange square'."""
    *attrs, shape = words
    noun = " ".join([*attrs, plural(shape, count)])
    return f"{article(noun)} {noun}" if count == 1 else f"{NUMBER_WORDS[count]} {noun}"


def join_list(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def object_groups(scene: Scene) -> list[tuple[int, str, str]]:
    """(count, colour, shape) per distinct colour+shape, in reading order of each group's first object
    (`Scene.reading_order`), so a caption names objects in the order an AR model draws them."""
    ordered = scene.reading_order()
    counts = Counter((o.color, o.shape) for o in ordered)
    return [(counts[key], *key) for key in dict.fromkeys((o.color, o.shape) for o in ordered)]


def _clear_pairs(scene: Scene) -> list[tuple[int, int, str]]:
    unique = scene.unique_objects()
    pairs = []
    for i in unique:
        for j in unique:
            rel = clear_relation(scene.objects[i], scene.objects[j]) if i != j else None
            if rel is not None:
                pairs.append((i, j, rel))
    return pairs


CAPTION_STYLES = ("list", "background_first", "count", "sentence_bg", "relation")


def caption(scene: Scene, rng: np.random.Generator, style: str | None = None) -> str:
    """A full description of the scene (every object, the background; sometimes one relation)."""
    groups = object_groups(scene)
    listing = join_list([count_phrase(c, color, shape) for c, color, shape in groups])
    bg = scene.background
    pairs = _clear_pairs(scene)
    styles = [s for s in CAPTION_STYLES if s != "relation" or pairs]
    style = style if style is not None else styles[int(rng.integers(len(styles)))]
    if style == "list":
        text = f"{listing} on a {bg} background."
    elif style == "background_first":
        text = f"a {bg} background with {listing}."
    elif style == "count":
        n = len(scene.objects)
        verb, noun = ("is", "object") if n == 1 else ("are", "objects")
        text = f"there {verb} {NUMBER_WORDS[n]} {noun} on a {bg} background: {listing}."
    elif style == "sentence_bg":
        text = f"{listing}. The background is {bg}."
    elif style == "relation":
        if not pairs:
            raise ValueError("style='relation' needs a scene with two unambiguous objects in a clear relation")
        i, j, rel = pairs[int(rng.integers(len(pairs)))]
        a, b = scene.objects[i], scene.objects[j]
        text = f"on a {bg} background, {listing}; the {a.name()} is {RELATION_PHRASES[rel]} the {b.name()}."
    else:
        raise ValueError(f"unknown caption style {style!r}; use one of {CAPTION_STYLES}")
    return text[0].upper() + text[1:]


@dataclass(frozen=True)
class ParsedCaption:
    objects: Counter  # (colour, shape) -> count
    background: str | None
    relations: tuple[tuple[str, str, str, str, str], ...]  # (colour a, shape a, relation, colour b, shape b)


def parse_caption(text: str) -> ParsedCaption:
    """Objects, background and stated relations in a caption written in ShapesWorld's phrasings."""
    text = text.lower()
    rel_spans = [m.span() for m in _RELATION_RE.finditer(text)]
    objects: Counter = Counter()
    for m in _OBJECT_RE.finditer(text):
        if any(s <= m.start() < e for s, e in rel_spans):
            continue
        n = 1 if m.group(1) in ("a", "an") else NUMBER_WORDS.index(m.group(1))
        objects[(m.group(2), m.group(3))] += n
    bg = _BACKGROUND_RE.search(text)
    background = (bg.group(1) or bg.group(2)) if bg else None
    phrase_to_rel = {v: k for k, v in RELATION_PHRASES.items()}
    relations = tuple((m.group(1), m.group(2), phrase_to_rel[m.group(3)], m.group(4), m.group(5))
                      for m in _RELATION_RE.finditer(text))
    return ParsedCaption(objects, background, relations)


# ----------------------------------------------------------------------------- prompt families
@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    color: str | None = None


@dataclass(frozen=True)
class PromptSpec:
    """A GenEval-style prompt: exactly these objects; if `relation`, objects[0] is `relation` of objects[1]."""

    family: str
    text: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    @property
    def heldout(self) -> bool:
        return any((o.color, o.shape) in HELDOUT_COMBOS for o in self.objects)

    def to_dict(self) -> dict:
        return {"family": self.family, "text": self.text, "relation": self.relation,
                "objects": [{"shape": o.shape, "color": o.color} for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict) -> PromptSpec:
        return cls(data["family"], data["text"], tuple(ObjectSpec(**o) for o in data["objects"]), data.get("relation"))


PROMPT_PREFIX = "an image of "  # every family prompt starts with it


def prompt_text(family: str, objects: tuple[ObjectSpec, ...], relation: str | None = None) -> str:
    def one(o: ObjectSpec) -> str:
        return count_phrase(1, *([o.color] if o.color else []), o.shape)

    if family == "counting":
        return PROMPT_PREFIX + count_phrase(len(objects), objects[0].shape)
    if family == "position":
        return f"{PROMPT_PREFIX}{one(objects[0])} {RELATION_PHRASES[relation]} {one(objects[1])}"
    return PROMPT_PREFIX + " and ".join(one(o) for o in objects)


def make_prompt(family: str, rng: np.random.Generator, split: str = "train") -> PromptSpec:
    """A random prompt of `family`. split="heldout" binds a held-out colour-shape pair (colour families only)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; use any of {', '.join(FAMILIES)}")
    heldout = split == "heldout"
    if heldout and family not in HELDOUT_FAMILIES:
        raise ValueError(f"family {family!r} has no colours, so no held-out variant; held-out families: {HELDOUT_FAMILIES}")
    two = [str(s) for s in rng.choice(SHAPES, size=2, replace=False)]
    relation = None
    if family == "single_object":
        objects = (ObjectSpec(two[0]),)
    elif family == "two_object":
        objects = (ObjectSpec(two[0]), ObjectSpec(two[1]))
    elif family == "counting":
        objects = (ObjectSpec(two[0]),) * int(rng.integers(2, 5))
    elif family == "position":
        objects = (ObjectSpec(two[0]), ObjectSpec(two[1]))
        relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    elif family == "colors":
        color, shape = sample_combo(rng, split, heldout=heldout)
        objects = (ObjectSpec(shape, color),)
    else:  # color_attr: two shapes, two different colours
        force = int(rng.integers(2)) if heldout else -1
        while True:
            pairs = [sample_combo(rng, split, shape=two[k], heldout=(k == force)) for k in range(2)]
            if pairs[0][0] != pairs[1][0]:
                break
        objects = tuple(ObjectSpec(s, c) for c, s in pairs)
    return PromptSpec(family, prompt_text(family, objects, relation), objects, relation)


def prompt_from_scene(scene: Scene, rng: np.random.Generator) -> PromptSpec | None:
    """A family prompt that the scene satisfies (closed world), or None if no family fits it.

    For training variety, beyond the evaluation's phrasings: a position prompt names the colours too
    half the time ("a red circle to the left of a blue square"), and 30% of prompts drop the
    leading "an image of", as people type prompts."""
    objs = scene.reading_order()
    shapes = [o.shape for o in objs]
    options: list[tuple[str, tuple[ObjectSpec, ...], str | None]] = []
    if len(objs) == 1:
        options += [("single_object", (ObjectSpec(shapes[0]),), None),
                    ("colors", (ObjectSpec(objs[0].shape, objs[0].color),), None)]
    if len(objs) >= 2 and len(set(shapes)) == 1:
        options.append(("counting", (ObjectSpec(shapes[0]),) * len(objs), None))
    if len(objs) == 2 and shapes[0] != shapes[1]:
        options.append(("two_object", (ObjectSpec(shapes[0]), ObjectSpec(shapes[1])), None))
        if objs[0].color != objs[1].color:
            options.append(("color_attr", tuple(ObjectSpec(o.shape, o.color) for o in objs), None))
        # reading order puts the upper or left object first; either may lead a position prompt
        a, b = (0, 1) if rng.random() < 0.5 else (1, 0)
        rel = clear_relation(objs[a], objs[b])
        if rel is not None:
            colored = rng.random() < 0.5
            options.append(("position", tuple(ObjectSpec(objs[k].shape, objs[k].color if colored else None)
                                              for k in (a, b)), rel))
    if not options:
        return None
    family, objects, rel = options[int(rng.integers(len(options)))]
    text = prompt_text(family, objects, rel)
    if rng.random() < 0.3:
        text = text.removeprefix(PROMPT_PREFIX)
    return PromptSpec(family, text, objects, rel)


# ----------------------------------------------------------------------------- VQA
def normalize_answer(text: str) -> str:
    """Lower case, no surrounding punctuation, number words as digits, 'grey' as 'gray'."""
    text = text.strip().lower().strip(" .!?\"'")
    if text in NUMBER_WORDS:
        text = str(NUMBER_WORDS.index(text))
    return {"grey": "gray"}.get(text, text)


QUESTION_KINDS = ("count_all", "count_shape", "count_color", "color", "shape", "background", "position", "exists")


def question_kinds(scene: Scene) -> list[str]:
    """The question kinds that fit `scene`: a colour question needs a shape seen once, a shape question a
    colour seen once, a position question two objects in a clear relation."""
    shape_counts = Counter(o.shape for o in scene.objects)
    color_counts = Counter(o.color for o in scene.objects)
    return [k for k in QUESTION_KINDS if not (
        (k == "color" and 1 not in shape_counts.values()) or (k == "shape" and 1 not in color_counts.values())
        or (k == "position" and not _clear_pairs(scene)))]


def make_question(scene: Scene, rng: np.random.Generator, kind: str | None = None) -> tuple[str, str, str]:
    """(question, exact answer, kind) about the scene; kinds that do not fit the scene are skipped."""
    objs = scene.objects
    shape_counts = Counter(o.shape for o in objs)
    color_counts = Counter(o.color for o in objs)
    pairs = _clear_pairs(scene)
    kinds = question_kinds(scene)
    if kind is not None and kind not in kinds:
        raise ValueError(f"question kind {kind!r} does not fit this scene; possible: {kinds}")
    kind = kind or kinds[int(rng.integers(len(kinds)))]
    if kind == "count_all":
        return "How many objects are there?", str(len(objs)), kind
    if kind == "count_shape":
        shape = str(rng.choice(SHAPES))
        return f"How many {plural(shape)} are there?", str(shape_counts[shape]), kind
    if kind == "count_color":
        color = str(rng.choice(COLORS))
        return f"How many {color} objects are there?", str(color_counts[color]), kind
    if kind == "color":
        shape = str(rng.choice([s for s, c in shape_counts.items() if c == 1]))
        return f"What color is the {shape}?", next(o.color for o in objs if o.shape == shape), kind
    if kind == "shape":
        color = str(rng.choice([c for c, n in color_counts.items() if n == 1]))
        return f"What shape is the {color} object?", next(o.shape for o in objs if o.color == color), kind
    if kind == "background":
        return "What color is the background?", scene.background, kind
    if kind == "position":
        i, j, rel = pairs[int(rng.integers(len(pairs)))]
        asked = rel if rng.random() < 0.5 else str(rng.choice([r for r in RELATIONS if r != rel]))
        a, b = objs[i], objs[j]
        return (f"Is the {a.name()} {RELATION_PHRASES[asked]} the {b.name()}?", "yes" if asked == rel else "no", kind)
    # exists: half the time about an object that is there
    if rng.random() < 0.5:
        o = objs[int(rng.integers(len(objs)))]
        color, shape = o.color, o.shape
    else:
        color, shape = str(rng.choice(COLORS)), str(rng.choice(SHAPES))
    present = any(o.color == color and o.shape == shape for o in objs)
    return f"Is there {count_phrase(1, color, shape)}?", "yes" if present else "no", kind


# ----------------------------------------------------------------------------- instructions
def edit_instruction(kind: str, obj: ShapeObject, rng: np.random.Generator, *,
                     new_color: str | None = None, region: str | None = None) -> str:
    """Instruction text for one edit of `obj` (recolour to `new_color`, remove, add or move to `region`)."""
    name = obj.name()
    if kind == "recolor":
        options = [f"Make the {name} {new_color}.", f"Change the color of the {name} to {new_color}.",
                   f"Paint the {name} {new_color}."]
    elif kind == "remove":
        options = [f"Remove the {name}.", f"Delete the {name}.", f"Take away the {name}."]
    elif kind == "add":
        options = [f"Add {count_phrase(1, obj.color, obj.shape)} {REGION_PHRASES[region]}.",
                   f"Put {count_phrase(1, obj.color, obj.shape)} {REGION_PHRASES[region]}."]
    elif kind == "move":
        options = [f"Move the {name} {MOVE_PHRASES[region]}.", f"Place the {name} {REGION_PHRASES[region]}."]
    else:
        raise ValueError(f"unknown edit kind {kind!r}; use recolor, remove, add or move")
    return options[int(rng.integers(len(options)))]


NOEDIT_INSTRUCTIONS: tuple[str, ...] = (
    "Do not change anything in this image.", "Reproduce this image exactly.", "Keep the image as it is.",
)


def describe_region(scene: Scene, obj: ShapeObject) -> str:
    return region_of(scene.width, scene.height, obj.cx, obj.cy)
