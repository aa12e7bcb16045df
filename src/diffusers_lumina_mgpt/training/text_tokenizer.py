"""Small text tokenizers for models trained from scratch (ShapesWorld and other toy worlds).

`train_text_tokenizer` learns a byte-level BPE on the conversation text of a dataset and returns a
transformers `PreTrainedTokenizerFast` whose ids follow `LuminaVocab.compact`: the 7 special tokens
first, then the learned text pieces (`<|image|>` among them), then the grid-count tokens and the
image-code tokens under their Chameleon names, so `LuminaVocab.from_tokenizer` reads it back and the
pipelines treat it exactly like a Chameleon tokenizer. Byte-level BPE encodes any string (no unknown
tokens) and decodes it back exactly, so generated captions and answers keep their spaces.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..vocab import (
    BOI_NAME, BOS_NAME, EOI_NAME, EOS_NAME, EOT_NAME, IMAGE_PLACEHOLDER, NEWLINE_NAME, PAD_NAME, LuminaVocab,
    code_token_name, grid_token_name,
)

# the compact layout's first ids, in `LuminaVocab.COMPACT_SPECIALS` order
SPECIAL_NAMES: tuple[str, ...] = (PAD_NAME, BOS_NAME, EOS_NAME, EOT_NAME, BOI_NAME, EOI_NAME, NEWLINE_NAME)


def train_text_tokenizer(texts: Iterable[str], vocab_size: int, num_codes: int, max_grid: int):
    """A `PreTrainedTokenizerFast` with a byte-level BPE of about `vocab_size` text pieces learned from
    `texts`, followed by `max_grid` grid tokens and `num_codes` image-code tokens (compact layout)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(f"text vocab_size must be at least 300 (256 bytes + merges), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[*SPECIAL_NAMES, IMAGE_PLACEHOLDER],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    num_text = tok.get_vocab_size()
    image_names = [grid_token_name(n) for n in range(1, max_grid + 1)] + [code_token_name(c) for c in range(num_codes)]
    tok.add_special_tokens(image_names)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS_NAME, eos_token=EOS_NAME, pad_token=PAD_NAME,
        additional_special_tokens=[IMAGE_PLACEHOLDER, EOT_NAME, BOI_NAME, EOI_NAME, NEWLINE_NAME],
    )
    # the ids must be the compact layout's, or the vocabulary would not be the one we describe
    expected = LuminaVocab.compact(num_codes, max_grid, num_text_tokens=num_text - len(SPECIAL_NAMES))
    got = LuminaVocab.from_tokenizer(fast)
    if got != expected:
        raise RuntimeError(f"tokenizer ids do not follow the compact layout: {got.to_dict()} vs {expected.to_dict()}")
    return fast


__all__ = ["SPECIAL_NAMES", "train_text_tokenizer"]
