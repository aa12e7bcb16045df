"""`DecodingSession`: one generation's KV cache and every transformer forward that uses it.

A pipeline call (text-to-image, edit) or a chat turn opens one session; the session owns the static
KV cache (`kv_cache.StaticKVCache`) and passes it explicitly to `LuminaMGPTTransformer.forward`, so
the transformer holds no generation state. With a `CompiledDecoder` (`pipe.enable_compiled_decoding()`)
the cache is the decoder's, kept across calls so its compiled graphs stay valid, and window forwards
run through the compiled step; prefills and text tokens stay eager.

    session = DecodingSession(transformer, rows=2, slots=512, device="cpu")
    logits = session.forward(ids, slots=torch.arange(n), positions=pos, kv_mask=mask, keep=1)
    logits = session.window(ids, slots, pos, kv_mask, token_ids, min_window=2)   # compiled if enabled
"""

from __future__ import annotations

import torch

from .compiled_decoding import CompiledDecoder
from .kv_cache import StaticKVCache


class DecodingSession:
    """The KV cache of one generation (`rows` x `slots`) and the forwards over it."""

    def __init__(self, transformer, rows: int, slots: int, device: torch.device | str,
                 decoder: CompiledDecoder | None = None) -> None:
        self.transformer, self.decoder = transformer, decoder
        self.device = torch.device(device)
        if decoder is not None:  # the decoder's kept cache, lent until close()
            self.cache: StaticKVCache | None = decoder.attach_cache(transformer, rows, slots, self.device)
        else:
            self.cache = transformer.new_kv_cache(rows, slots, device=self.device)

    @property
    def rows(self) -> int:
        return self.cache.max_batch_size

    @property
    def slots(self) -> int:
        """Cache length (a compiled decoder rounds it up)."""
        return self.cache.max_seq_len

    def forward(self, tokens: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor | None = None,
                kv_mask: torch.Tensor | None = None, token_ids: torch.Tensor | None = None, keep: int = 0) -> torch.Tensor:
        """Eager cached forward of `tokens` (R, T) written at cache `slots` (T,): logits (R, T' , V or K)."""
        d = self.device
        return self.transformer(
            tokens.to(d), position_ids=None if positions is None else positions.to(d), cache_position=slots.to(d),
            kv_mask=kv_mask, logits_to_keep=keep, logits_token_ids=token_ids, kv_cache=self.cache,
        ).logits

    def window(self, tokens: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor, kv_mask: torch.Tensor,
               token_ids: torch.Tensor, min_window: int = 1) -> torch.Tensor:
        """A decode window's logits over `token_ids` (R, T, K): through the compiled step when there is one.

        On a CPU, windows longer than the decoder's `cpu_max_window` run eagerly (see `CompiledDecoder`).
        """
        decoder, d = self.decoder, self.device
        limit = None if decoder is None or d.type != "cpu" else decoder.cpu_max_window
        if decoder is None or (limit is not None and tokens.shape[1] > limit):
            return self.forward(tokens, slots, positions, kv_mask, token_ids)
        return decoder(self.transformer, tokens.to(d), positions.to(d), slots.to(d), kv_mask, token_ids,
                       min_window=min_window, cache=self.cache)

    def close(self) -> None:
        """Done: give a compiled decoder's cache back (the session's own cache is freed with it)."""
        if self.decoder is not None and self.cache is not None:
            self.decoder.return_cache(self.cache)
        self.cache = None
