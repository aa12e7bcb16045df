"""Decoding an image block token by token, or window by window (speculative Jacobi decoding).

The body of an image block is everything after `BOI, H_grid, W_grid`: `(w codes, NEWLINE) x h, EOI`,
`L = h * (w + 1) + 1` tokens. Its layout fixes which body positions are forced (NEWLINE at row ends,
EOI last); every other position is a VQ code drawn from the guided distribution over codes.

The protocol between a pipeline and a scheduler, one image batch at a time:

    state = scheduler.begin(layout, batch_size, generator)
    out = scheduler.step(state, prefill_logits)    # (B, 1, C): predicts body position 0
    while not out.finished:
        tokens = scheduler.window(state)           # (B, T) token ids for body positions
                                                   # [state.num_cached, state.num_cached + T),
                                                   # T <= pending tokens + scheduler.num_drafts
        logits = ...transformer on tokens...       # (B, T, C) guided code logits
        out = scheduler.step(state, logits)        # ImageDecodeStepOutput

`logits[:, j]` is the distribution of body position `window_start + 1 + j`. Rows of a batch share the
cache slots, so `num_cached` is the prefix that is final and cached for every row; tokens a row
accepted beyond it are fed again in the next window (their values are final, their K/V recomputed).

Plain AR decoding is the case of zero drafts. With drafts, SJD (arXiv 2410.01699): a draft `x` at a
position with proposal distribution `p_draft` is accepted when `u < p_now(x) / p_draft(x)`; on the
first rejection the position is resampled from `normalise(max(0, p_now - p_draft))` and the rest of
the window is re-drafted from the distributions just computed (the Jacobi update). This is lossless:
each token follows exactly the distribution plain sampling would give.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from diffusers.utils import BaseOutput

from .sampling import RowRandom, logits_to_probs, sample_with_uniform

# proposal kinds of a window position
_FINAL = 0  # a final token (pending or forced): no verification
_DIST = 1  # drawn from a stored distribution (Jacobi update)
_UNIFORM = 2  # drawn uniformly from the codes
_DELTA = 3  # a deterministic proposal (spatial init): p_draft is a point mass


@dataclass(frozen=True)
class ImageLayout:
    """Where NEWLINE and EOI go in the body of an `h x w` (latent) image block."""

    height: int  # latent rows
    width: int  # latent columns
    newline_id: int
    eoi_id: int
    code_token_ids: torch.Tensor  # (C,) token id of each code

    @property
    def length(self) -> int:
        return self.height * (self.width + 1) + 1

    @property
    def num_codes(self) -> int:
        return int(self.code_token_ids.numel())

    def forced(self, pos: int) -> int | None:
        if pos == self.length - 1:
            return self.eoi_id
        if pos % (self.width + 1) == self.width:
            return self.newline_id
        return None

    @cached_property
    def token_to_code(self) -> torch.Tensor:
        """(max code token id + 1,) code index of each token id, -1 for tokens that are not codes."""
        lookup = torch.full((int(self.code_token_ids.max()) + 1,), -1, dtype=torch.long)
        lookup[self.code_token_ids.cpu()] = torch.arange(self.num_codes)
        return lookup

    def code_of(self, token: int) -> int:
        """Code index of a token id, or -1 when it is not a code (or undecided, < 0)."""
        return int(self.token_to_code[token]) if 0 <= token < len(self.token_to_code) else -1

    def codes_grid(self, body: torch.Tensor) -> torch.Tensor:
        """Body token ids (B, L) -> code indices (B, h, w)."""
        grid = body[:, : self.length - 1].reshape(-1, self.height, self.width + 1)[:, :, : self.width]
        return self.token_to_code[grid.cpu()]


@dataclass
class ImageDecodeState:
    layout: ImageLayout
    body: torch.Tensor  # (B, L) token ids, -1 where not decided yet (CPU)
    num_accepted: list[int]  # per row: body[:, :n] is final
    random: RowRandom
    sampling: dict
    num_cached: int = 0  # body positions cached for every row
    window_start: int = -1  # body position of the first input of the last window (-1: prefill)
    window_tokens: torch.Tensor | None = None  # (B, T) inputs of the last window
    window_kind: torch.Tensor | None = None  # (B, T) proposal kind of each input
    window_probs: torch.Tensor | None = None  # (B, T, C) proposal distributions (kind _DIST)
    window_codes: torch.Tensor | None = None  # (B, T) code index of each drafted input (-1 otherwise)
    last_probs: torch.Tensor | None = None  # (B, T, C) distributions of the last forward (Jacobi proposals)
    last_first: int = 0  # body position predicted by last_probs[:, 0]
    num_forwards: int = 0

    @property
    def finished(self) -> bool:
        return min(self.num_accepted) >= self.layout.length

    @property
    def batch_size(self) -> int:
        return self.body.shape[0]


@dataclass
class ImageDecodeStepOutput(BaseOutput):
    """What one `step` did: per row, how many body tokens are final (`num_accepted`) and how many of
    them this step accepted (`accepted`, forced tokens included); `finished` when every row is done."""

    num_accepted: list[int]
    accepted: list[int]
    finished: bool


class ImageDecodingMixin:
    """Shared engine of the AR and Jacobi schedulers; the Jacobi scheduler drafts (`num_drafts`, `draft_init`)."""

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        """`scheduler.compatibles`: diffusers looks names up in its own module; ours live in this package."""
        import diffusers_lumina_mgpt

        names = dict.fromkeys([cls.__name__, *getattr(cls, "_compatibles", [])])
        return [getattr(diffusers_lumina_mgpt, n) for n in names if hasattr(diffusers_lumina_mgpt, n)]

    @property
    def num_drafts(self) -> int:
        """Draft tokens a window adds after the pending ones (0: plain AR). A window holds at most
        `pending + num_drafts` tokens, so a pipeline sizes its cache from this."""
        return 0

    def _draft_init(self) -> str:
        return "random"

    def begin(
        self,
        layout: ImageLayout,
        batch_size: int,
        generator: torch.Generator | Sequence[torch.Generator | None] | None = None,
        image_top_k: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
    ) -> ImageDecodeState:
        cfg = self.config
        sampling = {
            "top_k": cfg.image_top_k if image_top_k is None else image_top_k,
            "temperature": cfg.temperature if temperature is None else temperature,
            "top_p": cfg.top_p if top_p is None else top_p,
        }
        if sampling["top_k"] is not None and sampling["top_k"] < 1:
            raise ValueError(f"image_top_k must be >= 1 or None, got {sampling['top_k']}")
        if sampling["top_p"] is not None and not 0 < sampling["top_p"] <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {sampling['top_p']}")
        body = torch.full((batch_size, layout.length), -1, dtype=torch.long)
        return ImageDecodeState(layout, body, [0] * batch_size, RowRandom(generator, batch_size), sampling)

    # ----------------------------------------------------------------------------------------
    def step(self, state: ImageDecodeState, logits: torch.Tensor) -> ImageDecodeStepOutput:
        """Consume guided code logits (B, T, C) of the last forward and accept tokens."""
        lay = state.layout
        before = list(state.num_accepted)
        B, T, _ = logits.shape
        probs = logits_to_probs(logits, **state.sampling).cpu()  # (B, T, C)
        first = state.window_start + 1  # body position predicted by logits[:, 0]
        n_in = 0 if state.window_tokens is None else state.window_tokens.shape[1]
        uniforms = state.random.uniform(2 * T + 2)  # (B, ...) one stream per row, consumed in order
        state.num_forwards += 1
        for b in range(B):
            p, k = state.num_accepted[b], 0
            while p < lay.length and 0 <= p - first < T:
                j = p - first
                w = p - state.window_start  # index of position p among the window inputs
                is_input = 0 <= w < n_in
                forced = lay.forced(p)
                if forced is not None:
                    tok = forced
                else:
                    q = probs[b, j]
                    kind = int(state.window_kind[b, w]) if is_input else _FINAL
                    if is_input and kind != _FINAL:
                        x = int(state.window_codes[b, w])
                        pd = self._proposal(state, b, w, kind)
                        if uniforms[b, k] * pd[x] < q[x]:
                            code = x
                        else:
                            residual = (q - pd).clamp_min(0.0)
                            if float(residual.sum()) <= 0.0:
                                residual = q
                            code = int(sample_with_uniform(residual[None], uniforms[b, k + 1 : k + 2])[0])
                        k += 2
                    else:
                        code = int(sample_with_uniform(q[None], uniforms[b, k : k + 1])[0])
                        k += 1
                    tok = int(lay.code_token_ids[code])
                state.body[b, p] = tok
                p += 1
                if not is_input or int(state.window_tokens[b, w]) != tok:
                    break  # later logits were conditioned on a different (or missing) input
            while p < lay.length and lay.forced(p) is not None:
                state.body[b, p] = lay.forced(p)  # forced tokens need no forward to be known
                p += 1
            state.num_accepted[b] = p
        self._advance_cache(state, probs, first)
        return ImageDecodeStepOutput(list(state.num_accepted), [n - m for n, m in zip(state.num_accepted, before)],
                                     state.finished)

    def _proposal(self, state: ImageDecodeState, b: int, w: int, kind: int) -> torch.Tensor:
        C = state.layout.num_codes
        if kind == _DIST:
            return state.window_probs[b, w]
        if kind == _UNIFORM:
            return torch.full((C,), 1.0 / C)
        pd = torch.zeros(C)  # _DELTA
        pd[int(state.window_codes[b, w])] = 1.0
        return pd

    def _advance_cache(self, state: ImageDecodeState, probs: torch.Tensor, first: int) -> None:
        """Shared cached prefix after a step, and the Jacobi proposals this forward produced."""
        if state.window_tokens is None:  # prefill: only the prompt is cached
            state.num_cached = 0
        else:
            valid = []
            n_in = state.window_tokens.shape[1]
            for b in range(state.batch_size):
                n = state.num_accepted[b]
                m = state.window_start
                while m - state.window_start < n_in and m < n and int(
                    state.window_tokens[b, m - state.window_start]
                ) == int(state.body[b, m]):
                    m += 1
                # the last accepted token is fed again: its logits predict the next position
                valid.append(m if n >= state.layout.length else min(m, n - 1))
            state.num_cached = max(state.num_cached, min(valid))
        state.last_probs, state.last_first = probs, first

    # ----------------------------------------------------------------------------------------
    def window(self, state: ImageDecodeState) -> torch.Tensor:
        """Token ids (B, T) to feed next, for body positions [num_cached, num_cached + T)."""
        lay = state.layout
        start = state.num_cached
        pending = max(n - start for n in state.num_accepted)
        T = max(1, min(pending + self.num_drafts, lay.length - start))
        B, C = state.batch_size, lay.num_codes
        tokens = torch.full((B, T), lay.eoi_id, dtype=torch.long)
        kind = torch.full((B, T), _FINAL, dtype=torch.long)
        codes = torch.full((B, T), -1, dtype=torch.long)
        probs = torch.zeros(B, T, C) if self.num_drafts else None
        last_probs, last_first = state.last_probs, state.last_first
        draws = state.random.uniform(T)
        spatial = self._draft_init() == "spatial"
        for b in range(B):
            n = state.num_accepted[b]
            for w in range(T):
                p = start + w
                if p >= lay.length:
                    break
                if p < n:
                    tokens[b, w] = state.body[b, p]
                    continue
                forced = lay.forced(p)
                if forced is not None:
                    tokens[b, w] = forced
                    continue
                j = p - last_first
                if 0 <= j < last_probs.shape[1]:  # Jacobi update: draft from the fresh distribution
                    q = last_probs[b, j]
                    code = int(sample_with_uniform(q[None], draws[b, w : w + 1])[0])
                    kind[b, w], probs[b, w] = _DIST, q
                else:
                    above = p - (lay.width + 1)
                    above_tok = -1
                    if spatial and above >= 0:
                        above_tok = int(state.body[b, above]) if above < n else int(tokens[b, above - start]) if above >= start else -1
                    code = lay.code_of(above_tok)
                    if code >= 0:
                        kind[b, w] = _DELTA
                    else:
                        code = min(int(draws[b, w] * C), C - 1)
                        kind[b, w] = _UNIFORM
                codes[b, w] = code
                tokens[b, w] = lay.code_token_ids[code]
        state.window_start, state.window_tokens = start, tokens
        state.window_kind, state.window_codes, state.window_probs = kind, codes, probs
        return tokens
