"""LuminaImageProcessor: Lumina-mGPT's resolution buckets, bucket choice, resize/crop, pixel scaling,
input types and their errors, postprocess, check_size."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_lumina_mgpt.image_processor import (
    LuminaImageProcessor,
    choose_bucket,
    kept_fraction,
    load_image,
    resize_and_crop,
    resolution_buckets,
)


def _rand_uint8(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _meta_scale(x: np.ndarray) -> np.ndarray:
    """Meta's Chameleon tokenizer input: x / 255 * 2 - 1 in float64, then float32, (3, H, W)."""
    return (x / 255.0 * 2 - 1).astype(np.float32).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def proc() -> LuminaImageProcessor:
    return LuminaImageProcessor(target_size=512)


# ---------------------------------------------------------------------------- buckets
@pytest.mark.parametrize(
    "target,count,first,middle,last",
    [
        (512, 49, (1024, 256), (512, 512), (256, 1024)),
        (768, 73, (1536, 384), (768, 768), (384, 1536)),
        (1024, 97, (2048, 512), (1024, 1024), (512, 2048)),
    ],
)
def test_bucket_counts_and_examples(target, count, first, middle, last):
    b = resolution_buckets(target)
    assert len(b) == count == len(set(b))
    assert b[0] == first and b[-1] == last and b[count // 2] == middle
    for w, h in b:
        assert w % 32 == 0 and h % 32 == 0 and w * h <= target**2 and max(w, h) / min(w, h) <= 4


def test_buckets_are_lumina_staircase():
    # independent description: for each width wp (in grids) every hp with floor(N/(wp+1)) <= hp <= floor(N/wp)
    for target in (256, 512, 768):
        n = (target // 32) ** 2
        want = {
            (w * 32, h * 32)
            for w in range(1, n + 1)
            for h in range(max(1, n // (w + 1)), n // w + 1)
            if max(w, h) / min(w, h) <= 4
        }
        assert set(resolution_buckets(target)) == want


def test_patch_size_16_for_downsample_8():
    p = LuminaImageProcessor(target_size=256, patch_size=16, downsample_factor=8)
    assert p.buckets == resolution_buckets(256, 16) and len(p.buckets) == 49
    assert p.latents_per_grid == 2 and p.check_size(48, 64) == (6, 8)
    with pytest.raises(ValueError, match="multiple of downsample_factor"):
        LuminaImageProcessor(patch_size=24, downsample_factor=16)
    with pytest.raises(ValueError, match="at least one patch"):
        resolution_buckets(16)


def test_choose_bucket_keeps_largest_fraction(proc):
    for w, h in [(1000, 300), (300, 1000), (640, 480), (500, 500), (4000, 100), (333, 777)]:
        best = max(kept_fraction(w, h, b) for b in proc.buckets)
        chosen = choose_bucket(w, h, proc.buckets)
        assert math.isclose(kept_fraction(w, h, chosen), best)
    assert choose_bucket(500, 500, proc.buckets) == (512, 512)
    assert choose_bucket(4000, 100, proc.buckets) == (1024, 256)  # clamps to the widest
    assert proc.choose_size(PIL.Image.new("RGB", (1000, 250))) == (256, 1024)  # (height, width)
    # ties go to the larger (w, h), as Lumina's descending sort of (fraction, size)
    assert choose_bucket(100, 100, [(32, 64), (64, 32)]) == (64, 32)
    # top_k > 1 draws among the best k with the generator
    picks = {choose_bucket(640, 480, proc.buckets, top_k=3, generator=torch.Generator().manual_seed(s))
             for s in range(20)}
    ranked = sorted(proc.buckets, key=lambda b: (kept_fraction(640, 480, b), b), reverse=True)[:3]
    assert picks <= set(ranked) and len(picks) > 1
    with pytest.raises(ValueError, match="zero size"):
        choose_bucket(0, 10, proc.buckets)


# ---------------------------------------------------------------------------- preprocess
def test_exact_size_uint8_matches_meta_scaling(proc):
    x = _rand_uint8(256, 1024)
    out = proc.preprocess(PIL.Image.fromarray(x))
    assert out.shape == (1, 3, 256, 1024) and out.dtype == torch.float32
    assert np.array_equal(out[0].numpy(), _meta_scale(x))
    # every uint8 value: 0 -> -1, 255 -> 1, x / 127.5 - 1
    ramp = np.tile(np.arange(256, dtype=np.uint8), (512, 2))[:, :512, None].repeat(3, 2)
    got = proc.preprocess(ramp)[0].numpy()
    assert np.array_equal(got, _meta_scale(ramp)) and got.min() == -1 and got.max() == 1


def test_box_halving_is_exact_on_block_images(proc):
    x = _rand_uint8(512, 512, seed=1)
    big = x.repeat(4, axis=0).repeat(4, axis=1)  # 2048 x 2048, each pixel a 4x4 block
    out = proc.preprocess(big)
    assert np.array_equal(out[0].numpy(), _meta_scale(x))


def test_cover_resize_then_center_crop(proc):
    x = _rand_uint8(1000, 1100, seed=2)
    img = PIL.Image.fromarray(x)
    assert proc.choose_size(img) == (480, 544)  # keeps 0.97 of it; 512 x 512 would keep 0.91
    # no halving (1000 < 1024); cover 512x512: scale 0.512 -> 563 x 512; centre offset round(51 / 2) = 26
    ref = img.resize((563, 512), resample=PIL.Image.BICUBIC).crop((26, 0, 538, 512))
    out = proc.preprocess(img, height=512, width=512)
    assert np.array_equal(out[0].numpy(), _meta_scale(np.asarray(ref)))
    # 2100 px is halved with BOX while >= 1024: 2100 -> 1050 -> 525, then BICUBIC to 512
    y = PIL.Image.fromarray(_rand_uint8(2100, 2100, seed=3))
    ref = y.resize((1050, 1050), resample=PIL.Image.BOX).resize((525, 525), resample=PIL.Image.BOX)
    ref = ref.resize((512, 512), resample=PIL.Image.BICUBIC)
    assert np.array_equal(proc.preprocess(y)[0].numpy(), _meta_scale(np.asarray(ref)))
    # 2000 px is halved once (1000 < 1024), then BICUBIC to 512
    z = PIL.Image.fromarray(_rand_uint8(2000, 2000, seed=6))
    ref = z.resize((1000, 1000), resample=PIL.Image.BOX).resize((512, 512), resample=PIL.Image.BICUBIC)
    assert np.array_equal(proc.preprocess(z)[0].numpy(), _meta_scale(np.asarray(ref)))


def test_random_crop_uses_generator():
    img = PIL.Image.fromarray(_rand_uint8(300, 700, seed=4))
    covered = np.asarray(img.resize((round(700 * 256 / 300), 256), resample=PIL.Image.BICUBIC))

    def crop(seed: int) -> np.ndarray:
        return np.asarray(resize_and_crop(img, (256, 256), "random", torch.Generator().manual_seed(seed)))

    assert np.array_equal(crop(0), crop(0))
    offsets = set()
    for seed in range(8):
        c = crop(seed)
        hits = [left for left in range(covered.shape[1] - 255) if np.array_equal(covered[:, left:left + 256], c)]
        assert hits, "a random crop must be a window of the covered image"
        offsets.add(hits[0])
    assert len(offsets) > 1
    with pytest.raises(ValueError, match="crop must be"):
        resize_and_crop(img, (256, 256), "middle")


def test_transparency_composited_onto_white(proc):
    rgba = np.zeros((512, 512, 4), dtype=np.uint8)  # black, fully transparent
    assert (proc.preprocess(PIL.Image.fromarray(rgba, "RGBA")) == 1.0).all()
    rgba[..., :3], rgba[..., 3] = 50, 100  # (1 - 100/255) * 255 + 100/255 * 50 = 174.6 -> 174 (truncated)
    out = proc.preprocess(rgba)
    assert torch.equal(out, torch.full_like(out, np.float32(174 / 127.5 - 1)))
    la = PIL.Image.fromarray(rgba[..., [0, 3]], "LA")
    assert torch.equal(proc.preprocess(la), out)
    pal = PIL.Image.new("P", (512, 512), 0)
    pal.putpalette([10, 20, 30] * 256)
    pal.info["transparency"] = 0
    assert (proc.preprocess(pal) == 1.0).all()
    opaque = np.zeros_like(rgba)
    opaque[..., 3] = 255
    assert (proc.preprocess(opaque) == -1.0).all()


def test_input_types_agree(proc, tmp_path):
    x = _rand_uint8(512, 512, seed=5)
    ref = proc.preprocess(PIL.Image.fromarray(x))
    path = tmp_path / "img.png"
    PIL.Image.fromarray(x).save(path)
    assert torch.equal(proc.preprocess(str(path)), ref)
    assert torch.equal(proc.preprocess(path), ref)
    assert torch.equal(proc.preprocess(x), ref)
    assert torch.equal(proc.preprocess(torch.from_numpy(x).permute(2, 0, 1)), ref)  # uint8 CHW
    unit = torch.from_numpy(x).permute(2, 0, 1).float() / 255  # float CHW in [0, 1]
    assert torch.allclose(proc.preprocess(unit), ref, atol=1e-6)
    assert torch.allclose(proc.preprocess(unit * 2 - 1, value_range=(-1, 1)), ref, atol=1e-6)
    assert torch.allclose(proc.preprocess(x / 255.0), ref, atol=1e-6)
    gray = x[..., 0]
    assert torch.equal(proc.preprocess(gray), proc.preprocess(np.stack([gray] * 3, -1)))
    batch = proc.preprocess(torch.stack([unit, unit.flip(-1)]))
    assert batch.shape == (2, 3, 512, 512) and torch.allclose(batch[1], ref[0].flip(-1), atol=1e-6)
    assert proc.preprocess([x, x]).shape == (2, 3, 512, 512)


def test_float_input_at_size_keeps_precision(proc):
    t = torch.rand(3, 256, 1024, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = proc.preprocess(t)
    assert torch.allclose(out[0].double(), t * 2 - 1, atol=1e-6)
    # not the same size: goes through PIL as uint8 (rounded), then resized
    out = proc.preprocess(t, height=128, width=512)
    assert out.shape == (1, 3, 128, 512)


def test_explicit_size_and_rescale_factor():
    p = LuminaImageProcessor(rescale_factor=0.0078)  # Lumina's ChameleonImageProcessor inputs
    out = p.preprocess(np.full((64, 64, 3), 255, np.uint8), height=64, width=64)
    assert torch.allclose(out, torch.full_like(out, 255 * 0.0078 - 1))


def test_input_errors(proc, tmp_path):
    with pytest.raises(FileNotFoundError):
        proc.preprocess(tmp_path / "missing.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(ValueError, match="cannot read .* as an image"):
        proc.preprocess(corrupt)
    with pytest.raises(ValueError, match="zero size"):
        proc.preprocess(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="zero size"):
        proc.preprocess(PIL.Image.new("RGB", (0, 5)))
    with pytest.raises(ValueError, match="unsupported image type"):
        proc.preprocess(12)
    with pytest.raises(ValueError, match="C in 1, 3, 4"):
        proc.preprocess(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="uint8 or float"):
        proc.preprocess(np.zeros((8, 8, 3), np.int32))
    with pytest.raises(ValueError, match="value_range=\\(-1, 1\\)"):
        proc.preprocess(torch.full((3, 8, 8), -0.5))
    with pytest.raises(ValueError, match="NaN"):
        proc.preprocess(np.full((8, 8, 3), np.nan))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        load_image(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="different sizes"):
        proc.preprocess([np.zeros((512, 512, 3), np.uint8), np.zeros((256, 1024, 3), np.uint8)])
    with pytest.raises(ValueError, match="both height and width"):
        proc.preprocess(np.zeros((8, 8, 3), np.uint8), height=64)
    with pytest.raises(ValueError, match="multiples of 32"):
        proc.preprocess(np.zeros((8, 8, 3), np.uint8), height=60, width=64)
    with pytest.raises(ValueError, match="no images"):
        proc.preprocess([])


# ---------------------------------------------------------------------------- postprocess
def test_postprocess_outputs(proc):
    x = torch.rand(2, 3, 32, 64, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2  # beyond [-1, 1]
    pt = proc.postprocess(x, "pt")
    assert pt.shape == (2, 3, 32, 64) and pt.min() >= 0 and pt.max() <= 1
    npy = proc.postprocess(x, "np")
    assert npy.shape == (2, 32, 64, 3) and npy.dtype == np.float32
    pil = proc.postprocess(x, "pil")
    assert len(pil) == 2 and pil[0].size == (64, 32) and pil[0].mode == "RGB"
    # Chameleon / Lumina-mGPT conversion: floor((clamp(x) + 1) / 2 * 255) in float32
    want = ((np.clip(x.numpy(), -1, 1) + 1) / 2).transpose(0, 2, 3, 1) * np.float32(255)
    assert np.array_equal(np.asarray(pil[1]), want[1].astype(np.uint8))
    assert len(proc.postprocess(x[0])) == 1
    with pytest.raises(ValueError, match="output_type"):
        proc.postprocess(x, "latent")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        proc.postprocess(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="torch tensor"):
        proc.postprocess(np.zeros((3, 8, 8)))


# ---------------------------------------------------------------------------- check_size
def test_check_size(proc):
    assert proc.check_size(512, 512) == (32, 32)
    assert proc.check_size(1024, 1024, max_positions=4164) == (64, 64)
    assert proc.latent_size(64, 128) == (4, 8)
    with pytest.raises(ValueError, match="multiples of 32") as err:
        proc.check_size(500, 512)
    assert "512x512" in str(err.value) and "480x512" in str(err.value)
    with pytest.raises(ValueError, match="needs 4164 positions but the model has 4096") as err:
        proc.check_size(1024, 1024, max_positions=4096)
    sizes = [tuple(map(int, s.split("x"))) for s in str(err.value).split("sizes (height x width): ")[1].split(", ")]
    assert sizes[0] in ((992, 1024), (1024, 992))
    for h, w in sizes:  # every suggestion is itself valid
        assert proc.check_size(h, w, max_positions=4096) == (h // 16, w // 16)
    with pytest.raises(ValueError, match=r"prompt \(100\)"):
        proc.check_size(1024, 992, max_positions=4096, prompt_length=100)
    with pytest.raises(ValueError, match="exceeds the vocabulary's 10 grid tokens") as err:
        proc.check_size(352, 64, max_grid=10)
    assert "320x64" in str(err.value)
    with pytest.raises(ValueError, match="integers"):
        proc.check_size(512.0, 512)
    with pytest.raises(ValueError, match="none"):
        proc.check_size(64, 64, max_positions=9)


def test_config_round_trip(tmp_path):
    p = LuminaImageProcessor(target_size=768, patch_size=16, downsample_factor=8, rescale_factor=0.0078)
    p.save_config(tmp_path)
    q = LuminaImageProcessor.from_config(LuminaImageProcessor.load_config(tmp_path))
    assert q.config.target_size == 768 and q.config.rescale_factor == 0.0078 and q.buckets == p.buckets
