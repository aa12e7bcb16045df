"""`report.md`: the settings, a summary table per run, ShapesWorld accuracy per family, the pictures
and every error, written beside results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .figures import image_grid, quality_vs_time, run_label

GRID_FILE, PLOT_FILE = "grid.png", "quality_vs_time.png"


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f} MiB"


def _params(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.2f} M"


def summary_table(results: dict[str, Any]) -> list[str]:
    knob = (results["settings"]["sweep"] or {}).get("knob")
    kinds = {p["name"]: p["kind"] or "-" for p in results["pipelines"]}
    lines = ["| run | kind | images | errors | s / image | forwards / image | peak memory | parameters | "
             "ShapesWorld | CLIP score |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in results["summary"]:
        shapes = s["shapes"]["overall"] if s["shapes"] else None
        lines.append(f"| {run_label(s['pipeline'], s['sweep_value'], knob)} | {kinds.get(s['pipeline'], '-')} | "
                     f"{s['images']} | {s['errors']} | {_num(s['mean_seconds'])} | {_num(s['mean_forward_passes'], '.1f')} | "
                     f"{_mib(s['peak_memory_bytes'])} | {_params(s['parameters'])} | {_num(shapes)} | "
                     f"{_num(s['clip_score'], '.2f')} |")
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
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in runs:
        sh = s["shapes"]
        cells = [run_label(s["pipeline"], s["sweep_value"], knob), *(_num(sh["families"].get(f)) for f in families),
                 _num(sh["overall"]), *([_num(sh["heldout"]["overall"])] if held else [])]
        lines.append("| " + " | ".join(cells) + " |")
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
    lines = [
        "# Text-to-image comparison", "",
        f"Written by `lumina-mgpt compare` at {results['created']} (results.json schema version "
        f"{results['schema_version']}).", "",
        f"- prompts: `{st['prompts']}`" + (f" ({st['n']} per family)" if st["prompts"] == "shapes" and st["n"] else ""),
        f"- seeds: {' '.join(map(str, st['seeds']))}; sizes: {sizes}; device: {st['device']}"
        f"{'; dtype: ' + st['dtype'] if st['dtype'] else ''}; processes: {st['num_processes']}; "
        f"warm-up calls per run: {st['warmup']}",
        f"- sweep: {sweep['knob']} = {', '.join(map(str, sweep['values']))}" if sweep else "- sweep: none",
        f"- call arguments: {st['call_args'] or 'none'}; CLIP model: {st['clip_model'] or 'none'}", "",
        "## Summary", "",
        *summary_table(results), "",
        "Seconds, forwards and memory are per image (means over the images made; failed calls count only "
        "as errors). Forwards: transformer forwards for Lumina-mGPT (`num_forward_passes`), denoiser calls "
        "for diffusion pipelines (a CFG-batched call counts once). Peak memory: process peak RSS on CPU, "
        "`torch.cuda.max_memory_allocated` on GPU. See docs/ar-vs-diffusion.md.", "",
    ]
    families = family_table(results)
    if families:
        lines += ["## ShapesWorld accuracy per family", "", *families, "",
                  "`overall` is GenEval's: the mean of the per-family accuracies of in-distribution prompts; "
                  "`held-out` scores colour-shape pairs training never sees.", ""]
    lines += ["## Images", ""]
    lines += [f"![image grid]({GRID_FILE})", "",
              f"Rows: prompts (seed {st['seeds'][0]}, {st['sizes'][0][0]}x{st['sizes'][0][1]}); columns: runs.", ""] \
        if grid else ["No image was generated.", ""]
    lines += ["## Quality vs time", ""]
    lines += [f"![quality vs time]({PLOT_FILE})", ""] if plot else [f"Plot skipped: {skipped}.", ""]
    errors = error_lines(results)
    lines += ["## Errors", "", *(errors or ["None."]), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
