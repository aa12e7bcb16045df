"""The matmuls of one CFG decode step (2 rows) on a CPU, three ways, against the machine's read rate.

One step of a Chameleon-style transformer multiplies two rows by every layer's q/k/v/o, gate/up and down
weights and by the code rows of the lm_head. This times that chain of products, in one process:

* `F.linear` (`x @ W.T`: MKL's small-M GEMM),
* `W @ x.T` (the eager route of `fast_linear.linear`),
* `F.linear` compiled by inductor with frozen weights and its C++ GEMM template (the compiled CPU
  decode step's setting, `compiled_decoding.FROZEN_CPU_CONFIG`),

and prints each as ms and as a multiple of the time to read the weights once at the streaming read rate
(`sum` over 256 MiB, best of 5, measured before and after).

    python benchmarks/decode_gemm.py                      # the 35M config: hidden 512, 8 layers, 1376
    python benchmarks/decode_gemm.py --hidden 768 --layers 12 --intermediate 2304
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from text_to_image import read_rate_gbps  # this folder: the same streaming read rate as the decode benchmark


class Chain(nn.Module):
    def __init__(self, weights: list[torch.Tensor]) -> None:
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(w, requires_grad=False) for w in weights])

    def forward(self, x_hidden: torch.Tensor, x_inter: torch.Tensor) -> torch.Tensor:
        out = [F.linear(x_inter if w.shape[1] == x_inter.shape[1] else x_hidden, w).sum() for w in self.weights]
        return torch.stack(out).sum()


def bench(fn, iters: int = 100) -> float:
    for _ in range(10):
        fn()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=1376)
    ap.add_argument("--codes", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    h, inter = args.hidden, args.intermediate
    g = torch.Generator().manual_seed(0)
    shapes = [(h, h)] * 4 + [(inter, h)] * 2 + [(h, inter)]
    weights = [torch.randn(o, i, generator=g) for _ in range(args.layers) for o, i in shapes]
    weights.append(torch.randn(args.codes, h, generator=g))
    nbytes = sum(w.numel() * 4 for w in weights)
    xh, xi = torch.randn(2, h, generator=g), torch.randn(2, inter, generator=g)

    def pick(w):
        return xi if w.shape[1] == inter else xh

    def linear():
        for w in weights:
            F.linear(pick(w), w)

    def w_xt():
        for w in weights:
            w @ pick(w).T

    from torch._inductor import config as inductor_config

    from diffusers_lumina_mgpt.compiled_decoding import FROZEN_CPU_CONFIG

    chain = Chain(weights).eval()
    with torch.no_grad(), inductor_config.patch(FROZEN_CPU_CONFIG):
        compiled = torch.compile(chain, fullgraph=True)
        compiled(xh, xi)
        rate = read_rate_gbps("cpu")
        rows = [("F.linear (x @ W.T, MKL)", bench(linear)), ("W @ x.T", bench(w_xt)),
                ("frozen compile, C++ GEMM template", bench(lambda: compiled(xh, xi)))]
        rate = (rate + read_rate_gbps("cpu")) / 2
    floor = nbytes / (rate * 1e9) * 1e3
    print(f"{nbytes / 1e6:.1f} MB of weights, read rate {rate:.1f} GB/s, floor {floor:.2f} ms, {args.threads} threads")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} ms | {ms / floor:.2f}x |")


if __name__ == "__main__":
    main()
