"""VQ tokenizer training step, fp32 against bf16 autocast (`train-vq`'s `train.mixed_precision`).

In one process, on a train-vq config's model (fresh weights) and its ShapesWorld crops, it alternates blocks
of steps (forward, losses, backward, AdamW) in each precision and reports the median step time of each and
the ratio to fp32. bf16 is only fast on a CPU that multiplies it natively (AVX512-BF16 or AMX).

    python benchmarks/vq_step.py examples/shapesworld/vq.yaml --threads 2 --json benchmarks/results/vq_step.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", help="a train-vq config (its model, data and crop settings)")
    ap.add_argument("--steps", type=int, default=70, help="timed steps per precision")
    ap.add_argument("--block", type=int, default=10, help="steps per precision before switching")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=200, help="ShapesWorld images to crop from")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers_lumina_mgpt.training.precision import cpu_has_native_bf16
    from diffusers_lumina_mgpt.training.vq_train import (load_vq_config, random_crops, shapes_images, to_pixels,
                                                         vq_losses, vq_model_from_config)

    config = load_vq_config(args.config)
    tr, data = config["train"], config["data"]
    torch.manual_seed(0)
    vqvae = vq_model_from_config(config["model"])
    optimizer = torch.optim.AdamW(vqvae.parameters(), lr=1e-4)
    crop, grid, batch = int(tr["crop"]), int(tr["crop_grid"]), int(tr["batch_size"])
    pool = [to_pixels(im) for im in shapes_images(args.images, 0, data["downscale"], data["kinds"]) if min(im.size) >= crop]
    precisions = {"fp32": None, "bf16 autocast": torch.bfloat16}
    times: dict[str, list[float]] = {name: [] for name in precisions}
    for block in range(args.steps // args.block + 1):  # the first block of each is warm-up
        for name, dtype in precisions.items():  # both precisions time the same crops
            for k in range(args.block):
                pixels = random_crops(pool, batch, crop, np.random.default_rng([0, block * args.block + k]), grid)
                t0 = time.perf_counter()
                loss, *_ = vq_losses(vqvae, pixels, tr["beta"], float(tr["mse_weight"]), dtype)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if block:
                    times[name].append(time.perf_counter() - t0)
    table = {name: statistics.median(t) for name, t in times.items()}
    print(f"{args.config}: {batch} crops of {crop} px, {args.threads} threads, native bf16: {cpu_has_native_bf16()}")
    for name, median in table.items():
        print(f"{name:>14s} {median:.3f} s a step (median of {len(times[name])})  {table['fp32'] / median:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config, "threads": args.threads,
                                               "native_bf16": cpu_has_native_bf16(), "median_step_s": table}, indent=1))


if __name__ == "__main__":
    main()
