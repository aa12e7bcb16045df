"""Entry point of one training process started by `accelerate launch -m diffusers_lumina_mgpt.training.launch`.

Takes the same arguments as `lumina-mgpt train` (without `--num-processes`).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from .train import load_train_config, train

    parser = argparse.ArgumentParser(prog="diffusers_lumina_mgpt.training.launch")
    parser.add_argument("config")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        train(load_train_config(args.config, args.set), args.output_dir, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as err:
        print(f"lumina-mgpt train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
