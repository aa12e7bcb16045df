"""Checks the command line runs before any model loads, so a mistake costs one line and no waiting.

Each check raises `ValueError` (or `FileNotFoundError`) with a message that names the fix; `cli.main`
prints it as one line and exits with status 2.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from pathlib import Path
from typing import Any


def check_device(device: str | None) -> str | None:
    """`device` if torch knows it and this machine has it (None stays None: the command's default)."""
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: this machine has no CUDA GPU (or torch is a CPU build); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ValueError(f"--device {device}: unsupported device type {dev.type!r}; use cpu, cuda or mps")
    return device


def _first_existing(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return Path(".")


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """A folder that can be created (or already is one) and written to."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file; pass a folder path")
    base = _first_existing(path)
    if not base.is_dir():
        raise ValueError(f"{flag} {path}: {base} is a file, so no folder can be made under it; pass another path")
    try:  # a real probe: permission bits say nothing for root or read-only file systems
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError:
        raise ValueError(f"{flag} {path}: {base} is not writable; pass a path you can write to") from None
    return path


def check_output_file(path: str | Path, suffixes: tuple[str, ...] = (".png",), flag: str = "-o/--output") -> Path:
    """A file path with one of `suffixes` whose folder can be created and written to."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} must end in {' or '.join(suffixes)}, got {path}")
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; pass a file path such as {path / ('out' + suffixes[0])}")
    check_output_dir(path.parent if str(path.parent) else Path("."), flag)
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {path} exists and is not writable")
    return path


def check_call_kwargs(pipe: Any, kwargs: dict[str, Any], flags: dict[str, str] | None = None) -> None:
    """ValueError when `pipe.__call__` takes none of the keywords in `kwargs` (names the flag to drop)."""
    params = inspect.signature(pipe.__call__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for name in kwargs:
        if name not in params:
            flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
            raise ValueError(f"{flag} does not apply to {type(pipe).__name__} (its __call__ takes no {name}); drop it")
