"""The image token block: a grid of VQ codes <-> the token ids Lumina-mGPT reads and writes.

An image of H x W pixels is a code grid of h_lat x w_lat latents (h_lat = H / 16 for Chameleon's
VQGAN). In a token sequence it is the block

    BOI, H_grid, W_grid, (w_lat codes, NEWLINE) x h_lat, EOI

where one grid is `latents_per_grid` x `latents_per_grid` latents (2 for Chameleon: a 32 px grid),
H_grid = h_lat / latents_per_grid and W_grid likewise, written as grid-count tokens. Every row, the
last included, ends with NEWLINE. Length: h_lat * (w_lat + 1) + 4 (1060 at 512^2, 2356 at 768^2,
4164 at 1024^2). All ids come from a `LuminaVocab`; see docs/image-tokens.md for a worked example.

`decode_image_block` validates a block and reports the first problem with its position
(`ImageBlockError`, a ValueError); `lenient=True` turns a partial generation into a full grid
for previews instead.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .vocab import LuminaVocab

# NOTE: lenient decoding fills every latent that was not generated with this code unless told otherwise.
DEFAULT_FILL_CODE = 0


class ImageBlockError(ValueError):
    """A token sequence is not a well-formed image block; `position` is the offending index in it."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message if position is None else f"image block position {position}: {message}")
        self.position = position


def image_block_length(h_lat: int, w_lat: int) -> int:
    """Number of tokens of the block of an h_lat x w_lat code grid: BOI, H, W, rows with NEWLINE, EOI."""
    if h_lat < 1 or w_lat < 1:
        raise ValueError(f"a code grid needs at least one latent per side, got {h_lat} x {w_lat}")
    return h_lat * (w_lat + 1) + 4


def _check_lpg(latents_per_grid: int) -> int:
    if int(latents_per_grid) != latents_per_grid or latents_per_grid < 1:
        raise ValueError(f"latents_per_grid must be a positive integer (2 for Chameleon), got {latents_per_grid}")
    return int(latents_per_grid)


def encode_image_block(codes: torch.Tensor, vocab: LuminaVocab, latents_per_grid: int = 2) -> torch.Tensor:
    """Code grid (h, w) -> block ids (h * (w + 1) + 4,); a batch (B, h, w) gives (B, h * (w + 1) + 4)."""
    lpg = _check_lpg(latents_per_grid)
    codes = torch.as_tensor(codes)
    if codes.dim() == 3 and len(codes):
        return torch.stack([encode_image_block(c, vocab, lpg) for c in codes])
    if codes.dim() != 2:
        raise ValueError(f"codes must be a (h, w) grid or a (B, h, w) batch, got shape {tuple(codes.shape)}")
    h, w = codes.shape
    if h == 0 or w == 0 or h % lpg or w % lpg:
        raise ValueError(
            f"a {h} x {w} code grid is not a whole number of {lpg} x {lpg}-latent grids; "
            f"image sizes must be multiples of the grid (32 px for Chameleon)"
        )
    h_grid, w_grid = h // lpg, w // lpg
    if max(h_grid, w_grid) > vocab.max_grid:
        raise ValueError(
            f"a {h_grid} x {w_grid}-grid image needs grid tokens up to {max(h_grid, w_grid)}, "
            f"but this vocabulary stops at {vocab.max_grid}; use a smaller image"
        )
    tokens = vocab.codes_to_tokens(codes)  # (h, w)
    newline = torch.full((h, 1), vocab.newline_id, dtype=torch.long, device=tokens.device)
    head = torch.tensor(vocab.image_header(h_grid, w_grid), device=tokens.device)
    tail = torch.tensor([vocab.eoi_id], device=tokens.device)
    return torch.cat([head, torch.cat([tokens, newline], dim=1).flatten(), tail])


def _describe(token_id: int, vocab: LuminaVocab) -> str:
    if vocab.is_code_token(token_id):
        return f"image code token {token_id}"
    grid = vocab.grid_value(token_id)
    if grid is not None:
        return f"grid token {token_id} (n={grid})"
    names = {
        vocab.boi_id: "BOI",
        vocab.eoi_id: "EOI",
        vocab.newline_id: "NEWLINE",
        vocab.eot_id: "EOT",
        vocab.bos_id: "BOS",
        vocab.eos_id: "EOS",
        vocab.pad_id: "PAD",
    }
    if token_id in names:
        return f"{names[token_id]} ({token_id})"
    return f"text token {token_id}"


def _as_id_list(ids: torch.Tensor | Sequence[int]) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"token ids must be integers, got dtype {ids.dtype}")
        if ids.dim() != 1:
            raise ValueError(f"decode one block at a time: expected a 1-D id sequence, got shape {tuple(ids.shape)}")
        return ids.tolist()
    return [int(i) for i in ids]


def parse_image_header(
    ids: torch.Tensor | Sequence[int], vocab: LuminaVocab, latents_per_grid: int = 2
) -> tuple[int, int]:
    """Read BOI, H_grid, W_grid at the start of `ids`; returns the latent size (h_lat, w_lat)."""
    lpg = _check_lpg(latents_per_grid)
    seq = _as_id_list(ids)
    if not seq:
        raise ImageBlockError(f"empty sequence: an image block starts with BOI ({vocab.boi_id})", 0)
    if seq[0] != vocab.boi_id:
        raise ImageBlockError(f"expected BOI ({vocab.boi_id}), got {_describe(seq[0], vocab)}", 0)
    sizes = []
    for pos, side in ((1, "height"), (2, "width")):
        if pos >= len(seq):
            raise ImageBlockError(f"block ends before the {side} grid token", pos)
        n = vocab.grid_value(seq[pos])
        if n is None:
            raise ImageBlockError(
                f"expected the {side} grid token (grid count 1..{vocab.max_grid}), got {_describe(seq[pos], vocab)}",
                pos,
            )
        sizes.append(n * lpg)
    return sizes[0], sizes[1]


def decode_image_block(
    ids: torch.Tensor | Sequence[int],
    vocab: LuminaVocab,
    latents_per_grid: int = 2,
    lenient: bool = False,
    fill_code: int = DEFAULT_FILL_CODE,
) -> torch.Tensor:
    """Block ids -> code grid (h_lat, w_lat), validating every token.

    Strict mode raises `ImageBlockError` (a ValueError) at the first of: no BOI, a bad grid token,
    a row with too few or too many codes, a missing NEWLINE or EOI, a text/special token inside the
    image, or tokens after EOI. `lenient=True` is for previews of partial generations: the header
    must still be valid, a short or missing row is filled with `fill_code` (default 0), codes
    beyond a row's width are dropped, and the block may stop anywhere (a non-image token ends it).
    """
    seq = _as_id_list(ids)
    h, w = parse_image_header(seq, vocab, latents_per_grid)
    if not 0 <= fill_code < vocab.num_codes:
        raise ValueError(f"fill_code must be an image code in 0..{vocab.num_codes - 1}, got {fill_code}")
    fill_id = vocab.code_token_ids[fill_code]
    code_ids = set(vocab.code_token_ids)
    rows: list[list[int]] = []
    n, p = len(seq), 3
    stopped = False  # lenient: the rest of the grid is filled
    for r in range(h):
        row: list[int] = []
        while not stopped:
            if p >= n:
                if not lenient:
                    what = f"{len(row)} of {w} codes" if len(row) < w else "codes complete, NEWLINE missing"
                    raise ImageBlockError(f"block ends inside row {r} ({what}); expected {h} rows then EOI", p)
                stopped = True
                break
            tok = seq[p]
            if tok in code_ids:
                if len(row) < w:
                    row.append(tok)
                elif not lenient:
                    raise ImageBlockError(
                        f"row {r} is too long: expected NEWLINE ({vocab.newline_id}) after {w} codes, "
                        f"got {_describe(tok, vocab)}",
                        p,
                    )
                p += 1
            elif tok == vocab.newline_id:
                if len(row) < w and not lenient:
                    raise ImageBlockError(f"row {r} has {len(row)} codes, expected {w} before NEWLINE", p)
                p += 1
                break
            elif tok == vocab.eoi_id:
                if not lenient:
                    if len(row) < w:
                        msg = f"EOI inside row {r} after {len(row)} of {w} codes; expected {h} rows"
                    else:
                        msg = f"missing NEWLINE at the end of row {r} (got EOI)"
                    raise ImageBlockError(msg, p)
                stopped = True
            else:
                if not lenient:
                    raise ImageBlockError(
                        f"{_describe(tok, vocab)} inside the image (row {r}, column {len(row)}); "
                        f"only image codes and NEWLINE ({vocab.newline_id}) may appear there",
                        p,
                    )
                stopped = True
        rows.append(row + [fill_id] * (w - len(row)))
    if not lenient:
        if p >= n:
            raise ImageBlockError(f"missing EOI ({vocab.eoi_id}) after the {h} rows", p)
        if seq[p] != vocab.eoi_id:
            extra = "an extra row" if seq[p] in code_ids else _describe(seq[p], vocab)
            raise ImageBlockError(f"expected EOI ({vocab.eoi_id}) after {h} rows, got {extra}", p)
        if p + 1 < n:
            raise ImageBlockError(f"{n - p - 1} token(s) follow EOI; pass exactly one block (see find_image_blocks)", p + 1)
    grid = torch.tensor(rows, dtype=torch.long)  # (h, w) token ids
    return vocab.tokens_to_codes(grid)


def expected_token(offset: int, h_lat: int, w_lat: int, vocab: LuminaVocab) -> int | None:
    """Structure rule for generation: the id required at `offset` after BOI, H, W (offset 0 = first
    code), None where any image code goes, vocab.eoi_id after the last row."""
    if offset < 0 or offset >= h_lat * (w_lat + 1) + 1:
        raise ValueError(f"offset {offset} lies outside the {h_lat} x {w_lat} image body")
    if offset == h_lat * (w_lat + 1):
        return vocab.eoi_id
    return vocab.newline_id if offset % (w_lat + 1) == w_lat else None


def find_image_blocks(ids: torch.Tensor | Sequence[int], vocab: LuminaVocab) -> list[tuple[int, int]]:
    """(start, stop) spans of every BOI ... EOI block in a sequence (stop exclusive; an unclosed
    last block runs to the end). The spans are not validated: decode each with decode_image_block."""
    seq = _as_id_list(ids)
    spans, start = [], None
    for i, tok in enumerate(seq):
        if tok == vocab.boi_id and start is None:
            start = i
        elif tok == vocab.eoi_id and start is not None:
            spans.append((start, i + 1))
            start = None
    if start is not None:
        spans.append((start, len(seq)))
    return spans
