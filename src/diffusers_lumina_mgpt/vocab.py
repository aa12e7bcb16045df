"""Every special token id and the image-code <-> token-id mapping of a Lumina-mGPT model.

`LuminaVocab` is the one place that knows token ids; the rest of the package asks it (no magic
numbers elsewhere). Two ways to build one:

* `LuminaVocab.from_tokenizer(...)` reads a Chameleon tokenizer by token *name*: the image codes
  are the 8192 tokens `IMGIMG<letters>Z` whose letters A..J spell the decimal digits of the code
  (`IMGIMGAZ` = code 0, `IMGIMGBCZ` = code 12), `<racm3:break>` begins an image, `<eoss>` ends it,
  `<reserved08799>` ends every image row, `<reserved{8800+n:05d}>` is the grid count n and
  `<reserved08706>` ends a conversation turn. In Meta's tokenizer these are ids 4..8195, 8197,
  8196, 8803, 8804+n and 8710, but nothing here assumes so.
* `LuminaVocab.compact(num_codes, max_grid, num_text_tokens)` lays out a small vocabulary for
  tokenizers trained in this project (see `compact` for the layout). `special_token_names()` gives
  the Chameleon-style names of its non-text ids, so a tokenizer built from them reads back to the
  same vocabulary through `from_tokenizer`.

A vocabulary is JSON-serialisable (`to_dict` / `from_dict`) so a pipeline can save it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch

from .prompts import IMAGE_PLACEHOLDER

BOS_NAME = "<s>"
EOS_NAME = "</s>"
PAD_NAME = "<pad>"
BOI_NAME = "<racm3:break>"
EOI_NAME = "<eoss>"
NEWLINE_NAME = "<reserved08799>"
EOT_NAME = "<reserved08706>"
GRID_NAME_BASE = 8800  # grid count n is the token <reserved{8800+n:05d}>

_CODE_NAME = re.compile(r"^IMGIMG([A-J]+)Z$")
_LETTERS = "ABCDEFGHIJ"


def code_token_name(code: int) -> str:
    """Chameleon's name for image code `code`: its decimal digits written as letters A..J."""
    if code < 0:
        raise ValueError(f"image codes are non-negative, got {code}")
    return "IMGIMG" + "".join(_LETTERS[int(d)] for d in str(code)) + "Z"


def grid_token_name(n: int) -> str:
    """Chameleon's name for the grid-count token of n grids (n >= 1)."""
    return f"<reserved{GRID_NAME_BASE + n:05d}>"


def _parse_code_name(name: str) -> int | None:
    m = _CODE_NAME.match(name)
    if m is None:
        return None
    digits = "".join(str(_LETTERS.index(c)) for c in m.group(1))
    if len(digits) > 1 and digits[0] == "0":  # not a canonical spelling of a number
        return None
    return int(digits)


def _load_name_to_id(tokenizer: Any) -> dict[str, int]:
    """name -> id from a transformers tokenizer, a mapping, or a tokenizer.json file / folder."""
    if isinstance(tokenizer, Mapping):
        return {str(k): int(v) for k, v in tokenizer.items()}
    if hasattr(tokenizer, "get_vocab"):
        return {str(k): int(v) for k, v in tokenizer.get_vocab().items()}
    if isinstance(tokenizer, (str, Path)):
        path = Path(tokenizer)
        if path.is_dir():
            for candidate in ("tokenizer.json", "text_tokenizer.json"):
                if (path / candidate).is_file():
                    path = path / candidate
                    break
            else:
                raise FileNotFoundError(
                    f"{path} holds neither tokenizer.json nor text_tokenizer.json; pass the tokenizer file itself"
                )
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist; pass a tokenizer.json / text_tokenizer.json")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not a tokenizers JSON file ({err})") from err
        vocab = data.get("model", {}).get("vocab") if isinstance(data, dict) else None
        if vocab is None:
            raise ValueError(f"{path} has no model.vocab; expected a Hugging Face tokenizers JSON (tokenizer.json)")
        if isinstance(vocab, dict):
            names = {str(k): int(v) for k, v in vocab.items()}
        else:  # Unigram: a list of [piece, score] whose index is the id
            names = {str(entry[0]): i for i, entry in enumerate(vocab)}
        for added in data.get("added_tokens", []):
            names[str(added["content"])] = int(added["id"])
        return names
    raise ValueError(
        f"cannot read token names from {type(tokenizer).__name__}; pass a transformers tokenizer, "
        "a dict name -> id, or the path of a tokenizer.json / text_tokenizer.json"
    )


@dataclass(frozen=True)
class LuminaVocab:
    """Special ids and the image code <-> token id mapping (see the module docstring)."""

    bos_id: int
    eos_id: int
    pad_id: int
    boi_id: int  # <racm3:break>
    eoi_id: int  # <eoss>
    newline_id: int  # <reserved08799>
    eot_id: int  # end of turn / separator <reserved08706>
    image_placeholder: str  # "<|image|>" in prompts, replaced by image blocks
    code_token_ids: tuple[int, ...]  # code_token_ids[i] = token id of image code i
    grid_token_ids: tuple[int, ...]  # grid_token_ids[n - 1] = token id of grid count n
    num_codes: int
    max_grid: int
    vocab_size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "code_token_ids", tuple(int(i) for i in self.code_token_ids))
        object.__setattr__(self, "grid_token_ids", tuple(int(i) for i in self.grid_token_ids))
        if len(self.code_token_ids) != self.num_codes or self.num_codes < 1:
            raise ValueError(
                f"code_token_ids has {len(self.code_token_ids)} ids but num_codes is {self.num_codes}; they must agree"
            )
        if len(self.grid_token_ids) != self.max_grid or self.max_grid < 1:
            raise ValueError(
                f"grid_token_ids has {len(self.grid_token_ids)} ids but max_grid is {self.max_grid}; they must agree"
            )
        specials = {
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            "boi_id": self.boi_id,
            "eoi_id": self.eoi_id,
            "newline_id": self.newline_id,
            "eot_id": self.eot_id,
        }
        all_ids = list(specials.values()) + list(self.code_token_ids) + list(self.grid_token_ids)
        bad = [i for i in all_ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} lie outside the vocabulary [0, {self.vocab_size}); fix vocab_size")
        image_roles = {k: v for k, v in specials.items() if k in ("boi_id", "eoi_id", "newline_id", "eot_id")}
        structural = list(image_roles.values()) + list(self.code_token_ids) + list(self.grid_token_ids)
        if len(set(structural)) != len(structural):
            raise ValueError(
                "image codes, grid tokens, BOI, EOI, NEWLINE and EOT must all be distinct token ids; "
                f"got {image_roles} with {self.num_codes} codes and {self.max_grid} grid tokens overlapping"
            )

    # ------------------------------------------------------------------ lookups
    @cached_property
    def _code_ids(self) -> torch.Tensor:  # (num_codes,) code -> token id
        return torch.tensor(self.code_token_ids, dtype=torch.long)

    @cached_property
    def _token_to_code(self) -> torch.Tensor:  # (vocab_size,) token id -> code, -1 for non-codes
        table = torch.full((self.vocab_size,), -1, dtype=torch.long)
        table[self._code_ids] = torch.arange(self.num_codes)
        return table

    @cached_property
    def _grid_lookup(self) -> dict[int, int]:
        return {tid: n for n, tid in enumerate(self.grid_token_ids, start=1)}

    def grid_token(self, n: int) -> int:
        """Token id of the grid count `n` (1 <= n <= max_grid)."""
        if not 1 <= int(n) <= self.max_grid:
            raise ValueError(
                f"grid count {n} is outside 1..{self.max_grid}: this vocabulary has no token for it; "
                f"use an image of at most {self.max_grid} grids per side"
            )
        return self.grid_token_ids[int(n) - 1]

    def image_header(self, h_grid: int, w_grid: int) -> list[int]:
        """`[BOI, H, W]`, the three tokens that open an image block of `h_grid x w_grid` grids (the one place
        the header is built)."""
        return [self.boi_id, self.grid_token(h_grid), self.grid_token(w_grid)]

    def image_layout(self, h_lat: int, w_lat: int):
        """The `ImageLayout` of an `h_lat x w_lat` (latent) image block: where NEWLINE and EOI go, and this
        vocabulary's code <-> token tables (the one place they are built)."""
        from .schedulers.image_decoding import ImageLayout

        return ImageLayout(h_lat, w_lat, self.newline_id, self.eoi_id, self._code_ids, token_table=self._token_to_code)

    def grid_value(self, token_id: int) -> int | None:
        """The grid count a token stands for, or None if it is not a grid token."""
        return self._grid_lookup.get(int(token_id))

    def is_code_token(self, token_id: int) -> bool:
        return 0 <= int(token_id) < self.vocab_size and int(self._token_to_code[int(token_id)]) >= 0

    def codes_to_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """Map image codes (any shape, integer) to token ids of the same shape."""
        codes = torch.as_tensor(codes)
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"image codes must be an integer tensor, got dtype {codes.dtype}")
        codes = codes.long()
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.num_codes):
            bad = ((codes < 0) | (codes >= self.num_codes)).nonzero()[0].tolist()
            raise ValueError(
                f"image code {int(codes[tuple(bad)])} at index {tuple(bad)} is outside 0..{self.num_codes - 1}; "
                "codes must come from this vocabulary's codebook"
            )
        # index_select, not fancy indexing: the latter is ~1000x slower on small multi-threaded CPU runs
        return self._code_ids.to(codes.device).index_select(0, codes.flatten()).view(codes.shape)

    def tokens_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Map image-code token ids (any shape) back to codes; ValueError names the first non-code position."""
        ids = torch.as_tensor(ids)
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"token ids must be an integer tensor, got dtype {ids.dtype}")
        ids = ids.long()
        in_range = (ids >= 0) & (ids < self.vocab_size)
        table = self._token_to_code.to(ids.device)
        codes = table.index_select(0, ids.clamp(0, self.vocab_size - 1).flatten()).view(ids.shape)
        codes = torch.where(in_range, codes, torch.full_like(codes, -1))
        if (codes < 0).any():
            pos = tuple((codes < 0).nonzero()[0].tolist())
            raise ValueError(
                f"token id {int(ids[pos])} at index {pos} is not an image-code token "
                f"(codes are {self.num_codes} IMGIMG...Z tokens); strip BOI/grid/NEWLINE/EOI tokens first"
            )
        return codes

    def image_token_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(vocab_size,) bool: True at the ids of image-code tokens."""
        return (self._token_to_code >= 0).to(device)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_tokenizer(
        cls, tokenizer: Any, max_grid: int | None = None, vocab_size: int | None = None
    ) -> "LuminaVocab":
        """Read the vocabulary from token names.

        `tokenizer`: a transformers tokenizer (anything with `get_vocab()`), a dict name -> id, or the
        path of Meta's `text_tokenizer.json` / a `tokenizer.json` (or a folder holding one).
        `max_grid`: cap on the grid counts used; default = every consecutive `<reserved{8800+n}>`
        from n = 1 on. `vocab_size`: the model's (often padded) vocabulary size, e.g. 9088 for the
        test fixture whose tokenizer has 9033 names; default = largest id + 1 (or `len(tokenizer)`).
        Raises ValueError naming the tokens that are missing.
        """
        model_vocab_size = vocab_size
        names = _load_name_to_id(tokenizer)
        codes: dict[int, int] = {}
        for name, tid in names.items():
            code = _parse_code_name(name)
            if code is not None:
                codes[code] = tid
        missing = [n for n in (BOS_NAME, EOS_NAME, BOI_NAME, EOI_NAME, NEWLINE_NAME, EOT_NAME) if n not in names]
        if grid_token_name(1) not in names:
            missing.append(f"{grid_token_name(1)} (grid count 1)")
        if not codes:
            missing.append("IMGIMG<A..J>Z image-code tokens")
        elif sorted(codes) != list(range(len(codes))):
            gaps = sorted(set(range(max(codes) + 1)) - set(codes))
            missing.append(f"image codes {gaps[:5]}{'...' if len(gaps) > 5 else ''} ({code_token_name(gaps[0])} ...)")
        if missing:
            raise ValueError(
                "this tokenizer is not a Chameleon / Lumina-mGPT tokenizer: missing tokens "
                + ", ".join(missing)
                + ". Use the tokenizer shipped with the checkpoint, or LuminaVocab.compact(...) for a small vocabulary."
            )
        grids: list[int] = []
        while grid_token_name(len(grids) + 1) in names and (max_grid is None or len(grids) < max_grid):
            grids.append(names[grid_token_name(len(grids) + 1)])
        if max_grid is not None and len(grids) < max_grid:
            raise ValueError(
                f"max_grid={max_grid} requested but the tokenizer only has grid tokens up to "
                f"{grid_token_name(len(grids))} (n={len(grids)})"
            )
        vocab_size = max(names.values()) + 1
        if hasattr(tokenizer, "__len__") and not isinstance(tokenizer, (Mapping, str, Path)):
            vocab_size = max(vocab_size, len(tokenizer))
        if model_vocab_size is not None:
            if model_vocab_size < vocab_size:
                raise ValueError(
                    f"vocab_size={model_vocab_size} is smaller than the tokenizer's largest id + 1 ({vocab_size}); "
                    "pass the model's config.vocab_size"
                )
            vocab_size = model_vocab_size
        pad_id = names.get(PAD_NAME, names[EOS_NAME])  # no <pad>: padding reuses EOS
        return cls(
            bos_id=names[BOS_NAME],
            eos_id=names[EOS_NAME],
            pad_id=pad_id,
            boi_id=names[BOI_NAME],
            eoi_id=names[EOI_NAME],
            newline_id=names[NEWLINE_NAME],
            eot_id=names[EOT_NAME],
            image_placeholder=IMAGE_PLACEHOLDER,
            code_token_ids=tuple(codes[i] for i in range(len(codes))),
            grid_token_ids=tuple(grids),
            num_codes=len(codes),
            max_grid=len(grids),
            vocab_size=vocab_size,
        )

    # ids of the compact layout's special tokens, in order
    COMPACT_SPECIALS: ClassVar[tuple[str, ...]] = ("pad_id", "bos_id", "eos_id", "eot_id", "boi_id", "eoi_id", "newline_id")

    @classmethod
    def compact(cls, num_codes: int, max_grid: int, num_text_tokens: int = 0) -> "LuminaVocab":
        """A small vocabulary for tokenizers trained in this project.

        Layout (ids, in order):
          0 pad, 1 BOS, 2 EOS, 3 EOT, 4 BOI, 5 EOI, 6 NEWLINE,
          7 .. 7+num_text_tokens-1            text tokens (the text tokenizer's own pieces),
          then max_grid grid tokens           grid count n -> grid_offset + n - 1,
          then num_codes image codes          code i -> code_offset + i.
        vocab_size = 7 + num_text_tokens + max_grid + num_codes. Image tokens come last so a text
        tokenizer trained with the 7 specials first keeps its ids; `special_token_names()` gives the
        Chameleon-style names of every non-text id.
        """
        if num_codes < 1 or max_grid < 1 or num_text_tokens < 0:
            raise ValueError(
                f"compact vocabulary needs num_codes >= 1, max_grid >= 1, num_text_tokens >= 0; "
                f"got {num_codes}, {max_grid}, {num_text_tokens}"
            )
        n_special = len(cls.COMPACT_SPECIALS)
        grid_offset = n_special + num_text_tokens
        code_offset = grid_offset + max_grid
        ids = dict(zip(cls.COMPACT_SPECIALS, range(n_special)))
        return cls(
            **ids,
            image_placeholder=IMAGE_PLACEHOLDER,
            code_token_ids=tuple(range(code_offset, code_offset + num_codes)),
            grid_token_ids=tuple(range(grid_offset, grid_offset + max_grid)),
            num_codes=num_codes,
            max_grid=max_grid,
            vocab_size=code_offset + num_codes,
        )

    def special_token_names(self) -> dict[str, int]:
        """Chameleon-style name -> id of every non-text token (feed it to `from_tokenizer` to read it back)."""
        names = {
            BOS_NAME: self.bos_id,
            EOS_NAME: self.eos_id,
            PAD_NAME: self.pad_id,
            BOI_NAME: self.boi_id,
            EOI_NAME: self.eoi_id,
            NEWLINE_NAME: self.newline_id,
            EOT_NAME: self.eot_id,
        }
        names.update({grid_token_name(n): tid for n, tid in enumerate(self.grid_token_ids, start=1)})
        names.update({code_token_name(c): tid for c, tid in enumerate(self.code_token_ids)})
        return names

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form; contiguous id runs are stored as {"start", "count"}."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                start = value[0]
                if value == tuple(range(start, start + len(value))):
                    value = {"start": start, "count": len(value)}
                else:
                    value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LuminaVocab":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown LuminaVocab fields {sorted(unknown)}; expected {sorted(known)}")
        kwargs = dict(d)
        for key in ("code_token_ids", "grid_token_ids"):
            value = kwargs.get(key)
            if isinstance(value, Mapping):
                kwargs[key] = tuple(range(int(value["start"]), int(value["start"]) + int(value["count"])))
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise ValueError(f"incomplete LuminaVocab dict: {err}") from err
