"""A conversation so far (`ChatHistory`): messages with `<|image|>` placeholders and their image
token blocks, built from the forms users pass (`as_history`), and the human-message rule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..conversation import Message, _as_messages
from ..image_tokens import decode_image_block
from ..vocab import IMAGE_PLACEHOLDER
from .chat_images import encode_images


@dataclass
class ChatHistory:
    """A conversation so far: messages with `<|image|>` placeholders and their image token blocks.

    Images are kept as token blocks (what the model saw or wrote), so a history replays exactly.
    `tokenize(pipe)` gives the ids and training labels (`ConversationTokenizer.tokenize`).
    """

    messages: list[Message] = field(default_factory=list)
    images: list[torch.Tensor] = field(default_factory=list)  # 1-D token blocks, in placeholder order

    def copy(self) -> ChatHistory:
        return ChatHistory(list(self.messages), [b.clone() for b in self.images])

    def append(self, role: str, text: str, blocks: Sequence[torch.Tensor] = ()) -> ChatHistory:
        """A new history with one more message (the original is unchanged)."""
        new = self.copy()
        new.messages.append(Message(role, text))
        new.images.extend(torch.as_tensor(b, dtype=torch.long).flatten() for b in blocks)
        return new

    @property
    def last_image(self) -> torch.Tensor | None:
        return self.images[-1] if self.images else None

    def validate(self, pipe, must_end_with: str | None = None) -> ChatHistory:
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
