"""Tests for the `vqvae` component: parity with transformers' ChameleonVQVAE encoder and taming's
Decoder on random float32 weights, Lumina-mGPT's reference PNGs, conversion errors, and docs/vq.md."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from diffusers_lumina_mgpt.vq import (
    ChameleonVQModel,
    vq_decode_codes,
    vq_downsample_factor,
    vq_encode_codes,
    vq_num_codes,
    vq_pixels_to_uint8,
)
from diffusers_lumina_mgpt.vq_convert import load_chameleon_vq_encoder, load_meta_vqgan

REPO = Path(__file__).resolve().parents[1]

# name -> (taming ddconfig overrides, n_embed, embed_dim, image (H, W))
CONFIGS = {
    # Chameleon's real tokenizer architecture, at a small image size
    "chameleon-real": (dict(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, z_channels=256), 8192, 256, (32, 48)),
    # the fixture's layout: 16x, 8192 codes of dimension 8
    "fixture-like": (dict(ch=32, ch_mult=[1, 1, 1, 1, 1], num_res_blocks=1, z_channels=8), 8192, 8, (32, 64)),
    # a small tokenizer: 8x, 512 codes, attention inside the level at 16 px
    "small-f8-attn": (
        dict(ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=4, resolution=64, attn_resolutions=[32]),
        512,
        6,
        (24, 40),
    ),
}


def _ddconfig(overrides: dict) -> dict:
    base = dict(
        double_z=False, in_channels=3, out_ch=3, resolution=512, attn_resolutions=[], dropout=0.0
    )
    return {**base, **overrides}


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (norm affines too), so that a wrong key map cannot hide."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):
            if "embedding" in name:
                param.copy_(torch.randn(param.shape, generator=gen))
            elif param.ndim > 1:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=gen) / fan_in**0.5)
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))


def _images(height: int, width: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=gen) * 2 - 1


def _taming_reference(name: str, tmp_path: Path):
    """Random taming VQGAN written as Meta's vqgan.ckpt + vqgan.yaml; returns (modules, paths)."""
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAEVectorQuantizer

    overrides, n_embed, embed_dim, _ = CONFIGS[name]
    ddconfig = _ddconfig(overrides)
    z = ddconfig["z_channels"]
    ref = torch.nn.Module()
    ref.encoder = Encoder(**ddconfig)
    with contextlib.redirect_stdout(io.StringIO()):  # taming prints the z shape
        ref.decoder = Decoder(**ddconfig)
    # taming's VectorQuantizer2 needs einops (not installed); transformers' copy of it is the same code
    ref.quantize = ChameleonVQVAEVectorQuantizer(SimpleNamespace(num_embeddings=n_embed, embed_dim=embed_dim))
    ref.quant_conv = torch.nn.Conv2d(z, embed_dim, 1)
    ref.post_quant_conv = torch.nn.Conv2d(embed_dim, z, 1)
    _randomize(ref, seed=1)
    ref.eval()
    state = dict(ref.state_dict())
    state["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)  # training-only, must be ignored
    ckpt, cfg = tmp_path / "vqgan.ckpt", tmp_path / "vqgan.yaml"
    torch.save({"state_dict": state, "epoch": 3, "global_step": 1000}, ckpt)
    params = {"ddconfig": ddconfig, "n_embed": n_embed, "embed_dim": embed_dim}
    cfg.write_text(yaml.safe_dump({"model": {"target": "chameleon.vqgan.VQModel", "params": params}}))
    return ref, ckpt, cfg


@pytest.mark.parametrize("name", list(CONFIGS))
def test_meta_vqgan_matches_taming(name, tmp_path):
    ref, ckpt, cfg = _taming_reference(name, tmp_path)
    model = load_meta_vqgan(ckpt, cfg)
    overrides, n_embed, _, (height, width) = CONFIGS[name]
    factor = 2 ** (len(overrides["ch_mult"]) - 1)
    assert vq_downsample_factor(model) == factor and vq_num_codes(model) == n_embed
    has_attn = bool(overrides.get("attn_resolutions"))
    assert ("AttnDownEncoderBlock2D" in model.config.down_block_types) == has_attn
    assert ("AttnUpDecoderBlock2D" in model.config.up_block_types) == has_attn
    pixels = _images(height, width)
    with torch.no_grad():
        # encoder + quantizer: taming's Encoder, then Chameleon's nearest-code rule
        _, _, ref_codes = ref.quantize(ref.quant_conv(ref.encoder(pixels)))
        codes = vq_encode_codes(model, pixels)
        assert codes.shape == (2, height // factor, width // factor) and codes.dtype == torch.long
        assert torch.equal(codes.flatten(), ref_codes.flatten())
        assert codes.unique().numel() > 1  # a degenerate grid would prove nothing
        # decoder: random codes through taming's Decoder
        gen = torch.Generator().manual_seed(2)
        grid = torch.randint(0, n_embed, (2, height // factor, width // factor), generator=gen)
        quant = ref.quantize.embedding(grid).permute(0, 3, 1, 2)
        expected = ref.decoder(ref.post_quant_conv(quant))
        decoded = vq_decode_codes(model, grid)
    assert decoded.shape == (2, 3, height, width)
    diff = (decoded - expected).abs().max().item()
    print(f"{name}: max |diffusers - taming| decoded pixels = {diff:.2e}")
    assert diff <= 1e-4


def _write_transformers_folder(folder: Path, vq, vq_config: dict, shards: int) -> None:
    tensors = {f"model.vqmodel.{k}": v.contiguous() for k, v in vq.state_dict().items()}
    tensors["model.embed_tokens.weight"] = torch.zeros(16, 8)  # text weights must be left alone
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "chameleon", "vq_config": vq_config}))
    if shards == 1:
        save_file(tensors, folder / "model.safetensors")
        return
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = names[i::shards]
        save_file({n: tensors[n] for n in part}, folder / shard)
        weight_map.update({n: shard for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("shards", [1, 3])
def test_transformers_encoder_codes_match(name, shards, tmp_path):
    from transformers.models.chameleon.configuration_chameleon import ChameleonVQVAEConfig
    from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAE

    overrides, n_embed, embed_dim, (height, width) = CONFIGS[name]
    dd = _ddconfig(overrides)
    config = ChameleonVQVAEConfig(
        embed_dim=embed_dim,
        num_embeddings=n_embed,
        latent_channels=dd["z_channels"],
        resolution=dd["resolution"],
        in_channels=3,
        base_channels=dd["ch"],
        channel_multiplier=dd["ch_mult"],
        num_res_blocks=dd["num_res_blocks"],
        attn_resolutions=dd["attn_resolutions"],
    )
    ref = ChameleonVQVAE(config).eval()
    _randomize(ref, seed=3)
    _write_transformers_folder(tmp_path / "chameleon", ref, config.to_dict(), shards)
    model = load_chameleon_vq_encoder(tmp_path / "chameleon")
    assert model.config.has_decoder is False
    pixels = _images(height, width, seed=4)
    with torch.no_grad():
        expected = ref.encode(pixels).image_tokens
        codes = vq_encode_codes(model, pixels)
        latents_diff = (model.encode(pixels).latents - ref.quant_conv(ref.encoder(pixels))).abs().max().item()
    print(f"{name}: max |diffusers - transformers| latents = {latents_diff:.2e}")
    assert latents_diff <= 1e-4
    assert torch.equal(codes.flatten(), expected.flatten())
    assert codes.unique().numel() > 1


@pytest.fixture(scope="module")
def meta_vq(fixture_dir) -> ChameleonVQModel:
    return load_meta_vqgan(fixture_dir / "tokenizer" / "vqgan.ckpt", fixture_dir / "tokenizer" / "vqgan.yaml")


def test_reference_pngs(meta_vq, fixture_dir):
    """Lumina-mGPT's own decoder made these PNGs from these code grids."""
    reference = json.loads((fixture_dir / "lumina_reference.json").read_text())
    assert reference["cases"]
    for case in reference["cases"]:
        codes = torch.tensor(case["vq_codes"])[None]  # (1, h, w)
        with torch.no_grad():
            pixels = vq_decode_codes(meta_vq, codes)
        ours = vq_pixels_to_uint8(pixels)[0].numpy().astype(int)  # (H, W, 3)
        png = np.asarray(Image.open(fixture_dir / case["png"]).convert("RGB")).astype(int)
        assert ours.shape == png.shape == (case["height"], case["width"], 3)
        diff = np.abs(ours - png)
        print(f"{case['png']}: max diff {diff.max()}, {int((diff > 0).sum())} of {diff.size} values differ")
        assert diff.max() <= 1
        # a difference may only come from float noise at a truncation boundary
        scaled = ((pixels.clamp(-1, 1) + 1) / 2 * 255)[0].permute(1, 2, 0).numpy()
        near = np.abs(scaled - np.round(scaled))
        assert (near[diff > 0] < 1e-3).all()
        assert (diff > 0).mean() < 1e-3


def test_fixture_encoder_checkpoint_matches_meta(meta_vq, fixture_dir):
    encoder_only = load_chameleon_vq_encoder(fixture_dir / "model")
    full = meta_vq.state_dict()
    enc = encoder_only.state_dict()
    assert set(enc) == {k for k in full if not k.startswith("decoder.")}
    assert all(torch.equal(enc[k], full[k]) for k in enc)  # the fixture holds the same weights
    pixels = _images(64, 128, seed=5)
    assert torch.equal(vq_encode_codes(encoder_only, pixels), vq_encode_codes(meta_vq, pixels))


def test_encoder_only_survives_save_and_cannot_decode(fixture_dir, tmp_path):
    model = load_chameleon_vq_encoder(fixture_dir / "model")
    codes = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="vqgan.ckpt"):
        vq_decode_codes(model, codes)
    model.save_pretrained(tmp_path / "vqvae")
    saved = load_file(tmp_path / "vqvae" / "diffusion_pytorch_model.safetensors")
    assert not any(k.startswith("decoder.") for k in saved)
    reloaded = ChameleonVQModel.from_pretrained(tmp_path / "vqvae")
    assert reloaded.config.has_decoder is False and reloaded.decoder is None
    with pytest.raises(ValueError, match="encoder-only"):
        reloaded.decode(torch.zeros(1, 8, 2, 2))
    pixels = _images(32, 32, seed=6)
    assert torch.equal(vq_encode_codes(reloaded, pixels), vq_encode_codes(model, pixels))


def test_full_model_save_roundtrip(meta_vq, tmp_path):
    meta_vq.save_pretrained(tmp_path / "vqvae")
    reloaded = ChameleonVQModel.from_pretrained(tmp_path / "vqvae").eval()
    assert reloaded.config.has_decoder is True
    codes = torch.randint(0, 8192, (1, 2, 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(vq_decode_codes(reloaded, codes), vq_decode_codes(meta_vq, codes))


def test_helpers_work_on_plain_vqmodel(meta_vq):
    """A plain diffusers VQModel (lookup_from_codebook False) with the same weights decodes the same."""
    from diffusers import VQModel

    config = {k: v for k, v in meta_vq.config.items() if not k.startswith("_") and k not in ("has_decoder", "pixel_norm", "cell_encoder", "cell_decoder")}
    plain = VQModel(**{**config, "lookup_from_codebook": False}).eval()
    plain.load_state_dict(meta_vq.state_dict())
    codes = torch.randint(0, 8192, (2, 2, 2), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(vq_decode_codes(plain, codes), vq_decode_codes(meta_vq, codes))
    pixels = _images(32, 32, seed=7)
    assert torch.equal(vq_encode_codes(plain, pixels), vq_encode_codes(meta_vq, pixels))


def test_key_validation(fixture_dir, tmp_path):
    state = torch.load(fixture_dir / "tokenizer" / "vqgan.ckpt", weights_only=True)["state_dict"]
    state.pop("decoder.conv_out.bias")
    state["encoder.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "vqgan.ckpt")
    with pytest.raises(ValueError) as err:
        load_meta_vqgan(tmp_path / "vqgan.ckpt", fixture_dir / "tokenizer" / "vqgan.yaml")
    assert "missing (1): decoder.conv_out.bias" in str(err.value)
    assert "unexpected (1): encoder.extra.weight" in str(err.value)
    # a yaml that does not describe the checkpoint: shape mismatches, reported together
    config = yaml.safe_load((fixture_dir / "tokenizer" / "vqgan.yaml").read_text())
    config["model"]["params"]["embed_dim"] = 16
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="shape mismatch"):
        load_meta_vqgan(fixture_dir / "tokenizer" / "vqgan.ckpt", tmp_path / "bad.yaml")


def test_input_errors(meta_vq, fixture_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="vqgan.ckpt"):
        load_meta_vqgan(tmp_path / "nope.ckpt", fixture_dir / "tokenizer" / "vqgan.yaml")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.json").write_bytes((fixture_dir / "model" / "config.json").read_bytes())
        load_chameleon_vq_encoder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_chameleon_vq_encoder(tmp_path)
    (tmp_path / "novq").mkdir()
    (tmp_path / "novq" / "config.json").write_text(json.dumps({"vq_config": {"base_channels": 32}}))
    with pytest.raises(ValueError, match="lacks 'channel_multiplier'"):
        load_chameleon_vq_encoder(tmp_path / "novq")
    with pytest.raises(ValueError, match="multiple of the tokenizer's downsample factor 16"):
        vq_encode_codes(meta_vq, torch.zeros(1, 3, 40, 32))
    with pytest.raises(ValueError, match="batch"):
        vq_encode_codes(meta_vq, torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match=re.escape("[0, 8192)")):
        vq_decode_codes(meta_vq, torch.tensor([[[0, 8192]]]))
    with pytest.raises(ValueError, match="integer"):
        vq_decode_codes(meta_vq, torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="codes"):
        vq_decode_codes(meta_vq, torch.zeros(2, 2, dtype=torch.long))


def test_torch_dtype_and_pickled_checkpoints(fixture_dir, tmp_path):
    import argparse

    yaml_path = fixture_dir / "tokenizer" / "vqgan.yaml"
    half = load_meta_vqgan(fixture_dir / "tokenizer" / "vqgan.ckpt", yaml_path, torch_dtype=torch.bfloat16)
    assert half.quantize.embedding.weight.dtype == torch.bfloat16
    codes = vq_encode_codes(half, _images(32, 32, seed=8))
    with torch.no_grad():
        assert vq_decode_codes(half, codes).dtype == torch.bfloat16
    # Lightning checkpoints may pickle hyper-parameter objects that weights_only refuses
    state = torch.load(fixture_dir / "tokenizer" / "vqgan.ckpt", weights_only=True)["state_dict"]
    torch.save({"state_dict": state, "hyper_parameters": argparse.Namespace(lr=1e-4)}, tmp_path / "vqgan.ckpt")
    with pytest.raises(ValueError, match="allow_pickle=True"):
        load_meta_vqgan(tmp_path / "vqgan.ckpt", yaml_path)
    assert load_meta_vqgan(tmp_path / "vqgan.ckpt", yaml_path, allow_pickle=True).config.has_decoder


def test_pixels_to_uint8_is_truncation():
    pixels = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 3.0]).view(1, 6, 1)
    out = vq_pixels_to_uint8(pixels.expand(3, 6, 1))
    assert out.shape == (6, 1, 3)
    assert out[:, 0, 0].tolist() == [0, 0, 127, 254, 255, 255]



def _small_vq(pixel_norm: bool, cell_encoder: bool = False, **kwargs) -> ChameleonVQModel:
    torch.manual_seed(0)
    return ChameleonVQModel(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, num_vq_embeddings=64, vq_embed_dim=4,
        norm_num_groups=4, mid_block_add_attention=False, pixel_norm=pixel_norm, cell_encoder=cell_encoder,
        **{"lookup_from_codebook": False, **kwargs},
    ).eval()


def test_pixel_norm_is_layer_norm_over_channels():
    from diffusers_lumina_mgpt.vq import PixelNorm

    norm = PixelNorm(6, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 6, 5, 7)
    ref = torch.nn.LayerNorm(6, eps=1e-6)
    ref.load_state_dict({"weight": norm.weight, "bias": norm.bias})
    torch.testing.assert_close(norm(x), ref(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


def test_pixel_norm_codes_depend_only_on_their_neighbourhood(tmp_path):
    """Changing the far corner of an image leaves the codes of the near corner alone with PixelNorm;
    with GroupNorm (image-wide statistics) they change, which is what made a flat background take
    dozens of different codes depending on the objects elsewhere."""
    pixels = _images(64, 64, seed=3)
    changed = pixels.clone()
    changed[:, :, 48:, 48:] = torch.rand(1, 3, 16, 16) * 2 - 1
    for pixel_norm in (True, False):
        vq = _small_vq(pixel_norm)
        with torch.no_grad():
            a, b = vq.encode(pixels).latents, vq.encode(changed).latents
        near_same = torch.equal(a[..., :6, :6], b[..., :6, :6])
        assert near_same is pixel_norm
    vq = _small_vq(True)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in vq.modules())
    vq.save_pretrained(tmp_path / "vq")
    reloaded = ChameleonVQModel.from_pretrained(tmp_path / "vq").eval()
    assert reloaded.config.pixel_norm is True
    with torch.no_grad():
        assert torch.equal(vq_encode_codes(reloaded, pixels), vq_encode_codes(vq, pixels))


def test_cell_encoder_codes_depend_only_on_their_cell(tmp_path):
    """With `cell_encoder`, a code is its cell's encoding alone: changing one cell changes that code only
    (a plain encoder's receptive field reaches the neighbours), and each cell encodes as the image would
    if it were cut out on its own. The flag survives saving."""
    pixels = _images(16, 24, batch=1, seed=4)
    vq = _small_vq(True, cell_encoder=True)
    f = vq_downsample_factor(vq)
    changed = pixels.clone()
    changed[:, :, :f, :f] = torch.rand(1, 3, f, f) * 2 - 1  # the first cell only
    with torch.no_grad():
        a, b = vq.encode(pixels).latents, vq.encode(changed).latents
        plain = _small_vq(True)
        pa, pb = plain.encode(pixels).latents, plain.encode(changed).latents
        alone = vq.encode(pixels[:, :, f : 2 * f, 2 * f : 3 * f]).latents  # the cell at row 1, column 2
    assert a.shape == pa.shape == (1, 4, pixels.shape[2] // f, pixels.shape[3] // f)
    differs = (a != b).any(1)[0]
    assert differs[0, 0] and differs.sum() == 1
    assert (pa != pb).any(1)[0].sum() > 1
    torch.testing.assert_close(a[..., 1:2, 2:3], alone)
    vq.save_pretrained(tmp_path / "vq")
    reloaded = ChameleonVQModel.from_pretrained(tmp_path / "vq").eval()
    assert reloaded.config.cell_encoder is True
    with torch.no_grad():
        assert torch.equal(vq_encode_codes(reloaded, pixels), vq_encode_codes(vq, pixels))


def test_cell_encoder_encodes_each_distinct_cell_once():
    """Without autograd, repeated cells (a flat background) are encoded once and shared; the latents equal
    those of every cell encoded by the plain encoder, and the encoder runs on the distinct cells only."""
    from diffusers.models.autoencoders.vq_model import VQModel

    from diffusers_lumina_mgpt.vq import _from_cells, _to_cells

    vq = _small_vq(True, cell_encoder=True)
    f = vq_downsample_factor(vq)
    pixels = torch.ones(2, 3, 4 * f, 6 * f)  # white, as a ShapesWorld background
    pixels[0, :, f : 3 * f, 2 * f : 3 * f] = torch.tensor([1.0, -1.0, -1.0])[:, None, None]  # a red 2x1 block
    pixels[1, :, :f, :f] = torch.rand(3, f, f) * 2 - 1
    seen = []
    hook = vq.encoder.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    with torch.no_grad():
        latents = vq.encode(pixels).latents
        hook.remove()
        every_cell = VQModel.encode(vq, _to_cells(pixels, f)).latents
    assert seen == [3]  # white, red and the random cell
    torch.testing.assert_close(latents, _from_cells(every_cell, 2, 4, 6), rtol=1e-5, atol=1e-6)
    # training (autograd on) encodes every cell, as before this sharing existed
    hook = vq.encoder.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    trained = vq.encode(pixels).latents
    hook.remove()
    assert seen == [3, 48] and trained.requires_grad and torch.equal(trained.detach(), _from_cells(every_cell, 2, 4, 6))


@pytest.mark.parametrize("lookup", [False, True])
def test_cell_decoder_draws_each_code_alone(tmp_path, lookup):
    """With `cell_decoder`, a code draws the same f x f pixels wherever it stands: changing one code changes
    its cell only (a plain decoder's neighbours change too), and the grid's pixels are the cells decoded one
    by one. Works for codebook lookups by index (`lookup_from_codebook`) too; the flag survives saving."""
    vq = _small_vq(True, cell_decoder=True, lookup_from_codebook=lookup)
    plain = _small_vq(True, lookup_from_codebook=lookup)
    f = vq_downsample_factor(vq)
    codes = torch.randint(0, 64, (1, 3, 4), generator=torch.Generator().manual_seed(5))
    changed = codes.clone()
    changed[0, 1, 2] = (codes[0, 1, 2] + 1) % 64
    with torch.no_grad():
        a, b = vq_decode_codes(vq, codes), vq_decode_codes(vq, changed)
        pa, pb = vq_decode_codes(plain, codes), vq_decode_codes(plain, changed)
        alone = vq_decode_codes(vq, codes[:, 1:2, 2:3])
    assert a.shape == pa.shape == (1, 3, 3 * f, 4 * f)
    cell_changed = (a != b).any(1)[0].reshape(3, f, 4, f).any(3).any(1)  # (rows, cols): which cells differ
    assert cell_changed[1, 2] and cell_changed.sum() == 1
    assert (pa != pb).any(1)[0].reshape(3, f, 4, f).any(3).any(1).sum() > 1
    torch.testing.assert_close(a[..., f : 2 * f, 2 * f : 3 * f], alone)
    vq.save_pretrained(tmp_path / "vq")
    reloaded = ChameleonVQModel.from_pretrained(tmp_path / "vq").eval()
    assert reloaded.config.cell_decoder is True
    with torch.no_grad():
        assert torch.equal(vq_decode_codes(reloaded, codes), a)
    with pytest.raises(ValueError, match="spatial"):
        ChameleonVQModel(cell_decoder=True, norm_type="spatial")
