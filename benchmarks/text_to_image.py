"""Seconds and transformer forwards per image: AR vs Jacobi scheduler vs a Lumina-style baseline.

The baseline is how Lumina-mGPT's own inference runs classifier-free guidance: transformers'
`ChameleonForConditionalGeneration` with a `DynamicCache`, the unconditional context run as a second,
unbatched forward with its own cache, every token (NEWLINE and EOI included) costing a forward.
All three use the same random weights in the same process.

    python benchmarks/text_to_image.py                      # ~106M params, 256 and 512 px, CPU
    python benchmarks/text_to_image.py --sizes 256 --json out.json
    python benchmarks/text_to_image.py --hidden 512 --layers 8 --heads 8 --intermediate 1376 --sizes 256 \
        --top-k 2000 --compiled                              # the 35M config, with compiled decoding

`--compiled` adds `pipe.enable_compiled_decoding()` rows (compiled once per size before timing) and the
decode-step floor: the bytes one AR step reads (every layer's weights and the code rows of the lm_head)
over the streaming read rate, measured right before and after each AR timing (the mean of the two).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from diffusers_lumina_mgpt.pipelines import LuminaMGPTPipeline
from diffusers_lumina_mgpt.schedulers import LuminaMGPTARScheduler, LuminaMGPTJacobiScheduler
from diffusers_lumina_mgpt.schedulers.sampling import logits_to_probs
from diffusers_lumina_mgpt.transformer import LuminaMGPTTransformer

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "chameleon-tiny"
PROMPT = "a red circle above a blue square"


def build_pipeline(hidden: int, layers: int, heads: int, intermediate: int, dtype: torch.dtype, device: str):
    """A random pipeline with Chameleon's token layout (the fixture tokenizer and VQGAN)."""
    from transformers import AutoTokenizer

    from diffusers_lumina_mgpt.vq_convert import load_meta_vqgan

    tok = AutoTokenizer.from_pretrained(FIXTURE / "model")
    torch.manual_seed(0)
    transformer = LuminaMGPTTransformer(
        vocab_size=len(tok) if len(tok) > 9088 else 9088, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=4400,
    )
    vq = load_meta_vqgan(FIXTURE / "tokenizer/vqgan.ckpt", FIXTURE / "tokenizer/vqgan.yaml")
    pipe = LuminaMGPTPipeline(tok, transformer, vq, LuminaMGPTARScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def to_transformers(transformer: LuminaMGPTTransformer):
    """transformers' Chameleon with the same weights (for the baseline)."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    c = transformer.config
    cfg = ChameleonConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps, vocabulary_map={}, vq_config={},
    )
    p = next(transformer.parameters())
    default = torch.get_default_dtype()
    torch.set_default_dtype(p.dtype)  # build in place, in the weights' dtype, on their device
    try:
        with torch.device(p.device):
            model = ChameleonForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(default)
    missing, unexpected = model.load_state_dict(transformer.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("model.vqmodel") for k in missing), (missing, unexpected)
    return model.eval()


@torch.inference_mode()
def lumina_style_generate(
    hf_model, pipe, height: int, width: int, guidance: float, top_k: int, seed: int, max_tokens: int | None = None
):
    """Lumina-mGPT's loop: cond and uncond forwards, each with its own DynamicCache, one token per step."""
    from transformers import DynamicCache

    device = next(hf_model.parameters()).device
    cond = pipe.encode_prompt(PROMPT, height, width)[None].to(device)
    uncond = pipe.encode_negative_prompt(None, height, width)[None].to(device)
    layout = pipe.image_layout(height // 16, width // 16)
    codes = torch.tensor(pipe.vocab.code_token_ids, device=device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    caches = [DynamicCache(), DynamicCache()]
    inputs = [cond, uncond]
    forwards, body = 0, []
    for p in range(layout.length if max_tokens is None else min(max_tokens, layout.length)):
        outs = []
        for i in range(2):
            out = hf_model.model(input_ids=inputs[i], past_key_values=caches[i], use_cache=True)
            outs.append(hf_model.lm_head(out.last_hidden_state[:, -1]).float())
            forwards += 1
        forced = layout.forced(p)
        if forced is None:
            c, u = outs[0][:, codes], outs[1][:, codes]
            probs = logits_to_probs(u + guidance * (c - u), top_k=top_k).cpu()
            forced = int(codes[torch.multinomial(probs, 1, generator=g)])
        body.append(forced)
        nxt = torch.tensor([[forced]], device=device)
        inputs = [nxt, nxt]
    return body, forwards


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def read_rate_gbps(device: str, nbytes: int = 256 * 2**20) -> float:
    """Streaming read rate: `sum` over a float32 tensor larger than the caches (best of 5)."""
    x = torch.ones(nbytes // 4, device=device)
    x.sum()
    best = float("inf")
    for _ in range(5):
        _, sec = timed(x.sum, device)
        best = min(best, sec)
    return nbytes / best / 1e9


def step_bytes(pipe: LuminaMGPTPipeline) -> int:
    """Bytes of weights one image decode step reads: every layer, the final norm, the code rows of the lm_head."""
    tr = pipe.transformer
    layers = sum(p.numel() * p.element_size() for n, p in tr.named_parameters() if not n.startswith(("lm_head", "model.embed")))
    return layers + len(pipe.vocab.code_token_ids) * tr.config.hidden_size * tr.lm_head.weight.element_size()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--intermediate", type=int, default=2304)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--top-k", type=int, nargs="+", default=[2000, 1])
    ap.add_argument("--num-drafts", type=int, default=16)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--compiled", action="store_true", help="also time both schedulers with compiled decoding")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per row; the median is reported")
    ap.add_argument("--json", default="benchmarks/results/text_to_image.json")
    args = ap.parse_args()

    dtype = getattr(torch, args.dtype)
    pipe = build_pipeline(args.hidden, args.layers, args.heads, args.intermediate, dtype, args.device)
    n_params = sum(p.numel() for p in pipe.transformer.parameters())
    hf = None if args.no_baseline else to_transformers(pipe.transformer)
    rows = []
    rates = {}  # (size, top_k, method) -> read rate (GB/s) around that timing
    for sched in (LuminaMGPTARScheduler(), LuminaMGPTJacobiScheduler(num_drafts=args.num_drafts)):  # warm-up
        pipe.scheduler = sched
        pipe(PROMPT, height=32, width=32, output_type="tokens")
    if hf is not None:
        lumina_style_generate(hf, pipe, 32, 32, args.guidance, 2000, 0)
    for size in args.sizes:
        n_codes = (size // 16) ** 2
        for top_k in args.top_k:
            runs = {}
            variants = [(name, sched, False) for name, sched in (
                ("ar", LuminaMGPTARScheduler()), ("jacobi", LuminaMGPTJacobiScheduler(num_drafts=args.num_drafts)))]
            if args.compiled:
                variants += [(name + "_compiled", sched, True) for name, sched, _ in variants]
            for name, sched, compiled in variants:
                pipe.scheduler = sched
                if compiled and pipe.compiled_decoder is None:
                    pipe.enable_compiled_decoding()
                elif not compiled:
                    pipe.disable_compiled_decoding()

                def generate():
                    return pipe(PROMPT, height=size, width=size, guidance_scale=args.guidance, image_top_k=top_k,
                                generator=torch.Generator().manual_seed(0), output_type="tokens")

                if compiled:  # compile this size's graphs before timing
                    _, compile_sec = timed(generate, args.device)
                    print(f"{size:>4}px {name}: first call (compiling) {compile_sec:.1f} s", flush=True)
                # the read rate drifts with the machine's neighbours (38-73 GB/s here): measure it right
                # before and after each AR timing, and judge that timing against their mean
                before = read_rate_gbps(args.device) if args.compiled and name.startswith("ar") else None
                secs = []
                for _ in range(args.repeats):
                    out, sec = timed(generate, args.device)
                    secs.append(sec)
                runs[name] = (statistics.median_high(secs), out.num_forward_passes)
                if before is not None:
                    rates[(size, top_k, name)] = (before + read_rate_gbps(args.device)) / 2
            pipe.disable_compiled_decoding()
            if hf is not None:
                secs = []
                for _ in range(args.repeats):
                    (_, fw), sec = timed(lambda: lumina_style_generate(hf, pipe, size, size, args.guidance, top_k, 0),
                                         args.device)
                    secs.append(sec)
                runs["lumina_style"] = (statistics.median_high(secs), fw)
            base = runs.get("lumina_style", runs["ar"])[0]
            for name, (sec, fw) in runs.items():
                rows.append({
                    "size": size, "image_top_k": top_k, "method": name, "seconds": round(sec, 3),
                    "forwards": fw, "forwards_per_code": round(fw / n_codes, 3),
                    "speedup_vs_baseline": round(base / sec, 2),
                })
                print(f"{size:>4}px top_k={top_k:<5} {name:<13} {sec:8.2f} s  {fw:6d} forwards "
                      f"({fw / n_codes:.3f}/code)  x{base / sec:.2f} vs baseline", flush=True)
    floor_ms = None
    if args.compiled:
        nbytes = step_bytes(pipe)
        for row in rows:
            rate = rates.get((row["size"], row["image_top_k"], row["method"]))
            if rate is not None:
                row_floor = 1000 * nbytes / (rate * 1e9)
                row["read_gbps"], row["floor_ms"] = round(rate, 1), round(row_floor, 3)
                row["ms_per_forward"] = round(1000 * row["seconds"] / row["forwards"], 3)
                row["x_floor"] = round(row["ms_per_forward"] / row_floor, 2)
                print(f"{row['size']}px {row['method']}: {row['ms_per_forward']:.2f} ms per forward, "
                      f"{row['x_floor']:.2f}x the {row_floor:.2f} ms weight-read floor ({rate:.1f} GB/s)", flush=True)
        floor_ms = 1000 * nbytes / (statistics.median_high(rates.values()) * 1e9)  # at the median rate
    meta = {"params": n_params, "device": args.device, "dtype": args.dtype, "guidance": args.guidance,
            "num_drafts": args.num_drafts, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "repeats": args.repeats, "floor_ms": None if floor_ms is None else round(floor_ms, 3)}
    if args.device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
