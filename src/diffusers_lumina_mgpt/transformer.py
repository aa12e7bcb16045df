"""`LuminaMGPTTransformer`: the Chameleon-architecture decoder used by Lumina-mGPT, as a diffusers model.

The architecture is exactly that of transformers' `ChameleonForConditionalGeneration` (without its VQ
image encoder and without its image-token logit mask): token embedding, N decoder layers (RMSNorm,
rotary embeddings, per-head QK LayerNorm with a (heads, head_dim) affine, grouped-query attention,
SwiGLU MLP; `swin_norm` moves the norms after attention/MLP), a final RMSNorm and an untied lm_head.
State-dict keys are transformers' names, so `ChameleonForConditionalGeneration` weights load unchanged
(see `checkpoint_loading.py` for `from_chameleon`).

Two ways to call `forward`:

* No cache set up: an ordinary causal forward over `input_ids` (B, T), optionally with a padding
  `attention_mask` (B, T) and `labels` for training (cross-entropy + z-loss).
* After `setup_cache(max_batch_size, max_seq_len)`: every call writes its keys/values at the cache slots
  `cache_position` (T,) and attends to earlier slots, filtered per row by `kv_mask` (B, max_seq_len). See
  `kv_cache.py` for the exact rule; it covers prefill, one-token decode, speculative windows with
  truncation and classifier-free-guidance rows that hide their prompt.

For fast decoding, `fuse_projections()` concatenates the q/k/v and gate/up weights into single matrices
in place (the original parameters become views into them, so no memory is duplicated and state-dict
keys are unchanged); see docs/transformer.md.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .fast_linear import Linear, WeightRows, fuse_linears, fused_usable, linear
from .kv_cache import StaticKVCache, attention, cached_attention_mask, padded_causal_mask

from . import diffusers_compat

diffusers_compat.install()

QK_NORM_EPS = 1e-5  # Chameleon's QK LayerNorm epsilon (fixed in Meta's and transformers' code)
IGNORE_INDEX = -100

_ACTIVATIONS = {"silu": F.silu, "swish": F.silu, "gelu": F.gelu, "relu": F.relu}


@dataclass
class LuminaMGPTTransformerOutput(BaseOutput):
    """`loss`: scalar training loss when `labels` were given; `logits`: (B, T or logits_to_keep, vocab) float32."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, weight applied in the input dtype (as transformers)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class HeadLayerNorm(nn.Module):
    """LayerNorm over head_dim only, followed by a per-head affine of shape (heads, head_dim)."""

    def __init__(self, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_heads, head_dim))
        self.bias = nn.Parameter(torch.zeros(num_heads, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., heads, head_dim)
        return F.layer_norm(x, (x.shape[-1],), None, None, QK_NORM_EPS) * self.weight + self.bias


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_tables(position_ids: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (B, T, head_dim) of integer positions (B, T) for the inverse frequencies (head_dim / 2,)."""
    freqs = position_ids[..., None].float() * inv_freq  # (B, T, dim/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class Attention(nn.Module):
    """Grouped-query self-attention with QK LayerNorm and rotary embeddings."""

    def __init__(self, config: SimpleNamespace, layer_idx: int) -> None:
        super().__init__()
        hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        self.num_heads, self.num_kv_heads = heads, kv_heads
        self.head_dim = hidden // heads
        self.layer_idx = layer_idx
        bias = config.attention_bias
        self.q_proj = Linear(hidden, heads * self.head_dim, bias=bias)
        self.k_proj = Linear(hidden, kv_heads * self.head_dim, bias=bias)
        self.v_proj = Linear(hidden, kv_heads * self.head_dim, bias=bias)
        self.o_proj = Linear(hidden, hidden, bias=bias)
        self.q_norm = HeadLayerNorm(heads, self.head_dim)
        self.k_norm = HeadLayerNorm(kv_heads, self.head_dim)
        self.attention_dropout = config.attention_dropout
        # set by LuminaMGPTTransformer.fuse_projections(): (q+k+v out, hidden) with q/k/v weights as views of it
        self.fused_weight: torch.Tensor | None = None
        self.fused_bias: torch.Tensor | None = None

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fused = self.fused_weight
        if fused is not None and fused_usable(self.q_proj.weight, fused):
            qkv = linear(x, fused, self.fused_bias)
            dq, dk = self.q_proj.out_features, self.k_proj.out_features
            return qkv[..., :dq], qkv[..., dq : dq + dk], qkv[..., dq + dk :]
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, hidden)
        cos: torch.Tensor,  # (B, T, head_dim)
        sin: torch.Tensor,
        mask: torch.Tensor | None,  # bool (B, 1, T, L) or None
        is_causal: bool,
        cache: StaticKVCache | None = None,
        cache_position: torch.Tensor | None = None,
        kv_len: int = 0,
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        q, k, v = self._project(x)
        q = self.q_norm(q.reshape(batch, seq, self.num_heads, self.head_dim))
        k = self.k_norm(k.reshape(batch, seq, self.num_kv_heads, self.head_dim))
        v = v.reshape(batch, seq, self.num_kv_heads, self.head_dim)
        cos, sin = cos[:, :, None, :].to(q.dtype), sin[:, :, None, :].to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # (B, heads, T, head_dim); under autocast the norms return float32 while v is low precision
        q, k, v = q.to(v.dtype).transpose(1, 2), k.to(v.dtype).transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer_idx, cache_position, k, v, kv_len)
            q = q.to(k.dtype)
        out = attention(q, k, v, mask, self.attention_dropout if self.training else 0.0, is_causal,
                        self.num_heads != self.num_kv_heads)
        out = out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim)
        return self.o_proj(out.to(x.dtype) if out.dtype != self.o_proj.weight.dtype else out)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(act(gate(x)) * up(x))."""

    def __init__(self, config: SimpleNamespace) -> None:
        super().__init__()
        hidden, inter, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = Linear(hidden, inter, bias=bias)
        self.up_proj = Linear(hidden, inter, bias=bias)
        self.down_proj = Linear(inter, hidden, bias=bias)
        if config.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act {config.hidden_act!r} is not supported; use one of {sorted(_ACTIVATIONS)}.")
        self.act = _ACTIVATIONS[config.hidden_act]
        self.fused_weight: torch.Tensor | None = None  # (2 * inter, hidden), see fuse_projections
        self.fused_bias: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fused_weight
        if fused is not None and fused_usable(self.gate_proj.weight, fused):
            gate, up = linear(x, fused, self.fused_bias).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.act(gate) * up)


class DecoderLayer(nn.Module):
    """One Chameleon block; pre-norm, or post-branch norm when `swin_norm` (34B)."""

    def __init__(self, config: SimpleNamespace, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.swin_norm = config.swin_norm
        self.residual_dropout = config.residual_dropout

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.residual_dropout, self.training) if self.residual_dropout > 0 else x

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        cache: StaticKVCache | None = None,
        cache_position: torch.Tensor | None = None,
        kv_len: int = 0,
    ) -> torch.Tensor:
        if self.swin_norm:
            attn = self.self_attn(x, cos, sin, mask, is_causal, cache, cache_position, kv_len)
            x = x + self._drop(self.input_layernorm(attn))
            return x + self._drop(self.post_attention_layernorm(self.mlp(x)))
        attn = self.self_attn(self.input_layernorm(x), cos, sin, mask, is_causal, cache, cache_position, kv_len)
        x = x + self._drop(attn)
        return x + self._drop(self.mlp(self.post_attention_layernorm(x)))


class _Backbone(nn.Module):
    """Holds the `model.*` parameters under transformers' names."""

    def __init__(self, config: SimpleNamespace) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LuminaMGPTTransformer(ModelMixin, ConfigMixin):
    """Chameleon / Lumina-mGPT decoder-only transformer with a static KV cache (see module docstring)."""

    _supports_gradient_checkpointing = True
    _no_split_modules = ["DecoderLayer"]

    @register_to_config
    def __init__(
        self,
        vocab_size: int = 65536,
        hidden_size: int = 4096,
        intermediate_size: int = 11008,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 4096,
        rms_norm_eps: float = 1e-5,
        rope_theta: float = 10000.0,
        attention_bias: bool = False,
        mlp_bias: bool = False,
        attention_dropout: float = 0.0,
        swin_norm: bool = False,
        residual_dropout: float = 0.0,
        z_loss_weight: float = 0.0,
        bos_token_id: int | None = 0,
        pad_token_id: int | None = 1,
        eos_token_id: int | None = 2,
    ) -> None:
        super().__init__()
        if num_key_value_heads is None:
            num_key_value_heads = num_attention_heads
        if hidden_size % num_attention_heads or num_attention_heads % num_key_value_heads:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_attention_heads}), "
                f"which must be divisible by num_key_value_heads ({num_key_value_heads})."
            )
        cfg = SimpleNamespace(**{**self.config, "num_key_value_heads": num_key_value_heads})
        self.model = _Backbone(cfg)
        self.lm_head = Linear(hidden_size, vocab_size, bias=False)
        self.head_dim = hidden_size // num_attention_heads
        self.gradient_checkpointing = False
        self.kv_cache: StaticKVCache | None = None
        self._inv_freq: torch.Tensor | None = None
        self._rope_table: tuple[torch.Tensor, torch.Tensor] | None = None  # see rope_table()
        self._lm_head_rows = WeightRows()  # code-only logits inside an image: 8192 of 65536 lm_head rows

    # ------------------------------------------------------------------ cache
    def setup_cache(
        self,
        max_batch_size: int,
        max_seq_len: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        """Allocate the static KV cache; later forwards must pass `cache_position`. Replaces any previous cache."""
        self.kv_cache = None  # free the old one first
        self.kv_cache = self.new_kv_cache(max_batch_size, max_seq_len, dtype, device)

    def new_kv_cache(
        self,
        max_batch_size: int,
        max_seq_len: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> StaticKVCache:
        """A `StaticKVCache` shaped for this model (default: the weights' dtype and device), to pass as
        `forward(..., kv_cache=...)`; the model keeps no reference to it."""
        param = self.lm_head.weight
        return StaticKVCache(
            self.config.num_hidden_layers,
            max_batch_size,
            self.model.layers[0].self_attn.num_kv_heads if self.model.layers else 1,
            max_seq_len,
            self.head_dim,
            dtype or param.dtype,
            device or param.device,
        )

    def delete_cache(self) -> None:
        self.kv_cache = None
        self._lm_head_rows.clear()

    # ------------------------------------------------------------ fused weights
    @torch.no_grad()
    def fuse_projections(self) -> None:
        """Concatenate q/k/v and gate/up weights per layer into one matrix each, in place (no extra memory).

        The original parameters become views into the fused matrices, so state-dict keys, training and
        `save_pretrained` are unchanged. Moving or casting the model afterwards (`.to(...)`) breaks the
        sharing; the forward detects that and falls back to separate matmuls; call this again to re-fuse.
        """
        for layer in self.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            attn.fused_weight, attn.fused_bias = fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj])
            mlp.fused_weight, mlp.fused_bias = fuse_linears([mlp.gate_proj, mlp.up_proj])

    def unfuse_projections(self) -> None:
        """Give every projection its own storage again (undo `fuse_projections`)."""
        for layer in self.model.layers:
            for parent, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj")), (layer.mlp, ("gate_proj", "up_proj"))):
                if parent.fused_weight is None:
                    continue
                for name in names:
                    lin = getattr(parent, name)
                    lin.weight = nn.Parameter(lin.weight.detach().clone(), requires_grad=lin.weight.requires_grad)
                    if lin.bias is not None:
                        lin.bias = nn.Parameter(lin.bias.detach().clone(), requires_grad=lin.bias.requires_grad)
                parent.fused_weight = parent.fused_bias = None

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        """As nn.Module.state_dict; fused views are returned as separate tensors so safetensors can save them."""
        sd = super().state_dict(*args, **kwargs)
        if any(layer.mlp.fused_weight is not None for layer in self.model.layers):
            for key, value in sd.items():
                if key.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight")) or (
                    key.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias", "gate_proj.bias", "up_proj.bias"))
                ):
                    sd[key] = value.clone()
        return sd

    # ----------------------------------------------------------------- forward
    def inverse_frequencies(self, device: torch.device) -> torch.Tensor:
        """RoPE's inverse frequencies (head_dim / 2,) on `device`, computed once (a compiled step guards on them,
        so a caller sets them eagerly first)."""
        inv = self._inv_freq
        if inv is None or inv.device != torch.device(device):
            dim = self.head_dim
            exponent = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
            inv = self._inv_freq = 1.0 / (self.config.rope_theta**exponent)
        return inv

    def rope_table(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 cos/sin (N, head_dim) of the positions [0, N), N >= `length` (at least
        max_position_embeddings), computed once per device and grown when a longer sequence comes. A compiled
        step guards on it, so a caller sets it eagerly first (`lumina-mgpt train` does, for data.max_length)."""
        table = self._rope_table
        if table is None or table[0].shape[0] < length or table[0].device != torch.device(device):
            n = max(int(length), int(self.config.max_position_embeddings))
            cos, sin = rope_tables(torch.arange(n, device=device), self.inverse_frequencies(device), torch.float32)
            table = self._rope_table = (cos, sin)
        return table

    def _rope(self, position_ids: torch.Tensor, dtype: torch.dtype, bound: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin (B, T, head_dim) for integer positions (B, T), computed in float32 like transformers.

        When every position is known to lie below `bound`, they are rows of `rope_table` (the same values:
        the same float32 operations per position). Computed in place, a compiled training step recomputes
        cos and sin inside every kernel that reads them, in every layer, forward and backward
        (docs/benchmarks.md, "RoPE table")."""
        if bound is None:
            return rope_tables(position_ids, self.inverse_frequencies(position_ids.device), dtype)
        cos, sin = self.rope_table(bound, position_ids.device)
        return cos[position_ids].to(dtype), sin[position_ids].to(dtype)

    def forward(
        self,
        input_ids: torch.LongTensor,
        position_ids: torch.LongTensor | None = None,
        cache_position: torch.LongTensor | None = None,
        kv_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
        logits_token_ids: torch.LongTensor | None = None,
        return_dict: bool = True,
        kv_cache: StaticKVCache | None = None,
    ) -> LuminaMGPTTransformerOutput | tuple:
        """Logits (float32) for `input_ids` (B, T); see the module docstring for the cached / uncached modes.

        Uncached: `attention_mask` (B, T) marks real tokens (1) vs padding (0); default `position_ids` then
        count real tokens only, so a left-padded row gets the positions it would have alone.
        Cached: `cache_position` (T,) are the slots written; `position_ids` (B, T) default to them;
        `kv_mask` (B, max_seq_len) bool says which slots each row may see.
        `logits_token_ids` (K,): return logits for these vocabulary entries only, (B, T', K), in that order
        (decoding inside an image needs the image codes alone: 8192 of 65536 lm_head rows).
        `kv_cache`: a `StaticKVCache` to use instead of the one `setup_cache` made (a `DecodingSession`
        passes its own).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}.")
        batch, seq = input_ids.shape
        device = input_ids.device
        cache = self.kv_cache if kv_cache is None else kv_cache
        x = self.model.embed_tokens(input_ids)
        kv_len = 0
        is_causal = False
        if cache is not None:
            if cache_position is None:
                raise ValueError(
                    "A KV cache is set up, so forward needs cache_position (the T cache slots to write); "
                    "call delete_cache() for an uncached forward."
                )
            if cache_position.shape != (seq,):
                raise ValueError(f"cache_position must have shape ({seq},), got {tuple(cache_position.shape)}.")
            if batch > cache.max_batch_size:
                raise ValueError(f"batch size {batch} exceeds the cache's max_batch_size {cache.max_batch_size}.")
            kv_len = int(cache_position.max()) + 1
            if kv_len > cache.max_seq_len or int(cache_position.min()) < 0:
                raise ValueError(
                    f"cache_position must lie in [0, {cache.max_seq_len}); got max {kv_len - 1}. "
                    "Call setup_cache with a larger max_seq_len."
                )
            bound = None if position_ids is not None else kv_len  # the default positions are cache slots < kv_len
            if position_ids is None:
                position_ids = cache_position[None].expand(batch, seq)
            mask = cached_attention_mask(cache_position, kv_len, batch, kv_mask)
        else:
            if cache_position is not None or kv_mask is not None:
                raise ValueError("cache_position / kv_mask need a KV cache: call setup_cache(...) first.")
            if attention_mask is not None and attention_mask.shape != (batch, seq):
                raise ValueError(f"attention_mask must have shape {(batch, seq)}, got {tuple(attention_mask.shape)}.")
            bound = None if position_ids is not None else seq  # the default positions are below seq
            if position_ids is None:
                if attention_mask is None:
                    position_ids = torch.arange(seq, device=device)[None].expand(batch, seq)
                else:
                    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            mask = padded_causal_mask(attention_mask, seq, device)
            is_causal = mask is None
        cos, sin = self._rope(position_ids, x.dtype, bound)

        with _attention_backends(x.device, cache is not None):
            for layer in self.model.layers:
                if torch.is_grad_enabled() and self.gradient_checkpointing and cache is None:
                    x = self._gradient_checkpointing_func(layer, x, cos, sin, mask, is_causal)
                else:
                    x = layer(x, cos, sin, mask, is_causal, cache, cache_position, kv_len)
        x = self.model.norm(x)
        if logits_to_keep > 0:
            x = x[:, -logits_to_keep:]
        if logits_token_ids is None:
            logits = self.lm_head(x).float()  # (B, T', vocab)
        else:
            logits = linear(x, self._lm_head_rows.get(self.lm_head.weight, logits_token_ids)).float()  # (B, T', K)

        loss = None
        if labels is not None:
            if logits_to_keep > 0 or logits_token_ids is not None:
                raise ValueError(
                    "labels need logits for every position and token: leave logits_to_keep and logits_token_ids unset."
                )
            loss = causal_lm_loss(logits, labels, self.config.z_loss_weight)
        if not return_dict:
            return (loss, logits) if loss is not None else (logits,)
        return LuminaMGPTTransformerOutput(loss=loss, logits=logits)

    @classmethod
    def from_chameleon(
        cls, path: str | os.PathLike, torch_dtype: torch.dtype | None = None
    ) -> "LuminaMGPTTransformer":
        """Load a transformers-format Chameleon / Lumina-mGPT folder (memory-mapped; see checkpoint_loading.py)."""
        from .checkpoint_loading import load_chameleon_checkpoint

        return load_chameleon_checkpoint(cls, path, torch_dtype=torch_dtype)


def _attention_backends(device: torch.device, cached: bool):
    """SDPA backends for a forward. On CUDA, cached decoding excludes cuDNN attention.

    The attended cache length grows by one every decode step; cuDNN's SDPA builds a new execution
    graph for every new shape, which an H200 profile showed costing ~12 ms of host time per call
    (~80 ms per 7B decode step). Flash / memory-efficient attention have no per-shape setup.
    """
    if device.type != "cuda" or not cached:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, z_loss_weight: float = 0.0, reduction: str = "mean",
    row_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean (or, with reduction="sum", sum) over supervised positions (labels != -100, shifted by one)
    of CE + z_loss_weight * logsumexp^2, each row's positions weighted by `row_weights` (B,) if given (the
    mean is then the weighted mean). Training sums and divides by the global batch's (weighted) supervised
    count, so gradient accumulation and several processes weigh every token alike."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    shift_logits = logits[:, :-1].float()  # (B, T-1, V)
    shift_labels = labels[:, 1:].to(logits.device)
    supervised = (shift_labels != IGNORE_INDEX).float()
    if row_weights is not None:
        supervised = supervised * row_weights.to(supervised.device, torch.float32)[:, None]
    count = supervised.sum().clamp(min=1e-8) if reduction == "mean" else 1  # weights may sum below 1
    ce = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view_as(supervised)
    loss = (ce * supervised).sum() / count
    if z_loss_weight:
        lse = torch.logsumexp(shift_logits, dim=-1)  # (B, T-1)
        loss = loss + z_loss_weight * (lse.pow(2) * supervised).sum() / count
    return loss
