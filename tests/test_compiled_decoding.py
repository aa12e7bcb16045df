"""Compiled decoding (`pipe.enable_compiled_decoding()`): the static forward equals the eager one, and
compiled pipelines give eager's tokens (Lumina-mGPT's own, for the shared fixture) for both schedulers."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_lumina_mgpt.compiled_decoding import CompiledDecoder, static_decode_forward
from diffusers_lumina_mgpt.pipelines import LuminaMGPTPipeline
from diffusers_lumina_mgpt.schedulers import LuminaMGPTARScheduler, LuminaMGPTJacobiScheduler
from diffusers_lumina_mgpt.transformer import LuminaMGPTTransformer

from conftest import FIXTURE
from test_chat import Recorder

REFERENCE = json.loads((FIXTURE / "lumina_reference.json").read_text())["cases"]


@pytest.fixture(scope="module")
def t2i(pipe):
    return LuminaMGPTPipeline.from_pipe(pipe)


def use(pipe, scheduler: str):
    cls = LuminaMGPTJacobiScheduler if scheduler == "jacobi" else LuminaMGPTARScheduler
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


@pytest.mark.parametrize("window", [1, 3])
def test_static_forward_equals_eager_cached_forward(window):
    torch.manual_seed(0)
    tr = LuminaMGPTTransformer(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128).eval()
    tr.fuse_projections()  # the eager forward uses the fused matrices, the static one the separate views
    rows, prefix, L = 2, 7, 40
    ids = torch.randint(0, 96, (rows, prefix))
    real = torch.ones(rows, L, dtype=torch.bool)
    real[1, :3] = False  # the second row hides its first slots (a left-padded or unconditional row)
    codes = torch.tensor([5, 9, 11, 40, 77])
    logits = {}
    with torch.inference_mode():
        for name in ("eager", "static"):
            tr.setup_cache(rows, L)
            tr(ids, cache_position=torch.arange(prefix), kv_mask=real, logits_to_keep=1)
            step = torch.randint(0, 96, (rows, window), generator=torch.Generator().manual_seed(1))
            slots = prefix + torch.arange(window)
            pos = slots[None].repeat(rows, 1)
            if name == "eager":
                logits[name] = tr(step, position_ids=pos, cache_position=slots, kv_mask=real, logits_token_ids=codes).logits
            else:
                logits[name] = static_decode_forward(tr, tr.kv_cache, step, pos, slots, real, tr.lm_head.weight[codes])
            tr.delete_cache()
    torch.testing.assert_close(logits["static"], logits["eager"], rtol=1e-5, atol=1e-5)


# Compiling costs about a minute per case and scheduler on a 2-core CPU with a cold inductor cache, so CI runs
# the first reference case under both schedulers; the others (the same path at other sizes) run with RUN_SLOW=1.
CASES = [pytest.param(c, id=f"{c['height']}x{c['width']}", marks=[pytest.mark.slow] if i else [])
         for i, c in enumerate(REFERENCE)]


@pytest.mark.parametrize("scheduler", ["ar", "jacobi"])
@pytest.mark.parametrize("case", CASES)
def test_compiled_decoding_reproduces_lumina_mgpt_tokens(t2i, case, scheduler):
    """Inductor-compiled steps give Lumina-mGPT's own greedy tokens; later calls compile nothing new."""
    pipe = t2i
    use(pipe, scheduler)
    pipe.enable_compiled_decoding(cpu_max_window=None)  # compile Jacobi's windows too (eager on a CPU by default)
    try:
        kw = dict(height=case["height"], width=case["width"], guidance_scale=case["guidance_scale"],
                  image_top_k=case["image_top_k"], output_type="tokens")
        out = pipe(case["prompt"], **kw)
        assert out.tokens[0, :3].tolist() == case["appended_ids"]
        assert out.tokens[0, 3:].tolist() == case["generated_ids"]
        decoder = pipe.compiled_decoder
        calls, cache = decoder.num_compiled_calls, decoder.cache
        assert calls > 0
        assert decoder._frozen is not None  # a CPU compiles the step with frozen weights (C++ GEMMs) by default
        frames_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        again = pipe(case["prompt"] + " again", **kw)  # another prompt length, the same cache and graphs
        assert decoder.cache is cache and decoder.num_compiled_calls > calls
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames_before
        pipe.disable_compiled_decoding()
        assert torch.equal(pipe(case["prompt"] + " again", **kw).tokens, again.tokens)
    finally:
        pipe.disable_compiled_decoding()


@pytest.mark.parametrize("scheduler,backend", [
    ("ar", "eager"), ("jacobi", "eager"),
    # inductor adds only the compiler to the static path, which the reference-token test above compiles
    # (96 s here with a cold inductor cache)
    pytest.param("ar", "inductor", marks=pytest.mark.slow)])
def test_compiled_edit_and_chat_equal_eager(pipe, scheduler, backend):
    """Editing and an image answer in chat decode through the same compiled steps, with eager's tokens
    (backend "eager": the static path without a compiler; "inductor": the frozen CPU step)."""
    use(pipe, scheduler)
    image = Image.fromarray((np.random.RandomState(0).rand(50, 90, 3) * 255).astype("uint8"))
    kw = dict(guidance_scale=3.0, image_top_k=1, output_type="tokens")

    def both():
        edit = pipe(image, "make it red", **kw).tokens
        with Recorder(pipe, boi_at=2):  # two text tokens, then an image, then the end of the turn
            answer = pipe.chat("Draw it.", images=[image], text_top_k=1, image_top_k=1, guidance_scale=2.0,
                               output_type="pt")
        return edit, answer.tokens

    eager = both()
    pipe.enable_compiled_decoding(backend=backend, cpu_max_window=None)
    try:
        compiled = both()
        assert pipe.compiled_decoder.num_compiled_calls > 0
        assert (pipe.compiled_decoder._frozen is not None) == (backend == "inductor")
    finally:
        pipe.disable_compiled_decoding()
    assert torch.equal(compiled[0], eager[0]) and torch.equal(compiled[1], eager[1])
    assert pipe.compiled_decoder is None


def test_decoder_needs_its_cache_and_valid_settings(pipe):
    decoder = CompiledDecoder(backend="eager")
    tr = pipe.transformer
    one = torch.zeros((1, 1), dtype=torch.long)
    with pytest.raises(RuntimeError, match="needs a cache"):
        decoder(tr, one, one, torch.zeros(1, dtype=torch.long), torch.ones(1, 8, dtype=torch.bool), one[0])
    with pytest.raises(ValueError, match="seq_multiple"):
        CompiledDecoder(seq_multiple=0)
    cache = decoder.attach_cache(tr, 2, 300, torch.device("cpu"))
    assert cache is decoder.cache and cache.max_seq_len == 512 and tr.kv_cache is None  # the transformer holds none
    lent = decoder.attach_cache(tr, 2, 290, torch.device("cpu"))  # lent out: another cache, not kept
    assert lent is not cache and decoder.cache is cache
    decoder.return_cache(lent)  # not the kept one: changes nothing
    decoder.return_cache(cache)
    assert decoder.attach_cache(tr, 2, 290, torch.device("cpu")) is cache  # free and it fits: reused
    decoder.return_cache(cache)
    other = decoder.attach_cache(tr, 4, 290, torch.device("cpu"))  # other rows: a new kept cache
    assert other is not cache and other.max_batch_size == 4 and decoder.cache is other
    decoder.release()
    assert decoder.cache is None


def test_text_to_image_pipeline_has_the_switch(tiny_pipe_dir):
    p = LuminaMGPTPipeline.from_pretrained(tiny_pipe_dir)
    assert p.compiled_decoder is None
    p.enable_compiled_decoding(mode="default", seq_multiple=64)
    assert isinstance(p.compiled_decoder, CompiledDecoder) and p.compiled_decoder.seq_multiple == 64
    cpu = torch.device("cpu")
    assert not p.compiled_decoder._freezes(cpu)  # a mode given: inductor's plain compile, weights not frozen
    p.enable_compiled_decoding()
    assert p.compiled_decoder._freezes(cpu) and not p.compiled_decoder._freezes(torch.device("cuda"))
    p.enable_compiled_decoding(freeze=False)
    assert not p.compiled_decoder._freezes(cpu)
    p.disable_compiled_decoding()
    assert p.compiled_decoder is None


def test_cpu_keeps_long_windows_eager(t2i):
    """By default a CPU compiles AR's 1-2 token windows only; Jacobi's windows run eagerly (faster there)."""
    use(t2i, "jacobi")
    t2i.enable_compiled_decoding(backend="eager")
    try:
        kw = dict(height=64, width=64, guidance_scale=3.0, image_top_k=1, output_type="tokens")
        out = t2i("a red circle", **kw)
        jacobi_calls = t2i.compiled_decoder.num_compiled_calls
        assert jacobi_calls < out.num_forward_passes - 1
        use(t2i, "ar")
        ar = t2i("a red circle", **kw)
        assert torch.equal(ar.tokens, out.tokens)  # greedy: both schedulers agree
        assert t2i.compiled_decoder.num_compiled_calls - jacobi_calls == ar.num_forward_passes - 1  # all but prefill
    finally:
        t2i.disable_compiled_decoding()


def test_a_streaming_chat_keeps_its_cache_while_other_calls_run(pipe):
    """A live session holds the decoder's cache; a call made meanwhile decodes in another cache."""
    use(pipe, "ar")
    image = Image.fromarray((np.random.RandomState(0).rand(50, 90, 3) * 255).astype("uint8"))
    kw = dict(images=[image], text_top_k=1, image_top_k=1, guidance_scale=2.0, output_type="pt", height=32, width=32)

    def answer(interleave: bool):
        with Recorder(pipe, boi_at=2) as rec:  # steers the chat's forwards: text, text, an image, the end
            stream = pipe.chat("Draw it.", stream=True, **kw)
            for _ in stream:
                if interleave:  # an edit between two pieces, unseen by the recorder
                    for h in rec.handles:
                        h.remove()
                    pipe(image, "make it red", guidance_scale=3.0, image_top_k=1, output_type="tokens")
                    rec.handles = [pipe.transformer.register_forward_pre_hook(rec._pre, with_kwargs=True),
                                   pipe.transformer.register_forward_hook(rec._post)]
        return stream.result.tokens

    pipe.enable_compiled_decoding(backend="eager")
    try:
        alone = answer(False)
        assert torch.equal(answer(True), alone)
        assert not pipe.compiled_decoder._lent  # every session gave the cache back
    finally:
        pipe.disable_compiled_decoding()


def test_caches_and_kept_rows_work_in_any_autograd_mode():
    from diffusers_lumina_mgpt.fast_linear import WeightRows
    from diffusers_lumina_mgpt.kv_cache import StaticKVCache

    with torch.inference_mode():  # made by an image call...
        cache = StaticKVCache(1, 1, 1, 4, 2, torch.float32, "cpu")
    with torch.no_grad():  # ...written by a chat turn's text forward
        cache.update(0, torch.tensor([0]), torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2), 1)
    rows, ids = WeightRows(), torch.tensor([2, 0])
    with torch.inference_mode():
        weight = torch.arange(12.0).view(4, 3)  # an inference tensor (a model moved under inference_mode)
        assert torch.equal(rows.get(weight, ids), weight[[2, 0]])
        other = weight + 1  # another model's weight: new rows even if it reused the address
        assert torch.equal(rows.get(other, ids), other[[2, 0]])
    with torch.no_grad():
        w = torch.zeros(4, 3)
        first = rows.get(w, ids)
        w[2] = 5.0  # changed in place: gathered again
        assert torch.equal(rows.get(w, ids), w[[2, 0]]) and not torch.equal(first, w[[2, 0]])


def test_closing_a_stream_returns_the_cache(pipe):
    use(pipe, "ar")
    pipe.enable_compiled_decoding(backend="eager")
    try:
        stream = pipe.chat("Describe it.", stream=True, text_top_k=1, max_new_tokens=8)
        next(iter(stream))
        assert pipe.compiled_decoder._lent  # the turn holds the kept cache while it may go on
        stream.close()
        assert not pipe.compiled_decoder._lent and len(stream.result.tokens) >= 1
    finally:
        pipe.disable_compiled_decoding()


def test_decode_attention_under_a_frozen_compile_equals_sdpa(monkeypatch):
    """The frozen CPU step's attention (fused reductions instead of SDPA's kernel) gives SDPA's numbers, GQA
    and per-row masks included."""
    from torch._inductor import config as inductor_config

    from diffusers_lumina_mgpt.kv_cache import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 4, 3, 8, generator=g), torch.randn(2, 2, 10, 8, generator=g), torch.randn(2, 2, 10, 8, generator=g)
    mask = torch.rand(2, 1, 3, 10, generator=g) > 0.4
    mask[..., 0] = True  # every query sees a slot
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    def no_sdpa(*args, **kwargs):
        raise AssertionError("a frozen compile must not call SDPA")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", no_sdpa)
    torch._dynamo.reset()
    with inductor_config.patch(freezing=True):
        got = torch.compile(attention, backend="eager", fullgraph=True)(q, k, v, mask, 0.0, False, True)
    torch._dynamo.reset()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_freezing_is_for_a_cpu(pipe):
    decoder = CompiledDecoder(freeze=True)
    assert decoder._freezes(torch.device("cpu"))
    with pytest.raises(ValueError, match="freeze=True compiles C\\+\\+ GEMMs for a CPU"):
        decoder._freezes(torch.device("cuda"))
