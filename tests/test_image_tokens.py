"""Image token blocks: Lumina-mGPT's reference blocks, round-trip properties, every validation error,
and the worked example in docs/image-tokens.md (its python blocks are executed here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusers_lumina_mgpt.image_tokens import (
    ImageBlockError,
    decode_image_block,
    encode_image_block,
    expected_token,
    find_image_blocks,
    image_block_length,
    parse_image_header,
)
from diffusers_lumina_mgpt.vocab import LuminaVocab

DOC = Path(__file__).resolve().parents[1] / "docs" / "image-tokens.md"


@pytest.fixture(scope="module")
def vocab(fixture_dir) -> LuminaVocab:
    return LuminaVocab.from_tokenizer(fixture_dir / "tokenizer" / "text_tokenizer.json", vocab_size=9088)


@pytest.fixture(scope="module")
def reference(fixture_dir) -> dict:
    return json.loads((fixture_dir / "lumina_reference.json").read_text())


def _block(vocab: LuminaVocab) -> list[int]:
    """A valid 2x4-latent block (1 x 2 grids) with codes 0..7."""
    return encode_image_block(torch.arange(8).view(2, 4), vocab).tolist()


# ---------------------------------------------------------------------------- reference data
def test_lumina_reference_blocks_round_trip(vocab, reference):
    assert reference["cases"], "reference file has no cases"
    for case in reference["cases"]:
        ids = case["appended_ids"] + case["generated_ids"]
        codes = torch.tensor(case["vq_codes"])
        h_lat, w_lat = case["height"] // 16, case["width"] // 16
        assert codes.shape == (h_lat, w_lat)
        assert len(ids) == image_block_length(h_lat, w_lat)
        assert torch.equal(decode_image_block(ids, vocab), codes)
        assert encode_image_block(codes, vocab).tolist() == ids
        assert parse_image_header(ids, vocab) == (h_lat, w_lat)
        # in the whole sequence (prompt + block) the block is found where Lumina put it
        full = case["prompt_ids"] + ids
        assert find_image_blocks(full, vocab) == [(len(case["prompt_ids"]), len(full))]


def test_block_lengths_from_facts():
    assert image_block_length(32, 32) == 1060
    assert image_block_length(48, 48) == 2356
    assert image_block_length(64, 64) == 4164
    with pytest.raises(ValueError):
        image_block_length(0, 4)


def test_expected_token_structure(vocab):
    ids = _block(vocab)
    body = ids[3:]
    for offset, tok in enumerate(body):
        want = expected_token(offset, 2, 4, vocab)
        assert want == tok if want is not None else vocab.is_code_token(tok)
    with pytest.raises(ValueError):
        expected_token(len(body), 2, 4, vocab)


def test_batch_encode(vocab):
    codes = torch.randint(0, 8192, (3, 4, 6))
    out = encode_image_block(codes, vocab)
    assert out.shape == (3, image_block_length(4, 6))
    for i in range(3):
        assert torch.equal(decode_image_block(out[i], vocab), codes[i])


# ---------------------------------------------------------------------------- properties
@st.composite
def grids(draw, max_side: int = 12):
    lpg = draw(st.sampled_from([1, 2, 4]))
    num_codes = draw(st.integers(1, 600))
    # aspect ratios from 1:max_side to max_side:1
    h_grid = draw(st.integers(1, max_side))
    w_grid = draw(st.integers(1, max_side))
    vocab = LuminaVocab.compact(num_codes, max_grid=max(h_grid, w_grid) + draw(st.integers(0, 3)),
                                num_text_tokens=draw(st.integers(0, 50)))
    seed = draw(st.integers(0, 2**31 - 1))
    codes = torch.randint(0, num_codes, (h_grid * lpg, w_grid * lpg), generator=torch.Generator().manual_seed(seed))
    return vocab, lpg, codes


@settings(max_examples=60, deadline=None)
@given(grids())
def test_round_trip_compact(case):
    vocab, lpg, codes = case
    h, w = codes.shape
    ids = encode_image_block(codes, vocab, latents_per_grid=lpg)
    assert ids.shape == (image_block_length(h, w),)
    assert ids[0] == vocab.boi_id and ids[-1] == vocab.eoi_id
    assert vocab.grid_value(int(ids[1])) == h // lpg and vocab.grid_value(int(ids[2])) == w // lpg
    rows = ids[3:-1].view(h, w + 1)
    assert (rows[:, -1] == vocab.newline_id).all()
    assert torch.equal(decode_image_block(ids, vocab, latents_per_grid=lpg), codes)
    assert torch.equal(decode_image_block(ids, vocab, latents_per_grid=lpg, lenient=True), codes)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 16), st.integers(1, 16), st.integers(0, 2**31 - 1))
def test_round_trip_chameleon_vocab(vocab, h_grid, w_grid, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, vocab.num_codes, (2 * h_grid, 2 * w_grid), generator=g)
    ids = encode_image_block(codes, vocab)
    assert torch.equal(decode_image_block(ids.tolist(), vocab), codes)


@settings(max_examples=60, deadline=None)
@given(grids(max_side=6), st.data())
def test_prefixes_strict_error_lenient_fill(case, data):
    vocab, lpg, codes = case
    h, w = codes.shape
    ids = encode_image_block(codes, vocab, latents_per_grid=lpg).tolist()
    cut = data.draw(st.integers(3, len(ids) - 1))  # header kept, block unfinished
    fill = data.draw(st.integers(0, vocab.num_codes - 1))
    with pytest.raises(ImageBlockError) as err:
        decode_image_block(ids[:cut], vocab, latents_per_grid=lpg)
    assert err.value.position == cut
    preview = decode_image_block(ids[:cut], vocab, latents_per_grid=lpg, lenient=True, fill_code=fill)
    assert preview.shape == (h, w)
    n_done = cut - 3  # body tokens present: codes and NEWLINEs
    flat_known = torch.zeros(h, w, dtype=torch.bool)
    for i in range(n_done):
        r, c = divmod(i, w + 1)
        if c < w:
            flat_known[r, c] = True
    assert torch.equal(preview[flat_known], codes[flat_known])
    assert (preview[~flat_known] == fill).all()


# ---------------------------------------------------------------------------- validation errors
def _error(ids, vocab, match: str, position: int, **kw) -> ImageBlockError:
    with pytest.raises(ImageBlockError, match=match) as err:
        decode_image_block(ids, vocab, **kw)
    assert err.value.position == position
    assert isinstance(err.value, ValueError)
    assert f"position {position}" in str(err.value)
    return err.value


def test_error_empty_and_missing_boi(vocab):
    _error([], vocab, "empty sequence", 0)
    ids = _block(vocab)
    _error(ids[1:], vocab, "expected BOI", 0)


def test_error_grid_tokens(vocab):
    ids = _block(vocab)
    _error(ids[:1], vocab, "ends before the height grid token", 1)
    _error(ids[:2], vocab, "ends before the width grid token", 2)
    bad = list(ids)
    bad[1] = vocab.newline_id  # <reserved08799> sits just below the grid range
    _error(bad, vocab, r"height grid token \(grid count 1..99\), got NEWLINE", 1)
    bad = list(ids)
    bad[2] = 8804 + 100  # <reserved08900>: beyond max_grid, not a grid token
    _error(bad, vocab, "width grid token", 2)
    bad[2] = vocab.code_token_ids[5]
    _error(bad, vocab, "got image code token", 2)


def test_error_short_row(vocab):
    ids = _block(vocab)  # BOI H W c c c c NL c c c c NL EOI
    bad = ids[:5] + ids[7:]  # row 0 loses two codes
    _error(bad, vocab, "row 0 has 2 codes, expected 4 before NEWLINE", 5)
    bad = ids[:8] + ids[9:]  # row 1 loses its last code
    _error(bad, vocab, "row 1 has 3 codes, expected 4 before NEWLINE", 11)


def test_error_long_row(vocab):
    ids = _block(vocab)
    bad = ids[:7] + [vocab.code_token_ids[9]] + ids[7:]
    _error(bad, vocab, "row 0 is too long", 7)


def test_error_missing_newline_and_eoi_inside_row(vocab):
    ids = _block(vocab)
    _error(ids[:12] + ids[13:], vocab, "missing NEWLINE at the end of row 1", 12)
    _error(ids[:10] + [vocab.eoi_id], vocab, "EOI inside row 1 after 2 of 4 codes", 10)


def test_error_text_token_inside_image(vocab):
    ids = _block(vocab)
    bad = list(ids)
    bad[9] = 9000  # a plain text token
    err = _error(bad, vocab, r"text token 9000 inside the image \(row 1, column 1\)", 9)
    bad[9] = vocab.eot_id
    _error(bad, vocab, "EOT", 9)
    bad[9] = vocab.grid_token(3)
    _error(bad, vocab, "grid token", 9)
    assert "only image codes and NEWLINE" in str(err)


def test_error_missing_eoi_extra_row_and_trailing(vocab):
    ids = _block(vocab)
    _error(ids[:-1], vocab, "missing EOI", 13)
    _error(ids[:-1] + [vocab.code_token_ids[0]], vocab, "got an extra row", 13)
    _error(ids[:-1] + [vocab.eot_id], vocab, "expected EOI .* got EOT", 13)
    _error(ids + [vocab.eot_id, 5], vocab, r"2 token\(s\) follow EOI", 14)
    _error(ids + [vocab.eot_id], vocab, r"1 token\(s\) follow EOI", 14)
    _error(ids[:6], vocab, r"block ends inside row 0 \(3 of 4 codes\)", 6)
    _error(ids[:7], vocab, "codes complete, NEWLINE missing", 7)


def test_lenient_mode_variants(vocab):
    ids = _block(vocab)
    codes = torch.arange(8).view(2, 4)
    # short row filled, long row truncated, text token / EOI stop, trailing tokens ignored
    short = decode_image_block(ids[:5] + ids[7:], vocab, lenient=True, fill_code=99)
    assert short.tolist() == [[0, 1, 99, 99], [4, 5, 6, 7]]
    long = decode_image_block(ids[:7] + [vocab.code_token_ids[9]] + ids[7:], vocab, lenient=True)
    assert torch.equal(long, codes)
    text = decode_image_block(ids[:9] + [9000] + ids[10:], vocab, lenient=True)
    assert text.tolist() == [[0, 1, 2, 3], [4, 0, 0, 0]]
    early = decode_image_block(ids[:9] + [vocab.eoi_id], vocab, lenient=True, fill_code=7)
    assert early.tolist() == [[0, 1, 2, 3], [4, 7, 7, 7]]
    assert torch.equal(decode_image_block(ids + [1, 2, 3], vocab, lenient=True), codes)
    # the header is still required: the size is unknown without it
    with pytest.raises(ImageBlockError, match="height grid token"):
        decode_image_block(ids[:1] + [9000] + ids[2:], vocab, lenient=True)
    with pytest.raises(ValueError, match="fill_code"):
        decode_image_block(ids, vocab, lenient=True, fill_code=8192)


def test_encode_errors(vocab):
    with pytest.raises(ValueError, match="not a whole number of 2 x 2-latent grids"):
        encode_image_block(torch.zeros(3, 4, dtype=torch.long), vocab)
    with pytest.raises(ValueError, match="stops at 99"):
        encode_image_block(torch.zeros(2, 200, dtype=torch.long), vocab)
    with pytest.raises(ValueError, match="outside 0..8191"):
        encode_image_block(torch.full((2, 2), 8192), vocab)
    with pytest.raises(ValueError, match=r"\(h, w\) grid"):
        encode_image_block(torch.zeros(4, dtype=torch.long), vocab)
    with pytest.raises(ValueError, match="latents_per_grid"):
        encode_image_block(torch.zeros(2, 2, dtype=torch.long), vocab, latents_per_grid=0)
    with pytest.raises(ValueError, match="1-D"):
        decode_image_block(torch.zeros(2, 3, dtype=torch.long), vocab)
    with pytest.raises(ValueError, match="integers"):
        decode_image_block(torch.zeros(5), vocab)


def test_find_image_blocks_unclosed(vocab):
    ids = _block(vocab)
    seq = [0, 9000] + ids + [vocab.eot_id] + ids[:6]
    assert find_image_blocks(seq, vocab) == [(2, 2 + len(ids)), (3 + len(ids), len(seq))]


# ---------------------------------------------------------------------------- the doc's example

