"""ShapesWorld language and tasks: captions parse back, prompts hold, every task's ground truth is right."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest

from diffusers_lumina_mgpt.cli import main
from diffusers_lumina_mgpt.shapes.language import (
    CAPTION_STYLES, FAMILIES, HELDOUT_FAMILIES, PromptSpec, caption, make_prompt, make_question, normalize_answer,
    parse_caption,
)
from diffusers_lumina_mgpt.shapes.scene import COLORS, HELDOUT_COMBOS, Scene, ShapeObject, region_of, sample_scene
from diffusers_lumina_mgpt.shapes.scorer import caption_holds, scene_satisfies
from diffusers_lumina_mgpt.shapes.tasks import (
    IMAGE, TASKS, make_family_t2i, make_records, read_records, scene_for_prompt, write_records,
)

SCENE = Scene(64, 64, "white", (
    ShapeObject("circle", "red", 4, 4, 12), ShapeObject("square", "blue", 40, 6, 14), ShapeObject("circle", "green", 6, 40, 12),
))


def test_captions_describe_the_scene_in_every_style():
    rng = np.random.default_rng(0)
    texts = set()
    for k in range(200):
        scene = sample_scene(rng, split="all")
        for style in CAPTION_STYLES:
            if style == "relation" and not _has_pair(scene):
                continue
            text = caption(scene, rng, style)
            texts.add(text)
            parsed = parse_caption(text)
            assert parsed.objects == Counter((o.color, o.shape) for o in scene.objects), text
            assert parsed.background == scene.background and caption_holds(text, scene.objects, scene.background)
    assert len(texts) > 500


def _has_pair(scene: Scene) -> bool:
    from diffusers_lumina_mgpt.shapes.language import _clear_pairs

    return bool(_clear_pairs(scene))


def test_caption_parser_on_known_text():
    text = caption(SCENE, np.random.default_rng(0), "count")
    assert text == "There are three objects on a white background: a red circle, a blue square and a green circle."
    parsed = parse_caption("On a gray background, two red circles and an orange cross; the orange cross is above the red circle.")
    assert parsed.objects == Counter({("red", "circle"): 2, ("orange", "cross"): 1})
    assert parsed.background == "gray" and parsed.relations == (("orange", "cross", "above", "red", "circle"),)
    assert not caption_holds("A red circle and a blue square on a white background.", SCENE.objects, "white")


def test_captions_and_scene_prompts_name_objects_in_reading_order():
    from diffusers_lumina_mgpt.shapes.language import _OBJECT_RE, prompt_from_scene

    # placed bottom-right first: the caption still starts at the top left
    scene = Scene(64, 64, "gray", (ShapeObject("cross", "pink", 40, 40, 16), ShapeObject("circle", "red", 8, 0, 16),
                                   ShapeObject("square", "blue", 40, 0, 16)))
    text = caption(scene, np.random.default_rng(0), "list")
    assert text == "A red circle, a blue square and a pink cross on a gray background."
    rng = np.random.default_rng(1)
    relations, texts = Counter(), set()
    for _ in range(300):
        scene = sample_scene(rng, n_objects=2)
        names = [(m.group(2), m.group(3)) for m in _OBJECT_RE.finditer(caption(scene, rng, "list").lower())]
        assert names == list(dict.fromkeys((o.color, o.shape) for o in scene.reading_order()))
        spec = prompt_from_scene(scene, rng)
        if spec is not None:
            assert scene_satisfies(spec, scene), spec
            texts.add(spec.text)
        if spec is not None and spec.family == "position":
            relations[spec.relation] += 1
    # reading order puts the upper/left object first, but position prompts still use all four relations
    assert set(relations) == {"left", "right", "above", "below"}
    # training prompts also come without "an image of", and position prompts with colours
    assert any(not t.startswith("an image of") for t in texts)
    colored_position = re.compile(r"^(an image of )?an? \w+ \w+ (to the left of|to the right of|above|below) an? \w+ \w+$")
    assert any(colored_position.match(t) for t in texts)


def test_questions_have_exact_answers():
    rng = np.random.default_rng(0)
    assert make_question(SCENE, rng, "count_all")[:2] == ("How many objects are there?", "3")
    assert make_question(SCENE, rng, "color")[:2] == ("What color is the square?", "blue")
    assert make_question(SCENE, rng, "background")[1] == "white"
    q, a, _ = make_question(SCENE, rng, "shape")
    assert a == {"red": "circle", "blue": "square", "green": "circle"}[q.split()[4]]
    truth = {("red circle", "blue square"): "left", ("blue square", "red circle"): "right",
             ("red circle", "green circle"): "above", ("green circle", "red circle"): "below"}  # blue/green: diagonal
    answers = set()
    for _ in range(40):
        q, a, _ = make_question(SCENE, rng, "position")
        m = re.fullmatch(r"Is the (\w+ \w+) (to the left of|to the right of|above|below) the (\w+ \w+)\?", q)
        rel = {"to the left of": "left", "to the right of": "right"}.get(m.group(2), m.group(2))
        assert a == ("yes" if truth[(m.group(1), m.group(3))] == rel else "no")
        answers.add(a)
    assert answers == {"yes", "no"}
    assert normalize_answer(" Three. ") == "3" and normalize_answer("Grey") == "gray"


@pytest.mark.parametrize("family", FAMILIES)
def test_prompts_and_their_ground_truth_scenes(family):
    rng = np.random.default_rng(1)
    for _ in range(100):
        spec = make_prompt(family, rng, "train")
        assert spec.text.startswith("an image of ") and not spec.heldout
        scene = scene_for_prompt(spec, rng)
        assert scene_satisfies(spec, scene) and len(scene.objects) == len(spec.objects)
        if family in HELDOUT_FAMILIES:
            assert make_prompt(family, rng, "heldout").heldout
    if family not in HELDOUT_FAMILIES:
        with pytest.raises(ValueError, match="no held-out variant"):
            make_prompt(family, rng, "heldout")


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_record_is_well_formed_and_its_ground_truth_scores_one(task):
    records = make_records(task, 60, seed=3, split="train")
    assert records[0].conversations == make_records(task, 1, seed=3)[0].conversations  # seeded
    for rec in records:
        turns = rec.conversations
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert sum(t["value"].count(IMAGE) for t in turns) == len(rec.images)
        assert len(rec.targets) == len(rec.gpt_turns())
        assert not rec.heldout
        scores = rec.score(rec.ground_truth_outputs())
        assert all(s.passed and s.score == 1.0 for s in scores), (rec.conversations, rec.targets)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_t2i_records_state_their_family_and_their_scene_satisfies_the_prompt(family):
    rng = np.random.default_rng(2)
    records = [make_family_t2i(rng, "train", family) for _ in range(60)]
    for rec in records:
        target = rec.targets[0]
        spec, scene = PromptSpec.from_dict(target["spec"]), Scene.from_dict(target["scene"])
        assert rec.task == "t2i" and spec.family == family and not rec.heldout
        assert rec.conversations[0]["value"].endswith(target["text"]) and spec.text == target["text"]
        assert scene_satisfies(spec, scene) and rec.score(rec.ground_truth_outputs())[0].passed
    texts = [r.targets[0]["text"] for r in records]
    assert any(t.startswith("an image of ") for t in texts) and not all(t.startswith("an image of ") for t in texts)
    if family == "position":  # colours named about half the time
        named = sum(any(c in t.split() for c in COLORS) for t in texts)
        assert 15 <= named <= 45
    with pytest.raises(ValueError, match="unknown family"):
        make_family_t2i(rng, "train", "positions")


def test_edit_targets_change_exactly_what_the_instruction_says():
    for rec in make_records("edit", 80, seed=4):
        src, dst = Scene.from_dict(rec.extra["source"]), Scene.from_dict(rec.targets[0]["scene"])
        text = rec.conversations[0]["value"]
        before, after = Counter((o.color, o.shape) for o in src.objects), Counter((o.color, o.shape) for o in dst.objects)
        if text.startswith(("Remove", "Delete", "Take away")):
            assert sum((before - after).values()) == 1 and not after - before
        elif text.startswith(("Add", "Put")):
            assert sum((after - before).values()) == 1 and not before - after
            (i, region), = rec.targets[0]["regions"].items()
            new = dst.objects[int(i)]
            assert region_of(dst.width, dst.height, new.cx, new.cy) == region
        elif text.startswith(("Move", "Place")):
            assert before == after and sum(a != b for a, b in zip(src.objects, dst.objects)) == 1
        else:  # recolour
            assert sum(a.color != b.color for a, b in zip(src.objects, dst.objects)) == 1
            assert [(o.shape, o.box) for o in src.objects] == [(o.shape, o.box) for o in dst.objects]


def test_heldout_split_in_records():
    for rec in make_records("all", 40, seed=5, split="heldout"):
        assert rec.heldout
    for rec in make_records("all", 80, seed=5, split="train"):
        scenes = [Scene.from_dict(t["scene"]) for t in rec.targets if "scene" in t]
        assert not any((o.color, o.shape) in HELDOUT_COMBOS for s in scenes for o in s.objects)


def test_write_read_round_trip_and_cli(tmp_path):
    records = make_records("all", 16, seed=6)
    path = write_records(records, tmp_path / "a", relative=True)
    back = read_records(path)
    assert [r.conversations for r in back] == [r.conversations for r in records]
    assert all(r.score(r.ground_truth_outputs())[0].passed for r in back)  # PNG keeps pixels exact
    assert main(["shapes", "make", "--task", "edit", "--n", "5", "--seed", "1", "--out", str(tmp_path / "b")]) == 0
    lines = (tmp_path / "b" / "records.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert len(lines) == 5 and set(first) == {"conversations", "image", "shapes"}
    assert all(p.startswith("/") and p.endswith(".png") for p in first["image"])


def test_user_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown task"):
        make_records("paint", 1)
    with pytest.raises(ValueError, match="at least 1"):
        make_records("t2i", 0)
    with pytest.raises(FileNotFoundError, match="shapes make"):
        read_records(tmp_path / "missing.jsonl")
    assert main(["shapes", "make", "--task", "t2i", "--n", "0", "--out", str(tmp_path)]) == 2
    assert "at least 1" in capsys.readouterr().err


def test_vqa_records_of_one_question_kind():
    """`make_vqa(rng, split, kind)`: every question of that kind, on a scene that fits it, none asked twice,
    and the ground truth answers them right; a kind that does not exist is refused."""
    from diffusers_lumina_mgpt.shapes.language import QUESTION_KINDS
    from diffusers_lumina_mgpt.shapes.tasks import make_vqa

    rng = np.random.default_rng(0)
    for kind in QUESTION_KINDS:
        for _ in range(10):
            rec = make_vqa(rng, "train", kind)
            questions = [t["value"] for t in rec.conversations[::2]]
            assert {t["question_kind"] for t in rec.targets} == {kind} and len(set(questions)) == len(questions)
            assert all(s.passed for s in rec.score([t["answer"] for t in rec.targets]))
    with pytest.raises(ValueError, match="unknown question kind 'exist'"):
        make_vqa(rng, "train", "exist")


def test_edits_of_one_kind():
    """`make_edit` / `make_multiedit` with `kind`: every turn is an edit of that kind, its after-picture is the
    edited scene the target holds (the scorer passes it), and a kind that does not exist is refused."""
    from diffusers_lumina_mgpt.shapes.tasks import EDIT_KINDS, make_edit, make_multiedit

    rng = np.random.default_rng(0)
    for kind in EDIT_KINDS:
        for make in (make_edit, make_multiedit):
            for _ in range(5):
                rec = make(rng, "train", kind=kind)
                assert [t["edit_kind"] for t in rec.targets] == [kind] * len(rec.targets)
                assert all(s.passed for s in rec.score(rec.images[1:]))
    with pytest.raises(ValueError, match="unknown edit kind 'moves'; use one of recolor, remove, add, move"):
        make_edit(rng, "train", kind="moves")
