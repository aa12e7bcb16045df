"""`lumina-mgpt edit` and `lumina-mgpt chat`: image-to-image (Omni tasks) and conversation from the shell.

Both use `LuminaMGPTEditPipeline` over a pipeline folder (default: `DEFAULT_MODEL`, when the install ships one).
`chat` answers one message when given one, else reads messages from stdin, one per line, streaming
each answer; `/image PATH` attaches an image to the next message and `/reset` clears the history.
Image answers are written as `chat-N.png` into `--out-dir` when one is given (nothing is written otherwise).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    ed = subparsers.add_parser(
        "edit", help="edit an image or run an Omni task on it (depth, segmentation, no-edit denoise, ...)",
        formatter_class=fmt,
        epilog='example: lumina-mgpt edit scene.png "Make the red circle blue." -o edited.png')
    ed.add_argument("image", help="input image file")
    ed.add_argument("prompt", nargs="?", help="the instruction (task edit), object (detection) or caption (condition)")
    ed.add_argument("--task", default="edit", help="edit, segmentation, depth, surface_normal, pose, detection, "
                                                   "condition, or denoise (no-edit denoising)")
    ed.add_argument("--model", help="pipeline folder (default: DEFAULT_MODEL, when the install ships one)")
    ed.add_argument("--seed", type=int, default=0, help="sampling seed (no effect at image top-k 1, greedy, which "
                                                       "the shipped model's folder sets: pass --image-top-k 3 for "
                                                       "variety)")
    ed.add_argument("--guidance-scale", type=float, default=1.0)
    ed.add_argument("--image-top-k", type=int, help="top-k over the VQ codes (default: the model folder's "
                                                   "default_edit_image_top_k, else its scheduler's image_top_k)")
    ed.add_argument("-o", "--output", required=True, help="PNG file to write")
    ed.set_defaults(func=_edit)

    ch = subparsers.add_parser("chat", help="talk with the model about images (streamed text)", formatter_class=fmt,
                               epilog='example: lumina-mgpt chat "What is in this image? <|image|>" --image scene.png')
    ch.add_argument("message", nargs="?", help="one message to answer (default: read messages from stdin)")
    ch.add_argument("--image", action="append", default=[], help="image(s) for the message (repeatable)")
    ch.add_argument("--model", help="pipeline folder (default: DEFAULT_MODEL, when the install ships one)")
    ch.add_argument("--seed", type=int, default=0)
    ch.add_argument("--text-top-k", type=int, default=1, help="1 = greedy answers")
    ch.add_argument("--max-new-tokens", type=int, default=128)
    ch.add_argument("--out-dir", help="where image answers are written (chat-N.png); without it they are not saved")
    ch.set_defaults(func=_chat)


def _load(model: str | None):
    from .default_model import pipeline_folder
    from .pipelines import LuminaMGPTEditPipeline

    pipe = LuminaMGPTEditPipeline.from_pretrained(str(pipeline_folder(model)))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(path: str):
    """The image file, read before the model loads so a bad path fails at once."""
    from .image_processor import load_image

    return load_image(path)


def _edit(args: argparse.Namespace) -> int:
    import torch

    from .cli_checks import check_output_file
    from .pipelines.tasks import resolve_task

    check_output_file(args.output)
    if args.task != "denoise":
        resolve_task(args.task)  # an unknown task fails here, before the model loads
    image = _image(args.image)
    pipe = _load(args.model)
    generator = torch.Generator().manual_seed(args.seed)
    common = {"generator": generator, "guidance_scale": args.guidance_scale, "image_top_k": args.image_top_k}
    if args.task == "denoise":
        out = pipe.denoise(image, **common)
    else:
        out = pipe(image=image, prompt=args.prompt, task=args.task, **common)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    out.images[0].save(args.output)
    print(f"wrote {args.output} ({out.num_forward_passes} forward passes)")
    return 0


def _chat(args: argparse.Namespace) -> int:
    import torch

    from .cli_checks import check_output_dir
    from .vocab import IMAGE_PLACEHOLDER

    if args.out_dir is not None:
        check_output_dir(args.out_dir, "--out-dir")
    images = [_image(p) for p in args.image]
    pipe = _load(args.model)
    generator = torch.Generator().manual_seed(args.seed)
    out_dir = None if args.out_dir is None else Path(args.out_dir)
    history, pending, saved = None, images, 0

    def answer(message: str) -> None:
        nonlocal history, pending, saved
        if pending and IMAGE_PLACEHOLDER not in message:
            message = message + f" {IMAGE_PLACEHOLDER}" * len(pending)
        stream = pipe.chat(message, images=pending or None, history=history, text_top_k=args.text_top_k,
                           max_new_tokens=args.max_new_tokens, generator=generator, stream=True)
        for piece in stream:
            print(piece, end="", flush=True)
        result = stream.result
        for image in result.images or []:
            if out_dir is None:
                print(f" [a {image.width}x{image.height} image; pass --out-dir to save it]", end="")
                continue
            saved += 1
            out_dir.mkdir(parents=True, exist_ok=True)
            image.save(out_dir / f"chat-{saved}.png")
            print(f" [image: {out_dir / f'chat-{saved}.png'}]", end="")
        print()
        history, pending = result.history, []

    if args.message is not None:
        answer(args.message)
        return 0
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        if line.startswith("/image "):
            pending.append(_image(line.split(" ", 1)[1].strip()))
        elif line == "/reset":
            history, pending = None, []
        else:
            answer(line)
    return 0
