import json
import os

import numpy as np
import pytest

from foresight.core.data import get_dataset, sha256_file
from foresight.lm.text_data import (
    EOS_ID,
    SPECIAL_TOKENS,
    PackedSequences,
    ShuffledOrder,
    TokenFile,
    builtin_corpus,
    load_corpus,
    load_tokenizer,
    prepare_text_data,
    split_train_val,
    token_dtype,
    tokenizer_sha256,
    train_tokenizer,
    write_token_file,
)

TEXT = "The quick brown fox jumps over the lazy dog.\nA stitch in time saves nine.\n\n" * 40


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return train_tokenizer([TEXT], 300, path), path


# -- corpora -----------------------------------------------------------------------------------


def test_builtin_corpus_is_stdlib_docstrings_capped_and_deterministic():
    docs = builtin_corpus(max_chars=50_000)
    assert sum(map(len, docs)) == 50_000
    assert docs == builtin_corpus(max_chars=50_000)
    assert all(d.strip() for d in docs)
    assert "Return" in "".join(docs)  # docstring prose, not code


def test_load_corpus_file_folder_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "b.md").write_text("beta\n")
    (tmp_path / ".hidden").write_text("secret\n")
    (tmp_path / "blob.bin").write_bytes(b"\xff\xfe\x00\x80")
    assert load_corpus(tmp_path / "a.txt") == ["alpha\n"]
    assert load_corpus(tmp_path) == ["alpha\n", "beta\n"]  # sorted; hidden and binary files skipped
    with pytest.raises(ValueError, match="nope"):
        load_corpus(tmp_path / "nope")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(tmp_path / "empty.txt")
    empty_dir = tmp_path / "void"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match="no UTF-8 text"):
        load_corpus(empty_dir)


def test_tinyshakespeare_is_registered_with_the_pinned_commit_and_shared_hash():
    spec = get_dataset("tinyshakespeare")
    f = spec.file("input.txt")
    assert "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e" in f.url
    data_dir = os.environ.get("FORESIGHT_DATA", "")
    shared = os.path.join(data_dir, "tinyshakespeare", "input.txt")
    if not data_dir or not os.path.exists(shared):
        pytest.skip("FORESIGHT_DATA does not hold tinyshakespeare")
    assert sha256_file(shared) == f.sha256
    docs = load_corpus("tinyshakespeare", data_dir=data_dir)
    assert docs[0].startswith("First Citizen:\nBefore we proceed any further, hear me speak.")


# -- tokenizer ---------------------------------------------------------------------------------


def test_tokenizer_specials_roundtrip_and_determinism(tokenizer, tmp_path):
    tok, path = tokenizer
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert tok.get_vocab_size() == 300
    text = "The lazy fox, ünïcödé & tabs\t!"
    assert tok.decode(tok.encode(text).ids) == text  # byte-level: any text round-trips
    again = train_tokenizer([TEXT], 300, tmp_path / "again.json")
    assert tokenizer_sha256(again) == tokenizer_sha256(path)
    assert tokenizer_sha256(load_tokenizer(path)) == tokenizer_sha256(path)


def test_tokenizer_hash_ignores_formatting_but_not_content(tokenizer, tmp_path):
    tok, path = tokenizer
    compact = tmp_path / "compact.json"
    compact.write_text(json.dumps(json.loads(path.read_text())))
    assert tokenizer_sha256(compact) == tokenizer_sha256(path)
    other = train_tokenizer([TEXT], 290)
    assert tokenizer_sha256(other) != tokenizer_sha256(path)


def test_train_tokenizer_rejects_tiny_vocab():
    with pytest.raises(ValueError, match="vocab_size must be an int >= 262"):
        train_tokenizer([TEXT], 100)


# -- token files -------------------------------------------------------------------------------


def test_token_file_is_memmap_with_eos_after_each_doc(tokenizer, tmp_path):
    tok, _ = tokenizer
    docs = ["hello world\n", "the dog\n"]
    tf = write_token_file(docs, tok, tmp_path / "tokens.bin", note="x")
    ids = tf.tokens
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16
    expected = tok.encode(docs[0]).ids + [EOS_ID] + tok.encode(docs[1]).ids + [EOS_ID]
    assert ids.tolist() == expected
    again = TokenFile.open(tmp_path / "tokens.bin")
    assert again.meta["note"] == "x" and again.meta["n_tokens"] == len(expected)
    with open(tmp_path / "tokens.bin", "ab") as f:  # a truncated/extended file is detected
        f.write(b"\0\0")
    with pytest.raises(ValueError, match="bytes, expected"):
        TokenFile.open(tmp_path / "tokens.bin")


def test_token_dtype_widens_past_uint16():
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    assert token_dtype(256_000) == np.uint32


def test_split_is_contiguous_and_checked():
    tokens = np.arange(100)
    train, val = split_train_val(tokens, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    with pytest.raises(ValueError, match="val_fraction must be in"):
        split_train_val(tokens, 1.0)


# -- packing and order -------------------------------------------------------------------------


def test_packed_windows_overlap_by_one_and_shift_targets():
    seqs = PackedSequences(np.arange(10), seq_len=3)
    assert len(seqs) == 3  # (10 - 1) // 3
    assert seqs.window(1).tolist() == [3, 4, 5, 6]
    x, y = seqs.batch([2, 0])
    assert x.tolist() == [[6, 7, 8], [0, 1, 2]]
    assert y.tolist() == [[7, 8, 9], [1, 2, 3]]
    with pytest.raises(IndexError):
        seqs.window(3)
    with pytest.raises(ValueError, match="too few"):
        PackedSequences(np.arange(4), seq_len=4)


def test_shuffled_order_is_a_pure_function_of_seed_and_position():
    order = ShuffledOrder(7, seed=3)
    stream = order.take(0, 21)
    for e in range(3):  # every epoch is a permutation
        assert sorted(stream[7 * e : 7 * e + 7].tolist()) == list(range(7))
    assert stream[:7].tolist() != stream[7:14].tolist()  # reshuffled each epoch
    fresh = ShuffledOrder(7, seed=3)  # resuming at position 5 needs nothing but the position
    assert fresh.take(5, 10).tolist() == stream[5:15].tolist()
    assert ShuffledOrder(7, seed=4).take(0, 7).tolist() != stream[:7].tolist()
    assert ShuffledOrder(7, seed=3, shuffle=False).take(5, 4).tolist() == [5, 6, 0, 1]


def test_prepare_text_data_caches_and_rebuilds_on_new_tokenizer(tmp_path, tokenizer):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    out = tmp_path / "out"
    data = prepare_text_data(corpus, out, vocab_size=280, seq_len=16, val_fraction=0.2)
    assert data.vocab_size == 280 and (out / "tokenizer.json").is_file()
    n = len(data.tokens)
    assert len(data.train.tokens) == round(n * 0.8)
    mtime = (out / "tokens.bin").stat().st_mtime_ns
    again = prepare_text_data(corpus, out, vocab_size=280, seq_len=16, val_fraction=0.2)
    assert (out / "tokens.bin").stat().st_mtime_ns == mtime  # reused, not re-tokenised
    assert np.array_equal(again.tokens, data.tokens)
    _, tok_path = tokenizer  # another tokenizer: the token file is stale and rebuilt
    third = prepare_text_data(corpus, out, seq_len=16, tokenizer_path=tok_path)
    assert third.vocab_size == 300 and third.tokenizer_sha256 == tokenizer_sha256(tok_path)
    assert TokenFile.open(out / "tokens.bin").meta["tokenizer_sha256"] == third.tokenizer_sha256


def test_tinyshakespeare_resolves_in_a_fresh_process():
    """The spec lives in foresight.core.datasets; text_data must register it before it resolves."""
    import subprocess
    import sys

    code = "from foresight.lm.text_data import pick_corpus; print(pick_corpus('auto')[0])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("tinyshakespeare", "builtin")
