"""Generation: sampling controls, stop tokens, streaming, and the `foresight generate` entry point."""

from __future__ import annotations

import argparse
import io

import pytest
import torch
from gemma2_testing import make_json_tokenizer, random_gemma2

from foresight.lm import Gemma2Config, cpu_decode, generate, generate_stream, save_pretrained
from foresight.lm.generate import TextStreamer, add_generate_arguments, generate_cli, run_generate, select_next_token
from foresight.lm.tokenizer import Gemma2Tokenizer

PROMPT = torch.tensor([[2, 17, 99, 45, 3]])


def test_top_k_1_and_tiny_top_p_equal_greedy(tiny_model):
    greedy = generate(tiny_model, PROMPT, max_new_tokens=12)
    assert torch.equal(generate(tiny_model, PROMPT, max_new_tokens=12, do_sample=True, top_k=1, seed=0), greedy)
    assert torch.equal(generate(tiny_model, PROMPT, max_new_tokens=12, do_sample=True, top_p=1e-6, seed=0), greedy)


# Two layers (one sliding, one global), a window of 4 and few distinct weight shapes (q, o, gate,
# up, down [32, 32]; k, v [16, 32]; head [256, 32]): what the compiled paths must get right, with
# few graphs and reductions to compile.
SMALL = Gemma2Config.tiny(
    num_layers=2, hidden_size=32, intermediate_size=32, num_heads=2, num_kv_heads=1, head_dim=16, sliding_window=4
)
PADDED = torch.tensor([[0, 0, 7, 8, 9, 10, 11], [2, 17, 99, 45, 3, 5, 6]])
PADDED_MASK = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7])
PAST_WINDOW = SMALL.sliding_window + 3  # new tokens: every row decodes past the window


@pytest.mark.slow  # 47 s with a cold inductor cache (its first compile builds ~36 C++ kernels), 6 s warm
def test_compiled_decode_matches_eager_greedy():
    """The compiled static-cache decoder gives the eager tokens: past the window, batch 1 and a
    left-padded batch of 2."""
    model = random_gemma2(SMALL)
    for ids, mask in ((PROMPT, None), (PADDED, PADDED_MASK)):
        eager = generate(model, ids, mask, max_new_tokens=PAST_WINDOW)
        assert torch.equal(generate(model, ids, mask, max_new_tokens=PAST_WINDOW, compile=True), eager)


def test_row_products_match_eager_greedy(monkeypatch, tmp_path):
    """Few-row products as compiled reductions (forced on every weight here; on real sizes
    `cpu_decode` measures which is faster) give the eager tokens, eager and compiled: past the
    window, batch 1 and a left-padded batch of 2."""
    model = random_gemma2(SMALL)
    cases = ((PROMPT, None), (PADDED, PADDED_MASK))
    eager = [generate(model, ids, mask, max_new_tokens=PAST_WINDOW) for ids, mask in cases]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cpu_decode, "_MEASURED", {})
    monkeypatch.setattr(cpu_decode, "_measure", lambda weight, rows, repeats: (2.0, 1.0))  # "the reduction wins"
    for rows in (1, 2):
        assert all(cpu_decode.enable_row_products(model, rows, min_numel=1).values())
    for compile in (False, True):
        for (ids, mask), expected in zip(cases, eager, strict=True):
            # generate's own enable_row_products skips weights this small: the forced choices stay.
            assert torch.equal(generate(model, ids, mask, max_new_tokens=PAST_WINDOW, compile=compile), expected)
    with torch.inference_mode():
        logits = model(PADDED, PADDED_MASK, logits_to_keep=1).logits  # 2 rows at the head: the reduction
        cpu_decode.disable_row_products(model)
        blas = model(PADDED, PADDED_MASK, logits_to_keep=1).logits
    torch.testing.assert_close(logits, blas, rtol=1e-5, atol=1e-5)
    assert not torch.equal(logits, blas)  # the head product really took the reduction path


def test_chunked_prefill_gives_the_one_shot_tokens():
    """A prompt fed 3 tokens per prefill forward (past the window of 4, left-padded) decodes the same."""
    model = random_gemma2(SMALL)
    ids = torch.cat([PADDED, PADDED[:, 2:]], dim=1)  # [2, 12]
    mask = torch.cat([PADDED_MASK, PADDED_MASK[:, 2:]], dim=1)
    one_shot = generate(model, ids, mask, max_new_tokens=PAST_WINDOW, prefill_chunk=12)
    assert torch.equal(generate(model, ids, mask, max_new_tokens=PAST_WINDOW, prefill_chunk=3), one_shot)
    assert torch.equal(generate(model, ids, mask, max_new_tokens=PAST_WINDOW, prefill_chunk=5), one_shot)


def test_seeded_sampling_is_reproducible(tiny_model):
    kw = dict(max_new_tokens=16, do_sample=True, temperature=1.5)
    a = generate(tiny_model, PROMPT, seed=1, **kw)
    b = generate(tiny_model, PROMPT, seed=1, **kw)
    c = generate(tiny_model, PROMPT, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[4.0, 3.0, 2.0, -1.0, -2.0]])
    g = torch.Generator().manual_seed(0)
    draws = {int(select_next_token(logits, do_sample=True, top_k=2, generator=g)) for _ in range(200)}
    assert draws == {0, 1}
    # probs ~ [0.66, 0.24, 0.09, ...]: top_p = 0.8 keeps the two tokens needed to reach 0.8.
    draws = {int(select_next_token(logits, do_sample=True, top_p=0.8, generator=g)) for _ in range(200)}
    assert draws == {0, 1}
    with pytest.raises(ValueError, match="temperature must be > 0 when sampling, got 0"):
        select_next_token(logits, do_sample=True, temperature=0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 1.5"):
        select_next_token(logits, do_sample=True, top_p=1.5)


def test_stop_tokens_end_rows_and_pad_them(tiny_model):
    free = generate(tiny_model, PROMPT.repeat(2, 1), max_new_tokens=10)
    stop = int(free[0, PROMPT.shape[1] + 3])  # the 4th generated token
    first_hit = (free[0, PROMPT.shape[1] :] == stop).nonzero()[0, 0]
    out = generate(tiny_model, PROMPT.repeat(2, 1), max_new_tokens=10, stop_token_ids=[stop], pad_token_id=0)
    assert out.shape[1] == PROMPT.shape[1] + first_hit + 1  # every row stopped: the loop ended early
    assert int(out[0, -1]) == stop


def test_streaming_callback_and_iterator_agree(tiny_model):
    seen = []
    out = generate(tiny_model, PROMPT, max_new_tokens=7, streamer=seen.append)
    assert torch.equal(torch.stack(seen, dim=1), out[:, PROMPT.shape[1] :])
    streamed = list(generate_stream(tiny_model, PROMPT, max_new_tokens=7))
    assert torch.equal(torch.stack(streamed, dim=1), out[:, PROMPT.shape[1] :])


def test_prompt_longer_than_max_position_embeddings(tiny_model):
    too_long = torch.zeros(1, 513, dtype=torch.long)
    with pytest.raises(ValueError, match="prompt of 513 tokens is longer than max_position_embeddings=512"):
        generate(tiny_model, too_long, max_new_tokens=1)
    with pytest.raises(ValueError, match=r"prompt \(500\) \+ max_new_tokens \(20\) exceeds"):
        generate(tiny_model, too_long[:, :500], max_new_tokens=20)


def test_token_ids_outside_the_vocabulary_and_empty_prompts_are_refused(tiny_model):
    V = tiny_model.config.vocab_size
    with pytest.raises(ValueError, match=rf"token id {V} in input_ids is outside the vocabulary \[0, {V}\)"):
        tiny_model(torch.tensor([[2, V]]))
    with pytest.raises(ValueError, match=rf"token id -1 in input_ids is outside the vocabulary \[0, {V}\)"):
        tiny_model(torch.tensor([[-1, 5]]))
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, tokens\], got shape \(3,\)"):
        tiny_model(torch.tensor([2, 3, 4]))
    with pytest.raises(ValueError, match=rf"token id {V + 7} in input_ids is outside the vocabulary"):
        generate(tiny_model, torch.tensor([[2, 17, V + 7]]), max_new_tokens=2)
    for empty in (torch.zeros(1, 0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"input_ids must be a non-empty \[batch, tokens\] prompt"):
            generate(tiny_model, empty, max_new_tokens=2)


def test_text_streamer_prints_only_new_text(tmp_path):
    make_json_tokenizer(tmp_path)
    tok = Gemma2Tokenizer.from_pretrained(tmp_path)
    out = io.StringIO()
    streamer = TextStreamer(tok, out=out, skip_ids=[tok.eos_id])
    for i in tok.encode("hello world, the fox", add_bos=False) + [tok.eos_id]:
        streamer(torch.tensor([i]))
    assert out.getvalue() == "hello world, the fox" == streamer.text()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("gemma2-cli")
    save_pretrained(tiny_model, path)
    make_json_tokenizer(path)
    return path


def _args(*argv):
    return add_generate_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_cli_generates_text(checkpoint, capsys):
    code = generate_cli(["--model", str(checkpoint), "--prompt", "hello world", "--max-new-tokens", "5"])
    assert code == 0
    assert len(capsys.readouterr().out) > 1


def test_cli_compile_flag_gives_the_same_greedy_text(checkpoint):
    outs = []
    for extra in ([], ["--compile"]):
        stdout = io.StringIO()
        args = _args("--model", str(checkpoint), "--prompt", "the fox", "--max-new-tokens", "12", *extra)
        assert run_generate(args, stdout=stdout) == 0
        outs.append(stdout.getvalue())
    assert _args("--model", "m", "--compile").compile is True
    assert outs[0] == outs[1] and len(outs[0]) > 1


def test_cli_chat_reads_turns_until_eof(checkpoint):
    stdin, stdout = io.StringIO("hello model\nthe quick fox\n"), io.StringIO()
    args = _args("--model", str(checkpoint), "--chat", "--max-new-tokens", "4", "--temperature", "0.8", "--seed", "3")
    assert run_generate(args, stdin=stdin, stdout=stdout) == 0
    assert stdout.getvalue().count("> ") == 3  # two turns answered, then EOF at the third prompt


def test_cli_reports_errors(checkpoint, tmp_path, capsys):
    assert run_generate(_args("--model", str(checkpoint))) == 2  # neither --prompt nor --chat
    assert run_generate(_args("--model", str(tmp_path), "--prompt", "hi")) == 1
    assert "no config.json" in capsys.readouterr().err
    long_prompt = "the quick brown fox " * 200
    assert run_generate(_args("--model", str(checkpoint), "--prompt", long_prompt, "--max-new-tokens", "1")) == 1
    assert "longer than max_position_embeddings" in capsys.readouterr().err
