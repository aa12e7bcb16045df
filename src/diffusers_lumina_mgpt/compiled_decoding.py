"""Compiled decoding: a static-shape decode forward for `torch.compile` (opt-in, `pipe.enable_compiled_decoding()`).

The eager cached forward attends to cache slots `[0, kv_len)`, with `kv_len` read from `cache_position`:
one host sync and one new set of shapes every step. `static_decode_forward` attends to every slot of
the cache and hides the later ones with the mask (`kv_cache.cached_attention_mask` with the full
length), so all steps of one (rows, window) shape have the same shapes and no host sync. `torch.compile`
turns such a step into one graph; with `mode="reduce-overhead"` on CUDA each step is a CUDA graph
replay, so a step costs its weight reads, not the launch of several hundred kernels.

Shapes are kept few:

* **Windows** on CUDA are padded to a power of two (Jacobi windows vary in length; a CUDA graph has
  fixed shapes); padded positions repeat the last real token and write their keys/values to one
  scratch slot past every real slot, which no real query can see (a query sees slots at or before its
  own). On a CPU, where padded rows cost their full matmul time, windows keep their length and the
  graph is compiled with a dynamic window dimension after the second length it sees.
* **The cache** belongs to the `CompiledDecoder`, not to one call: its length is rounded up to a
  multiple of `seq_multiple`, and it is reused by later calls with the same rows that fit in it, so a
  new prompt of similar length compiles nothing. Stale keys/values in a reused cache are invisible
  (prefill rewrites every prompt slot; later slots are hidden until rewritten).

* **Weights on a CPU** are frozen into the graph: the step is compiled as a module (`FrozenDecodeStep`)
  under inductor's `freezing` with its C++ GEMM template (`max_autotune_gemm_backends="CPP"`, a single
  choice, so nothing is benchmarked), which packs each weight once and runs inside the generated C++,
  streaming the weights for a CFG step's 1-2 rows at about the machine's read rate, with no call out to
  MKL per matmul. Keys and values are attended over the slots in use (rounded up to `KV_BLOCK`), with
  fused reductions instead of SDPA's kernel (`kv_cache.attention`). The graph holds a packed copy of
  the weights, so edit them only after `pipe.disable_compiled_decoding()` (docs/benchmarks.md).

The eager path stays the reference: `tests/test_compiled_decoding.py` compares both token for token.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .fast_linear import WeightRows, linear
from .kv_cache import StaticKVCache, cached_attention_mask
from .transformer import LuminaMGPTTransformer, rope_tables

# distinct (rows, window, cache length) graphs one decoder may compile before dynamo falls back to eager
RECOMPILE_LIMIT = 64


def static_decode_forward(
    transformer: LuminaMGPTTransformer,
    cache: StaticKVCache,
    input_ids: torch.Tensor,  # (R, T)
    position_ids: torch.Tensor,  # (R, T)
    cache_position: torch.Tensor,  # (T,)
    kv_mask: torch.Tensor,  # (R, max_seq_len) bool
    lm_rows: torch.Tensor,  # (K, hidden) lm_head rows of the tokens whose logits are wanted
    kv_len: int | None = None,  # attend to cache slots [0, kv_len) (past every query's slot); None: all
) -> torch.Tensor:
    """Logits (R, T, K) float32 of a cached forward over the cache; the same numbers as the eager
    `transformer(input_ids, position_ids=..., cache_position=..., kv_mask=..., logits_token_ids=...)`."""
    m = transformer.model
    return _decode(m.embed_tokens, m.layers, m.norm, transformer.inverse_frequencies(position_ids.device), cache,
                   input_ids, position_ids, cache_position, kv_mask, lm_rows, kv_len)


def _decode(embed: nn.Module, layers: nn.ModuleList, norm: nn.Module, inv_freq: torch.Tensor, cache: StaticKVCache,
            input_ids: torch.Tensor, position_ids: torch.Tensor, cache_position: torch.Tensor, kv_mask: torch.Tensor,
            lm_rows: torch.Tensor, kv_len: int | None) -> torch.Tensor:
    rows = input_ids.shape[0]
    kv_len = cache.max_seq_len if kv_len is None else kv_len
    x = embed(input_ids)
    mask = cached_attention_mask(cache_position, kv_len, rows, kv_mask)
    cos, sin = rope_tables(position_ids, inv_freq, x.dtype)
    for layer in layers:
        x = layer(x, cos, sin, mask, False, cache, cache_position, kv_len)
    return linear(norm(x), lm_rows).float()


class FrozenDecodeStep(nn.Module):
    """`static_decode_forward` of one transformer as a module, with the lm_head rows of the wanted tokens as a
    buffer: compiled under inductor's `freezing`, the weights and those rows become constants of the graph."""

    def __init__(self, transformer: LuminaMGPTTransformer, lm_rows: torch.Tensor) -> None:
        super().__init__()
        # the transformer's parts, not the transformer: a diffusers model's attribute lookup goes through its
        # config, which costs hundreds of guards (a third of a millisecond per 35M step on 2 cores)
        m = transformer.model
        self.embed_tokens, self.layers, self.norm = m.embed_tokens, m.layers, m.norm
        self.register_buffer("inv_freq", transformer.inverse_frequencies(lm_rows.device), persistent=False)
        self.register_buffer("lm_rows", lm_rows, persistent=False)

    def forward(self, cache: StaticKVCache, input_ids: torch.Tensor, position_ids: torch.Tensor,
                cache_position: torch.Tensor, kv_mask: torch.Tensor, kv_len: int) -> torch.Tensor:
        return _decode(self.embed_tokens, self.layers, self.norm, self.inv_freq, cache, input_ids, position_ids,
                       cache_position, kv_mask, self.lm_rows, kv_len)


# a frozen CPU step attends to the cache slots in use, rounded up to a multiple of this
KV_BLOCK = 64
# inductor settings of a frozen CPU step: weights are constants, GEMMs use the C++ template (no benchmarking)
FROZEN_CPU_CONFIG = {"freezing": True, "max_autotune_gemm": True, "max_autotune_gemm_backends": "CPP"}


def _bucket(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(n)))


class CompiledDecoder:
    """Runs image-decoding forwards through a compiled `static_decode_forward` and owns their KV cache.

    mode: `torch.compile` mode; None picks "reduce-overhead" (CUDA graphs) on CUDA and the default on CPU.
    backend: `torch.compile` backend ("inductor"; "eager" checks the static path without compiling).
    seq_multiple: cache lengths are rounded up to a multiple of this.
    cpu_max_window: on a CPU, longer windows run eagerly (None: compile all). Jacobi's windows measured
        slower compiled than eager there (7.2 against 5.5 s per 256 px image, 35M config, 2 cores); AR's
        windows (1 or 2 tokens) are faster compiled.
    freeze: compile a `FrozenDecodeStep` (weights as graph constants, C++ GEMMs); None: on a CPU with
        inductor and no mode given. The first call at each window size compiles C++ (tens of seconds).
    """

    def __init__(self, mode: str | None = None, backend: str = "inductor", fullgraph: bool = True,
                 seq_multiple: int = 256, cpu_max_window: int | None = 2, freeze: bool | None = None) -> None:
        if seq_multiple < 1:
            raise ValueError(f"seq_multiple must be >= 1, got {seq_multiple}")
        self.mode, self.backend, self.fullgraph, self.seq_multiple = mode, backend, fullgraph, seq_multiple
        self.cpu_max_window = cpu_max_window
        self.freeze = freeze
        self._frozen: tuple | None = None  # (transformer, token ids, compiled FrozenDecodeStep)
        self.cache: StaticKVCache | None = None  # kept across calls, lent to one session at a time
        self._lent = False
        self._compiled: dict[str, object] = {}  # device type -> compiled function
        # the lm_head rows of the image codes at one address: a CUDA graph copies any other input into its
        # own buffer on every replay (64 MB per 7B step for these)
        self._lm_rows = WeightRows()
        self.num_compiled_calls = 0

    def __repr__(self) -> str:
        return (f"CompiledDecoder(mode={self.mode!r}, backend={self.backend!r}, seq_multiple={self.seq_multiple}, "
                f"freeze={self.freeze!r})")

    def _mode(self, device: torch.device) -> str | None:
        if self.mode is not None:
            return self.mode
        return "reduce-overhead" if device.type == "cuda" and self.backend == "inductor" else None

    def _pads(self, device: torch.device) -> bool:
        """Whether windows are padded to fixed sizes: under CUDA graphs (fixed shapes), not on a CPU."""
        return device.type == "cuda"

    def _freezes(self, device: torch.device) -> bool:
        if self.freeze and device.type != "cpu":
            raise ValueError(f"freeze=True compiles C++ GEMMs for a CPU; decoding runs on {device.type}: "
                             "leave freeze=None (CUDA graphs there) or decode on the CPU")
        if self.freeze is not None:
            return self.freeze
        return device.type == "cpu" and self.backend == "inductor" and self.mode is None

    def _frozen_step(self, transformer: LuminaMGPTTransformer, token_ids: torch.Tensor):
        """The compiled `FrozenDecodeStep` of this transformer and these tokens' lm_head rows (built anew when
        either changes; a new one compiles anew)."""
        kept = self._frozen
        if kept is None or kept[0] is not transformer or not torch.equal(kept[1], token_ids.to(kept[1].device)):
            self._frozen = None
            weight = transformer.lm_head.weight
            step = FrozenDecodeStep(transformer, weight.detach().index_select(0, token_ids.to(weight.device)))
            fn = torch.compile(step, mode=self.mode, backend=self.backend, fullgraph=self.fullgraph)
            self._frozen = kept = (transformer, token_ids.clone(), fn)
        return kept[2]

    def _function(self, device: torch.device):
        fn = self._compiled.get(device.type)
        if fn is None:
            fn = self._compiled[device.type] = torch.compile(
                static_decode_forward, mode=self._mode(device), backend=self.backend, fullgraph=self.fullgraph,
                dynamic=False if self._pads(device) else None,
            )
        return fn

    # ------------------------------------------------------------------ cache
    def attach_cache(self, transformer: LuminaMGPTTransformer, rows: int, seq_len: int,
                     device: torch.device) -> StaticKVCache:
        """A cache for `rows` rows and at least `seq_len` real slots (plus one scratch slot past them),
        lent until `return_cache`: the kept one when it fits and no one holds it, else a new one (kept
        when the kept one is free, so later calls reuse it and its graphs)."""
        need = seq_len + 1
        length = -(-need // self.seq_multiple) * self.seq_multiple
        if self._lent:  # a live session (a streaming chat turn, say) holds the kept cache: use another
            return transformer.new_kv_cache(rows, length, device=device)
        c = self.cache
        fits = (c is not None and c.max_batch_size == rows and need <= c.max_seq_len <= 2 * need + self.seq_multiple
                and c.dtype == transformer.lm_head.weight.dtype and c.device == device and c.keys
                and len(c.keys) == transformer.config.num_hidden_layers
                and c.keys[0].shape[1] == transformer.model.layers[0].self_attn.num_kv_heads
                and c.keys[0].shape[3] == transformer.head_dim)
        if not fits:
            self.cache = None  # free the old one first
            self.cache = transformer.new_kv_cache(rows, length, device=device)
            if self._mode(device) == "reduce-overhead":
                for t in self.cache.keys + self.cache.values:
                    torch._dynamo.mark_static_address(t)  # CUDA graphs write it in place
        self._lent = True
        return self.cache

    def return_cache(self, cache: StaticKVCache) -> None:
        """A session is done with `cache` (from `attach_cache`)."""
        if cache is self.cache:
            self._lent = False

    def release(self) -> None:
        """Free the cache and the kept lm_head rows (the next call allocates them again and compiles for them)."""
        self.cache = None
        self._lent = False
        self._lm_rows.clear()
        self._frozen = None

    # ------------------------------------------------------------------ forward
    def __call__(
        self,
        transformer: LuminaMGPTTransformer,
        tokens: torch.Tensor,  # (R, T) on the device
        position_ids: torch.Tensor,  # (R, T)
        cache_position: torch.Tensor,  # (T,)
        kv_mask: torch.Tensor,  # (R, cache length)
        token_ids: torch.Tensor,  # (K,)
        min_window: int = 1,
        cache: StaticKVCache | None = None,
    ) -> torch.Tensor:
        """Logits (R, T, K) of one cached window; on CUDA computed at the power of two >= max(T, min_window).

        A scheduler's windows are mostly of one size (AR: 1 or 2 tokens, Jacobi: the drafts plus the
        pending tokens), so passing that size as `min_window` leaves one graph to capture per scheduler.
        """
        cache = self.cache if cache is None else cache
        if cache is None:
            raise RuntimeError("CompiledDecoder needs a cache: pass the one attach_cache(...) returned.")
        rows, T = tokens.shape
        padded = _bucket(max(T, min_window)) if self._pads(tokens.device) else T
        if padded != T:
            extra = padded - T
            tokens = torch.cat([tokens, tokens[:, -1:].expand(rows, extra)], dim=1)
            position_ids = torch.cat([position_ids, position_ids[:, -1:].expand(rows, extra)], dim=1)
            scratch = cache_position.new_full((extra,), cache.max_seq_len - 1)
            cache_position = torch.cat([cache_position, scratch])
        device = tokens.device
        transformer.inverse_frequencies(device)  # set eagerly: graphs guard on them
        if self._freezes(device):
            from torch._inductor import config as inductor_config

            fn = self._frozen_step(transformer, token_ids)
            # attend to the slots in use, rounded up to KV_BLOCK (one dynamic-length graph after the second size)
            kv_len = min(cache.max_seq_len, -(-(int(cache_position.max()) + 1) // KV_BLOCK) * KV_BLOCK)
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT), inductor_config.patch(FROZEN_CPU_CONFIG):
                logits = fn(cache, tokens, position_ids, cache_position, kv_mask, kv_len)
            self.num_compiled_calls += 1
            return logits[:, :T]
        fn = self._function(device)
        graphs = self._mode(device) == "reduce-overhead"
        lm_rows = self._lm_rows.get(transformer.lm_head.weight, token_ids,
                                    on_new=torch._dynamo.mark_static_address if graphs else None)
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            logits = fn(transformer, cache, tokens, position_ids, cache_position, kv_mask, lm_rows)
        self.num_compiled_calls += 1
        logits = logits[:, :T]
        return logits.clone() if graphs else logits  # a CUDA graph's output is overwritten by its next replay
