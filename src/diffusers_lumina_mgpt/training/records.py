"""Training data in: Lumina-mGPT conversation records, captioned image folders and ShapesWorld tasks.

Every source is cut into numbered chunks of records so pre-tokenisation can run chunks in parallel
and resume chunk by chunk. A source is named by one string:
- `path/to/records.jsonl` or `.json`: Lumina-mGPT records `{"conversations": [...], "image": [...]}`
  (image paths relative to the file's folder);
- `path/to/folder/`: images with same-named `.txt` captions, turned into text-to-image records;
- `shapes:TASK` (TASK one of ShapesWorld's tasks): `n` generated records, deterministic in `seed`;
  `shapes:t2i:FAMILY` (FAMILY one of the scored prompt families, e.g. `position`): text-to-image records
  whose prompts all come from that family; `shapes:vqa:KIND` (KIND one of the question kinds, e.g.
  `exists`): VQA records whose questions are all of that kind. Any of these may end in `@WxH[,WxH...]`
  (sizes among ShapesWorld's buckets, e.g. `shapes:t2i:position@80x48`): pictures of those sizes only, drawn
  evenly; without it each record draws one of the five buckets.
A record that cannot be used becomes a `Skip` with its reason; nothing raises mid-run.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..prompts import IMAGE_PLACEHOLDER, TEXT_TO_IMAGE_TEMPLATE

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# the text-to-image instruction states the output size; it is rewritten to the bucket the image lands in
T2I_SIZE = re.compile(r"^Generate an image of (\d+)x(\d+) according to")

SKIP_REASONS = {
    "empty": "empty conversation",
    "roles": "turns do not alternate human, gpt",
    "placeholders": "placeholder count differs from the image count",
    "missing_image": "image file missing",
    "unreadable_image": "image file unreadable",
    "small_image": "image too small for its bucket",
    "too_long": "longer than max_length tokens",
    "bad_json": "line is not a JSON record",
}


@dataclass
class Record:
    conversations: list[dict[str, str]]
    images: list[Any]  # PIL images or paths, in placeholder order
    task: str
    key: str  # where it came from, for the skip log


@dataclass
class Skip:
    reason: str  # a key of SKIP_REASONS
    key: str
    detail: str = ""


@dataclass
class Source:
    """A named source cut into `num_chunks` chunks of at most `chunk_size` records."""

    spec: str
    n: int
    chunk_size: int
    seed: int = 0
    _lines: list[str] | None = field(default=None, repr=False)
    _files: list[Path] | None = field(default=None, repr=False)

    @property
    def num_chunks(self) -> int:
        return (self.n + self.chunk_size - 1) // self.chunk_size

    def chunk(self, c: int) -> list[Record | Skip]:
        lo, hi = c * self.chunk_size, min(self.n, (c + 1) * self.chunk_size)
        if self.spec.startswith("shapes:"):
            return _shapes_chunk(self.spec.split(":", 1)[1], lo, hi, self.seed, c)
        if self._files is not None:
            return [_caption_record(p) for p in self._files[lo:hi]]
        assert self._lines is not None
        base = Path(self.spec).parent
        return [_json_record(line, base, f"{self.spec}:{i + 1}") for i, line in zip(range(lo, hi), self._lines[lo:hi])]


def open_source(spec: str, n: int | None = None, seed: int = 0, chunk_size: int = 256) -> Source:
    """Open a source named by `spec` (see the module docstring). `n` is required for `shapes:` sources."""
    if spec.startswith("shapes:"):
        parse_shapes_source(spec.split(":", 1)[1])  # a bad name fails here, not in a pretokenising worker
        if not n or n < 1:
            raise ValueError(f"{spec}: give the number of records to generate (n: 1000)")
        return Source(spec, int(n), chunk_size, seed)
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}) with .txt captions")
        files = files[:n] if n else files
        return Source(str(path), len(files), chunk_size, seed, _files=files)
    if not path.is_file():
        raise FileNotFoundError(f"data source {spec} does not exist (a .json/.jsonl file, a folder, or shapes:TASK)")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); for one record per line name it .jsonl") from err
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a JSON list of records")
        lines = [json.dumps(r) for r in data]
    else:
        lines = [line for line in text.splitlines() if line.strip()]
    lines = lines[:n] if n else lines
    return Source(str(path), len(lines), chunk_size, seed, _lines=lines)


def _json_record(line: str, base: Path, key: str) -> Record | Skip:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        return Skip("bad_json", key, str(err))
    if not isinstance(data, dict):
        return Skip("bad_json", key, "not an object")
    conv = data.get("conversations") or []
    images = [str(p if Path(p).is_absolute() else base / p) for p in data.get("image", []) or []]
    task = str((data.get("shapes") or {}).get("task") or data.get("task") or "conversation")
    return check_record(Record(conv, images, task, key))


def _caption_record(image: Path) -> Record | Skip:
    caption_file = image.with_suffix(".txt")
    key = str(image)
    if not caption_file.is_file():
        return Skip("missing_image", key, f"no caption file {caption_file.name}")
    caption = caption_file.read_text().strip()
    if not caption:
        return Skip("empty", key, "empty caption")
    human = TEXT_TO_IMAGE_TEMPLATE.format(width=0, height=0, prompt=caption)  # size set at pretokenize
    return check_record(Record([{"from": "human", "value": human}, {"from": "gpt", "value": IMAGE_PLACEHOLDER}],
                               [str(image)], "t2i", key))


def parse_shapes_source(body: str) -> tuple[str, str, list[tuple[int, int]] | None]:
    """(task, subset, sizes) of the ShapesWorld source `shapes:BODY`: `t2i:position@80x48` gives
    ("t2i", "position", [(80, 48)]); subset is "" and sizes None (every bucket) where the name has none.
    ValueError, saying what to write, for an unknown task or subset or a size outside ShapesWorld's buckets."""
    from ..shapes.language import FAMILIES, QUESTION_KINDS
    from ..shapes.scene import SIZE_BUCKETS
    from ..shapes.tasks import EDIT_KINDS, TASKS

    spec = f"shapes:{body}"
    name, at, size_text = body.partition("@")
    task, _, subset = name.partition(":")
    if task not in TASKS:
        raise ValueError(f"unknown ShapesWorld task {task!r} in {spec!r}; use one of {', '.join(TASKS)}")
    subsets = {"t2i": FAMILIES, "vqa": QUESTION_KINDS, "edit": EDIT_KINDS, "multiedit": EDIT_KINDS}
    if subset and subset not in subsets.get(task, ()):
        raise ValueError(f"{spec!r}: only text-to-image, VQA and editing take a subset, as shapes:t2i:FAMILY with "
                         f"FAMILY one of {', '.join(FAMILIES)}, shapes:vqa:KIND with KIND one of "
                         f"{', '.join(QUESTION_KINDS)}, or shapes:edit:KIND and shapes:multiedit:KIND with KIND one "
                         f"of {', '.join(EDIT_KINDS)}")
    if not at:
        return task, subset, None
    sizes = []
    for part in size_text.split(","):
        w, x, h = part.strip().partition("x")
        if not (x and w.isdigit() and h.isdigit()) or (int(w), int(h)) not in SIZE_BUCKETS:
            buckets = ", ".join(f"{bw}x{bh}" for bw, bh in SIZE_BUCKETS)
            raise ValueError(f"{spec!r}: after '@' give sizes among ShapesWorld's buckets, comma-separated "
                             f"(e.g. shapes:{name}@80x48,48x80); got {part!r}; the buckets are {buckets}")
        sizes.append((int(w), int(h)))
    return task, subset, sizes


def _shapes_chunk(task: str, lo: int, hi: int, seed: int, chunk: int) -> list[Record | Skip]:
    """Records `lo..hi` of `shapes:TASK` (TASK may be `t2i:FAMILY`, `vqa:KIND`, `edit:KIND` or `multiedit:KIND`,
    and end in `@SIZES`); their task is the part before the colon."""
    from ..shapes.tasks import TASKS, make_family_t2i

    name, subset, sizes = parse_shapes_source(task)
    # one generator per (seed, task, chunk): chunks are independent, so any subset can be (re)made
    rng = np.random.default_rng([seed, zlib.crc32(task.encode()), chunk])
    out: list[Record | Skip] = []
    for i in range(lo, hi):
        size = sizes[int(rng.integers(len(sizes)))] if sizes else None  # no draw without `@`: streams unchanged
        if not subset:
            rec = TASKS[name](rng, "train", size=size)
        elif name == "t2i":
            rec = make_family_t2i(rng, "train", subset, size=size)
        else:  # vqa, edit and multiedit builders take the subset as `kind`
            rec = TASKS[name](rng, "train", size=size, kind=subset)
        out.append(Record(rec.conversations, list(rec.images), name, f"shapes:{task}:{i}"))
    return out


def check_record(rec: Record) -> Record | Skip:
    """Structural checks that need no image: non-empty, alternating roles, placeholders = images."""
    conv = rec.conversations
    if not isinstance(conv, list) or not conv or not any(str(t.get("value", "")).strip() for t in conv if isinstance(t, dict)):
        return Skip("empty", rec.key)
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or turn.get("from") not in (("human",) if i % 2 == 0 else ("gpt", "assistant")):
            return Skip("roles", rec.key, f"turn {i}")
    count = sum(str(t.get("value", "")).count(IMAGE_PLACEHOLDER) for t in conv)
    if count != len(rec.images):
        return Skip("placeholders", rec.key, f"{count} placeholders, {len(rec.images)} images")
    return rec


def load_images(rec: Record) -> list[Image.Image] | Skip:
    out = []
    for im in rec.images:
        if isinstance(im, Image.Image):
            out.append(im)
            continue
        if not Path(im).is_file():
            return Skip("missing_image", rec.key, str(im))
        try:
            with Image.open(im) as f:
                f.load()
                out.append(f.copy())
        except (OSError, ValueError) as err:
            return Skip("unreadable_image", rec.key, f"{im}: {err}")
    return out


def set_t2i_size(conversations: list[dict[str, str]], sizes: list[tuple[int, int]]) -> list[dict[str, str]]:
    """Rewrite `Generate an image of WxH` in each human turn to the size of the next image the gpt
    answers with (the bucket it was resized to), as Lumina-mGPT's data states generated sizes."""
    out, seen = [], 0
    for i, turn in enumerate(conversations):
        value = turn["value"]
        if turn["from"] == "human" and T2I_SIZE.match(value) and i + 1 < len(conversations):
            answer_index = seen + value.count(IMAGE_PLACEHOLDER)
            if IMAGE_PLACEHOLDER in conversations[i + 1]["value"] and answer_index < len(sizes):
                w, h = sizes[answer_index]
                value = T2I_SIZE.sub(f"Generate an image of {w}x{h} according to", value, count=1)
        seen += turn["value"].count(IMAGE_PLACEHOLDER)
        out.append({"from": turn["from"], "value": value})
    return out


__all__ = ["Record", "SKIP_REASONS", "Skip", "Source", "check_record", "load_images", "open_source",
           "parse_shapes_source", "set_t2i_size"]
