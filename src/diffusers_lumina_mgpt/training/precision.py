"""`train.mixed_precision`: "no" (fp32), "bf16", "fp16" (CUDA) or "auto".

bf16 autocast is only fast where the hardware multiplies bf16 natively: a CUDA GPU that supports it, or
an x86 CPU with AVX512-BF16 or AMX. Elsewhere PyTorch emulates it: on a 2-core AVX2 CPU a 1024x1024
bf16 matmul ran at 0.84 GFLOP/s against 67 GFLOP/s in fp32 (80x slower), and a diffusion training step
took 50 s instead of 2.7 s. "auto" picks bf16 where it is native and fp32 elsewhere; an explicit "bf16"
on a CPU without it trains, with a warning that says so.
"""

from __future__ import annotations

import warnings

PRECISIONS = ("no", "bf16", "fp16", "auto")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (x86 AVX512-BF16 or AMX, as PyTorch detects them)."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # an older torch, or a CPU it cannot query: assume not
        return False


def native_bf16(cuda: bool) -> bool:
    import torch

    if not cuda:
        return cpu_has_native_bf16()
    try:  # without emulation: compute capability 8 or newer (torch counts emulated bf16 too by default)
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # an older torch, which counts only native support
        return bool(torch.cuda.is_bf16_supported())


def resolve_mixed_precision(setting: str, cuda: bool) -> str:
    """The precision a run uses: `setting`, or for "auto" bf16 where the hardware runs it natively and
    "no" (fp32) elsewhere. Warns when bf16 is asked for on a CPU that would emulate it. "auto" is resolved
    at every start, so a run resumed on other hardware may continue in the other precision."""
    if setting == "auto":
        return "bf16" if native_bf16(cuda) else "no"
    if setting == "bf16" and not cuda and not cpu_has_native_bf16():
        warnings.warn("train.mixed_precision is bf16, but this CPU has no native bf16 (no AVX512-BF16 or AMX): "
                      "PyTorch emulates it, many times slower than fp32; set train.mixed_precision: auto or 'no'",
                      stacklevel=2)
    return setting


__all__ = ["PRECISIONS", "cpu_has_native_bf16", "native_bf16", "resolve_mixed_precision"]
