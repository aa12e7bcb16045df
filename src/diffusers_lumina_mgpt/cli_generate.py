"""`lumina-mgpt convert` and `lumina-mgpt generate`: thin command-line wrappers over the public API."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    conv = subparsers.add_parser(
        "convert",
        help="convert a Lumina-mGPT / Chameleon checkpoint into a diffusers pipeline folder",
        description="Convert a transformers-format Lumina-mGPT / Chameleon folder plus Meta's VQGAN files "
        "into a LuminaMGPTPipeline folder (model_index.json, tokenizer, transformer, vqvae, scheduler).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="example: lumina-mgpt convert --model Lumina-mGPT-7B-768 --vqgan-ckpt chameleon/tokenizer/vqgan.ckpt "
               "--vqgan-config chameleon/tokenizer/vqgan.yaml --default-size 768 --dtype bfloat16 --out lumina-mgpt-768",
    )
    conv.add_argument("--model", required=True, help="transformers folder (config.json + safetensors)")
    conv.add_argument("--vqgan-ckpt", help="Meta's vqgan.ckpt (the image decoder); without it only encoding works")
    conv.add_argument("--vqgan-config", help="Meta's vqgan.yaml")
    conv.add_argument("--text-tokenizer", help="Meta's text_tokenizer.json, if the model folder has no tokenizer")
    conv.add_argument("--out", required=True, help="output pipeline folder")
    conv.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="cast weights (default: keep)")
    conv.add_argument("--default-size", type=int, default=512,
                      help="the pixel size `generate` uses when no --height/--width is given: a positive multiple of "
                           "the model's grid (32 px for Chameleon's VQGAN); Lumina-mGPT models are 512, 768 or 1024")
    conv.add_argument("--scheduler", choices=["ar", "jacobi"], default="ar", help="default decoding scheduler")
    conv.set_defaults(func=_convert)

    gen = subparsers.add_parser(
        "generate", help="generate an image from a prompt with a pipeline folder",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog='example: lumina-mgpt generate "a red circle to the left of a blue square" -o out.png')
    gen.add_argument("prompt")
    gen.add_argument("--model", help="LuminaMGPTPipeline folder (see `lumina-mgpt convert`); default: "
                                     "diffusers_lumina_mgpt.DEFAULT_MODEL, when the install ships one")
    gen.add_argument("--height", type=int, help="default: the model's default size")
    gen.add_argument("--width", type=int, help="default: the model's default size")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--scheduler", choices=["ar", "jacobi"], help="default: the scheduler saved in the folder")
    gen.add_argument("--guidance-scale", type=float, default=None,
                     help="classifier-free guidance (default: the model's default_guidance_scale, 3.0 unless its folder says)")
    gen.add_argument("--image-top-k", type=int, default=None)
    gen.add_argument("--temperature", type=float, default=None)
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--num-drafts", type=int, default=16, help="drafts per forward for --scheduler jacobi")
    gen.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    gen.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    gen.add_argument("--compile", action="store_true",
                     help="compiled decoding (torch.compile; CUDA graphs on a GPU): pays off for large images on a "
                          "GPU; the first call compiles (about a minute for the 7B model)")
    gen.add_argument("-o", "--output", required=True, help="PNG file to write (settings go in its metadata)")
    gen.add_argument("--json", action="store_true", help="print the settings and figures as one JSON line")
    gen.set_defaults(func=_generate)


def _convert(args: argparse.Namespace) -> int:
    from .cli_checks import check_output_dir
    from .convert import convert_checkpoint, parse_dtype

    if args.default_size <= 0 or args.default_size % 32:
        raise ValueError(f"--default-size must be a positive multiple of 32 px (the VQGAN's grid), got "
                         f"{args.default_size}; Lumina-mGPT models are 512, 768 or 1024")
    check_output_dir(args.out)

    out = convert_checkpoint(
        args.model, args.out, vqgan_ckpt=args.vqgan_ckpt, vqgan_config=args.vqgan_config,
        text_tokenizer=args.text_tokenizer, torch_dtype=parse_dtype(args.dtype), default_size=args.default_size,
        scheduler=args.scheduler,
    )
    print(f"wrote {out}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    import torch
    from PIL.PngImagePlugin import PngInfo

    from .convert import parse_dtype
    from .pipelines import LuminaMGPTPipeline
    from .schedulers import LuminaMGPTARScheduler, LuminaMGPTJacobiScheduler

    from .cli_checks import check_device, check_output_file
    from .default_model import pipeline_folder

    check_output_file(args.output)
    check_device(args.device)
    args.model = str(pipeline_folder(args.model))
    dtype = parse_dtype(args.dtype)
    pipe = LuminaMGPTPipeline.from_pretrained(args.model, **({"dtype": dtype} if dtype else {}))
    if args.scheduler == "jacobi":
        pipe.scheduler = LuminaMGPTJacobiScheduler.from_config(pipe.scheduler.config, num_drafts=args.num_drafts)
    elif args.scheduler == "ar":
        pipe.scheduler = LuminaMGPTARScheduler.from_config(pipe.scheduler.config)
    pipe.to(args.device)
    if args.compile:
        pipe.enable_compiled_decoding()
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    out = pipe(
        args.prompt, height=args.height, width=args.width, guidance_scale=args.guidance_scale,
        negative_prompt=args.negative_prompt, generator=generator, image_top_k=args.image_top_k,
        temperature=args.temperature,
    )
    image = out.images[0]
    settings = {
        "prompt": args.prompt, "negative_prompt": args.negative_prompt, "height": image.height,
        "width": image.width, "seed": args.seed,
        "scheduler": "jacobi" if isinstance(pipe.scheduler, LuminaMGPTJacobiScheduler) else "ar",
        "guidance_scale": pipe.guidance_scale,
        "image_top_k": args.image_top_k if args.image_top_k is not None else pipe.scheduler.config.image_top_k,
        "temperature": args.temperature if args.temperature is not None else pipe.scheduler.config.temperature,
        "model": str(args.model), "num_forward_passes": out.num_forward_passes, "compiled": args.compile,
    }
    info = PngInfo()
    info.add_text("lumina-mgpt", json.dumps(settings))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    image.save(args.output, pnginfo=info)
    if args.json:
        print(json.dumps({"output": args.output, **settings}))
    else:
        print(f"wrote {args.output} ({out.tokens.shape[1] - 3} image tokens in {out.num_forward_passes} forward passes)")
    return 0
