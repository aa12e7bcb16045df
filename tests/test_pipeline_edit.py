"""LuminaMGPTEditPipeline on the tiny Chameleon fixture: task prompts, histories, labels, CFG, denoising, errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_lumina_mgpt.conversation import IGNORE_INDEX
from diffusers_lumina_mgpt.image_tokens import decode_image_block, encode_image_block
from diffusers_lumina_mgpt.pipelines import (
    NO_EDIT_INSTRUCTION, OMNI_TASKS, ChatHistory, LuminaMGPTEditPipeline, LuminaMGPTPipeline, psnr,
)
from diffusers_lumina_mgpt.pipelines.tasks import task_message
from diffusers_lumina_mgpt.schedulers import LuminaMGPTARScheduler, LuminaMGPTJacobiScheduler
from diffusers_lumina_mgpt.shapes.language import NOEDIT_INSTRUCTIONS

from conftest import naive_greedy_cfg
from diffusers_lumina_mgpt.vq import vq_encode_codes

# Chameleon / Lumina-mGPT ids (facts file): BOS 0, BOI 8197, EOI 8196, EOT 8710, grid n = 8804 + n
BOS, BOI, EOI, EOT, PLACEHOLDER = 0, 8197, 8196, 8710, "<|image|>"


def grid(n: int) -> int:
    return 8804 + n


@pytest.fixture(scope="module")
def wide():  # 90x50 -> bucket 64x32 (w x h) at default_size 64
    return Image.fromarray((np.random.RandomState(0).rand(50, 90, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def tall():  # 40x100 -> bucket 32x96
    return Image.fromarray((np.random.RandomState(1).rand(100, 40, 3) * 255).astype("uint8"))


def enc(pipe, text: str) -> list[int]:
    return pipe.tokenizer(text, add_special_tokens=False)["input_ids"]


def block_of(pipe, image) -> list[int]:
    """Independent path: bucket preprocess -> VQ encode -> block."""
    pixels = pipe.image_processor.preprocess(image)
    return encode_image_block(vq_encode_codes(pipe.vqvae, pixels)[0], pipe.vocab).tolist()


TASK_CASES = [
    ("edit", "make the circle red", "make the circle red "),
    ("segmentation", None, "Segmentic segmentation. "),
    ("depth", None, "Depth estimation. "),
    ("surface_normal", None, "Surface normal estimation. "),
    ("pose", None, "Human pose estimation. "),
    ("detection", "cat", "Detect: cat "),
    ("condition", "a house",
     "Generate an image according to the provided image, and according to the following caption:\na house "),
]


def test_every_task_is_covered():
    assert {c[0] for c in TASK_CASES} == set(OMNI_TASKS)


@pytest.mark.parametrize("task,prompt,text", TASK_CASES, ids=[c[0] for c in TASK_CASES])
def test_task_prompt_ids_are_hand_built_sequence(pipe, wide, task, prompt, text):
    conv = pipe.prepare_conversation(wide, prompt, task)
    assert conv.messages[-1].value == text + PLACEHOLDER
    ids = pipe.encode_edit_prompt(conv, 32, 64).tolist()
    expected = [BOS, *enc(pipe, text), *block_of(pipe, wide), EOT, BOI, grid(1), grid(2)]
    assert ids == expected
    # the input block: bucket 64x32 -> 2x4 latents, header H=1 W=2 grids
    assert block_of(pipe, wide)[:3] == [BOI, grid(1), grid(2)] and len(block_of(pipe, wide)) == 2 * 5 + 4


def test_task_names_aliases_and_errors():
    assert task_message("Depth Estimation") == task_message("depth") == "Depth estimation. <|image|>"
    assert task_message("condition-to-image", "x").startswith("Generate an image according")
    assert task_message("edit", "swap <|image|> and <|image|>", 2) == "swap <|image|> and <|image|>"
    with pytest.raises(ValueError, match="known tasks: edit, segmentation, depth, surface_normal, pose, detection"):
        task_message("colorize")
    with pytest.raises(ValueError, match="needs a text prompt"):
        task_message("detection")
    with pytest.raises(ValueError, match="takes no prompt"):
        task_message("depth", "of the cat")
    with pytest.raises(ValueError, match="placeholder"):
        task_message("edit", "swap <|image|> and <|image|>", 1)


def test_input_kinds_give_the_same_block(pipe, wide, tmp_path):
    path = tmp_path / "x.png"
    wide.save(path)
    arr = np.array(wide)
    ref = pipe.encode_image(wide)
    assert ref.tolist() == block_of(pipe, wide)
    for other in (str(path), path, arr, torch.from_numpy(arr).permute(2, 0, 1), ref):
        assert torch.equal(pipe.encode_image(other), ref)


def naive_greedy_edit(pipe, cond: torch.Tensor, h_lat: int, w_lat: int, s: float) -> list[int]:
    """Two explicit full forwards per token, no cache: cond context vs the image alone."""
    return naive_greedy_cfg(pipe, cond, cond[-3:], h_lat, w_lat, s)


@pytest.mark.parametrize("scheduler", ["ar", "jacobi"])
def test_greedy_edit_equals_naive_two_pass_cfg_and_history_is_what_training_sees(pipe, wide, scheduler):
    cls = LuminaMGPTJacobiScheduler if scheduler == "jacobi" else LuminaMGPTARScheduler
    pipe.scheduler = cls.from_config(pipe.scheduler.config, num_drafts=4)
    out = pipe(wide, "make it red", guidance_scale=3.0, image_top_k=1, output_type="tokens")
    conv = pipe.prepare_conversation(wide, "make it red")
    cond = pipe.encode_edit_prompt(conv, 32, 64)
    assert out.tokens[0, :3].tolist() == [BOI, grid(1), grid(2)]
    assert out.tokens[0, 3:].tolist() == naive_greedy_edit(pipe, cond, 2, 4, 3.0)

    # the returned history tokenizes to exactly the generated sequence + <sep>; labels supervise the answer only
    hist = out.histories[0]
    tok = pipe.conversation.tokenize(hist.messages, hist.images)
    assert tok.input_ids.tolist() == cond[:-3].tolist() + out.tokens[0].tolist() + [EOT]
    n_prompt = len(cond) - 3
    expected_labels = [IGNORE_INDEX] * n_prompt + out.tokens[0].tolist() + [EOT]
    assert tok.labels.tolist() == expected_labels
    assert hist.tokenize(pipe).labels.tolist() == expected_labels
    pipe.scheduler = LuminaMGPTARScheduler.from_config(pipe.scheduler.config)


def test_multi_turn_history_ids_labels_and_default_size(pipe, wide, tall):
    g = torch.Generator().manual_seed(0)
    first = pipe(wide, "make it red", generator=g, output_type="tokens")
    out1 = first.tokens[0].tolist()
    # turn 2 without a new image: the answer keeps the previous output's size
    second = pipe(prompt="now blue", history=first.histories[0], generator=g, output_type="tokens")
    assert second.tokens.shape[1] == len(out1) and second.tokens[0, :3].tolist() == [BOI, grid(1), grid(2)]
    conv2 = pipe.prepare_conversation(None, "now blue", history=first.histories[0])
    ids2 = pipe.encode_edit_prompt(conv2, 32, 64).tolist()
    in_block = block_of(pipe, wide)
    expected = [BOS, *enc(pipe, "make it red "), *in_block, EOT, *out1, EOT, *enc(pipe, "now blue"), EOT,
                BOI, grid(1), grid(2)]
    assert ids2 == expected
    hist = second.histories[0]
    assert [m.role for m in hist.messages] == ["human", "gpt", "human", "gpt"]
    assert [m.value for m in hist.messages] == ["make it red <|image|>", "<|image|>", "now blue", "<|image|>"]
    tok = pipe.conversation.tokenize(hist.messages, hist.images)
    out2 = second.tokens[0].tolist()
    assert tok.input_ids.tolist() == expected[:-3] + out2 + [EOT]
    n1 = 1 + len(enc(pipe, "make it red ")) + len(in_block) + 1
    n2 = len(enc(pipe, "now blue")) + 1
    assert tok.labels.tolist() == (
        [IGNORE_INDEX] * n1 + out1 + [EOT] + [IGNORE_INDEX] * n2 + out2 + [EOT]
    )
    # turn 3 brings a new (tall) image: the answer takes its bucket
    third = pipe(tall, "combine", history=hist, output_type="pt")
    assert third.images.shape == (1, 3, 96, 32)
    assert third.histories[0].messages[-2].value == "combine <|image|>" and len(third.histories[0].images) == 5


def test_output_sizes_types_and_num_images(pipe, wide, tall):
    assert pipe(wide, "x").images[0].size == (64, 32)
    assert pipe(tall, task="depth").images[0].size == (32, 96)
    out = pipe(wide, "x", height=64, width=64, output_type="np", num_images_per_prompt=2,
               generator=[torch.Generator().manual_seed(i) for i in range(2)])
    assert out.images.shape == (2, 64, 64, 3) and len(out.histories) == 2
    for h, block in zip(out.histories, out.tokens):
        assert torch.equal(h.images[-1], block)
        assert decode_image_block(block, pipe.vocab).shape == (4, 4)
    images, tokens, n, histories = pipe(wide, "x", return_dict=False, output_type="tokens")
    assert torch.equal(images, tokens) and n > 0 and len(histories) == 1


def test_guidance_rows_are_the_image_alone(pipe, wide):
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["input_ids"].clone() if "input_ids" in kw else a[0].clone()), with_kwargs=True
    )
    try:
        pipe(wide, "x", guidance_scale=2.0, output_type="tokens")
        prefill = seen[0]
        assert prefill.shape[0] == 2
        assert prefill[1, -3:].tolist() == [BOI, grid(1), grid(2)] and (prefill[1, :-3] == pipe.vocab.pad_id).all()
        seen.clear()
        pipe(wide, "x", guidance_scale=1.0, output_type="tokens")
        assert {s.shape[0] for s in seen} == {1}
    finally:
        hook.remove()


def test_denoise_and_reconstruct(pipe, wide):
    assert NO_EDIT_INSTRUCTION in NOEDIT_INSTRUCTIONS  # what the ShapesWorld noedit task trains with
    out = pipe.denoise(wide, image_top_k=1, output_type="tokens")
    conv = pipe.prepare_conversation(wide, NO_EDIT_INSTRUCTION)
    assert out.histories[0].messages[0].value == "Do not change anything in this image. <|image|>"
    assert out.tokens[0].tolist() == [BOI, grid(1), grid(2)] + naive_greedy_edit(
        pipe, pipe.encode_edit_prompt(conv, 32, 64), 2, 4, 1.0
    )
    recon = pipe.reconstruct(wide)[0]
    assert recon.size == (64, 32)
    clean = pipe.image_processor.postprocess(pipe.image_processor.preprocess(wide))[0]
    assert np.isfinite(psnr(recon, clean)) and psnr(clean, clean) == float("inf")
    with pytest.raises(ValueError, match="shape"):
        psnr(recon, wide)
    with pytest.raises(ValueError, match="instruction"):
        pipe.denoise(wide, prompt="x")


def test_from_text_to_image_pipeline(tiny_pipe_dir, wide):
    t2i = LuminaMGPTPipeline.from_pretrained(tiny_pipe_dir)
    edit = LuminaMGPTEditPipeline.from_pipe(t2i)
    edit.set_progress_bar_config(disable=True)
    assert edit.transformer is t2i.transformer
    assert edit(wide, "x", output_type="tokens").tokens.shape == (1, 14)


def test_default_edit_image_top_k_comes_from_the_folder(tiny_pipe_dir, tmp_path, wide):
    """A folder's `default_edit_image_top_k` is the image top-k of edit calls that pass none (the same tokens
    as passing it); text-to-image keeps the scheduler's; `from_pipe` and `save_pretrained` keep it; bad values
    are refused with the key's name."""
    import json
    import shutil

    plain = LuminaMGPTEditPipeline.from_pretrained(tiny_pipe_dir)
    assert plain.config.default_edit_image_top_k is None
    assert plain.edit_image_top_k == plain.scheduler.config.image_top_k
    folder = tmp_path / "pipe"
    shutil.copytree(tiny_pipe_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "default_edit_image_top_k": 1}))
    edit = LuminaMGPTEditPipeline.from_pretrained(folder)
    edit.set_progress_bar_config(disable=True)
    assert edit.edit_image_top_k == 1
    g = lambda: torch.Generator().manual_seed(3)
    kw = dict(output_type="tokens", guidance_scale=2.0)
    implicit = edit(wide, "x", generator=g(), **kw).tokens
    assert torch.equal(implicit, edit(wide, "x", image_top_k=1, generator=g(), **kw).tokens)
    assert not torch.equal(implicit, edit(wide, "x", image_top_k=50, generator=g(), **kw).tokens)
    assert torch.equal(edit.denoise(wide, generator=g(), output_type="tokens").tokens,
                       edit.denoise(wide, image_top_k=1, generator=g(), output_type="tokens").tokens)
    t2i = LuminaMGPTPipeline.from_pipe(edit)
    assert t2i.config.default_edit_image_top_k == 1
    t2i.set_progress_bar_config(disable=True)
    kw = dict(height=32, width=32, output_type="tokens")
    assert torch.equal(t2i("a cat", generator=g(), **kw).tokens,
                       t2i("a cat", image_top_k=t2i.scheduler.config.image_top_k, generator=g(), **kw).tokens)
    t2i.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "model_index.json").read_text())["default_edit_image_top_k"] == 1
    for bad in (0, 2.5, True, "3"):
        (folder / "model_index.json").write_text(json.dumps({**index, "default_edit_image_top_k": bad}))
        with pytest.raises(ValueError, match="default_edit_image_top_k must be a whole number"):
            LuminaMGPTEditPipeline.from_pretrained(folder)


def test_bad_images(pipe, tmp_path, wide):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(ValueError, match="cannot read"):
        pipe(str(corrupt), "x")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pipe(str(tmp_path / "missing.png"), "x")
    with pytest.raises(ValueError, match="zero size"):
        pipe(np.zeros((0, 10, 3), dtype=np.uint8), "x")
    with pytest.raises(ValueError, match="zero size"):
        pipe(Image.new("RGB", (0, 0)), "x")
    with pytest.raises(ValueError, match="mode 'I;16'"):
        pipe(Image.new("I;16", (40, 40)), "x")
    with pytest.raises(ValueError, match="C in 1, 3, 4"):
        pipe(np.zeros((8, 8, 2), dtype=np.uint8), "x")
    with pytest.raises(ValueError, match="batch"):
        pipe(torch.zeros(2, 3, 8, 8), "x")
    with pytest.raises(ValueError, match="image 1: cannot read"):
        pipe([wide, str(corrupt)], "x <|image|> <|image|>")
    with pytest.raises(ValueError, match="nothing to edit"):
        pipe(None, "x")


def test_bad_histories_and_arguments(pipe, wide):
    good = pipe(wide, "x", output_type="tokens").histories[0]
    unanswered = ChatHistory(good.messages[:1], good.images[:1])
    with pytest.raises(ValueError, match="ends with a 'human' message"):
        pipe(prompt="y", history=unanswered)
    with pytest.raises(ValueError, match="1 image"):
        pipe(prompt="y", history=ChatHistory(good.messages, good.images[:1]))
    broken = good.images[1].clone()
    broken[5] = EOT
    with pytest.raises(ValueError, match="history image 1 is not a valid image token block"):
        pipe(prompt="y", history=ChatHistory(good.messages, [good.images[0], broken]))
    with pytest.raises(ValueError, match="alternate"):
        pipe(prompt="y", history=ChatHistory([good.messages[1], good.messages[0]], good.images))
    with pytest.raises(ValueError, match="history must be"):
        pipe(prompt="y", history="make it red")
    with pytest.raises(ValueError, match="cannot carry images"):
        pipe(wide, "y", history=[("human", "a <|image|>"), ("gpt", "b")])
    with pytest.raises(ValueError, match="both height and width"):
        pipe(wide, "x", height=32)
    with pytest.raises(ValueError, match="(?i)nearest valid sizes"):
        pipe(wide, "x", height=48, width=32)
    with pytest.raises(ValueError, match="output_type"):
        pipe(wide, "x", output_type="latents")
    # a Lumina-mGPT record (images as PIL) is a history too
    record = {"conversations": [{"from": "human", "value": "make it red <|image|>"}, {"from": "gpt", "value": "<|image|>"}],
              "image": [wide, good.images[1]]}
    out = pipe(prompt="y", history=record, output_type="tokens")
    assert out.histories[0].images[0].tolist() == good.images[0].tolist()
