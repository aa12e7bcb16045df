"""LuminaVocab: ids read from the fixture's token names match the facts file; compact layout; errors."""

from __future__ import annotations

import json

import pytest
import torch

from diffusers_lumina_mgpt.vocab import LuminaVocab, code_token_name, grid_token_name


@pytest.fixture(scope="module")
def hf_tokenizer(fixture_dir):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(fixture_dir / "model"))


@pytest.fixture(scope="module")
def vocab(fixture_dir) -> LuminaVocab:
    return LuminaVocab.from_tokenizer(fixture_dir / "tokenizer" / "text_tokenizer.json", vocab_size=9088)


def _check_facts(v: LuminaVocab) -> None:
    # ids from lumina-mgpt-facts.md / the fixture README
    assert (v.bos_id, v.pad_id, v.eos_id) == (0, 1, 2)
    assert v.boi_id == 8197 and v.eoi_id == 8196 and v.newline_id == 8803 and v.eot_id == 8710
    assert v.num_codes == 8192
    assert v.code_token_ids == tuple(range(4, 8196))  # code i -> i + 4 in this tokenizer
    assert all(v.grid_token(n) == 8804 + n for n in range(1, v.max_grid + 1))
    assert v.image_placeholder == "<|image|>"


def test_from_transformers_tokenizer(hf_tokenizer):
    v = LuminaVocab.from_tokenizer(hf_tokenizer)
    _check_facts(v)
    assert v.vocab_size == len(hf_tokenizer)
    # the names really are what the ids say
    assert hf_tokenizer.convert_ids_to_tokens(v.boi_id) == "<racm3:break>"
    assert hf_tokenizer.convert_ids_to_tokens(v.code_token_ids[1234]) == "IMGIMGBCDEZ"


def test_from_meta_text_tokenizer_json_and_folder(fixture_dir, hf_tokenizer, vocab):
    _check_facts(vocab)
    assert vocab.vocab_size == 9088
    from_folder = LuminaVocab.from_tokenizer(fixture_dir / "model")
    assert from_folder == LuminaVocab.from_tokenizer(hf_tokenizer)
    assert LuminaVocab.from_tokenizer(hf_tokenizer.get_vocab()) == from_folder


def test_max_grid_reads_consecutive_reserved_tokens(vocab, fixture_dir):
    # the fixture has <reserved08801> .. <reserved08899>
    assert vocab.max_grid == 99
    capped = LuminaVocab.from_tokenizer(fixture_dir / "tokenizer" / "text_tokenizer.json", max_grid=64)
    assert capped.max_grid == 64 and capped.grid_token_ids == vocab.grid_token_ids[:64]
    with pytest.raises(ValueError, match="only has grid tokens up to"):
        LuminaVocab.from_tokenizer(fixture_dir / "tokenizer" / "text_tokenizer.json", max_grid=100)


def test_code_names():
    assert code_token_name(0) == "IMGIMGAZ"
    assert code_token_name(8191) == "IMGIMGIBJBZ"
    assert grid_token_name(2) == "<reserved08802>"
    with pytest.raises(ValueError):
        code_token_name(-1)


def test_codes_tokens_round_trip_and_mask(vocab):
    codes = torch.randint(0, vocab.num_codes, (3, 5, 7), generator=torch.Generator().manual_seed(0))
    tokens = vocab.codes_to_tokens(codes)
    assert tokens.shape == codes.shape and torch.equal(tokens, codes + 4)
    assert torch.equal(vocab.tokens_to_codes(tokens), codes)
    mask = vocab.image_token_mask()
    assert mask.shape == (9088,) and mask.dtype == torch.bool
    assert int(mask.sum()) == 8192 and mask[4:8196].all() and not mask[8196:].any()
    assert vocab.grid_value(8806) == 2 and vocab.grid_value(8803) is None
    assert vocab.is_code_token(4) and not vocab.is_code_token(8197)


def test_tokens_to_codes_names_first_bad_position(vocab):
    ids = torch.tensor([[4, 5, 6], [7, 8197, 9]])
    with pytest.raises(ValueError, match=r"token id 8197 at index \(1, 1\)"):
        vocab.tokens_to_codes(ids)
    with pytest.raises(ValueError, match=r"index \(0,\)"):
        vocab.tokens_to_codes(torch.tensor([-1, 4]))
    with pytest.raises(ValueError, match="integer"):
        vocab.tokens_to_codes(torch.tensor([4.0]))


def test_codes_to_tokens_rejects_out_of_range(vocab):
    with pytest.raises(ValueError, match=r"image code 8192 at index \(1,\)"):
        vocab.codes_to_tokens(torch.tensor([0, 8192]))
    with pytest.raises(ValueError, match="integer"):
        vocab.codes_to_tokens(torch.tensor([0.5]))


def test_grid_token_out_of_range(vocab):
    with pytest.raises(ValueError, match="outside 1..99"):
        vocab.grid_token(0)
    with pytest.raises(ValueError, match="outside 1..99"):
        vocab.grid_token(100)


def test_missing_tokens_are_named(hf_tokenizer):
    names = dict(hf_tokenizer.get_vocab())
    del names["<racm3:break>"], names["<reserved08799>"], names["IMGIMGBZ"]
    with pytest.raises(ValueError) as err:
        LuminaVocab.from_tokenizer(names)
    msg = str(err.value)
    assert "<racm3:break>" in msg and "<reserved08799>" in msg and "image codes [1]" in msg and "IMGIMGBZ" in msg
    with pytest.raises(ValueError, match="IMGIMG<A..J>Z"):
        LuminaVocab.from_tokenizer({"<s>": 0, "</s>": 1})


def test_bad_tokenizer_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        LuminaVocab.from_tokenizer(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json"):
        LuminaVocab.from_tokenizer(tmp_path)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("not json")
    with pytest.raises(ValueError, match="not a tokenizers JSON"):
        LuminaVocab.from_tokenizer(bad)
    with pytest.raises(ValueError, match="cannot read token names"):
        LuminaVocab.from_tokenizer(42)
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        LuminaVocab.from_tokenizer(LuminaVocab.compact(16, 4).special_token_names(), vocab_size=10)


def test_pad_falls_back_to_eos(hf_tokenizer):
    names = dict(hf_tokenizer.get_vocab())
    del names["<pad>"]
    assert LuminaVocab.from_tokenizer(names).pad_id == names["</s>"]


def test_compact_layout():
    v = LuminaVocab.compact(num_codes=512, max_grid=16, num_text_tokens=100)
    assert (v.pad_id, v.bos_id, v.eos_id, v.eot_id, v.boi_id, v.eoi_id, v.newline_id) == tuple(range(7))
    assert v.grid_token_ids == tuple(range(107, 123))
    assert v.code_token_ids == tuple(range(123, 635))
    assert v.vocab_size == 635
    # a tokenizer built from its names reads back to the same vocabulary
    assert LuminaVocab.from_tokenizer(v.special_token_names()) == v
    with pytest.raises(ValueError, match="num_codes >= 1"):
        LuminaVocab.compact(0, 4)


def test_json_round_trip(vocab):
    for v in (vocab, LuminaVocab.compact(64, 8, 5)):
        d = json.loads(json.dumps(v.to_dict()))
        assert LuminaVocab.from_dict(d) == v
    assert vocab.to_dict()["code_token_ids"] == {"start": 4, "count": 8192}
    shuffled = LuminaVocab.compact(4, 2).to_dict()
    shuffled["code_token_ids"] = [12, 10, 11, 9]
    assert LuminaVocab.from_dict(shuffled).code_token_ids == (12, 10, 11, 9)
    with pytest.raises(ValueError, match="unknown LuminaVocab fields"):
        LuminaVocab.from_dict({**vocab.to_dict(), "extra": 1})
    with pytest.raises(ValueError, match="incomplete"):
        LuminaVocab.from_dict({"bos_id": 0})


def test_invalid_layouts_rejected():
    base = LuminaVocab.compact(8, 2).to_dict()
    with pytest.raises(ValueError, match="num_codes"):
        LuminaVocab.from_dict({**base, "num_codes": 9})
    with pytest.raises(ValueError, match="max_grid"):
        LuminaVocab.from_dict({**base, "max_grid": 3})
    with pytest.raises(ValueError, match="outside the vocabulary"):
        LuminaVocab.from_dict({**base, "vocab_size": 10})
    with pytest.raises(ValueError, match="distinct"):
        LuminaVocab.from_dict({**base, "newline_id": base["eoi_id"]})
