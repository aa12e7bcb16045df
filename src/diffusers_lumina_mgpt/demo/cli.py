"""`lumina-mgpt demo`: serve the Gradio app. Registering the command imports no gradio; running it does."""

from __future__ import annotations

import argparse
import importlib

from .limits import DEFAULT_MAX_QUEUE

GRADIO_MISSING = 'the demo needs gradio, which is not installed: pip install "diffusers-lumina-mgpt[demo]"'


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="serve a web demo: text to image, edit / Omni tasks, chat (needs the [demo] extra)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Serve a Gradio app over a pipeline folder: text to image with a row-by-row preview, "
        "editing and Omni tasks with multi-turn history, and chat with images. Requests run one at a time.",
        epilog="example: lumina-mgpt demo --model lumina-mgpt-768 --port 7860   (then open http://127.0.0.1:7860)")
    demo.add_argument("--model", help="pipeline folder (see `lumina-mgpt convert`); default: "
                                      "diffusers_lumina_mgpt.DEFAULT_MODEL, when the install ships one")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    demo.add_argument("--port", type=int, default=7860, help="port to listen on")
    demo.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                      help="requests that may wait; more are refused with 'Queue is full'")
    demo.add_argument("--device", default=None, help="torch device for the model, e.g. cuda; unset: CPU")
    demo.set_defaults(func=_demo)


def require_gradio():
    """The gradio module; ValueError with the install command when it is missing."""
    try:
        return importlib.import_module("gradio")
    except ImportError as err:
        raise ValueError(GRADIO_MISSING) from err


def _demo(args: argparse.Namespace) -> int:
    require_gradio()
    if args.max_queue < 1:
        raise ValueError(f"--max-queue must be at least 1, got {args.max_queue}")
    from ..default_model import pipeline_folder
    from .app import build_demo, launch

    folder = pipeline_folder(args.model)
    demo = build_demo(folder, max_queue=args.max_queue, device=args.device)
    launch(demo, args.host, args.port)
    return 0
