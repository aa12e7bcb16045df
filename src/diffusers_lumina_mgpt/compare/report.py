"""`report.md`: the settings, a summary table per run, ShapesWorld accuracy per family, the pictures
and every error, written beside results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .figures import image_grid, quality_vs_time, run_label

GRID_FILE, PLOT_FILE = "grid.png", "quality_vs_time.png"
MEASURES_NOTE = (
    "Seconds, forwards and memory are per image (means over the images made; failed calls count only as "
    "errors). Forwards: transformer forwards for Lumina-mGPT (`num_forward_passes`), denoiser calls for "
    "diffusion pipelines (a CFG-batched call counts once). Peak memory: process peak RSS on CPU, "
    "`torch.cuda.max_memory_allocated` on GPU. See docs/ar-vs-diffusion.md."
)
OVERALL_NOTE = ("`overall` is GenEval's: the mean of the per-family accuracies of in-distribution prompts; "
                "`held-out` scores colour-shape pairs training never sees.")


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f} MiB"


def _params(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.2f} M"


SUMMARY_HEAD = ("run", "kind", "images", "errors", "s / image", "forwards / image", "peak memory", "parameters",
                "ShapesWorld", "CLIP score")


def _row(cells: list[str] | tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"


def summary_table(results: dict[str, Any]) -> list[str]:
    knob = (results["settings"]["sweep"] or {}).get("knob")
    kinds = {p["name"]: p["kind"] or "-" for p in results["pipelines"]}
    lines = [_row(SUMMARY_HEAD), "|" + "---|" * len(SUMMARY_HEAD)]
    for s in results["summary"]:
        shapes = s["shapes"]["overall"] if s["shapes"] else None
        lines.append(_row([run_label(s["pipeline"], s["sweep_value"], knob), kinds.get(s["pipeline"], "-"),
                           str(s["images"]), str(s["errors"]), _num(s["mean_seconds"]),
                           _num(s["mean_forward_passes"], ".1f"), _mib(s["peak_memory_bytes"]),
                           _params(s["parameters"]), _num(shapes), _num(s["clip_score"], ".2f")]))
    return lines


def family_table(results: dict[str, Any]) -> list[str]:
    """ShapesWorld accuracy per family (and held-out colour-shape pairs), one row per run."""
    runs = [s for s in results["summary"] if s["shapes"]]
    if not runs:
        return []
    families = list(dict.fromkeys(f for s in runs for f in s["shapes"]["families"]))
    held = any(s["shapes"]["heldout"]["overall"] is not None for s in runs)
    knob = (results["settings"]["sweep"] or {}).get("knob")
    head = ["run", *families, "overall", *(["held-out"] if held else [])]
    lines = [_row(head), "|" + "---|" * len(head)]
    for s in runs:
        sh = s["shapes"]
        cells = [run_label(s["pipeline"], s["sweep_value"], knob), *(_num(sh["families"].get(f)) for f in families),
                 _num(sh["overall"]), *([_num(sh["heldout"]["overall"])] if held else [])]
        lines.append(_row(cells))
    return lines


def size_table(results: dict[str, Any]) -> list[str]:
    """Seconds per image and ShapesWorld accuracy at each size, one row per run (only with several sizes)."""
    sizes = [tuple(s) for s in results["settings"]["sizes"]]
    if len(sizes) < 2:
        return []
    knob = (results["settings"]["sweep"] or {}).get("knob")
    scored = any(e["shapes_overall"] is not None for s in results["summary"] for e in s["sizes"])
    head = ["run", *(f"{w}x{h} {what}" for w, h in sizes for what in (("accuracy", "s / image") if scored
                                                                       else ("s / image",)))]
    lines = [_row(head), "|" + "---|" * len(head)]
    for s in results["summary"]:
        at = {tuple(e["size"]): e for e in s["sizes"]}
        cells = [run_label(s["pipeline"], s["sweep_value"], knob)]
        for size in sizes:
            e = at.get(size)
            if scored:
                cells.append(_num(e["shapes_overall"] if e else None))
            cells.append(_num(e["mean_seconds"] if e else None))
        lines.append(_row(cells))
    return lines


def error_lines(results: dict[str, Any]) -> list[str]:
    """One line per distinct error of a pipeline (with how many images it cost)."""
    seen: dict[tuple[str, str, str], int] = {}
    for p in results["pipelines"]:
        if p["error"]:
            seen.setdefault((p["name"], p["error"]["type"], p["error"]["message"]), 0)
    for r in results["records"]:
        if r["error"]:
            key = (r["pipeline"], r["error"]["type"], r["error"]["message"])
            seen[key] = seen.get(key, 0) + 1
    return [f"- **{name}** ({count} image{'s' if count != 1 else ''}): `` {kind}: {message} ``"
            for (name, kind, message), count in seen.items()]


def write_report(out: str | Path, results: dict[str, Any]) -> Path:
    out = Path(out)
    st = results["settings"]
    sweep = st["sweep"]
    grid = image_grid(results, out, out / GRID_FILE)
    plot, skipped = quality_vs_time(results, out / PLOT_FILE)
    if plot is None and (out / PLOT_FILE).exists():
        (out / PLOT_FILE).unlink()  # an earlier run's plot would not describe these results
    sizes = " ".join(f"{w}x{h}" for w, h in st["sizes"])
    per_family = f" ({st['n']} per family)" if st["prompts"] == "shapes" and st["n"] else ""
    dtype = f"; dtype: {st['dtype']}" if st["dtype"] else ""
    swept = f"{sweep['knob']} = {', '.join(map(str, sweep['values']))}" if sweep else "none"
    call_args = ", ".join(f"{k}={v}" for k, v in st["call_args"].items()) or "none"
    own = [f"{p['name']}: " + ", ".join(f"{k}={v}" for k, v in p["call_args"].items())
           for p in results["pipelines"] if p["call_args"]]
    lines = [
        "# Text-to-image comparison", "",
        (f"Written by `lumina-mgpt compare` at {results['created']} "
         f"(results.json schema version {results['schema_version']})."), "",
        f"- prompts: `{st['prompts']}`{per_family}",
        (f"- seeds: {' '.join(map(str, st['seeds']))}; sizes: {sizes}; device: {st['device']}{dtype}; "
         f"processes: {st['num_processes']}; warm-up calls per run: {st['warmup']}"),
        f"- sweep: {swept}",
        f"- call arguments: {call_args}; CLIP model: {st['clip_model'] or 'none'}",
        *([f"- call arguments of one pipeline: {'; '.join(own)}"] if own else []), "",
        "## Summary", "", *summary_table(results), "", MEASURES_NOTE, "",
    ]
    families = family_table(results)
    if families:
        lines += ["## ShapesWorld accuracy per family", "", *families, "", OVERALL_NOTE, ""]
    per_size = size_table(results)
    if per_size:
        lines += ["## Per image size", "", *per_size, ""]
    first = f"seed {st['seeds'][0]}, {st['sizes'][0][0]}x{st['sizes'][0][1]}"
    lines += ["## Images", ""]
    if grid:
        lines += [f"![image grid]({GRID_FILE})", "", f"Rows: prompts ({first}); columns: runs.", ""]
    else:
        lines += ["No image was generated.", ""]
    lines += ["## Quality vs time", ""]
    lines += [f"![quality vs time]({PLOT_FILE})", ""] if plot else [f"Plot skipped: {skipped}.", ""]
    errors = error_lines(results)
    lines += ["## Errors", "", *(errors or ["None."]), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
