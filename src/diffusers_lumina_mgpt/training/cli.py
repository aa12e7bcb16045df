"""Training subcommands: `pretokenize`, `train`, `train-vq`, `train-diffusion`, `export`, `average`, `plot`.

`train --num-processes N` (N > 1) starts N processes through accelerate; it runs exactly
`accelerate launch --multi_gpu --num_processes N -m diffusers_lumina_mgpt.training.launch CONFIG ...`
(on a CPU-only machine accelerate then uses gloo), which docs/training.md gives for users who launch
it themselves or pass their own `--config_file` (FSDP, several machines).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

TRAIN_EXAMPLE = "example: lumina-mgpt train examples/shapesworld/smoke.yaml --output-dir runs/smoke"


def register(subparsers: argparse._SubParsersAction) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    pre = subparsers.add_parser(
        "pretokenize", help="records -> token ids + labels (memory-mapped shards), resumable", formatter_class=fmt,
        epilog="example: lumina-mgpt pretokenize my_images/ --model my-pipeline --size 512 --out data/t2i-512")
    pre.add_argument("source", help="a .json/.jsonl file of Lumina-mGPT records, a folder of images with .txt "
                                    "captions, or shapes:TASK")
    pre.add_argument("--model", required=True, help="pipeline folder whose tokenizer/ and vqvae/ are used")
    pre.add_argument("--size", type=int, required=True, help="target resolution (resolution buckets of this size)")
    pre.add_argument("--out", required=True, help="output folder (re-run the same command to resume)")
    pre.add_argument("--n", type=int, help="number of records (required for shapes:TASK; default all)")
    pre.add_argument("--seed", type=int, default=0, help="seed of shapes:TASK generation")
    pre.add_argument("--num-proc", type=int, default=1, help="worker processes")
    pre.add_argument("--chunk-size", type=int, default=256, help="records per shard")
    pre.add_argument("--max-length", type=int, help="skip records longer than this many tokens")
    pre.set_defaults(func=_pretokenize)

    tr = subparsers.add_parser("train", help="FP-SFT / Omni-SFT training on accelerate (resumes from DIR)",
                               formatter_class=fmt, epilog=TRAIN_EXAMPLE)
    tr.add_argument("config", help="YAML run config (see docs/training.md)")
    tr.add_argument("--output-dir", required=True, help="run folder; re-running on it resumes")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    tr.add_argument("--num-processes", type=int, default=1, help="processes started through accelerate")
    tr.add_argument("--no-progress", action="store_true")
    tr.set_defaults(func=_train)

    vq = subparsers.add_parser("train-vq", help="train a small VQ image tokenizer (ChameleonVQModel: diffusers VQModel with PixelNorm)",
                               formatter_class=fmt,
                               epilog="example: lumina-mgpt train-vq examples/shapesworld/vq.yaml --output-dir runs/vq")
    vq.add_argument("config", nargs="?", help="YAML config (default: the built-in ShapesWorld settings)")
    vq.add_argument("--output-dir", required=True)
    vq.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    vq.add_argument("--no-progress", action="store_true")
    vq.set_defaults(func=_train_vq)

    dif = subparsers.add_parser(
        "train-diffusion", help="train a small pixel-space text-to-image diffusion baseline (a stock IFPipeline)",
        formatter_class=fmt,
        epilog="example: lumina-mgpt train-diffusion examples/shapesworld/diffusion.yaml --output-dir runs/diffusion")
    dif.add_argument("config", help="YAML config (examples/shapesworld/diffusion.yaml; see docs/training.md)")
    dif.add_argument("--output-dir", required=True, help="run folder; re-running on it resumes")
    dif.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    dif.add_argument("--no-progress", action="store_true")
    dif.set_defaults(func=_train_diffusion)

    ex = subparsers.add_parser("export", help="a training checkpoint -> a diffusers pipeline folder", formatter_class=fmt,
                               epilog="example: lumina-mgpt export runs/smoke/checkpoints/step-20 --out smoke-pipeline")
    ex.add_argument("checkpoint", help="DIR/checkpoints/step-N")
    ex.add_argument("--out", required=True)
    ex.add_argument("--default-size", type=int, help="the pipeline's default size (default: the checkpoint's stage size)")
    ex.set_defaults(func=_export)

    av = subparsers.add_parser(
        "average", help="one pipeline whose transformer is the weighted mean of several fine-tunes' (a model soup)",
        formatter_class=fmt,
        epilog="example: lumina-mgpt average runs/vqa2/pipeline runs/vqa3/pipeline --weights 0.75 0.25 --out soup")
    av.add_argument("pipelines", nargs="+", help="pipeline folders of one architecture, VQ tokenizer and tokenizer; "
                                                  "the first gives every other component and setting")
    av.add_argument("--weights", type=float, nargs="+", help="one per folder, summing to 1 (default: equal)")
    av.add_argument("--out", required=True, help="new pipeline folder")
    av.set_defaults(func=_average)

    pl = subparsers.add_parser("plot", help="loss curves of a run, per stage, to a PNG (needs matplotlib)",
                               formatter_class=fmt, epilog="example: lumina-mgpt plot runs/smoke -o loss.png")
    pl.add_argument("run", help="a training output folder (holds metrics.jsonl)")
    pl.add_argument("-o", "--out", help="PNG path (default: RUN/loss.png)")
    pl.set_defaults(func=_plot)


def _pretokenize(args: argparse.Namespace) -> int:
    from .pretokenize import pretokenize, skipped_table
    from .records import open_source

    if args.num_proc < 1:
        raise ValueError(f"--num-proc must be at least 1, got {args.num_proc}")
    source = open_source(args.source, args.n, args.seed, args.chunk_size)
    manifest = pretokenize(source, args.model, args.size, args.out, args.num_proc, args.max_length)
    print(skipped_table(manifest))
    return 0


def launch_command(args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           str(args.num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "diffusers_lumina_mgpt.training.launch", args.config, "--output-dir", args.output_dir]
    for s in args.set:
        cmd += ["--set", s]
    return cmd + (["--no-progress"] if args.no_progress else [])


def _train(args: argparse.Namespace) -> int:
    from .train import load_train_config, train

    config = load_train_config(args.config, args.set)  # check the config before starting processes
    if args.num_processes < 1:
        raise ValueError(f"--num-processes must be at least 1, got {args.num_processes}")
    if args.num_processes > 1:
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.num_processes)))
        return subprocess.call(launch_command(args), env=env)
    out = train(config, args.output_dir, progress=not args.no_progress)
    print(f"pipeline written to {out}")
    return 0


def _train_vq(args: argparse.Namespace) -> int:
    from .vq_train import load_vq_config, train_vq

    report = train_vq(load_vq_config(args.config, args.set), args.output_dir, progress=not args.no_progress)
    print(f"VQ tokenizer in {os.path.join(args.output_dir, 'vqvae')}: held-out PSNR {report['psnr']:.2f} dB, "
          f"{report['codes_used']}/{report['codebook_size']} codes used, perplexity {report['perplexity']:.1f}")
    return 0


def _train_diffusion(args: argparse.Namespace) -> int:
    from .diffusion_train import load_diffusion_config, train_diffusion

    out = train_diffusion(load_diffusion_config(args.config, args.set), args.output_dir, progress=not args.no_progress)
    print(f"pipeline written to {out} (diffusers IFPipeline); training compute in "
          f"{os.path.join(args.output_dir, 'compute.json')}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .train import export_checkpoint

    print(f"pipeline written to {export_checkpoint(args.checkpoint, args.out, args.default_size)}")
    return 0


def _average(args: argparse.Namespace) -> int:
    from .average import average_pipelines

    print(f"pipeline written to {average_pipelines(args.pipelines, args.out, args.weights)}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .plot import plot_run

    print(f"loss curves written to {plot_run(args.run, args.out)}")
    return 0
