"""What the user asks to compare: pipeline arguments (`[NAME=]PATH[@ar|@jacobi]`), the sweep
(`KNOB=V1,V2,...`), call arguments for every pipeline (`KEY=VALUE`) and for one (`NAME:KEY=VALUE`).
Pure parsing, no torch."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# our decoding schedulers, by the name `PATH@NAME` and `--sweep scheduler=NAME` use
SCHEDULERS: dict[str, str] = {"ar": "LuminaMGPTARScheduler", "jacobi": "LuminaMGPTJacobiScheduler"}
SCHEDULER_KNOB = "scheduler"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass(frozen=True)
class PipelineSpec:
    """One compared pipeline: a display name, its folder, for ours an optional decoding scheduler, and
    call arguments for this pipeline alone (`--pipeline-arg NAME:KEY=VALUE`)."""

    name: str
    path: str
    scheduler: str | None = None  # "ar" / "jacobi" (ours only); None keeps the folder's scheduler
    call_args: tuple[tuple[str, Any], ...] = ()


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


HARNESS_ARGS = ("prompt", "height", "width", "generator", "output_type")  # the harness sets these itself


def check_sweep_clash(specs: list[PipelineSpec], sweep: Sweep | None) -> None:
    """ValueError when a pipeline's own `--pipeline-arg` sets the knob the sweep varies."""
    clash = next((s.name for s in specs if sweep is not None and sweep.knob in dict(s.call_args)), None)
    if clash is not None:
        raise ValueError(f"--pipeline-arg {clash}:{sweep.knob} and --sweep {sweep.knob} both set it; "
                         "drop the --pipeline-arg")


def parse_call_args(items: list[str] | None, flag: str = "--call-arg") -> dict[str, Any]:
    """`KEY=VALUE` strings -> call keyword arguments."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"{flag} {item!r} must look like KEY=VALUE (e.g. num_inference_steps=20)")
        out[key.strip()] = parse_value(value)
    reserved = set(HARNESS_ARGS) & set(out)
    if reserved:
        raise ValueError(f"{flag} {min(reserved)} is set by the harness; use --prompts/--sizes/--seeds instead")
    return out


def split_pipeline_arg(item: str) -> tuple[str, str, str]:
    """`NAME:KEY=VALUE` (`--pipeline-arg`) -> (NAME, KEY, KEY=VALUE); ValueError naming the form otherwise."""
    name, sep, rest = item.partition(":")
    if not sep or "=" not in rest:
        raise ValueError(f"--pipeline-arg {item!r} must look like NAME:KEY=VALUE "
                         "(e.g. diffusion:num_inference_steps=20)")
    return name, rest.partition("=")[0].strip(), rest


def apply_pipeline_args(specs: list[PipelineSpec], items: list[str] | None) -> list[PipelineSpec]:
    """`NAME:KEY=VALUE` strings (`--pipeline-arg`): call arguments for the pipeline named NAME alone,
    added to its spec (a later value for the same key wins)."""
    by_name = {s.name: dict(s.call_args) for s in specs}
    for item in items or []:
        name, key, rest = split_pipeline_arg(item)
        if name not in by_name:
            raise ValueError(f"--pipeline-arg {item!r}: no compared pipeline is named {name!r}; "
                             f"the names are {', '.join(by_name)} (set one with NAME=PATH in --pipelines)")
        if key == SCHEDULER_KNOB:
            raise ValueError(f"--pipeline-arg {item!r}: pick our decoding scheduler in --pipelines, as "
                             f"NAME=PATH@ar or NAME=PATH@jacobi")
        by_name[name].update(parse_call_args([rest], flag=f"--pipeline-arg {name}:"))
    return [replace(s, call_args=tuple(by_name[s.name].items())) for s in specs]
