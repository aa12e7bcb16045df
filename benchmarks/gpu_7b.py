"""GPU check: one 768x768 image with the 7B configuration (random bf16 weights), AR vs Jacobi vs Lumina-style.

Times text-to-image at Lumina-mGPT-7B's real size (vocab 65536, hidden 4096, 32 layers, 32 heads,
intermediate 11008) with the real-size VQGAN decoder, CFG 3.0 and image_top_k 2000, and records peak
GPU memory. Random weights: timings and forward counts are real, images are noise, and the Jacobi
acceptance rate of random weights says nothing about a trained model's.

    python benchmarks/gpu_7b.py --json out.json            # on a GPU (about 3-5 minutes)
    python benchmarks/gpu_7b.py --tiny --device cpu         # a quick smoke run of the same code
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


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny config (smoke test of this script)")
    ap.add_argument("--baseline", action="store_true", help="also time the Lumina-style two-cache loop")
    ap.add_argument("--baseline-tokens", type=int, default=None, help="stop the baseline after this many tokens")
    ap.add_argument("--json", default="benchmarks/results/gpu_7b.json")
    args = ap.parse_args()
    dtype = torch.bfloat16
    results: dict = {"size": args.size, "runs": []}
    if args.device.startswith("cuda"):
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
    # warm-up (kernels, allocator) at a small size
    pipe(PROMPT, height=64, width=64, output_type="tokens")
    n_codes = (args.size // 16) ** 2
    for name, sched in (("ar", LuminaMGPTARScheduler()), ("jacobi", LuminaMGPTJacobiScheduler(num_drafts=16))):
        pipe.scheduler = sched
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync(args.device)
        t = time.perf_counter()
        out = pipe(PROMPT, height=args.size, width=args.size, guidance_scale=3.0, image_top_k=2000,
                   generator=torch.Generator().manual_seed(0), output_type="pil")
        sync(args.device)
        sec = time.perf_counter() - t
        run = {"method": name, "seconds": round(sec, 2), "forwards": out.num_forward_passes,
               "forwards_per_code": round(out.num_forward_passes / n_codes, 3),
               "ms_per_forward": round(1000 * sec / out.num_forward_passes, 2)}
        if args.device.startswith("cuda"):
            run["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
        save()
    if args.baseline:
        from text_to_image import lumina_style_generate, to_transformers

        hf = to_transformers(pipe.transformer)
        pipe.transformer.to("meta")  # free our copy; the baseline has its own
        torch.cuda.empty_cache() if args.device.startswith("cuda") else None
        sync(args.device)
        t = time.perf_counter()
        body, fw = lumina_style_generate(hf, pipe, args.size, args.size, 3.0, 2000, 0, max_tokens=args.baseline_tokens)
        sync(args.device)
        sec = time.perf_counter() - t
        run = {"method": "lumina_style", "seconds": round(sec, 2), "forwards": fw, "body_tokens": len(body),
               "ms_per_forward": round(1000 * sec / fw, 2)}
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
        save()
    save()


if __name__ == "__main__":
    main()
