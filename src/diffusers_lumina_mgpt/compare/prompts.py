"""The prompts of a comparison: a text file (one per line), a .jsonl of {"prompt": ...} lines, a
list of strings, or `shapes` (ShapesWorld GenEval-style families, scored by the ShapesWorld scorer)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..shapes.language import PromptSpec

SHAPES_SOURCE = "shapes"
DEFAULT_SHAPES_N = 4


@dataclass(frozen=True)
class ComparePrompt:
    """One prompt; `spec` (ShapesWorld prompts only) is what the scorer judges the image against."""

    index: int
    text: str
    family: str | None = None
    split: str | None = None  # "train" or "heldout" (ShapesWorld colour-binding families)
    spec: PromptSpec | None = None


def load_prompts(source: str | Path | Sequence[str], n: int | None = None, families: Iterable[str] | None = None,
                 prompt_seed: int = 0) -> list[ComparePrompt]:
    """`n`: prompts per ShapesWorld family (default 4), or the first `n` prompts of a file or list."""
    if n is not None and n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    if isinstance(source, (str, Path)) and str(source) == SHAPES_SOURCE:
        from ..shapes.evaluate import make_prompt_items

        items = make_prompt_items(families, n or DEFAULT_SHAPES_N, prompt_seed)
        return [ComparePrompt(i, it.spec.text, it.spec.family, it.split, it.spec) for i, it in enumerate(items)]
    if families:
        raise ValueError("--families applies only to --prompts shapes; drop it or use --prompts shapes")
    texts = read_prompt_file(source) if isinstance(source, (str, Path)) else [str(t) for t in source]
    texts = texts[:n] if n else texts
    if not texts:
        raise ValueError(f"--prompts {source}: no prompts; give a file with one prompt per line")
    return [ComparePrompt(i, t) for i, t in enumerate(texts)]


def read_prompt_file(path: str | Path) -> list[str]:
    """Non-empty lines of a text file, or the "prompt" of every line of a .jsonl file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--prompts {path}: no such file; pass a .txt/.jsonl file or `shapes`")
    if path.suffix.lower() == ".jsonl":
        return [row["prompt"] for row in read_jsonl_prompts(path, "--prompts", 'write one {"prompt": ...} per line')]
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_jsonl_prompts(path: str | Path, option: str, hint: str) -> list[dict]:
    """The JSON objects of a .jsonl file, each with a "prompt" string (blank lines skipped). `option`
    names the command-line flag that gave the file, `hint` says what a good line looks like."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{option} {path}: no such file; {hint}")
    rows = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {k} is not JSON ({err.msg}); {hint}") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ValueError(f"{path} line {k} has no \"prompt\" string; {hint}")
        rows.append(row)
    return rows
