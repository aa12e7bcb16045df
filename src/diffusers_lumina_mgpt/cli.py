"""The `lumina-mgpt` command line: thin subcommands over the public API.

Each subcommand lives in the module that owns its feature and exposes
`register(subparsers)`; this file only wires them and turns user errors (`ValueError` and
`OSError`: bad values, missing, unreadable or unwritable files) into one line on stderr and exit
status 2. `--debug` (anywhere on the line) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__

# modules that define `register(subparsers)`; each adds its own subcommands
SUBCOMMAND_MODULES: tuple[str, ...] = (".cli_generate", ".cli_edit", ".shapes.cli", ".training.cli", ".demo.cli",
                                        ".compare.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lumina-mgpt",
        description="Lumina-mGPT autoregressive image generation with diffusers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module, __package__).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # accepted after the subcommand too
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as err:
        if debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__  # one line, whatever the message
        print(f"lumina-mgpt {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lumina-mgpt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
