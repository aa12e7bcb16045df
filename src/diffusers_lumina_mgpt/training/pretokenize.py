"""`lumina-mgpt pretokenize`: records -> token ids + labels, stored once, read memory-mapped.

Each image is resized to its resolution bucket for the target size (`LuminaImageProcessor`), encoded
by the frozen `vqvae`, turned into its image block, and the conversation is templated by
`ConversationTokenizer` (human turns labelled -100). The output folder holds one safetensors shard
per chunk of records (`input_ids`, `labels` int32, `offsets` int64) with a JSON sidecar (rows, tasks,
sha256, skipped records), and `manifest.json` once every chunk is done.

Why safetensors shards rather than `datasets`/Arrow: the package already depends on safetensors,
which memory-maps tensors and rejects a truncated file on open; a shard per chunk gives resume at
chunk granularity (finished shards are kept, nothing is written twice), parallel workers without a
shared writer, and a sha256 per shard catches silent corruption. Arrow would add ~100 MB of
dependencies for features (columns of strings, queries) that token streams do not need.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import Counter
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..file_modes import umask_modes
from .records import SKIP_REASONS, Record, Skip, Source, load_images, set_t2i_size

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def load_components(model_dir: str | Path):
    """(tokenizer, vqvae) of a pipeline folder (only `tokenizer/` and `vqvae/` are read)."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    for sub in ("tokenizer", "vqvae"):
        if not (model_dir / sub).is_dir():
            raise FileNotFoundError(f"{model_dir} has no {sub}/ folder; pass a pipeline folder (lumina-mgpt convert, "
                                    "or DIR/pipeline of a training run)")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir / "tokenizer"))
    return tokenizer, load_vqvae(model_dir / "vqvae")


def load_vqvae(folder: str | Path):
    """A VQ folder as `ChameleonVQModel`, whether it was saved as that or as a plain diffusers `VQModel`
    (a superset: a plain folder loads the same). Plain `VQModel.from_pretrained` would ignore
    `pixel_norm` with only a logged warning and build GroupNorm layers around the PixelNorm weights."""
    from ..vq import ChameleonVQModel

    return ChameleonVQModel.from_pretrained(str(folder)).eval()


class Tokenizing:
    """Turns records into (input_ids, labels) for one target size."""

    def __init__(self, tokenizer, vqvae, size: int, max_length: int | None = None):
        from ..conversation import ConversationTokenizer
        from ..image_processor import LuminaImageProcessor
        from ..vocab import LuminaVocab
        from ..vq import vq_downsample_factor

        self.vocab = LuminaVocab.from_tokenizer(tokenizer)
        self.conversation = ConversationTokenizer(tokenizer, self.vocab)
        self.vqvae = vqvae
        f = vq_downsample_factor(vqvae)
        self.processor = LuminaImageProcessor(target_size=size, patch_size=2 * f, downsample_factor=f)
        self.max_length = max_length

    def __call__(self, rec: Record) -> tuple[np.ndarray, np.ndarray] | Skip:
        return self.many([rec])[0]

    @torch.no_grad()
    def many(self, records: list[Record], batch_images: int = 256) -> list[tuple[np.ndarray, np.ndarray] | Skip]:
        """(input_ids, labels) or a `Skip` for each record. The images of all records are encoded together,
        same-sized ones in batches of up to `batch_images`: one image at a time, a 64 px picture costs the
        encoder more in per-call overhead than in arithmetic."""
        from ..image_processor import choose_bucket
        from ..image_tokens import encode_image_block
        from ..vq import vq_encode_codes

        prepared: list[tuple[list[torch.Tensor], list[tuple[int, int]]] | Skip] = []
        for rec in records:
            images = load_images(rec)
            if isinstance(images, Skip):
                prepared.append(images)
                continue
            pixels, sizes = [], []
            for image in images:
                w0, h0 = image.size
                w, h = choose_bucket(w0, h0, self.processor.buckets)
                if w0 * h0 * 4 < w * h:
                    pixels = Skip("small_image", rec.key, f"{w0}x{h0} for a {w}x{h} bucket")
                    break
                pixels.append(self.processor.preprocess(image, height=h, width=w)[0])
                sizes.append((w, h))
            prepared.append(pixels if isinstance(pixels, Skip) else (pixels, sizes))
        by_shape: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        for r, item in enumerate(prepared):
            if not isinstance(item, Skip):
                for k, px in enumerate(item[0]):
                    by_shape.setdefault(tuple(px.shape), []).append((r, k))
        codes: dict[tuple[int, int], torch.Tensor] = {}
        for where in by_shape.values():
            for i in range(0, len(where), batch_images):
                part = where[i:i + batch_images]
                batch = torch.stack([prepared[r][0][k] for r, k in part])
                for (r, k), c in zip(part, vq_encode_codes(self.vqvae, batch)):
                    codes[r, k] = c
        out: list[tuple[np.ndarray, np.ndarray] | Skip] = []
        for r, (rec, item) in enumerate(zip(records, prepared)):
            if isinstance(item, Skip):
                out.append(item)
                continue
            blocks = [encode_image_block(codes[r, k], self.vocab, self.processor.latents_per_grid)
                      for k in range(len(item[0]))]
            conv = set_t2i_size(rec.conversations, item[1])
            try:
                tok = self.conversation.tokenize(conv, blocks)
            except ValueError as err:
                out.append(Skip("placeholders", rec.key, str(err)))
                continue
            if self.max_length and tok.input_ids.numel() > self.max_length:
                out.append(Skip("too_long", rec.key, f"{tok.input_ids.numel()} tokens"))
                continue
            out.append((tok.input_ids.numpy().astype(np.int32), tok.labels.numpy().astype(np.int32)))
        return out


# ----------------------------------------------------------------------------- shards
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_name(c: int) -> str:
    return f"shard-{c:05d}"


def write_shard(out: Path, c: int, rows: list[tuple[np.ndarray, np.ndarray, str]], skipped: list[Skip]) -> dict[str, Any]:
    from safetensors.numpy import save_file

    ids = np.concatenate([r[0] for r in rows]) if rows else np.zeros(0, np.int32)
    labels = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0, np.int32)
    offsets = np.zeros(len(rows) + 1, np.int64)
    offsets[1:] = np.cumsum([len(r[0]) for r in rows])
    name = shard_name(c)
    tmp = out / f".{name}.safetensors.tmp"
    save_file({"input_ids": ids, "labels": labels, "offsets": offsets}, str(tmp))
    umask_modes(tmp)
    os.replace(tmp, out / f"{name}.safetensors")
    meta = {"file": f"{name}.safetensors", "rows": len(rows), "tokens": int(len(ids)),
            "sha256": sha256_file(out / f"{name}.safetensors"), "tasks": [r[2] for r in rows],
            "skipped": [[s.reason, s.key, s.detail] for s in skipped]}
    tmp_meta = out / f".{name}.json.tmp"
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, out / f"{name}.json")  # the sidecar last: a shard counts as done once it exists
    return meta


_WORKER: dict[str, Any] = {}


def _tokenizing(model_dir: str, size: int, max_length: int | None) -> Tokenizing:
    """This process's `Tokenizing` for these settings, loaded once and kept while they stay the same."""
    key = (model_dir, size, max_length)
    if _WORKER.get("key") != key:
        tokenizer, vqvae = load_components(model_dir)
        _WORKER.update(key=key, tok=Tokenizing(tokenizer, vqvae, size, max_length))
    return _WORKER["tok"]


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_chunk(source: Source, c: int, out: str, model_dir: str, size: int, max_length: int | None) -> dict[str, Any]:
    tok = _tokenizing(model_dir, size, max_length)
    items = list(source.chunk(c))
    results = iter(tok.many([it for it in items if not isinstance(it, Skip)]))
    rows, skipped = [], []
    for item in items:
        result = item if isinstance(item, Skip) else next(results)
        if isinstance(result, Skip):
            skipped.append(result)
        else:
            rows.append((result[0], result[1], item.task))
    return write_shard(Path(out), c, rows, skipped)


@contextlib.contextmanager
def worker_pool(num_proc: int):
    """A pool of `num_proc` pre-tokenising processes (None for 1: work in this process) to pass to several
    `pretokenize` calls: starting a process and loading torch in it takes seconds, as long as a small
    source's whole work. Each worker keeps the model it last loaded."""
    if num_proc <= 1:
        yield None
        return
    import multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // num_proc)
    with ProcessPoolExecutor(num_proc, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(threads,)) as pool:
        yield pool


def pretokenize(source: Source, model_dir: str | Path, size: int, out_dir: str | Path, num_proc: int = 1,
                max_length: int | None = None, progress: bool = True, pool: Executor | None = None) -> dict[str, Any]:
    """Pre-tokenise `source` into `out_dir` (resuming: chunks with a finished shard are not redone).
    Returns the manifest; skipped records are counted by reason and logged to `out_dir/skipped.jsonl`.
    `pool` (from `worker_pool`) is used instead of a pool of `num_proc` processes started for this call."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    identity = {"format": FORMAT_VERSION, "source": source.spec, "n": source.n, "seed": source.seed,
                "chunk_size": source.chunk_size, "size": size, "model": str(Path(model_dir).resolve()),
                "max_length": max_length}
    ident_file = out / "source.json"
    if ident_file.is_file() and json.loads(ident_file.read_text()) != identity:
        raise ValueError(f"{out} holds pre-tokenised data of another source or size ({ident_file}); "
                         "use an empty --out folder or delete it")
    ident_file.write_text(json.dumps(identity, indent=1))
    done = {c for c in range(source.num_chunks) if (out / f"{shard_name(c)}.json").is_file()
            and (out / f"{shard_name(c)}.safetensors").is_file()}
    todo = [c for c in range(source.num_chunks) if c not in done]
    bar = tqdm(total=source.num_chunks, initial=len(done), desc=f"pretokenize {source.spec}", disable=not progress)
    args = (str(model_dir), size, max_length)
    if todo:  # a finished folder loads no model
        with contextlib.nullcontext(pool) if pool is not None else worker_pool(num_proc) as workers:
            if workers is None:
                for c in todo:
                    _run_chunk(source, c, str(out), *args)
                    bar.update()
                _WORKER.clear()  # this process keeps no model (its folder may be rewritten before the next call)
            else:
                n = len(todo)
                for _ in workers.map(_run_chunk, [source] * n, todo, [str(out)] * n, *([a] * n for a in args)):
                    bar.update()
    bar.close()
    shards = [json.loads((out / f"{shard_name(c)}.json").read_text()) for c in range(source.num_chunks)]
    skipped = Counter(s[0] for m in shards for s in m["skipped"])
    with (out / "skipped.jsonl").open("w") as f:
        for m in shards:
            for reason, key, detail in m["skipped"]:
                f.write(json.dumps({"reason": reason, "record": key, "detail": detail}) + "\n")
    manifest = {**identity, "rows": sum(m["rows"] for m in shards), "tokens": sum(m["tokens"] for m in shards),
                "skipped": dict(skipped),
                "shards": [{k: m[k] for k in ("file", "rows", "tokens", "sha256", "tasks")} for m in shards]}
    (out / MANIFEST).write_text(json.dumps(manifest))
    return manifest


def skipped_table(manifest: dict[str, Any]) -> str:
    """The end-of-run table of skipped records by reason."""
    rows = manifest.get("skipped") or {}
    total = manifest["rows"] + sum(rows.values())
    lines = [f"kept {manifest['rows']} of {total} records ({manifest['tokens']} tokens)"]
    if rows:
        lines.append(f"{'skipped':>8s}  reason")
        lines += [f"{count:8d}  {SKIP_REASONS.get(reason, reason)}" for reason, count in sorted(rows.items())]
    return "\n".join(lines)


__all__ = ["FORMAT_VERSION", "Tokenizing", "load_components", "load_vqvae", "pretokenize", "sha256_file", "skipped_table",
           "worker_pool"]
