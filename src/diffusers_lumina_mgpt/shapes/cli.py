"""`lumina-mgpt shapes ...` and `lumina-mgpt eval shapes` subcommands, thin over the shapes API.

- `shapes make --task T --n N --seed S --out DIR`: records (JSONL, Lumina-mGPT format) + PNG images;
- `shapes examples --out DIR`: one example sheet per task (the PNGs in docs/shapes);
- `shapes calibrate`: the scorer's own figures (ground-truth accuracy, false accepts);
- `eval shapes --model DIR | --ground-truth`: per-family GenEval-style scores of a pipeline.

`eval` is a group shared with other evaluators: `eval_subparsers` creates it once and returns
its sub-subparsers to whichever module registers next.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from PIL import Image

from .language import FAMILIES
from .render import upscale
from .tasks import TASKS, make_records, write_records


def eval_subparsers(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The sub-subparsers of the shared `eval` command (created on first use)."""
    parser = subparsers.choices.get("eval")
    if parser is None:
        parser = subparsers.add_parser("eval", help="score a model on a benchmark (eval shapes, ...)")
        parser.set_defaults(func=lambda args: parser.print_help() or 0)
        parser.benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")  # type: ignore[attr-defined]
    return parser.benchmarks  # type: ignore[attr-defined]


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 64x64 (width x height), got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {text!r}")
    return w, h


def register(subparsers: argparse._SubParsersAction) -> None:
    shapes = subparsers.add_parser("shapes", help="ShapesWorld: procedural multimodal data with ground truth")
    shapes.set_defaults(func=lambda args: shapes.print_help() or 0)
    sub = shapes.add_subparsers(dest="action", metavar="ACTION")

    fmt = argparse.ArgumentDefaultsHelpFormatter
    make = sub.add_parser("make", help="write task records (JSONL) and images", formatter_class=fmt,
                          epilog="example: lumina-mgpt shapes make --task edit --n 50 --out shapes-edit")
    make.add_argument("--task", required=True, choices=[*TASKS, "all"])
    make.add_argument("--n", type=int, default=100, help="number of records")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--out", required=True, help="output folder (records.jsonl, images/)")
    make.add_argument("--split", default="train", choices=["train", "heldout", "all"],
                      help="train never samples the held-out colour-shape pairs; heldout always includes one")
    make.add_argument("--relative-paths", action="store_true", help="image paths relative to --out (default absolute)")
    make.set_defaults(func=_make)

    examples = sub.add_parser("examples", help="one example sheet per task (PNG), as in docs/shapes",
                              formatter_class=fmt, epilog="example: lumina-mgpt shapes examples --out sheets --seed 3")
    examples.add_argument("--out", required=True, help="folder for the example sheets (one PNG per task)")
    examples.add_argument("--seed", type=int, default=0)
    examples.add_argument("--scale", type=int, default=3, help="nearest-neighbour upscale factor")
    examples.set_defaults(func=_examples)

    cal = sub.add_parser("calibrate", help="measure the scorer: ground-truth accuracy and false accepts",
                         formatter_class=fmt, epilog="example: lumina-mgpt shapes calibrate --n 100 --json calibration.json")
    cal.add_argument("--n", type=int, default=300, help="samples per family / task")
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--json", help="write the figures here")
    cal.set_defaults(func=_calibrate)

    ev = eval_subparsers(subparsers).add_parser(
        "shapes", help="GenEval-style ShapesWorld scores of a pipeline", formatter_class=fmt,
        epilog="example: lumina-mgpt eval shapes --model DIR --n 200 --batch-size 16 --json scores.json "
               "(Omni tasks: --task vqa)")
    ev.add_argument("--model", help="pipeline folder (ours or any diffusers text-to-image pipeline; "
                                    "default: DEFAULT_MODEL, when the install ships one)")
    ev.add_argument("--ground-truth", action="store_true", help="score the ground-truth renders (checks the scorer)")
    ev.add_argument("--n", type=int, default=10, help="prompts per family (and per held-out family)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--families", nargs="+", choices=FAMILIES, metavar="FAMILY",
                    help=f"subset of: {' '.join(FAMILIES)}")
    ev.add_argument("--json", help="write the scores here")
    ev.add_argument("--size", type=parse_size, default=(64, 64), help="WIDTHxHEIGHT to generate (default 64x64)")
    ev.add_argument("--device", help="cuda / cpu (default: cuda if available)")
    ev.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="load the pipeline in this dtype")
    ev.add_argument("--num-inference-steps", type=int, help="passed to the pipeline call if given")
    ev.add_argument("--guidance-scale", type=float, help="passed to the pipeline call if given")
    ev.add_argument("--image-top-k", type=int, help="image_top_k passed to our pipelines if given (else t2i: the "
                                                    "scheduler's; Omni tasks: the folder's default_edit_image_top_k, "
                                                    "then the scheduler's)")
    ev.add_argument("--temperature", type=float, help="sampling temperature passed to our pipelines if given (t2i)")
    ev.add_argument("--task", default="t2i", choices=[*TASKS],
                    help="t2i scores text-to-image by prompt family; the others replay ShapesWorld Omni records "
                         "(caption, vqa, edit, multiedit, segmentation, depth, noedit) through LuminaMGPTEditPipeline")
    ev.add_argument("--batch-size", type=int, default=1, help="prompts per pipeline call (one generator each)")
    ev.add_argument("--save-images", help="also save every generated image in this folder")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(func=_eval)


def _make(args: argparse.Namespace) -> int:
    from ..cli_checks import check_output_dir

    check_output_dir(args.out)
    records = make_records(args.task, args.n, args.seed, args.split)
    path = write_records(records, args.out, relative=args.relative_paths)
    print(f"wrote {len(records)} {args.task} records ({sum(len(r.images) for r in records)} images) to {path}")
    return 0


def example_sheet(images: list[Image.Image], scale: int = 3, gap: int = 4) -> Image.Image:
    """Images side by side (upscaled, top-aligned) on a light background."""
    big = [upscale(im, scale) for im in images]
    sheet = Image.new("RGB", (sum(b.width for b in big) + gap * (len(big) + 1), max(b.height for b in big) + 2 * gap),
                      (235, 235, 235))
    x = gap
    for b in big:
        sheet.paste(b, (x, gap))
        x += b.width + gap
    return sheet


def _examples(args: argparse.Namespace) -> int:
    from ..cli_checks import check_output_dir

    out = check_output_dir(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for k, task in enumerate(TASKS):
        record = make_records(task, 1, args.seed + k)[0]
        example_sheet(record.images, args.scale).save(out / f"{task}.png")
        print(f"## {task} -> {out / f'{task}.png'}")
        for turn in record.conversations:
            print(f"  {turn['from']}: {turn['value']!r}")
    return 0


def _write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {path}")


def _calibrate(args: argparse.Namespace) -> int:
    from .evaluate import cross_task_study, evaluate_shapes, false_accept_study, near_miss_study, task_ground_truth_accuracy

    gt = evaluate_shapes(None, n=args.n, seed=args.seed, ground_truth=True, progress=False)
    figures = {
        "ground_truth_families": gt["families"], "ground_truth_heldout": gt["heldout"]["families"],
        "ground_truth_tasks": task_ground_truth_accuracy(args.n, args.seed),
        "random_pairs": false_accept_study(args.n, args.seed), "near_miss": near_miss_study(args.n, args.seed),
        "cross_task": cross_task_study(args.n, args.seed),
    }
    print(f"{'family':14s} {'gt acc':>7s} {'gt heldout':>10s} {'chance acc':>10s} {'false acc':>9s} {'near-miss fa':>12s}")
    for fam in FAMILIES:
        held = figures["ground_truth_heldout"].get(fam)
        rp = figures["random_pairs"][fam]
        print(f"{fam:14s} {gt['families'][fam]:7.3f} {'-' if held is None else f'{held:.3f}':>10s} "
              f"{rp['chance_accept']:10.3f} {rp['false_accept']:9.3f} {figures['near_miss'][fam]['false_accept']:12.3f}")
    print(f"\n{'task':14s} {'gt acc':>7s} {'gt score':>8s} {'turns':>6s} {'cross fa':>8s}")
    for task, row in figures["ground_truth_tasks"].items():
        cross = figures["cross_task"].get(task)
        print(f"{task:14s} {row['accuracy']:7.3f} {row['score']:8.3f} {row['turns']:6d} "
              f"{'-' if cross is None else format(cross['false_accept'], '.3f'):>8s}")
    _write_json(args.json, figures)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..cli_checks import check_device, check_output_dir, check_output_file
    from .evaluate import evaluate_shapes

    if args.model and args.ground_truth:
        raise ValueError("pass either --model DIR or --ground-truth, not both")
    check_device(args.device)
    if args.json:
        check_output_file(args.json, (".json",), "--json")
    if args.save_images:
        check_output_dir(args.save_images, "--save-images")
    if args.task != "t2i":
        return _eval_task(args)
    call_kwargs = {k: v for k, v in (("num_inference_steps", args.num_inference_steps),
                                     ("guidance_scale", args.guidance_scale), ("image_top_k", args.image_top_k),
                                     ("temperature", args.temperature))
                   if v is not None}
    result = evaluate_shapes(args.model, n=args.n, seed=args.seed, families=args.families, size=args.size,
                             ground_truth=args.ground_truth, device=args.device, dtype=args.dtype,
                             call_kwargs=call_kwargs, progress=not args.no_progress, image_dir=args.save_images,
                             batch_size=args.batch_size)
    print(f"ShapesWorld scores of {result['model']} ({args.n} prompts per family, seed {args.seed}, "
          f"{args.size[0]}x{args.size[1]})")
    for fam, acc in result["families"].items():
        print(f"  {fam:14s} {acc:.3f}")
    print(f"  {'overall':14s} {result['overall']:.3f}")
    if result["heldout"]["families"]:
        print("  held-out colour-shape pairs:")
        for fam, acc in result["heldout"]["families"].items():
            print(f"    {fam:12s} {acc:.3f}")
        print(f"    {'overall':12s} {result['heldout']['overall']:.3f}")
    _write_json(args.json, result)
    return 0


def _eval_task(args: argparse.Namespace) -> int:
    from ..default_model import resolve_model
    from .evaluate import load_pipeline
    from .task_eval import evaluate_tasks

    args.model = resolve_model(args.model)
    pipe = load_pipeline(args.model, args.device, args.dtype)
    if not hasattr(pipe, "vocab"):
        raise ValueError(f"--task {args.task} needs a Lumina-mGPT pipeline folder; {args.model} holds "
                         f"{type(pipe).__name__}")
    from ..pipelines import LuminaMGPTEditPipeline

    pipe = LuminaMGPTEditPipeline.from_pipe(pipe)
    pipe.set_progress_bar_config(disable=True)
    guidance = 1.0 if args.guidance_scale is None else args.guidance_scale
    top_k = pipe.edit_image_top_k if args.image_top_k is None else args.image_top_k
    result = evaluate_tasks(pipe, [args.task], args.n, args.seed, guidance, top_k,
                            progress=not args.no_progress, image_dir=args.save_images)
    row = result[args.task]
    print(f"ShapesWorld {args.task} scores of {args.model} ({args.n} records, seed {args.seed}, guidance {guidance}, "
          f"image top-k {top_k})")
    for key, value in row.items():
        if key == "pass_rate_by_kind":
            value = ", ".join(f"{k} {v['pass_rate']:.3f} of {v['turns']}" for k, v in value.items())
        print(f"  {key:20s} {value if not isinstance(value, float) else f'{value:.3f}'}")
    _write_json(args.json, {"model": str(args.model), "task": args.task, "n": args.n, "seed": args.seed,
                            "guidance_scale": guidance, "image_top_k": top_k, **row})
    return 0
