"""`lumina-mgpt train-diffusion`: a small pixel-space text-to-image diffusion baseline.

It trains on the same text-to-image records as the autoregressive recipes (`shapes:t2i`, captioned image
folders, Lumina-mGPT `.jsonl` records; see records.py) and writes stock diffusers components only:
- `UNet2DConditionModel` in pixel space (no VAE: ShapesWorld images are at most 128 px), trained with a
  `DDPMScheduler` cosine noise schedule and v-prediction (epsilon is an option, but near the schedule's
  end, where alpha_bar is about 2e-9, its image estimate is its noise error times 2e4, which few-step
  samplers do not recover from), on mixed sizes: every batch holds images of one aspect bucket
  (`data.buckets`), so the convolutional UNet learns 64x64, 80x48, 128x32, ... alike;
- a `T5EncoderModel` text encoder trained jointly from scratch, with a word-level tokenizer
  (`tokenizers` WordLevel in a transformers `PreTrainedTokenizerFast`) whose vocabulary is every word of
  the training captions (ShapesWorld text is a closed vocabulary), lower-cased like the pipeline does;
- the finished `DIR/pipeline` is a diffusers `IFPipeline` folder (DeepFloyd IF's pixel-space stage-1
  pipeline: prompt, height, width, classifier-free guidance, no VAE), loadable with
  `DiffusionPipeline.from_pretrained` and no custom code, sampling with `DPMSolverMultistepScheduler`.
  IFPipeline splits the UNet output into [prediction, variance] halves, so the UNet has 6 output channels;
  the scheduler's variance is fixed (`fixed_small`), the loss uses the first 3 and the last 3 are unused.
Captions are dropped (replaced by "", the pipeline's unconditional prompt) with `train.caption_dropout`.
Batches, noise, timesteps and dropout are functions of (seed, step), and checkpoints hold model, EMA,
optimiser, LR schedule and RNGs, so a resumed run repeats an uninterrupted one exactly (checkpoints.py
layout: DIR/checkpoints/step-N, DIR/metrics.jsonl). `DIR/compute.json` records the training compute.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints import (
    MetricsLog, latest_checkpoint, load_plain_state, read_state, save_checkpoint, save_pipeline, save_plain_state,
)
from .config import load_config, positive, resolve_path
from .precision import resolve_mixed_precision

MAX_TEXT_LENGTH = 77  # IFPipeline pads every prompt to 77 tokens; training does the same
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 (T5's order)
EXPORT_DTYPES = ("float32", "float16", "bfloat16")

DIFFUSION_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "data": {
        "sources": [{"source": "shapes:t2i", "n": 20000}],  # [{source, n?, seed?}] text-to-image records
        "buckets": None,  # [[w, h], ...] training sizes (default: ShapesWorld's seven aspect buckets)
        "chunk_size": 500,  # records per generated chunk (shapes: sources depend on it, as in `train`)
    },
    "model": {
        # a pipeline folder written by train-diffusion (DIR/pipeline, or a shipped copy) whose UNet, text
        # encoder and tokenizer start this run instead of random weights (the other model keys must be the
        # ones it was trained with); a relative path is read from the config file's folder
        "pretrained": None,
        "sample_size": 64, "block_out_channels": [32, 64, 128], "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        # diffusers' name: UNet2DConditionModel takes it as the number of attention heads
        "attention_head_dim": 4, "norm_num_groups": 8,
        # the pooled prompt joins the timestep embedding, so every ResNet block sees the text (as in DeepFloyd IF)
        "pooled_text": False,
        "text": {"hidden_size": 128, "num_layers": 3, "num_heads": 4, "ff_size": 512},
    },
    # snr_shift: divide the schedule's signal-to-noise ratio at every timestep by this (1 = the plain schedule);
    # flat-colour 64 px images stay legible under heavy noise, so only the noisiest steps need the caption
    # unless the schedule is shifted toward noise
    "diffusion": {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction",
                  "snr_shift": 1.0},
    "sampler": {"algorithm_type": "dpmsolver++", "solver_order": 2, "thresholding": True,
                "dynamic_thresholding_ratio": 0.995},
    # dtype of the exported UNet's weights: float16 halves the folder; diffusers loads it back as float32
    # unless torch_dtype says otherwise (training and checkpoints stay float32)
    "export": {"unet_dtype": "float32"},
    "train": {
        "steps": 1500, "batch_size": 16, "lr": 1e-3, "min_lr_ratio": 0.1, "warmup": 50, "weight_decay": 0.01,
        "betas": [0.9, 0.99], "grad_clip": 1.0, "caption_dropout": 0.1, "ema_decay": None, "mixed_precision": "no",
        "checkpoint_every": 250, "keep_checkpoints": 2, "threads": None,
    },
}


# ----------------------------------------------------------------------------- config
def load_diffusion_config(path: str | Path | None, overrides: list[str] = ()) -> dict[str, Any]:
    config = load_config(path, DIFFUSION_DEFAULTS, overrides)
    check_diffusion_config(config)
    return config


def downsample_factor(model: dict[str, Any]) -> int:
    return 2 ** (len(model["block_out_channels"]) - 1)


def check_diffusion_config(config: dict[str, Any]) -> None:
    positive(config, "train.steps", "train.batch_size", "train.lr", "train.checkpoint_every", "model.sample_size")
    tr, model = config["train"], config["model"]
    if not 0 <= tr["caption_dropout"] < 1:
        raise ValueError(f"train.caption_dropout must be in [0, 1), got {tr['caption_dropout']}")
    if tr["ema_decay"] is not None and not 0 < tr["ema_decay"] < 1:
        raise ValueError(f"train.ema_decay must be null (no EMA) or in (0, 1), e.g. 0.995; got {tr['ema_decay']}")
    if tr["mixed_precision"] not in ("no", "bf16", "auto"):
        raise ValueError("train.mixed_precision must be 'no', bf16 or auto (write 'no' in quotes: YAML reads a "
                         f"bare no as false), got {tr['mixed_precision']!r}")
    if not config["diffusion"]["snr_shift"] > 0:
        raise ValueError(f"diffusion.snr_shift must be positive (1 = no shift), got {config['diffusion']['snr_shift']}")
    if config["diffusion"]["prediction_type"] not in ("epsilon", "v_prediction"):
        raise ValueError(f"diffusion.prediction_type must be epsilon or v_prediction, "
                         f"got {config['diffusion']['prediction_type']!r}")
    if config["export"]["unet_dtype"] not in EXPORT_DTYPES:
        raise ValueError(f"export.unet_dtype must be one of {', '.join(EXPORT_DTYPES)}, "
                         f"got {config['export']['unet_dtype']!r}")
    levels = len(model["block_out_channels"])
    if not (len(model["down_block_types"]) == len(model["up_block_types"]) == levels):
        raise ValueError(f"model.down_block_types and model.up_block_types need one entry per block_out_channels "
                         f"entry ({levels})")
    sources = config["data"]["sources"]
    if not isinstance(sources, list) or not sources:
        raise ValueError("data.sources is empty; add at least one {source: shapes:t2i, n: 1000} entry")
    for i, d in enumerate(sources):
        if not isinstance(d, dict) or "source" not in d or set(d) - {"source", "n", "seed"}:
            raise ValueError(f"data.sources[{i}] must be a mapping with source and optional n, seed; got {d!r}")
    if model["pretrained"] is not None:
        init = Path(resolve_path(config, str(model["pretrained"])))
        if not (init / "unet").is_dir() or not (init / "text_encoder").is_dir() or not (init / "tokenizer").is_dir():
            raise ValueError(f"model.pretrained {init} is not a pipeline folder written by train-diffusion (it needs unet/, "
                             "text_encoder/ and tokenizer/; a relative path is read from the config file's folder): "
                             "train the first stage first, e.g. lumina-mgpt train-diffusion "
                             "examples/shapesworld/diffusion.yaml --output-dir runs/diffusion, then pass "
                             "--set model.pretrained=$PWD/runs/diffusion/pipeline")
    f = downsample_factor(model)
    for w, h in [(model["sample_size"],) * 2, *train_buckets(config)]:
        if w % f or h % f:
            raise ValueError(f"size {w}x{h} is not a multiple of {f} (the UNet halves it {levels - 1} times); "
                             f"use multiples of {f} in data.buckets and model.sample_size")


def train_buckets(config: dict[str, Any]) -> list[tuple[int, int]]:
    if config["data"]["buckets"]:
        buckets = [tuple(int(v) for v in b) for b in config["data"]["buckets"]]
        if any(len(b) != 2 or min(b) < 8 for b in buckets):
            raise ValueError(f"data.buckets must be [width, height] pairs of at least 8 px, got {config['data']['buckets']}")
        return buckets
    from ..shapes.scene import SIZE_BUCKETS

    return list(SIZE_BUCKETS)


# ----------------------------------------------------------------------------- data
T2I_PREFIX = re.compile(r"^Generate an image of \d+x\d+ according to the following prompt:\n")


def t2i_caption(rec) -> str | None:
    """The prompt of a one-turn text-to-image record (the AR template stripped), else None."""
    from ..vocab import IMAGE_PLACEHOLDER

    conv = rec.conversations
    if len(conv) != 2 or len(rec.images) != 1 or conv[1]["value"].strip() != IMAGE_PLACEHOLDER:
        return None
    text = T2I_PREFIX.sub("", conv[0]["value"]).strip()
    return text if text and IMAGE_PLACEHOLDER not in text else None


def load_t2i_data(config: dict[str, Any]) -> tuple[list[tuple[int, int]], list[torch.Tensor], list[list[str]], dict[str, int]]:
    """The training images grouped by bucket: (buckets, uint8 pixels (N, 3, h, w) per bucket, captions per
    bucket, skipped-record counts). Images not at a bucket size are cover-resized and centre-cropped to
    the bucket that keeps most of them (`image_processor.choose_bucket`)."""
    from ..image_processor import choose_bucket, resize_and_crop
    from .records import Skip, load_images, open_source

    buckets = train_buckets(config)
    pixels: list[list[np.ndarray]] = [[] for _ in buckets]
    captions: list[list[str]] = [[] for _ in buckets]
    skipped: dict[str, int] = {}
    for d in config["data"]["sources"]:
        spec = str(d["source"])
        spec = spec if spec.startswith("shapes:") else str(resolve_path(config, spec))
        src = open_source(spec, d.get("n"), int(d.get("seed", config["seed"])), int(config["data"]["chunk_size"]))
        for c in range(src.num_chunks):
            for rec in src.chunk(c):
                text = None if isinstance(rec, Skip) else t2i_caption(rec)
                images = None if text is None else load_images(rec)
                if isinstance(rec, Skip) or text is None or isinstance(images, Skip):
                    reason = rec.reason if isinstance(rec, Skip) else images.reason if isinstance(images, Skip) else "not_t2i"
                    skipped[reason] = skipped.get(reason, 0) + 1
                    continue
                image = images[0].convert("RGB")
                size = image.size if image.size in buckets else choose_bucket(image.width, image.height, buckets)
                if image.width * image.height * 4 < size[0] * size[1]:
                    skipped["small_image"] = skipped.get("small_image", 0) + 1
                    continue
                if image.size != size:
                    image = resize_and_crop(image, size)
                b = buckets.index(size)
                pixels[b].append(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())
                captions[b].append(text)
    tensors = [torch.from_numpy(np.stack(p)) if p else torch.zeros(0, 3, h, w, dtype=torch.uint8)
               for p, (w, h) in zip(pixels, buckets)]
    if not any(len(c) for c in captions):
        raise ValueError(f"data.sources gave no usable text-to-image record (skipped: {skipped}); use shapes:t2i, a "
                         "folder of images with .txt captions, or one-turn text-to-image .jsonl records")
    return buckets, tensors, captions, skipped


class BucketBatches:
    """Batch `step` is `batch_size` images of one bucket, a function of (seed, step): every epoch shuffles
    each bucket's images, cuts them into full batches and shuffles the batches of all buckets together."""

    def __init__(self, counts: list[int], batch_size: int, seed: int):
        self.counts, self.batch_size, self.seed = counts, batch_size, seed
        self.per_epoch = sum(c // batch_size for c in counts)
        if self.per_epoch == 0:
            raise ValueError(f"no size bucket holds train.batch_size={batch_size} images ({counts}); lower "
                             "train.batch_size or add data")
        self._epoch, self._plan = -1, []

    def __call__(self, step: int) -> tuple[int, np.ndarray]:
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            bs, plan = self.batch_size, []
            for b, c in enumerate(self.counts):
                perm = rng.permutation(c)
                plan += [(b, perm[k * bs:(k + 1) * bs]) for k in range(c // bs)]
            self._plan = [plan[i] for i in rng.permutation(len(plan))]
            self._epoch = epoch
        return self._plan[pos]


# ----------------------------------------------------------------------------- components
def build_tokenizer(texts: list[str]):
    """A word-level `PreTrainedTokenizerFast` over every word of `texts` (lower-cased, words and punctuation
    split on whitespace), T5's special ids (pad 0, eos 1, unk 2), `</s>` appended, 77 tokens at most."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.Strip()])
    splitter = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(t))})
    vocab = {name: i for i, name in enumerate(SPECIAL_TOKENS)}
    vocab.update({w: len(SPECIAL_TOKENS) + i for i, w in enumerate(w for w in words if w not in vocab)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer, tok.pre_tokenizer = normalizer, splitter
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=MAX_TEXT_LENGTH)


def vocabulary_texts(config: dict[str, Any], captions: list[list[str]]) -> list[str]:
    """The captions, plus ShapesWorld's evaluation prompts when a source is ShapesWorld (so that every
    word `eval shapes` and `compare` use has an id, held-out colour-shape pairs included)."""
    texts = [t for group in captions for t in group]
    if any(str(d["source"]).startswith("shapes:") for d in config["data"]["sources"]):
        from ..shapes.evaluate import make_prompt_items

        texts += [item.spec.text for item in make_prompt_items(None, 50, seed=0)]
    return texts


def build_text_encoder(config: dict[str, Any], vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    t = config["model"]["text"]
    if t["hidden_size"] % t["num_heads"]:
        raise ValueError(f"model.text.hidden_size ({t['hidden_size']}) must be a multiple of model.text.num_heads")
    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=t["hidden_size"], d_kv=t["hidden_size"] // t["num_heads"], d_ff=t["ff_size"],
        num_layers=t["num_layers"], num_heads=t["num_heads"], dropout_rate=0.0, feed_forward_proj="gated-gelu",
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def build_unet(config: dict[str, Any]):
    from diffusers import UNet2DConditionModel

    m = config["model"]
    return UNet2DConditionModel(
        sample_size=m["sample_size"], in_channels=3, out_channels=6, layers_per_block=m["layers_per_block"],
        block_out_channels=tuple(m["block_out_channels"]), down_block_types=tuple(m["down_block_types"]),
        up_block_types=tuple(m["up_block_types"]), cross_attention_dim=m["text"]["hidden_size"],
        attention_head_dim=m["attention_head_dim"], norm_num_groups=m["norm_num_groups"],
        **({"addition_embed_type": "text", "addition_embed_type_num_heads": m["text"]["num_heads"]}
           if m["pooled_text"] else {}))


def build_noise_scheduler(config: dict[str, Any]):
    """The training scheduler; with `diffusion.snr_shift` its betas are the plain schedule's with the
    signal-to-noise ratio divided by the shift at every step (saved in the config as `trained_betas`, so
    the exported sampler uses the same noise levels)."""
    from diffusers import DDPMScheduler

    d = dict(config["diffusion"])
    shift = float(d.pop("snr_shift"))
    kwargs = {"variance_type": "fixed_small", "clip_sample": True}
    if shift != 1.0:
        alpha_bar = DDPMScheduler(**d).alphas_cumprod.double()
        shifted = alpha_bar / (alpha_bar + shift * (1 - alpha_bar))
        prev = torch.cat([torch.ones(1, dtype=shifted.dtype), shifted[:-1]])
        kwargs["trained_betas"] = (1 - shifted / prev).clamp(max=0.999).tolist()
    return DDPMScheduler(**d, **kwargs)


class DiffusionModel(torch.nn.Module):
    """What trains, under one state dict: the UNet, the text encoder (registered through its T5 stack, whose
    embedding is the encoder's tied `shared` module, so the tied weight is saved once) and EMA copies."""

    def __init__(self, unet, text_encoder, ema: bool):
        super().__init__()
        self.unet, self.text = unet, text_encoder.encoder
        self.encoders = [text_encoder]  # a plain list: not registered twice
        if ema:
            self.ema_unet = copy.deepcopy(unet).requires_grad_(False)
            ema_text = copy.deepcopy(text_encoder).requires_grad_(False)
            self.ema_text = ema_text.encoder
            self.encoders.append(ema_text)

    @property
    def text_encoder(self):
        return self.encoders[0]

    def trainable(self) -> list[torch.nn.Parameter]:
        return list(self.unet.parameters()) + list(self.text.parameters())

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        for ema, live in ((self.ema_unet, self.unet), (self.ema_text, self.text)):
            for e, p in zip(ema.parameters(), live.parameters()):
                e.lerp_(p, 1 - decay)

    def final(self):
        """(unet, text encoder) to export: the EMA copies when training keeps them."""
        if hasattr(self, "ema_unet"):
            return self.ema_unet, self.encoders[1]
        return self.unet, self.text_encoder


def diffusion_loss(model: DiffusionModel, noise_scheduler, pixels: torch.Tensor, ids: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """MSE of the UNet's first 3 output channels against the noise (or v) of a random timestep."""
    noise = torch.randn(pixels.shape, generator=generator)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (pixels.shape[0],), generator=generator)
    noisy = noise_scheduler.add_noise(pixels, noise, t)
    target = noise if noise_scheduler.config.prediction_type == "epsilon" else noise_scheduler.get_velocity(pixels, noise, t)
    text = model.text_encoder(ids, attention_mask=(ids != 0).long()).last_hidden_state
    out = model.unet(noisy, t, encoder_hidden_states=text).sample
    return F.mse_loss(out[:, :3].float(), target)


# ----------------------------------------------------------------------------- training
def learning_rate_factor(tr: dict[str, Any], step: int) -> float:
    warm, steps = int(tr["warmup"]), int(tr["steps"])
    if step < warm:
        return (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, steps - warm))
    return tr["min_lr_ratio"] + (1 - tr["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * progress))


def train_diffusion(config: dict[str, Any], output_dir: str | Path, progress: bool = True) -> Path:
    """Train (or resume) the diffusion baseline in `output_dir`; returns `DIR/pipeline`."""
    from tqdm.auto import tqdm

    from .train import _resume_key, config_difference

    out, tr = Path(output_dir), config["train"]
    final = out / "pipeline"
    if (final / "model_index.json").is_file() and (out / "compute.json").is_file():
        return final  # already trained
    if tr["threads"]:
        torch.set_num_threads(int(tr["threads"]))
    out.mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in config.items() if k != "_config_dir"}
    saved = out / "config.json"
    before = json.loads(saved.read_text()) if saved.is_file() else None
    if latest_checkpoint(out) is not None and before is not None and _resume_key(before) != _resume_key(clean):
        raise ValueError(f"{out} holds a run with another config ({config_difference(before, clean)}); "
                         "resume it with the same config, or use a new "
                         "--output-dir (only train.checkpoint_every / keep_checkpoints / threads may change)")
    saved.write_text(json.dumps(clean, indent=1))

    t_setup = time.perf_counter()
    buckets, pixels, captions, skipped = load_t2i_data(config)
    if skipped:
        print(f"skipped records: {skipped}", flush=True)
    pretrained = config["model"]["pretrained"]
    init = Path(resolve_path(config, str(pretrained))) if pretrained is not None else None
    tokenizer = _run_tokenizer(out, lambda: vocabulary_texts(config, captions), init)
    ids = [_token_ids(tokenizer, c) for c in captions]
    empty_ids = _token_ids(tokenizer, [""])[0]
    batches = BucketBatches([len(c) for c in captions], int(tr["batch_size"]), int(config["seed"]))
    setup_seconds = time.perf_counter() - t_setup

    torch.manual_seed(int(config["seed"]))
    unet, text_encoder = build_unet(config), build_text_encoder(config, len(tokenizer))
    if init is not None:
        load_pretrained_weights(init, unet, text_encoder)
    model = DiffusionModel(unet, text_encoder, tr["ema_decay"] is not None)
    model.train()
    optimizer = torch.optim.AdamW(model.trainable(), lr=tr["lr"], betas=tuple(tr["betas"]), weight_decay=tr["weight_decay"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_factor(tr, s))
    noise_scheduler = build_noise_scheduler(config)
    start, train_seconds = 0, 0.0
    resume = latest_checkpoint(out)
    if resume is not None:
        load_plain_state(resume, model, optimizer, schedule)
        state = read_state(resume)
        start, train_seconds = int(state["step"]), float(state["train_seconds"])
    metrics = MetricsLog(out / "metrics.jsonl", resume_step=start)
    steps = int(tr["steps"])
    precision = resolve_mixed_precision(tr["mixed_precision"], cuda=False)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="train-diffusion", disable=not progress)
    for step in bar:
        t0 = time.perf_counter()
        b, index = batches(step)
        rng = np.random.default_rng([int(config["seed"]), step, 1])
        batch_ids = ids[b][torch.from_numpy(index)].clone()
        batch_ids[torch.from_numpy(rng.random(len(index)) < tr["caption_dropout"])] = empty_ids
        x = pixels[b][torch.from_numpy(index)].float() / 127.5 - 1.0
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        with autocast:
            loss = diffusion_loss(model, noise_scheduler, x, batch_ids, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.trainable(), tr["grad_clip"]) if tr["grad_clip"] else None
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        schedule.step()
        if tr["ema_decay"] is not None:  # decay warm-up as diffusers' EMAModel: early weights fade quickly
            model.update_ema(min(float(tr["ema_decay"]), (step + 2) / (step + 11)))
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        w, h = buckets[b]
        row = {"step": step + 1, "stage": "diffusion", "loss": float(loss.detach()), "lr": lr,
               "grad_norm": None if grad_norm is None else float(grad_norm), "size": f"{w}x{h}",
               "images_per_s": len(index) / seconds}
        metrics.write(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", size=row["size"])
        if (step + 1) % int(tr["checkpoint_every"]) == 0 or step + 1 == steps:
            save_checkpoint(out, step + 1, {"stage": "diffusion", "train_seconds": train_seconds,
                                            "images_seen": (step + 1) * int(tr["batch_size"])},
                            lambda tmp: save_plain_state(tmp, model, optimizer, schedule), keep=int(tr["keep_checkpoints"]))
    bar.close()
    unet, text_encoder = model.final()
    compute = compute_report(config, unet, text_encoder, buckets, batches, train_seconds, setup_seconds, precision)
    if init is not None:
        compute.update(pretrained_compute(init, compute))
    export_diffusion_pipeline(config, unet.eval(), text_encoder.eval(), tokenizer, final)
    (out / "compute.json").write_text(json.dumps(compute, indent=1))
    return final


def load_pretrained_weights(init: Path, unet, text_encoder) -> None:
    """Copy the UNet and text encoder weights of the pipeline folder `init` into the freshly built models."""
    from diffusers import UNet2DConditionModel
    from transformers import T5EncoderModel

    for name, model, cls in (("unet", unet, UNet2DConditionModel), ("text_encoder", text_encoder, T5EncoderModel)):
        state = cls.from_pretrained(str(init / name)).state_dict()
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            first = (str(err).strip().splitlines()[1:2] or [str(err)])[0].strip()
            first = first if len(first) <= 200 else first[:197] + "..."  # missing-key lists name every key
            raise ValueError(f"model.pretrained {init}: its {name} does not fit this config's model section "
                             f"({first}); use the model settings it was trained with") from None


def pretrained_compute(init: Path, own: dict[str, Any]) -> dict[str, Any]:
    """What the starting weights cost, read from the compute.json beside the pipeline folder (DIR/compute.json
    for DIR/pipeline) or inside it (a shipped copy), and the total with this run's."""
    for path in (init.parent / "compute.json", init / "compute.json"):
        if path.is_file():
            before = json.loads(path.read_text())
            flops = int(before.get("total_train_flops_with_pretrained") or before["total_train_flops"])
            images = int(before.get("images_seen_with_pretrained") or before["images_seen"])
            return {"pretrained": {"path": str(init), "train_flops": flops, "images_seen": images},
                    "total_train_flops_with_pretrained": flops + own["total_train_flops"],
                    "images_seen_with_pretrained": images + own["images_seen"]}
    return {"pretrained": {"path": str(init), "train_flops": None, "images_seen": None},
            "total_train_flops_with_pretrained": None, "images_seen_with_pretrained": None}


def _run_tokenizer(out: Path, texts: Callable[[], list[str]], init: Path | None = None):
    """The run's tokenizer: built once into DIR/tokenizer (atomically) from `texts()`, or copied from the
    `model.pretrained` pipeline (its ids are the starting text encoder's), then read back on resume (neither
    of which reads `texts`)."""
    from transformers import PreTrainedTokenizerFast

    folder = out / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        tmp = out / ".tokenizer-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if init is not None:
            shutil.copytree(init / "tokenizer", tmp)
        else:
            build_tokenizer(texts()).save_pretrained(str(tmp))
        tmp.rename(folder)
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def _token_ids(tokenizer, texts: list[str]) -> torch.Tensor:
    if not texts:
        return torch.zeros(0, MAX_TEXT_LENGTH, dtype=torch.long)
    return tokenizer(texts, padding="max_length", max_length=MAX_TEXT_LENGTH, truncation=True, return_tensors="pt").input_ids


def export_diffusion_pipeline(config: dict[str, Any], unet, text_encoder, tokenizer, out: Path) -> Path:
    """A stock diffusers `IFPipeline` folder (no safety checker or watermarker), sampling with DPM-Solver; the
    UNet's weights stored in `export.unet_dtype` (the text encoder stays float32: transformers may load a
    model in the dtype it was saved in)."""
    from diffusers import DPMSolverMultistepScheduler, IFPipeline

    dtype = getattr(torch, config["export"]["unet_dtype"])
    if unet.dtype != dtype:  # nn.Module.to: ModelMixin.to warns about fp32-only modules, which this UNet has none of
        unet = torch.nn.Module.to(copy.deepcopy(unet), dtype)
    sampler = DPMSolverMultistepScheduler.from_config(build_noise_scheduler(config).config, **config["sampler"])
    pipe = IFPipeline(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=sampler, safety_checker=None,
                      feature_extractor=None, watermarker=None, requires_safety_checker=False)
    return save_pipeline(pipe, out)


def compute_report(config: dict[str, Any], unet, text_encoder, buckets: list[tuple[int, int]], batches: BucketBatches,
                   train_seconds: float, setup_seconds: float, precision: str = "no") -> dict[str, Any]:
    """Training compute: steps, images, seconds, and FLOPs counted by `torch.utils.flop_counter` (matmuls,
    convolutions, attention) for one image of each bucket: a training step's forward + backward of the
    UNet and text encoder, and one sampling forward of the UNet."""
    from torch.utils.flop_counter import FlopCounterMode

    tr = config["train"]
    noise_scheduler = build_noise_scheduler(config)
    ids = torch.ones(1, MAX_TEXT_LENGTH, dtype=torch.long)
    probe = DiffusionModel(copy.deepcopy(unet).requires_grad_(True), copy.deepcopy(text_encoder).requires_grad_(True), ema=False)
    train_flops, forward_flops = {}, {}
    for w, h in buckets:
        with FlopCounterMode(display=False) as counter:
            diffusion_loss(probe, noise_scheduler, torch.zeros(1, 3, h, w), ids, torch.Generator().manual_seed(0)).backward()
        train_flops[f"{w}x{h}"] = int(counter.get_total_flops())
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            probe.unet(torch.zeros(1, 3, h, w), 10, encoder_hidden_states=torch.zeros(1, MAX_TEXT_LENGTH, unet.config.cross_attention_dim))
        forward_flops[f"{w}x{h}"] = int(counter.get_total_flops())
    steps, bs = int(tr["steps"]), int(tr["batch_size"])
    per_bucket = np.bincount([batches(s)[0] for s in range(steps)], minlength=len(buckets))
    total = sum(int(n) * bs * train_flops[f"{w}x{h}"] for n, (w, h) in zip(per_bucket, buckets))
    return {
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "text_encoder_parameters": sum(p.numel() for p in text_encoder.parameters()),
        "steps": steps, "batch_size": bs, "images_seen": steps * bs,
        "training_images": sum(batches.counts), "epochs": round(steps * bs / sum(batches.counts), 3),
        "steps_per_bucket": {f"{w}x{h}": int(n) for n, (w, h) in zip(per_bucket, buckets)},
        "train_seconds": round(train_seconds, 1), "setup_seconds_last_start": round(setup_seconds, 1),
        "images_per_second": round(steps * bs / max(train_seconds, 1e-9), 2),
        "train_flops_per_image": train_flops, "total_train_flops": total,
        "unet_forward_flops_per_image": forward_flops,
        "flops_counted_by": "torch.utils.flop_counter: matmuls, convolutions, attention; norms and elementwise ops not counted",
        "mixed_precision": tr["mixed_precision"], "precision_used": precision, "threads": torch.get_num_threads(),
    }


__all__ = ["DIFFUSION_DEFAULTS", "BucketBatches", "build_tokenizer", "export_diffusion_pipeline", "load_diffusion_config",
           "train_diffusion"]
