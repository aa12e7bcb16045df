"""Scores of the ShapesWorld Omni tasks (caption, VQA, edit, multi-turn edit, segmentation, depth, no-edit
denoising) for a `LuminaMGPTEditPipeline`.

Each record of `shapes.tasks` is replayed turn by turn: a gpt turn that is text is answered with
`pipe.chat` (text only), one that is an image with `pipe(...)` (the answer's size forced to the input's
bucket); later turns see the model's own earlier answers, as a user would. Every answer is judged by
the record's ground truth (`TaskRecord.score`). No-edit denoising also reports the PSNR to the clean
render of the regenerated image and of the plain VQ round trip of the degraded input.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .tasks import IMAGE, TASKS, TaskRecord, make_records

TASK_METRICS = {"caption": "exact", "vqa": "exact", "edit": "success", "multiedit": "success",
                "segmentation": "miou", "depth": "order_accuracy", "noedit": "success", "t2i": "success"}


def _turn_inputs(rec: TaskRecord) -> list[tuple[str, list[Any], bool]]:
    """Per human turn: its text without placeholders, its images, and whether the answer is an image."""
    out, seen = [], 0
    conv = rec.conversations
    for i in range(0, len(conv), 2):
        human, gpt = conv[i]["value"], conv[i + 1]["value"]
        count = human.count(IMAGE)
        images = rec.images[seen:seen + count]
        seen += count + gpt.count(IMAGE)
        out.append((human.replace(f" {IMAGE}", "").replace(IMAGE, "").strip(), images, IMAGE in gpt))
    return out


def replay(pipe: Any, rec: TaskRecord, seed: int, guidance_scale: float, image_top_k: int | None,
           text_top_k: int | None = 1) -> list[Any]:
    """The model's output for every gpt turn of `rec`."""
    import torch

    history, outputs = None, []
    generator = torch.Generator().manual_seed(seed)
    for text, images, image_answer in _turn_inputs(rec):
        if image_answer:
            out = pipe(image=images or None, prompt=text, task="edit", history=history, generator=generator,
                       guidance_scale=guidance_scale, image_top_k=image_top_k)
            outputs.append(out.images[0])
            history = out.histories[0]
        else:
            message = text + "".join(f" {IMAGE}" for _ in images)
            out = pipe.chat(message, images=images or None, history=history, allow_images=False,
                            text_top_k=text_top_k, generator=generator, max_new_tokens=64)
            outputs.append(out.text)
            history = out.history
    return outputs


def evaluate_tasks(pipe: Any, tasks: Iterable[str], n: int, seed: int = 0, guidance_scale: float = 1.0,
                   image_top_k: int | None = None, progress: bool = True, split: str = "train",
                   image_dir: str | None = None) -> dict[str, Any]:
    """Replay `n` records per task (drawn with `seed`, from `split`) and aggregate their scores."""
    from tqdm.auto import tqdm

    result: dict[str, Any] = {}
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
        records = make_records(task, n, seed=seed + 7919, split=split)  # not the training stream's seeds
        turns, passed, scores, records_ok, psnr_model, psnr_vq, kinds = [], [], [], [], [], [], []
        for k, rec in enumerate(tqdm(records, desc=f"eval {task}", disable=not progress)):
            outputs = replay(pipe, rec, seed + k, guidance_scale, image_top_k)
            judged = rec.score(outputs)
            passed += [s.passed for s in judged]
            scores += [s.score for s in judged]
            turns += list(range(1, len(judged) + 1))
            kinds += [t.get("question_kind", t.get("edit_kind")) for t in rec.targets]
            records_ok.append(all(s.passed for s in judged))
            if image_dir is not None:
                _save(image_dir, task, k, rec, outputs)
            if task == "noedit":
                from ..pipelines.edit import psnr

                clean = rec.images[1]
                psnr_model.append(psnr(outputs[0].resize(clean.size), clean))
                psnr_vq.append(psnr(pipe.reconstruct(rec.images[0])[0].resize(clean.size), clean))
        row = {"metric": TASK_METRICS[task], "records": len(records), "turns": len(passed),
               "turn_pass_rate": float(np.mean(passed)), "record_pass_rate": float(np.mean(records_ok)),
               "mean_score": float(np.mean(scores))}
        if task == "multiedit":
            row["pass_rate_by_turn"] = {str(t): float(np.mean([p for p, tt in zip(passed, turns) if tt == t]))
                                        for t in sorted(set(turns))}
        if any(k is not None for k in kinds):  # VQA by question kind, edits by edit kind
            row["pass_rate_by_kind"] = {k: {"turns": kinds.count(k), "pass_rate": float(np.mean(
                [p for p, kk in zip(passed, kinds) if kk == k]))} for k in sorted(set(kinds))}
        if task == "noedit":
            row["psnr_regenerated"] = float(np.mean(psnr_model))
            row["psnr_vq_round_trip"] = float(np.mean(psnr_vq))
        result[task] = row
    return result


def _save(folder: str, task: str, k: int, rec: TaskRecord, outputs: list[Any]) -> None:
    from pathlib import Path

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(rec.images):
        image.save(out / f"{task}_{k:04d}_input{i}.png")
    for i, o in enumerate(outputs):
        if isinstance(o, str):
            (out / f"{task}_{k:04d}_answer{i}.txt").write_text(o)
        else:
            o.save(out / f"{task}_{k:04d}_answer{i}.png")


__all__ = ["TASK_METRICS", "evaluate_tasks", "replay"]
