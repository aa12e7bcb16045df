"""Image understanding and multi-turn chat with a Lumina-mGPT pipeline, with text streaming.

A chat turn continues a conversation (`BOS, q1 <sep> a1 <sep> ... q_n <sep>`, see `conversation.py`)
token by token until the end-of-turn token. Outside images, text tokens are sampled with
`text_top_k` / `temperature` / `top_p` (Lumina-mGPT's `InterleavedTopKLogitsWarper`). When the
model emits BOI it answers with an image: it picks the H and W grid tokens itself (restricted to
grid tokens whose block fits the context; the caller can fix the size with `height` / `width`),
then the image body is decoded exactly like text-to-image (`decode_image_blocks`: structure rules,
image_top_k, classifier-free guidance whose unconditional context is the image alone,
`[BOI, H, W, image tokens...]`, as Lumina-mGPT's `LLMImageStartTriggeredUnbatchedClassifierFreeGuidanceLogitsProcessor`
does). After EOI the text continues until `<sep>`.

Differences from Lumina-mGPT's `FlexARInferenceSolver.generate`, on purpose:
* image codes, grid tokens, EOI, NEWLINE and `<|image|>` are never sampled as text (Lumina leaves
  them possible outside images, where they would be meaningless);
* `max_new_tokens` counts text tokens; an image, once started, is always completed;
* images in the history stay token blocks (Lumina's freeform demo re-encodes generated pixels).

Public API: `chat(pipe, ...)` works with any pipeline holding tokenizer / transformer / vqvae /
scheduler (both `LuminaMGPTPipeline` and `LuminaMGPTEditPipeline`); `LuminaMGPTChatMixin` gives
pipelines `pipe.chat(...)`, `pipe.understand(...)` and `pipe.encode_image(...)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

from ..conversation import Message, _as_messages
from ..image_processor import load_image
from ..image_tokens import decode_image_block, encode_image_block, image_block_length
from ..schedulers.sampling import RowRandom, logits_to_probs, sample_with_uniform
from ..vocab import IMAGE_PLACEHOLDER
from ..vq import vq_encode_codes
from .image_generation import decode_image_blocks

DESCRIBE_PROMPT = "Describe the image in detail."  # Lumina-mGPT's understanding example
CHAT_OUTPUT_TYPES = ("pil", "np", "pt", "tokens")
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


# ---------------------------------------------------------------------------------------- images
def _check_image_input(image: Any, index: int) -> None:
    """Reject inputs `load_image` would convert silently into garbage."""
    if isinstance(image, PIL.Image.Image) and image.mode in _HIGH_DEPTH_MODES:
        raise ValueError(
            f"image {index} has PIL mode {image.mode!r} (16-bit / 32-bit single channel), which cannot be "
            "converted to 8-bit RGB without a value range; scale it to 0..255 and convert('RGB') first"
        )
    if isinstance(image, torch.Tensor) and image.dim() == 4:
        raise ValueError(
            f"image {index} is a batch of shape {tuple(image.shape)}; pass one (C, H, W) tensor per image in a list"
        )
    if isinstance(image, np.ndarray) and image.ndim == 4:
        raise ValueError(f"image {index} is a batch of shape {image.shape}; pass one (H, W, C) array per image")


def encode_image(pipe, image: Any, height: int | None = None, width: int | None = None) -> torch.Tensor:
    """One image -> its token block `BOI, H, W, (codes, NEWLINE) x h, EOI` (1-D LongTensor).

    The image goes to the bucket of the pipeline's `default_size` that keeps most of it (or to
    `height` x `width`), is centre-cropped, VQ-encoded and written as a block. A 1-D LongTensor that
    already is a block is validated and returned as is. Paths, PIL, numpy (H, W, C) and torch
    (C, H, W) inputs are accepted (floats in [0, 1]).
    """
    if isinstance(image, torch.Tensor) and image.dim() == 1:
        if image.dtype.is_floating_point:
            raise ValueError("a 1-D tensor is read as an image token block and must hold integer token ids")
        decode_image_block(image, pipe.vocab, latents_per_grid=pipe.image_processor.latents_per_grid)
        return image.long().cpu()
    _check_image_input(image, 0)
    if isinstance(image, (str, Path)):
        image = load_image(image)
    pixels = pipe.image_processor.preprocess(image, height=height, width=width)  # (1, 3, H, W) in [-1, 1]
    codes = vq_encode_codes(pipe.vqvae, pixels.to(pipe._execution_device))  # (1, h, w)
    return encode_image_block(codes[0].cpu(), pipe.vocab, latents_per_grid=pipe.image_processor.latents_per_grid)


def encode_images(pipe, images: Any) -> list[torch.Tensor]:
    """A single image or a list of images -> their token blocks (each at its own bucket)."""
    if images is None:
        return []
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    blocks = []
    for i, image in enumerate(items):
        _check_image_input(image, i)
        try:
            blocks.append(encode_image(pipe, image))
        except (ValueError, FileNotFoundError) as err:
            if len(items) == 1:
                raise
            raise type(err)(f"image {i}: {err}") from err
    return blocks


def block_size(pipe, block: torch.Tensor) -> tuple[int, int]:
    """(height, width) in pixels of an image token block."""
    lpg = pipe.image_processor.latents_per_grid
    h_lat, w_lat = decode_image_block(block, pipe.vocab, latents_per_grid=lpg).shape
    f = pipe.image_processor.config.downsample_factor
    return h_lat * f, w_lat * f


def decode_blocks(pipe, blocks: Sequence[torch.Tensor], output_type: str) -> list:
    """Image token blocks -> a list of images ("pil", "np" (H, W, 3), "pt" (3, H, W) or the blocks)."""
    if output_type not in CHAT_OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {CHAT_OUTPUT_TYPES}, got {output_type!r}")
    if output_type == "tokens":
        return list(blocks)
    # one block at a time: the images of a conversation may have different sizes
    return [pipe.decode_image_tokens([block], output_type)[0] for block in blocks]


# --------------------------------------------------------------------------------------- history
@dataclass
class ChatHistory:
    """A conversation so far: messages with `<|image|>` placeholders and their image token blocks.

    Images are kept as token blocks (what the model saw or wrote), so a history replays exactly.
    `tokenize(pipe)` gives the ids and training labels (`ConversationTokenizer.tokenize`).
    """

    messages: list[Message] = field(default_factory=list)
    images: list[torch.Tensor] = field(default_factory=list)  # 1-D token blocks, in placeholder order

    def copy(self) -> "ChatHistory":
        return ChatHistory(list(self.messages), [b.clone() for b in self.images])

    def append(self, role: str, text: str, blocks: Sequence[torch.Tensor] = ()) -> "ChatHistory":
        """A new history with one more message (the original is unchanged)."""
        new = self.copy()
        new.messages.append(Message(role, text))
        new.images.extend(torch.as_tensor(b, dtype=torch.long).flatten() for b in blocks)
        return new

    @property
    def last_image(self) -> torch.Tensor | None:
        return self.images[-1] if self.images else None

    def validate(self, pipe, must_end_with: str | None = None) -> "ChatHistory":
        """Check roles, placeholder counts and every image block; returns a normalised copy."""
        msgs = _as_messages(self.messages)
        n_placeholders = sum(m.value.count(IMAGE_PLACEHOLDER) for m in msgs)
        if n_placeholders != len(self.images):
            raise ValueError(
                f"the history has {n_placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {len(self.images)} "
                "image(s); keep one image per placeholder"
            )
        lpg = pipe.image_processor.latents_per_grid
        for i, block in enumerate(self.images):
            try:
                decode_image_block(block, pipe.vocab, latents_per_grid=lpg)
            except ValueError as err:
                raise ValueError(f"history image {i} is not a valid image token block: {err}") from err
        if must_end_with is not None and msgs and msgs[-1].role != must_end_with:
            raise ValueError(
                f"the history ends with a {msgs[-1].role!r} message; a new human turn can only follow a "
                "'gpt' answer (pass the whole conversation, or drop the unanswered question)"
            )
        return ChatHistory(msgs, [torch.as_tensor(b, dtype=torch.long).flatten() for b in self.images])

    def tokenize(self, pipe):
        """`TokenizedConversation` (input_ids, labels) of this history, as training sees it."""
        return pipe.conversation.tokenize(self.messages, self.images)


def as_history(pipe, history: Any, must_end_with: str | None = "gpt") -> ChatHistory:
    """A `ChatHistory` from None, a `ChatHistory`, a Lumina-mGPT record `{"conversations": [...],
    "image": [...]}` (images as paths / PIL / arrays / token blocks), or a list of text-only messages."""
    if history is None:
        return ChatHistory()
    if isinstance(history, ChatHistory):
        return history.validate(pipe, must_end_with)
    if isinstance(history, dict):
        if "conversations" not in history:
            raise ValueError(
                f"a history dict must be a Lumina-mGPT record with 'conversations' (and 'image'); got keys {sorted(history)}"
            )
        raw = history.get("image", history.get("images", []))
        images = encode_images(pipe, raw if isinstance(raw, (list, tuple)) else [raw]) if raw is not None else []
        msgs = _as_messages(history["conversations"])
        return ChatHistory(msgs, images).validate(pipe, must_end_with)
    if isinstance(history, (list, tuple)):
        msgs = _as_messages(history)
        if any(IMAGE_PLACEHOLDER in m.value for m in msgs):
            raise ValueError(
                "a history given as a list of messages cannot carry images; pass a ChatHistory (e.g. "
                "`output.history`) or a record {'conversations': [...], 'image': [...]}"
            )
        return ChatHistory(msgs, []).validate(pipe, must_end_with)
    raise ValueError(
        f"history must be a ChatHistory, a Lumina-mGPT record dict or a list of messages, got {type(history).__name__}"
    )


def human_message(text: str, num_images: int) -> str:
    """A human message holding `num_images` images: as written when it has placeholders, else with
    `<|image|> ` in front for each image (Lumina-mGPT's rule for images without a placeholder)."""
    if not isinstance(text, str):
        raise ValueError(f"the message must be a string, got {type(text).__name__}")
    placed = text.count(IMAGE_PLACEHOLDER)
    if placed and placed != num_images:
        raise ValueError(
            f"the message has {placed} {IMAGE_PLACEHOLDER} placeholder(s) but {num_images} image(s) were given; "
            "use one placeholder per image, or none to put the images in front"
        )
    return text if placed else f"{IMAGE_PLACEHOLDER} " * num_images + text


# ------------------------------------------------------------------------------------ generation
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
        device = self.pipe._execution_device
        slots = torch.arange(start, start + len(ids), device=device)
        out = self.pipe.transformer(
            torch.tensor([list(ids)], device=device), position_ids=slots[None], cache_position=slots, logits_to_keep=1
        )
        self.num_forward_passes += 1
        return out.logits[0, -1]  # (V,)

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
        try:
            while self.finish_reason is None:
                # ---- text: prefill the context, then one token per forward
                tr.setup_cache(max_batch_size=1, max_seq_len=min(limit, len(ctx) + s.max_new_tokens - n_text + 3),
                               device=pipe._execution_device)
                logits = self._forward(ctx, 0)
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
                full = pipe.tokenizer.decode(segment, skip_special_tokens=False) if segment else ""
                if full.startswith(shown) and len(full) > len(shown):  # held-back characters
                    self.pieces.append(full[len(shown):])
                    yield full[len(shown):]
                if not boi:
                    break
                # ---- image: H and W (chosen by the model unless fixed), then the body like text-to-image
                header = self._choose_header(ctx, image_top_k)
                tr.delete_cache()
                h_lat, w_lat = v.grid_value(header[1]) * lpg, v.grid_value(header[2]) * lpg
                guided = s.guidance_scale != 1.0
                result = decode_image_blocks(
                    tr, pipe.scheduler, [torch.tensor(ctx + header)], [torch.tensor(header)] if guided else None,
                    pipe.image_layout(h_lat, w_lat), s.guidance_scale, pad_id=v.pad_id, generator=self.generator,
                    sampling={"image_top_k": image_top_k, "temperature": self._temperature, "top_p": s.top_p},
                    device=pipe._execution_device,
                )
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
            tr.delete_cache()
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


# ----------------------------------------------------------------------------------------- output
@dataclass
class LuminaMGPTChatOutput(BaseOutput):
    """One assistant turn.

    text: the answer, with `<|image|>` where the model answered with an image.
    images: the answer's images ("pil" images, (H, W, 3) arrays, (3, H, W) tensors or token blocks).
    image_tokens: the images' token blocks.
    tokens: every generated id (image blocks included, the end-of-turn token excluded).
    history: the conversation including this answer; pass it as `history=` to continue.
    finish_reason: "end_of_turn", "max_new_tokens" or "max_positions".
    num_forward_passes: transformer forwards of the turn.
    """

    text: str
    images: list
    image_tokens: list[torch.Tensor]
    tokens: torch.Tensor
    history: ChatHistory
    finish_reason: str
    num_forward_passes: int


class ChatStream:
    """Iterate for text pieces as they are generated; `.result` then holds the `LuminaMGPTChatOutput`."""

    def __init__(self, decoder: TurnDecoder, history: ChatHistory, output_type: str):
        self._decoder, self._history, self._output_type = decoder, history, output_type
        self._iter: Iterator[str] | None = None
        self._result: LuminaMGPTChatOutput | None = None

    def __iter__(self) -> Iterator[str]:
        if self._iter is None:
            self._iter = iter(self._decoder)
        for piece in self._iter:
            yield piece
        self._finish()

    def _finish(self) -> None:
        if self._result is not None:
            return
        d = self._decoder
        pipe = d.pipe
        history = self._history.append("gpt", d.text, d.images)
        self._result = LuminaMGPTChatOutput(
            text=d.text, images=decode_blocks(pipe, d.images, self._output_type), image_tokens=list(d.images),
            tokens=torch.tensor(d.tokens, dtype=torch.long), history=history, finish_reason=d.finish_reason,
            num_forward_passes=d.num_forward_passes,
        )

    @property
    def result(self) -> LuminaMGPTChatOutput:
        if self._result is None:
            for _ in self:  # run to the end
                pass
        return self._result


def chat(
    pipe,
    message: str | Sequence[Message | dict | tuple[str, str]],
    images: Any = None,
    history: Any = None,
    *,
    max_new_tokens: int = 512,
    text_top_k: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    image_top_k: int | None = None,
    guidance_scale: float = 1.0,
    height: int | None = None,
    width: int | None = None,
    allow_images: bool = True,
    generator: torch.Generator | None = None,
    output_type: str = "pil",
    stream: bool = False,
) -> LuminaMGPTChatOutput | ChatStream:
    """One assistant turn of a conversation with a Lumina-mGPT pipeline.

    Args:
        pipe: a `LuminaMGPTPipeline` or `LuminaMGPTEditPipeline`.
        message: the new human message (a string; `<|image|>` marks where `images` go, else they go
            in front), or a whole conversation (list of messages ending with a human one; then
            `images` are all its images and `history` must be None).
        images: image(s) of the new message: paths, PIL, numpy, torch, or token blocks.
        history: earlier turns: `output.history` of a previous call, or a Lumina-mGPT record.
        max_new_tokens: text tokens at most (images do not count; once started they are completed).
        text_top_k, temperature, top_p: text sampling (defaults: the scheduler's config; Lumina uses
            text_top_k 5, temperature 1). text_top_k=1 is greedy.
        image_top_k, guidance_scale: for images in the answer (Lumina's freeform demo: 2000, 1.0).
        height, width: fix the size of answer images; by default the model chooses the grid tokens.
        allow_images: False forbids BOI, so the answer is text only.
        generator: a `torch.Generator` for reproducible answers.
        output_type: "pil", "np", "pt" or "tokens" for the answer's images.
        stream: return a `ChatStream` (iterate it for text pieces) instead of the finished output.
    """
    if output_type not in CHAT_OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {CHAT_OUTPUT_TYPES}, got {output_type!r}")
    if isinstance(message, str):
        base = as_history(pipe, history, must_end_with="gpt")
        blocks = encode_images(pipe, images)
        conv = base.append("human", human_message(message, len(blocks)), blocks)
    elif isinstance(message, (list, tuple)) and message:
        if history is not None:
            raise ValueError("pass either a whole conversation as `message` or a new message with `history`, not both")
        msgs = _as_messages(message)
        conv = ChatHistory(msgs, encode_images(pipe, images)).validate(pipe)
    else:
        raise ValueError(f"`message` must be a string or a non-empty list of messages, got {message!r}")
    if not conv.messages or conv.messages[-1].role != "human":
        raise ValueError("the conversation must end with a human message for the model to answer")
    context = pipe.conversation.generation_prompt(conv.messages, conv.images)
    settings = ChatSettings(max_new_tokens, text_top_k, image_top_k, temperature, top_p, guidance_scale,
                            height, width, allow_images)
    streamer = ChatStream(TurnDecoder(pipe, context, settings, generator), conv, output_type)
    return streamer if stream else streamer.result


class LuminaMGPTChatMixin:
    """`chat`, `understand` and `encode_image` as pipeline methods (see `chat` for the arguments)."""

    def encode_image(self, image: Any, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """One image -> its token block at the best bucket of `default_size` (or height x width)."""
        return encode_image(self, image, height, width)

    def chat(self, message, images: Any = None, history: Any = None, **kwargs) -> LuminaMGPTChatOutput | ChatStream:
        """One assistant turn: text, images, or both. `stream=True` returns an iterator of text pieces."""
        return chat(self, message, images, history, **kwargs)

    def understand(
        self, image: Any, question: str = DESCRIBE_PROMPT, **kwargs
    ) -> LuminaMGPTChatOutput | ChatStream:
        """Image(s) + question -> a text answer (`question <|image|>`, as Lumina-mGPT's examples).

        Images answers are off (`allow_images=False`) unless asked for.
        """
        items = list(image) if isinstance(image, (list, tuple)) else [image]
        if IMAGE_PLACEHOLDER not in question:
            question = question + f" {IMAGE_PLACEHOLDER}" * len(items)
        kwargs.setdefault("allow_images", False)
        return chat(self, question, items, kwargs.pop("history", None), **kwargs)
