"""What one pipeline call costs: wall time, peak memory, model forwards; and a pipeline's size.

- CPU memory: the process's peak resident set size during the call, sampled from
  /proc/self/status (VmRSS) by a background thread every `interval` seconds, plus one sample at
  each end. It includes the loaded weights and the Python/torch runtime, not only the call's work.
- GPU memory: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` (tensors only, not
  the caching allocator's reserve or the CUDA context).
- Forwards of a diffusion pipeline: calls of its denoiser (`pipe.transformer`, else `pipe.unet`),
  counted by a forward pre-hook. One call counts once however many rows it carries, so a pipeline
  that batches the conditional and unconditional CFG rows (Stable Diffusion, PixArt) counts one per
  step; one that runs them as two calls counts two.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
MEMORY_KINDS = ("cpu_peak_rss", "cuda_max_allocated", "unavailable")


def current_rss_bytes() -> int | None:
    """VmRSS of this process, or None where /proc is not there (macOS, Windows)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


class PeakMemory:
    """`with PeakMemory(device) as m: ...` then `m.peak_bytes` (None if unmeasurable) and `m.kind`."""

    def __init__(self, device: Any = "cpu", interval: float = 0.002):
        import torch

        self.device = torch.device(device)
        self.interval = interval
        self.peak_bytes: int | None = None
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else (
            "cpu_peak_rss" if self.device.type == "cpu" and current_rss_bytes() is not None else "unavailable")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        rss = current_rss_bytes()
        if rss is not None:
            self.peak_bytes = max(self.peak_bytes or 0, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakMemory:
        import torch

        if self.kind == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.kind == "cpu_peak_rss":
            self._sample()
            self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.kind == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sample()


class Stopwatch:
    """Wall seconds of a block; waits for queued GPU work at both ends."""

    def __init__(self, device: Any = "cpu"):
        import torch

        self.cuda = torch.device(device).type == "cuda"
        self.seconds = 0.0

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def __enter__(self) -> Stopwatch:
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._start


def denoiser_name(pipe: Any) -> str | None:
    """The component whose calls count as a diffusion pipeline's forwards: `transformer`, else `unet`."""
    import torch

    for name in ("transformer", "unet"):
        if isinstance(getattr(pipe, name, None), torch.nn.Module):
            return name
    return None


class ForwardCounter:
    """`with ForwardCounter(module) as c: ...` then `c.count`: calls of `module` (None counts nothing)."""

    def __init__(self, module: Any | None):
        self.module = module
        self.count = 0
        self._handle = None

    def _hook(self, *_: Any) -> None:
        self.count += 1

    def __enter__(self) -> ForwardCounter:
        if self.module is not None:
            self._handle = self.module.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()


def count_parameters(pipe: Any) -> int:
    """Parameters of every `nn.Module` component (text encoders, denoiser, VAE / VQ model, ...)."""
    import torch

    components = getattr(pipe, "components", {}) or {}
    seen: set[int] = set()
    total = 0
    for module in components.values():
        if isinstance(module, torch.nn.Module):
            for p in module.parameters():
                if id(p) not in seen:  # tied or shared weights count once
                    seen.add(id(p))
                    total += p.numel()
    return total
