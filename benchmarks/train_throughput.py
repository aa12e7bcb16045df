"""Training throughput (tokens/s) of `lumina-mgpt train`'s step against a bare chain of the same matmuls.

For each config, in one process: (a) our training step as the loop runs it (forward, CE + z-loss summed
over tokens, backward, gradient clipping, AdamW) on a batch of random ids, and (b) the machine's limit for
those shapes: the same GEMMs (QKV, output, gate/up, down per layer, then the lm_head) chained with
nothing else, forward and backward. Prints a table and writes JSON.

    python benchmarks/train_throughput.py --threads 2 --json benchmarks/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

CONFIGS = {
    "7M (h256 L8)": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=8, num_attention_heads=8),
    "15M (h384 L8)": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=12),
}


def ours(cfg: dict, vocab: int, batch: int, seq: int, iters: int) -> float:
    from diffusers_lumina_mgpt.transformer import LuminaMGPTTransformer, causal_lm_loss

    model = LuminaMGPTTransformer(vocab_size=vocab, max_position_embeddings=1024, z_loss_weight=1e-5, **cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (batch, seq))

    def step() -> None:
        loss = causal_lm_loss(model(ids).logits, ids, 1e-5, reduction="sum") / ids.numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _time(step, iters), sum(p.numel() for p in model.parameters())


def bare(cfg: dict, vocab: int, batch: int, seq: int, iters: int) -> float:
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    mk = lambda i, o: (torch.randn(i, o) * i ** -0.5).requires_grad_()  # noqa: E731
    weights = [(mk(h, 3 * h), mk(h, h), mk(h, 2 * inter), mk(inter, h)) for _ in range(layers)]
    head = mk(h, vocab)
    x0 = torch.randn(batch * seq, h, requires_grad=True)

    def step() -> None:
        x = x0
        for qkv, o, gu, down in weights:
            a = x @ qkv
            x = a[:, :h] @ o
            g = x @ gu
            x = g[:, :inter] @ down
        (x @ head).sum().backward()
        for w in [*sum(map(list, weights), []), head, x0]:
            w.grad = None

    return _time(step, iters)


def _time(step, iters: int) -> float:
    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=2567)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokens = args.batch * args.seq
    rows = []
    print(f"threads {args.threads}, batch {args.batch} x {args.seq} tokens, vocab {args.vocab}, fp32")
    print(f"{'config':16s} {'params':>8s} {'ours tok/s':>11s} {'bare tok/s':>11s} {'ratio':>6s}")
    for name, cfg in CONFIGS.items():
        t_ours, params = ours(cfg, args.vocab, args.batch, args.seq, args.iters)
        t_bare = bare(cfg, args.vocab, args.batch, args.seq, args.iters)
        row = {"config": name, "params": params, "ours_tokens_per_s": tokens / t_ours,
               "bare_matmul_tokens_per_s": tokens / t_bare, "ratio": t_bare / t_ours}
        rows.append(row)
        print(f"{name:16s} {params / 1e6:7.2f}M {row['ours_tokens_per_s']:11.0f} "
              f"{row['bare_matmul_tokens_per_s']:11.0f} {row['ratio']:6.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"threads": args.threads, "batch": args.batch, "seq": args.seq,
                                               "vocab": args.vocab, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
