"""GPU check: one 768x768 image with the 7B configuration (random bf16 weights), AR vs Jacobi vs Lumina-style.

Times text-to-image at Lumina-mGPT-7B's real size (vocab 65536, hidden 4096, 32 layers, 32 heads,
intermediate 11008) with the real-size VQGAN decoder, CFG 3.0 and image_top_k 2000, and records peak
GPU memory. Random weights: timings and forward counts are real, images are noise, and the Jacobi
acceptance rate of random weights says nothing about a trained model's.

    python benchmarks/gpu_7b.py --json out.json            # on a GPU (about 6-8 minutes, compilation included)
    python benchmarks/gpu_7b.py --tiny --device cpu         # a quick smoke run of the same code

Phases (`--phases`): the streaming read rate, one decode step eager vs compiled against the weight-read
floor, then whole images: AR compiled (`pipe.enable_compiled_decoding()`, CUDA graphs), AR eager, Jacobi
compiled, and the Lumina-style two-cache loop of benchmarks/text_to_image.py for `--baseline-tokens`.
Every phase's numbers are saved as soon as it ends; a failing phase records its error and the rest run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diffusers_lumina_mgpt.pipelines import LuminaMGPTPipeline
from diffusers_lumina_mgpt.schedulers import LuminaMGPTARScheduler, LuminaMGPTJacobiScheduler
from diffusers_lumina_mgpt.transformer import LuminaMGPTTransformer
from diffusers_lumina_mgpt.vq import ChameleonVQModel
from diffusers_lumina_mgpt.vq_convert import ddconfig_to_model_config
from text_to_image import read_rate_gbps, step_bytes, sync  # this folder: run as `python benchmarks/gpu_7b.py`

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "chameleon-tiny"
PROMPT = "a red circle above a blue square"
SEVEN_B = dict(vocab_size=65536, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
TINY = dict(vocab_size=9088, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096)
VQ_REAL = dict(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, z_channels=256, resolution=512, in_channels=3,
               out_ch=3, attn_resolutions=[], double_z=False, dropout=0.0)
VQ_TINY = dict(VQ_REAL, ch=32, ch_mult=[1, 1, 1, 1, 1], num_res_blocks=1, z_channels=8)


@torch.no_grad()
def random_init_(module: torch.nn.Module, std: float = 0.02) -> None:
    for name, p in module.named_parameters():
        if "norm" in name and name.endswith("weight"):
            p.fill_(1.0)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.normal_(0.0, std)


def build(cfg: dict, vq_cfg: dict, device: str, dtype: torch.dtype) -> LuminaMGPTPipeline:
    from transformers import AutoTokenizer

    with torch.device("meta"):
        transformer = LuminaMGPTTransformer(**cfg)
    transformer = transformer.to_empty(device=device).to(dtype)
    random_init_(transformer)
    transformer.eval()
    vq = ChameleonVQModel(**ddconfig_to_model_config(vq_cfg, n_embed=8192, embed_dim=vq_cfg["z_channels"]))
    vq = vq.to(device, dtype).eval()
    tok = AutoTokenizer.from_pretrained(FIXTURE / "model")
    pipe = LuminaMGPTPipeline(tok, transformer, vq, LuminaMGPTARScheduler(), default_size=768)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timed(device: str, fn, repeats: int = 1) -> float:
    """Seconds per call of `fn` (after one untimed call)."""
    fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t) / repeats


@torch.inference_mode()  # as the pipeline's decoding: its tensors are inference tensors, and graphs guard on that
def decode_step_bench(pipe: LuminaMGPTPipeline, device: str, rate: float, seq_len: int, fill: int, steps: int,
                      min_window: int = 2) -> dict:
    """ms per one-token CFG decode forward (2 rows, image-code logits), eager vs compiled, against the floor."""
    tr = pipe.transformer
    codes = torch.tensor(pipe.vocab.code_token_ids, device=device)
    if pipe.compiled_decoder is None:
        pipe.enable_compiled_decoding()
    decoder = pipe.compiled_decoder  # the images reuse its graph and cache
    cache = decoder.attach_cache(tr, 2, seq_len, torch.device(device))
    try:
        return _step_bench(pipe, tr, decoder, cache, codes, device, rate, fill, steps, min_window)
    finally:
        decoder.return_cache(cache)


def _step_bench(pipe, tr, decoder, cache, codes, device, rate, fill, steps, min_window) -> dict:
    L = cache.max_seq_len
    kv_mask = torch.ones((2, L), dtype=torch.bool, device=device)
    prompt = torch.randint(0, 8000, (2, fill), device=device)
    with torch.inference_mode():
        tr(prompt, cache_position=torch.arange(fill, device=device), kv_mask=kv_mask, logits_to_keep=1,
           logits_token_ids=codes, kv_cache=cache)
        tok = torch.randint(0, 8000, (2, 1), device=device)
        slot = [fill]

        def eager():
            c = torch.tensor([slot[0]], device=device)
            tr(tok, cache_position=c, kv_mask=kv_mask, logits_token_ids=codes, kv_cache=cache)

        def compiled():
            c = torch.tensor([slot[0]], device=device)
            decoder(tr, tok, c[None].expand(2, 1), c, kv_mask, codes, min_window=min_window, cache=cache)

        out = {"rows": 2, "cache_slots": L, "filled_slots": fill}
        out["eager_ms"] = round(1000 * timed(device, eager, steps), 3)
        t = time.perf_counter()
        compiled()
        sync(device)
        out["compile_seconds"] = round(time.perf_counter() - t, 1)
        out["compiled_ms"] = round(1000 * timed(device, compiled, steps), 3)
    kv = cache
    kv_bytes = 2 * len(kv.keys) * 2 * kv.keys[0].shape[1] * kv.keys[0].shape[3] * kv.keys[0].element_size()  # per slot, 2 rows
    out["weight_bytes"] = step_bytes(pipe)
    if not rate:  # the rate phase did not run: no floor
        return out
    out["floor_ms_weights"] = round(1000 * out["weight_bytes"] / (rate * 1e9), 3)
    out["floor_ms_weights_and_kv_static"] = round(1000 * (out["weight_bytes"] + kv_bytes * L) / (rate * 1e9), 3)
    out["compiled_x_floor_with_kv"] = round(out["compiled_ms"] / out["floor_ms_weights_and_kv_static"], 2)
    out["compiled_x_floor"] = round(out["compiled_ms"] / out["floor_ms_weights"], 2)
    out["eager_x_floor"] = round(out["eager_ms"] / out["floor_ms_weights"], 2)
    return out


@torch.inference_mode()
def compile_window(pipe: LuminaMGPTPipeline, device: str, seq_len: int, window: int, min_window: int) -> float:
    """Compile the decoder's graph for a `window`-token CFG step in the images' cache; returns seconds."""
    tr, decoder = pipe.transformer, pipe.compiled_decoder
    codes = torch.tensor(pipe.vocab.code_token_ids, device=device)
    cache = decoder.attach_cache(tr, 2, seq_len, torch.device(device))
    L = cache.max_seq_len
    kv_mask = torch.ones((2, L), dtype=torch.bool, device=device)
    slots = torch.arange(window, device=device) + 8
    t = time.perf_counter()
    with torch.inference_mode():
        try:
            decoder(tr, torch.randint(0, 8000, (2, window), device=device), slots[None].repeat(2, 1), slots, kv_mask,
                    codes, min_window=min_window, cache=cache)
        finally:
            decoder.return_cache(cache)
    sync(device)
    return round(time.perf_counter() - t, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny config (smoke test of this script)")
    ap.add_argument("--phases", default="rate,step,ar-compiled,ar-eager,jacobi-compiled,baseline",
                    help="comma-separated phases, run in this order")
    ap.add_argument("--budget-s", type=float, default=480, help="skip phases once this many seconds have passed")
    ap.add_argument("--baseline-tokens", type=int, default=300, help="stop the Lumina-style baseline after this many tokens")
    ap.add_argument("--json", default="benchmarks/results/gpu_7b.json")
    args = ap.parse_args()
    dtype = torch.bfloat16
    started = time.perf_counter()
    results: dict = {"size": args.size, "runs": [], "errors": {}, "skipped": []}
    cuda = args.device.startswith("cuda")
    if cuda:
        results["gpu"] = torch.cuda.get_device_name()
    results["torch"] = torch.__version__

    def save() -> None:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))

    t0 = time.perf_counter()
    pipe = build(TINY if args.tiny else SEVEN_B, VQ_TINY if args.tiny else VQ_REAL, args.device, dtype)
    sync(args.device)
    results["build_seconds"] = round(time.perf_counter() - t0, 1)
    results["params"] = sum(p.numel() for p in pipe.transformer.parameters())
    print(json.dumps(results), flush=True)
    n_codes = (args.size // 16) ** 2
    prompt_len = len(pipe.encode_prompt(PROMPT, args.size, args.size))
    body_len = (args.size // 16) * (args.size // 16 + 1) + 1
    seq_len = prompt_len + body_len + 17 + 1  # the cache the Jacobi image needs: one cache serves every phase
    rate = 0.0

    def image(name: str, sched, compiled: bool) -> dict:
        pipe.scheduler = sched
        if compiled and pipe.compiled_decoder is None:
            pipe.enable_compiled_decoding()
        if not compiled and pipe.compiled_decoder is not None:
            pipe._compiled_decoder, keep = None, pipe.compiled_decoder  # eager, keeping the compiled graphs
        else:
            keep = None
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sync(args.device)
        t = time.perf_counter()
        try:
            out = pipe(PROMPT, height=args.size, width=args.size, guidance_scale=3.0, image_top_k=2000,
                       generator=torch.Generator().manual_seed(0), output_type="pil")
            sync(args.device)
        finally:  # later compiled phases reuse the graphs, also after a failure here
            if keep is not None:
                pipe._compiled_decoder = keep
        sec = time.perf_counter() - t
        run = {"method": name, "seconds": round(sec, 2), "forwards": out.num_forward_passes,
               "forwards_per_code": round(out.num_forward_passes / n_codes, 3),
               "ms_per_forward": round(1000 * sec / out.num_forward_passes, 2)}
        if cuda:
            run["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        return run

    for phase in args.phases.split(","):
        if time.perf_counter() - started > args.budget_s:
            results["skipped"].append(phase)
            continue
        t = time.perf_counter()
        try:
            if phase == "rate":
                rate = read_rate_gbps(args.device, (2**28 if args.tiny else 2**33))
                results["read_rate_gbps"] = round(rate, 1)
            elif phase == "step":
                results["decode_step"] = decode_step_bench(pipe, args.device, rate, seq_len, fill=min(600, seq_len // 2), steps=50)
            elif phase == "step-variants":  # one-token windows; inductor's coordinate-descent tuning
                for name, mw, cfg in (("one_token_window", 1, {}), ("coordinate_descent", 2, {"coordinate_descent_tuning": True})):
                    pipe.disable_compiled_decoding()
                    torch._dynamo.reset()
                    with torch._inductor.config.patch(cfg):
                        results[f"decode_step_{name}"] = decode_step_bench(
                            pipe, args.device, rate, seq_len, fill=min(600, seq_len // 2), steps=50, min_window=mw)
            elif phase == "ar-compiled":
                if pipe.compiled_decoder is None:
                    pipe.enable_compiled_decoding()
                results["ar_compile_seconds"] = compile_window(pipe, args.device, seq_len, 1, 2)  # AR pads to 2
                results["runs"].append(image("ar_compiled", LuminaMGPTARScheduler(), True))
            elif phase == "ar-eager":
                results["runs"].append(image("ar_eager", LuminaMGPTARScheduler(), False))
            elif phase == "jacobi-compiled":
                if pipe.compiled_decoder is None:
                    pipe.enable_compiled_decoding()
                results["jacobi_compile_seconds"] = compile_window(pipe, args.device, seq_len, 17, 18)
                results["runs"].append(image("jacobi_compiled", LuminaMGPTJacobiScheduler(num_drafts=16), True))
            elif phase == "jacobi-eager":
                results["runs"].append(image("jacobi_eager", LuminaMGPTJacobiScheduler(num_drafts=16), False))
            elif phase == "baseline":
                from text_to_image import lumina_style_generate, to_transformers

                pipe.disable_compiled_decoding()
                hf = to_transformers(pipe.transformer)
                pipe.transformer.to("meta")  # free our copy; the baseline has its own
                if cuda:
                    torch.cuda.empty_cache()
                sync(args.device)
                t1 = time.perf_counter()
                body, fw = lumina_style_generate(hf, pipe, args.size, args.size, 3.0, 2000, 0, max_tokens=args.baseline_tokens)
                sync(args.device)
                sec = time.perf_counter() - t1
                results["runs"].append({"method": "lumina_style", "seconds": round(sec, 2), "forwards": fw,
                                        "body_tokens": len(body), "ms_per_forward": round(1000 * sec / fw, 2)})
            else:
                raise ValueError(f"unknown phase {phase!r}")
        except Exception as e:  # keep the other phases' numbers
            results["errors"][phase] = f"{type(e).__name__}: {e}"[:2000]
        results.setdefault("phase_seconds", {})[phase] = round(time.perf_counter() - t, 1)
        print(phase, json.dumps({k: v for k, v in results.items() if k != "errors"})[-600:], results["errors"].get(phase, ""), flush=True)
        save()
    save()


if __name__ == "__main__":
    main()
