"""Understanding and chat on the tiny Chameleon fixture: prompt ids, greedy text vs naive forwards,
streaming, answers with images (model-chosen and fixed sizes, CFG with the image alone), errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_lumina_mgpt.image_tokens import decode_image_block
from diffusers_lumina_mgpt.pipelines import ChatHistory, LuminaMGPTEditPipeline, LuminaMGPTPipeline, chat
from diffusers_lumina_mgpt.pipelines.chat import ChatStream

from test_pipeline_edit import BOI, BOS, EOT, block_of, enc, naive_greedy_edit


@pytest.fixture(scope="module")
def img():
    return Image.fromarray((np.random.RandomState(2).rand(60, 60, 3) * 255).astype("uint8"))


class Recorder:
    """Records the input ids of every transformer forward; optionally steers the logits of BOI / EOT."""

    def __init__(self, pipe, boi_at: int | None = None, always_boi: bool = False):
        self.inputs: list[torch.Tensor] = []
        self.boi_at, self.v, self.always_boi = boi_at, pipe.vocab, always_boi
        self.handles = [
            pipe.transformer.register_forward_pre_hook(self._pre, with_kwargs=True),
            pipe.transformer.register_forward_hook(self._post),
        ]

    def _pre(self, module, args, kwargs):
        self.inputs.append((kwargs["input_ids"] if "input_ids" in kwargs else args[0]).clone())

    def _post(self, module, args, output):
        if output.logits.shape[-1] != module.config.vocab_size:
            return output  # image-body forwards return the code logits only (logits_token_ids)
        if self.always_boi:
            output.logits[..., self.v.boi_id] += 1e4
        if self.boi_at is None:
            return output
        call = len(self.inputs) - 1
        # BOI and EOT are never image codes, so this cannot change an image body
        if call == self.boi_at:
            output.logits[..., self.v.boi_id] += 1e4
        elif call > self.boi_at:
            output.logits[..., self.v.eot_id] += 1e4
        return output

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def text_mask(pipe, vocab_size: int, allow_boi: bool) -> torch.Tensor:
    v = pipe.vocab
    banned = torch.zeros(vocab_size, dtype=torch.bool)
    banned[len(pipe.tokenizer):] = True
    for ids in (v.code_token_ids, v.grid_token_ids, [v.eoi_id, v.newline_id, pipe.conversation.placeholder_id]):
        banned[list(ids)] = True
    banned[v.boi_id] |= not allow_boi
    return banned


def naive_greedy_text(pipe, ctx: list[int], n: int) -> list[int]:
    """Full uncached forwards, masked argmax, no images."""
    out = []
    for _ in range(n):
        logits = pipe.transformer(torch.tensor([ctx + out])).logits[0, -1]
        tok = int(torch.argmax(logits.masked_fill(text_mask(pipe, logits.shape[-1], False), float("-inf"))))
        if tok == EOT:
            break
        out.append(tok)
    return out


def test_understanding_prompt_ids_and_greedy_text_equal_naive_forwards(pipe, img):
    with Recorder(pipe) as rec:
        out = pipe.understand(img, max_new_tokens=12, text_top_k=1)
    ctx = [BOS, *enc(pipe, "Describe the image in detail. "), *block_of(pipe, img), EOT]
    assert rec.inputs[0][0].tolist() == ctx
    expected = naive_greedy_text(pipe, ctx, 12)
    assert out.tokens.tolist() == expected and out.images == []
    assert out.text == pipe.tokenizer.decode(expected, skip_special_tokens=False)
    assert out.finish_reason == ("max_new_tokens" if len(expected) == 12 else "end_of_turn")
    assert out.num_forward_passes == len(expected)
    assert out.history.messages[-1].role == "gpt" and out.history.messages[-1].value == out.text


def test_streaming_yields_the_same_text_as_non_streaming(pipe, img):
    kw = dict(images=[img], max_new_tokens=25, text_top_k=50, temperature=1.3)
    full = pipe.chat("What is this?", generator=torch.Generator().manual_seed(5), **kw)
    stream = pipe.chat("What is this?", generator=torch.Generator().manual_seed(5), stream=True, **kw)
    assert isinstance(stream, ChatStream)
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == full.text
    assert torch.equal(stream.result.tokens, full.tokens)
    other = pipe.chat("What is this?", generator=torch.Generator().manual_seed(6), **kw)
    assert not torch.equal(other.tokens, full.tokens)  # the seed matters when sampling
    greedy = [pipe.chat("What is this?", generator=torch.Generator().manual_seed(s), images=[img],
                        max_new_tokens=8, text_top_k=1).tokens for s in (1, 2)]
    assert torch.equal(*greedy)  # text_top_k=1 is greedy whatever the seed


def test_message_forms_build_hand_built_ids(pipe, img):
    block = block_of(pipe, img)
    with Recorder(pipe) as rec:
        pipe.chat("hello", images=img, max_new_tokens=1)  # no placeholder: images go in front (Lumina's rule)
        pipe.chat([{"from": "human", "value": "a <|image|>"}, {"from": "gpt", "value": "b"},
                   {"from": "human", "value": "c"}], images=[img], max_new_tokens=1)
    assert rec.inputs[0][0].tolist() == [BOS, *block, *enc(pipe, " hello"), EOT]
    assert rec.inputs[1][0].tolist() == [BOS, *enc(pipe, "a "), *block, EOT, *enc(pipe, "b"), EOT, *enc(pipe, "c"), EOT]


@pytest.mark.parametrize("fixed", [False, True])
def test_answer_with_text_then_an_image(pipe, img, fixed):
    size = dict(height=64, width=32) if fixed else {}
    with Recorder(pipe, boi_at=2) as rec:  # two text tokens, then the model "chooses" BOI, then ends the turn
        out = pipe.chat("Draw it.", images=[img], text_top_k=1, image_top_k=1, guidance_scale=2.0,
                        output_type="pt", **size)
    assert len(out.image_tokens) == 1 and out.finish_reason == "end_of_turn"
    block = out.image_tokens[0]
    h_grid, w_grid = pipe.vocab.grid_value(int(block[1])), pipe.vocab.grid_value(int(block[2]))
    if fixed:
        assert (h_grid, w_grid) == (2, 1)
    assert out.images[0].shape == (3, 32 * h_grid, 32 * w_grid)
    codes = decode_image_block(block, pipe.vocab)  # a valid block
    assert codes.shape == (2 * h_grid, 2 * w_grid)
    text_ids = out.tokens[:2].tolist()
    assert out.text == pipe.tokenizer.decode(text_ids, skip_special_tokens=False) + "<|image|>"
    assert out.tokens[2:].tolist() == block.tolist()
    # the image body is text-to-image decoding with CFG whose unconditional context is the image alone
    ctx = rec.inputs[0][0].tolist() + text_ids
    assert block[3:].tolist() == naive_greedy_edit(pipe, torch.tensor(ctx + block[:3].tolist()), *codes.shape, 2.0)
    # history: the answer is a gpt turn holding the image block
    assert out.history.messages[-1].value == out.text and torch.equal(out.history.images[-1], block)
    tok = out.history.tokenize(pipe)
    assert tok.input_ids[-len(block) - 1:].tolist() == block.tolist() + [EOT]
    assert tok.labels[-len(block) - 1:].tolist() == block.tolist() + [EOT]
    # and the conversation continues from it
    nxt = pipe.chat("Thanks.", history=out.history, max_new_tokens=2, text_top_k=1)
    assert [m.role for m in nxt.history.messages] == ["human", "gpt", "human", "gpt"]
    assert len(nxt.history.images) == 2


def test_images_are_off_for_understanding_and_when_they_do_not_fit(pipe, img, tiny_pipe_dir):
    with Recorder(pipe, always_boi=True):
        out = pipe.understand(img, max_new_tokens=3, text_top_k=1)
    assert out.image_tokens == [] and BOI not in out.tokens.tolist()
    small = LuminaMGPTEditPipeline.from_pretrained(tiny_pipe_dir)
    n_ctx = 1 + len(enc(small, "hi")) + 1
    small.transformer.register_to_config(max_position_embeddings=n_ctx + 8)  # smallest block needs 10
    with Recorder(small, always_boi=True):
        out = small.chat("hi", text_top_k=1, max_new_tokens=100)
    assert out.image_tokens == [] and out.finish_reason == "max_positions" and len(out.tokens) == 8


def test_generic_helper_works_with_the_text_to_image_pipeline(tiny_pipe_dir, pipe):
    t2i = LuminaMGPTPipeline.from_pretrained(tiny_pipe_dir)
    a = chat(t2i, "hello", max_new_tokens=6, text_top_k=1)
    b = pipe.chat("hello", max_new_tokens=6, text_top_k=1)
    assert torch.equal(a.tokens, b.tokens) and a.text == b.text


def test_bad_inputs_and_histories(pipe, img):
    with pytest.raises(ValueError, match="text_top_k"):
        pipe.chat("x", text_top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        pipe.chat("x", temperature=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        pipe.chat("x", max_new_tokens=0)
    with pytest.raises(ValueError, match="both height and width"):
        pipe.chat("x", height=32)
    with pytest.raises(ValueError, match="output_type"):
        pipe.chat("x", output_type="latent")
    with pytest.raises(ValueError, match="message"):
        pipe.chat(3)
    with pytest.raises(ValueError, match="1 <.image.> placeholder"):
        pipe.chat("a <|image|>", images=[img, img])
    with pytest.raises(ValueError, match="not both"):
        pipe.chat([("human", "a")], history=ChatHistory())
    with pytest.raises(ValueError, match="end with a human message"):
        pipe.chat([("human", "a"), ("gpt", "b")])
    with pytest.raises(ValueError, match="ends with a 'human' message"):
        pipe.chat("again", history=ChatHistory([("human", "a")]))
    with pytest.raises(ValueError, match="zero size"):
        pipe.understand(np.zeros((4, 0, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="mode 'F'"):
        pipe.understand(Image.new("F", (8, 8)))
    with pytest.raises(ValueError, match="integer token ids"):
        pipe.understand(torch.zeros(14))
    turn = pipe.chat("x", max_new_tokens=1, stream=True)
    list(turn)
    with pytest.raises(ValueError, match="only once"):
        list(iter(turn._decoder))


def test_text_after_an_image_continues_the_same_cache(pipe, img):
    """One cache serves the whole turn: after an image the conversation is not read again, and the text
    that follows equals greedy decoding with full uncached forwards over everything before it."""
    v = pipe.vocab
    calls = []

    def steer(module, args, output):  # BOI at the third text forward; afterwards no BOI and no EOT
        if output.logits.shape[-1] != module.config.vocab_size:
            return output  # image-body forwards
        calls.append(output.logits.shape)
        if len(calls) == 3:
            output.logits[..., v.boi_id] += 1e4
        elif len(calls) > 3:
            output.logits[..., [v.boi_id, v.eot_id]] -= 1e4
        return output

    with Recorder(pipe) as rec:
        handle = pipe.transformer.register_forward_hook(steer)
        try:
            out = pipe.chat("Draw it.", images=[img], text_top_k=1, image_top_k=1, guidance_scale=2.0,
                            max_new_tokens=5, height=32, width=32)
        finally:
            handle.remove()
    assert len(out.image_tokens) == 1 and out.finish_reason == "max_new_tokens"
    block = out.image_tokens[0].tolist()
    before, after = out.tokens[:2].tolist(), out.tokens[2 + len(block):].tolist()
    assert len(after) == 3 and out.tokens[2:2 + len(block)].tolist() == block
    prompt = rec.inputs[0][0].tolist()
    # every forward after the first feeds new tokens only: nothing of the conversation is read twice
    fed = [x.shape[1] for x in rec.inputs[1:]]
    assert max(fed) <= 3 and sum(fed) < len(prompt)
    # the text after the image is what full forwards over the whole context give
    ctx, expected = prompt + before + block, []
    for _ in range(3):
        logits = pipe.transformer(torch.tensor([ctx + expected])).logits[0, -1]
        logits[[v.boi_id, v.eot_id]] -= 1e4
        expected.append(int(torch.argmax(logits.masked_fill(text_mask(pipe, logits.shape[-1], False), float("-inf")))))
    assert after == expected
