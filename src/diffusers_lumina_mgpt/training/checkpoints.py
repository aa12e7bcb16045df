"""Run folders: atomic checkpoints kept to the last K, resume from the newest, and metrics.jsonl.

Layout of a run folder `DIR`:
  DIR/checkpoints/step-N/   one accelerate state (model, optimiser, LR schedule, every RNG) plus
                            `trainer_state.json` (step, stage, data position) and the run config
  DIR/metrics.jsonl         one JSON line per optimiser step
A checkpoint is written under a temporary name and renamed when complete, so a crash mid-save never
leaves a half-written `step-N` behind and the previous one stays intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..file_modes import umask_modes

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def read_state(checkpoint: str | Path) -> dict[str, Any]:
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a complete checkpoint (no {STATE_FILE})")
    return json.loads(path.read_text())


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], write: Callable[[Path], None],
                    keep: int, is_main: bool = True, barrier: Callable[[], None] = lambda: None) -> Path:
    """Write a checkpoint atomically: `write(tmp)` fills a temporary folder (every process may write its
    shard), the main process adds `trainer_state.json`, renames it to `step-N` and prunes to `keep`."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    write(tmp)
    barrier()
    if is_main:
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=1))
        umask_modes(tmp)
        if final.exists():  # re-saving the same step (e.g. the end of a resumed run)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


class MetricsLog:
    """Appends one JSON line per step to `DIR/metrics.jsonl`; on resume from step S it first drops the
    lines of steps after S (written after the checkpoint, before the kill), so a resumed run's file
    holds each step once."""

    def __init__(self, path: str | Path, resume_step: int = 0, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill mid-write
                    continue
                if row.get("step", 0) <= resume_step:
                    kept.append(line)
            self.path.write_text("".join(k + "\n" for k in kept))

    def write(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


def save_pipeline(pipe: Any, out: Path) -> Path:
    """`pipe.save_pretrained` into `out` atomically: written under a temporary name, then renamed, so an
    interrupted export never leaves a half-written pipeline folder."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp))
    umask_modes(tmp)  # diffusers' own pipelines too (the diffusion baseline)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def save_plain_state(folder: Path, model: Any, optimizer: Any, scheduler: Any) -> None:
    """Single-process state without accelerate: weights (safetensors), optimiser, LR schedule, RNGs."""
    import random

    import numpy as np
    import torch
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}},
               folder / "training_state.pt")


def load_plain_state(folder: Path, model: Any, optimizer: Any, scheduler: Any) -> None:
    import random

    import numpy as np
    import torch
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    state = torch.load(folder / "training_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; is {run_dir} a training output folder?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


__all__ = ["MetricsLog", "checkpoint_dirs", "latest_checkpoint", "load_plain_state", "read_metrics", "read_state",
           "save_checkpoint", "save_plain_state"]
