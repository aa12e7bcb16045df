"""Fast inference paths for the transformer's linear layers, kept apart from its architecture.

* `linear` / `Linear`: `F.linear` with a CPU route for the few rows of a decode step where MKL's small-M
  GEMM is slow (`weight @ x.T` streams the weight); which form is faster depends on the CPU, so it is
  measured once per process (`small_batch_transposed`).
* `fuse_linears` / `fused_usable`: q/k/v and gate/up weights concatenated in place
  (`LuminaMGPTTransformer.fuse_projections`), used while they still hold the layer's weights.
* `WeightRows`: the rows of a weight for a vocabulary subset (code-only logits inside an image),
  gathered once and reused.

The compiled decode step lives in `compiled_decoding.py`.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

# On some CPUs MKL's fp32 GEMM for x (M, in) @ W.T is slow for the few rows of a decode step (7 GB/s for a
# 65536 x 512 lm_head at M=2 on 2 cores of an AVX-512 AMD EPYC), where the same product as W @ x.T streams the
# weight at ~42 GB/s; on others (2 cores of an AMX Intel Xeon) F.linear is 2-5x faster than W @ x.T. Single
# rows are padded to two for W @ x.T (sgemv is as slow as the slow GEMM path).
_SMALL_M_ROWS = 8
_transposed: bool | None = None  # the measured choice, see small_batch_transposed


def small_batch_transposed() -> bool:
    """Whether `weight @ x.T` beats `F.linear` for a 2-row fp32 product on this CPU: timed once per process on
    a 4096 x 512 weight (a few milliseconds, no random numbers drawn), at the thread count of the first call;
    `weight @ x.T` must win by 20% to be chosen."""
    global _transposed
    if _transposed is None:
        if torch.compiler.is_compiling():  # no timing inside a trace: the route before it was measured
            return True
        import time

        weight, x = torch.full((4096, 512), 0.01), torch.full((2, 512), 0.02)

        def best(fn) -> float:
            fn()
            times = []
            for _ in range(7):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return min(times)

        with torch.no_grad():
            _transposed = best(lambda: weight @ x.T) < 0.8 * best(lambda: F.linear(x, weight))
    return _transposed


def set_small_batch_transposed(transposed: bool | None) -> None:
    """Force the small-batch route (True: `weight @ x.T`, False: `F.linear`); None measures it again on next use."""
    global _transposed
    _transposed = transposed


def frozen_compile() -> bool:
    """Whether inductor is tracing with frozen weights (`compiled_decoding`'s CPU step): its C++ GEMM template
    then packs each constant weight and matches the `F.linear` form (`weight @ x.T` would stay a call to MKL)."""
    if not torch.compiler.is_compiling():
        return False
    from torch._inductor import config

    return bool(config.freezing)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, routed through `weight @ x.T` for fp32 CPU inference on at most 8 rows where that is faster
    on this CPU (`small_batch_transposed`; never under a frozen compile, see `frozen_compile`)."""
    rows = x.numel() // x.shape[-1] if x.numel() else 0
    if (
        0 < rows <= _SMALL_M_ROWS
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not frozen_compile()
        and small_batch_transposed()
    ):
        x2 = x.reshape(rows, x.shape[-1])
        if rows == 1:
            x2 = torch.cat([x2, x2])
        y = (weight @ x2.T).T[:rows].reshape(*x.shape[:-1], weight.shape[0])
        return y if bias is None else y + bias
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters and state-dict keys) with the fast small-batch CPU path of `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def fuse_linears(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the weights (and biases) of `linears` along out_features; re-point them to views of it."""
    weight = torch.cat([lin.weight.detach() for lin in linears], dim=0)
    bias = None if linears[0].bias is None else torch.cat([lin.bias.detach() for lin in linears], dim=0)
    start = 0
    for lin in linears:
        end = start + lin.out_features
        lin.weight = nn.Parameter(weight[start:end], requires_grad=lin.weight.requires_grad)
        if bias is not None:
            lin.bias = nn.Parameter(bias[start:end], requires_grad=lin.bias.requires_grad)
        start = end
    return weight, bias


def fused_usable(first: torch.Tensor, fused: torch.Tensor) -> bool:
    """Whether a fused projection still holds the layer's weights (inference only). A compiled forward
    uses the separate projections: the data-pointer check cannot be traced, and the launches that
    fusion saves are what compilation removes anyway."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    return first.data_ptr() == fused.data_ptr()


class WeightRows:
    """Rows `ids` of a weight, gathered once and reused while the ids and the weight are unchanged
    (under autograd they are gathered every call, so gradients flow)."""

    def __init__(self) -> None:
        self._kept: tuple | None = None  # (weakref to the weight, ids, weight version, rows)

    def get(self, weight: torch.Tensor, ids: torch.Tensor, on_new=None) -> torch.Tensor:
        """(K, in) rows of `weight` for `ids` (K,); `on_new(rows)` runs when they are gathered anew."""
        if torch.is_grad_enabled():
            return weight.index_select(0, ids.to(weight.device))
        # the same tensor object (another model's weight may reuse a freed address), unchanged since.
        # Inference tensors have no version counter: after editing one in place (inside inference_mode),
        # call `clear()` (`pipe.disable_compiled_decoding()` for the compiled decoder's rows).
        version = (weight.data_ptr(), weight.dtype, None if weight.is_inference() else weight._version)
        kept = self._kept
        if (kept is None or kept[0]() is not weight or kept[2] != version
                or not torch.equal(kept[1], ids.to(kept[1].device))):
            ids = ids.to(weight.device)
            self._kept = kept = (weakref.ref(weight), ids.clone(), version, weight.index_select(0, ids))
            if on_new is not None:
                on_new(kept[3])
        return kept[3]

    def clear(self) -> None:
        self._kept = None
