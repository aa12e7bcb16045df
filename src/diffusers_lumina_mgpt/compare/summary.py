"""Per-run figures (a run: one pipeline at one sweep value) from the per-image records."""

from __future__ import annotations

from typing import Any


def run_key(record: dict[str, Any]) -> tuple[str, str]:
    return record["pipeline"], repr(record["sweep_value"])


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize_runs(records: list[dict[str, Any]], pipelines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (pipeline, sweep value), in record order. Means are over the images generated
    (failed calls are counted in `errors`, not in the means); ShapesWorld accuracy is GenEval's:
    `overall` is the mean of the per-family accuracies of in-distribution prompts, held-out
    colour-shape prompts are reported apart."""
    from ..shapes.evaluate import summarize

    params = {p["name"]: p["parameters"] for p in pipelines}
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        runs.setdefault(run_key(r), []).append(r)
    out = []
    for rows in runs.values():
        done = [r for r in rows if r["error"] is None]
        forwards = [r["forward_passes"] for r in done if r["forward_passes"] is not None]
        memory = [r["peak_memory_bytes"] for r in done if r["peak_memory_bytes"] is not None]
        shaped = [r for r in done if r["shapes_passed"] is not None]
        shapes = None
        if shaped:
            s = summarize([{"family": r["family"], "split": r["split"], "passed": r["shapes_passed"]} for r in shaped])
            has_train = any(r["split"] == "train" for r in shaped)
            shapes = {"overall": s["overall"] if has_train else None, "families": s["families"],
                      "heldout": {"overall": s["heldout"]["overall"], "families": s["heldout"]["families"]}}
        clips = [r["clip_score"] for r in done if r["clip_score"] is not None]
        out.append({
            "pipeline": rows[0]["pipeline"], "sweep_value": rows[0]["sweep_value"], "images": len(done),
            "errors": len(rows) - len(done), "mean_seconds": _mean([r["seconds"] for r in done]),
            "mean_forward_passes": _mean(forwards) if len(forwards) == len(done) else None,
            "peak_memory_bytes": max(memory) if memory else None, "parameters": params.get(rows[0]["pipeline"]),
            "shapes": shapes, "clip_score": _mean(clips),
        })
    return out
