"""The shipped default model (`DEFAULT_MODEL`): a complete pipeline folder under 40 MB that loads as both
pipelines, the command line's fallback when no --model is given, and a model that draws what ShapesWorld
prompts say (the ShapesWorld scorer on fixed prompts and seeds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_lumina_mgpt import DEFAULT_MODEL, LuminaMGPTEditPipeline, LuminaMGPTPipeline
from diffusers_lumina_mgpt.cli import main
from diffusers_lumina_mgpt.shapes.language import FAMILIES, ObjectSpec, PromptSpec, make_prompt
from diffusers_lumina_mgpt.shapes.scorer import check_spec, detect

# 23 of these 24 prompts pass on the shipped model (the mean of the three VQA stages' weights, guidance 2 and
# top-k 3 from its folder), measured with 1 and 2 threads; a lower count means the model or the decoding changed
# (2 spare for float differences between machines, which can move a top-k draw)
MIN_PASSED = 21


@pytest.fixture(scope="module")
def pipe():
    pipe = LuminaMGPTPipeline.from_pretrained(DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_default_model_is_a_small_complete_folder():
    folder = Path(DEFAULT_MODEL)
    assert (folder / "model_index.json").is_file() and (folder / "README.md").is_file()
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size <= 40 * 2**20
    assert {p.name for p in folder.iterdir() if p.is_dir()} >= {"transformer", "vqvae", "tokenizer", "scheduler"}


def test_it_draws_what_the_prompts_say(pipe):
    rng = np.random.default_rng(0)
    specs = [make_prompt(family, rng, "train") for family in FAMILIES for _ in range(4)]
    out = pipe([s.text for s in specs], height=64, width=64,
               generator=[torch.Generator().manual_seed(i) for i in range(len(specs))])
    passed = [check_spec(s, detect(image).objects)[0] for s, image in zip(specs, out.images)]
    assert sum(passed) >= MIN_PASSED, [(s.text, p) for s, p in zip(specs, passed)]


def test_the_quickstart_command_uses_it(tmp_path):
    """The README's first command, with no model given: a 64x64 picture of that scene. Seeds 0 to 7 draw it at 3
    of 8 seeds with the shipped weights (0, 1 and 5)."""
    out = tmp_path / "out.png"
    assert main(["generate", "a red circle to the left of a blue square", "--seed", "0", "-o", str(out)]) == 0
    image = Image.open(out)
    assert image.size == (64, 64)
    spec = PromptSpec("position", "a red circle to the left of a blue square",
                      (ObjectSpec("circle", "red"), ObjectSpec("square", "blue")), "left")
    assert check_spec(spec, detect(image).objects)[0], detect(image).objects


def test_the_edit_pipeline_loads_it():
    edit = LuminaMGPTEditPipeline.from_pretrained(DEFAULT_MODEL)
    assert edit.transformer.config.vocab_size == LuminaMGPTPipeline.from_pretrained(DEFAULT_MODEL).transformer.config.vocab_size


def test_it_edits_shapesworld_scenes_at_its_folder_settings():
    """Greedy editing (the folder's `default_edit_image_top_k` 1, guidance 1) of 40 fixed ShapesWorld edit
    records: 24 pass on the shipped model with 1 and 2 threads (greedy decoding draws nothing, so only
    near-ties between machines can move a count; 0.723 over 900 records, docs/default-model.md)."""
    from diffusers_lumina_mgpt.shapes.task_eval import evaluate_tasks

    edit = LuminaMGPTEditPipeline.from_pretrained(DEFAULT_MODEL)
    edit.set_progress_bar_config(disable=True)
    assert edit.config.default_edit_image_top_k == 1
    result = evaluate_tasks(edit, ["edit"], 40, seed=0, progress=False)["edit"]
    assert result["turns"] == 40 and round(result["turn_pass_rate"] * 40) >= 22, result
    # greedy: the seed changes nothing (at top-k 3 these two answers differ)
    scene = LuminaMGPTPipeline.from_pipe(edit)("a red circle and a blue square", generator=torch.Generator().manual_seed(0)).images[0]
    answers = [edit(scene, "Make the red circle green.", generator=torch.Generator().manual_seed(s), output_type="tokens").tokens
               for s in (0, 1)]
    assert torch.equal(*answers)
