"""The decode loop that turns prompts into image blocks: cache layout, CFG rows, scheduler calls.

Rows of the transformer batch are `N` conditional rows followed, when guidance is on, by `N`
unconditional rows. All rows share cache slots: prompts are left-padded so that every image starts at
the same slot, pad slots are masked out per row (`kv_mask`), and each row numbers its own RoPE
positions from 0. The unconditional row of Lumina-mGPT sees the image alone (`BOI, H, W, image
tokens...` at positions 0, 1, 2, ...), or a negative prompt before it; it is computed in the same
forward as the conditional rows, never as a second model call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..compiled_decoding import CompiledDecoder
from ..decoding_session import DecodingSession
from ..schedulers.image_decoding import ImageDecodeState, ImageLayout
from ..schedulers.sampling import guided_logits


@dataclass
class ImageDecodeResult:
    body: torch.Tensor  # (N, L) body token ids (codes, NEWLINEs, EOI)
    num_forwards: int  # transformer forward passes, prefill included
    state: ImageDecodeState


def _left_pad(seqs: Sequence[torch.Tensor], pad_id: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, length) ids and (R, length) bool mask of real tokens, right-aligned."""
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    real = torch.zeros((len(seqs), length), dtype=torch.bool)
    for r, s in enumerate(seqs):
        ids[r, length - len(s) :] = s
        real[r, length - len(s) :] = True
    return ids, real


@torch.inference_mode()
def decode_image_blocks(
    transformer,
    scheduler,
    cond_prompts: Sequence[torch.Tensor],
    uncond_prompts: Sequence[torch.Tensor] | None,
    layout: ImageLayout,
    guidance_scale: float | Callable[[], float],
    pad_id: int,
    generator=None,
    sampling: dict | None = None,
    on_step: Callable[[int, ImageDecodeState], None] | None = None,
    device: torch.device | str | None = None,
    decoder: CompiledDecoder | None = None,
    session: DecodingSession | None = None,
    cached_prefix: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> ImageDecodeResult:
    """Generate the body of one image block per conditional prompt.

    `cond_prompts[i]` ends with `BOI, H_grid, W_grid`; `uncond_prompts[i]` likewise (the image
    alone is just those three tokens). With `guidance_scale == 1` or no unconditional prompts, only
    the conditional rows run. `guidance_scale` may be a callable read before every forward (a step
    callback can change the pipeline's guidance mid-run); whether unconditional rows run is decided
    by its first value. With a `decoder` (`pipe.enable_compiled_decoding()`), the forwards after the
    prefill run through it, in the cache it owns.

    `session=None`: the call opens its own `DecodingSession`. A session: the caller's (a chat turn
    continuing one cache across its text and images), whose first `cached_prefix` slots already hold
    the single conditional prompt's first tokens, so the prefill feeds only the rest (the
    unconditional rows must lie wholly after them). `result.state.num_cached` then says how many body
    tokens the cache holds after the prompt. `should_stop`, read after every step, ends decoding early;
    undecided body tokens stay -1.
    """
    scale = guidance_scale if callable(guidance_scale) else (lambda: guidance_scale)
    use_cfg = uncond_prompts is not None and scale() != 1.0
    rows = list(cond_prompts) + (list(uncond_prompts) if use_cfg else [])
    n = len(cond_prompts)
    device = transformer.device if device is None else torch.device(device)
    prefix = max(len(r) for r in rows)
    L = layout.length
    total = prefix + L + scheduler.num_drafts + 1  # slots: the prompt, the body, a window's drafts past it
    limit = transformer.config.max_position_embeddings
    longest = prefix + L
    if longest > limit:
        raise ValueError(
            f"prompt ({longest - L} tokens) plus image block ({L} tokens) needs {longest} positions but the "
            f"transformer has max_position_embeddings={limit}; use a smaller image or a shorter prompt"
        )
    opened = None
    if session is None:
        if cached_prefix:
            raise ValueError("cached_prefix counts slots of a caller's session: pass session= too")
        session = opened = DecodingSession(transformer, len(rows), total, device, decoder)
    else:
        shortest_uncond = min((len(r) for r in rows[n:]), default=1)  # at least one token is fed
        if n != 1 or len(rows[0]) != prefix or not 0 <= cached_prefix <= prefix - shortest_uncond:
            raise ValueError(
                f"cached_prefix={cached_prefix} needs one conditional prompt, the longest row, whose first "
                "cached_prefix tokens are cached, and unconditional rows that lie wholly after them"
            )
        if session.rows < len(rows) or session.slots < total:
            raise ValueError(f"the session's cache needs >= {len(rows)} rows and >= {total} slots, "
                             f"it has {session.rows} and {session.slots}")
    try:
        ids, real = _left_pad(rows, pad_id, prefix)
        lengths = real.sum(1)  # (R,) prompt length of each row = RoPE position of body position 0
        positions = (real.cumsum(1) - 1).clamp_min(0)
        kv_mask = torch.ones((len(rows), session.slots), dtype=torch.bool)
        kv_mask[:, :prefix] = real
        kv_mask = kv_mask.to(device)
        code_ids = layout.code_token_ids.to(device)  # only codes are possible inside an image
        # compiled windows on CUDA are padded to one size per scheduler, so each captures one graph: AR windows
        # hold 1 token or 2 (a row's last code and the forced NEWLINE), Jacobi ones the drafts and a pending
        # token. (A 1-token AR graph stepped faster alone, 6.4 against 8.1 ms at 7B on an H200. A whole image
        # switching between 1- and 2-token graphs took 23.2 s; padded ones took 19.3 s and, on another H200,
        # 24.1 s, so the padded choice is not a measured win: docs/benchmarks.md.)
        window = scheduler.num_drafts + 2

        def guide(logits: torch.Tensor) -> torch.Tensor:  # (R, T, C) -> (N, T, C)
            return guided_logits(logits[:n], logits[n:] if use_cfg else None, scale())

        state = scheduler.begin(layout, n, generator=generator, **(sampling or {}))
        done = cached_prefix
        out = scheduler.step(state, guide(session.forward(ids[:, done:], torch.arange(done, prefix), positions[:, done:],
                                                          kv_mask, code_ids, keep=1)))
        step = 0
        if on_step is not None:
            on_step(step, state)
        while not out.finished and not (should_stop is not None and should_stop()):
            tokens = scheduler.window(state)  # (N, T)
            T = tokens.shape[1]
            start = state.window_start
            slots = prefix + start + torch.arange(T)
            pos = lengths[:, None] + start + torch.arange(T)[None, :]
            row_tokens = torch.cat([tokens, tokens]) if use_cfg else tokens
            out = scheduler.step(state, guide(session.window(row_tokens, slots, pos, kv_mask, code_ids, window)))
            step += 1
            if on_step is not None:
                on_step(step, state)
    finally:
        if opened is not None:
            opened.close()
    return ImageDecodeResult(state.body.clone(), state.num_forwards, state)
