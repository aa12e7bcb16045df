"""LuminaMGPTTransformer against transformers' Chameleon: parity, cached decoding, CFG rows, loss, checkpointing."""

from __future__ import annotations

import pytest
import torch
from transformers import ChameleonConfig, ChameleonForConditionalGeneration

from diffusers_lumina_mgpt.transformer import LuminaMGPTTransformer

VOCAB = 320
TOL = 1e-4


def tiny_pair(swin_norm: bool = False, kv_heads: int = 4, seed: int = 0, **extra):
    """A random transformers Chameleon and our model holding the same weights (norms perturbed from 1/0)."""
    torch.manual_seed(seed)
    arch = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        swin_norm=swin_norm,
    )
    hf_config = ChameleonConfig(
        **arch,
        vq_config=dict(embed_dim=8, num_embeddings=16, base_channels=32, channel_multiplier=[1, 1], latent_channels=8),
        vocabulary_map={"IMGIMGAZ": 5, "IMGIMGBZ": 6},
        attn_implementation="eager",
    )
    reference = ChameleonForConditionalGeneration(hf_config).eval()
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if "norm" in name:
                param.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)
    model = LuminaMGPTTransformer(**arch, **extra).eval()
    model.load_state_dict({k: v for k, v in reference.state_dict().items() if "vqmodel" not in k}, strict=True)
    return reference, model


def reference_logits(reference, input_ids, **kwargs) -> torch.Tensor:
    """transformers' logits before its image-token mask: final hidden states through lm_head."""
    with torch.no_grad():
        hidden = reference.model(input_ids=input_ids, **kwargs).last_hidden_state
        return reference.lm_head(hidden)


@pytest.mark.parametrize(
    "swin_norm,kv_heads", [(False, 4), (True, 4), (False, 2), (True, 1)], ids=["pre-norm", "swin", "gqa", "swin-mqa"]
)
def test_logits_match_transformers(swin_norm: bool, kv_heads: int) -> None:
    reference, model = tiny_pair(swin_norm, kv_heads)
    ids = torch.randint(0, VOCAB, (3, 37))
    expected = reference_logits(reference, ids)
    with torch.no_grad():
        got = model(ids).logits
    assert got.dtype == torch.float32
    assert (got - expected).abs().max().item() <= TOL
    # transformers' own forward masks image tokens (ids 5, 6); ours never does
    with torch.no_grad():
        masked = reference(input_ids=ids).logits
    assert masked[..., 5].max() < -1e30 and got[..., 5].abs().max() < 1e3


def test_padding_mask_matches_transformers() -> None:
    reference, model = tiny_pair(kv_heads=2)
    ids = torch.randint(0, VOCAB, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :4] = 0  # left padding
    mask[1, 9:] = 0  # right padding
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    expected = reference_logits(reference, ids, attention_mask=mask, position_ids=positions)
    with torch.no_grad():
        got = model(ids, attention_mask=mask).logits
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= TOL
    # a left-padded row equals the same tokens alone
    with torch.no_grad():
        alone = model(ids[:1, 4:]).logits
    assert (got[0, 4:] - alone[0]).abs().max().item() <= TOL


@pytest.mark.parametrize("swin_norm,kv_heads", [(False, 2), (True, 4)], ids=["gqa", "swin"])
def test_cached_decode_one_by_one_equals_full_forward(swin_norm: bool, kv_heads: int) -> None:
    _, model = tiny_pair(swin_norm, kv_heads)
    ids = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        full = model(ids).logits
        model.setup_cache(max_batch_size=4, max_seq_len=64)
        prefill = model(ids[:, :8], cache_position=torch.arange(8), logits_to_keep=1).logits
        steps = [model(ids[:, t : t + 1], cache_position=torch.tensor([t])).logits for t in range(8, 40)]
    assert prefill.shape == (2, 1, VOCAB)
    assert (prefill[:, 0] - full[:, 7]).abs().max().item() <= TOL
    assert (torch.cat(steps, dim=1) - full[:, 8:]).abs().max().item() <= TOL


def test_windows_of_16_with_truncation_equal_full_forward() -> None:
    """Speculative windows: write 16 drafts, accept a prefix, rewrite the rest at the same slots."""
    _, model = tiny_pair(kv_heads=2, seed=1)
    final = torch.randint(0, VOCAB, (2, 70))
    with torch.no_grad():
        full = model(final).logits
    generator = torch.Generator().manual_seed(3)
    model.setup_cache(2, 96)
    with torch.no_grad():
        model(final[:, :6], cache_position=torch.arange(6))
        n = 6
        checked = 0
        while n < 70:
            width = min(16, 70 - n)
            drafts = final[:, n : n + width].clone()
            accept = int(torch.randint(1, width + 1, (1,), generator=generator))
            drafts[:, accept:] = torch.randint(0, VOCAB, (2, width - accept), generator=generator)  # wrong guesses
            logits = model(drafts, cache_position=torch.arange(n, n + width)).logits
            # positions up to and including the last correct draft are exact
            assert (logits[:, :accept] - full[:, n : n + accept]).abs().max().item() <= TOL
            checked += accept
            n += accept  # slots >= n hold rejected drafts: they are overwritten by the next window
    assert checked == 64
    # stale slots beyond a one-token step are never read
    with torch.no_grad():
        model(torch.randint(0, VOCAB, (2, 16)), cache_position=torch.arange(40, 56))
        again = model(final[:, 40:41], cache_position=torch.tensor([40])).logits
    assert (again[:, 0] - full[:, 40]).abs().max().item() <= TOL


def test_masked_cfg_row_equals_sequence_alone() -> None:
    """Row 1 hides its prompt slots and starts its image at RoPE position 0: it must equal the image run alone."""
    _, model = tiny_pair(kv_heads=2, seed=2)
    prompt_len, image_len = 9, 14
    cond = torch.randint(0, VOCAB, (1, prompt_len + image_len))
    image = cond[:, prompt_len:]
    with torch.no_grad():
        alone = model(image).logits  # (1, image_len, V)
        with_prompt = model(cond).logits
    total = prompt_len + image_len
    model.setup_cache(2, total + 4)
    kv_mask = torch.ones(2, total + 4, dtype=torch.bool)
    kv_mask[1, :prompt_len] = False
    dummy = torch.full((1, prompt_len), 1)  # pad tokens in the masked prompt slots
    with torch.no_grad():
        prefill_ids = torch.cat([cond[:, :prompt_len], dummy])
        positions = torch.stack([torch.arange(prompt_len), torch.zeros(prompt_len, dtype=torch.long)])
        model(prefill_ids, cache_position=torch.arange(prompt_len), position_ids=positions, kv_mask=kv_mask)
        outs = []
        for i in range(image_len):
            slot = prompt_len + i
            step_ids = torch.stack([image[0, i : i + 1], image[0, i : i + 1]])
            step_pos = torch.tensor([[slot], [i]])
            outs.append(model(step_ids, cache_position=torch.tensor([slot]), position_ids=step_pos, kv_mask=kv_mask).logits)
    got = torch.cat(outs, dim=1)
    assert torch.isfinite(got).all()
    assert (got[1] - alone[0]).abs().max().item() <= TOL
    assert (got[0] - with_prompt[0, prompt_len:]).abs().max().item() <= TOL


def test_cache_errors_are_clear() -> None:
    _, model = tiny_pair()
    ids = torch.randint(0, VOCAB, (1, 4))
    with pytest.raises(ValueError, match="setup_cache"):
        model(ids, cache_position=torch.arange(4))
    model.setup_cache(1, 8)
    with pytest.raises(ValueError, match="cache_position"):
        model(ids)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(ids, cache_position=torch.arange(6, 10))
    with pytest.raises(ValueError, match="max_batch_size"):
        model(torch.zeros(2, 1, dtype=torch.long), cache_position=torch.tensor([0]))
    model.delete_cache()
    assert model.kv_cache is None and model(ids).logits.shape == (1, 4, VOCAB)


def test_loss_equals_hand_computation() -> None:
    _, model = tiny_pair(kv_heads=2, z_loss_weight=1e-2)
    ids = torch.randint(0, VOCAB, (2, 11))
    labels = ids.clone()
    labels[0, :5] = -100
    labels[1, 7:] = -100
    out = model(ids, labels=labels)
    logits = out.logits.detach().double()
    total, count = 0.0, 0
    for b in range(2):
        for t in range(10):
            target = int(labels[b, t + 1])
            if target == -100:
                continue
            lse = torch.logsumexp(logits[b, t], dim=-1)
            total += float(lse - logits[b, t, target]) + 1e-2 * float(lse) ** 2
            count += 1
    assert abs(out.loss.item() - total / count) < 1e-5
    out.loss.backward()
    assert model.lm_head.weight.grad is not None and torch.isfinite(model.lm_head.weight.grad).all()


def test_gradient_checkpointing_and_bf16_autocast() -> None:
    _, model = tiny_pair(kv_heads=2, residual_dropout=0.0)
    ids = torch.randint(0, VOCAB, (2, 10))
    model.train()
    loss = model(ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    loss_ckpt = model(ids, labels=ids).loss
    loss_ckpt.backward()
    assert abs(loss.item() - loss_ckpt.item()) < 1e-6
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, grads[name], atol=1e-6), name
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
    assert out.logits.dtype == torch.float32 and abs(out.loss.item() - loss.item()) < 0.05
    out.loss.backward()


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_cpu_bf16_training_attention_matches_sdpa(monkeypatch, kv_heads: int) -> None:
    """Causal bf16 attention with autograd on a CPU takes `cpu_bf16_causal_attention` (faster than the flash
    kernel's backward there); its output and gradients match float32 SDPA to bf16 precision. Without
    autograd, in fp32, or with a mask, `attention` stays SDPA."""
    from diffusers_lumina_mgpt import kv_cache

    calls = []
    real = kv_cache.cpu_bf16_causal_attention
    monkeypatch.setattr(kv_cache, "cpu_bf16_causal_attention", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    q = torch.randn(2, 4, 37, 16)
    k, v = torch.randn(2, kv_heads, 37, 16), torch.randn(2, kv_heads, 37, 16)
    gqa = kv_heads != 4
    ref_inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = torch.nn.functional.scaled_dot_product_attention(*ref_inputs, is_causal=True, enable_gqa=gqa)
    ref.backward(torch.ones_like(ref))
    inputs = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    out = kv_cache.attention(*inputs, None, is_causal=True, enable_gqa=gqa)
    out.float().backward(torch.ones_like(ref))
    assert calls == [1] and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    for a, b in zip(inputs, ref_inputs):
        torch.testing.assert_close(a.grad.float(), b.grad, atol=6e-2, rtol=5e-2)
    with torch.no_grad():
        kv_cache.attention(*(t.bfloat16() for t in (q, k, v)), None, is_causal=True, enable_gqa=gqa)
    kv_cache.attention(*ref_inputs, None, is_causal=True, enable_gqa=gqa)
    assert calls == [1]


def test_residual_dropout_only_in_training() -> None:
    _, model = tiny_pair(residual_dropout=0.5)
    ids = torch.randint(0, VOCAB, (1, 8))
    with torch.no_grad():
        a, b = model(ids).logits, model(ids).logits
        model.train()
        c = model(ids).logits
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_fused_projections_are_exact_views() -> None:
    _, model = tiny_pair(kv_heads=2)
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        before = model(ids).logits
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.fuse_projections()
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.data_ptr() == attn.fused_weight.data_ptr()  # shared storage, no copy
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, before, atol=1e-5)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    model.unfuse_projections()
    assert attn.fused_weight is None and torch.equal(model(ids).logits.detach(), before)


def test_rope_table_rows_equal_positions_computed_in_place() -> None:
    """Default positions read cos/sin from `rope_table` (grown past max_position_embeddings when a longer
    sequence comes); explicit position_ids compute them in place. Both give the same logits, bit for bit,
    left-padded rows included."""
    from diffusers_lumina_mgpt.transformer import rope_tables

    _, model = tiny_pair(max_position_embeddings=16)
    ids = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        from_table = model(ids).logits
        in_place = model(ids, position_ids=torch.arange(40)[None].expand(2, 40)).logits
        mask = torch.ones(2, 40, dtype=torch.long)
        mask[1, :7] = 0
        padded = model(ids, attention_mask=mask).logits
        padded_in_place = model(ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    assert torch.equal(from_table, in_place) and torch.equal(padded, padded_in_place)
    cos, sin = model.rope_table(40, torch.device("cpu"))
    assert cos.shape == sin.shape == (40, 16)
    expected = rope_tables(torch.arange(40), model.inverse_frequencies(torch.device("cpu")), torch.float32)
    assert torch.equal(cos, expected[0]) and torch.equal(sin, expected[1])
    assert model.rope_table(10, torch.device("cpu"))[0] is cos  # kept, not rebuilt


def test_logits_to_keep() -> None:
    _, model = tiny_pair()
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        full, last = model(ids).logits, model(ids, logits_to_keep=3).logits
    assert last.shape == (2, 3, VOCAB) and torch.allclose(last, full[:, -3:], atol=1e-6)


def test_logits_token_ids_selects_vocabulary_rows_and_follows_weight_updates():
    torch.manual_seed(0)
    model = LuminaMGPTTransformer(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=4).eval()
    ids = torch.randint(0, 50, (2, 5))
    subset = torch.tensor([7, 3, 40, 11])
    with torch.no_grad():
        full = model(ids).logits
        part = model(ids, logits_token_ids=subset).logits
        assert part.shape == (2, 5, 4)
        torch.testing.assert_close(part, full[..., subset], rtol=0, atol=1e-5)
        model.lm_head.weight[3].add_(1.0)  # an in-place update must not be served from the gathered copy
        torch.testing.assert_close(model(ids, logits_token_ids=subset).logits, model(ids).logits[..., subset],
                                   rtol=0, atol=1e-5)
        other = torch.tensor([1, 2])
        assert model(ids, logits_token_ids=other).logits.shape == (2, 5, 2)
    with pytest.raises(ValueError, match="logits_token_ids"):
        model(ids, labels=ids, logits_token_ids=subset)


def test_small_batch_linear_route_is_measured_and_both_routes_agree() -> None:
    """`fast_linear.linear` picks `weight @ x.T` or `F.linear` for few-row fp32 CPU products by timing both once
    (which is faster depends on the CPU); the two give the same numbers, and measuring draws no random numbers."""
    from diffusers_lumina_mgpt import fast_linear

    torch.manual_seed(0)
    weight, x = torch.randn(300, 64), torch.randn(3, 64)
    expected = torch.nn.functional.linear(x, weight)
    try:
        outs = []
        for route in (True, False):
            fast_linear.set_small_batch_transposed(route)
            assert fast_linear.small_batch_transposed() is route
            outs.append(fast_linear.linear(x, weight))
            outs.append(fast_linear.linear(x[:1], weight))  # one row: padded to two on the transposed route
        for full, one in zip(outs[::2], outs[1::2]):
            torch.testing.assert_close(full, expected)
            torch.testing.assert_close(one, expected[:1])
        fast_linear.set_small_batch_transposed(None)
        torch.manual_seed(1)
        state = torch.get_rng_state()
        assert isinstance(fast_linear.small_batch_transposed(), bool)
        assert torch.equal(torch.get_rng_state(), state)
    finally:
        fast_linear.set_small_batch_transposed(None)
