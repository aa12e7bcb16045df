"""Lumina-mGPT's conversation format: prompts, `<|image|>` placeholders and training label masks.

A conversation is `BOS, q1 <sep> a1 <sep> q2 <sep> ...` where `<sep>` is the end-of-turn token
(`<reserved08706>` for Chameleon tokenizers) and roles are not written. For generation the prompt
ends right after the last human message's `<sep>`. Images inside a message are `<|image|>`
placeholders that are replaced by their image token block. Training labels are -100 on human turns
and the token ids on assistant turns (their `<sep>` and image blocks included).

The whole conversation string is tokenized in one call, as Lumina-mGPT does, so that text right
after a special token is tokenized exactly as in the original; label boundaries are found by
tokenizing the conversation up to the end of each turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .prompts import TEXT_TO_IMAGE_TEMPLATE
from .vocab import LuminaVocab

IGNORE_INDEX = -100



def text_to_image_prompt(prompt: str, height: int, width: int) -> str:
    """The text-to-image instruction Lumina-mGPT was trained with (width first, then height)."""
    return TEXT_TO_IMAGE_TEMPLATE.format(width=width, height=height, prompt=prompt)


@dataclass
class Message:
    """One turn. `role` is "human" or "gpt"; `value` may hold `<|image|>` placeholders."""

    role: str
    value: str


def _as_messages(messages: Sequence[Message | dict | tuple[str, str]]) -> list[Message]:
    out: list[Message] = []
    for i, m in enumerate(messages):
        if isinstance(m, Message):
            out.append(m)
        elif isinstance(m, dict):
            if "from" not in m or "value" not in m:
                raise ValueError(f"message {i} must have 'from' and 'value' keys, got {sorted(m)}")
            out.append(Message(m["from"], m["value"]))
        elif isinstance(m, (tuple, list)) and len(m) == 2:
            out.append(Message(m[0], m[1]))
        else:
            raise ValueError(f"message {i} must be a dict {{'from', 'value'}} or a (role, text) pair, got {m!r}")
    for i, m in enumerate(out):
        role = m.role.lower()
        expected = "human" if i % 2 == 0 else "gpt"
        if role == "assistant":
            role = "gpt"
        if role != expected:
            raise ValueError(
                f"message {i} has role {m.role!r}; turns must alternate human, gpt, human, ... starting with human"
            )
        if not isinstance(m.value, str):
            raise ValueError(f"message {i} value must be a string, got {type(m.value).__name__}")
        out[i] = Message(role, m.value)
    return out


@dataclass
class TokenizedConversation:
    input_ids: torch.LongTensor  # (L,)
    labels: torch.LongTensor  # (L,), IGNORE_INDEX where not supervised


class ConversationTokenizer:
    """Turns Lumina-mGPT conversations into token ids (and labels) with a tokenizer and a vocabulary."""

    def __init__(self, tokenizer, vocab: LuminaVocab):
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.sep = tokenizer.convert_ids_to_tokens(vocab.eot_id)
        self.placeholder = vocab.image_placeholder
        placeholder_id = tokenizer.convert_tokens_to_ids(self.placeholder)
        unk = getattr(tokenizer, "unk_token_id", None)
        if placeholder_id is None or placeholder_id == unk:
            raise ValueError(
                f"the tokenizer has no {self.placeholder!r} token; add it with "
                f"tokenizer.add_tokens([{self.placeholder!r}]) before building the pipeline"
            )
        self.placeholder_id = int(placeholder_id)

    def _encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def conversation_text(self, messages: Sequence[Message]) -> tuple[str, list[int]]:
        """The conversation string and the character offset where each turn ends."""
        text, ends = "", []
        for m in messages:
            text += m.value + self.sep
            ends.append(len(text))
        return text, ends

    def tokenize(
        self,
        messages: Sequence[Message | dict | tuple[str, str]],
        images: Sequence[torch.Tensor] = (),
    ) -> TokenizedConversation:
        """Token ids and labels of a conversation.

        `images` are the image token blocks (1-D LongTensors, `BOI ... EOI`) that replace the
        `<|image|>` placeholders in order. A conversation whose last message is human is a
        generation prompt: it ends with that message's `<sep>`.
        """
        msgs = _as_messages(messages)
        n_placeholders = sum(m.value.count(self.placeholder) for m in msgs)
        if n_placeholders != len(images):
            raise ValueError(
                f"the conversation has {n_placeholders} {self.placeholder} placeholder(s) but {len(images)} "
                f"image(s) were given; put one {self.placeholder} in the text for each image"
            )
        text, ends = self.conversation_text(msgs)
        ids = [self.vocab.bos_id, *self._encode_text(text)]
        labels = [IGNORE_INDEX] * len(ids)
        start = 1
        for m, end in zip(msgs, ends):
            stop = 1 + len(self._encode_text(text[:end]))
            if m.role == "gpt":
                labels[start:stop] = ids[start:stop]
            start = stop
        if start != len(ids):  # the per-turn prefixes must tile the whole tokenization
            raise ValueError("tokenizer split a turn boundary; the end-of-turn token must be a special token")

        out_ids: list[torch.Tensor] = []
        out_labels: list[torch.Tensor] = []
        ids_t = torch.tensor(ids, dtype=torch.long)
        labels_t = torch.tensor(labels, dtype=torch.long)
        where = (ids_t == self.placeholder_id).nonzero().flatten().tolist()
        if len(where) != len(images):
            raise ValueError(
                f"{self.placeholder} was merged with neighbouring text by the tokenizer; "
                f"put a space around each {self.placeholder}"
            )
        prev = 0
        for pos, block in zip(where, images):
            block = torch.as_tensor(block, dtype=torch.long).flatten()
            out_ids += [ids_t[prev:pos], block]
            supervised = labels_t[pos] != IGNORE_INDEX
            out_labels += [labels_t[prev:pos], block.clone() if supervised else torch.full_like(block, IGNORE_INDEX)]
            prev = pos + 1
        out_ids.append(ids_t[prev:])
        out_labels.append(labels_t[prev:])
        return TokenizedConversation(torch.cat(out_ids), torch.cat(out_labels))

    def generation_prompt(
        self, messages: Sequence[Message | dict | tuple[str, str]], images: Sequence[torch.Tensor] = ()
    ) -> torch.LongTensor:
        """Ids of a prompt that asks the model for the next (assistant) turn."""
        msgs = _as_messages(messages)
        if msgs and msgs[-1].role != "human":
            raise ValueError("a generation prompt must end with a human message")
        return self.tokenize(msgs, images).input_ids

    def text_to_image_prompt(self, prompt: str, height: int, width: int) -> torch.LongTensor:
        """Ids of Lumina-mGPT's text-to-image prompt (ends with `<sep>`; the image block follows)."""
        return self.generation_prompt([Message("human", text_to_image_prompt(prompt, height, width))])
