"""The diffusion baseline (`train-diffusion`): the smoke recipe trains and resumes exactly, its pipeline folder
is a stock diffusers IFPipeline that loads offline, draws at two bucket sizes and can be scored; data,
tokenizer, batches and config checks."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from diffusers_lumina_mgpt import DEFAULT_DIFFUSION_MODEL
from diffusers_lumina_mgpt.training.checkpoints import read_metrics
from diffusers_lumina_mgpt.training.diffusion_train import (
    BucketBatches, build_tokenizer, export_diffusion_pipeline, load_diffusion_config, load_t2i_data, train_diffusion,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "shapesworld"
SMOKE = EXAMPLES / "diffusion-smoke.yaml"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("diffusion") / "run"
    assert train_diffusion(load_diffusion_config(SMOKE), out, progress=False) == out / "pipeline"
    return out


def test_smoke_recipe_trains_with_metrics_checkpoints_and_compute(smoke_run):
    rows = read_metrics(smoke_run)
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert all(np.isfinite(r["loss"]) and r["stage"] == "diffusion" for r in rows)
    assert len({r["size"] for r in rows}) > 1  # batches come from several aspect buckets
    assert sorted(p.name for p in (smoke_run / "checkpoints").iterdir()) == ["step-12", "step-6"]
    compute = json.loads((smoke_run / "compute.json").read_text())
    assert compute["images_seen"] == 12 * 4 and sum(compute["steps_per_bucket"].values()) == 12
    assert compute["total_train_flops"] == sum(n * 4 * compute["train_flops_per_image"][size]
                                               for size, n in compute["steps_per_bucket"].items())
    assert compute["train_flops_per_image"]["64x64"] > compute["train_flops_per_image"]["80x48"] > 0
    assert compute["train_seconds"] > 0 and compute["unet_parameters"] > 100_000


def test_resume_repeats_the_uninterrupted_run_exactly(smoke_run, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(smoke_run, resumed)
    shutil.rmtree(resumed / "pipeline")
    shutil.rmtree(resumed / "checkpoints" / "step-12")
    (resumed / "compute.json").unlink()
    # mark the steps the step-6 checkpoint covers: a resume keeps them, a restart from scratch would not
    lines = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    (resumed / "metrics.jsonl").write_text("".join(json.dumps({**r, "kept": r["step"] <= 6}) + "\n" for r in lines))
    train_diffusion(load_diffusion_config(SMOKE), resumed, progress=False)
    rows = read_metrics(resumed)
    assert [r.get("kept", False) for r in rows] == [True] * 6 + [False] * 6
    assert [r["loss"] for r in rows] == [r["loss"] for r in read_metrics(smoke_run)]
    from safetensors.torch import load_file

    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = load_file(str(smoke_run / "pipeline" / part)), load_file(str(resumed / "pipeline" / part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a different config on the same folder is refused
    shutil.rmtree(resumed / "pipeline")
    with pytest.raises(ValueError, match=r"another config \(train\.lr: 0\.\d+ -> 0\.01\)"):
        train_diffusion(load_diffusion_config(SMOKE, ["train.lr=0.01"]), resumed, progress=False)


def test_pipeline_folder_is_stock_diffusers_and_draws_two_sizes(smoke_run, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler, IFPipeline

    index = json.loads((smoke_run / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == "IFPipeline"
    assert {v[0] for k, v in index.items() if not k.startswith("_") and isinstance(v, list)} <= {
        "diffusers", "transformers", None}
    pipe = DiffusionPipeline.from_pretrained(str(smoke_run / "pipeline"))
    assert isinstance(pipe, IFPipeline) and isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    pipe.set_progress_bar_config(disable=True)
    for width, height in ((64, 64), (128, 32)):
        image = pipe("a red circle", height=height, width=width, num_inference_steps=2, guidance_scale=3.0,
                     generator=torch.Generator().manual_seed(0), clean_caption=False).images[0]
        assert image.size == (width, height)
        assert np.asarray(image).std() > 0
    # the pipeline's tokenizer is the training one: ShapesWorld prompt words are known, "" is the null prompt
    ids = pipe.tokenizer(["Two red circles and a blue square", ""]).input_ids
    assert 2 not in ids[0] and ids[0][-1] == 1 and ids[1] == [1]


def test_evaluate_shapes_scores_the_pipeline(smoke_run):
    from diffusers_lumina_mgpt.shapes.evaluate import evaluate_shapes

    result = evaluate_shapes(smoke_run / "pipeline", n=1, families=["single_object"], size=(64, 64), progress=False,
                             call_kwargs={"num_inference_steps": 2, "clean_caption": False})
    assert len(result["prompts"]) == 1 and 0.0 <= result["overall"] <= 1.0


def test_word_level_tokenizer_round_trip(tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = build_tokenizer(["A red circle.", "two blue squares"])
    ids = tok("Two RED circle, purple.").input_ids
    vocab = tok.get_vocab()
    assert ids == [vocab["two"], vocab["red"], vocab["circle"], 2, 2, vocab["."], 1]  # "," and "purple" unseen
    assert (vocab["<pad>"], vocab["</s>"], vocab["<unk>"]) == (0, 1, 2)
    tok.save_pretrained(str(tmp_path))
    again = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    padded = again("a red circle", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[:4] == [vocab["a"], vocab["red"], vocab["circle"], 1] and set(padded[4:]) == {0}


def test_run_tokenizer_reads_the_texts_only_when_it_builds_one(tmp_path):
    from diffusers_lumina_mgpt.training.diffusion_train import _run_tokenizer

    def no_texts() -> list[str]:
        raise AssertionError("the texts were read for a tokenizer that is copied or read back")

    init = tmp_path / "pretrained"
    build_tokenizer(["a red circle"]).save_pretrained(str(init / "tokenizer"))
    copied = _run_tokenizer(tmp_path / "a", no_texts, init)  # copied from model.pretrained
    assert copied.get_vocab() == _run_tokenizer(tmp_path / "a", no_texts).get_vocab()  # read back on resume
    built = _run_tokenizer(tmp_path / "b", lambda: ["two blue squares"])
    assert "squares" in built.get_vocab() and "squares" not in copied.get_vocab()


def test_bucket_batches_are_a_function_of_step_and_cover_each_epoch():
    counts = [10, 3, 7]
    a, b = BucketBatches(counts, 3, seed=1), BucketBatches(counts, 3, seed=1)
    assert a.per_epoch == 3 + 1 + 2
    epoch = [a(s) for s in range(6)]
    for s in (5, 0, 3):  # any order, a fresh instance: the same batches
        assert b(s)[0] == epoch[s][0] and np.array_equal(b(s)[1], epoch[s][1])
    for bucket, count in enumerate(counts):
        taken = np.concatenate([i for k, i in epoch if k == bucket])
        assert len(taken) == count // 3 * 3 == len(set(taken.tolist())) and taken.max() < count
    with pytest.raises(ValueError, match="lower train.batch_size"):
        BucketBatches([2, 2], 3, seed=0)


def test_caption_folders_are_resized_into_buckets(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (100, 60), (200, 20, 20)).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "imgs" / "a.txt").write_text("a red picture")
    Image.new("RGB", (64, 64), (20, 20, 200)).save(tmp_path / "imgs" / "b.png")  # no caption: skipped
    config = load_diffusion_config(None, [f"data.sources=[{{source: {tmp_path / 'imgs'}}}]"])
    buckets, pixels, captions, skipped = load_t2i_data(config)
    b = buckets.index((80, 48))
    assert captions[b] == ["a red picture"] and tuple(pixels[b].shape) == (1, 3, 48, 80)
    assert skipped == {"missing_image": 1}


def test_config_errors_are_one_line_and_name_the_fix(tmp_path, capsys):
    with pytest.raises(ValueError, match="multiple of 4"):
        load_diffusion_config(SMOKE, ["data.buckets=[[50, 64]]"])
    with pytest.raises(ValueError, match="caption_dropout"):
        load_diffusion_config(SMOKE, ["train.caption_dropout=1.0"])
    (tmp_path / "typo.yaml").write_text("train: {stpes: 10}\n")
    with pytest.raises(ValueError, match="unknown config key 'train.stpes'"):
        load_diffusion_config(tmp_path / "typo.yaml")
    from diffusers_lumina_mgpt.cli import build_parser, main

    assert main(["train-diffusion", str(SMOKE), "--output-dir", str(tmp_path), "--set", "model.sample_size=30"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "multiple of 4" in err
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices and "train-diffusion" in a.choices)
    assert "example: lumina-mgpt train-diffusion" in sub.choices["train-diffusion"].format_help()


def test_unet_exported_in_float16_loads_back_as_float32(smoke_run, tmp_path):
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    pipe = DiffusionPipeline.from_pretrained(smoke_run / "pipeline")
    config = load_diffusion_config(SMOKE, ["export.unet_dtype=float16"])
    out = export_diffusion_pipeline(config, pipe.unet, pipe.text_encoder, pipe.tokenizer, tmp_path / "half")
    assert pipe.unet.dtype == torch.float32  # the caller's model is not converted
    stored = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in stored.values()} == {torch.float16}
    assert {v.dtype for v in load_file(out / "text_encoder" / "model.safetensors").values()} == {torch.float32}
    loaded = DiffusionPipeline.from_pretrained(out)
    assert loaded.unet.dtype == torch.float32 and loaded.text_encoder.dtype == torch.float32
    for name, value in pipe.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[name], value.half().float()), name
    with pytest.raises(ValueError, match="export.unet_dtype must be one of float32, float16, bfloat16"):
        load_diffusion_config(SMOKE, ["export.unet_dtype=fp16"])


def test_full_recipe_uses_the_ar_recipes_text_to_image_records():
    from diffusers_lumina_mgpt.training.diffusion_train import build_unet

    config = load_diffusion_config(EXAMPLES / "diffusion.yaml")
    ar = yaml.safe_load((EXAMPLES / "fpsft.yaml").read_text())
    ar_t2i = sorted((d["n"], d.get("seed", ar["seed"])) for st in ar["stages"] for d in st["data"]
                    if d["source"] == "shapes:t2i")
    assert sorted((d["n"], d["seed"]) for d in config["data"]["sources"]) == ar_t2i
    assert config["data"]["chunk_size"] == ar["data"]["chunk_size"]  # shapes: records depend on it
    assert 3e6 < sum(p.numel() for p in build_unet(config).parameters()) < 5e6


def test_shifted_schedule_pooled_text_and_heads_reach_the_exported_pipeline(smoke_run):
    from diffusers import DDPMScheduler, DiffusionPipeline

    from diffusers_lumina_mgpt.training.diffusion_train import build_noise_scheduler, build_unet

    config = load_diffusion_config(SMOKE)
    shift = config["diffusion"]["snr_shift"]
    assert shift > 1
    plain = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    shifted = build_noise_scheduler(config).alphas_cumprod.double()
    snr, snr_shifted = plain / (1 - plain), shifted / (1 - shifted)
    unclipped = slice(0, 990)  # the cosine schedule's last betas are capped at 0.999
    torch.testing.assert_close(snr_shifted[unclipped], snr[unclipped] / shift, rtol=1e-4, atol=0)
    pipe = DiffusionPipeline.from_pretrained(str(smoke_run / "pipeline"))
    torch.testing.assert_close(pipe.scheduler.alphas_cumprod.double(), shifted, rtol=1e-5, atol=1e-7)
    # the pooled prompt enters the timestep embedding; cross-attention has model.attention_head_dim heads
    assert pipe.unet.config.addition_embed_type == "text" and pipe.unet.add_embedding is not None
    unet = build_unet(config)
    heads = {m.heads for m in unet.modules() if type(m).__name__ == "Attention"}
    assert heads == {config["model"]["attention_head_dim"]}


def test_pretrained_continues_a_finished_run_and_adds_its_compute(smoke_run, tmp_path):
    from safetensors.torch import load_file

    from diffusers_lumina_mgpt.training.diffusion_train import build_text_encoder, build_unet, load_pretrained_weights

    init = smoke_run / "pipeline"
    vocab = len(json.loads((init / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"])
    unet, text = build_unet(load_diffusion_config(SMOKE)), build_text_encoder(load_diffusion_config(SMOKE), vocab)
    load_pretrained_weights(init, unet, text)
    for part, model in (("unet/diffusion_pytorch_model.safetensors", unet), ("text_encoder/model.safetensors", text)):
        saved = load_file(str(init / part))
        assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    short = ["seed=1", "train.steps=4", "train.checkpoint_every=4"]
    out = tmp_path / "continued"
    train_diffusion(load_diffusion_config(SMOKE, [f"model.pretrained={init}", *short]), out, progress=False)
    assert (out / "tokenizer" / "tokenizer.json").read_text() == (init / "tokenizer" / "tokenizer.json").read_text()
    first = json.loads((smoke_run / "compute.json").read_text())
    compute = json.loads((out / "compute.json").read_text())
    assert compute["pretrained"] == {"path": str(init), "train_flops": first["total_train_flops"], "images_seen": 48}
    assert compute["total_train_flops_with_pretrained"] == first["total_train_flops"] + compute["total_train_flops"]
    assert compute["images_seen_with_pretrained"] == 12 * 4 + 4 * 4
    # the same 4 steps (same batches and noise) from random weights: the continued run's loss is lower
    fresh = tmp_path / "fresh"
    train_diffusion(load_diffusion_config(SMOKE, short), fresh, progress=False)
    assert sum(r["loss"] for r in read_metrics(out)) < sum(r["loss"] for r in read_metrics(fresh))


def test_pretrained_errors_name_the_fix(smoke_run, tmp_path):
    with pytest.raises(ValueError, match="train the first stage first"):
        load_diffusion_config(SMOKE, [f"model.pretrained={tmp_path / 'missing'}"])
    config = load_diffusion_config(SMOKE, [f"model.pretrained={smoke_run / 'pipeline'}",
                                           "model.block_out_channels=[16, 32, 64]"])
    with pytest.raises(ValueError, match="does not fit this config's model section"):
        train_diffusion(config, tmp_path / "bad", progress=False)
    # a missing block lists every missing key: the message keeps one short line
    config = load_diffusion_config(SMOKE, [f"model.pretrained={smoke_run / 'pipeline'}", "model.layers_per_block=2"])
    with pytest.raises(ValueError, match=r"does not fit this config's model section \(.*\.\.\.\)") as err:
        train_diffusion(config, tmp_path / "bad2", progress=False)
    assert len(str(err.value)) < 500 and "\n" not in str(err.value)


def test_continue_recipe_keeps_the_first_recipes_model_and_data():
    first = load_diffusion_config(EXAMPLES / "diffusion.yaml")
    text = (EXAMPLES / "diffusion-continue.yaml").read_text()
    assert "model.pretrained" in text  # its header says how to point it at the first run
    cont = load_diffusion_config(EXAMPLES / "diffusion-continue.yaml", [f"model.pretrained={DEFAULT_DIFFUSION_MODEL}"])
    for key in ("data", "diffusion", "sampler"):
        assert cont[key] == first[key], key
    assert {k: v for k, v in cont["model"].items() if k != "pretrained"} == \
        {k: v for k, v in first["model"].items() if k != "pretrained"}
    assert cont["seed"] != first["seed"]  # a fresh shuffle of the same records
