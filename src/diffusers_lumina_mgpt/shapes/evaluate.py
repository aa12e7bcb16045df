"""ShapesWorld evaluation: GenEval-style prompt scores for any text-to-image pipeline, the scorer's
own accuracy on ground truth, and how often it accepts wrong images.

`evaluate_shapes` is what `lumina-mgpt eval shapes` runs. Generating needs torch/diffusers, which
are imported only inside the functions that load or call a pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .language import FAMILIES, HELDOUT_FAMILIES, PromptSpec, make_prompt
from .render import render_scene
from .scene import COLORS, SHAPES, Scene, ShapeObject, boxes_clear, place_object, sample_scene
from .scorer import check_spec, detect, scene_satisfies
from .tasks import TASKS, make_records, scene_for_prompt


@dataclass(frozen=True)
class PromptItem:
    """One evaluation prompt; `seed` seeds both the generator and its ground-truth render."""

    spec: PromptSpec
    split: str  # "train" (in-distribution colour-shape pairs) or "heldout"
    seed: int


def check_families(families: Iterable[str] | None) -> list[str]:
    chosen = list(families) if families else list(FAMILIES)
    unknown = [f for f in chosen if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown famil{'ies' if len(unknown) > 1 else 'y'} {unknown}; choose from {', '.join(FAMILIES)}")
    return chosen


def make_prompt_items(families: Iterable[str] | None, n: int, seed: int, heldout: bool = True) -> list[PromptItem]:
    """`n` prompts per family (plus `n` held-out prompts per colour family), each seeded by
    (seed, family, index) so a family's prompts do not depend on which other families are chosen."""
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    items = []
    for family in check_families(families):
        fam = FAMILIES.index(family)
        splits = ["train", "heldout"] if heldout and family in HELDOUT_FAMILIES else ["train"]
        for s, split in enumerate(splits):
            for i in range(n):
                rng = np.random.default_rng([seed, fam, s, i])
                items.append(PromptItem(make_prompt(family, rng, split), split, int(rng.integers(2**31 - 1))))
    return items


def ground_truth_generator(size: tuple[int, int]) -> Callable[[list[PromptItem]], list[Image.Image]]:
    """Renders a scene laid out for each prompt: what a perfect generator would draw."""
    def generate(items: list[PromptItem]) -> list[Image.Image]:
        return [render_scene(scene_for_prompt(item.spec, np.random.default_rng(item.seed), size, item.split))
                for item in items]
    return generate


def load_pipeline(model_dir: str | Path, device: str | None = None, dtype: str | None = None) -> Any:
    """A pipeline folder: a `diffusers_lumina_mgpt` class if model_index.json names one, else any diffusers pipeline."""
    import torch

    from ..default_model import pipeline_class_name, pipeline_folder

    path = pipeline_folder(model_dir)
    name = pipeline_class_name(path)
    import diffusers_lumina_mgpt

    try:
        cls = getattr(diffusers_lumina_mgpt, str(name), None)
    except ImportError as err:
        raise ValueError(f"{path} needs {name}, which this install cannot import ({err})") from err
    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    if cls is None:
        from diffusers import DiffusionPipeline

        cls = DiffusionPipeline
    pipe = cls.from_pretrained(str(path), **kwargs)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = pipe.to(device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_generator(pipe: Any, size: tuple[int, int], call_kwargs: dict[str, Any] | None = None,
                       device: str | None = None) -> Callable[[list[PromptItem]], list[Image.Image]]:
    """Calls `pipe(prompts, height=, width=, generator=[...], output_type="pil")` on a batch of prompts,
    with one generator seeded per prompt (the diffusers convention for a list of generators)."""
    import torch

    from ..cli_checks import check_call_kwargs

    check_call_kwargs(pipe, call_kwargs or {})
    width, height = size
    device = device or str(getattr(pipe, "device", "cpu"))

    def generate(items: list[PromptItem]) -> list[Image.Image]:
        generators = [torch.Generator(device=device).manual_seed(item.seed) for item in items]
        prompts = [item.spec.text for item in items]
        out = pipe(prompts if len(prompts) > 1 else prompts[0], height=height, width=width,
                   generator=generators if len(generators) > 1 else generators[0], output_type="pil",
                   **(call_kwargs or {}))
        return list(out.images)
    return generate


def evaluate_prompts(generate: Callable[[list[PromptItem]], list[Image.Image]], items: list[PromptItem],
                     progress: bool = True, image_dir: str | Path | None = None, batch_size: int = 1) -> dict[str, Any]:
    """Generate (`batch_size` prompts per call) and score every prompt. GenEval overall = mean of
    per-family accuracies; held-out prompts are reported separately and never enter `overall`/`families`."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    rows = []
    bar = tqdm(total=len(items), desc="shapes eval", disable=not progress)
    images: list[Image.Image] = []
    for start in range(0, len(items), batch_size):
        images += generate(items[start:start + batch_size])
        bar.update(min(batch_size, len(items) - start))
    bar.close()
    for k, (item, image) in enumerate(zip(items, images)):
        if image_dir is not None:
            Path(image_dir).mkdir(parents=True, exist_ok=True)
            image.save(Path(image_dir) / f"{k:05d}_{item.spec.family}_{item.split}.png")
        passed, reason = check_spec(item.spec, detect(image).objects)
        rows.append({"family": item.spec.family, "split": item.split, "prompt": item.spec.text,
                     "seed": item.seed, "passed": passed, "reason": reason})
    return summarize(rows)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def table(split: str) -> dict[str, float]:
        fams: dict[str, list[bool]] = {}
        for r in rows:
            if r["split"] == split:
                fams.setdefault(r["family"], []).append(r["passed"])
        return {f: float(np.mean(v)) for f, v in fams.items()}

    families, held = table("train"), table("heldout")
    return {"overall": float(np.mean(list(families.values()))) if families else 0.0, "families": families,
            "heldout": {"overall": float(np.mean(list(held.values()))) if held else None, "families": held},
            "prompts": rows}


def evaluate_shapes(model: str | Path | None, n: int = 10, seed: int = 0, families: Iterable[str] | None = None,
                    size: tuple[int, int] = (64, 64), ground_truth: bool = False, device: str | None = None,
                    dtype: str | None = None, call_kwargs: dict[str, Any] | None = None, progress: bool = True,
                    image_dir: str | Path | None = None, batch_size: int = 1) -> dict[str, Any]:
    """Per-family ShapesWorld scores of a pipeline folder (or of the ground-truth renders)."""
    items = make_prompt_items(families, n, seed)
    if ground_truth:
        generate, source = ground_truth_generator(size), "ground-truth renders"
    else:
        from ..default_model import resolve_model

        model = resolve_model(model)
        pipe = load_pipeline(model, device, dtype)
        generate, source = pipeline_generator(pipe, size, call_kwargs, device), str(model)
    result = evaluate_prompts(generate, items, progress, image_dir, batch_size)
    # the sampling arguments every call got (none for the ground-truth renders), beside the scores they produced
    used = {} if ground_truth else dict(call_kwargs or {})
    return {**result, "model": source, "n": n, "seed": seed, "size": list(size), "call_kwargs": used}


# ----------------------------------------------------------------------------- scorer calibration
def task_ground_truth_accuracy(n: int, seed: int = 0, tasks: Iterable[str] | None = None,
                               split: str = "all") -> dict[str, dict[str, float]]:
    """Per task: fraction of gpt turns whose ground-truth output passes, and the mean score."""
    out = {}
    for k, task in enumerate(tasks or TASKS):
        scores = [s for r in make_records(task, n, seed + k, split) for s in r.score(r.ground_truth_outputs())]
        out[task] = {"accuracy": float(np.mean([s.passed for s in scores])),
                     "score": float(np.mean([s.score for s in scores])), "turns": len(scores)}
    return out


def false_accept_study(n: int, seed: int = 0, families: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
    """Random scenes against unrelated prompts, per family. `chance_accept`: how often the scorer
    passes the pair; `wrong`: pairs whose scene truly violates the prompt; `false_accept`: passes
    among those; `agreement`: scorer verdict == symbolic verdict."""
    out = {}
    for f, family in enumerate(check_families(families)):
        rng = np.random.default_rng([seed, f])
        verdicts, truths = [], []
        for _ in range(n):
            spec = make_prompt(family, rng, "train")
            scene = sample_scene(rng, split="all")
            verdicts.append(check_spec(spec, detect(render_scene(scene)).objects)[0])
            truths.append(scene_satisfies(spec, scene))
        v, t = np.array(verdicts), np.array(truths)
        out[family] = {"pairs": n, "chance_accept": float(v.mean()), "wrong": int((~t).sum()),
                       "false_accept": float(v[~t].mean()) if (~t).any() else 0.0, "agreement": float((v == t).mean())}
    return out


def perturb(scene: Scene, spec: PromptSpec, rng: np.random.Generator) -> Scene | None:
    """A minimally changed scene that no longer satisfies `spec` (one attribute, object or position), or None."""
    for _ in range(30):
        objs = list(scene.objects)
        i = int(rng.integers(len(objs)))
        o = objs[i]
        kind = str(rng.choice(["shape", "color", "remove", "add", "swap"]))
        if kind == "shape":
            objs[i] = ShapeObject(str(rng.choice([s for s in SHAPES if s != o.shape])), o.color, o.x, o.y, o.size)
        elif kind == "color":
            objs[i] = ShapeObject(o.shape, str(rng.choice([c for c in COLORS if c != o.color])), o.x, o.y, o.size)
        elif kind == "remove":
            del objs[i]
        elif kind == "add":
            new = place_object(rng, scene, str(rng.choice(SHAPES)), str(rng.choice(COLORS)))
            if new is None:
                continue
            objs.append(new)
        elif len(objs) >= 2:  # swap the centres of two objects
            j = (i + 1 + int(rng.integers(len(objs) - 1))) % len(objs)
            p = objs[j]
            a = ShapeObject(o.shape, o.color, int(round(p.cx - o.size / 2)), int(round(p.cy - o.size / 2)), o.size)
            b = ShapeObject(p.shape, p.color, int(round(o.cx - p.size / 2)), int(round(o.cy - p.size / 2)), p.size)
            objs[i], objs[j] = a, b
            inside = all(0 < q.x and 0 < q.y and q.x + q.size < scene.width and q.y + q.size < scene.height for q in objs)
            if not inside or not all(boxes_clear(q.box, r.box) for k, q in enumerate(objs) for r in objs[k + 1:]):
                continue
        else:
            continue
        new_scene = scene.replace_objects(objs)
        if not scene_satisfies(spec, new_scene):
            return new_scene
    return None


def near_miss_study(n: int, seed: int = 0, families: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
    """Ground-truth scenes for prompts, minimally perturbed so they violate them: how often the scorer
    still passes them (`false_accept`), per family."""
    out = {}
    for f, family in enumerate(check_families(families)):
        rng = np.random.default_rng([seed, 100 + f])
        accepted = []
        while len(accepted) < n:
            spec = make_prompt(family, rng, "all")
            wrong = perturb(scene_for_prompt(spec, rng, split="all"), spec, rng)
            if wrong is not None:
                accepted.append(check_spec(spec, detect(render_scene(wrong)).objects)[0])
        out[family] = {"pairs": n, "false_accept": float(np.mean(accepted))}
    return out


def cross_task_study(n: int, seed: int = 0, tasks: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
    """Per task with image or caption outputs: how often record i's ground-truth output passes
    record i+1's target (an unrelated scene)."""
    out = {}
    for k, task in enumerate(tasks or [t for t in TASKS if t != "vqa"]):
        records = make_records(task, n + 1, seed + 1000 + k, "all")
        passes = [s.passed for a, b in zip(records[:-1], records[1:])
                  for s in b.score(a.ground_truth_outputs()[: 1] * len(b.targets))]
        out[task] = {"pairs": len(passes), "false_accept": float(np.mean(passes))}
    return out
