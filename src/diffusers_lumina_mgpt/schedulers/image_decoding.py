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
from dataclasses import dataclass, field
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
    # token id -> code (-1 for other tokens), the vocabulary's own table when built by `LuminaVocab.image_layout`
    token_table: torch.Tensor | None = field(default=None, compare=False, repr=False)

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
        """Code index of each token id, -1 for tokens that are not codes (at least max code token id + 1 long)."""
        if self.token_table is not None:
            return self.token_table.cpu()  # bodies and windows live on the CPU
        lookup = torch.full((int(self.code_token_ids.max()) + 1,), -1, dtype=torch.long)
        lookup[self.code_token_ids.cpu()] = torch.arange(self.num_codes)
        return lookup

    def forced_tokens(self, positions: torch.Tensor) -> torch.Tensor:
        """Body positions (T,) -> the forced token at each (NEWLINE or EOI), -1 where a code goes."""
        out = torch.full(positions.shape, -1, dtype=torch.long)
        out[positions % (self.width + 1) == self.width] = self.newline_id
        out[positions == self.length - 1] = self.eoi_id
        return out

    def code_of(self, token: int) -> int:
        """Code index of a token id, or -1 when it is not a code (or undecided, < 0)."""
        return int(self.token_to_code[token]) if 0 <= token < len(self.token_to_code) else -1

    def cells(self, body: torch.Tensor) -> torch.Tensor:
        """Anything laid out like a body (B, L) -> its code cells (B, h, w), NEWLINEs and EOI dropped."""
        return body[:, : self.length - 1].reshape(-1, self.height, self.width + 1)[:, :, : self.width]

    def codes_grid(self, body: torch.Tensor) -> torch.Tensor:
        """Body token ids (B, L) -> code indices (B, h, w); -1 where a token is undecided (-1)."""
        cells = self.cells(body).cpu()
        return torch.where(cells >= 0, self.token_to_code[cells.clamp_min(0)], -1)


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


def _fill_forced(state: ImageDecodeState, rows: int | slice, p: int) -> int:
    """Write the forced tokens (NEWLINE, EOI) of `rows` from body position `p` on: they need no forward to
    be known. Returns the first position after them."""
    lay = state.layout
    while p < lay.length and (tok := lay.forced(p)) is not None:
        state.body[rows, p] = tok
        p += 1
    return p


class ImageDecodingMixin:
    """Shared engine of the AR and Jacobi schedulers; the Jacobi scheduler drafts (`num_drafts`, `draft_init`)."""

    # without drafts, `step` and `window` take a short path with the general path's tokens and random draws
    # (False runs the general path: the tests compare both)
    plain_fast_path = True

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
        """Consume guided code logits (B, T, C) of the last forward and accept tokens.

        Verification is tensor work over all rows and positions at once: `logits[:, j]` predicts body
        position `first + j`, whose window input (if any) is input `j + 1`. A drafted code `x` passes when
        `u * p_draft(x) < p_now(x)`, a forced input (NEWLINE, EOI) always passes. Each row keeps the
        passing positions from its first undecided one, then samples one more token at the first
        position that did not pass: from `max(0, p_now - p_draft)` where a draft was rejected, else from
        `p_now`. Every kept token follows the distribution plain sampling gives it.
        """
        if self.plain_fast_path and self.num_drafts == 0 and min(state.num_accepted) == max(state.num_accepted):
            return self._plain_step(state, logits)
        lay = state.layout
        before = list(state.num_accepted)
        B, T, C = logits.shape
        probs = logits_to_probs(logits, **state.sampling).cpu()  # (B, T, C)
        first = state.window_start + 1  # body position predicted by logits[:, 0]
        uniforms = state.random.uniform(T + 1)  # (B, T + 1): one stream per row
        state.num_forwards += 1
        forced = lay.forced_tokens(first + torch.arange(T))  # (T,) token id, -1 where a code goes
        n_in = 0 if state.window_tokens is None else state.window_tokens.shape[1]
        inputs = torch.arange(1, T + 1)  # the window input at each predicted position
        is_input = inputs < n_in  # (T,)
        kind = torch.full((B, T), _FINAL, dtype=torch.long)
        drafted = torch.zeros((B, T), dtype=torch.long)  # the drafted code (0 where none)
        fed = torch.full((B, T), -1, dtype=torch.long)  # the window's input token
        if is_input.any():
            idx = inputs[is_input]
            kind[:, is_input] = state.window_kind[:, idx]
            drafted[:, is_input] = state.window_codes[:, idx].clamp_min(0)
            fed[:, is_input] = state.window_tokens[:, idx]
        draft = (kind != _FINAL) & (forced < 0)[None]  # (B, T): a drafted code to verify
        p_draft = torch.where(kind == _UNIFORM, 1.0 / C, (kind == _DELTA).float())  # p_draft(x), not _DIST
        if (kind == _DIST).any():
            stored = state.window_probs[:, inputs.clamp_max(n_in - 1)].gather(-1, drafted[..., None]).squeeze(-1)
            p_draft = torch.where(kind == _DIST, stored, p_draft)
        accept = draft & (uniforms[:, :T] * p_draft < probs.gather(-1, drafted[..., None]).squeeze(-1))
        passes = is_input[None] & (accept | ((forced >= 0)[None] & (fed == forced[None])))
        stop = min(T, lay.length - first)
        start = torch.tensor(state.num_accepted) - first  # (B,) each row's first undecided position
        j = torch.arange(T)[None]
        blocked = ~passes & (j >= start[:, None]) | (j >= stop)
        end = torch.cat([blocked, torch.ones(B, 1, dtype=torch.bool)], 1).long().argmax(1)  # first blocked
        # the token at each row's first blocked position: forced, or sampled from the residual / p_now
        at = end.clamp_max(T - 1)
        q = probs[torch.arange(B), at]  # (B, C)
        rejected = draft[torch.arange(B), at]
        if rejected.any():
            proposal = torch.zeros(B, C)
            kinds, codes = kind[torch.arange(B), at], drafted[torch.arange(B), at]
            proposal[kinds == _UNIFORM] = 1.0 / C
            proposal[kinds == _DELTA] = torch.nn.functional.one_hot(codes[kinds == _DELTA], C).float()
            dist = kinds == _DIST
            if dist.any():
                proposal[dist] = state.window_probs[dist.nonzero()[:, 0], inputs[at[dist]]]
            residual = (q - proposal).clamp_min(0.0)
            use = rejected & (residual.sum(-1) > 0)
            q = torch.where(use[:, None], residual, q)
        sampled = lay.code_token_ids.cpu()[sample_with_uniform(q, uniforms[:, T])]
        last = torch.where(forced[at] >= 0, forced[at], sampled)
        for b in range(B):
            s, e = int(start[b]), int(end[b])
            if not 0 <= s < stop:
                continue  # the row is ahead of this window
            state.body[b, first + s : first + e] = fed[b, s:e]  # passed drafts and forced inputs
            p = first + e
            if e < stop:
                state.body[b, p] = last[b]
                p += 1
            state.num_accepted[b] = _fill_forced(state, b, p)
        self._advance_cache(state, probs, first)
        return ImageDecodeStepOutput(list(state.num_accepted), [n - m for n, m in zip(state.num_accepted, before)],
                                     state.finished)

    def _plain_step(self, state: ImageDecodeState, logits: torch.Tensor) -> ImageDecodeStepOutput:
        """`step` without drafts, every row at the same body position `n`: the window fed final tokens only,
        so its last logits are position `n`'s distribution. The same tokens and random draws as the general
        step (a test compares both), with a fraction of its tensor work: AR decoding on a CPU spends a
        good part of each step here."""
        lay = state.layout
        B, T, _ = logits.shape
        n = state.num_accepted[0]
        first = state.window_start + 1
        uniforms = state.random.uniform(T + 1)  # what the general step draws, so the streams stay in step
        state.num_forwards += 1
        probs = logits_to_probs(logits[:, n - first], **state.sampling).cpu()  # (B, C)
        state.body[:, n] = lay.code_token_ids.cpu()[sample_with_uniform(probs, uniforms[:, T])]
        p = _fill_forced(state, slice(None), n + 1)
        state.num_accepted = [p] * B
        if state.window_tokens is None:  # prefill: only the prompt is cached
            state.num_cached = 0
        else:  # every fed token was final: all are validly cached, the last accepted one is fed again
            end = state.window_start + T
            state.num_cached = max(state.num_cached, end if p >= lay.length else min(end, p - 1))
        state.last_probs, state.last_first = probs[:, None], n
        return ImageDecodeStepOutput([p] * B, [p - n] * B, state.finished)

    def _advance_cache(self, state: ImageDecodeState, probs: torch.Tensor, first: int) -> None:
        """Shared cached prefix after a step, and the Jacobi proposals this forward produced."""
        if state.window_tokens is None:  # prefill: only the prompt is cached
            state.num_cached = 0
        else:  # per row: the window's leading inputs that are final tokens now hold valid keys/values
            start, lay = state.window_start, state.layout
            n_in = state.window_tokens.shape[1]
            n = torch.tensor(state.num_accepted)[:, None]  # (B, 1)
            positions = start + torch.arange(n_in)  # (n_in,)
            final = state.body[:, positions.clamp_max(lay.length - 1)]
            same = (positions[None] < n) & (state.window_tokens == final)  # (B, n_in)
            m = start + same.long().cumprod(1).sum(1)  # (B,) first position not validly cached
            # the last accepted token is fed again: its logits predict the next position
            valid = torch.where(n[:, 0] >= lay.length, m, torch.minimum(m, n[:, 0] - 1))
            state.num_cached = max(state.num_cached, int(valid.min()))
        state.last_probs, state.last_first = probs, first

    # ----------------------------------------------------------------------------------------
    def window(self, state: ImageDecodeState) -> torch.Tensor:
        """Token ids (B, T) to feed next, for body positions [num_cached, num_cached + T).

        Tensor work over rows and positions: final tokens are copied, forced ones placed, and every other
        position drafted with its row's uniform `draws[b, w]`: from the distribution the last forward gave
        it (the Jacobi update), else the code above it (`draft_init="spatial"`), else a uniform code.
        """
        lay = state.layout
        start = state.num_cached
        pending = max(n - start for n in state.num_accepted)
        T = max(1, min(pending + self.num_drafts, lay.length - start))
        if self.plain_fast_path and self.num_drafts == 0 and start + T <= min(state.num_accepted):  # final tokens only
            state.random.uniform(T)  # the general path's draws, so the streams stay in step
            tokens = state.body[:, start : start + T].clone()
            state.window_start, state.window_tokens = start, tokens
            state.window_kind = torch.full(tokens.shape, _FINAL, dtype=torch.long)
            state.window_codes, state.window_probs = torch.full(tokens.shape, -1, dtype=torch.long), None
            return tokens
        B, C = state.batch_size, lay.num_codes
        code_ids = lay.code_token_ids.cpu()
        draws = state.random.uniform(T)  # (B, T)
        positions = start + torch.arange(T)  # (T,)
        inside = positions < lay.length
        n = torch.tensor(state.num_accepted)
        known = positions[None] < n[:, None]  # (B, T) final tokens
        tokens = torch.full((B, T), lay.eoi_id, dtype=torch.long)
        tokens[known] = state.body[:, positions.clamp_max(lay.length - 1)][known]
        forced = lay.forced_tokens(positions)
        is_forced = (forced >= 0)[None] & ~known & inside[None]
        tokens = torch.where(is_forced, forced[None], tokens)
        free = ~known & ~is_forced & inside[None]  # positions to draft
        kind = torch.full((B, T), _FINAL, dtype=torch.long)
        codes = torch.full((B, T), -1, dtype=torch.long)
        probs = torch.zeros(B, T, C) if self.num_drafts else None
        last_probs, j = state.last_probs, positions - state.last_first
        stored = (j >= 0) & (j < last_probs.shape[1])  # (T,) the last forward predicted these
        dist = free & stored[None]
        if dist.any():  # Jacobi update: draft from the fresh distribution
            q = last_probs[:, j.clamp(0, last_probs.shape[1] - 1)]  # (B, T, C)
            codes[dist] = sample_with_uniform(q[dist], draws[dist])
            kind[dist] = _DIST
            probs[dist] = q[dist]
            tokens = torch.where(dist, code_ids[codes.clamp_min(0)], tokens)  # a spatial draft below may copy them
        rest = free & ~stored[None]
        uniform_codes = (draws * C).long().clamp_max(C - 1)
        if self._draft_init() != "spatial":
            codes[rest], kind[rest] = uniform_codes[rest], _UNIFORM
        else:  # the code above, in row-sized chunks: a chunk's "above" lies in the body or in earlier chunks
            row = lay.width + 1
            above = positions - row  # (T,)
            in_window = (above >= start)[None] & (above[None] >= n[:, None])  # (B, T) drafted in this window
            from_body = state.body[:, above.clamp(0, lay.length - 1)]  # (B, T)
            table = lay.token_to_code
            for lo in range(0, T, row):
                here = rest.clone()
                here[:, :lo] = here[:, lo + row :] = False
                if not here.any():
                    continue
                from_window = tokens[:, (above - start).clamp(0, T - 1)]  # earlier chunks are drafted by now
                above_tok = torch.where(in_window, from_window, from_body)
                above_tok = torch.where((above >= 0)[None], above_tok, torch.full_like(above_tok, -1))
                above_code = torch.where((above_tok >= 0) & (above_tok < len(table)),
                                         table[above_tok.clamp(0, len(table) - 1)], torch.full_like(above_tok, -1))
                delta = here & (above_code >= 0)
                codes[delta], kind[delta] = above_code[delta], _DELTA
                uni = here & (above_code < 0)
                codes[uni], kind[uni] = uniform_codes[uni], _UNIFORM
                tokens = torch.where(here, code_ids[codes.clamp_min(0)], tokens)
        tokens = torch.where(free, code_ids[codes.clamp_min(0)], tokens)
        state.window_start, state.window_tokens = start, tokens
        state.window_kind, state.window_codes, state.window_probs = kind, codes, probs
        return tokens
