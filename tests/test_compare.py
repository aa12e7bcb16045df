"""`lumina-mgpt compare` and `eval geneval-export`: our tiny random pipeline and a real diffusers
StableDiffusionPipeline with tiny random weights (built here, no downloads) through the harness."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_diffusers import build_tiny_stable_diffusion, write_char_tokenizer

from diffusers_lumina_mgpt.cli import main
from diffusers_lumina_mgpt.compare import (
    RESULTS_SCHEMA,
    merge_parts,
    run_comparison,
    validate_results,
)
from diffusers_lumina_mgpt.compare.parts import write_part


def build_tiny_clip(folder: Path) -> Path:
    """A random CLIPModel + CLIPProcessor saved to a folder, as `--clip-model` expects."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = write_char_tokenizer(folder / "vocab")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8)
    CLIPModel(config).save_pretrained(folder / "clip")
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(folder / "clip")
    return folder / "clip"


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="module")
def unloadable_dir(tmp_path_factory) -> Path:
    """A folder that passes the layout check but cannot load (its unet/ holds no weights)."""
    folder = tmp_path_factory.mktemp("unloadable")
    (folder / "unet").mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                         "unet": ["diffusers", "UNet2DConditionModel"]}))
    return folder


@pytest.fixture(scope="module")
def comparison(tiny_pipe_dir, sd_dir, unloadable_dir, tmp_path_factory):
    """Ours under both schedulers, Stable Diffusion, a folder that fails to load and one that does not
    exist, on ShapesWorld prompts at two sizes (ours cannot make 48x32: every such call fails)."""
    out = tmp_path_factory.mktemp("compare")
    results = run_comparison(
        [f"ar={tiny_pipe_dir}@ar", f"jacobi={tiny_pipe_dir}@jacobi", f"sd={sd_dir}", f"broken={unloadable_dir}",
         f"missing={out / 'absent'}"],
        out, prompts="shapes", n=1, families=["counting", "colors"], seeds=[0, 1], sizes=[(32, 32), (48, 32)],
        call_args={"num_inference_steps": 2}, progress=False)
    return out, results


def records_of(results, pipeline, **match):
    return [r for r in results["records"] if r["pipeline"] == pipeline and all(r[k] == v for k, v in match.items())]


def test_registration_imports_no_torch_and_adds_the_commands():
    code = ("import sys; from diffusers_lumina_mgpt.cli import build_parser; p = build_parser(); "
            "sub = p._subparsers._group_actions[0].choices; "
            "print(sorted(m for m in ('torch', 'diffusers', 'accelerate', 'transformers') if m in sys.modules), "
            "'compare' in sub, 'geneval-export' in sub['eval']._subparsers._group_actions[0].choices)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "True", "True"]


def test_results_validate_and_cover_every_item(comparison):
    out, results = comparison
    validate_results(results)
    assert json.loads((out / "results.json").read_text()) == results
    assert results["schema_version"] == 2
    # 5 pipelines x 2 sizes x 3 prompts (counting, colors, held-out colors) x 2 seeds, one record each
    assert [r["item"] for r in results["records"]] == list(range(5 * 2 * 3 * 2))
    assert {p["name"]: p["kind"] for p in results["pipelines"]} == {
        "ar": "autoregressive", "jacobi": "autoregressive", "sd": "diffusion", "broken": "diffusion", "missing": None}
    ar = next(p for p in results["pipelines"] if p["name"] == "ar")
    sd = next(p for p in results["pipelines"] if p["name"] == "sd")
    assert ar["forward_counter"] == "num_forward_passes" and sd["forward_counter"] == "unet"
    assert ar["parameters"] > 1_000_000 and 0 < sd["parameters"] < ar["parameters"]


def test_schema_rejects_broken_results(comparison):
    _, results = comparison
    for path, value in [(("records", 0, "seconds"), "fast"), (("records", 0, "clip_score"), 101.0),
                        (("summary", 0, "images"), -1), (("pipelines", 0, "kind"), "gan")]:
        broken = copy.deepcopy(results)
        target = broken
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(ValueError, match=rf"results\.{path[0]}\[0\]\.{path[2]}"):
            validate_results(broken)
    broken = copy.deepcopy(results)
    del broken["records"][3]["image"]
    with pytest.raises(ValueError, match="required key 'image'"):
        validate_results(broken)
    assert RESULTS_SCHEMA["properties"]["schema_version"]["enum"] == [2]


def test_forward_counts_and_images_match_direct_calls(comparison, tiny_pipe_dir, sd_dir):
    """Ours: the pipeline's own num_forward_passes (and the very same image); diffusion: one unet call
    per step, CFG rows batched (guidance 7.5 by default)."""
    import torch

    from diffusers_lumina_mgpt.shapes.evaluate import load_pipeline

    out, results = comparison
    pipe = load_pipeline(tiny_pipe_dir, "cpu")
    for r in records_of(results, "ar", width=32):
        direct = pipe(r["prompt"], height=32, width=32, generator=torch.Generator().manual_seed(r["seed"]))
        assert r["forward_passes"] == direct.num_forward_passes > 0
        assert np.array_equal(np.asarray(Image.open(out / r["image"])), np.asarray(direct.images[0]))
    sd = records_of(results, "sd")
    assert len(sd) == 12 and all(r["error"] is None and r["forward_passes"] == 2 for r in sd)
    assert all(Image.open(out / r["image"]).size == (r["width"], r["height"]) for r in sd)
    ar = {(r["prompt_index"], r["seed"]): r["forward_passes"] for r in records_of(results, "ar", width=32)}
    jacobi = {(r["prompt_index"], r["seed"]): r["forward_passes"] for r in records_of(results, "jacobi", width=32)}
    assert jacobi.keys() == ar.keys() and all(0 < jacobi[k] <= ar[k] for k in ar)  # drafts never cost forwards


def test_failures_are_recorded_and_the_rest_finish(comparison):
    results = comparison[1]
    for name, kind in (("broken", None), ("missing", "FileNotFoundError")):
        rows = records_of(results, name)
        assert len(rows) == 12 and all(r["error"] and r["image"] is None for r in rows)
        assert kind is None or rows[0]["error"]["type"] == kind
        entry = next(p for p in results["pipelines"] if p["name"] == name)
        assert entry["error"] == rows[0]["error"]
    bad = records_of(results, "ar", width=48)  # 48 px is off our 32 px grid: each call raises
    assert len(bad) == 6 and all(r["error"]["type"] == "ValueError" and "Nearest valid sizes" in r["error"]["message"]
                                 for r in bad)
    good = records_of(results, "ar", width=32)
    assert all(r["error"] is None and r["seconds"] > 0 and r["peak_memory_bytes"] > 0 for r in good)
    assert all(isinstance(r["shapes_passed"], bool) and r["shapes_reason"] for r in good)
    summary = {s["pipeline"]: s for s in results["summary"]}
    assert (summary["ar"]["images"], summary["ar"]["errors"]) == (6, 6)
    assert (summary["sd"]["images"], summary["sd"]["errors"]) == (12, 0)
    assert summary["sd"]["mean_forward_passes"] == 2.0
    assert set(summary["sd"]["shapes"]["families"]) == {"counting", "colors"}
    assert summary["sd"]["shapes"]["heldout"]["families"].keys() == {"colors"}
    passed = [r["shapes_passed"] for r in records_of(results, "sd") if r["split"] == "train"]
    fams = {f: np.mean([r["shapes_passed"] for r in records_of(results, "sd", family=f, split="train")])
            for f in ("counting", "colors")}
    assert len(passed) == 8 and summary["sd"]["shapes"]["overall"] == pytest.approx(np.mean(list(fams.values())))


def test_report_grid_and_plot(comparison):
    out = comparison[0]
    report = (out / "report.md").read_text()
    for text in ("| ar | autoregressive | 6 | 6 |", "| sd | diffusion | 12 | 0 |", "## Errors", "**broken** (12 images)",
                 "**missing** (12 images)", "Nearest valid sizes", "![image grid](grid.png)",
                 "![quality vs time](quality_vs_time.png)", "| run | counting | colors | overall | held-out |"):
        assert text in report, text
    grid = Image.open(out / "grid.png")
    assert grid.width > 5 * 96 and grid.height > 3 * 96  # 5 columns, 3 prompt rows
    assert Image.open(out / "quality_vs_time.png").size[0] > 300
    assert "| run | 32x32 accuracy | 32x32 s / image | 48x32 accuracy | 48x32 s / image |" in report


def test_summary_breaks_each_run_down_by_size(comparison):
    results = comparison[1]
    summary = {s["pipeline"]: s for s in results["summary"]}
    ar = {tuple(e["size"]): e for e in summary["ar"]["sizes"]}
    assert list(ar) == [(32, 32), (48, 32)]
    assert (ar[(32, 32)]["images"], ar[(32, 32)]["errors"]) == (6, 0) and ar[(32, 32)]["mean_seconds"] > 0
    assert (ar[(48, 32)]["images"], ar[(48, 32)]["errors"], ar[(48, 32)]["shapes_overall"]) == (0, 6, None)
    for size in ((32, 32), (48, 32)):  # one size's accuracy is the run's figure over that size's records
        rows = [r for r in records_of(results, "sd", width=size[0]) if r["split"] == "train"]
        fams = [np.mean([r["shapes_passed"] for r in rows if r["family"] == f]) for f in ("counting", "colors")]
        entry = next(e for e in summary["sd"]["sizes"] if tuple(e["size"]) == size)
        assert entry["images"] == 6 and entry["shapes_overall"] == pytest.approx(np.mean(fams))


def test_plot_skipped_without_matplotlib_says_so(comparison, monkeypatch, tmp_path):
    import builtins

    from diffusers_lumina_mgpt.compare.report import write_report

    results = comparison[1]
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    write_report(tmp_path, results)
    assert "Plot skipped: matplotlib is not installed" in (tmp_path / "report.md").read_text()
    assert not (tmp_path / "quality_vs_time.png").exists()


def test_sweep_gives_one_run_per_value(tiny_pipe_dir, sd_dir, tmp_path):
    results = run_comparison([f"ours={tiny_pipe_dir}", f"sd={sd_dir}"], tmp_path, prompts=["a red circle"],
                             sizes=[(32, 32)], sweep="guidance_scale=1,3", call_args=["num_inference_steps=2"],
                             warmup=0, progress=False)
    runs = [(s["pipeline"], s["sweep_value"]) for s in results["summary"]]
    assert runs == [("ours", 1), ("ours", 3), ("sd", 1), ("sd", 3)]
    assert all(s["images"] == 1 and s["shapes"] is None for s in results["summary"])
    ours = {r["sweep_value"]: r for r in results["records"] if r["pipeline"] == "ours"}
    assert ours[1]["image"] != ours[3]["image"] and (tmp_path / ours[3]["image"]).is_file()
    assert "Plot skipped: no quality figure" in (tmp_path / "report.md").read_text()

    results = run_comparison([f"ours={tiny_pipe_dir}", f"sd={sd_dir}"], tmp_path / "s", prompts=["a red circle"],
                             sizes=[(32, 32)], sweep="scheduler=ar,jacobi", call_args={"num_inference_steps": 2},
                             warmup=0, progress=False)
    assert [(s["pipeline"], s["sweep_value"]) for s in results["summary"]] == [
        ("ours", "ar"), ("ours", "jacobi"), ("sd", None)]  # the scheduler knob applies only to ours


def test_pipeline_args_reach_one_pipeline_only(tiny_pipe_dir, sd_dir, tmp_path):
    """`--pipeline-arg NAME:KEY=VALUE`: a call argument for one pipeline, over the shared --call-arg."""
    results = run_comparison([f"sd={sd_dir}", f"sd3={sd_dir}", f"ours={tiny_pipe_dir}"], tmp_path,
                             prompts=["a red circle"], sizes=[(32, 32)], call_args={"num_inference_steps": 2},
                             pipeline_args=["sd3:num_inference_steps=3", "ours:guidance_scale=1"], warmup=0,
                             progress=False)
    forwards = {s["pipeline"]: s["mean_forward_passes"] for s in results["summary"]}
    assert forwards["sd"] == 2 and forwards["sd3"] == 3
    guided = run_comparison([f"ours={tiny_pipe_dir}"], tmp_path / "g", prompts=["a red circle"], sizes=[(32, 32)],
                            warmup=0, progress=False)
    ours = records_of(results, "ours")[0]
    assert not np.array_equal(np.asarray(Image.open(tmp_path / ours["image"])),  # guidance 1 drops the CFG rows
                              np.asarray(Image.open(tmp_path / "g" / guided["records"][0]["image"])))
    assert {p["name"]: p["call_args"] for p in results["pipelines"]} == {
        "sd": {}, "sd3": {"num_inference_steps": 3}, "ours": {"guidance_scale": 1}}
    assert "call arguments of one pipeline: sd3: num_inference_steps=3; ours: guidance_scale=1" in (
        tmp_path / "report.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--pipeline-arg", "ours=3"], "must look like NAME:KEY=VALUE"),
    (["--pipeline-arg", "other:guidance_scale=3"], "no compared pipeline is named 'other'"),
    (["--pipeline-arg", "ours:height=32"], "height is set by the harness"),
    (["--pipeline-arg", "ours:num_inference_steps=3"], "ours (LuminaMGPTPipeline) does not take num_inference_steps"),
    (["--pipeline-arg", "ours:guidance_scale=3", "--sweep", "guidance_scale=1,2"], "both set it"),
    (["--pipeline-arg", "ours:scheduler=jacobi"], "NAME=PATH@jacobi"),
])
def test_pipeline_arg_mistakes_are_one_line(tiny_pipe_dir, tmp_path, capsys, argv, message):
    code = main(["compare", "--pipelines", f"ours={tiny_pipe_dir}", "--prompts", "shapes", "--n", "1", "--families",
                 "counting", "--out", str(tmp_path / "o"), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_clip_score_from_a_local_clip_folder(tiny_pipe_dir, tmp_path):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    clip_dir = build_tiny_clip(tmp_path)
    results = run_comparison([str(tiny_pipe_dir)], tmp_path / "out", prompts=["a red circle", "two blue squares"],
                             sizes=[(32, 32)], clip_model=clip_dir, warmup=0, progress=False)
    model, processor = CLIPModel.from_pretrained(clip_dir), CLIPProcessor.from_pretrained(clip_dir)
    for r in results["records"]:
        assert r["clip_score"] is not None and math.isfinite(r["clip_score"]) and 0 <= r["clip_score"] <= 100
        inputs = processor(text=[r["prompt"]], images=[Image.open(tmp_path / "out" / r["image"]).convert("RGB")],
                           return_tensors="pt", padding=True)
        with torch.no_grad():
            cos = model(**inputs).logits_per_image[0, 0] / model.logit_scale.exp()
        assert r["clip_score"] == pytest.approx(max(100 * float(cos), 0.0), abs=1e-3)
    assert results["summary"][0]["clip_score"] == pytest.approx(np.mean([r["clip_score"] for r in results["records"]]))
    with pytest.raises(ValueError, match="--clip-model"):
        run_comparison([str(tiny_pipe_dir)], tmp_path / "bad", prompts=["x"], clip_model=tmp_path, progress=False)


def test_merge_parts_from_hand_written_files(tmp_path):
    def rec(item, pipeline):
        return {"item": item, "pipeline": pipeline}

    described = {"name": "a", "parameters": None, "error": None}
    loaded = {"name": "a", "parameters": 10, "error": None}
    failed = {"name": "b", "parameters": None, "error": {"type": "OSError", "message": "gone"}}
    write_part(tmp_path, 0, 2, [loaded, {**failed, "error": None}], [rec(0, "a"), rec(1, "a")])
    write_part(tmp_path, 1, 2, [described, failed], [rec(3, "b"), rec(2, "b")])
    pipelines, records = merge_parts(tmp_path, 2, ["a", "b"], 4)
    assert [r["item"] for r in records] == [0, 1, 2, 3]
    assert pipelines == [loaded, failed]
    with pytest.raises(ValueError, match="do not cover"):
        merge_parts(tmp_path, 2, ["a", "b"], 5)
    write_part(tmp_path, 1, 2, [described, failed], [rec(1, "a"), rec(2, "b"), rec(3, "b")])
    with pytest.raises(ValueError, match=r"repeated \[1\]"):
        merge_parts(tmp_path, 2, ["a", "b"], 4)
    (tmp_path / "parts" / "rank-1.json").unlink()
    with pytest.raises(ValueError, match="rank-1.json is missing"):
        merge_parts(tmp_path, 2, ["a", "b"], 4)
    write_part(tmp_path, 0, 3, [loaded], [rec(0, "a")])  # a stale part of a three-process run
    with pytest.raises(ValueError, match="another run"):
        merge_parts(tmp_path, 2, ["a", "b"], 4)


def test_two_processes_give_the_same_records_as_one(tiny_pipe_dir, sd_dir, tmp_path):
    """`--num-processes 2` (accelerate, gloo on CPU): the same per-item records and identical images."""
    args = ["compare", "--pipelines", f"ours={tiny_pipe_dir}@jacobi", f"sd={sd_dir}", "--prompts", "shapes", "--n", "1",
            "--families", "counting", "position", "--seeds", "0", "1", "--sizes", "32x32",
            "--call-arg", "num_inference_steps=2", "--pipeline-arg", "sd:num_inference_steps=3", "--warmup", "0",
            "--no-progress"]
    # one thread per process in both runs: float sums in another thread count would differ in the last bits
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "diffusers_lumina_mgpt", *args]
    res = subprocess.run([*cmd, "--out", str(tmp_path / "one")], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    start = time.perf_counter()
    res = subprocess.run([*cmd, "--out", str(tmp_path / "two"), "--num-processes", "2"], capture_output=True,
                         text=True, env=env, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert two["settings"]["num_processes"] == 2 and one["settings"]["num_processes"] == 1
    assert [p["call_args"] for p in two["pipelines"]] == [{}, {"num_inference_steps": 3}]  # reached both processes
    assert {r["forward_passes"] for r in two["records"] if r["pipeline"] == "sd"} == {3}
    keep = ("item", "pipeline", "prompt", "seed", "image", "forward_passes", "shapes_passed", "error")
    assert [{k: r[k] for k in keep} for r in one["records"]] == [{k: r[k] for k in keep} for r in two["records"]]
    for r in one["records"]:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "one" / r["image"])),
                              np.asarray(Image.open(tmp_path / "two" / r["image"])))
    assert sorted(p.name for p in (tmp_path / "two" / "parts").iterdir()) == ["rank-0.json", "rank-1.json"]
    print(f"two-process run: {time.perf_counter() - start:.1f} s")


@pytest.mark.parametrize("argv, message", [
    (["--sweep", "guidance_scale"], "KNOB=V1,V2"),
    (["--sweep", "scheduler=ar,fast"], "use ar,jacobi"),
    (["--call-arg", "prompt=x"], "set by the harness"),
    (["--sweep", "no_such_knob=1,2"], "none of the compared pipelines takes no_such_knob"),
    (["--num-processes", "0"], "--num-processes must be at least 1"),
])
def test_compare_mistakes_are_one_line(tiny_pipe_dir, tmp_path, capsys, argv, message):
    code = main(["compare", "--pipelines", str(tiny_pipe_dir), "--prompts", "shapes", "--n", "1", "--families",
                 "counting", "--out", str(tmp_path / "o"), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_without_pipelines_it_compares_the_default_models(sd_dir, tmp_path, capsys, monkeypatch):
    """No --pipelines: the shipped AR model under both schedulers and the shipped diffusion baseline (here
    the tiny Stable Diffusion stands in for it) at its own call arguments, which --pipeline-arg overrides;
    the four default sizes unless --sizes is given."""
    import diffusers_lumina_mgpt
    from diffusers_lumina_mgpt import DEFAULT_MODEL
    from diffusers_lumina_mgpt.cli import build_parser
    from diffusers_lumina_mgpt.compare import cli as compare_cli

    monkeypatch.setattr(diffusers_lumina_mgpt, "DEFAULT_DIFFUSION_MODEL", str(sd_dir))
    monkeypatch.setattr(compare_cli, "DEFAULT_DIFFUSION_CALL_ARGS", {"num_inference_steps": 2, "guidance_scale": 2.0})
    out = tmp_path / "o"
    assert main(["compare", "--n", "2", "--families", "single_object", "--sizes", "64x64", "--out", str(out),
                 "--pipeline-arg", "diffusion:num_inference_steps=3", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [(p["name"], p["kind"]) for p in results["pipelines"]] == [
        ("ar", "autoregressive"), ("jacobi", "autoregressive"), ("diffusion", "diffusion")]
    assert results["pipelines"][2]["call_args"] == {"num_inference_steps": 3, "guidance_scale": 2.0}
    assert len(results["records"]) == 6 and not any(r["error"] for r in results["records"])
    assert {r["forward_passes"] for r in records_of(results, "diffusion")} == {3}
    ours = records_of(results, "ar") + records_of(results, "jacobi")
    assert sum(r["shapes_passed"] for r in ours) >= 2  # a trained model: most single objects pass

    args = build_parser().parse_args(["compare", "--out", str(tmp_path / "x")])
    compare_cli.check_compare_args(args)
    assert args.sizes == list(compare_cli.DEFAULT_COMPARISON_SIZES) and len(args.pipelines) == 3
    args = build_parser().parse_args(["compare", "--pipelines", str(sd_dir), "--out", str(tmp_path / "x")])
    compare_cli.check_compare_args(args)
    assert args.sizes == [(64, 64)]
    # the baseline's own settings give way to what the user sets: --call-arg, --pipeline-arg, the sweep
    assert compare_cli.default_pipelines(call_args=["num_inference_steps=7"], sweep="guidance_scale=1,2")[1] == []
    assert compare_cli.default_pipelines(["diffusion:guidance_scale=5"])[1] == [
        "diffusion:num_inference_steps=2", "diffusion:guidance_scale=5"]
    monkeypatch.setattr(diffusers_lumina_mgpt, "DEFAULT_DIFFUSION_MODEL", str(tmp_path / "absent"))
    assert compare_cli.default_pipelines() == ([f"ar={DEFAULT_MODEL}@ar", f"jacobi={DEFAULT_MODEL}@jacobi"], [])

    capsys.readouterr()
    monkeypatch.setattr(diffusers_lumina_mgpt, "DEFAULT_MODEL", str(tmp_path / "absent"))
    assert main(["compare", "--out", str(tmp_path / "p"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no default model" in err and "--pipelines" in err and len(err.strip().splitlines()) == 1


def test_compare_mistakes_in_pipelines_and_prompts(tiny_pipe_dir, tmp_path, capsys):
    base = ["compare", "--out", str(tmp_path / "o"), "--no-progress"]
    assert main([*base, "--pipelines", f"x={tiny_pipe_dir}", f"x={tiny_pipe_dir}@jacobi"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
    assert main([*base, "--pipelines", str(tiny_pipe_dir), "--prompts", str(tmp_path / "none.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    assert main([*base, "--pipelines", str(tiny_pipe_dir), "--prompts", str(bad)]) == 2
    assert "line 2" in capsys.readouterr().err


def test_geneval_export_layout(tiny_pipe_dir, sd_dir, tmp_path, capsys):
    rows = [{"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
            {"tag": "colors", "include": [{"class": "cup", "count": 1, "color": "red"}], "prompt": "a photo of a red cup"}]
    meta = tmp_path / "evaluation_metadata.jsonl"
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ours"
    assert main(["eval", "geneval-export", "--metadata", str(meta), "--model", str(tiny_pipe_dir), "--out", str(out),
                 "--n-samples", "3", "--height", "32", "--width", "32", "--batch-size", "2", "--no-progress"]) == 0
    assert "wrote 6 images" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001"]
    for index, row in enumerate(rows):
        folder = out / f"{index:05d}"
        assert (folder / "metadata.jsonl").read_text() == json.dumps(row)  # GenEval reads it with json.load
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["00000.png", "00001.png", "00002.png"]
        assert all(Image.open(p).size == (32, 32) for p in (folder / "samples").iterdir())
    from diffusers_lumina_mgpt.compare import export_geneval

    # sample k uses seed + k whatever the batch size
    assert export_geneval(meta, tiny_pipe_dir, tmp_path / "b1", n_samples=3, height=32, width=32, batch_size=1,
                          progress=False) == 6
    for p in out.glob("*/samples/*.png"):  # the same tokens; a batched VQ decode may round a pixel the other way
        a, b = (np.asarray(Image.open(q)).astype(int) for q in (p, tmp_path / "b1" / p.relative_to(out)))
        assert np.abs(a - b).max() <= 1
    assert main(["eval", "geneval-export", "--metadata", str(meta), "--model", str(sd_dir), "--out", str(tmp_path / "sd"),
                 "--n-samples", "2", "--height", "32", "--width", "32", "--batch-size", "2",
                 "--num-inference-steps", "2", "--no-progress"]) == 0
    assert len(list((tmp_path / "sd").glob("0000[01]/samples/0000[01].png"))) == 4
    meta.write_text('{"tag": "x"}\n')
    assert main(["eval", "geneval-export", "--metadata", str(meta), "--model", str(tiny_pipe_dir),
                 "--out", str(tmp_path / "x")]) == 2
    assert "line 1 has no \"prompt\"" in capsys.readouterr().err
