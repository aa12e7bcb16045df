"""The shipped diffusion baseline (`DEFAULT_DIFFUSION_MODEL`): a stock diffusers IFPipeline folder (UNet
weights in float16) that, with the AR default model, stays under 40 MB, loads offline with no custom code,
draws at the default comparison's sizes and settings, and is what `lumina-mgpt compare` sets against the AR
default model."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusers_lumina_mgpt import DEFAULT_DIFFUSION_MODEL, DEFAULT_MODEL
from diffusers_lumina_mgpt.compare.cli import DEFAULT_DIFFUSION_CALL_ARGS, default_pipelines


@pytest.fixture(scope="module")
def pipe():
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(DEFAULT_DIFFUSION_MODEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_baseline_is_a_small_stock_diffusers_folder():
    folder = Path(DEFAULT_DIFFUSION_MODEL)
    assert (folder / "README.md").is_file()
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "IFPipeline"
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) <= 40 * 2**20
    assert {p.name for p in folder.iterdir() if p.is_dir()} == {"unet", "text_encoder", "tokenizer", "scheduler"}
    # the two shipped models together stay within the package's 40 MB of weights
    both = [f for model in (DEFAULT_MODEL, DEFAULT_DIFFUSION_MODEL) for f in Path(model).rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in both) <= 40 * 2**20


def test_its_unet_is_stored_in_float16_and_runs_in_float32(pipe):
    from safetensors.torch import load_file

    stored = load_file(Path(DEFAULT_DIFFUSION_MODEL) / "unet" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in stored.values()} == {torch.float16}
    assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    assert all(torch.equal(pipe.unet.state_dict()[k], v.float()) for k, v in stored.items())


def test_its_compute_json_adds_up(pipe):
    """compute.json beside the weights: the continuation's FLOPs per bucket, plus the first run's."""
    compute = json.loads((Path(DEFAULT_DIFFUSION_MODEL) / "compute.json").read_text())
    own = sum(n * compute["batch_size"] * compute["train_flops_per_image"][size]
              for size, n in compute["steps_per_bucket"].items())
    assert compute["total_train_flops"] == own
    assert compute["total_train_flops_with_pretrained"] == own + compute["pretrained"]["train_flops"]
    assert compute["images_seen_with_pretrained"] == compute["images_seen"] + compute["pretrained"]["images_seen"]
    assert compute["unet_parameters"] == sum(p.numel() for p in pipe.unet.parameters())
    assert compute["text_encoder_parameters"] == sum(p.numel() for p in pipe.text_encoder.parameters())


def test_it_loads_offline_and_draws_the_comparison_sizes(pipe, monkeypatch):
    from diffusers import IFPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert type(pipe) is IFPipeline
    assert set(DEFAULT_DIFFUSION_CALL_ARGS) <= set(inspect.signature(pipe.__call__).parameters)
    kwargs = {**DEFAULT_DIFFUSION_CALL_ARGS, "num_inference_steps": 4}
    images = {}
    for width, height in ((64, 64), (80, 48)):
        out = pipe("an image of a red circle", height=height, width=width,
                   generator=torch.Generator().manual_seed(0), **kwargs)
        images[width] = np.asarray(out.images[0])
        assert out.images[0].size == (width, height)
    again = pipe("an image of a red circle", height=64, width=64, generator=torch.Generator().manual_seed(0), **kwargs)
    assert np.array_equal(np.asarray(again.images[0]), images[64])  # seeded: the comparison's images repeat
    assert images[64].std() > 5  # a picture, not a flat field


def test_the_default_comparison_runs_it_against_the_ar_model():
    pipelines, own = default_pipelines()
    assert pipelines == [f"ar={DEFAULT_MODEL}@ar", f"jacobi={DEFAULT_MODEL}@jacobi",
                         f"diffusion={DEFAULT_DIFFUSION_MODEL}"]
    assert own == [f"diffusion:{k}={v}" for k, v in DEFAULT_DIFFUSION_CALL_ARGS.items()]
