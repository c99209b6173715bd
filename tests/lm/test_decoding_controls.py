"""Decoding controls: each logits processor vs its transformers twin on identical logits, stop strings
across token boundaries, max_time, logprobs vs a direct forward pass, per-row configs."""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path

import pytest
import torch
from gemma2_testing import hf_twin, make_json_tokenizer, random_gemma2

from foresight.lm import Gemma2Config, generate
from foresight.lm.completion import Reply
from foresight.lm.generate import complete, generate_steps
from foresight.lm.sampling import (
    GenerationConfig,
    History,
    apply_presence_frequency_penalties,
    apply_repetition_penalty,
    apply_temperature,
    min_p_filter,
    process_logits,
    seen_mask,
    top_k_filter,
    top_p_filter,
)
from foresight.lm.speculative import Drafter
from foresight.lm.tokenizer import Gemma2Tokenizer

transformers = pytest.importorskip("transformers")
lm_generate = importlib.import_module("foresight.lm.generate")  # the package re-exports a function of that name

UNTIED = Gemma2Config.tiny(tie_word_embeddings=False)  # a random tied model mostly repeats its last token
PROMPT = torch.tensor([[2, 17, 99, 45, 3]])


@pytest.fixture(scope="module")
def model():
    return random_gemma2(UNTIED)


def random_logits(B=6, V=300, seed=0) -> torch.Tensor:
    """Logits with spread, negatives, exact ties and a -inf (already filtered) entry per row."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, V, generator=g) * torch.tensor([0.3, 1.0, 3.0, 8.0, 1.0, 2.0])[:B, None]
    logits[:, 10:14] = logits[:, 10:11]  # ties
    logits[:, 20] = float("-inf")
    return logits


# ---------------------------------------------------------------------------------------------
# Each processor vs transformers, bit for bit
# ---------------------------------------------------------------------------------------------


def test_repetition_penalty_matches_transformers():
    logits = random_logits()
    ids = torch.randint(0, 300, (6, 40), generator=torch.Generator().manual_seed(1))
    for penalty in (0.5, 1.0, 1.3, 2.0):
        expected = transformers.RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
        assert torch.equal(apply_repetition_penalty(logits, seen_mask(ids, 300), penalty), expected)


def test_temperature_top_k_top_p_min_p_match_transformers():
    logits = random_logits()
    ids = torch.zeros(6, 1, dtype=torch.long)
    for t in (0.3, 0.7, 1.5):
        assert torch.equal(apply_temperature(logits, t), transformers.TemperatureLogitsWarper(t)(ids, logits))
    for k in (1, 3, 12, 50, 299, 300, 1000):  # 12: a tie at the k-th place; 1000 > V
        assert torch.equal(top_k_filter(logits, k), transformers.TopKLogitsWarper(k)(ids, logits)), k
    for p in (1e-6, 0.1, 0.5, 0.9, 0.99, 1.0):
        assert torch.equal(top_p_filter(logits, p), transformers.TopPLogitsWarper(p)(ids, logits)), p
    for p in (0.0, 0.01, 0.1, 0.5, 1.0):
        assert torch.equal(min_p_filter(logits, p), transformers.MinPLogitsWarper(p)(ids, logits)), p


def test_process_logits_chains_them_in_transformers_order():
    """Penalty, then temperature -> top-k -> top-p -> min-p: HF generate's processor list."""
    logits = random_logits(seed=3)
    ids = torch.randint(0, 300, (6, 30), generator=torch.Generator().manual_seed(2))
    config = GenerationConfig(do_sample=True, temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.4)
    chain = transformers.LogitsProcessorList(
        [
            transformers.RepetitionPenaltyLogitsProcessor(1.4),
            transformers.TemperatureLogitsWarper(0.7),
            transformers.TopKLogitsWarper(40),
            transformers.TopPLogitsWarper(0.9),
            transformers.MinPLogitsWarper(0.05),
        ]
    )
    assert torch.equal(process_logits(logits, config, seen_mask(ids, 300)), chain(ids, logits.clone()))
    greedy = GenerationConfig(temperature=0.7, top_k=1, repetition_penalty=1.4)  # greedy: only the penalty
    assert torch.equal(process_logits(logits, greedy, seen_mask(ids, 300)), chain[0](ids, logits.clone()))


def test_generation_matches_transformers_generate(model):
    """End to end against `Gemma2ForCausalLM.generate` on the same weights: greedy with a repetition
    penalty, and seeded sampling with every warper (both draw with torch.multinomial on the global RNG)."""
    hf = hf_twin(model)
    hf.generation_config.eos_token_id = None  # ours stops only when asked to
    for kw in (
        dict(do_sample=False, repetition_penalty=1.5),
        dict(do_sample=True, temperature=0.8, top_k=30, top_p=0.9, min_p=0.05, repetition_penalty=1.2),
    ):
        torch.manual_seed(0)
        ours = generate(model, PROMPT, max_new_tokens=24, **kw)
        torch.manual_seed(0)
        with torch.inference_mode():
            theirs = hf.generate(PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=24, **kw)
        assert torch.equal(ours, theirs), kw


def test_bad_values_name_the_value_and_what_is_accepted():
    cases = [
        (dict(repetition_penalty=0), r"repetition_penalty must be > 0 \(1 = off\), got 0"),
        (dict(min_p=1.5), r"min_p must be in \[0, 1\], got 1.5"),
        (dict(top_p=0), r"top_p must be in \(0, 1\], got 0"),
        (dict(top_k=0), r"top_k must be a positive int \(None = off\), got 0"),
        (dict(do_sample=True, temperature=0), "temperature must be > 0 when sampling, got 0"),
        (dict(temperature=-1), "temperature must be a finite number >= 0, got -1"),
        (dict(max_time=0), r"max_time must be > 0 seconds \(None = no limit\), got 0"),
        (dict(logprobs=-1), r"logprobs must be None or an int >= 0 \(alternatives per token\), got -1"),
        (dict(stop=("",)), r"stop must hold non-empty strings, got \(''.\)"),
        (dict(stop_token_ids=(-3,)), r"stop_token_ids must hold token ids \(ints >= 0\), got \(-3,\)"),
        (dict(max_new_tokens=-1), "max_new_tokens must be >= 0, got -1"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            GenerationConfig(**kw)
    with pytest.raises(ValueError, match=r"unknown generation option\(s\) \['top_n'\]; accepted: \["):
        GenerationConfig.from_options({"top_n": 3})
    assert GenerationConfig.from_options({"temperature": 0}).do_sample is False  # 0 = greedy, OpenAI-style
    assert GenerationConfig(stop="\n").stop == ("\n",)
    with pytest.raises(TypeError, match=r"unknown generation option\(s\) \['temprature'\]"):
        generate(random_gemma2(Gemma2Config.tiny(num_layers=1)), PROMPT, temprature=0.5)


# ---------------------------------------------------------------------------------------------
# Stop strings
# ---------------------------------------------------------------------------------------------


class PieceTokenizer:
    """Token i decodes to PIECES[i]; ids 0-2 are special (skipped); 11 and 12 are the two UTF-8 bytes
    of 'é' (byte fallback): alone, each decodes to U+FFFD."""

    PIECES = [
        b"<pad>",
        b"<eos>",
        b"<bos>",
        b"Hel",
        b"lo",
        b" wor",
        b"ld",
        b"!",
        b"\n",
        b"\n\n",
        b"end",
        b"\xc3",
        b"\xa9",
    ]
    special_ids = frozenset({0, 1, 2})

    def decode(self, ids) -> str:
        data = b"".join(self.PIECES[i] for i in ids if i not in self.special_ids)
        return data.decode("utf-8", errors="replace")


def feed(reply: Reply, ids) -> list[int]:
    """Feed ids until the reply reports a stop string; the ids consumed."""
    for n, i in enumerate(ids, start=1):
        if reply.add(i):
            reply.finish("stop")
            return ids[:n]
    reply.finish("length")
    return ids


@pytest.mark.parametrize(
    "ids, stop, text, kept",
    [
        ([3, 4, 5, 6, 7], ("lo w",), "Hel", [3]),  # spans "lo" | " wor": both tokens go
        ([3, 4, 5, 6, 7], ("low",), "Hello world!", [3, 4, 5, 6, 7]),  # never produced
        ([3, 4, 5, 6, 7], ("world", "lo"), "Hel", [3]),  # the earliest stop string wins
        ([3, 4, 8, 5, 9, 10], ("\n\n",), "Hello\n wor", [3, 4, 8, 5]),  # whole token
        ([3, 8, 9], ("\n\n",), "Hel", [3]),  # "\n" | "\n\n": the match starts in the first one
        ([3, 11, 12, 7], ("é!",), "Hel", [3]),  # a character split into byte tokens, then the stop
        ([3, 11, 12, 7], ("lé",), "He", []),  # ... or the stop string starting inside a token
        ([3, 4, 1, 5], ("lo w",), "Hel", [3]),  # a special token between: it has no text, the match spans it
    ],
)
def test_stop_strings_on_token_pieces(ids, stop, text, kept):
    reply = Reply(PieceTokenizer(), stop)
    feed(reply, ids)
    c = reply.completion()
    assert (c.text, list(c.token_ids)) == (text, kept)
    assert c.finish_reason == ("stop" if c.matched_stop else "length")


def test_streamed_text_holds_back_a_possible_stop_string():
    reply = Reply(PieceTokenizer(), ("lo wx",))
    shown = []
    for i in [3, 4, 5, 6]:
        reply.add(i)
        shown.append(reply.stable_text())
    assert shown == ["He", "Hel", "Hello wor", "Hello world"]  # "l", "lo" may begin it; "lo wor" cannot
    reply = Reply(PieceTokenizer())
    reply.add(11)
    assert reply.stable_text() == ""  # half a character waits
    reply.add(12)
    assert reply.stable_text() == "é"


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    d = tmp_path_factory.mktemp("bpe")
    make_json_tokenizer(d)
    return Gemma2Tokenizer.from_pretrained(d)


def test_real_gemma_tokenizer_stop_string_across_tokens():
    """With the real Gemma 2 tokenizer: "Hello world" is two tokens, "o w" spans them."""
    path = Path(os.environ.get("FORESIGHT_DATA", "../shared/data")) / "gemma2-tokenizer"
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"the real Gemma 2 tokenizer is not in {path}")
    tok = Gemma2Tokenizer.from_pretrained(path)
    ids = tok.encode("Hello world, and more", add_bos=False)
    assert [tok.decode([i]) for i in ids[:2]] == ["Hello", " world"]
    reply = Reply(tok, ("o w",))
    feed(reply, ids)
    assert reply.completion().text == "Hell" and reply.completion().token_ids == ()
    # Incremental decoding through byte-fallback tokens (emoji, rare CJK) gives the full decode, and
    # never shows half a character.
    text = "naïve café 🤗 𓀀𐍈 北京欢迎你 x = f(y)\n\tdone  "  # 𓀀 and 𐍈 are 4 byte tokens each
    reply = Reply(tok)
    for i in tok.encode(text, add_bos=False):
        reply.add(i)
        assert "\ufffd" not in reply.stable_text()
    reply.finish("length")
    assert reply.completion().text == text == tok.decode(tok.encode(text))


def test_stop_string_split_across_tokens_end_to_end(bpe):
    """Generate freely, pick a stop string made of the end of one generated token and the start of
    the next, generate again with it: the reply ends before it, the row stops there."""
    model = random_gemma2(Gemma2Config.tiny(vocab_size=bpe.vocab_size, tie_word_embeddings=False))
    prompt = bpe.encode("the quick brown")
    free = complete(model, bpe, [prompt], max_new_tokens=40)[0]
    pieces = [bpe.decode([i]) for i in free.token_ids]
    # The first boundary between two tokens with text, whose 2-character join first occurs there.
    for i in range(len(pieces) - 1):
        a, b = pieces[i], pieces[i + 1]
        if a and b and not any(t in bpe.special_ids for t in free.token_ids[: i + 2]):
            stop = a[-1] + b[0]
            start = len("".join(pieces[:i])) + len(a) - 1
            if free.text.find(stop) == start:
                break
    else:
        pytest.fail(f"no usable token boundary in {pieces}")
    got = complete(model, bpe, [prompt], max_new_tokens=40, stop=stop)[0]
    assert got.text == free.text[:start] and got.finish_reason == "stop" and got.matched_stop == stop
    assert got.token_ids == free.token_ids[:i]  # token i holds the stop string's first character: dropped
    ids = generate(model, torch.tensor([prompt]), max_new_tokens=40, stop=stop, tokenizer=bpe)
    assert ids.shape[1] == len(prompt) + i + 2  # stopped at the token that completed the stop string


# ---------------------------------------------------------------------------------------------
# max_time, logprobs, per-row configs
# ---------------------------------------------------------------------------------------------


def test_max_time_stops_early(model, monkeypatch):
    clock = iter(range(1000))  # each reading of the clock is one second later
    monkeypatch.setattr(lm_generate, "_clock", lambda: float(next(clock)))
    steps = list(generate_steps(model, PROMPT.repeat(2, 1), max_new_tokens=100, max_time=4.5))
    assert len(steps) == 5 and steps[-1].finish_reasons == ["time", "time"]  # 1 s, 2 s, ... 5 s > 4.5 s
    monkeypatch.undo()
    slow = random_gemma2(Gemma2Config.tiny(num_layers=1))
    slow.register_forward_pre_hook(lambda *_: time.sleep(0.01))
    start = time.monotonic()
    out = generate(slow, PROMPT, max_new_tokens=400, max_time=0.2)
    assert time.monotonic() - start < 2 and 5 < out.shape[1] - PROMPT.shape[1] < 60


def test_logprobs_agree_with_a_direct_forward_pass(model):
    """Each step's logprob and top-n are the log-softmax of the processed distribution at that
    position, recomputed here from one uncached forward over prompt + reply."""
    for config in (
        GenerationConfig(max_new_tokens=20, logprobs=5),
        GenerationConfig(max_new_tokens=20, logprobs=5, do_sample=True, temperature=0.7, top_k=50, seed=0),
        GenerationConfig(max_new_tokens=20, logprobs=5, repetition_penalty=1.3),
    ):
        steps = list(generate_steps(model, PROMPT, config=config))
        ids = torch.cat([PROMPT, torch.stack([s.tokens for s in steps], dim=1)], dim=1)
        with torch.inference_mode():
            logits = model(ids).logits[0]  # [T + N, V]
        T = PROMPT.shape[1]
        for n, s in enumerate(steps):
            seen = seen_mask(ids[:, : T + n], UNTIED.vocab_size)
            lp = process_logits(logits[None, T + n - 1], config, seen).log_softmax(-1)[0]
            top = lp.topk(5)
            torch.testing.assert_close(s.logprobs[0], lp[ids[0, T + n]], rtol=1e-4, atol=1e-4)
            assert torch.equal(s.top_ids[0], top.indices)
            torch.testing.assert_close(s.top_logprobs[0], top.values, rtol=1e-4, atol=1e-4)
        if config.do_sample:
            assert all(torch.isfinite(s.logprobs).all() for s in steps)


def test_completion_logprobs_and_filtered_alternatives(model, bpe):
    """Completion.logprobs: one per kept token; top-k filtered alternatives (-inf) are left out."""
    small = random_gemma2(Gemma2Config.tiny(vocab_size=bpe.vocab_size, tie_word_embeddings=False))
    c = complete(small, bpe, ["hello"], max_new_tokens=6, logprobs=4, do_sample=True, top_k=2, seed=1)[0]
    assert len(c.logprobs) == len(c.token_ids) == 6
    for t, i in zip(c.logprobs, c.token_ids, strict=True):
        assert t.token_id == i and len(t.top) == 2 and i in [j for j, _ in t.top]


def test_per_row_configs_equal_each_row_alone(model):
    """A batch where every row has its own controls gives each row what it gets alone, seeded
    sampling included (a row with a seed draws from its own generator)."""
    prompts = torch.tensor([[0, 0, 2, 17, 99], [2, 17, 99, 45, 3], [2, 7, 7, 7, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1] * 5, [1] * 5])
    configs = [
        GenerationConfig(max_new_tokens=6),
        GenerationConfig(max_new_tokens=12, repetition_penalty=1.5),
        GenerationConfig(max_new_tokens=9, do_sample=True, temperature=0.8, min_p=0.1, seed=4),
    ]
    batch = list(generate_steps(model, prompts, mask, configs, pad_token_id=0))
    assert len(batch) == 12
    for b, config in enumerate(configs):
        T = int(mask[b].sum())
        alone = generate(model, prompts[b : b + 1, -T:], config=[config])  # a list: per-row seeding
        got = torch.stack([s.tokens[b] for s in batch[: config.max_new_tokens]])
        assert torch.equal(got, alone[0, T:]), b
        assert batch[config.max_new_tokens - 1].finish_reasons[b] == "length"
        assert all(int(s.tokens[b]) == 0 for s in batch[config.max_new_tokens :])  # then padding


# ---------------------------------------------------------------------------------------------
# Presence / frequency penalties (OpenAI's; the server's engine decodes with the same code)
# ---------------------------------------------------------------------------------------------


def test_presence_frequency_penalties_are_openais_formula():
    """mu[j] - c[j] * frequency - (c[j] > 0) * presence, c[j] the times token j was generated (the
    reply only: prompt tokens do not count); applied after the repetition penalty, before the warpers."""
    logits = random_logits()
    prompts = [[1, 2, 3, 5]] * 6
    replies = [[5, 5, 7], [], [299, 0, 0, 0], [10], [20, 21], [1] * 5]  # 10: a tie; 20: the -inf entry
    configs = [GenerationConfig(presence_penalty=0.5, frequency_penalty=-0.75, repetition_penalty=1.2)] * 6
    history = History(configs, prompts, 300, torch.device("cpu"), replies)
    for b, r in enumerate(replies):
        assert history.counts[b].tolist() == [float(r.count(j)) for j in range(300)]
        assert history.seen[b].nonzero()[:, 0].tolist() == sorted(set(prompts[b] + r))
    expected = logits.clone()
    for b, r in enumerate(replies):
        for j in set(r):
            expected[b, j] = logits[b, j] - r.count(j) * -0.75 - 0.5
    got = apply_presence_frequency_penalties(logits, history.counts, 0.5, -0.75)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert torch.equal(got[1], logits[1])  # nothing generated yet: unchanged
    sampled = GenerationConfig(do_sample=True, temperature=0.7, top_k=40, min_p=0.05).replace(
        presence_penalty=0.5, frequency_penalty=-0.75, repetition_penalty=1.2
    )
    chain = apply_repetition_penalty(logits, history.seen, 1.2)
    chain = apply_presence_frequency_penalties(chain, history.counts, 0.5, -0.75)
    chain = min_p_filter(top_k_filter(apply_temperature(chain, 0.7), 40), 0.05)
    assert torch.equal(process_logits(logits, sampled, history.seen, history.counts), chain)
    with pytest.raises(ValueError, match=r"presence_penalty must be a number in \[-2, 2\] \(0 = off\), got 2.5"):
        GenerationConfig(presence_penalty=2.5)
    with pytest.raises(ValueError, match="need the reply's token counts"):
        process_logits(logits, GenerationConfig(frequency_penalty=1.0))


def test_generate_presence_frequency_penalties_match_a_plain_loop(model):
    """Greedy `generate` with the penalties, in a batch with an unpenalised row, against a loop that
    recomputes the whole sequence each step; logprobs are the penalised distribution's."""
    presence, frequency, N = 0.6, 1.2, 16
    configs = [
        GenerationConfig(max_new_tokens=N, presence_penalty=presence, frequency_penalty=frequency, logprobs=3),
        GenerationConfig(max_new_tokens=N, logprobs=3),
    ]
    steps = list(generate_steps(model, PROMPT.repeat(2, 1), config=configs))
    seq, counts = PROMPT[0].tolist(), {}
    with torch.inference_mode():
        for s in steps:
            logits = model(torch.tensor([seq])).logits[0, -1].float()
            for t, n in counts.items():
                logits[t] -= frequency * n + presence
            t = int(logits.argmax())
            assert int(s.tokens[0]) == t
            torch.testing.assert_close(s.logprobs[0], logits.log_softmax(-1)[t], rtol=1e-4, atol=1e-4)
            counts[t] = counts.get(t, 0) + 1
            seq.append(t)
    plain = generate(model, PROMPT, max_new_tokens=N)[0, PROMPT.shape[1] :]
    assert torch.equal(torch.stack([s.tokens[1] for s in steps]), plain)  # the other row: untouched
    assert not torch.equal(torch.stack([s.tokens[0] for s in steps]), plain)  # the penalties changed row 0
    with pytest.raises(ValueError, match="do not combine with draft"):
        generate(model, PROMPT, max_new_tokens=4, presence_penalty=0.5, draft=Drafter(model, 2))
