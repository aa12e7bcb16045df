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

Split by concern: `chat_history.py` (the conversation so far), `chat_images.py` (image in and out),
`chat_decoding.py` (the decoding engine of a turn); this module streams a turn's text (`ChatStream`)
and assembles its output.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils import BaseOutput

from ..conversation import Message, _as_messages
from ..vocab import IMAGE_PLACEHOLDER
from .chat_decoding import ChatSettings, TurnDecoder
from .chat_history import ChatHistory, as_history, human_message
from .chat_images import CHAT_OUTPUT_TYPES, decode_blocks, encode_image, encode_images

DESCRIBE_PROMPT = "Describe the image in detail."  # Lumina-mGPT's understanding example


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
    """Iterate for text pieces as they are generated; `.result` then holds the `LuminaMGPTChatOutput`.

    A turn holds its KV cache (with compiled decoding, the decoder's kept cache) until it ends. A stream
    you stop reading keeps it until it is dropped or `close()`d; meanwhile other calls decode in caches
    of their own.
    """

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

    def close(self) -> None:
        """Stop the turn where it is and free its cache (`result` then holds what was generated)."""
        if self._iter is None:
            self._iter = iter(self._decoder)
        self._iter.close()

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
