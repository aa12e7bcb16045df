"""The decoding engine of one assistant turn (`TurnDecoder`): text tokens sampled until end of turn,
image blocks decoded like text-to-image when the model emits BOI; `ChatSettings` holds the knobs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..image_tokens import image_block_length
from ..schedulers.sampling import RowRandom, logits_to_probs, sample_with_uniform
from ..vocab import IMAGE_PLACEHOLDER
from ..decoding_session import DecodingSession
from .image_generation import decode_image_blocks


@dataclass
class ChatSettings:
    max_new_tokens: int = 512
    text_top_k: int | None = None  # None: the scheduler's config.text_top_k
    image_top_k: int | None = None  # None: the scheduler's config.image_top_k
    temperature: float | None = None  # None: the scheduler's config.temperature
    top_p: float | None = None
    guidance_scale: float = 1.0
    height: int | None = None  # fixes the size of images the model answers with
    width: int | None = None
    allow_images: bool = True

    def check(self, pipe) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be a positive integer, got {self.max_new_tokens!r}")
        if self.text_top_k is not None and (not isinstance(self.text_top_k, int) or self.text_top_k < 1):
            raise ValueError(f"`text_top_k` must be a positive integer (1 = greedy) or None, got {self.text_top_k!r}")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"`temperature` must be > 0 (use text_top_k=1 for greedy text), got {self.temperature!r}")
        if not isinstance(self.guidance_scale, (int, float)) or self.guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be a number >= 0 (1.0 turns guidance off), got {self.guidance_scale!r}")
        if (self.height is None) != (self.width is None):
            raise ValueError("pass both height and width to fix the size of answer images, or neither")
        if self.height is not None:
            pipe.image_processor.check_size(self.height, self.width, max_grid=pipe.vocab.max_grid)


class TurnDecoder:
    """Generates one assistant turn; iterating it yields text pieces (and `<|image|>` per image).

    After iteration: `tokens` (generated ids, image blocks included, end-of-turn excluded),
    `images` (token blocks), `text` (the answer with a placeholder per image), `finish_reason`
    ("end_of_turn", "max_new_tokens" or "max_positions") and `num_forward_passes`.
    """

    def __init__(self, pipe, context: torch.Tensor, settings: ChatSettings, generator=None):
        settings.check(pipe)
        self.pipe, self.settings, self.generator = pipe, settings, generator
        self.context = [int(t) for t in context]
        self.tokens: list[int] = []
        self.images: list[torch.Tensor] = []
        self.pieces: list[str] = []
        self.finish_reason: str | None = None
        self._session: DecodingSession | None = None  # the turn's KV cache, while it runs
        self.num_forward_passes = 0
        self._started = False

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    # ------------------------------------------------------------------ helpers
    def _text_mask(self, vocab_size: int) -> torch.Tensor:
        """(V,) True where a token may be sampled as text."""
        v, tok = self.pipe.vocab, self.pipe.tokenizer
        allowed = torch.zeros(vocab_size, dtype=torch.bool)
        allowed[: min(vocab_size, len(tok))] = True
        banned = [*v.code_token_ids, *v.grid_token_ids, v.eoi_id, v.newline_id, self.pipe.conversation.placeholder_id]
        allowed[torch.tensor([b for b in banned if b < vocab_size], dtype=torch.long)] = False
        if not self.settings.allow_images:
            allowed[v.boi_id] = False
        return allowed

    def _fits(self, n_ctx: int, h_lat: int, w_lat: int) -> bool:
        return n_ctx + image_block_length(h_lat, w_lat) <= self.pipe.transformer.config.max_position_embeddings

    def _sample(self, logits: torch.Tensor, allowed: torch.Tensor, top_k: int | None) -> int:
        masked = logits.float().masked_fill(~allowed.to(logits.device), float("-inf"))[None]  # (1, V)
        probs = logits_to_probs(masked, top_k=top_k, top_p=self.settings.top_p, temperature=self._temperature)
        return int(sample_with_uniform(probs.cpu(), self._random.uniform(1)[:, 0])[0])

    def _forward(self, ids: Sequence[int], start: int) -> torch.Tensor:
        """Text: row 0 of the session's cache, `ids` at slots (and positions) from `start`; last logits (V,)."""
        slots = torch.arange(start, start + len(ids))
        self.num_forward_passes += 1
        return self._session.forward(torch.tensor([list(ids)]), slots, slots[None], keep=1)[0, -1]

    # ------------------------------------------------------------------ the loop
    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise ValueError("a chat turn can be iterated only once; call chat(...) again for a new answer")
        self._started = True
        return self._run()

    @torch.no_grad()
    def _run(self) -> Iterator[str]:
        pipe, s = self.pipe, self.settings
        tr, v = pipe.transformer, pipe.vocab
        cfg = pipe.scheduler.config
        text_top_k = cfg.text_top_k if s.text_top_k is None else s.text_top_k
        image_top_k = cfg.image_top_k if s.image_top_k is None else s.image_top_k
        self._temperature = cfg.temperature if s.temperature is None else s.temperature
        self._random = RowRandom(self.generator, 1)
        limit = tr.config.max_position_embeddings
        lpg = pipe.image_processor.latents_per_grid
        ctx = list(self.context)
        if len(ctx) >= limit:
            raise ValueError(f"the conversation has {len(ctx)} tokens but the model reads at most {limit}; shorten it")
        n_text = 0
        # one cache for the whole turn, text and images: row 0 holds the conversation, row 1 an image's
        # unconditional context; nothing already read is read again
        guided = s.guidance_scale != 1.0
        self._session = session = DecodingSession(tr, 1 + guided, limit + pipe.scheduler.num_drafts + 2,
                                                  pipe._execution_device, pipe.compiled_decoder)
        n_cached = 0  # ctx[:n_cached] is in the cache
        try:
            while self.finish_reason is None:
                # ---- text: feed what the cache lacks, then one token per forward
                start = min(n_cached, len(ctx) - 1)  # the last token is fed again when all are cached
                logits = self._forward(ctx[start:], start)
                n_cached = len(ctx)
                allowed = self._text_mask(logits.shape[-1])
                segment: list[int] = []
                shown = ""
                boi = False
                while True:
                    smallest = (s.height // pipe.image_processor.config.downsample_factor,
                                s.width // pipe.image_processor.config.downsample_factor) if s.height else (lpg, lpg)
                    allowed[v.boi_id] = s.allow_images and self._fits(len(ctx), *smallest)
                    tok = self._sample(logits, allowed, text_top_k)
                    if tok == v.eot_id:
                        self.finish_reason = "end_of_turn"
                        break
                    if tok == v.boi_id:
                        boi = True
                        break
                    n_text += 1
                    ctx.append(tok)
                    segment.append(tok)
                    self.tokens.append(tok)
                    full = pipe.tokenizer.decode(segment, skip_special_tokens=False)
                    if full.startswith(shown) and not full.endswith("\ufffd") and len(full) > len(shown):
                        piece, shown = full[len(shown):], full
                        self.pieces.append(piece)
                        yield piece
                    if n_text >= s.max_new_tokens:
                        self.finish_reason = "max_new_tokens"
                        break
                    if len(ctx) >= limit:
                        self.finish_reason = "max_positions"
                        break
                    logits = self._forward([tok], len(ctx) - 1)
                    n_cached = len(ctx)
                full = pipe.tokenizer.decode(segment, skip_special_tokens=False) if segment else ""
                if full.startswith(shown) and len(full) > len(shown):  # held-back characters
                    self.pieces.append(full[len(shown):])
                    yield full[len(shown):]
                if not boi:
                    break
                # ---- image: H and W (chosen by the model unless fixed), then the body like text-to-image
                header = self._choose_header(ctx, image_top_k)
                h_lat, w_lat = v.grid_value(header[1]) * lpg, v.grid_value(header[2]) * lpg
                result = decode_image_blocks(
                    tr, pipe.scheduler, [torch.tensor(ctx + header)], [torch.tensor(header)] if guided else None,
                    pipe.image_layout(h_lat, w_lat), s.guidance_scale, pad_id=v.pad_id, generator=self.generator,
                    sampling={"image_top_k": image_top_k, "temperature": self._temperature, "top_p": s.top_p},
                    device=pipe._execution_device, session=session, cached_prefix=len(ctx),
                )
                n_cached = len(ctx) + len(header) + result.state.num_cached
                self.num_forward_passes += result.num_forwards
                block = header + result.body[0].tolist()
                self.images.append(torch.tensor(block))
                self.tokens += block
                ctx += block
                self.pieces.append(IMAGE_PLACEHOLDER)
                yield IMAGE_PLACEHOLDER
                if len(ctx) >= limit:
                    self.finish_reason = "max_positions"
        finally:
            session.close()  # a compiled decoder's cache goes back to it; our own is freed
            self._session = None
            pipe.maybe_free_model_hooks()

    def _choose_header(self, ctx: list[int], image_top_k: int | None) -> list[int]:
        """`[BOI, H, W]`: the caller's size, or grid tokens the model samples (only sizes that fit)."""
        pipe, s, v = self.pipe, self.settings, self.pipe.vocab
        p = pipe.image_processor.config.patch_size
        if s.height is not None:
            return v.image_header(s.height // p, s.width // p)
        lpg = pipe.image_processor.latents_per_grid
        n_ctx = len(ctx)
        logits = self._forward([v.boi_id], n_ctx)
        allowed = torch.zeros(logits.shape[-1], dtype=torch.bool)
        for n in range(1, v.max_grid + 1):
            allowed[v.grid_token(n)] = self._fits(n_ctx, n * lpg, lpg)
        h_tok = self._sample(logits, allowed, image_top_k)
        logits = self._forward([h_tok], n_ctx + 1)
        allowed.zero_()
        h_lat = v.grid_value(h_tok) * lpg
        for n in range(1, v.max_grid + 1):
            allowed[v.grid_token(n)] = self._fits(n_ctx, h_lat, n * lpg)
        w_tok = self._sample(logits, allowed, image_top_k)
        return [v.boi_id, h_tok, w_tok]
