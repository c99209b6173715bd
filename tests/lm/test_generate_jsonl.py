"""`foresight generate --input prompts.jsonl --output out.jsonl` and the new decoding-control flags."""

from __future__ import annotations

import argparse
import io
import json
import re

import pytest
import torch
from gemma2_testing import make_json_tokenizer, random_gemma2

from foresight.lm import Gemma2Config, load_pretrained, save_pretrained
from foresight.lm.generate import add_generate_arguments, complete, default_stop_token_ids, run_generate
from foresight.lm.sampling import GenerationConfig
from foresight.lm.tokenizer import Gemma2Tokenizer

LINES = [
    {"prompt": "the quick brown"},
    {"id": "b", "prompt": "hello world", "max_new_tokens": 5, "logprobs": 2},
    {"messages": [{"role": "user", "content": "what is the capital"}], "temperature": 0.8, "seed": 3, "stop": ["a"]},
    {"prompt": "the fox", "repetition_penalty": 1.5, "min_p": 0.1, "temperature": 0.7, "seed": 1},
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma2-jsonl")
    make_json_tokenizer(path)
    vocab = Gemma2Tokenizer.from_pretrained(path).vocab_size
    save_pretrained(random_gemma2(Gemma2Config.tiny(vocab_size=vocab, tie_word_embeddings=False)), path)
    return path


def _args(*argv):
    return add_generate_arguments(argparse.ArgumentParser()).parse_args([str(a) for a in argv])


def _write(path, lines) -> None:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


def test_jsonl_batches_give_what_each_prompt_gets_alone(checkpoint, tmp_path):
    """Four lines with their own controls, in batches of 3 (left-padded): each output line equals
    `complete` on that prompt alone (seeded lines included), in input order, logprobs when asked."""
    _write(tmp_path / "in.jsonl", [LINES[0], "", *LINES[1:]])  # a blank line is skipped
    out = tmp_path / "out.jsonl"
    args = _args("--model", checkpoint, "--input", tmp_path / "in.jsonl", "--output", out)
    args.max_new_tokens, args.batch_size = 12, 3
    assert run_generate(args) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["index"] for g in got] == [0, 1, 2, 3] and got[1]["id"] == "b"

    model, tok = load_pretrained(checkpoint), Gemma2Tokenizer.from_pretrained(checkpoint)
    base = GenerationConfig(max_new_tokens=12, stop_token_ids=default_stop_token_ids(model, tok))
    for line, g in zip(LINES, got, strict=True):
        options = {k: v for k, v in line.items() if k not in ("prompt", "messages", "id")}
        if "stop" in options:
            options["stop"] = tuple(options["stop"])
        config = GenerationConfig.from_options(options, base)
        ids = tok.encode(line["prompt"]) if "prompt" in line else tok.encode_chat(line["messages"])
        alone = complete(model, tok, [ids], config)[0]
        assert g["text"] == alone.text and g["tokens"] == list(alone.token_ids)
        assert g["finish_reason"] == alone.finish_reason and g["prompt_tokens"] == len(ids)
        assert g["completion_tokens"] == len(g["tokens"])
        assert ("logprobs" in g) == ("logprobs" in line)
    assert got[1]["finish_reason"] == "length" and len(got[1]["tokens"]) == 5
    assert got[2]["finish_reason"] == "stop" and "a" not in got[2]["text"]  # sampled, cut at its stop string
    for entry, token in zip(got[1]["logprobs"], got[1]["tokens"], strict=True):
        assert entry["token"] == token and len(entry["top_logprobs"]) == 2 and entry["logprob"] <= 0


def test_jsonl_with_a_draft_model_gives_the_same_lines(checkpoint, tmp_path, capsys):
    _write(tmp_path / "in.jsonl", [LINES[0], LINES[1]])
    outs = []
    for extra in ([], ["--draft", checkpoint, "--num-draft-tokens", 3]):
        out = tmp_path / f"out{len(extra)}.jsonl"
        args = _args("--model", checkpoint, "--input", tmp_path / "in.jsonl", "--output", out, *extra)
        args.max_new_tokens = 10
        assert run_generate(args) == 0
        outs.append([json.loads(line) for line in out.read_text().splitlines()])
    for plain, spec in zip(*outs, strict=True):
        lp = [(e.pop("logprob"), [t.pop("logprob") for t in e["top_logprobs"]]) for e in plain.get("logprobs", [])]
        lp_spec = [(e.pop("logprob"), [t.pop("logprob") for t in e["top_logprobs"]]) for e in spec.get("logprobs", [])]
        assert plain == spec  # text, tokens, finish reasons, logprob token ids
        torch.testing.assert_close(torch.tensor([a for a, _ in lp]), torch.tensor([a for a, _ in lp_spec]))
        torch.testing.assert_close(torch.tensor([b for _, b in lp]), torch.tensor([b for _, b in lp_spec]))
    assert "acceptance rate 1.000 with 3 draft tokens per round" in capsys.readouterr().err


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "hi", "top_n": 3}', r"line 2: unknown generation option\(s\) \['top_n'\]"),
        ('{"prompt": "hi", "min_p": 2}', r"line 2: min_p must be in \[0, 1\], got 2"),
        ('{"prompt": "hi"', "line 2: not valid JSON"),
        ('{"text": "hi"}', r"line 2: give exactly one of 'prompt' \(text\) or 'messages' \(a chat\)"),
        ('["hi"]', "line 2: expected a JSON object"),
        ('{"prompt": "hi", "max_new_tokens": 600}', "prompt 1: 3 prompt tokens \\+ max_new_tokens 600 exceed"),
        ('{"messages": [{"role": "system", "content": "x"}]}', "line 2: "),
    ],
)
def test_jsonl_bad_lines_fail_before_generating(checkpoint, tmp_path, capsys, line, message):
    _write(tmp_path / "in.jsonl", [LINES[0], line])
    out = tmp_path / "out.jsonl"
    assert run_generate(_args("--model", checkpoint, "--input", tmp_path / "in.jsonl", "--output", out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert not out.exists()


def test_cli_flag_errors(checkpoint, tmp_path, capsys):
    cases = [
        (["--prompt", "hi", "--min-p", "2"], r"min_p must be in [0, 1], got 2.0"),
        (["--prompt", "hi", "--repetition-penalty", "0"], "repetition_penalty must be > 0 (1 = off), got 0.0"),
        (["--prompt", "hi", "--max-time", "-1"], "max_time must be > 0 seconds (None = no limit), got -1.0"),
        (["--prompt", "hi", "--logprobs", "3"], "--logprobs needs --input"),
        (["--prompt", "hi", "--draft", checkpoint, "--num-draft-tokens", "0"], "num_tokens (draft tokens per round)"),
        (["--input", tmp_path / "x.jsonl"], "--input and --output go together"),
        (["--input", tmp_path / "x.jsonl", "--output", tmp_path / "o.jsonl"], "cannot read --input"),
    ]
    for argv, message in cases:
        assert run_generate(_args("--model", checkpoint, *argv)) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_cli_prompt_with_stop_string_and_controls(checkpoint):
    """--prompt streams the reply; --stop cuts it (the stop string is not printed); the new flags run."""

    def run(*extra) -> str:
        stdout = io.StringIO()
        args = _args("--model", checkpoint, "--prompt", "the quick", "--max-new-tokens", "16", *extra)
        assert run_generate(args, stdout=stdout) == 0
        return stdout.getvalue()

    free = run()
    stop = free.strip("\n")[3:5]
    assert len(stop) == 2
    assert run("--stop", "zzz", "--stop", stop) == free[: free.index(stop)] + "\n"
    run("--temperature", "0.8", "--min-p", "0.1", "--repetition-penalty", "1.3", "--max-time", "5", "--seed", "0")
    assert run("--draft", checkpoint, "--num-draft-tokens", "2") == free
