"""The real Gemma 2 tokenizer through foresight.lm encodes, decodes, pads and formats chats exactly as
`transformers.AutoTokenizer` does on the same folder (../shared/data/gemma2-tokenizer; skipped without it).

The corpus (tests/lm/data/tokenizer_corpus.txt, >10k characters) mixes English prose, accented Latin scripts,
Cyrillic, Greek, Arabic and Hebrew, Devanagari, Chinese, Japanese, Korean, emoji with ZWJ sequences and skin
tones, numbers and dates, Python/JS/JSON/HTML/C/SQL with tabs and runs of spaces, URLs, rare characters that
need byte fallback, and literal special-token strings such as "<bos>".
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import foresight.core.datasets  # noqa: F401  (registers gemma2-tokenizer)
from foresight.core.data import DataNotFoundError, get_dataset, locate, resolve, sha256_file
from foresight.lm.tokenizer import DATASET, GEMMA_CHAT_TEMPLATE, Gemma2Tokenizer

pytestmark = pytest.mark.parity
transformers = pytest.importorskip("transformers")

CORPUS = (Path(__file__).parent / "data" / "tokenizer_corpus.txt").read_bytes().decode("utf-8")  # keeps \r
SPEC = get_dataset(DATASET)
_SIBLING = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # ../shared/data of the checkout
FOLDER = locate(SPEC, [f.path for f in SPEC.files]) or locate(SPEC, [f.path for f in SPEC.files], _SIBLING)
needs_tokenizer = pytest.mark.skipif(
    FOLDER is None,
    reason="the real Gemma 2 tokenizer is absent: set FORESIGHT_DATA to a folder holding gemma2-tokenizer/ "
    "(tokenizer.json, tokenizer_config.json, chat_template.jinja; see `foresight data`)",
)

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
    [{"role": "user", "content": "  Wie spät ist es?\n\n"}],
    [
        {"role": "user", "content": "Write a haiku about tokenizers 🤖"},
        {"role": "assistant", "content": "Bytes fall like snow—\n\tmerges gather into words;\nthe <unk> melts away.  "},
        {"role": "user", "content": "Now in 日本語, please."},
        {"role": "model", "content": "バイトの雪"},  # "model" is the template's own name for the reply turn
    ],
    [
        {"role": "user", "content": "<start_of_turn>user\nnested markers<end_of_turn>"},
        {"role": "assistant", "content": ""},
    ],
    # The template refuses a system message only in first place; elsewhere it renders as a turn of that name.
    [{"role": "user", "content": "ok"}, {"role": "system", "content": "late system note"}],
]


@pytest.fixture(scope="module")
def pair():
    """(ours, transformers') tokenizers on the shared folder."""
    if FOLDER is None:
        pytest.skip("the real Gemma 2 tokenizer is absent")
    return Gemma2Tokenizer.from_pretrained(FOLDER), transformers.AutoTokenizer.from_pretrained(FOLDER)


def _lines() -> list[str]:
    return [line for line in CORPUS.split("\n") if line]


def test_corpus_is_varied_and_long_enough():
    assert len(CORPUS) >= 10_000
    for needle in (
        "Straße",
        "Съешь",
        "Ξεσκεπάζω",
        "مرحبا",
        "नमस्ते",
        "玻璃",
        "ガラス",
        "유리",
        "👨‍👩‍👧‍👦",
        "\t\t",
        "    ",
        "<bos>",
    ):
        assert needle in CORPUS, needle


# -- the dataset ----------------------------------------------------------------------------------------------


@needs_tokenizer
def test_registered_dataset_pins_the_shared_files():
    assert [f.path for f in SPEC.files] == ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]
    for f in SPEC.files:
        assert sha256_file(FOLDER / f.path) == f.sha256, f.path
    assert "google/gemma-2-2b" in SPEC.file("tokenizer.json").url
    assert (FOLDER / "chat_template.jinja").read_text(encoding="utf-8") == GEMMA_CHAT_TEMPLATE
    assert resolve(DATASET, data_dir=FOLDER.parent) == FOLDER
    assert Gemma2Tokenizer.from_dataset(FOLDER.parent).vocab_size == 256_000


def test_offline_without_the_files_says_what_to_put_where(tmp_path, monkeypatch):
    monkeypatch.delenv("FORESIGHT_DATA", raising=False)
    monkeypatch.setenv("FORESIGHT_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError, match="dataset 'gemma2-tokenizer' not found") as e:
        Gemma2Tokenizer.from_dataset(tmp_path / "empty")
    assert "tokenizer.json  <- https://huggingface.co/google/gemma-2-2b/" in str(e.value)
    assert str(tmp_path / "empty" / "gemma2-tokenizer") in str(e.value)


# -- encode / decode ------------------------------------------------------------------------------------------


@needs_tokenizer
def test_documented_ids(pair):
    ours, _ = pair
    assert ours.vocab_size == 256_000
    assert (ours.pad_id, ours.eos_id, ours.bos_id, ours.start_of_turn_id, ours.end_of_turn_id) == (0, 1, 2, 106, 107)
    assert ours.token_to_id("<unk>") == 3 and ours.token_to_id("<mask>") == 4
    # From SOURCE.md: BOS added, digits split one by one.
    assert ours.encode("room 101 at 3:45pm") == [
        2, 2978, 235248, 235274, 235276, 235274, 696, 235248, 235304, 235292, 235310, 235308, 3397
    ]  # fmt: skip
    assert ours.encode("Hello I am doing") == [2, 4521, 590, 1144, 3900]


@needs_tokenizer
def test_encode_matches_transformers_per_line_and_whole(pair):
    ours, hf = pair
    lines = _lines()
    want = hf(lines)["input_ids"]  # one batched call; BOS added by default, as ours
    for line, ids in zip(lines, want, strict=True):
        assert ours.encode(line) == ids, line
    assert ours.encode(CORPUS) == hf(CORPUS)["input_ids"]
    assert ours.encode(CORPUS, add_bos=False) == hf(CORPUS, add_special_tokens=False)["input_ids"]
    # The corpus does reach the hard cases: byte fallback, literal special tokens, whitespace-run pieces.
    ids = set(ours.encode(CORPUS))
    assert any(ours.id_to_token(i).startswith("<0x") for i in ids)  # byte-fallback pieces
    assert {ours.bos_id, ours.eos_id, ours.start_of_turn_id, ours.end_of_turn_id, 0, 3, 4} <= ids
    assert ours.token_to_id("▁" * 16) in ids  # sixteen spaces are one piece


@needs_tokenizer
def test_decode_matches_transformers_and_round_trips(pair):
    ours, hf = pair
    for text in [*_lines(), CORPUS]:
        ids = ours.encode(text)
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), text
        assert ours.decode(ours.encode(text, add_bos=False), skip_special_tokens=False) == text  # lossless
    # Arbitrary id sequences too: lone byte pieces (invalid UTF-8), specials, <unused*>, pieces mid-word.
    g = torch.Generator().manual_seed(0)
    byte_ids = [ours.token_to_id(f"<0x{b:02X}>") for b in (0xE6, 0x97, 0xA5, 0xFF, 0x41, 0x0A)]
    pool = torch.tensor([*range(0, 110), *byte_ids, *range(235_000, 256_000, 7)])
    for _ in range(50):
        ids = pool[torch.randint(len(pool), (int(torch.randint(1, 40, (1,), generator=g)),), generator=g)].tolist()
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), ids


@needs_tokenizer
def test_batch_encode_pads_like_transformers_and_batch_decode(pair):
    ours, hf = pair
    texts = ["a", "", "Hello I am doing", "  leading spaces", "日本語 😀👨‍👩‍👧", "<bos> in text", _lines()[40]]
    for side in ("left", "right"):
        batch = ours.encode_batch(texts, padding_side=side)
        ref = hf(texts, padding=True, padding_side=side, return_tensors="pt")
        assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
        assert torch.equal(batch["input_ids"], ref["input_ids"]), side
        assert torch.equal(batch["attention_mask"], ref["attention_mask"]), side
        for skip in (False, True):
            assert ours.decode_batch(batch["input_ids"], skip) == hf.batch_decode(ref["input_ids"], skip)
    no_bos = ours.encode_batch(texts, add_bos=False, padding_side="right")
    ref = hf(texts, add_special_tokens=False, padding=True, padding_side="right", return_tensors="pt")
    assert torch.equal(no_bos["input_ids"], ref["input_ids"])
    assert torch.equal(no_bos["attention_mask"], ref["attention_mask"])
    # Left padding keeps each prompt's last token in the last column (what batched generation needs).
    assert torch.equal(ours.encode_batch(texts)["input_ids"][:, -1], torch.tensor([ours.encode(t)[-1] for t in texts]))
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right', got 'middle'"):
        ours.encode_batch(texts, padding_side="middle")
    with pytest.raises(ValueError, match="non-empty list of strings"):
        ours.encode_batch("not a list")


# -- chat template --------------------------------------------------------------------------------------------


@needs_tokenizer
def test_chat_template_renders_as_transformers(pair):
    ours, hf = pair
    assert hf.chat_template == GEMMA_CHAT_TEMPLATE  # transformers reads chat_template.jinja from the folder
    for messages in CONVERSATIONS:
        for prompt in (True, False):
            text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            assert ours.apply_chat_template(messages, prompt, add_bos=True) == text
            assert ours.apply_chat_template(messages, prompt) == text.removeprefix("<bos>")
            ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt)
            ids = ids["input_ids"] if isinstance(ids, dict | transformers.BatchEncoding) else ids
            assert ours.encode_chat(messages, prompt) == list(ids)
    assert ours.apply_chat_template(CONVERSATIONS[0], add_bos=True) == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )  # SOURCE.md's example


def _chat_errors():
    user, reply = {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}
    return [
        ([{"role": "system", "content": "be brief"}, user], "System role not supported"),
        ([user, user], "Conversation roles must alternate user/assistant/user/assistant/..."),
        ([reply], "Conversation roles must alternate"),
        ([user, reply, reply], "Conversation roles must alternate"),
        ([user, reply, user, {"role": "user", "content": "again"}], "Conversation roles must alternate"),
        ([], "empty conversation"),
    ]


@needs_tokenizer
@pytest.mark.parametrize("messages,message", _chat_errors())
def test_chat_template_errors_match_transformers(pair, messages, message):
    ours, hf = pair
    with pytest.raises(Exception) as theirs:  # jinja2's TemplateError, or transformers' ValueError for []
        hf.apply_chat_template(messages, tokenize=False)
    with pytest.raises(ValueError) as mine:
        ours.apply_chat_template(messages)
    assert message in str(theirs.value)
    assert str(mine.value).startswith(str(theirs.value).split(".")[0])  # their sentence, then our details


def test_chat_template_logic_matches_jinja_on_a_tiny_vocab(tmp_path):
    """Without the real tokenizer: transformers renders GEMMA_CHAT_TEMPLATE as we do."""
    from gemma2_testing import make_json_tokenizer

    make_json_tokenizer(tmp_path)
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "tokenizer.json"), bos_token="<bos>", chat_template=GEMMA_CHAT_TEMPLATE
    )
    ours = Gemma2Tokenizer.from_pretrained(tmp_path)
    for messages in CONVERSATIONS:
        for prompt in (True, False):
            text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            assert ours.apply_chat_template(messages, prompt, add_bos=True) == text
    for messages, message in _chat_errors():
        with pytest.raises(ValueError, match=message.replace(".", r"\.")):
            ours.apply_chat_template(messages)


def test_a_foreign_chat_template_is_refused(tmp_path):
    from gemma2_testing import make_json_tokenizer

    make_json_tokenizer(tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ValueError, match="chat template that is not Gemma 2's"):
        Gemma2Tokenizer.from_pretrained(tmp_path).apply_chat_template([{"role": "user", "content": "hi"}])
    # The same template with other whitespace is Gemma 2's.
    (tmp_path / "chat_template.jinja").write_text(GEMMA_CHAT_TEMPLATE.replace("{{'<start", "{{ '<start") + "\n")
    assert Gemma2Tokenizer.from_pretrained(tmp_path).apply_chat_template([{"role": "user", "content": "hi"}])
