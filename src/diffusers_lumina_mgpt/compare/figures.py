"""The report's pictures: an image grid (rows = prompts, columns = runs) and quality against time."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .summary import run_key

CELL = 96  # grid cell height in pixels
MAX_GRID_ROWS = 32
LABEL_WIDTH = 200
HEADER_HEIGHT = 40


def run_label(pipeline: str, sweep_value: Any, knob: str | None) -> str:
    return pipeline if sweep_value is None or knob is None else f"{pipeline} {knob}={sweep_value}"


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _draw_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width_chars: int, lines: int) -> None:
    wrapped = textwrap.wrap(text, width_chars) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: max(0, width_chars - 3)] + "..."
    draw.multiline_text(xy, "\n".join(wrapped), fill=(20, 20, 20), font=_font(), spacing=2)


def image_grid(results: dict[str, Any], out: str | Path, path: str | Path) -> Path | None:
    """Rows: the prompts (first seed, first size; at most MAX_GRID_ROWS); columns: the runs (a pipeline
    at a sweep value). A failed cell is grey with "error". None when there is nothing to show."""
    out = Path(out)
    settings = results["settings"]
    seed, size = settings["seeds"][0], settings["sizes"][0]
    knob = (settings["sweep"] or {}).get("knob")
    cells: dict[tuple[int, tuple[str, str]], dict[str, Any]] = {}
    columns: dict[tuple[str, str], str] = {}
    prompts: dict[int, str] = {}
    for r in results["records"]:
        if r["seed"] != seed or [r["width"], r["height"]] != size:
            continue
        key = run_key(r)
        columns.setdefault(key, run_label(r["pipeline"], r["sweep_value"], knob))
        prompts.setdefault(r["prompt_index"], r["prompt"])
        cells[(r["prompt_index"], key)] = r
    rows = sorted(prompts)[:MAX_GRID_ROWS]
    if not rows or not columns:
        return None
    w, h = size
    cell_w = max(CELL, round(CELL * w / h)) if h else CELL
    cell_h = CELL if w <= h else max(1, round(cell_w * h / w))
    grid = Image.new("RGB", (LABEL_WIDTH + cell_w * len(columns) + 4, HEADER_HEIGHT + (cell_h + 4) * len(rows) + 4),
                     (245, 245, 245))
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(columns.values()):
        _draw_text(draw, (LABEL_WIDTH + c * cell_w + 4, 4), label, max(8, cell_w // 7), 2)
    for row, index in enumerate(rows):
        y = HEADER_HEIGHT + row * (cell_h + 4)
        _draw_text(draw, (4, y + 2), prompts[index], LABEL_WIDTH // 7, max(1, cell_h // 16))
        for c, key in enumerate(columns):
            x = LABEL_WIDTH + c * cell_w + 2
            record = cells.get((index, key))
            if record is not None and record["image"] and (out / record["image"]).is_file():
                with Image.open(out / record["image"]) as im:
                    grid.paste(im.convert("RGB").resize((cell_w - 4, cell_h), Image.NEAREST), (x, y))
            else:
                draw.rectangle([x, y, x + cell_w - 5, y + cell_h - 1], fill=(190, 190, 190))
                draw.text((x + 6, y + cell_h // 2 - 6), "error", fill=(120, 0, 0), font=_font())
    path = Path(path)
    grid.save(path)
    return path


def quality_metric(results: dict[str, Any]) -> tuple[str, str] | None:
    """(summary field, axis label) of the quality the plot shows: ShapesWorld accuracy, else CLIP score."""
    summary = results["summary"]
    if any(s["shapes"] and s["shapes"]["overall"] is not None for s in summary):
        return "shapes", "ShapesWorld accuracy (GenEval overall)"
    if any(s["clip_score"] is not None for s in summary):
        return "clip_score", "CLIP score"
    return None


def _quality(entry: dict[str, Any], field: str) -> float | None:
    if field == "shapes":
        return entry["shapes"]["overall"] if entry["shapes"] else None
    return entry[field]


def quality_vs_time(results: dict[str, Any], path: str | Path) -> tuple[Path | None, str | None]:
    """Quality against mean seconds per image, one line per pipeline through its sweep values.
    Returns (path, None), or (None, why the plot was skipped)."""
    metric = quality_metric(results)
    if metric is None:
        return None, "no quality figure to plot: use --prompts shapes or pass --clip-model DIR"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, "matplotlib is not installed (pip install matplotlib)"
    field, label = metric
    knob = (results["settings"]["sweep"] or {}).get("knob")
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    plotted = 0
    for name in dict.fromkeys(s["pipeline"] for s in results["summary"]):
        points = sorted(((s["mean_seconds"], _quality(s, field), s["sweep_value"]) for s in results["summary"]
                         if s["pipeline"] == name and s["mean_seconds"] is not None
                         and _quality(s, field) is not None), key=lambda p: p[0])
        if not points:
            continue
        xs, ys, _ = zip(*points)
        ax.plot(xs, ys, marker="o", label=name)
        plotted += 1
        for x, y, v in points:
            if v is not None and knob:
                ax.annotate(f"{knob}={v}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if not plotted:
        plt.close(fig)
        return None, "no run produced an image with a quality figure"
    ax.set_xlabel("mean seconds per image")
    ax.set_ylabel(label)
    if field == "shapes":
        ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path), None
