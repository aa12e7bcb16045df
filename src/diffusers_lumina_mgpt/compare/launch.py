"""Entry point of one comparison process started by
`accelerate launch -m diffusers_lumina_mgpt.compare.launch` (what `lumina-mgpt compare --num-processes N` runs).

Takes the arguments of `lumina-mgpt compare` without `--num-processes`.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from .cli import add_compare_arguments, run_compare

    parser = argparse.ArgumentParser(prog="diffusers_lumina_mgpt.compare.launch")
    add_compare_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_compare(args)
    except (ValueError, OSError) as err:
        print(f"lumina-mgpt compare: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
