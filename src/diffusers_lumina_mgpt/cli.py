"""The `lumina-mgpt` command line: thin subcommands over the public API.

Each subcommand lives in the module that owns its feature and exposes
`register(subparsers)`; this file only wires them and turns user errors
(`ValueError`, `FileNotFoundError`) into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__

# modules that define `register(subparsers)`; each adds its own subcommands
SUBCOMMAND_MODULES: tuple[str, ...] = (".cli_generate", ".cli_edit", ".shapes.cli", ".training.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lumina-mgpt",
        description="Lumina-mGPT autoregressive image generation with diffusers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module, __package__).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"lumina-mgpt {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
