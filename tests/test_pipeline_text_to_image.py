"""LuminaMGPTPipeline end to end on the tiny Chameleon fixture, against Lumina-mGPT's own outputs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_lumina_mgpt.cli import main as cli
from diffusers_lumina_mgpt.image_processor import resolution_buckets
from diffusers_lumina_mgpt.image_tokens import decode_image_block
from diffusers_lumina_mgpt.pipelines import LuminaMGPTPipeline
from diffusers_lumina_mgpt.schedulers import LuminaMGPTARScheduler, LuminaMGPTJacobiScheduler

from conftest import FIXTURE, naive_greedy_cfg

REFERENCE = json.loads((FIXTURE / "lumina_reference.json").read_text())["cases"]


@pytest.fixture(scope="module")
def pipe_dir(tiny_pipe_dir):
    return tiny_pipe_dir  # converted once per session with `lumina-mgpt convert` (conftest.py)


@pytest.fixture(scope="module")
def pipe(pipe_dir):
    return LuminaMGPTPipeline.from_pretrained(pipe_dir)


def set_scheduler(pipe, name, **kw):
    cls = LuminaMGPTJacobiScheduler if name == "jacobi" else LuminaMGPTARScheduler
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **kw)
    return pipe


@pytest.mark.parametrize("scheduler", ["ar", "jacobi"])
@pytest.mark.parametrize("case", REFERENCE, ids=lambda c: f"{c['height']}x{c['width']}")
def test_reproduces_lumina_mgpt_reference(pipe, case, scheduler):
    set_scheduler(pipe, scheduler)
    ids = pipe.conversation.text_to_image_prompt(case["prompt"], case["height"], case["width"])
    assert ids.tolist() == case["prompt_ids"]
    out = pipe(case["prompt"], height=case["height"], width=case["width"],
               guidance_scale=case["guidance_scale"], image_top_k=case["image_top_k"])
    assert out.tokens[0, :3].tolist() == case["appended_ids"]
    assert out.tokens[0, 3:].tolist() == case["generated_ids"]
    ref = np.asarray(Image.open(FIXTURE / case["png"]).convert("RGB")).astype(int)
    got = np.asarray(out.images[0]).astype(int)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1
    # Lumina-mGPT runs cond and uncond as separate forwards (2 per token); here they share one
    # batched forward, and forced NEWLINE/EOI tokens cost none.
    assert out.num_forward_passes < case["forward_calls"]["total"] / 2


def test_lumina_layout_checkpoint_with_meta_tokenizer(tmp_path, pipe):
    """Lumina-mGPT's own folder layout (per-shard QK norms, no tokenizer) converts to the same pipeline."""
    case = REFERENCE[0]
    assert cli([
        "convert", "--model", str(FIXTURE / "model_lumina"), "--text-tokenizer",
        str(FIXTURE / "tokenizer/text_tokenizer.json"), "--vqgan-ckpt", str(FIXTURE / "tokenizer/vqgan.ckpt"),
        "--vqgan-config", str(FIXTURE / "tokenizer/vqgan.yaml"), "--out", str(tmp_path),
    ]) == 0
    other = LuminaMGPTPipeline.from_pretrained(tmp_path)
    out = other(case["prompt"], height=64, width=64, guidance_scale=3.0, image_top_k=1, output_type="tokens")
    assert other.conversation.text_to_image_prompt(case["prompt"], 64, 64).tolist() == case["prompt_ids"]
    assert out.images[0, 3:].tolist() == case["generated_ids"]


def naive_greedy(pipe, prompt, height, width, guidance_scale):
    cond = pipe.encode_prompt(prompt, height, width)
    uncond = pipe.encode_negative_prompt(None, height, width)
    return naive_greedy_cfg(pipe, cond, uncond, height // 16, width // 16, guidance_scale)


@pytest.mark.parametrize("scheduler", ["ar", "jacobi"])
def test_cfg_equals_explicit_two_pass_and_batch_rows_are_independent(pipe, scheduler):
    set_scheduler(pipe, scheduler, num_drafts=5)
    prompts = ["a red circle", "a blue square below a green triangle on the left"]
    out = pipe(prompts, height=64, width=32, guidance_scale=4.0, image_top_k=1, output_type="tokens")
    for i, prompt in enumerate(prompts):
        assert out.tokens[i, 3:].tolist() == naive_greedy(pipe, prompt, 64, 32, 4.0)


def test_guidance_one_skips_unconditional_rows(pipe):
    set_scheduler(pipe, "ar")
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape[0] if "input_ids" in kw else a[0].shape[0]), with_kwargs=True)
    try:
        pipe("a cat", height=32, width=32, guidance_scale=1.0, output_type="tokens")
        assert set(calls) == {1}
        calls.clear()
        pipe("a cat", height=32, width=32, guidance_scale=2.0, output_type="tokens")
        assert set(calls) == {2}
    finally:
        hook.remove()


@pytest.mark.parametrize("scheduler", ["ar", "jacobi"])
def test_seeded_determinism_and_generator_lists(pipe, scheduler):
    set_scheduler(pipe, scheduler)
    run = lambda g, **kw: pipe("a dog", height=32, width=64, generator=g, output_type="tokens", **kw).tokens
    a = run(torch.Generator().manual_seed(0))
    b = run(torch.Generator().manual_seed(0))
    c = run(torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    d = run(gens, num_images_per_prompt=2)
    assert d.shape[0] == 2


@pytest.mark.parametrize("scheduler", ["ar", "jacobi"])
def test_every_bucket_size_gives_a_valid_block(pipe, scheduler):
    set_scheduler(pipe, scheduler, draft_init="spatial") if scheduler == "jacobi" else set_scheduler(pipe, "ar")
    for w, h in resolution_buckets(64, 32):
        out = pipe("a star", height=h, width=w, generator=torch.Generator().manual_seed(w * h),
                   num_images_per_prompt=2, output_type="pt")
        assert out.images.shape == (2, 3, h, w)
        for block in out.tokens:
            assert decode_image_block(block, pipe.vocab).shape == (h // 16, w // 16)


def test_output_types_callback_and_negative_prompt(pipe):
    set_scheduler(pipe, "ar")
    seen = []
    out = pipe("a cat", height=32, width=32, output_type="np", generator=torch.Generator().manual_seed(0),
               callback_on_step_end=lambda p, step, n, kw: seen.append((step, n, kw["tokens"].shape)))
    assert out.images.shape == (1, 32, 32, 3) and out.images.dtype == np.float32
    assert seen[0][0] == 0 and seen[-1][1] == out.tokens.shape[1] - 3 and len(seen) == out.num_forward_passes
    images, tokens, n = pipe("a cat", height=32, width=32, return_dict=False)
    assert isinstance(images[0], Image.Image) and tokens.shape == (1, 3 + 2 * 3 + 1)
    neg = pipe.encode_negative_prompt("blurry", 32, 32)
    assert neg[-3:].tolist() == pipe.image_header(32, 32).tolist() and len(neg) > 3
    a = pipe("a cat", height=32, width=32, image_top_k=1, negative_prompt="a dog", output_type="tokens").tokens
    assert decode_image_block(a[0], pipe.vocab).shape == (2, 2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(height=48, width=32), "(?i)nearest valid sizes.*64x32"),
        (dict(height=1280, width=1280), "position"),
        (dict(height=32, width=32, output_type="latents"), "output_type"),
        (dict(height=32, width=32, num_images_per_prompt=0), "num_images_per_prompt"),
        (dict(height=32, width=32, negative_prompt=["a", "b"]), "negative_prompt"),
        (dict(height="32", width=32), "height"),
        (dict(height=32, width=32, image_top_k=0), "image_top_k"),
    ],
)
def test_bad_inputs_have_clear_errors(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe("a cat", **kwargs)
    with pytest.raises(ValueError, match="prompt"):
        pipe(3, height=32, width=32)


def test_too_long_for_the_model(pipe_dir):
    small = LuminaMGPTPipeline.from_pretrained(pipe_dir)
    small.transformer.register_to_config(max_position_embeddings=64)
    with pytest.raises(ValueError, match="position"):
        small("a cat", height=64, width=128)


def test_default_guidance_comes_from_the_folder(pipe_dir, tmp_path):
    """A call without `guidance_scale` uses the pipeline's `default_guidance_scale` (3.0 unless the folder's
    model_index.json records another): the same tokens as passing it; `generate` records the scale used."""
    pipe = LuminaMGPTPipeline.from_pretrained(pipe_dir)
    assert pipe.config.default_guidance_scale == 3.0
    index = json.loads((pipe_dir / "model_index.json").read_text())
    folder = tmp_path / "pipe"
    import shutil

    shutil.copytree(pipe_dir, folder)
    (folder / "model_index.json").write_text(json.dumps({**index, "default_guidance_scale": 1.5}))
    other = LuminaMGPTPipeline.from_pretrained(folder)
    g = lambda: torch.Generator().manual_seed(2)
    kw = dict(height=32, width=32, image_top_k=5, output_type="tokens")
    implicit = other("a cat", generator=g(), **kw).tokens
    assert other.guidance_scale == 1.5
    assert torch.equal(implicit, other("a cat", guidance_scale=1.5, generator=g(), **kw).tokens)
    assert not torch.equal(implicit, other("a cat", guidance_scale=3.0, generator=g(), **kw).tokens)
    out = tmp_path / "x.png"
    assert cli(["generate", "a cat", "--model", str(folder), "--height", "32", "--width", "32", "-o", str(out)]) == 0
    assert json.loads(Image.open(out).text["lumina-mgpt"])["guidance_scale"] == 1.5


def test_save_load_round_trip_offload_and_dtype(pipe, tmp_path):
    set_scheduler(pipe, "jacobi")
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers_lumina_mgpt.schedulers.jacobi", "LuminaMGPTJacobiScheduler"]
    assert index["transformer"] == ["diffusers_lumina_mgpt.transformer", "LuminaMGPTTransformer"]
    loaded = LuminaMGPTPipeline.from_pretrained(tmp_path)
    g = lambda: torch.Generator().manual_seed(7)
    a = pipe("a cat", height=32, width=64, generator=g(), output_type="tokens").tokens
    b = loaded("a cat", height=32, width=64, generator=g(), output_type="tokens").tokens
    assert torch.equal(a, b)
    loaded.enable_model_cpu_offload(device="cpu")
    c = loaded("a cat", height=32, width=64, generator=g(), output_type="tokens").tokens
    assert torch.equal(a, c)
    half = LuminaMGPTPipeline.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    out = half("a cat", height=32, width=32, generator=g(), output_type="pt")
    assert half.transformer.dtype == torch.bfloat16 and torch.isfinite(out.images).all()


def test_generate_cli_writes_png_with_settings(pipe_dir, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert cli(["generate", "a red circle", "--model", str(pipe_dir), "--height", "32", "--width", "64",
                "--seed", "3", "--scheduler", "jacobi", "-o", str(out)]) == 0
    image = Image.open(out)
    settings = json.loads(image.text["lumina-mgpt"])
    assert image.size == (64, 32) and settings["seed"] == 3 and settings["scheduler"] == "jacobi"
    assert not settings["compiled"]
    compiled = tmp_path / "compiled.png"  # AR, compiled decoding: the same image as eager decoding (greedy)
    args = ["generate", "a red circle", "--model", str(pipe_dir), "--height", "32", "--width", "64", "--image-top-k", "1"]
    assert cli([*args, "-o", str(out)]) == 0 and cli([*args, "--compile", "-o", str(compiled)]) == 0
    assert json.loads(Image.open(compiled).text["lumina-mgpt"])["compiled"]
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(compiled)))
    assert cli(["generate", "x", "--model", str(tmp_path), "-o", str(out)]) == 2
    assert "model_index.json" in capsys.readouterr().err


def test_vocab_follows_a_swapped_tokenizer(pipe_dir):
    from transformers import AutoTokenizer

    p = LuminaMGPTPipeline.from_pretrained(pipe_dir)
    first = p.vocab
    assert p.vocab is first and p.conversation.vocab is first
    p.tokenizer = AutoTokenizer.from_pretrained(pipe_dir / "tokenizer")
    assert p.vocab is not first and p.vocab == first and p.conversation.tokenizer is p.tokenizer


@pytest.mark.parametrize("scheduler", ["ar", "jacobi"])
def test_callback_interrupt_stops_decoding(pipe, scheduler):
    """diffusers' convention: a step callback sets `pipe._interrupt`; the call returns what was decided."""
    set_scheduler(pipe, scheduler)
    seen = []

    def stop_early(p, step, num_tokens, kwargs):
        seen.append(step)
        if step == 2:
            p._interrupt = True
        return kwargs

    kw = dict(height=64, width=64, guidance_scale=3.0, image_top_k=1)
    full = pipe("a red circle", output_type="tokens", **kw).tokens
    tokens = pipe("a red circle", output_type="tokens", callback_on_step_end=stop_early, **kw).tokens
    assert seen == [0, 1, 2] and pipe.interrupt
    decided = tokens[0, 3:] >= 0
    assert 0 < int(decided.sum()) < full.shape[1] - 3 and not decided[-1]  # EOI undecided
    assert torch.equal(tokens[0, 3:][decided], full[0, 3:][decided])  # a prefix of the full decode
    n = int(decided.sum())
    assert decided[:n].all() and not decided[n:].any()
    images = pipe("a red circle", output_type="np", callback_on_step_end=stop_early, **kw).images
    assert images.shape == (1, 64, 64, 3) and np.allclose(images[0, -16:], 0.5)  # undecided cells are grey
    pipe("a red circle", output_type="tokens", **kw)  # the next call starts uninterrupted
    assert not pipe.interrupt
