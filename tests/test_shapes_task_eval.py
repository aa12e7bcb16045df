"""`eval shapes --task`: Omni records replayed through LuminaMGPTEditPipeline and judged by ground truth."""

from __future__ import annotations

import json

import pytest

from diffusers_lumina_mgpt.shapes.task_eval import _turn_inputs, evaluate_tasks
from diffusers_lumina_mgpt.shapes.tasks import make_records


def test_turn_inputs_split_records_into_turns():
    rec = make_records("multiedit", 1, seed=2)[0]
    turns = _turn_inputs(rec)
    assert len(turns) == len(rec.targets) >= 2
    assert turns[0][1] == [rec.images[0]] and all(t[1] == [] for t in turns[1:])  # later turns edit the answer
    assert all(t[2] for t in turns) and "<|image|>" not in turns[0][0]
    vqa = make_records("vqa", 1, seed=0)[0]
    assert [t[2] for t in _turn_inputs(vqa)] == [False] * len(vqa.targets)


@pytest.fixture(scope="module")
def edit_pipe(tiny_pipe_dir):
    from diffusers_lumina_mgpt import LuminaMGPTEditPipeline

    pipe = LuminaMGPTEditPipeline.from_pretrained(str(tiny_pipe_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_every_task_is_replayed_and_scored(edit_pipe):
    result = evaluate_tasks(edit_pipe, ["caption", "vqa", "multiedit", "segmentation", "depth", "noedit"], n=1,
                            progress=False)
    for row in result.values():
        assert 0.0 <= row["turn_pass_rate"] <= 1.0 and 0.0 <= row["mean_score"] <= 1.0 and row["records"] == 1
    assert set(result["multiedit"]["pass_rate_by_turn"]) >= {"1", "2"}
    assert result["noedit"]["psnr_vq_round_trip"] > 0 and result["noedit"]["psnr_regenerated"] > 0


def test_vqa_and_edits_are_also_scored_by_kind(edit_pipe):
    """VQA by question kind and edits by edit kind: the kinds of the records replayed, their turns adding up to
    all turns and their pass rates averaging, weighted, to the overall rate."""
    result = evaluate_tasks(edit_pipe, ["vqa", "multiedit"], n=3, progress=False)
    for task, key in (("vqa", "question_kind"), ("multiedit", "edit_kind")):
        row = result[task]
        kinds = [t[key] for r in make_records(task, 3, seed=7919) for t in r.targets]
        by_kind = row["pass_rate_by_kind"]
        assert {k: v["turns"] for k, v in by_kind.items()} == {k: kinds.count(k) for k in set(kinds)}
        assert sum(v["turns"] * v["pass_rate"] for v in by_kind.values()) == pytest.approx(
            row["turn_pass_rate"] * row["turns"])
    assert set(result["multiedit"]["pass_rate_by_kind"]) <= {"recolor", "remove", "add", "move"}


def test_eval_task_cli(tiny_pipe_dir, tmp_path):
    from diffusers_lumina_mgpt.cli import main

    out = tmp_path / "s.json"
    assert main(["eval", "shapes", "--model", str(tiny_pipe_dir), "--task", "edit", "--n", "1", "--no-progress",
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["task"] == "edit" and data["records"] == 1 and "turn_pass_rate" in data
    # the top-k the edits were sampled at is recorded: the folder's (none here), so the scheduler's
    from diffusers_lumina_mgpt.pipelines import LuminaMGPTPipeline

    assert data["image_top_k"] == LuminaMGPTPipeline.from_pretrained(tiny_pipe_dir).scheduler.config.image_top_k
    assert main(["eval", "shapes", "--model", str(tiny_pipe_dir), "--task", "edit", "--n", "1", "--no-progress",
                 "--image-top-k", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["image_top_k"] == 1
