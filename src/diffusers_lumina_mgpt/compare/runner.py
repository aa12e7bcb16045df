"""`run_comparison`: plan the work (pipeline x sweep value x size x prompt x seed), run this process's
share of it, and on the main process merge every share into results.json and report.md."""

from __future__ import annotations

import gc
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .parts import PARTS_DIR, merge_parts, write_part
from .pipelines import (
    PipelineInfo,
    call_once,
    describe,
    error_record,
    load,
    set_scheduler,
)
from .prompts import ComparePrompt, load_prompts
from .schema import SCHEMA_VERSION, validate_results
from .specs import (
    SCHEDULER_KNOB,
    PipelineSpec,
    Sweep,
    apply_pipeline_args,
    check_sweep_clash,
    parse_call_args,
    parse_pipelines,
    parse_sweep,
)
from .summary import summarize_runs

RESULTS_FILE, REPORT_FILE, IMAGES_DIR = "results.json", "report.md", "images"


@dataclass(frozen=True)
class WorkItem:
    """One image to make; `item` is its position in the plan, the same in every process."""

    item: int
    pipeline: str
    sweep_value: Any
    size: tuple[int, int]  # (width, height)
    prompt_index: int
    seed: int


def plan_items(infos: list[PipelineInfo], prompts: list[ComparePrompt], seeds: Sequence[int],
               sizes: Sequence[tuple[int, int]], sweep: Sweep | None) -> list[WorkItem]:
    """Pipeline-major order, so a process given a contiguous share loads few pipelines. A pipeline
    that does not take the swept knob runs once, with `sweep_value` None."""
    items: list[WorkItem] = []
    for info in infos:
        values = sweep.values if sweep is not None and info.accepts(sweep.knob) else (None,)
        for value in values:
            for size in sizes:
                for prompt in prompts:
                    for seed in seeds:
                        items.append(WorkItem(len(items), info.name, value, tuple(size), prompt.index, int(seed)))
    return items


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_") or "_"


def image_path(item: WorkItem, sweep: Sweep | None) -> str:
    """Where the item's PNG goes, relative to the output folder."""
    run = "default" if item.sweep_value is None or sweep is None else sweep.tag(item.sweep_value)
    w, h = item.size
    return f"{IMAGES_DIR}/{_safe(item.pipeline)}/{_safe(run)}/{w}x{h}/{item.prompt_index:04d}-seed{item.seed}.png"


def call_kwargs(info: PipelineInfo, call_args: dict[str, Any], sweep: Sweep | None, value: Any) -> dict[str, Any]:
    """The shared call arguments the pipeline takes, then its own (`--pipeline-arg`), then the swept knob."""
    kwargs = {k: v for k, v in call_args.items() if info.accepts(k)} | info.call_args
    if sweep is not None and sweep.knob != SCHEDULER_KNOB and info.accepts(sweep.knob):
        kwargs[sweep.knob] = value
    return kwargs


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def execute(items: list[WorkItem], infos: dict[str, PipelineInfo], prompts: list[ComparePrompt], out: Path,
            call_args: dict[str, Any], sweep: Sweep | None, device: str, dtype: str | None, warmup: int,
            clip: Any = None, progress: bool = True, desc: str = "compare") -> list[dict[str, Any]]:
    """One record per item. A pipeline that fails to load, or a call that raises, is recorded with its
    error and the rest go on. Pipelines load one at a time (the previous one is freed first, so
    memory figures are not inflated by it); each run is warmed up `warmup` times, untimed."""
    from tqdm.auto import tqdm

    from ..shapes.scorer import check_spec, detect

    records: list[dict[str, Any]] = []
    pipe, loaded, warmed = None, None, set()
    for it in tqdm(items, desc=desc, disable=not progress):
        info, prompt = infos[it.pipeline], prompts[it.prompt_index]
        if it.pipeline != loaded:
            pipe, loaded = None, it.pipeline
            _free(device)
            if info.error is None:
                try:
                    pipe = load(info, device, dtype)
                except Exception as err:  # noqa: BLE001  (recorded; the other pipelines go on)
                    info.error = error_record(err)
        record = {"item": it.item, "pipeline": it.pipeline, "sweep_value": it.sweep_value,
                  "prompt_index": it.prompt_index, "prompt": prompt.text, "family": prompt.family,
                  "split": prompt.split,
                  "seed": it.seed, "width": it.size[0], "height": it.size[1], "image": None, "seconds": None,
                  "forward_passes": None, "peak_memory_bytes": None, "memory_kind": None, "shapes_passed": None,
                  "shapes_reason": None, "clip_score": None, "error": info.error}
        records.append(record)
        if pipe is None:
            continue
        try:
            if sweep is not None and sweep.knob == SCHEDULER_KNOB and it.sweep_value is not None:
                set_scheduler(pipe, it.sweep_value)
            kwargs = call_kwargs(info, call_args, sweep, it.sweep_value)
            if (it.pipeline, repr(it.sweep_value)) not in warmed:
                for _ in range(warmup):
                    call_once(pipe, info, prompt.text, it.size, it.seed, kwargs, device)
                warmed.add((it.pipeline, repr(it.sweep_value)))
            result = call_once(pipe, info, prompt.text, it.size, it.seed, kwargs, device)
            path = image_path(it, sweep)
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            result.image.save(out / path)
            record.update(image=path, seconds=result.seconds, forward_passes=result.forward_passes,
                          peak_memory_bytes=result.peak_memory_bytes, memory_kind=result.memory_kind)
            if prompt.spec is not None:
                record["shapes_passed"], record["shapes_reason"] = check_spec(prompt.spec, detect(result.image).objects)
            if clip is not None:
                record["clip_score"] = clip.score(result.image, prompt.text)
        except Exception as err:  # noqa: BLE001  (recorded; the other prompts go on)
            record["error"] = error_record(err)
    pipe = None
    _free(device)
    return records


def _check_knobs(infos: list[PipelineInfo], call_args: dict[str, Any], sweep: Sweep | None) -> None:
    for info in infos:
        bad = sorted(k for k in info.call_args if info.error is None and info.call_parameters and not info.accepts(k))
        if bad:
            raise ValueError(f"--pipeline-arg {info.name}:{bad[0]}: {info.name} ({info.class_name}) does not take "
                             f"{bad[0]}; it takes {', '.join(p for p in info.call_parameters if p != 'self')}")
    described = [i for i in infos if i.error is None]
    if not described:
        return
    for knob, flag in [*((k, "--call-arg") for k in call_args), *(((sweep.knob, "--sweep"),) if sweep else ())]:
        if not any(i.accepts(knob) for i in described):
            what = "is not a Lumina-mGPT pipeline" if knob == SCHEDULER_KNOB else f"takes {knob}"
            raise ValueError(f"{flag} {knob}: none of the compared pipelines {what}; drop it "
                             f"(e.g. --sweep guidance_scale=1,3,5 or num_inference_steps=10,20)")


def run_comparison(
    pipelines: Sequence[str | PipelineSpec],
    out: str | Path,
    prompts: str | Path | Sequence[str] = "shapes",
    seeds: Sequence[int] = (0,),
    sizes: Sequence[tuple[int, int]] = ((64, 64),),
    n: int | None = None,
    families: Sequence[str] | None = None,
    prompt_seed: int = 0,
    sweep: str | Sweep | None = None,
    call_args: dict[str, Any] | Sequence[str] | None = None,
    clip_model: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    warmup: int = 1,
    progress: bool = True,
    pipeline_args: Sequence[str] | None = None,
) -> dict[str, Any] | None:
    """Compare text-to-image pipelines (ours under any scheduler, or any diffusers pipeline folder) on
    the same prompts, seeds and sizes; writes `out/results.json`, `out/report.md`, `out/images/`,
    `out/grid.png` and `out/quality_vs_time.png`, and returns the results.

    Run under `accelerate launch` (what `lumina-mgpt compare --num-processes N` does), the work is
    split between the processes; only the main process returns the results (the others None).
    `n`: prompts per ShapesWorld family (default 4) or the first n prompts of a file or list.
    `pipeline_args`: `NAME:KEY=VALUE` call arguments for one pipeline (after `call_args`, which all take).
    """
    import torch
    from accelerate import PartialState

    from ..cli_checks import check_device, check_output_dir

    specs = apply_pipeline_args(parse_pipelines(list(pipelines)), list(pipeline_args or []))
    sweep = parse_sweep(sweep) if isinstance(sweep, str) else sweep
    call_args = dict(call_args) if isinstance(call_args, dict) else parse_call_args(list(call_args or []))
    if sweep is not None and sweep.knob in call_args:
        raise ValueError(f"--call-arg {sweep.knob} and --sweep {sweep.knob} both set it; drop the --call-arg")
    check_sweep_clash(specs, sweep)
    if sweep is not None and sweep.knob == SCHEDULER_KNOB and any(s.scheduler for s in specs):
        raise ValueError("--sweep scheduler=... and PATH@scheduler both choose the scheduler; drop the @ suffix")
    if sweep is not None and sweep.knob in ("prompt", "height", "width", "generator", "output_type"):
        raise ValueError(f"--sweep {sweep.knob} is set by the harness; sweep a call knob such as guidance_scale")
    prompt_list = load_prompts(prompts, n, families, prompt_seed)
    seeds = [int(s) for s in seeds]
    sizes = [(int(w), int(h)) for w, h in sizes]
    if not seeds or not sizes:
        raise ValueError("give at least one seed (--seeds 0) and one size (--sizes 64x64)")
    if warmup < 0:
        raise ValueError(f"--warmup must be 0 or more, got {warmup}")
    out = check_output_dir(out)
    check_device(device)
    cpu = (device is not None and torch.device(device).type == "cpu") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    if device is None or (state.num_processes > 1 and device == "cuda"):
        device = str(state.device)

    infos = [describe(s) for s in specs]
    _check_knobs(infos, call_args, sweep)
    items = plan_items(infos, prompt_list, seeds, sizes, sweep)
    clip = None
    if clip_model is not None:
        from .clip_score import ClipScorer

        clip = ClipScorer(clip_model, device)
    if state.is_main_process:
        import shutil

        shutil.rmtree(out / PARTS_DIR, ignore_errors=True)  # parts of an earlier run are never merged
        out.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    with state.split_between_processes(items) as mine:
        desc = "compare" if state.num_processes == 1 else f"compare (process {state.process_index})"
        records = execute(list(mine), {i.name: i for i in infos}, prompt_list, out, call_args, sweep, device,
                          dtype, warmup, clip, progress, desc)
    write_part(out, state.process_index, state.num_processes, [i.to_json() for i in infos], records)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    merged_pipelines, merged_records = merge_parts(out, state.num_processes, [s.name for s in specs], len(items))
    results = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {
            "prompts": str(prompts) if isinstance(prompts, (str, Path)) else "list", "n": n,
            "families": list(families) if families else None, "prompt_seed": prompt_seed, "seeds": seeds,
            "sizes": [list(s) for s in sizes],
            "sweep": {"knob": sweep.knob, "values": list(sweep.values)} if sweep else None,
            "call_args": call_args, "clip_model": None if clip_model is None else str(clip_model), "device": device,
            "dtype": dtype, "num_processes": state.num_processes, "warmup": warmup,
        },
        "pipelines": merged_pipelines,
        "records": merged_records,
        "summary": summarize_runs(merged_records, merged_pipelines),
    }
    validate_results(results)
    write_results(out, results)
    from .report import write_report

    write_report(out, results)
    return results


def write_results(out: str | Path, results: dict[str, Any]) -> Path:
    import json

    path = Path(out) / RESULTS_FILE
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path
