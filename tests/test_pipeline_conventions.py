"""The conventions diffusers' own pipeline tests check: loading through `DiffusionPipeline`, scheduler
compatibility, call-state properties a callback may change, and latent outputs."""

import json
import os
import stat
import subprocess
import sys

import pytest
import torch

from diffusers_lumina_mgpt import LuminaMGPTARScheduler, LuminaMGPTJacobiScheduler, LuminaMGPTPipeline


@pytest.fixture(scope="module")
def pipe(tiny_pipe_dir):
    p = LuminaMGPTPipeline.from_pretrained(tiny_pipe_dir)
    p.set_progress_bar_config(disable=True)
    return p


def test_diffusion_pipeline_loads_saved_folders_offline(pipe, tmp_path):
    out = tmp_path / "saved"
    pipe.save_pretrained(out)
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_lumina_mgpt", "LuminaMGPTPipeline"]
    code = (
        "import sys, diffusers, huggingface_hub\n"
        "def no_hub(*a, **k): raise AssertionError('hub access attempted')\n"
        "huggingface_hub.hf_hub_download = huggingface_hub.snapshot_download = no_hub\n"
        "from diffusers import DiffusionPipeline\n"
        f"p = DiffusionPipeline.from_pretrained({str(out)!r}, trust_remote_code=True)\n"
        "print(type(p).__name__, type(p.scheduler).__name__)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["LuminaMGPTPipeline", "LuminaMGPTARScheduler"]
    # our own classes load the class they are called on, whatever the folder names
    from diffusers_lumina_mgpt import LuminaMGPTEditPipeline

    assert type(LuminaMGPTEditPipeline.from_pretrained(out)) is LuminaMGPTEditPipeline
    # and the saved pipeline generates the same tokens as the original
    a = pipe("a red circle", height=64, width=64, image_top_k=1, output_type="tokens").images
    b = LuminaMGPTPipeline.from_pretrained(out)("a red circle", height=64, width=64, image_top_k=1,
                                                output_type="tokens").images
    assert torch.equal(a, b)


def test_scheduler_compatibles_and_foreign_schedulers(pipe):
    assert set(pipe.scheduler.compatibles) == {LuminaMGPTARScheduler, LuminaMGPTJacobiScheduler}
    from diffusers import EulerDiscreteScheduler

    before = pipe.scheduler
    with pytest.raises(ValueError, match="EulerDiscreteScheduler cannot decode image tokens.*LuminaMGPTARScheduler"):
        pipe.scheduler = EulerDiscreteScheduler()
    assert pipe.scheduler is before
    pipe.scheduler = LuminaMGPTJacobiScheduler.from_config(pipe.scheduler.config)
    pipe.scheduler = before


def test_latent_output_is_the_code_grid(pipe):
    kwargs = dict(height=64, width=32, image_top_k=1, generator=torch.Generator().manual_seed(0))
    latents = pipe("a blue square", output_type="latent", **kwargs).images
    f = pipe.image_processor.config.downsample_factor
    h, w = 64 // f, 32 // f
    assert latents.shape == (1, h, w) and latents.dtype == torch.long
    images = pipe("a blue square", output_type="pt", **kwargs).images
    assert torch.allclose(pipe.decode_latents(latents, output_type="pt"), images)


def test_guidance_scale_is_a_property_a_callback_can_change(pipe):
    kwargs = dict(height=32, width=32, image_top_k=1)
    seen = []

    def record(p, step, num_tokens, kw):
        seen.append((p.guidance_scale, p.do_classifier_free_guidance))
        return kw

    base = pipe("a red circle", guidance_scale=3.0, callback_on_step_end=record, output_type="tokens", **kwargs)
    assert seen and all(s == (3.0, True) for s in seen)

    def strengthen(p, step, num_tokens, kw):
        p._guidance_scale = 9.0
        return kw

    changed = pipe("a red circle", guidance_scale=3.0, callback_on_step_end=strengthen, output_type="tokens", **kwargs)
    assert pipe.guidance_scale == 9.0
    from_start = pipe("a red circle", guidance_scale=9.0, output_type="tokens", **kwargs)
    # the first token is chosen at 3.0 (before any callback), the rest at 9.0
    assert torch.equal(changed.images[:, :4], base.images[:, :4])
    assert not torch.equal(base.images, from_start.images)  # the scale matters for this prompt...
    assert not torch.equal(changed.images, base.images)  # ...so a change mid-run shows in the tokens


def test_dtype_loading_and_casting_say_nothing_false(tiny_pipe_dir, caplog):
    import logging
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecation warning from our own call fails the test
        with caplog.at_level(logging.WARNING):
            p = LuminaMGPTPipeline.from_pretrained(tiny_pipe_dir, dtype=torch.bfloat16)
            p.to(torch.float32)
    assert p.transformer.dtype == torch.float32
    assert "kept in float32" not in caplog.text


def test_help_imports_no_model_stack():
    code = ("import sys\nfrom diffusers_lumina_mgpt.cli import build_parser\nbuild_parser().format_help()\n"
            "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'gradio') if m in sys.modules]\n"
            "print(heavy)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"  # `lumina-mgpt --help` stays well under a second


def test_encode_prompt_with_the_text_components_only(pipe, tiny_pipe_dir):
    text_only = LuminaMGPTPipeline.from_pretrained(tiny_pipe_dir, vqvae=None)
    assert text_only.vqvae is None
    assert torch.equal(text_only.encode_prompt("a red circle", 64, 32), pipe.encode_prompt("a red circle", 64, 32))
    assert torch.equal(text_only.encode_negative_prompt(None, 64, 32), pipe.encode_negative_prompt(None, 64, 32))
    tokens = text_only("a red circle", height=64, width=32, image_top_k=1, output_type="tokens").images
    assert torch.equal(tokens, pipe("a red circle", height=64, width=32, image_top_k=1, output_type="tokens").images)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_saved_weights_get_the_umask_mode_like_the_other_files(pipe, tmp_path):
    """safetensors 0.8 creates its files 0600 (a temporary file renamed into place); a saved folder's weights get
    the mode its JSON files have, so another account can load it."""
    from safetensors.torch import save_file

    from diffusers_lumina_mgpt.file_modes import umask_modes

    old = os.umask(0o022)
    try:
        plain = tmp_path / "plain.safetensors"
        save_file({"x": torch.zeros(2)}, str(plain))
        written = stat.S_IMODE(plain.stat().st_mode)
        assert umask_modes(plain) == ([plain] if written == 0o600 else [])
        assert stat.S_IMODE(plain.stat().st_mode) == 0o644
        out = tmp_path / "saved"
        pipe.save_pretrained(out)
        weights = sorted(out.rglob("*.safetensors"))
        assert {p.parent.name for p in weights} >= {"transformer", "vqvae"}
        assert {stat.S_IMODE(p.stat().st_mode) for p in [*weights, out / "model_index.json"]} == {0o644}
        os.chmod(plain, 0o640)  # a mode someone chose is kept
        assert umask_modes(tmp_path) == [] and stat.S_IMODE(plain.stat().st_mode) == 0o640
    finally:
        os.umask(old)
