"""`lumina-mgpt train-vq`: train a small VQ image tokenizer (a `ChameleonVQModel`, i.e. a diffusers
`VQModel` with PixelNorm; load it with `ChameleonVQModel.from_pretrained`), e.g. for ShapesWorld.

Losses: reconstruction (L1 + MSE on pixels in [-1, 1]), codebook (|sg(z) - e|^2) and commitment
(beta |z - sg(e)|^2) with a straight-through estimator; the codebook starts on encoder outputs of a
first batch, and codes unused for `restart_every` steps are restarted on random encoder outputs of the
current batch (dead-code restart). Training crops are
`crop` x `crop` squares from a fixed pool of images (ShapesWorld renders of every kind the Omni tasks
need: scenes, degraded scenes, segmentation and depth maps, at native and reduced resolution, or
an image folder). Checkpoints, resume and metrics.jsonl follow the same rules as `train`
(see checkpoints.py), in one process (a VQ of this size trains in minutes on a CPU); a checkpoint records
the model settings, and resuming with other ones is refused. The result is `DIR/vqvae/`, a
`ChameleonVQModel` folder the pipelines load as `vqvae`,
and `DIR/vq_eval.json` with held-out reconstruction PSNR and codebook usage.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..file_modes import umask_modes
from .checkpoints import MetricsLog, latest_checkpoint, load_plain_state, read_state, save_checkpoint, save_plain_state
from .config import load_config, positive, resolve_path
from .precision import resolve_mixed_precision

VQ_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "data": {"shapes": 4000, "folder": None, "eval_images": 200, "downscale": [1.0, 0.75, 0.5],
             "kinds": {"scene": 2, "degraded": 1, "segmentation": 1, "depth": 1}},
    "model": {
        "block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "latent_channels": 16,
        "num_vq_embeddings": 1024, "vq_embed_dim": 8, "norm_num_groups": 8, "pixel_norm": True,
        # encode each cell of the code grid on its own: a code is a function of its cell's pixels alone
        "cell_encoder": False,
        "cell_decoder": False,
    },
    "train": {
        "steps": 3000, "batch_size": 48, "crop": 32, "lr": 2e-3, "warmup": 100, "beta": 0.25,
        "restart_every": 100, "checkpoint_every": 500, "keep_checkpoints": 2, "threads": None,
        "mse_weight": 1.0,
        # "no" (fp32), "bf16" or "auto" (bf16 where the hardware has it natively): the encoder and decoder run
        # in autocast; code search, the codebook and every loss stay float32
        "mixed_precision": "no",
        # crop corners on multiples of this (1 = anywhere): a world whose objects sit on a grid the
        # tokenizer's cells divide (ShapesWorld's 8 px) then shows the encoder only the phases it will encode
        "crop_grid": 1,
    },
}


def vq_model_from_config(model: dict[str, Any]):
    """A `ChameleonVQModel` (a diffusers `VQModel`) from the recipe's `model` section. With `pixel_norm`
    (the default) a code depends only on the pixels in its receptive field (see `ChameleonVQModel`)."""
    from ..vq import ChameleonVQModel

    levels = len(model["block_out_channels"])
    return ChameleonVQModel(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=tuple(model["block_out_channels"]),
        layers_per_block=model["layers_per_block"], latent_channels=model["latent_channels"],
        num_vq_embeddings=model["num_vq_embeddings"], vq_embed_dim=model["vq_embed_dim"],
        norm_num_groups=model["norm_num_groups"], mid_block_add_attention=False, scaling_factor=1.0, lookup_from_codebook=False,
        pixel_norm=bool(model.get("pixel_norm", VQ_DEFAULTS["model"]["pixel_norm"])),
        cell_encoder=bool(model.get("cell_encoder", VQ_DEFAULTS["model"]["cell_encoder"])),
        cell_decoder=bool(model.get("cell_decoder", VQ_DEFAULTS["model"]["cell_decoder"])),
    )


# ----------------------------------------------------------------------------- data
def shapes_images(n: int, seed: int, downscale: list[float], kinds: dict[str, float] | None = None) -> list[Image.Image]:
    """`n` ShapesWorld images of the kinds the tasks produce (`kinds`: relative weights of scene,
    degraded, segmentation and depth images), some reduced in size (as FP-SFT's low resolution
    stages see them), deterministic in `seed`."""
    from ..shapes.render import DEGRADATIONS, degrade, render_depth, render_scene, render_segmentation
    from ..shapes.scene import sample_scene

    kinds = kinds or {"scene": 1.0}
    unknown = set(kinds) - {"scene", "degraded", "segmentation", "depth"}
    if unknown:
        raise ValueError(f"data.kinds has unknown kinds {sorted(unknown)}; use scene, degraded, segmentation, depth")
    names = [k for k, w in kinds.items() if w > 0]
    weights = np.array([kinds[k] for k in names], dtype=np.float64)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng, split="all")
        kind = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        if kind == "scene":
            image = render_scene(scene)
        elif kind == "degraded":
            image = degrade(render_scene(scene), rng, DEGRADATIONS[int(rng.integers(len(DEGRADATIONS)))])
        elif kind == "segmentation":
            image = render_segmentation(scene)
        else:
            image = render_depth(scene)
        factor = float(downscale[int(rng.integers(len(downscale)))])
        if factor != 1.0:
            w, h = (max(16, int(round(s * factor / 8)) * 8) for s in image.size)
            image = image.resize((w, h), Image.BICUBIC)
        out.append(image.convert("RGB"))
    return out


def folder_images(folder: str, crop: int) -> list[Image.Image]:
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    images = []
    for p in paths:
        try:
            im = Image.open(p).convert("RGB")
        except OSError:
            continue
        if min(im.size) >= crop:
            images.append(im)
    if not images:
        raise ValueError(f"{folder} holds no readable image of at least {crop}x{crop} pixels")
    return images


def to_pixels(image: Image.Image) -> torch.Tensor:  # (3, H, W) in [-1, 1]
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def random_crops(pool: list[torch.Tensor], batch: int, crop: int, rng: np.random.Generator,
                 grid: int = 1) -> torch.Tensor:
    """`batch` random `crop` x `crop` squares of the pool's images, corners on multiples of `grid`."""
    out = []
    for k in rng.integers(len(pool), size=batch):
        im = pool[int(k)]
        y = grid * int(rng.integers((im.shape[1] - crop) // grid + 1))
        x = grid * int(rng.integers((im.shape[2] - crop) // grid + 1))
        out.append(im[:, y:y + crop, x:x + crop])
    return torch.stack(out)


# ----------------------------------------------------------------------------- model pieces
def quantize(vqvae, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest codes (B, h, w) and the straight-through quantised latents (B, D, h, w)."""
    from ..vq import vq_nearest_codes

    codebook = vqvae.quantize.embedding.weight
    codes = vq_nearest_codes(codebook.detach(), latents.detach())
    quant = F.embedding(codes, codebook).permute(0, 3, 1, 2)
    return codes, quant


def vq_losses(vqvae, pixels: torch.Tensor, beta: float, mse_weight: float = 1.0,
              autocast_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]:
    """The training loss and its parts, the codes and the latents of `pixels`. With `autocast_dtype`
    (e.g. torch.bfloat16) the encoder and decoder run in autocast; the latents come out as float32, and
    the nearest-code search, the codebook and the losses stay float32."""
    autocast = torch.autocast(pixels.device.type, autocast_dtype, enabled=autocast_dtype is not None)
    with autocast:
        latents = vqvae.encode(pixels).latents.float()
    codes, quant = quantize(vqvae, latents)
    codebook_loss = F.mse_loss(quant, latents.detach())
    commit_loss = F.mse_loss(latents, quant.detach())
    straight = latents + (quant - latents).detach()
    with autocast:
        recon = vqvae.decode(straight, force_not_quantize=True).sample.float()
    rec_loss = F.l1_loss(recon, pixels) + mse_weight * F.mse_loss(recon, pixels)
    loss = rec_loss + codebook_loss + beta * commit_loss
    parts = {"recon": float(rec_loss.detach()), "codebook": float(codebook_loss.detach()), "commit": float(commit_loss.detach())}
    return loss, parts, codes, latents


@torch.no_grad()
def restart_dead_codes(vqvae, usage: torch.Tensor, latents: torch.Tensor) -> int:
    """Move codes with zero `usage` onto random encoder outputs of the batch; returns how many moved."""
    dead = (usage == 0).nonzero().flatten()
    if dead.numel() == 0:
        return 0
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    pick = torch.randint(flat.shape[0], (dead.numel(),))
    noise = 0.01 * torch.randn(dead.numel(), flat.shape[1]) * flat.std()
    vqvae.quantize.embedding.weight.data[dead] = flat[pick] + noise
    return int(dead.numel())


@torch.no_grad()
def round_trip(vqvae, image: Image.Image) -> tuple[torch.Tensor, torch.LongTensor, torch.Tensor]:
    """(pixels, codes, reconstruction) of `image` cropped to a multiple of the downsample factor;
    pixels and reconstruction (1, 3, H, W) in [-1, 1], codes (1, h, w)."""
    from ..vq import vq_decode_codes, vq_downsample_factor, vq_encode_codes

    f = vq_downsample_factor(vqvae)
    w, h = image.size[0] // f * f, image.size[1] // f * f
    pixels = to_pixels(image.crop((0, 0, w, h)))[None]
    codes = vq_encode_codes(vqvae, pixels)
    return pixels, codes, vq_decode_codes(vqvae, codes).clamp(-1, 1)


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:  # [-1, 1] -> rounded 0..255 values, same shape
    return ((pixels + 1) * 127.5).round()


@torch.no_grad()
def evaluate_vq(vqvae, images: list[Image.Image]) -> dict[str, float]:
    """Held-out reconstruction PSNR (dB, on uint8 pixels) and codebook usage over `images`."""
    from ..vq import vq_num_codes

    counts = torch.zeros(vq_num_codes(vqvae))
    psnrs = []
    flat: dict[tuple[int, ...], list[int]] = {}
    for im in images:
        pixels, codes, recon = round_trip(vqvae, im)
        original = to_uint8(pixels)
        counts += torch.bincount(codes.flatten(), minlength=counts.numel()).float()
        mse = float(((original - to_uint8(recon)) ** 2).mean())
        psnrs.append(10 * math.log10(255.0**2 / max(mse, 1e-10)))
        for colour, code in flat_patch_codes(original[0], codes[0]):
            flat.setdefault(colour, []).append(code)
    p = counts / counts.sum()
    perplexity = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    return {"psnr": float(np.mean(psnrs)), "perplexity": perplexity, "codes_used": int((counts > 0).sum()),
            "codebook_size": int(counts.numel()), "images": len(images),
            "flat_code_entropy": flat_code_entropy(flat)}


def flat_patch_codes(pixels: torch.Tensor, codes: torch.Tensor, radius: int = 2) -> list[tuple[tuple[int, ...], int]]:
    """(colour, code) of every code whose patch and the patches up to `radius` away are one flat colour,
    all inside the image (codes next to a border differ by position, which is context, not noise);
    `pixels` (3, H, W) uint8 values, `codes` (h, w)."""
    f = pixels.shape[-1] // codes.shape[-1]
    out = []
    for i in range(radius, codes.shape[0] - radius):
        for j in range(radius, codes.shape[1] - radius):
            window = pixels[:, (i - radius) * f:(i + radius + 1) * f, (j - radius) * f:(j + radius + 1) * f].reshape(3, -1)
            if bool((window == window[:, :1]).all()):
                out.append((tuple(int(v) for v in window[:, 0]), int(codes[i, j])))
    return out


def flat_code_entropy(groups: dict[tuple[int, ...], list[int]]) -> float | None:
    """Mean entropy (nats) of the codes given to patches of one flat colour, weighted by patch count.

    A tokenizer whose codes depend only on local content gives every patch of one flat colour the same
    code (0 nats, away from image borders); GroupNorm's image-wide statistics scatter them over many codes
    that an autoregressive model must then guess. None when no patch qualifies."""
    total, weighted = 0, 0.0
    for codes in groups.values():
        _, n = np.unique(np.asarray(codes), return_counts=True)
        p = n / n.sum()
        weighted += float(-(p * np.log(p)).sum()) * n.sum()
        total += int(n.sum())
    return weighted / total if total else None  # no flat patch in the images


def shapes_round_trip(vqvae, n: int, seed: int = 5) -> dict[str, Any]:
    """Share of ShapesWorld records whose ground-truth images still pass the scorer after a VQ round
    trip: the ceiling of any model that draws with this tokenizer. `families` gives that ceiling for
    each text-to-image family as `eval shapes --seed SEED` scores it: its first `n // 2` prompts per family,
    each prompt's ground-truth render at 64x64 through the tokenizer."""
    from ..shapes.evaluate import evaluate_prompts, ground_truth_generator, make_prompt_items
    from ..shapes.tasks import make_records

    def decoded(image: Image.Image) -> Image.Image:
        recon = to_uint8(round_trip(vqvae, image)[2])[0]
        return Image.fromarray(recon.permute(1, 2, 0).numpy().astype(np.uint8))

    out: dict[str, Any] = {}
    for task in ("t2i", "segmentation", "depth"):
        records = make_records(task, n, seed=seed)
        passed = [all(s.passed for s in r.score([o if isinstance(o, str) else decoded(o)
                                                 for o in r.ground_truth_outputs()])) for r in records]
        out[task] = float(np.mean(passed))
    render = ground_truth_generator((64, 64))
    items = make_prompt_items(None, max(1, n // 2), seed, heldout=False)
    out["families"] = evaluate_prompts(lambda batch: [decoded(im) for im in render(batch)], items,
                                       progress=False)["families"]
    return out


# ----------------------------------------------------------------------------- training
def train_vq(config: dict[str, Any], output_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a VQ tokenizer into `output_dir`; returns the held-out evaluation."""
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    out = Path(output_dir)
    tr = config["train"]
    positive(config, "train.steps", "train.batch_size", "train.crop", "train.lr", "train.checkpoint_every",
             "train.crop_grid")
    if tr["mixed_precision"] not in ("no", "bf16", "auto"):
        raise ValueError("train.mixed_precision of train-vq must be 'no' (fp32), bf16 or auto (bf16 where the CPU or "
                         "GPU multiplies it natively; write 'no' in quotes: YAML reads a bare no as false), got "
                         f"{tr['mixed_precision']!r}")
    autocast_dtype = torch.bfloat16 if resolve_mixed_precision(tr["mixed_precision"], cuda=False) == "bf16" else None
    if config["train"]["threads"]:
        torch.set_num_threads(int(config["train"]["threads"]))
    final = out / "vqvae"
    if (final / "config.json").is_file() and (out / "vq_eval.json").is_file():
        return json.loads((out / "vq_eval.json").read_text())  # already trained: nothing to redo
    set_seed(config["seed"])
    vqvae = vq_model_from_config(config["model"])
    data = config["data"]
    crop, grid = int(tr["crop"]), int(tr["crop_grid"])
    if data["folder"]:
        pool_images = folder_images(resolve_path(config, data["folder"]), crop)
        eval_images = pool_images[-data["eval_images"]:]
        pool_images = pool_images[:-data["eval_images"]] or pool_images
    else:
        pool_images = shapes_images(int(data["shapes"]), config["seed"], data["downscale"], data["kinds"])
        eval_images = shapes_images(int(data["eval_images"]), config["seed"] + 10_000, data["downscale"], data["kinds"])
    pool = [to_pixels(im) for im in pool_images if min(im.size) >= crop]
    if not pool:
        raise ValueError(f"no training image is at least {crop}x{crop}; lower train.crop")
    optimizer = torch.optim.AdamW(vqvae.parameters(), lr=tr["lr"], betas=(0.9, 0.99), weight_decay=0.0)
    steps, warmup = int(tr["steps"]), int(tr["warmup"])
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup)) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    usage = torch.zeros(int(config["model"]["num_vq_embeddings"]))
    start = 0
    resume = latest_checkpoint(out)
    if resume is not None:
        state = read_state(resume)
        saved_model = state.get("model", {**config["model"], "pixel_norm": False})  # older checkpoints: GroupNorm
        if saved_model != config["model"]:
            changed = sorted(k for k in {*saved_model, *config["model"]} if saved_model.get(k) != config["model"].get(k))
            raise ValueError(f"{resume} was trained with other model settings ({', '.join(changed)}: "
                             f"{ {k: saved_model.get(k) for k in changed} }); resume with those settings "
                             "(e.g. --set model.pixel_norm=false) or use a new --output-dir")
        load_plain_state(resume, vqvae, optimizer, schedule)
        start = int(state["step"])
        usage = torch.tensor(state["usage"])
    else:  # data-dependent codebook init: every code starts on an encoder output of a first batch
        with torch.no_grad():
            first = random_crops(pool, max(int(tr["batch_size"]), 64), crop,
                                 np.random.default_rng([config["seed"], 2**31 - 1]), grid)
            restart_dead_codes(vqvae, torch.zeros_like(usage), vqvae.encode(first).latents)
    metrics = MetricsLog(out / "metrics.jsonl", resume_step=start, enabled=True)
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="train-vq", disable=not progress)
    for step in bar:
        t0 = time.perf_counter()
        rng = np.random.default_rng([config["seed"], step])  # batch = f(seed, step): resume-exact
        pixels = random_crops(pool, int(tr["batch_size"]), crop, rng, grid)
        loss, parts, codes, latents = vq_losses(vqvae, pixels, tr["beta"], float(tr["mse_weight"]), autocast_dtype)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        usage += torch.bincount(codes.flatten().cpu(), minlength=usage.numel()).float()
        restarted = 0
        if (step + 1) % int(tr["restart_every"]) == 0:
            if (step + 1) < 0.9 * steps:  # let the codebook settle at the end
                restarted = restart_dead_codes(vqvae, usage, latents.detach().cpu())
            usage.zero_()
        row = {"step": step + 1, "stage": "vq", "loss": float(loss.detach()), **parts, "lr": schedule.get_last_lr()[0],
               "restarted": restarted, "images_per_s": pixels.shape[0] / (time.perf_counter() - t0)}
        metrics.write(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", rec=f"{parts['recon']:.4f}")
        if (step + 1) % int(tr["checkpoint_every"]) == 0 or step + 1 == steps:
            save_checkpoint(out, step + 1, {"stage": "vq", "usage": usage.tolist(), "model": config["model"]},
                            lambda tmp: save_plain_state(tmp, vqvae, optimizer, schedule), keep=int(tr["keep_checkpoints"]))
    model = vqvae.eval()
    report = evaluate_vq(model, eval_images)
    if not data["folder"] and data["eval_images"] >= 50:
        report["shapes_round_trip_pass"] = shapes_round_trip(model, int(data["eval_images"]))
    model.save_pretrained(str(final))
    umask_modes(final)
    (out / "vq_eval.json").write_text(json.dumps(report, indent=1))
    return report


def load_vq_config(path: str | Path | None, overrides: list[str] = ()) -> dict[str, Any]:
    return load_config(path, VQ_DEFAULTS, overrides)


__all__ = ["VQ_DEFAULTS", "evaluate_vq", "load_vq_config", "shapes_images", "train_vq", "vq_model_from_config"]
