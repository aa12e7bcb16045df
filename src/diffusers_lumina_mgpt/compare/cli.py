"""`lumina-mgpt compare` and `lumina-mgpt eval geneval-export`, thin over the compare API.

Registering imports nothing heavy: torch, diffusers and accelerate load only when a command runs.
`compare --num-processes N` (N > 1) starts N processes through accelerate, exactly
`python -m accelerate.commands.launch --multi_gpu --num_processes N ... -m diffusers_lumina_mgpt.compare.launch ARGS`
(gloo on a CPU-only machine), as `lumina-mgpt train` does.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

# The default comparison (no --pipelines): two sizes and two aspect ratios. Both shipped models trained on
# 64x64, 80x48 and 48x80 pictures; neither saw 96x96 (a resolution both must extrapolate to).
DEFAULT_COMPARISON_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (96, 96), (80, 48), (48, 80))
DEFAULT_DIFFUSION_CALL_ARGS: dict[str, object] = {"num_inference_steps": 20, "guidance_scale": 7.0,
                                                  "clean_caption": False}

COMPARE_EXAMPLE = ("example: lumina-mgpt compare --pipelines ours=my-pipeline@jacobi sd=my-sd-pipeline "
                   "--prompts shapes --n 10 --seeds 0 1 --sizes 64x64 --out runs/compare")


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `compare` (shared with the accelerate entry point `compare.launch`)."""
    from ..shapes.cli import parse_size
    from ..shapes.language import FAMILIES

    parser.add_argument("--pipelines", nargs="+", metavar="[NAME=]PATH[@ar|@jacobi]",
                        help="pipeline folders: ours or any diffusers text-to-image pipeline; @ar/@jacobi picks our "
                             "decoding scheduler (default: the shipped default model as ar=...@ar and jacobi=...@jacobi)")
    parser.add_argument("--prompts", default="shapes",
                        help="`shapes` (ShapesWorld prompt families, scored), a .txt file (one prompt per line) or "
                             "a .jsonl of {\"prompt\": ...}")
    parser.add_argument("--n", type=int, help="prompts per ShapesWorld family (default 4), or the first N of a file")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, metavar="FAMILY",
                        help=f"ShapesWorld families (default all): {' '.join(FAMILIES)}")
    parser.add_argument("--prompt-seed", type=int, default=0,
                        help="seed that draws the ShapesWorld prompts (default 0)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="generator seeds, one image per seed (default 0)")
    parser.add_argument("--sizes", nargs="+", type=parse_size, metavar="WxH",
                        help="image sizes, width x height (default 64x64; with no --pipelines: "
                             f"{' '.join(f'{w}x{h}' for w, h in DEFAULT_COMPARISON_SIZES)})")
    parser.add_argument("--out", required=True, help="output folder: results.json, report.md, images/, grid.png")
    parser.add_argument("--sweep", metavar="KNOB=V1,V2,...",
                        help="run each pipeline that takes KNOB once per value (guidance_scale, image_top_k, "
                             "num_inference_steps, scheduler=ar,jacobi, ...)")
    parser.add_argument("--call-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="a call argument for every pipeline whose __call__ takes it (repeatable)")
    parser.add_argument("--pipeline-arg", action="append", default=[], metavar="NAME:KEY=VALUE",
                        help="a call argument for the pipeline named NAME alone, e.g. diffusion:guidance_scale=5 "
                             "(repeatable; wins over --call-arg)")
    parser.add_argument("--clip-model", help="a local transformers CLIPModel folder (with its processor): "
                                             "adds a CLIP score per image")
    parser.add_argument("--device", help="cuda / cpu (default: cuda if available; one GPU per process)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="load the pipelines in this dtype")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per run before measuring (default 1)")
    parser.add_argument("--no-progress", action="store_true")


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..shapes.cli import eval_subparsers

    cmp = subparsers.add_parser("compare", epilog=COMPARE_EXAMPLE,
                                help="compare text-to-image pipelines (AR vs diffusion): time, forwards, memory, "
                                     "quality; results.json + report.md")
    add_compare_arguments(cmp)
    cmp.add_argument("--num-processes", type=int, default=1, help="processes started through accelerate (default 1)")
    cmp.set_defaults(func=_compare)

    ge = eval_subparsers(subparsers).add_parser(
        "geneval-export", help="images in GenEval's layout, for its evaluate_images.py",
        epilog="example: lumina-mgpt eval geneval-export --metadata geneval/prompts/evaluation_metadata.jsonl "
               "--model my-pipeline --out geneval-images")
    ge.add_argument("--metadata", required=True, help="GenEval's evaluation_metadata.jsonl")
    ge.add_argument("--model", required=True, help="pipeline folder (ours or any diffusers text-to-image pipeline)")
    ge.add_argument("--out", required=True, help="output folder: OUT/00000/metadata.jsonl, OUT/00000/samples/00000.png")
    ge.add_argument("--n-samples", type=int, default=4, help="images per prompt (default 4)")
    ge.add_argument("--seed", type=int, default=0, help="sample k of every prompt uses seed + k (default 0)")
    ge.add_argument("--height", type=int, help="pixels (default: the pipeline's)")
    ge.add_argument("--width", type=int, help="pixels (default: the pipeline's)")
    ge.add_argument("--batch-size", type=int, default=1, help="images per pipeline call (default 1)")
    ge.add_argument("--num-inference-steps", type=int, help="passed to the pipeline call if given")
    ge.add_argument("--guidance-scale", type=float, help="passed to the pipeline call if given")
    ge.add_argument("--device", help="cuda / cpu (default: cuda if available)")
    ge.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    ge.add_argument("--no-progress", action="store_true")
    ge.set_defaults(func=_geneval_export)


def default_pipelines(pipeline_args: list[str] | None = None, call_args: list[str] | None = None,
                      sweep: str | None = None) -> tuple[list[str], list[str]]:
    """What `compare` runs when no --pipelines are given, and the per-pipeline call arguments: the shipped
    default model under both decoding schedulers, and the shipped diffusion baseline (when this install has
    it) at DEFAULT_DIFFUSION_CALL_ARGS. Those defaults give way to whatever the user sets: a `--call-arg`
    or `--pipeline-arg diffusion:` of the same key, or the swept knob. ValueError, saying to pass
    --pipelines, when this install has no default model."""
    from pathlib import Path

    from .. import DEFAULT_DIFFUSION_MODEL
    from ..default_model import resolve_model
    from .specs import parse_call_args, parse_sweep, split_pipeline_arg

    model = resolve_model(None, fix="pass --pipelines PATH ... (the pipeline folders to compare)")
    pipelines, own = [f"ar={model}@ar", f"jacobi={model}@jacobi"], []
    if (Path(DEFAULT_DIFFUSION_MODEL) / "model_index.json").is_file():
        pipelines.append(f"diffusion={DEFAULT_DIFFUSION_MODEL}")
        swept = parse_sweep(sweep)
        ours = [split_pipeline_arg(a) for a in pipeline_args or []]
        user = {*parse_call_args(call_args), *([swept.knob] if swept else []),
                *(key for name, key, _ in ours if name == "diffusion")}
        own = [f"diffusion:{k}={v}" for k, v in DEFAULT_DIFFUSION_CALL_ARGS.items() if k not in user]
    return pipelines, own + list(pipeline_args or [])


def apply_defaults(args: argparse.Namespace) -> None:
    """With no --pipelines, the default comparison (`default_pipelines`); with no --sizes,
    DEFAULT_COMPARISON_SIZES for the default comparison and 64x64 otherwise."""
    if args.sizes is None:
        args.sizes = list(DEFAULT_COMPARISON_SIZES if args.pipelines is None else [(64, 64)])
    if args.pipelines is None:
        args.pipelines, args.pipeline_arg = default_pipelines(args.pipeline_arg, args.call_arg, args.sweep)


def check_compare_args(args: argparse.Namespace) -> None:
    """Mistakes answered in one line before any process starts or model loads."""
    from ..cli_checks import check_output_dir
    from .prompts import load_prompts
    from .specs import (
        apply_pipeline_args,
        check_sweep_clash,
        parse_call_args,
        parse_pipelines,
        parse_sweep,
    )

    apply_defaults(args)
    check_sweep_clash(apply_pipeline_args(parse_pipelines(args.pipelines), args.pipeline_arg), parse_sweep(args.sweep))
    parse_call_args(args.call_arg)
    load_prompts(args.prompts, args.n, args.families, args.prompt_seed)
    check_output_dir(args.out)
    if args.warmup < 0:
        raise ValueError(f"--warmup must be 0 or more, got {args.warmup}")


def run_compare(args: argparse.Namespace) -> int:
    """Run the comparison in this process (or as one of the processes accelerate started)."""
    from .runner import run_comparison

    apply_defaults(args)
    results = run_comparison(args.pipelines, args.out, args.prompts, args.seeds, args.sizes, args.n, args.families,
                             args.prompt_seed, args.sweep, args.call_arg, args.clip_model, args.device, args.dtype,
                             args.warmup, progress=not args.no_progress, pipeline_args=args.pipeline_arg)
    if results is not None:
        errors = sum(s["errors"] for s in results["summary"])
        images = sum(s["images"] for s in results["summary"])
        print(f"{images} images, {errors} errors; results in {os.path.join(args.out, 'results.json')}, "
              f"report in {os.path.join(args.out, 'report.md')}")
    return 0


def launch_command(args: argparse.Namespace) -> list[str]:
    """The accelerate command that runs `args` in `args.num_processes` processes."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_processes", str(args.num_processes), "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no",
           "-m", "diffusers_lumina_mgpt.compare.launch", "--pipelines", *args.pipelines, "--prompts", str(args.prompts),
           "--seeds", *map(str, args.seeds), "--sizes", *(f"{w}x{h}" for w, h in args.sizes), "--out", str(args.out),
           "--prompt-seed", str(args.prompt_seed), "--warmup", str(args.warmup)]
    for flag, value in (("--n", args.n), ("--sweep", args.sweep), ("--clip-model", args.clip_model),
                        ("--device", args.device), ("--dtype", args.dtype)):
        if value is not None:
            cmd += [flag, str(value)]
    if args.families:
        cmd += ["--families", *args.families]
    for item in args.call_arg:
        cmd += ["--call-arg", item]
    for item in args.pipeline_arg or []:
        cmd += ["--pipeline-arg", item]
    return cmd + (["--no-progress"] if args.no_progress else [])


def _compare(args: argparse.Namespace) -> int:
    if args.num_processes < 1:
        raise ValueError(f"--num-processes must be at least 1, got {args.num_processes}")
    check_compare_args(args)
    if args.num_processes > 1:
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.num_processes)))
        return subprocess.call(launch_command(args), env=env)
    return run_compare(args)


def _geneval_export(args: argparse.Namespace) -> int:
    from .geneval import export_geneval

    call_kwargs = {k: v for k, v in (("num_inference_steps", args.num_inference_steps),
                                     ("guidance_scale", args.guidance_scale)) if v is not None}
    written = export_geneval(args.metadata, args.model, args.out, args.n_samples, args.seed, args.height, args.width,
                             args.batch_size, call_kwargs, args.device, args.dtype, progress=not args.no_progress)
    print(f"wrote {written} images to {args.out}; score them with GenEval: "
          f"python evaluation/evaluate_images.py {args.out} --outfile results.jsonl --model-path MODELS")
    return 0
