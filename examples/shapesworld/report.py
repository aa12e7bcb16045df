"""Score a ShapesWorld pipeline on every family and task, and draw its pictures (the default-model report).

    python examples/shapesworld/report.py --model src/diffusers_lumina_mgpt/models/shapesworld \
        --run runs/default --out docs/default-model --n 200

Writes OUT/scores.json (every number), OUT/loss.png (training curves, when --run is given),
OUT/t2i-grid.png (generated images per prompt family), OUT/tasks-grid.png (input -> answer per Omni
task). Parts: how much the caption lowers the image loss (`conditioning`), whether the relation word of a
position prompt does (`relations`), a sampling sweep (guidance x
image top-k, `--parts sweep`), t2i at the default size and two other aspect ratios (`eval shapes`), every Omni task (`eval shapes --task ...`), and AR vs speculative Jacobi
decoding (forwards per image token, score).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

SIZES = [(64, 64), (80, 48), (48, 80)]  # 128x32 holds no object above another in this world
TASKS = ["caption", "vqa", "edit", "multiedit", "segmentation", "depth", "noedit"]


def t2i_scores(model: str, n: int, seed: int, sampling: dict, batch: int) -> dict:
    from diffusers_lumina_mgpt.shapes.evaluate import evaluate_shapes

    scores = {}
    for w, h in SIZES:
        t0 = time.perf_counter()
        res = evaluate_shapes(model, n=n, seed=seed, size=(w, h), call_kwargs=sampling, progress=False,
                              batch_size=batch)
        res.pop("prompts")
        res["seconds"] = time.perf_counter() - t0
        scores[f"{w}x{h}"] = res
        print(f"t2i {w}x{h}: overall {res['overall']:.3f} {res['families']} held-out {res['heldout']}", flush=True)
    return scores


def task_scores(pipe, n: int, seed: int) -> dict:
    from diffusers_lumina_mgpt.shapes.task_eval import evaluate_tasks

    result = {}
    for task in TASKS:
        t0 = time.perf_counter()
        result.update(evaluate_tasks(pipe, [task], n, seed, guidance_scale=1.0, progress=False))
        result[task]["seconds"] = time.perf_counter() - t0
        print(f"{task}: {result[task]}", flush=True)
    return result


def jacobi_vs_ar(pipe, n: int, seed: int, sampling: dict) -> dict:
    """Same prompts, seeds and settings through both schedulers, one image per call."""
    from diffusers_lumina_mgpt import LuminaMGPTARScheduler, LuminaMGPTJacobiScheduler
    from diffusers_lumina_mgpt.shapes.evaluate import make_prompt_items
    from diffusers_lumina_mgpt.shapes.scorer import check_spec, detect

    items = [it for it in make_prompt_items(None, n, seed + 1) if it.split == "train"]
    f = pipe.image_processor.config.downsample_factor
    layout_tokens = (64 // f) ** 2  # image-code tokens of a 64x64 image
    out = {}
    for name, sched in (("ar", LuminaMGPTARScheduler.from_config(pipe.scheduler.config)),
                        ("jacobi", LuminaMGPTJacobiScheduler.from_config(pipe.scheduler.config, num_drafts=16))):
        pipe.scheduler = sched
        passed, forwards, t0 = [], [], time.perf_counter()
        for it in items:
            res = pipe(it.spec.text, height=64, width=64, generator=torch.Generator().manual_seed(it.seed), **sampling)
            passed.append(check_spec(it.spec, detect(res.images[0]).objects)[0])
            forwards.append(res.num_forward_passes)
        out[name] = {"score": float(np.mean(passed)), "prompts": len(items),
                     "forwards_per_image": float(np.mean(forwards)),
                     "forwards_per_image_token": float(np.mean(forwards)) / layout_tokens,
                     "seconds_per_image": (time.perf_counter() - t0) / len(items)}
        print(f"{name}: {out[name]}", flush=True)
    pipe.scheduler = LuminaMGPTARScheduler.from_config(pipe.scheduler.config)
    return out


@torch.no_grad()
def image_nll(pipe, context: torch.Tensor, block: torch.Tensor) -> float:
    """Mean NLL (nats per token) of an image block's tokens after `context`, which ends where the block's own
    header would (the header's first 3 tokens are dropped from the block)."""
    ids = torch.cat([context, block[3:]])[None]
    logits = pipe.transformer(ids).logits[0, len(context) - 1 : -1].float()
    return float(-torch.log_softmax(logits, -1).gather(1, ids[0, len(context):, None]).mean())


@torch.no_grad()
def conditioning(pipe, n: int, seed: int) -> dict:
    """How much the caption lowers the image tokens' loss: mean NLL (nats per image token) of ground-truth
    64x64 image blocks after their own caption, after another record's caption, and after the image
    header alone. A model that follows prompts has right << none < wrong; this moves long before the
    scorer does, so it tracks prompt-following early in training."""
    from diffusers_lumina_mgpt.pipelines.chat_images import encode_images
    from diffusers_lumina_mgpt.shapes.tasks import make_records

    records = [r for r in make_records("t2i", 8 * n, seed=seed + 99) if r.images[0].size == (64, 64)][:n]
    captions = [r.conversations[0]["value"].split("prompt:\n", 1)[-1] for r in records]

    rows = {"own_caption": [], "other_caption": [], "no_caption": []}
    for i, rec in enumerate(records):
        block = encode_images(pipe, rec.images[0])[0]
        rows["own_caption"].append(image_nll(pipe, pipe.encode_prompt(captions[i], 64, 64), block))
        rows["other_caption"].append(image_nll(pipe, pipe.encode_prompt(captions[(i + 1) % len(captions)], 64, 64), block))
        rows["no_caption"].append(image_nll(pipe, pipe.image_header(64, 64), block))
    out = {k: float(np.mean(v)) for k, v in rows.items()}
    out["records"] = len(records)
    print(f"conditioning: {out}", flush=True)
    return out


@torch.no_grad()
def relations(pipe, n: int, seed: int) -> dict:
    """Whether the relation word conditions the image: mean NLL (nats per image token) of ground-truth 64x64
    position scenes after their own prompt and after the prompt with the opposite relation (left <-> right,
    above <-> below), n scenes each for horizontal and vertical relations, and how often the own prompt
    gives the lower NLL (0.5: the word is ignored)."""
    from diffusers_lumina_mgpt.pipelines.chat_images import encode_images
    from diffusers_lumina_mgpt.shapes.language import make_prompt
    from diffusers_lumina_mgpt.shapes.render import render_scene
    from diffusers_lumina_mgpt.shapes.tasks import scene_for_prompt

    opposite = {"to the left of": "to the right of", "to the right of": "to the left of", " above ": " below ",
                " below ": " above "}

    rng = np.random.default_rng(seed + 5)
    pairs: dict[str, list[tuple[float, float]]] = {"horizontal": [], "vertical": []}
    while min(len(v) for v in pairs.values()) < n:
        spec = make_prompt("position", rng, "train")
        kind = "horizontal" if spec.relation in ("left", "right") else "vertical"
        if len(pairs[kind]) >= n:
            continue
        block = encode_images(pipe, render_scene(scene_for_prompt(spec, rng, size=(64, 64))))[0]
        phrase = next(k for k in opposite if k in spec.text)
        pairs[kind].append((image_nll(pipe, pipe.encode_prompt(spec.text, 64, 64), block),
                            image_nll(pipe, pipe.encode_prompt(spec.text.replace(phrase, opposite[phrase]), 64, 64), block)))
    out = {kind: {"own": float(np.mean([a for a, _ in v])), "opposite": float(np.mean([b for _, b in v])),
                  "own_lower": float(np.mean([a < b for a, b in v])), "scenes": len(v)} for kind, v in pairs.items()}
    print(f"relations: {out}", flush=True)
    return out


def sweep(model: str, n: int, seed: int, batch: int) -> list[dict]:
    """Sampling settings (guidance scale x image top-k) on a small set of prompts at 64x64."""
    from diffusers_lumina_mgpt.shapes.evaluate import evaluate_shapes

    rows = []
    for guidance in (1.5, 3.0, 5.0):
        for top_k in (None, 10, 3):
            kwargs = {"guidance_scale": guidance, **({"image_top_k": top_k} if top_k else {})}
            res = evaluate_shapes(model, n=n, seed=seed + 100, size=(64, 64), call_kwargs=kwargs, progress=False,
                                  batch_size=batch)
            rows.append({"guidance_scale": guidance, "image_top_k": top_k, "overall": res["overall"],
                         "heldout": res["heldout"]["overall"]})
            print(rows[-1], flush=True)
    return rows


def label(image: Image.Image, text: str, scale: int = 3) -> Image.Image:
    big = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    canvas = Image.new("RGB", (max(big.width, 8), big.height + 14), (255, 255, 255))
    canvas.paste(big, (0, 14))
    ImageDraw.Draw(canvas).text((2, 1), text[:40], fill=(0, 0, 0))
    return canvas


def grid(rows: list[list[Image.Image]], gap: int = 6) -> Image.Image:
    width = max(sum(im.width for im in row) + gap * (len(row) - 1) for row in rows)
    height = sum(max(im.height for im in row) for row in rows) + gap * (len(rows) - 1)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    y = 0
    for row in rows:
        x = 0
        for im in row:
            sheet.paste(im, (x, y))
            x += im.width + gap
        y += max(im.height for im in row) + gap
    return sheet


def t2i_grid(pipe, sampling: dict, seed: int) -> Image.Image:
    from diffusers_lumina_mgpt.shapes.language import FAMILIES, make_prompt

    rows = []
    rng = np.random.default_rng(seed)
    for fam in FAMILIES:
        row = []
        for k in range(4):
            spec = make_prompt(fam, rng, "train")
            w, h = SIZES[k % len(SIZES)]
            im = pipe(spec.text, height=h, width=w, generator=torch.Generator().manual_seed(k), **sampling).images[0]
            row.append(label(im, spec.text))
        rows.append(row)
    return grid(rows)


def tasks_grid(pipe, seed: int) -> Image.Image:
    from diffusers_lumina_mgpt.shapes.task_eval import replay
    from diffusers_lumina_mgpt.shapes.tasks import make_records

    rows = []
    for task in TASKS:
        rec = make_records(task, 1, seed=seed + 3)[0]
        outputs = replay(pipe, rec, seed, 1.0, None)
        row = [label(rec.images[0], f"{task}: input")]
        for i, o in enumerate(outputs):
            if isinstance(o, str):
                text = Image.new("RGB", (240, 64), (255, 255, 255))
                ImageDraw.Draw(text).multiline_text((2, 2), "\n".join(o[k:k + 38] for k in range(0, len(o), 38))[:200],
                                                    fill=(0, 0, 0))
                row.append(text)
            else:
                row.append(label(o, f"answer {i + 1}"))
        rows.append(row)
    return grid(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--run", help="the training run folder (for the loss curves)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=200, help="prompts per family")
    parser.add_argument("--n-tasks", type=int, default=100, help="records per Omni task")
    parser.add_argument("--n-sweep", type=int, default=20, help="prompts per family in the sampling sweep")
    parser.add_argument("--n-conditioning", type=int, default=32, help="64x64 records for the caption-loss part")
    parser.add_argument("--n-jacobi", type=int, default=20, help="prompts per family for AR vs Jacobi")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--image-top-k", type=int, help="default: the pipeline's scheduler config")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--n-relations", type=int, default=40, help="position scenes per axis for the relation part")
    parser.add_argument("--parts", nargs="+", default=["conditioning", "t2i", "tasks", "jacobi", "pictures"],
                        choices=["conditioning", "relations", "sweep", "t2i", "tasks", "jacobi", "pictures"])
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from diffusers_lumina_mgpt import LuminaMGPTEditPipeline, LuminaMGPTPipeline

    pipe = LuminaMGPTEditPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    t2i = LuminaMGPTPipeline.from_pipe(pipe)
    t2i.set_progress_bar_config(disable=True)
    path = out / "scores.json"
    scores = json.loads(path.read_text()) if path.is_file() else {}
    top_k = args.image_top_k if args.image_top_k is not None else pipe.scheduler.config.image_top_k
    sampling = {"guidance_scale": args.guidance, "image_top_k": top_k}
    # merged with the settings of parts run earlier into the same OUT, recording the sizes only of the parts run now
    size_arg = {"conditioning": "n_conditioning", "relations": "n_relations", "sweep": "n_sweep", "t2i": "n",
                "tasks": "n_tasks", "jacobi": "n_jacobi"}
    scores["settings"] = {**scores.get("settings", {}), "seed": args.seed, **sampling, "threads": torch.get_num_threads(),
                          **{size_arg[p]: getattr(args, size_arg[p]) for p in args.parts if p in size_arg}}
    if "conditioning" in args.parts:
        scores["conditioning"] = conditioning(pipe, args.n_conditioning, args.seed)
        path.write_text(json.dumps(scores, indent=1))
    if "relations" in args.parts:
        scores["relations"] = relations(pipe, args.n_relations, args.seed)
        path.write_text(json.dumps(scores, indent=1))
    if "sweep" in args.parts:
        scores["sweep"] = sweep(args.model, args.n_sweep, args.seed, args.batch)
        path.write_text(json.dumps(scores, indent=1))
    if "t2i" in args.parts:
        scores["t2i"] = t2i_scores(args.model, args.n, args.seed, sampling, args.batch)
        path.write_text(json.dumps(scores, indent=1))
    if "tasks" in args.parts:
        # the Omni tasks sample at the edit pipeline's defaults, not at the text-to-image settings above
        scores["settings"]["tasks_sampling"] = {"guidance_scale": 1.0, "image_top_k": pipe.edit_image_top_k}
        scores["tasks"] = task_scores(pipe, args.n_tasks, args.seed)
        path.write_text(json.dumps(scores, indent=1))
    if "jacobi" in args.parts:
        scores["jacobi_vs_ar"] = jacobi_vs_ar(t2i, args.n_jacobi, args.seed, sampling)
        path.write_text(json.dumps(scores, indent=1))
    if "pictures" in args.parts:
        t2i_grid(t2i, sampling, args.seed).save(out / "t2i-grid.png")
        tasks_grid(pipe, args.seed).save(out / "tasks-grid.png")
        if args.run:
            from diffusers_lumina_mgpt.training.plot import plot_run

            plot_run(args.run, out / "loss.png")


if __name__ == "__main__":
    main()
