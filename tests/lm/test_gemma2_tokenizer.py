"""Tokenizer: tokenizer.json and tokenizer.model backends, special ids, Gemma chat template."""

from __future__ import annotations

import json

import pytest
from gemma2_testing import make_json_tokenizer, make_sentencepiece_tokenizer

from foresight.lm import Gemma2Config
from foresight.lm.hf_io import check_tokenizer_compatible
from foresight.lm.tokenizer import Gemma2Tokenizer


@pytest.fixture(params=["json", "sentencepiece"])
def tokenizer_dir(request, tmp_path):
    if request.param == "json":
        make_json_tokenizer(tmp_path)
    else:
        make_sentencepiece_tokenizer(tmp_path)
    return tmp_path


def test_special_ids_and_round_trip(tokenizer_dir):
    tok = Gemma2Tokenizer.from_pretrained(tokenizer_dir)
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)  # Gemma's layout
    assert tok.start_of_turn_id is not None and tok.end_of_turn_id is not None
    text = "hello world, the quick fox"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and tok.bos_id not in ids[1:]
    assert tok.decode(ids) == text  # <bos> skipped
    assert tok.encode(text, add_bos=False) == ids[1:]
    assert "<bos>" in tok.decode(ids, skip_special_tokens=False)
    assert tok.token_to_id("<definitely-not-a-token>") is None


def test_chat_template_matches_gemma_format(tokenizer_dir):
    tok = Gemma2Tokenizer.from_pretrained(tokenizer_dir)
    messages = [
        {"role": "user", "content": "hello model "},
        {"role": "assistant", "content": "hello user"},
        {"role": "user", "content": "what is the capital of France?"},
    ]
    text = tok.apply_chat_template(messages)
    assert text == (
        "<start_of_turn>user\nhello model<end_of_turn>\n"
        "<start_of_turn>model\nhello user<end_of_turn>\n"
        "<start_of_turn>user\nwhat is the capital of France?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    ids = tok.encode_chat(messages)
    assert ids[0] == tok.bos_id
    assert ids[1] == tok.start_of_turn_id  # special tokens in the text become single ids
    assert ids.count(tok.start_of_turn_id) == 4 and ids.count(tok.end_of_turn_id) == 3
    assert tok.decode(ids, skip_special_tokens=False).replace("<bos>", "") == text
    with pytest.raises(ValueError, match="role 'system'; Gemma 2 supports only user/assistant"):
        tok.apply_chat_template([{"role": "system", "content": "be nice"}])
    with pytest.raises(ValueError, match="roles must alternate"):
        tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_special_token_strings_come_from_tokenizer_config(tmp_path):
    make_json_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": {"content": "<start_of_turn>"}, "eos_token": "<end_of_turn>"})
    )
    tok = Gemma2Tokenizer.from_pretrained(tmp_path)
    assert tok.bos_id == tok.start_of_turn_id and tok.eos_id == tok.end_of_turn_id


def test_missing_or_bad_tokenizer_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or tokenizer.model"):
        Gemma2Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read tokenizer"):
        Gemma2Tokenizer.from_pretrained(tmp_path)


def test_tokenizer_vocab_mismatch_is_an_error(tmp_path):
    make_json_tokenizer(tmp_path, vocab_size=120)
    tok = Gemma2Tokenizer.from_pretrained(tmp_path)
    check_tokenizer_compatible(tok, Gemma2Config.tiny())  # 120 <= 256: fine
    with pytest.raises(ValueError, match="tokenizer/vocab mismatch: the tokenizer has 120 tokens but the model"):
        check_tokenizer_compatible(tok, Gemma2Config.tiny(vocab_size=100))
