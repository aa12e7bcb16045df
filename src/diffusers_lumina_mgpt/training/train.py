"""`lumina-mgpt train`: FP-SFT stages and Omni-SFT mixtures on accelerate, resumable after SIGKILL.

One run folder `DIR` holds everything:
  DIR/vq/            the VQ tokenizer when the config trains one (`vq_recipe`)
  DIR/base/          tokenizer/ and vqvae/ of the run (copied from a pipeline, or built here)
  DIR/data/STAGE/K/  the stage's pre-tokenised datasets (resumable, verified on load); a data entry that an
                     earlier stage already holds (same size, source, n and seed) is read from that stage's folder
  DIR/stage-weights/ NAME.safetensors: the weights at the end of each stage named in export.average_stages
  DIR/checkpoints/   step-N/ accelerate states (model, optimiser, LR schedule, RNGs) + trainer_state.json
  DIR/metrics.jsonl  one line per optimiser step: step, stage, loss, lr, grad_norm, tokens_per_s
  DIR/pipeline/      the finished diffusers pipeline folder
Re-running the same command resumes from the newest checkpoint. Stages run in order, each from the
previous stage's weights with its own resolution, mixture, steps and LR schedule (warmup + cosine),
and fresh AdamW moments. Batches are a function of (seed, stage, step) (see data.py), so a resumed
run and a run on N processes see the same global batches; the loss is summed over tokens and divided
by the whole global batch's supervised-token count, so the per-step loss is the same either way.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from ..file_modes import umask_modes
from .checkpoints import MetricsLog, latest_checkpoint, read_state, save_checkpoint, save_pipeline
from .config import load_config, positive, resolve_path
from .precision import PRECISIONS, resolve_mixed_precision

TRAIN_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "vq_recipe": None,  # a train-vq config trained into DIR/vq first (new models)
    "model": {
        "pretrained": None,  # an existing pipeline folder to finetune
        "new": {},  # LuminaMGPTTransformer kwargs of a new model (vocab size and special ids are filled in)
        "vqvae": None,  # a VQModel folder for a new model (default: DIR/vq/vqvae from vq_recipe)
        "text_vocab_size": 512,  # BPE pieces of a new model's text tokenizer, learned from the stage data
        "max_grid": 8,  # grid-count tokens of a new model's vocabulary (largest side / patch size)
        "default_size": None,  # the pipeline's default size (default: the last stage's size)
        "freeze": [],  # regexes of parameter names kept frozen
    },
    "data": {"num_proc": 1, "chunk_size": 256, "max_length": 1024},
    "train": {
        "batch_size": 32, "micro_batch_size": 16, "lr": 1e-3, "min_lr_ratio": 0.1, "warmup": 0.02,
        "weight_decay": 0.1, "betas": [0.9, 0.95], "grad_clip": 1.0, "mixed_precision": "no",
        "gradient_checkpointing": False, "prompt_dropout": 0.1, "prompt_dropout_tasks": None, "checkpoint_every": 200,
        "keep_checkpoints": 2, "threads": None, "pad_to_multiple_of": 64, "micro_batching": "length",
        "compile": False,
    },
    "stages": [],  # [{name, size, steps, lr?, warmup?, data: [{source, n?, ratio, seed?, loss_weight?}]}]
    "export": {
        # stage names: the exported transformer is the mean of the weights at the end of these stages (a model
        # soup of fine-tunes that start from one another, `lumina-mgpt average`); empty: the final weights
        "average_stages": [],
        # sampling defaults written into the exported folder (null: the pipeline's own): model_index.json's
        # default_guidance_scale and default_edit_image_top_k, the scheduler's image_top_k
        "guidance_scale": None, "image_top_k": None, "edit_image_top_k": None,
    },
}
# settings a run may change when it is resumed: they change neither its batches nor its weights
RESUMABLE_CHANGES = {"train": ("checkpoint_every", "keep_checkpoints", "threads", "pad_to_multiple_of", "micro_batching",
                               "compile"),
                     "data": ("num_proc",), "export": ("guidance_scale", "image_top_k", "edit_image_top_k")}


# ----------------------------------------------------------------------------- config
def load_train_config(path: str | Path | None, overrides: list[str] = ()) -> dict[str, Any]:
    config = load_config(path, TRAIN_DEFAULTS, overrides)
    check_config(config)
    return config


def check_config(config: dict[str, Any]) -> None:
    positive(config, "train.batch_size", "train.micro_batch_size", "train.lr", "train.checkpoint_every")
    tr = config["train"]
    if not isinstance(tr["pad_to_multiple_of"], int) or tr["pad_to_multiple_of"] < 1:
        raise ValueError(f"train.pad_to_multiple_of must be an integer >= 1 (1: no padding), got {tr['pad_to_multiple_of']!r}")
    if not isinstance(tr["compile"], bool):
        raise ValueError(f"train.compile must be true or false, got {tr['compile']!r}")
    if tr["micro_batching"] not in ("length", "fixed"):
        raise ValueError("train.micro_batching must be 'length' (runs of similar lengths, at most micro_batch_size rows "
                         f"each) or 'fixed' (runs of micro_batch_size rows), got {tr['micro_batching']!r}")
    if tr["batch_size"] % tr["micro_batch_size"]:
        raise ValueError(f"train.batch_size ({tr['batch_size']}) must be a multiple of train.micro_batch_size "
                         f"({tr['micro_batch_size']})")
    if not 0 <= tr["prompt_dropout"] < 1:
        raise ValueError(f"train.prompt_dropout must be in [0, 1), got {tr['prompt_dropout']}")
    tasks = tr["prompt_dropout_tasks"]
    if tasks is not None and (not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks)):
        raise ValueError("train.prompt_dropout_tasks must be a non-empty list of task names (e.g. [t2i]) or null "
                         f"(every row whose answer is an image), got {tasks!r}")
    if tr["mixed_precision"] not in PRECISIONS:
        raise ValueError("train.mixed_precision must be 'no', bf16, fp16 or auto (write 'no' in quotes: YAML reads "
                         f"a bare no as false), got {tr['mixed_precision']!r}")
    stages = config["stages"]
    if not stages:
        raise ValueError("the config has no stages; add at least one {name, size, steps, data} entry")
    names = set()
    for i, st in enumerate(stages):
        for key in ("name", "size", "steps", "data"):
            if key not in st:
                raise ValueError(f"stages[{i}] needs a {key!r} entry")
        unknown = set(st) - {"name", "size", "steps", "lr", "warmup", "data"}
        if unknown:
            raise ValueError(f"stages[{i}] has unknown keys {sorted(unknown)}; use name, size, steps, lr, warmup, data")
        if st["name"] in names or not re.fullmatch(r"[A-Za-z0-9_.-]+", str(st["name"])):
            raise ValueError(f"stages[{i}] name {st['name']!r} must be unique and use letters, digits, _ . -")
        names.add(st["name"])
        if int(st["steps"]) < 1 or int(st["size"]) < 16:
            raise ValueError(f"stages[{i}] needs steps >= 1 and size >= 16, got {st['steps']} and {st['size']}")
        if not st["data"]:
            raise ValueError(f"stages[{i}] has no data sources")
        for j, d in enumerate(st["data"]):
            if "source" not in d:
                raise ValueError(f"stages[{i}].data[{j}] needs a 'source' (file, folder or shapes:TASK)")
            unknown = set(d) - {"source", "n", "ratio", "seed", "loss_weight"}
            if unknown:
                raise ValueError(f"stages[{i}].data[{j}] has unknown keys {sorted(unknown)}; use source, n, ratio, seed, "
                                 "loss_weight")
            weight = d.get("loss_weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                raise ValueError(f"stages[{i}].data[{j}].loss_weight must be a positive number (1: every supervised "
                                 f"token counts once), got {weight!r}")
    check_export(config)
    model = config["model"]
    if bool(model["pretrained"]) == bool(model["new"]):
        raise ValueError("set exactly one of model.pretrained (a pipeline folder) and model.new (a size spec)")


def check_export(config: dict[str, Any]) -> None:
    ex, names = config["export"], [st["name"] for st in config["stages"]]
    avg = ex["average_stages"]
    if not isinstance(avg, list) or (avg and (len(avg) < 2 or len(set(avg)) != len(avg))):
        raise ValueError(f"export.average_stages must list two or more different stage names (or be empty), got {avg!r}")
    unknown = [a for a in avg if a not in names]
    if unknown:
        raise ValueError(f"export.average_stages names {unknown}, which are not stages of this config ({names})")
    g = ex["guidance_scale"]
    if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or not g >= 1):
        raise ValueError(f"export.guidance_scale must be a number >= 1 (1: no guidance) or null, got {g!r}")
    for key in ("image_top_k", "edit_image_top_k"):
        k = ex[key]
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"export.{key} must be a whole number >= 1 or null, got {k!r}")


def stage_bounds(config: dict[str, Any]) -> list[tuple[int, int]]:
    """(first global step, steps) of every stage."""
    out, start = [], 0
    for st in config["stages"]:
        out.append((start, int(st["steps"])))
        start += int(st["steps"])
    return out


def learning_rate(config: dict[str, Any], step: int) -> float:
    """LR at global `step`: per stage, linear warmup then cosine to min_lr_ratio * lr."""
    tr = config["train"]
    for st, (start, steps) in zip(config["stages"], stage_bounds(config)):
        if step < start + steps:
            s = step - start
            lr = float(st.get("lr", tr["lr"]))
            warm = st.get("warmup", tr["warmup"])
            warm = int(round(warm * steps)) if warm < 1 else int(warm)
            if s < warm:
                return lr * (s + 1) / warm
            progress = (s - warm) / max(1, steps - warm)
            return lr * (tr["min_lr_ratio"] + (1 - tr["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * progress)))
    return float(config["stages"][-1].get("lr", tr["lr"])) * tr["min_lr_ratio"]


# ----------------------------------------------------------------------------- base components
def build_base(config: dict[str, Any], run: Path, progress: bool) -> Path:
    """DIR/base with tokenizer/ and vqvae/ (main process only)."""
    base = run / "base"
    if (base / "tokenizer").is_dir() and (base / "vqvae").is_dir():
        return base
    model = config["model"]
    tmp = run / ".base-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if model["pretrained"]:
        src = Path(resolve_path(config, model["pretrained"]))
        for sub in ("tokenizer", "vqvae"):
            if not (src / sub).is_dir():
                raise FileNotFoundError(f"model.pretrained {src} has no {sub}/; pass a pipeline folder")
            shutil.copytree(src / sub, tmp / sub)
    else:
        from .pretokenize import load_vqvae
        from .records import Record
        from .text_tokenizer import train_text_tokenizer
        from .vq_train import load_vq_config, train_vq

        if model["vqvae"]:
            vq_dir = Path(resolve_path(config, model["vqvae"]))
        elif config["vq_recipe"]:
            vq_config = load_vq_config(resolve_path(config, config["vq_recipe"]))
            print(f"training the VQ tokenizer ({config['vq_recipe']}) into {run / 'vq'}", flush=True)
            report = train_vq(vq_config, run / "vq", progress=progress)
            print(f"VQ tokenizer: held-out PSNR {report['psnr']:.2f} dB, {report['codes_used']} codes used, "
                  f"perplexity {report['perplexity']:.1f}", flush=True)
            vq_dir = run / "vq" / "vqvae"
        else:
            raise ValueError("a new model needs model.vqvae (a VQModel folder) or vq_recipe (a train-vq config)")
        vqvae = load_vqvae(vq_dir)
        texts, seen = [], set()
        for st in config["stages"]:
            for d in st["data"]:
                key = records_key(config, d)
                if key in seen:  # the same records in another stage: sampled once
                    continue
                seen.add(key)
                src = _open_source(config, d)
                for c in range(min(src.num_chunks, 4)):  # a sample of each source is enough for a BPE
                    texts += [t["value"] for r in src.chunk(c) if isinstance(r, Record) for t in r.conversations]
        tokenizer = train_text_tokenizer(texts, int(model["text_vocab_size"]), int(vqvae.config.num_vq_embeddings),
                                         int(model["max_grid"]))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        vqvae.save_pretrained(str(tmp / "vqvae"))
        umask_modes(tmp)
    shutil.rmtree(base, ignore_errors=True)
    tmp.rename(base)
    return base


def _open_source(config: dict[str, Any], d: dict[str, Any]):
    """A stage's data entry as a `records.Source` (paths relative to the config file)."""
    from .records import open_source

    spec = str(d["source"])
    spec = spec if spec.startswith("shapes:") else str(resolve_path(config, spec))
    return open_source(spec, d.get("n"), records_key(config, d)[2], config["data"]["chunk_size"])


def records_key(config: dict[str, Any], d: dict[str, Any]) -> tuple[str, int | None, int]:
    """(source, n, seed) of a stage's data entry: entries with the same key hold the same records."""
    return str(d["source"]), d.get("n"), int(d.get("seed", config["seed"]))


def stage_data_folders(config: dict[str, Any], run: Path, stage_index: int) -> list[Path]:
    """The pre-tokenised folder of each data entry of stage `stage_index`: DIR/data/STAGE/K, or the folder of
    the first earlier entry with the same size, source, n and seed (the same records, tokenised once)."""
    first: dict[tuple, Path] = {}
    for st in config["stages"][:stage_index + 1]:
        folders = [first.setdefault((int(st["size"]), *records_key(config, d)), run / "data" / st["name"] / f"{k}")
                   for k, d in enumerate(st["data"])]
    return folders


def prepare_stage_data(config: dict[str, Any], run: Path, base: Path, stage_index: int, progress: bool,
                       pool=None) -> list[Path]:
    """Pre-tokenise stage `stage_index`'s sources (`stage_data_folders`); `pool`: a `pretokenize.worker_pool`."""
    from .pretokenize import pretokenize, skipped_table

    stage = config["stages"][stage_index]
    folders = stage_data_folders(config, run, stage_index)
    for d, out in zip(stage["data"], folders):
        if out.parent.name != stage["name"]:
            print(f"[{stage['name']}] {d['source']}: the records of {out.parent.name}/{out.name}", flush=True)
            continue
        src = _open_source(config, d)
        manifest = pretokenize(src, base, int(stage["size"]), out, num_proc=int(config["data"]["num_proc"]),
                               max_length=config["data"]["max_length"], progress=progress, pool=pool)
        print(f"[{stage['name']}] {d['source']}: {skipped_table(manifest)}", flush=True)
    return folders


def stage_batches(config: dict[str, Any], stage_index: int, datasets: list, vocab):
    """The `MixtureBatches` of stage `stage_index` over its pre-tokenised `datasets` (one per data entry)."""
    from .data import MixtureBatches

    tr, st = config["train"], config["stages"][stage_index]
    return MixtureBatches(datasets, [float(d.get("ratio", 1.0)) for d in st["data"]], int(tr["batch_size"]),
                          int(config["seed"]), stage_index, float(tr["prompt_dropout"]), vocab.boi_id, vocab.eoi_id,
                          dropout_tasks=tr["prompt_dropout_tasks"],
                          loss_weights=[float(d.get("loss_weight", 1.0)) for d in st["data"]])


# ----------------------------------------------------------------------------- model
def build_transformer(config: dict[str, Any], base: Path):
    from transformers import AutoTokenizer

    from ..transformer import LuminaMGPTTransformer
    from ..vocab import LuminaVocab

    model = config["model"]
    if model["pretrained"]:
        return LuminaMGPTTransformer.from_pretrained(str(Path(resolve_path(config, model["pretrained"])) / "transformer"))
    vocab = LuminaVocab.from_tokenizer(AutoTokenizer.from_pretrained(str(base / "tokenizer")))
    kwargs = dict(model["new"])
    kwargs.update(vocab_size=vocab.vocab_size, bos_token_id=vocab.bos_id, pad_token_id=vocab.pad_id,
                  eos_token_id=vocab.eos_id)
    return LuminaMGPTTransformer(**kwargs)


def freeze(transformer, patterns: list[str]) -> int:
    frozen = 0
    for name, p in transformer.named_parameters():
        if any(re.search(pat, name) for pat in patterns):
            p.requires_grad_(False)
            frozen += p.numel()
    if patterns and not frozen:
        raise ValueError(f"model.freeze patterns {patterns} match no parameter name (e.g. 'model.embed_tokens')")
    return frozen


def export_pipeline(transformer, base: Path, out: Path, default_size: int, scheduler_config: dict | None = None,
                    export: dict[str, Any] | None = None) -> Path:
    """Write a complete `LuminaMGPTPipeline` folder from a transformer and the run's base components, with the
    sampling defaults of a config's `export` section where it sets them."""
    from transformers import AutoTokenizer

    from ..pipelines import LuminaMGPTPipeline
    from ..schedulers import LuminaMGPTARScheduler
    from .pretokenize import load_vqvae

    export = export or {}
    scheduler_config = dict(scheduler_config or {})
    if export.get("image_top_k") is not None:
        scheduler_config["image_top_k"] = int(export["image_top_k"])
    defaults = {}
    if export.get("guidance_scale") is not None:
        defaults["default_guidance_scale"] = float(export["guidance_scale"])
    if export.get("edit_image_top_k") is not None:
        defaults["default_edit_image_top_k"] = int(export["edit_image_top_k"])
    scheduler = LuminaMGPTARScheduler(**scheduler_config)
    pipe = LuminaMGPTPipeline(tokenizer=AutoTokenizer.from_pretrained(str(base / "tokenizer")), transformer=transformer,
                              vqvae=load_vqvae(base / "vqvae"), scheduler=scheduler, default_size=int(default_size),
                              **defaults)
    return save_pipeline(pipe, out)


# ----------------------------------------------------------------------------- loop
def train(config: dict[str, Any], output_dir: str | Path, progress: bool = True) -> Path:
    """Run (or resume) the config's stages in `output_dir`; returns the exported pipeline folder."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from ..transformer import causal_lm_loss
    from ..vocab import LuminaVocab
    from .data import PretokenizedDataset, collate

    run = Path(output_dir)
    tr = config["train"]
    if tr["threads"]:
        torch.set_num_threads(int(tr["threads"]))
    # "no" leaves the choice to an accelerate config file (e.g. the FSDP examples' bf16)
    resolved = resolve_mixed_precision(tr["mixed_precision"], cuda=torch.cuda.is_available())
    precision = None if resolved == "no" else resolved
    accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    run.mkdir(parents=True, exist_ok=True)
    saved = run / "config.json"
    clean = {k: v for k, v in config.items() if k != "_config_dir"}
    if main:
        latest = latest_checkpoint(run)
        if latest is not None and saved.is_file():
            before = json.loads(saved.read_text())
            before.setdefault("export", copy.deepcopy(TRAIN_DEFAULTS["export"]))  # a run from before `export`
            if _resume_key(before) != _resume_key(clean):
                raise ValueError(f"{run} holds a run with another config ({config_difference(before, clean)}); "
                                 "resume it with the same config, or use a new "
                                 "--output-dir (only " + ", ".join(f"{s}.{k}" for s, keys in RESUMABLE_CHANGES.items()
                                                                    for k in keys) + " may change)")
        saved.write_text(json.dumps(clean, indent=1))
    # 1. base components and data (main process; the others wait for them)
    if main:
        from .pretokenize import worker_pool

        base = build_base(config, run, progress)
        with worker_pool(int(config["data"]["num_proc"])) as pool:
            for stage_index in range(len(config["stages"])):
                prepare_stage_data(config, run, base, stage_index, progress, pool)
    accelerator.wait_for_everyone()
    base = run / "base"

    # 2. model, optimiser, schedule
    set_seed(config["seed"])
    transformer = build_transformer(config, base)
    freeze(transformer, config["model"]["freeze"])
    if tr["gradient_checkpointing"]:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    from transformers import AutoTokenizer

    vocab = LuminaVocab.from_tokenizer(AutoTokenizer.from_pretrained(str(base / "tokenizer")))
    decay = [p for n, p in transformer.named_parameters() if p.requires_grad and p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in transformer.named_parameters() if p.requires_grad and not (p.ndim >= 2 and "embed" not in n)]
    # fused AdamW on a CPU: one kernel over all parameters instead of a dozen foreach ops (7 ms a step against
    # 20 for the 5.9M-parameter recipe; docs/benchmarks.md, "RoPE table, fused AdamW and the C++ wrapper")
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": tr["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=1.0, betas=tuple(tr["betas"]),
                                  fused=True if accelerator.device.type == "cpu" else None)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate(config, s))
    # the schedule stays a plain LambdaLR: accelerate's wrapper steps it once per process, which would
    # advance the LR N times per step on N processes; it is checkpointed as a registered object instead
    model, optimizer = accelerator.prepare(transformer, optimizer)
    accelerator.register_for_checkpointing(schedule)

    # 3. resume
    global_step = 0
    resume = latest_checkpoint(run)
    if resume is not None:
        accelerator.load_state(str(resume))
        global_step = int(read_state(resume)["step"])
        if main:
            print(f"resuming from {resume} (step {global_step})", flush=True)
    metrics = MetricsLog(run / "metrics.jsonl", resume_step=global_step, enabled=main)
    board = _tensorboard(run) if main else None
    total = sum(int(st["steps"]) for st in config["stages"])
    bar = tqdm(total=total, initial=global_step, desc="train", disable=not (progress and main))
    world, rank = accelerator.num_processes, accelerator.process_index
    z_weight = float(accelerator.unwrap_model(model).config.z_loss_weight)

    def forward_loss(ids, labels, weights):
        return causal_lm_loss(model(ids).logits, labels, z_weight, reduction="sum", row_weights=weights)

    # RoPE's table set eagerly for the longest row: the compiled step guards on it
    accelerator.unwrap_model(model).rope_table(int(config["data"]["max_length"]), accelerator.device)
    if tr["compile"]:  # the forward and loss, not the module: checkpoints keep their parameter names
        # on a CPU, the graphs' wrapper in C++ instead of Python: 1.06x a step for the recipe's model, for about
        # 20-40 s more of compiling (docs/benchmarks.md, "RoPE table, fused AdamW and the C++ wrapper")
        options = {"cpp_wrapper": True} if accelerator.device.type == "cpu" else None
        forward_loss = torch.compile(forward_loss, dynamic=True, options=options)

    for stage_index, (st, (start, steps)) in enumerate(zip(config["stages"], stage_bounds(config))):
        if global_step >= start + steps:
            continue
        if global_step == start and start > 0:
            optimizer.optimizer.state = defaultdict(dict)  # a stage starts with fresh AdamW moments
        datasets = [PretokenizedDataset(folder) for folder in stage_data_folders(config, run, stage_index)]
        batches = stage_batches(config, stage_index, datasets, vocab)
        if main and tr["prompt_dropout"] > 0 and not batches.can_drop:
            print(f"[{st['name']}] no prompt is dropped in this stage: no row's task is in train.prompt_dropout_tasks "
                  f"{tr['prompt_dropout_tasks']} (its tasks: {sorted({t for ds in datasets for t in ds.tasks})})",
                  flush=True)
        while global_step < start + steps:
            t0 = time.perf_counter()
            micro, supervised = batches.micro_batches(global_step - start, int(tr["micro_batch_size"]), rank, world,
                                                      tr["micro_batching"] == "length", int(tr["pad_to_multiple_of"]))
            loss_sum = torch.zeros((), device=accelerator.device)
            tokens = torch.zeros((), device=accelerator.device)
            for k, rows in enumerate(micro):
                ids, labels = collate(rows, vocab.pad_id, int(tr["pad_to_multiple_of"]))
                ids, labels = ids.to(accelerator.device), labels.to(accelerator.device)
                sync = k == len(micro) - 1
                ctx = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
                with ctx, accelerator.autocast():
                    weights = torch.tensor([r.weight for r in rows]) if batches.weighted else None
                    part = forward_loss(ids, labels, weights)
                    accelerator.backward(part * world / supervised)
                loss_sum += part.detach()
                tokens += sum(len(r.ids) for r in rows)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), tr["grad_clip"]) if tr["grad_clip"] else None
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            loss = float(accelerator.reduce(loss_sum, reduction="sum")) / supervised
            n_tokens = float(accelerator.reduce(tokens, reduction="sum"))
            row = {"step": global_step, "stage": st["name"], "loss": loss, "lr": lr,
                   "grad_norm": None if grad_norm is None else float(grad_norm),
                   "tokens_per_s": n_tokens / (time.perf_counter() - t0), "supervised_tokens": supervised}
            metrics.write(row)
            if board is not None:
                for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
                    if row[key] is not None:
                        board.add_scalar(f"{key}/{st['name']}" if key == "loss" else key, row[key], global_step)
            bar.update()
            bar.set_postfix(stage=st["name"], loss=f"{loss:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
            if global_step == start + steps and st["name"] in config["export"]["average_stages"]:
                weights = accelerator.get_state_dict(model)  # every process takes part (FSDP gathers)
                if main:
                    _save_stage_weights(run, st["name"], weights)
                del weights
            if global_step % int(tr["checkpoint_every"]) == 0 or global_step == start + steps:
                save_checkpoint(run, global_step, {"stage": st["name"], "stage_index": stage_index,
                                                   "stage_step": global_step - start},
                                lambda tmp: _save(accelerator, tmp, clean), keep=int(tr["keep_checkpoints"]),
                                is_main=main, barrier=accelerator.wait_for_everyone)
    bar.close()
    if board is not None:
        board.close()
    out = run / "pipeline"
    weights = accelerator.get_state_dict(model)  # gathers FSDP shards; every process takes part
    if main:
        final = build_transformer(config, base)
        final.load_state_dict(_stage_weights_mean(run, config) if config["export"]["average_stages"] else weights)
        default = config["model"]["default_size"] or config["stages"][-1]["size"]
        export_pipeline(final.eval(), base, out, int(default), export=config["export"])
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


def _save_stage_weights(run: Path, name: str, weights: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    folder = run / "stage-weights"
    folder.mkdir(exist_ok=True)
    tmp = folder / f".{name}.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp))
    umask_modes(tmp)
    tmp.rename(folder / f"{name}.safetensors")  # written whole before the stage's last checkpoint


def _stage_weights_mean(run: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The plain mean of the weights saved at the end of each stage in export.average_stages."""
    from safetensors.torch import load_file

    from .average import weighted_mean_state

    names = config["export"]["average_stages"]
    files = [run / "stage-weights" / f"{name}.safetensors" for name in names]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"export.average_stages needs the weights saved at the end of each of its stages, and "
                                f"{missing} are missing (DIR/stage-weights/ deleted, or not copied with the run): "
                                "re-train those stages in a new --output-dir, or export a checkpoint alone with "
                                "`lumina-mgpt export`")
    return weighted_mean_state((1.0 / len(files), load_file(str(f))) for f in files)


def _tensorboard(run: Path):
    """A TensorBoard writer into DIR/tensorboard when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run / "tensorboard"))


def _resume_key(config: dict[str, Any]) -> dict[str, Any]:
    c = copy.deepcopy(config)
    for section, keys in RESUMABLE_CHANGES.items():
        for key in keys:
            c.get(section, {}).pop(key, None)
    return c


def config_difference(before: Any, after: Any, path: str = "") -> str:
    """The first setting where a run's saved config and a new one differ, as `key: old -> new`."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in [*before, *(k for k in after if k not in before)]:
            if before.get(key) != after.get(key):
                return config_difference(before.get(key), after.get(key), f"{path}.{key}" if path else str(key))
    elif isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for i, (a, b) in enumerate(zip(before, after)):
            if a != b:
                return config_difference(a, b, f"{path}.{i}")
    return f"{path or 'the config'}: {before!r} -> {after!r}"


def _save(accelerator, folder: Path, config: dict[str, Any]) -> None:
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        (folder / "run_config.json").write_text(json.dumps(config, indent=1))
        model = accelerator.unwrap_model(accelerator._models[0])
        (folder / "transformer_config.json").write_text(json.dumps(dict(model.config), indent=1))


# ----------------------------------------------------------------------------- export
def export_checkpoint(checkpoint: str | Path, out: str | Path, default_size: int | None = None) -> Path:
    """`lumina-mgpt export`: a checkpoint folder -> a complete pipeline folder."""
    from safetensors.torch import load_file

    from ..transformer import LuminaMGPTTransformer

    ckpt = Path(checkpoint)
    state = read_state(ckpt)
    run = ckpt.parent.parent
    cfg_file = ckpt / "transformer_config.json"
    weights = ckpt / "model.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{ckpt} has no transformer_config.json / model.safetensors (a sharded FSDP checkpoint "
                                "must be merged first: `accelerate merge-weights CKPT/pytorch_model_fsdp_0 OUT`)")
    cfg = {k: v for k, v in json.loads(cfg_file.read_text()).items() if not k.startswith("_")}
    transformer = LuminaMGPTTransformer(**cfg)
    transformer.load_state_dict(load_file(str(weights)))
    run_cfg = json.loads((ckpt / "run_config.json").read_text())
    if (run / "config.json").is_file():  # the run's current sampling defaults (they may change on a re-run)
        run_cfg["export"] = json.loads((run / "config.json").read_text()).get("export", run_cfg.get("export"))
    size = default_size or run_cfg["model"]["default_size"] or next(
        st["size"] for st in run_cfg["stages"] if st["name"] == state["stage"])
    # the run's sampling defaults; `export.average_stages` does not apply: a checkpoint is one point of the run
    return export_pipeline(transformer.eval(), run / "base", Path(out), int(size), export=run_cfg.get("export"))


__all__ = ["TRAIN_DEFAULTS", "export_checkpoint", "learning_rate", "load_train_config", "train"]
