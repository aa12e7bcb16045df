"""Ordinary permissions for the safetensors files this package writes.

safetensors 0.8 writes each file through a temporary file that is created with mode 0600 and renamed into
place (safetensors issue #782), so a pipeline folder saved under umask 022 has `config.json` readable by
everyone and its weights readable by their owner only: another account, or a container running as another
user, then cannot load the folder. `umask_modes` gives such files the mode `open()` would have given them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE = 0o600  # the mode safetensors' temporary files are created with


def default_file_mode() -> int:
    """The mode a new file gets from `open()` under the process umask (0o644 under umask 022). Linux reports
    the umask in /proc; elsewhere it is read by setting it and back, which another thread creating a file at
    that instant would see."""
    try:
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


def umask_modes(path: str | os.PathLike) -> list[Path]:
    """Give `path` (a file safetensors wrote, under any name) or every `*.safetensors` file under the folder
    `path` the umask's default mode where it has mode 0600, as the rest of a saved folder has; returns the
    files changed. A no-op off POSIX or under umask 077."""
    root = Path(path)
    if os.name != "posix":
        return []
    mode = default_file_mode()
    files = [root] if root.is_file() else sorted(root.rglob("*.safetensors"))
    changed = []
    for file in files:
        if stat.S_IMODE(file.stat().st_mode) == PRIVATE != mode:
            os.chmod(file, mode)
            changed.append(file)
    return changed


__all__ = ["default_file_mode", "umask_modes"]
