"""Compared pipelines: what a folder holds (read without loading weights, so every process plans the
same work), loading it with its scheduler, and one measured call."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .measure import (
    ForwardCounter,
    PeakMemory,
    Stopwatch,
    count_parameters,
    denoiser_name,
)
from .specs import SCHEDULER_KNOB, SCHEDULERS, PipelineSpec

AUTOREGRESSIVE, DIFFUSION = "autoregressive", "diffusion"


@dataclass
class PipelineInfo:
    """A pipeline as results.json lists it (one entry of "pipelines")."""

    name: str
    path: str
    scheduler: str | None
    class_name: str | None = None
    kind: str | None = None  # "autoregressive" (ours) or "diffusion" (any other diffusers pipeline)
    call_parameters: list[str] = field(default_factory=list)  # what its __call__ takes ("**" for **kwargs)
    parameters: int | None = None  # filled when loaded
    forward_counter: str | None = None  # "num_forward_passes" (ours), "transformer", "unet", or None
    error: dict[str, str] | None = None
    call_args: dict[str, Any] = field(default_factory=dict)  # for this pipeline alone (--pipeline-arg)

    def accepts(self, knob: str) -> bool:
        """Whether a knob (a call argument, or `scheduler` for ours) applies to this pipeline."""
        if knob == SCHEDULER_KNOB:
            return self.kind == AUTOREGRESSIVE
        return knob in self.call_parameters or "**" in self.call_parameters

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "scheduler": self.scheduler, "class_name": self.class_name,
                "kind": self.kind, "parameters": self.parameters, "forward_counter": self.forward_counter,
                "call_args": self.call_args, "error": self.error}


def error_record(err: BaseException) -> dict[str, str]:
    return {"type": type(err).__name__, "message": " ".join(str(err).split()) or type(err).__name__}


def pipeline_class(class_name: str | None) -> type | None:
    """Our class of that name, else diffusers' (None when neither has it)."""
    if not class_name:
        return None
    import diffusers

    import diffusers_lumina_mgpt

    for module in (diffusers_lumina_mgpt, diffusers):
        try:
            cls = getattr(module, class_name, None)
        except (ImportError, AttributeError):
            cls = None
        if isinstance(cls, type):
            return cls
    return None


def call_parameters(call: Any) -> list[str]:
    """The keyword names a `__call__` takes ("**" stands for **kwargs)."""
    params = inspect.signature(call).parameters.values()
    return sorted("**" if p.kind is p.VAR_KEYWORD else p.name for p in params if p.name != "self")


def describe(spec: PipelineSpec) -> PipelineInfo:
    """Class, kind and call parameters from the folder's model_index.json; a broken folder gives an
    info with `error` set (its work is then recorded as failed, and the comparison goes on)."""
    from ..default_model import pipeline_class_name, pipeline_folder

    info = PipelineInfo(spec.name, spec.path, spec.scheduler, call_args=dict(spec.call_args))
    try:
        info.class_name = pipeline_class_name(pipeline_folder(spec.path))
    except (OSError, ValueError) as err:
        info.error = error_record(err)
        return info
    cls = pipeline_class(info.class_name)
    if cls is not None:
        from ..pipelines import LuminaMGPTPipeline

        info.kind = AUTOREGRESSIVE if issubclass(cls, LuminaMGPTPipeline) else DIFFUSION
        info.call_parameters = call_parameters(cls.__call__)
    else:
        info.kind = DIFFUSION
    if spec.scheduler and info.kind != AUTOREGRESSIVE:
        info.error = {"type": "ValueError", "message": f"{spec.path}@{spec.scheduler}: @scheduler applies only to "
                      f"Lumina-mGPT pipelines, and this folder holds {info.class_name}; drop @{spec.scheduler}"}
    return info


def load(info: PipelineInfo, device: str, dtype: str | None) -> Any:
    """Load the folder (ours or any diffusers pipeline); record its parameter count and what it takes.
    (The work was planned from the folder's class; a class only loading reveals can take no sweep.)"""
    from ..shapes.evaluate import load_pipeline

    pipe = load_pipeline(info.path, device, dtype)
    info.parameters = count_parameters(pipe)
    info.call_parameters = call_parameters(pipe.__call__)  # the loaded class (custom pipelines included)
    if info.kind == AUTOREGRESSIVE:
        info.forward_counter = "num_forward_passes"
        if info.scheduler:
            set_scheduler(pipe, info.scheduler)
    else:
        info.forward_counter = denoiser_name(pipe)
    return pipe


def set_scheduler(pipe: Any, name: str) -> None:
    """Swap our pipeline's decoding scheduler, keeping its sampling settings."""
    import diffusers_lumina_mgpt

    cls = getattr(diffusers_lumina_mgpt, SCHEDULERS[name])
    if type(pipe.scheduler) is not cls:
        pipe.scheduler = cls.from_config(pipe.scheduler.config)


@dataclass
class CallResult:
    image: Image.Image
    seconds: float
    forward_passes: int | None
    peak_memory_bytes: int | None
    memory_kind: str


def call_once(pipe: Any, info: PipelineInfo, prompt: str, size: tuple[int, int], seed: int,
              kwargs: dict[str, Any], device: str) -> CallResult:
    """One image: `pipe(prompt, height=, width=, generator=seeded, output_type="pil", **kwargs)`, measured."""
    import torch

    width, height = size
    call = dict(kwargs, height=height, width=width)
    if info.accepts("generator"):
        call["generator"] = torch.Generator(device=device).manual_seed(seed)
    if info.accepts("output_type"):
        call["output_type"] = "pil"
    denoiser = getattr(pipe, info.forward_counter) if info.forward_counter in ("transformer", "unet") else None
    with PeakMemory(device) as memory, ForwardCounter(denoiser) as counter, Stopwatch(device) as clock:
        out = pipe(prompt, **call)
    forwards = getattr(out, "num_forward_passes", None) if info.kind == AUTOREGRESSIVE else (
        counter.count if denoiser is not None else None)
    images = out.images if hasattr(out, "images") else out[0]
    image = images[0]
    if not isinstance(image, Image.Image):
        raise TypeError(f"{info.name} returned {type(image).__name__}, not a PIL image; "
                        "it must honour output_type='pil'")
    return CallResult(image, clock.seconds, None if forwards is None else int(forwards), memory.peak_bytes,
                      memory.kind)
