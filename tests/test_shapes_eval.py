"""`lumina-mgpt eval shapes`: ground-truth mode, the missing-model error, and an end-to-end run of a
real diffusers StableDiffusionPipeline with tiny random weights saved to a folder (no downloads)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image
from tiny_diffusers import build_tiny_stable_diffusion

from diffusers_lumina_mgpt.cli import main
from diffusers_lumina_mgpt.shapes.language import FAMILIES


def test_shapes_core_does_not_import_torch():
    import subprocess

    code = ("import sys, diffusers_lumina_mgpt.shapes, diffusers_lumina_mgpt.shapes.evaluate, "
            "diffusers_lumina_mgpt.shapes.cli; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_eval_ground_truth_cli(tmp_path, capsys):
    out = tmp_path / "gt.json"
    assert main(["eval", "shapes", "--ground-truth", "--n", "20", "--seed", "3", "--json", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["overall"] == 1.0 and set(result["families"]) == set(FAMILIES)
    assert result["heldout"]["overall"] == 1.0
    assert "overall" in capsys.readouterr().out
    assert main(["eval", "shapes", "--ground-truth", "--n", "5", "--families", "counting", "position",
                 "--json", str(out), "--no-progress"]) == 0
    assert set(json.loads(out.read_text())["families"]) == {"counting", "position"}


def test_eval_without_model_uses_the_default_or_says_so(tmp_path, capsys, monkeypatch):
    import diffusers_lumina_mgpt
    from diffusers_lumina_mgpt.default_model import resolve_model

    assert resolve_model("x") == "x"
    if (Path(diffusers_lumina_mgpt.DEFAULT_MODEL) / "model_index.json").is_file():
        assert resolve_model(None) == diffusers_lumina_mgpt.DEFAULT_MODEL
    monkeypatch.setattr(diffusers_lumina_mgpt, "DEFAULT_MODEL", str(tmp_path / "absent"))
    assert main(["eval", "shapes", "--n", "1"]) == 2
    err = capsys.readouterr().err
    assert "no default model" in err and "--model" in err
    assert main(["eval", "shapes", "--model", str(tmp_path), "--n", "1"]) == 2
    assert "model_index.json" in capsys.readouterr().err


def test_eval_a_real_diffusers_pipeline_folder(tmp_path, capsys):
    pytest.importorskip("diffusers")
    build_tiny_stable_diffusion(tmp_path)
    out, images = tmp_path / "scores.json", tmp_path / "images"
    argv = ["eval", "shapes", "--model", str(tmp_path / "pipe"), "--n", "1", "--seed", "0", "--families", "colors",
            "single_object", "--size", "32x32", "--num-inference-steps", "2", "--device", "cpu",
            "--json", str(out), "--save-images", str(images)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["families"]) == {"colors", "single_object"} and 0.0 <= result["overall"] <= 1.0
    assert set(result["heldout"]["families"]) == {"colors"}
    assert result["model"] == str(tmp_path / "pipe") and result["size"] == [32, 32]
    assert len(result["prompts"]) == 3 and all(isinstance(p["passed"], bool) and p["reason"] for p in result["prompts"])
    saved = sorted(images.glob("*.png"))
    assert len(saved) == 3 and all(Image.open(p).size == (32, 32) for p in saved)
    first = Image.open(saved[0]).copy()
    assert "shapes eval" in capsys.readouterr().err  # the progress bar
    assert main(argv) == 0  # seeded per prompt: the same images again
    assert list(Image.open(sorted(images.glob("*.png"))[0]).getdata()) == list(first.getdata())


def test_eval_a_lumina_mgpt_pipeline_folder(tiny_pipe_dir, tmp_path):
    """Our own pipeline folders load through their `_class_name` and generate at the requested size."""
    out, images = tmp_path / "scores.json", tmp_path / "images"
    argv = ["eval", "shapes", "--model", str(tiny_pipe_dir), "--n", "1", "--seed", "0", "--families", "counting",
            "--size", "64x32", "--json", str(out), "--save-images", str(images), "--guidance-scale", "2",
            "--image-top-k", "3", "--temperature", "0.7"]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["families"]) == {"counting"} and result["size"] == [64, 32]
    # the sampling settings are recorded beside the scores they produced
    assert result["call_kwargs"] == {"guidance_scale": 2.0, "image_top_k": 3, "temperature": 0.7}
    saved = sorted(images.glob("*.png"))
    assert len(saved) == 1 and Image.open(saved[0]).size == (64, 32)


def test_batched_eval_scores_every_prompt(tiny_pipe_dir, tmp_path):
    """--batch-size sends several prompts per call, one seeded generator each; every prompt is scored."""
    from diffusers_lumina_mgpt.shapes.evaluate import evaluate_shapes

    result = evaluate_shapes(str(tiny_pipe_dir), n=2, families=["counting", "colors"], size=(64, 64),
                             progress=False, batch_size=3, image_dir=tmp_path)
    assert len(result["prompts"]) == len(list(tmp_path.glob("*.png"))) == 2 * 2 + 2  # + held-out colors
    again = evaluate_shapes(str(tiny_pipe_dir), n=2, families=["counting", "colors"], size=(64, 64),
                            progress=False, batch_size=3)
    assert [r["passed"] for r in again["prompts"]] == [r["passed"] for r in result["prompts"]]
