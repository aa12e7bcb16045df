"""Preallocated (static) key/value cache for `LuminaMGPTTransformer` and the attention mask it implies.

The cache is a pair of tensors per layer, allocated once by `LuminaMGPTTransformer.setup_cache` and written
in place at the slots the caller names (`cache_position`), in the style of gpt-fast. Nothing is ever
appended or reallocated, so one generation does no per-step allocation for keys and values.

Slot semantics (shared by every row of the batch):

* A forward with `cache_position = [n, ..., n+T-1]` writes its T keys/values at those slots, then each
  query at slot ``c`` attends to the slots ``s`` with ``s <= c`` that its row may see (`kv_mask[b, s]`),
  and always to its own slot ``c`` (so a row whose earlier slots are all masked never produces NaN).
* Because a query never looks beyond its own slot, stale entries at later slots are invisible. Truncating
  rejected speculative tokens is therefore free: write the next tokens at those slots again.
"""

from __future__ import annotations

import torch

from .fast_linear import frozen_compile


class StaticKVCache:
    """Per-layer key/value buffers of shape (max_batch_size, num_kv_heads, max_seq_len, head_dim)."""

    def __init__(
        self,
        num_layers: int,
        max_batch_size: int,
        num_kv_heads: int,
        max_seq_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        if max_batch_size < 1 or max_seq_len < 1:
            raise ValueError(
                f"setup_cache needs max_batch_size >= 1 and max_seq_len >= 1, got {max_batch_size} and {max_seq_len}."
            )
        shape = (max_batch_size, num_kv_heads, max_seq_len, head_dim)
        # normal tensors even under inference_mode: a cache made by an image call (inference mode) is
        # written by a chat turn's text forwards (no_grad) when a compiled decoder lends it to both
        with torch.inference_mode(False):
            self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
            self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len
        self.dtype = dtype
        self.device = torch.device(device)

    def update(
        self, layer: int, cache_position: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kv_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write `key`/`value` (B, Hkv, T, D) at slots `cache_position` (T,); return slots [0, kv_len) of this batch."""
        batch = key.shape[0]
        k_cache = self.keys[layer]
        v_cache = self.values[layer]
        if key.shape[2] == 1 and not torch.compiler.is_compiling():
            # one-token eager decode: a plain indexed copy is cheaper than index_copy_'s generic path
            # (a compiled step keeps index_copy_: indexing by a tensor slot would read it on the host)
            slot = cache_position[0]
            k_cache[:batch, :, slot] = key[:, :, 0].to(self.dtype)
            v_cache[:batch, :, slot] = value[:, :, 0].to(self.dtype)
        else:
            k_cache[:batch].index_copy_(2, cache_position, key.to(self.dtype))
            v_cache[:batch].index_copy_(2, cache_position, value.to(self.dtype))
        return k_cache[:batch, :, :kv_len], v_cache[:batch, :, :kv_len]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


def cached_attention_mask(
    cache_position: torch.Tensor, kv_len: int, batch_size: int, kv_mask: torch.Tensor | None
) -> torch.Tensor | None:
    """Boolean mask (B, 1, T, kv_len) for queries at `cache_position` over cache slots [0, kv_len), or None.

    Allowed: ``(s <= c and kv_mask[b, s]) or s == c``. Returns None when every entry would be allowed
    (one-token decode at the last slot with no row mask), so the caller can skip masking entirely.
    """
    slots = torch.arange(kv_len, device=cache_position.device)  # (L,)
    query_slots = cache_position[:, None]  # (T, 1)
    causal = slots[None, :] <= query_slots  # (T, L)
    if kv_mask is None:
        if cache_position.numel() == 1 and int(cache_position[0]) == kv_len - 1:
            return None
        return causal[None, None].expand(batch_size, 1, -1, -1)
    if kv_mask.dim() != 2 or kv_mask.shape[0] != batch_size or kv_mask.shape[1] < kv_len:
        raise ValueError(
            f"kv_mask must have shape (batch_size={batch_size}, max_seq_len) with max_seq_len >= {kv_len}, "
            f"got {tuple(kv_mask.shape)}; pass the (B, max_seq_len) boolean mask of cache slots each row may see."
        )
    own = slots[None, :] == query_slots  # (T, L)
    allowed = (causal[None] & kv_mask[:, None, :kv_len].bool()) | own[None]  # (B, T, L)
    return allowed[:, None]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float = 0.0,
              is_causal: bool = False, enable_gqa: bool = False) -> torch.Tensor:
    """`F.scaled_dot_product_attention`, except in two places where something else is faster:

    * inside a frozen compile (the CPU decode step, see `fast_linear.frozen_compile`) with a mask: the scores,
      softmax and weighted sum are written as reductions that inductor fuses into loops streaming the keys
      and values once (SDPA's CPU kernel costs about 0.1 ms per call for a decode step's query against a few
      hundred cached slots);
    * causal bf16 training on a CPU (`cpu_bf16_causal_attention`)."""
    if (is_causal and mask is None and dropout_p == 0 and torch.is_grad_enabled() and q.device.type == "cpu"
            and q.dtype == torch.bfloat16 and q.shape[-2] <= CPU_BF16_ATTENTION_MAX_LEN):
        return cpu_bf16_causal_attention(q, k, v)
    if mask is None or dropout_p > 0 or not frozen_compile():
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal and mask is None, enable_gqa=enable_gqa)
    if enable_gqa and k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = (q.float()[..., :, None, :] * k.float()[..., None, :, :]).sum(-1) * q.shape[-1] ** -0.5  # (B, H, T, L)
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return (probs[..., None] * v.float()[..., None, :, :]).sum(-2).to(q.dtype)  # (B, H, T, D)


# Longest sequence `attention` sends to `cpu_bf16_causal_attention`: its (B * heads, T, T) scores are held
# in memory, where the flash kernel streams them.
CPU_BF16_ATTENTION_MAX_LEN = 1024


def cpu_bf16_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of (B, H, T, D) bf16 tensors as two batched matrix products and a float32 softmax.

    PyTorch's CPU flash-attention backward is slow in bf16 at small head sizes: in the shipped ShapesWorld
    model's training step (head_dim 32, rows of 80-370 tokens, 2 cores with AMX) it took a third of the step,
    and this form made the step 1.19x faster (docs/benchmarks.md, "Training throughput"). In fp32 the flash
    kernel is faster, so only bf16 comes here."""
    if k.shape[1] != q.shape[1]:  # grouped-query attention: each key/value head serves several query heads
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    t = q.shape[-2]
    future = torch.full((t, t), float("-inf"), device=q.device, dtype=q.dtype).triu(1)
    scores = torch.baddbmm(future.expand(q.shape[0] * q.shape[1], t, t), q.flatten(0, 1),
                           k.flatten(0, 1).transpose(1, 2), alpha=q.shape[-1] ** -0.5)
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    return torch.bmm(probs, v.flatten(0, 1)).view(q.shape)


def padded_causal_mask(attention_mask: torch.Tensor | None, seq_len: int, device: torch.device) -> torch.Tensor | None:
    """Mask (B, 1, T, T) for an uncached forward: causal, padding keys hidden, each query sees itself."""
    if attention_mask is None:
        return None
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
    own = torch.eye(seq_len, dtype=torch.bool, device=device)
    allowed = (causal[None] & attention_mask[:, None, :].bool()) | own[None]  # (B, T, T)
    return allowed[:, None]
