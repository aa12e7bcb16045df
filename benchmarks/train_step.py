"""Training step time on a run's own pre-tokenised data: micro-batching and CPU attention, before and after.

`lumina-mgpt train` cuts each global batch (sorted by length) into micro-batches. `train.micro_batching:
fixed` takes runs of `micro_batch_size` rows; `length` (the default) chooses the runs that minimise padded
tokens plus a fixed cost per forward (`training/data.py`, `length_split`). And causal bf16 attention with
autograd on a CPU goes through `kv_cache.cpu_bf16_causal_attention` instead of SDPA's flash kernel. The
loss is the same either way; this measures what each costs. In one process, on the global batches of a
finished run's stage (its `config.json`, `data/STAGE/`, its exported transformer's config, fresh random
weights), it alternates blocks of steps of each setting and reports the median step time of each, the
padded tokens per step, and the ratio to the first (the trainer before 2026-12-07).

    python benchmarks/train_step.py runs/vqa3 --threads 2 --steps 40 --json benchmarks/results/train_step.json

`--variant micro=16 --variant pad=32 ...` compares the trainer's current step (length-aware micro-batches, the
run's micro_batch_size and pad_to_multiple_of, RoPE from its table, fused AdamW) with the same step at other
micro-batch sizes and paddings instead, or with RoPE computed in place (`rope=direct`) or foreach AdamW
(`adamw=foreach`) or with the compiled graphs' wrapper in Python (`wrapper=python`), as the trainer did before
the evening of 2026-12-07; `--compile` wraps the forward and loss in `torch.compile(dynamic=True)` as `train.compile` does
(with `cpp_wrapper` on a CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a finished `lumina-mgpt train` output folder (config.json, data/, pipeline/)")
    ap.add_argument("--stage", type=int, default=-1, help="index of the stage whose data to use (default: the last)")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per mode")
    ap.add_argument("--block", type=int, default=10, help="steps per mode before switching")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default=None,
                    help="default: what the run used (`auto`: bf16 where the CPU has it)")
    ap.add_argument("--variant", action="append", default=[],
                    metavar="micro=M,pad=P,rope=direct,adamw=foreach,wrapper=python",
                    help="compare the current step with these micro_batch_size / pad_to_multiple_of, RoPE computed "
                         "in place, foreach AdamW, a Python wrapper of the compiled graphs (repeatable)")
    ap.add_argument("--compile", action="store_true", help="compile the forward and loss, as train.compile does")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers_lumina_mgpt.training.data import PretokenizedDataset, collate
    from diffusers_lumina_mgpt.training.precision import resolve_mixed_precision
    from diffusers_lumina_mgpt.training.train import stage_batches, stage_data_folders
    from diffusers_lumina_mgpt.transformer import LuminaMGPTTransformer, causal_lm_loss

    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    tr = config["train"]
    stage_index = args.stage % len(config["stages"])
    stage = config["stages"][stage_index]
    datasets = [PretokenizedDataset(folder) for folder in stage_data_folders(config, run, stage_index)]
    transformer_config = json.loads((run / "pipeline" / "transformer" / "config.json").read_text())
    transformer_config = {k: v for k, v in transformer_config.items() if not k.startswith("_")}
    from transformers import AutoTokenizer

    from diffusers_lumina_mgpt.vocab import LuminaVocab

    vocab = LuminaVocab.from_tokenizer(AutoTokenizer.from_pretrained(str(run / "base" / "tokenizer")))
    batches = stage_batches(config, stage_index, datasets, vocab)
    precision = args.precision or resolve_mixed_precision(tr["mixed_precision"], cuda=False)
    bf16 = precision == "bf16"
    torch.manual_seed(0)
    model = LuminaMGPTTransformer(**transformer_config).train()
    params = list(model.parameters())
    optimizers = {"fused": torch.optim.AdamW(params, lr=1e-4, fused=True), "foreach": torch.optim.AdamW(params, lr=1e-4)}
    model.rope_table(int(config["data"]["max_length"]), torch.device("cpu"))
    table_rope = model._rope
    z_weight = float(model.config.z_loss_weight)
    micro_size, pad = int(tr["micro_batch_size"]), int(tr.get("pad_to_multiple_of", 64))

    from diffusers_lumina_mgpt import kv_cache

    longest = kv_cache.CPU_BF16_ATTENTION_MAX_LEN
    # a setting: (length-aware, SDPA attention, micro_batch_size, pad_to_multiple_of, RoPE table, AdamW, wrapper)
    now = (True, "fused", "cpp")  # the trainer's RoPE table, AdamW and wrapper
    if args.variant:
        settings = {f"now (micro {micro_size}, pad {pad})": (True, not bf16, micro_size, pad, *now)}
        for text in args.variant:
            v = dict(part.split("=") for part in text.split(","))
            m, q = int(v.pop("micro", micro_size)), int(v.pop("pad", pad))
            rope, adamw, wrapper = v.pop("rope", "table"), v.pop("adamw", "fused"), v.pop("wrapper", "cpp")
            if v or rope not in ("table", "direct") or adamw not in optimizers or wrapper not in ("cpp", "python"):
                ap.error("--variant knows micro=, pad=, rope=table|direct, adamw=fused|foreach and "
                         f"wrapper=cpp|python, got {text!r}")
            name = ", ".join([f"micro {m}, pad {q}"] + [f"rope {rope}"] * (rope != "table")
                             + [f"adamw {adamw}"] * (adamw != "fused") + [f"{wrapper} wrapper"] * (wrapper != "cpp"))
            settings[name] = (True, not bf16, m, q, rope == "table", adamw, wrapper)
    else:  # the trainer before and after 2026-12-07
        settings = {"fixed, SDPA": (False, True, micro_size, pad, *now), "length, SDPA": (True, True, micro_size, pad, *now)}
        if bf16:
            settings["length, bf16 attention"] = (True, False, micro_size, pad, *now)

    def forward_loss(ids, labels, weights):
        return causal_lm_loss(model(ids).logits, labels, z_weight, reduction="sum", row_weights=weights)

    losses = {"cpp": forward_loss, "python": forward_loss}
    if args.compile:  # as train.compile does on a CPU (cpp), and as it did until 2026-12-07 (python)
        losses = {"cpp": torch.compile(forward_loss, dynamic=True, options={"cpp_wrapper": True}),
                  "python": torch.compile(forward_loss, dynamic=True)}

    def direct_rope(position_ids, dtype, bound):  # cos and sin computed where they are used, as before
        return table_rope(position_ids, dtype, None)

    def step(index: int, by_length: bool, sdpa: bool, micro_size: int, pad: int, table: bool,
             adamw: str, wrapper: str) -> tuple[float, int]:
        kv_cache.CPU_BF16_ATTENTION_MAX_LEN = 0 if sdpa else longest
        model._rope = table_rope if table else direct_rope
        optimizer, loss_of = optimizers[adamw], losses[wrapper]
        t0 = time.perf_counter()
        micro, supervised = batches.micro_batches(index, micro_size, 0, 1, by_length, pad)
        padded = 0
        for rows in micro:
            ids, labels = collate(rows, vocab.pad_id, pad)
            padded += ids.numel()
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                weights = torch.tensor([r.weight for r in rows]) if batches.weighted else None
                loss = loss_of(ids, labels, weights)
            (loss / supervised).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, padded

    results = {name: [] for name in settings}
    for i, setting in enumerate(settings.values()):  # warm-up (and compiling)
        for k in range(3 if args.compile else 1):
            step(10 * i + k, *setting)
    block = 0
    first = next(iter(settings))
    while len(results[first]) < args.steps:
        for name, setting in settings.items():  # every setting times the same global batches
            for k in range(args.block):
                results[name].append(step(1000 + block * args.block + k, *setting))
        block += 1
    used = range(1000, 1000 + len(results[first]))
    real = statistics.mean(sum(len(r.ids) for r in batches.global_batch(i)) for i in used)
    table = {}
    for name, rows in results.items():
        median = statistics.median(t for t, _ in rows)
        table[name] = {"median_step_s": median, "padded_tokens_per_step": statistics.mean(p for _, p in rows)}
    for name in table:
        table[name]["speedup"] = table[first]["median_step_s"] / table[name]["median_step_s"]
    print(f"run {run}, stage {stage['name']}, {precision}, {args.threads} threads, batch {tr['batch_size']}, "
          f"micro_batch_size {micro_size}, pad_to_multiple_of {pad}, {'compiled' if args.compile else 'eager'}; "
          f"{real:.0f} real tokens per step")
    print(f"{'setting':>24s} {'step s (median)':>16s} {'padded tokens':>14s} {'speedup':>8s}")
    for name, row in table.items():
        print(f"{name:>24s} {row['median_step_s']:16.3f} {row['padded_tokens_per_step']:14.0f} {row['speedup']:7.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"run": str(run), "stage": stage["name"], "precision": precision,
                                               "threads": args.threads, "compiled": args.compile,
                                               "real_tokens_per_step": real,
                                               "settings": table}, indent=1))


if __name__ == "__main__":
    main()
