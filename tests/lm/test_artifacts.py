"""`foresight train-lm` writes a drop-in transformers artifact: model/ loads in AutoTokenizer with our ids
(<bos> first, no <unk> for spaces, Gemma chat tokens and template) and in AutoModelForCausalLM with our
logits, and it generates past its training windows."""

from __future__ import annotations

import argparse
import io
import json

import pytest
import torch

from foresight.lm import generate, load_pretrained, train_cli
from foresight.lm.text_data import (
    BOS_ID,
    CHAT_TOKENS,
    END_OF_TURN_ID,
    START_OF_TURN_ID,
    UNK_ID,
    save_hf_tokenizer,
    tokenizer_sha256,
)
from foresight.lm.tokenizer import GEMMA_CHAT_TEMPLATE, Gemma2Tokenizer

transformers = pytest.importorskip("transformers")

SEQ_LEN = 16
CORPUS = "".join(
    f"Line {i}: the cat  sat on the mat,\tthe dog on the log. Ünïcödé {i * 7 % 13} — naïve café; 猫 {i}!\n"
    for i in range(300)
)
SAMPLES = [
    "the cat sat on the mat",
    "  two leading spaces and a trailing one ",
    "tabs\tand\nnewlines\n\n",
    "unseen bytes: Ωmega, 日本語, emoji 👩‍💻, and \x01 control",
    "text that looks special: <bos> <start_of_turn>user",
]
CHAT = [
    {"role": "user", "content": " Hello there "},
    {"role": "assistant", "content": "General Kenobi."},
    {"role": "user", "content": "What is on the mat?"},
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("artifact")
    (d / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    out = d / "lm"
    args = ["train-lm", "--corpus", str(d / "corpus.txt"), "--out", str(out), "--vocab-size", "300"]
    args += ["--seq-len", str(SEQ_LEN), "--batch-size", "4", "--steps", "2", "--warmup-steps", "1"]
    args += ["--eval-every", "0", "--eval-batches", "1", "--precision", "fp32", "--device", "cpu"]
    args += ["--model-set", "num_layers=2", "--model-set", "hidden_size=32", "--no-progress", "--threads", "1"]
    args += ["--distributed", "none"]
    assert train_cli.main(args) == 0
    return out


@pytest.fixture(scope="module")
def tokenizers_pair(run_dir):
    return Gemma2Tokenizer.from_pretrained(run_dir / "model"), transformers.AutoTokenizer.from_pretrained(
        run_dir / "model"
    )


def test_autotokenizer_gives_our_ids_with_bos_and_no_unk(tokenizers_pair):
    ours, hf = tokenizers_pair
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (2, 1, 0, 3)
    for text in SAMPLES:
        ids = ours.encode(text)
        assert hf(text)["input_ids"] == ids, text
        assert hf(text, add_special_tokens=False)["input_ids"] == ours.encode(text, add_bos=False)
        assert ids[0] == BOS_ID and UNK_ID not in ids  # byte-level: spaces and unseen bytes are never <unk>
        assert (
            hf.decode(ids, skip_special_tokens=True)
            == ours.decode(ids)
            == text.replace("<bos> ", " ").replace("<start_of_turn>", "")
        )
        assert hf.decode(ids) == ours.decode(ids, skip_special_tokens=False) == "<bos>" + text
    for side in ("left", "right"):
        batch = ours.encode_batch(SAMPLES, padding_side=side)
        ref = hf(SAMPLES, padding=True, padding_side=side, return_tensors="pt")
        assert torch.equal(batch["input_ids"], ref["input_ids"])
        assert torch.equal(batch["attention_mask"], ref["attention_mask"])
        assert ours.decode_batch(batch["input_ids"]) == hf.batch_decode(ref["input_ids"], skip_special_tokens=True)
    assert hf.padding_side == "left"  # the default, as Gemma's tokenizer


def test_chat_tokens_are_reserved_and_the_template_renders_as_transformers(tokenizers_pair, run_dir):
    ours, hf = tokenizers_pair
    assert (ours.start_of_turn_id, ours.end_of_turn_id) == (START_OF_TURN_ID, END_OF_TURN_ID)
    assert [hf.convert_tokens_to_ids(t) for t in CHAT_TOKENS] == [START_OF_TURN_ID, END_OF_TURN_ID]
    assert hf.chat_template == GEMMA_CHAT_TEMPLATE
    for prompt in (True, False):
        text = hf.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=prompt)
        assert text == ours.apply_chat_template(CHAT, prompt, add_bos=True)
        ids = hf.apply_chat_template(CHAT, tokenize=True, add_generation_prompt=prompt)
        ids = ids["input_ids"] if isinstance(ids, dict | transformers.BatchEncoding) else ids
        assert list(ids) == ours.encode_chat(CHAT, prompt)

    from foresight.lm.generate import add_generate_arguments, run_generate

    parser = add_generate_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--model", str(run_dir / "model"), "--chat", "--max-new-tokens", "4"])
    stdout = io.StringIO()
    assert run_generate(args, stdin=io.StringIO("hello\nand again\n"), stdout=stdout) == 0
    assert stdout.getvalue().count("> ") == 3  # two turns answered, then EOF at the third prompt


def test_model_folder_contents_and_tokenizer_hash(run_dir):
    model_dir = run_dir / "model"
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (config["bos_token"], config["eos_token"], config["pad_token"], config["unk_token"]) == (
        "<bos>",
        "<eos>",
        "<pad>",
        "<unk>",
    )
    assert config["add_bos_token"] is True and config["model_max_length"] == 8192
    assert json.loads((model_dir / "config.json").read_text())["max_position_embeddings"] == 8192
    # model/tokenizer.json adds <bos> itself; the training copy stays as trained, and both hash alike.
    assert json.loads((model_dir / "tokenizer.json").read_text())["post_processor"]["type"] == "TemplateProcessing"
    assert json.loads((run_dir / "tokenizer.json").read_text())["post_processor"] is None
    results = json.loads((run_dir / "results.json").read_text())
    assert tokenizer_sha256(model_dir) == tokenizer_sha256(run_dir / "tokenizer.json") == results["tokenizer_sha256"]


@torch.inference_mode()
def test_automodel_logits_and_greedy_continuation_match_ours(run_dir, tokenizers_pair):
    ours_tok, _ = tokenizers_pair
    model_dir = run_dir / "model"
    ours = load_pretrained(model_dir).eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    assert type(hf).__name__ == "Gemma2ForCausalLM"
    ids = torch.tensor([ours_tok.encode(CORPUS[:200])[: 3 * SEQ_LEN]])  # spans windows and training windows
    assert ids.shape[1] == 3 * SEQ_LEN
    assert (hf(ids).logits - ours(ids).logits).abs().max() <= 1e-5

    # Default generation runs past seq_len: positions are bounded by 8192, not by the training windows,
    # here and in transformers (which reads the same config.json).
    assert ours.config.max_position_embeddings == hf.config.max_position_embeddings == 8192
    prompt = ids[:, :SEQ_LEN]
    got = generate(ours, prompt, max_new_tokens=3 * SEQ_LEN)
    assert got.shape == (1, 4 * SEQ_LEN)
    want = hf.generate(prompt, max_new_tokens=3 * SEQ_LEN, do_sample=False)
    assert torch.equal(got[:, : want.shape[1]], want)  # transformers stops at <eos> as we do


def test_save_hf_tokenizer_without_chat_tokens_or_bos(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=["<pad>", "<eos>"], show_progress=False)
    tok.train_from_iterator(["a plain corpus with no bos token\n"] * 20, trainer)
    tok.save(str(tmp_path / "plain.json"))
    save_hf_tokenizer(tmp_path / "plain.json", tmp_path / "out", model_max_length=64)
    config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert "chat_template" not in config and "bos_token" not in config and config["add_bos_token"] is False
    assert json.loads((tmp_path / "out" / "tokenizer.json").read_text())["post_processor"] is None
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert hf("a plain corpus")["input_ids"] == tok.encode("a plain corpus").ids
    with pytest.raises(ValueError, match="no <start_of_turn> token"):
        Gemma2Tokenizer.from_pretrained(tmp_path / "out").encode_chat([{"role": "user", "content": "hi"}])


def test_tiny_preset_positions_do_not_follow_seq_len():
    def config(seq_len, *sets):
        args = argparse.Namespace(preset="tiny", seq_len=seq_len, model_set=list(sets))
        return train_cli._model_config(args, vocab_size=300)

    assert config(16).max_position_embeddings == 8192 and config(16).sliding_window == 8
    assert config(10_000).max_position_embeddings == 10_000  # never below the training windows
    assert config(16, "max_position_embeddings=64").max_position_embeddings == 64  # --model-set still wins
