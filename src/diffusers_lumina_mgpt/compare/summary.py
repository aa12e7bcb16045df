"""Per-run figures (a run: one pipeline at one sweep value) from the per-image records."""

from __future__ import annotations

from typing import Any


def run_key(record: dict[str, Any]) -> tuple[str, str]:
    return record["pipeline"], repr(record["sweep_value"])


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _shapes(done: list[dict[str, Any]]) -> dict[str, Any] | None:
    """GenEval's ShapesWorld accuracy of these records (None when no record was scored)."""
    from ..shapes.evaluate import summarize

    shaped = [r for r in done if r["shapes_passed"] is not None]
    if not shaped:
        return None
    s = summarize([{"family": r["family"], "split": r["split"], "passed": r["shapes_passed"]} for r in shaped])
    has_train = any(r["split"] == "train" for r in shaped)
    return {"overall": s["overall"] if has_train else None, "families": s["families"],
            "heldout": {"overall": s["heldout"]["overall"], "families": s["heldout"]["families"]}}


def _per_size(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_size: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in rows:
        by_size.setdefault((r["width"], r["height"]), []).append(r)
    out = []
    for (w, h), group in by_size.items():
        done = [r for r in group if r["error"] is None]
        shapes = _shapes(done)
        out.append({"size": [w, h], "images": len(done), "errors": len(group) - len(done),
                    "mean_seconds": _mean([r["seconds"] for r in done]),
                    "shapes_overall": shapes["overall"] if shapes else None})
    return out


def summarize_runs(records: list[dict[str, Any]], pipelines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (pipeline, sweep value), in record order. Means are over the images generated
    (failed calls are counted in `errors`, not in the means); ShapesWorld accuracy is GenEval's:
    `overall` is the mean of the per-family accuracies of in-distribution prompts, held-out
    colour-shape prompts are reported apart. `sizes` breaks time and accuracy down by image size."""
    params = {p["name"]: p["parameters"] for p in pipelines}
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        runs.setdefault(run_key(r), []).append(r)
    out = []
    for rows in runs.values():
        done = [r for r in rows if r["error"] is None]
        forwards = [r["forward_passes"] for r in done if r["forward_passes"] is not None]
        memory = [r["peak_memory_bytes"] for r in done if r["peak_memory_bytes"] is not None]
        shapes = _shapes(done)
        clips = [r["clip_score"] for r in done if r["clip_score"] is not None]
        out.append({
            "pipeline": rows[0]["pipeline"], "sweep_value": rows[0]["sweep_value"], "images": len(done),
            "errors": len(rows) - len(done), "mean_seconds": _mean([r["seconds"] for r in done]),
            "mean_forward_passes": _mean(forwards) if len(forwards) == len(done) else None,
            "peak_memory_bytes": max(memory) if memory else None, "parameters": params.get(rows[0]["pipeline"]),
            "shapes": shapes, "clip_score": _mean(clips), "sizes": _per_size(rows),
        })
    return out
