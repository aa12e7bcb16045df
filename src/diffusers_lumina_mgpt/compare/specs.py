"""What the user asks to compare: pipeline arguments (`[NAME=]PATH[@ar|@jacobi]`), the sweep
(`KNOB=V1,V2,...`) and fixed call arguments (`KEY=VALUE`). Pure parsing, no torch."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# our decoding schedulers, by the name `PATH@NAME` and `--sweep scheduler=NAME` use
SCHEDULERS: dict[str, str] = {"ar": "LuminaMGPTARScheduler", "jacobi": "LuminaMGPTJacobiScheduler"}
SCHEDULER_KNOB = "scheduler"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass(frozen=True)
class PipelineSpec:
    """One compared pipeline: a display name, its folder, and for ours an optional decoding scheduler."""

    name: str
    path: str
    scheduler: str | None = None  # "ar" / "jacobi" (ours only); None keeps the folder's scheduler


@dataclass(frozen=True)
class Sweep:
    """`--sweep KNOB=V1,V2,...`: every pipeline that takes KNOB runs once per value."""

    knob: str
    values: tuple[Any, ...]

    def tag(self, value: Any) -> str:
        return f"{self.knob}={value}"


def parse_value(text: str) -> Any:
    """'3' -> 3, '2.5' -> 2.5, 'true'/'false' -> bool, 'none' -> None, anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_pipeline_arg(text: str) -> PipelineSpec:
    """`PATH`, `NAME=PATH`, `PATH@jacobi`, `NAME=PATH@ar`: the name defaults to the folder name
    (plus `@scheduler`)."""
    name, path = None, text
    head, sep, tail = text.partition("=")
    if sep and _NAME_RE.match(head) and not Path(text).exists():
        name, path = head, tail
    scheduler = None
    base, at, suffix = path.rpartition("@")
    if at and suffix.lower() in SCHEDULERS and base:
        path, scheduler = base, suffix.lower()
    if not path:
        raise ValueError(f"--pipelines {text!r} names no folder; use PATH, NAME=PATH or PATH@jacobi")
    if name is None:
        name = (Path(path).name or "pipeline") + (f"@{scheduler}" if scheduler else "")
    return PipelineSpec(name, path, scheduler)


def parse_pipelines(args: list[str] | tuple[str, ...]) -> list[PipelineSpec]:
    """Pipeline arguments (strings or `PipelineSpec`s) with unique names."""
    if not args:
        raise ValueError("--pipelines needs at least one pipeline folder")
    specs = [a if isinstance(a, PipelineSpec) else parse_pipeline_arg(str(a)) for a in args]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two pipelines share the name {dupes[0]!r}; name them apart with NAME=PATH")
    return specs


def parse_sweep(text: str | None) -> Sweep | None:
    """`KNOB=V1,V2,...` (at least one value; `scheduler` takes ar/jacobi)."""
    if text is None:
        return None
    knob, sep, values = text.partition("=")
    knob = knob.strip()
    if not sep or not knob.isidentifier() or not values.strip():
        raise ValueError(f"--sweep {text!r} must look like KNOB=V1,V2,... (e.g. guidance_scale=1,3,5)")
    parsed = tuple(parse_value(v) for v in values.split(",") if v.strip())
    if knob == SCHEDULER_KNOB:
        parsed = tuple(str(v).lower() for v in parsed)
        bad = [v for v in parsed if v not in SCHEDULERS]
        if bad:
            raise ValueError(f"--sweep scheduler={bad[0]} is not one of our schedulers; use {','.join(SCHEDULERS)}")
    if len(set(map(repr, parsed))) != len(parsed):
        raise ValueError(f"--sweep {text!r} repeats a value; list each value once")
    return Sweep(knob, parsed)


def parse_call_args(items: list[str] | None) -> dict[str, Any]:
    """`KEY=VALUE` strings -> call keyword arguments."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"--call-arg {item!r} must look like KEY=VALUE (e.g. num_inference_steps=20)")
        out[key.strip()] = parse_value(value)
    reserved = {"prompt", "height", "width", "generator", "output_type"} & set(out)
    if reserved:
        raise ValueError(f"--call-arg {min(reserved)} is set by the harness; use --prompts/--sizes/--seeds instead")
    return out
