"""GenEval export: images of any text-to-image pipeline folder in the layout of GenEval's
`generation/diffusers_generate.py`, so that GenEval's `evaluation/evaluate_images.py OUT` scores them:

    OUT/{index:05d}/metadata.jsonl        the prompt's metadata line (json.dump of the dict)
    OUT/{index:05d}/samples/{k:05d}.png   sample k of that prompt

Sample k of every prompt is drawn with `torch.Generator().manual_seed(seed + k)`, so the images do not
depend on the batch size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_metadata(path: str | Path) -> list[dict[str, Any]]:
    """GenEval's evaluation_metadata.jsonl: one JSON object with a "prompt" per line (blank lines skipped)."""
    from .prompts import read_jsonl_prompts

    rows = read_jsonl_prompts(path, "--metadata", "pass GenEval's prompts/evaluation_metadata.jsonl, whose lines look "
                              'like {"tag": "single_object", "include": [...], "prompt": "a photo of a bench"}')
    if not rows:
        raise ValueError(f"{path} holds no metadata lines")
    return rows


def export_geneval(metadata: str | Path, model: str | Path, out: str | Path, n_samples: int = 4, seed: int = 0,
                   height: int | None = None, width: int | None = None, batch_size: int = 1,
                   call_kwargs: dict[str, Any] | None = None, device: str | None = None, dtype: str | None = None,
                   progress: bool = True) -> int:
    """Generate `n_samples` images per metadata line with the pipeline folder `model` (ours or any
    diffusers text-to-image pipeline) into GenEval's layout; returns the number of images written."""
    import torch
    from tqdm.auto import tqdm

    from ..cli_checks import check_call_kwargs, check_device, check_output_dir
    from ..shapes.evaluate import load_pipeline

    if n_samples < 1 or batch_size < 1:
        raise ValueError(f"--n-samples and --batch-size must be at least 1, got {n_samples} and {batch_size}")
    rows = read_metadata(metadata)
    out = check_output_dir(out)
    check_device(device)
    pipe = load_pipeline(model, device, dtype)
    device = str(getattr(pipe, "device", device or "cpu"))
    kwargs = dict(call_kwargs or {})
    size = {k: v for k, v in (("height", height), ("width", width)) if v is not None}
    check_call_kwargs(pipe, {**kwargs, **size}, {"height": "--height", "width": "--width"})
    batched = _takes(pipe, "num_images_per_prompt")
    if _takes(pipe, "output_type"):
        kwargs["output_type"] = "pil"
    step = batch_size if batched else 1
    written = 0
    for index, row in enumerate(tqdm(rows, desc="geneval export", disable=not progress)):
        folder = out / f"{index:05d}"
        samples = folder / "samples"
        samples.mkdir(parents=True, exist_ok=True)
        with open(folder / "metadata.jsonl", "w") as fp:
            json.dump(row, fp)  # exactly as GenEval's generation script writes it
        for start in range(0, n_samples, step):
            count = min(step, n_samples - start)
            generators = [torch.Generator(device=device).manual_seed(seed + k) for k in range(start, start + count)]
            extra = {"num_images_per_prompt": count} if batched else {}
            images = pipe(row["prompt"], generator=generators if batched else generators[0], **size, **extra,
                          **kwargs).images
            for k, image in enumerate(images[:count]):
                image.save(samples / f"{start + k:05d}.png")
                written += 1
    return written


def _takes(pipe: Any, name: str) -> bool:
    import inspect

    params = inspect.signature(pipe.__call__).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
