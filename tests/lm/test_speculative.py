"""Speculative decoding: greedy equals the target's own greedy, sampling keeps the target's distribution."""

from __future__ import annotations

import itertools

import pytest
import torch
from gemma2_testing import random_gemma2

from foresight.lm import Gemma2, Gemma2Config, generate
from foresight.lm.generate import generate_steps
from foresight.lm.sampling import GenerationConfig, process_logits, seen_mask
from foresight.lm.speculative import Drafter, RollbackCache

# Untied head: with a tied one, random models mostly repeat their last token, and every draft "agrees".
TARGET = Gemma2Config.tiny(num_layers=6, sliding_window=8, tie_word_embeddings=False)
PROMPT = torch.tensor([[2, 17, 99, 45, 3]])
PADDED = torch.tensor([[0, 0, 0, 7, 8, 9, 10, 11], [2, 17, 99, 45, 3, 5, 6, 250]])
PADDED_MASK = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
NEW = 3 * TARGET.sliding_window  # every row decodes well past the window


def first_layers(model: Gemma2, n: int) -> Gemma2:
    """The target's first n blocks with its embedding, final norm and head: a smaller Gemma 2 whose
    guesses are right part of the time (layer-skip drafting), so rounds accept some drafts, not all."""
    draft = Gemma2(model.config.replace(num_layers=n)).eval()
    keep = {k: v for k, v in model.state_dict().items() if not k.startswith("layers.") or int(k.split(".")[1]) < n}
    draft.load_state_dict(keep)
    return draft


@pytest.fixture(scope="module")
def target() -> Gemma2:
    return random_gemma2(TARGET)


@pytest.fixture(scope="module")
def drafts(target) -> dict[str, Gemma2]:
    other = TARGET.replace(num_layers=2, hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1, head_dim=16)
    return {"itself": target, "first 2 layers": first_layers(target, 2), "unrelated": random_gemma2(other, seed=1)}


def test_rollback_cache_forgets_rejected_tokens_past_the_window(target):
    """Feed a chunk, roll part of it back, feed other tokens: the logits are those of a cache that
    never saw the dropped ones (the ring slots they overwrote are restored)."""
    W = TARGET.sliding_window
    prompt = torch.randint(5, 256, (2, W + 3), generator=torch.Generator().manual_seed(0))
    kept, dropped, new = prompt[:, :3] + 1, prompt[:, 3:7] + 2, prompt[:, :2] + 3
    with torch.inference_mode():
        cache = RollbackCache(TARGET, batch_size=2, capacity=64)
        target(prompt, cache=cache)
        target(torch.cat([kept, dropped], dim=1), cache=cache)  # 7 tokens, 4 of them rejected
        target(dropped[:, :1], cache=cache)  # and one single-token forward on top
        cache.rollback(prompt.shape[1] + kept.shape[1])
        after = target(new, cache=cache).logits
        reference = target.make_cache(2, 64)
        target(prompt, cache=reference)
        target(kept, cache=reference)
        expected = target(new, cache=reference).logits
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)
    assert cache.length == reference.length and torch.equal(cache.next_position, reference.next_position)


@pytest.mark.parametrize("name", ["itself", "first 2 layers", "unrelated"])
def test_speculative_greedy_equals_plain_greedy(target, drafts, name):
    """Token for token, batch 1 and a left-padded batch, past the window, for K = 1, 3 and 7 (W - 1),
    whether the draft is always right, sometimes or almost never."""
    for ids, mask in ((PROMPT, None), (PADDED, PADDED_MASK)):
        plain = generate(target, ids, mask, max_new_tokens=NEW)
        for K in (1, 3, TARGET.sliding_window - 1):
            drafter = Drafter(drafts[name], num_tokens=K)
            out = generate(target, ids, mask, max_new_tokens=NEW, draft=drafter)
            assert torch.equal(out, plain), (name, K, tuple(ids.shape))
            if name == "first 2 layers":
                assert 0 < drafter.acceptance_rate < 1  # rounds with rejections and rollbacks
            if name == "itself":
                assert drafter.acceptance_rate == 1.0 and drafter.tokens_per_round > K  # K drafts + a bonus token


def test_speculative_greedy_with_repetition_penalty_and_stop_tokens(target, drafts):
    """The controls that read the history (repetition penalty: the drafts count as seen) and end rows
    early (stop tokens, per-row max_new_tokens) give the plain tokens."""
    plain_free = generate(target, PADDED, PADDED_MASK, max_new_tokens=NEW, repetition_penalty=1.3)
    stop = int(plain_free[1, PADDED.shape[1] + 5])
    kw = dict(max_new_tokens=NEW, repetition_penalty=1.3, stop_token_ids=[stop], pad_token_id=0)
    plain = generate(target, PADDED, PADDED_MASK, **kw)
    drafter = Drafter(drafts["first 2 layers"], num_tokens=3)
    assert torch.equal(generate(target, PADDED, PADDED_MASK, draft=drafter, **kw), plain)
    configs = [GenerationConfig(max_new_tokens=4), GenerationConfig(max_new_tokens=NEW, repetition_penalty=1.3)]
    plain = generate(target, PADDED, PADDED_MASK, configs)
    assert torch.equal(generate(target, PADDED, PADDED_MASK, configs, draft=drafter), plain)


def test_speculative_logprobs_are_the_targets(target, drafts):
    """Reported logprobs come from the target's distribution, whoever drafted the token."""
    kw = dict(max_new_tokens=12, logprobs=3)
    plain = list(generate_steps(target, PROMPT, **kw))
    spec = list(generate_steps(target, PROMPT, draft=Drafter(drafts["first 2 layers"], 3), **kw))
    for a, b in zip(plain, spec, strict=True):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.top_ids, b.top_ids)
        torch.testing.assert_close(a.logprobs, b.logprobs, rtol=1e-5, atol=1e-5)


def exact_distribution(model, prompt: list[int], config: GenerationConfig, n: int) -> dict[tuple, float]:
    """P(x_1..x_n) of plain decoding with `config`, by enumerating every prefix (small vocab only)."""
    V = model.config.vocab_size
    probs: dict[tuple, torch.Tensor] = {}
    for length in range(n):
        prefixes = list(itertools.product(range(V), repeat=length))
        ids = torch.tensor([prompt + list(p) for p in prefixes])
        with torch.inference_mode():
            logits = model(ids).logits[:, -1]
        processed = process_logits(logits, config, seen_mask(ids, V))
        for p, row in zip(prefixes, processed.softmax(-1), strict=True):
            probs[p] = row
    joint = {}
    for seq in itertools.product(range(V), repeat=n):
        joint[seq] = float(torch.tensor([probs[seq[:i]][seq[i]] for i in range(n)]).prod())
    return joint


def total_variation(samples: list[tuple], exact: dict[tuple, float], k: int) -> float:
    """TV distance between the empirical and exact distributions of the first k tokens."""
    marginal: dict[tuple, float] = {}
    for seq, p in exact.items():
        marginal[seq[:k]] = marginal.get(seq[:k], 0.0) + p
    counts: dict[tuple, int] = {}
    for s in samples:
        counts[s[:k]] = counts.get(s[:k], 0) + 1
    return 0.5 * sum(abs(counts.get(key, 0) / len(samples) - p) for key, p in marginal.items())


SMALL_VOCAB = Gemma2Config.tiny(
    vocab_size=8, num_layers=2, hidden_size=32, intermediate_size=32, num_heads=2, num_kv_heads=1, head_dim=16
).replace(sliding_window=4, tie_word_embeddings=False)
SAMPLING = GenerationConfig(do_sample=True, temperature=0.9, top_k=6, min_p=0.02, repetition_penalty=1.2)


def test_speculative_sampling_keeps_the_target_distribution():
    """Leviathan et al.'s rule: samples of (x1, x2, x3) follow the target's exact distribution (processed:
    temperature, top-k, min-p, repetition penalty) in a batch of 3000 rows, with a draft that is
    nearly always wrong (residual draws; rows that accepted more than the batch's fewest emit their
    draft) and with the target drafting for itself (whole chains plus the bonus token)."""
    target = random_gemma2(SMALL_VOCAB, std=0.5)
    unrelated = random_gemma2(SMALL_VOCAB, std=0.5, seed=7)
    config = SAMPLING.replace(max_new_tokens=3)
    prompt = [2, 5, 6]
    exact = exact_distribution(target, prompt, config, 3)
    draft_alone = exact_distribution(unrelated, prompt, config, 3)
    g = torch.Generator().manual_seed(0)
    for draft in (unrelated, target):
        drafter = Drafter(draft, 2)
        out = generate(target, torch.tensor([prompt] * 3000), config=config, draft=drafter, generator=g)
        samples = [tuple(r) for r in out[:, 3:].tolist()]
        for k, bound in ((1, 0.03), (2, 0.05), (3, 0.08)):  # ~3x the sampling noise at 3000 samples
            assert total_variation(samples, exact, k) < bound
            assert total_variation(samples, draft_alone, k) > 3 * bound  # the test can tell the two apart
        assert drafter.acceptance_rate == 1.0 if draft is target else drafter.acceptance_rate < 0.3


def randomized_pit(model, ids: torch.Tensor, prompt_len: int, config: GenerationConfig, g) -> torch.Tensor:
    """u_t = F(x_t - 1) + U * p(x_t) under the target's exact conditional p(. | x_<t) (one forward, no
    cache): iid uniform on [0, 1) exactly when every token was drawn from p (randomized PIT)."""
    V = model.config.vocab_size
    with torch.inference_mode():
        logits = model(ids).logits  # [B, L, V]
    u = []
    for t in range(prompt_len, ids.shape[1]):
        p = process_logits(logits[:, t - 1], config, seen_mask(ids[:, :t], V)).softmax(-1)  # [B, V]
        x = ids[:, t : t + 1]
        below = (p.cumsum(-1) - p).gather(-1, x)[:, 0]
        u.append(below + torch.rand(len(x), generator=g) * p.gather(-1, x)[:, 0])
    return torch.cat(u)


def ks_distance(u: torch.Tensor) -> float:
    """Kolmogorov-Smirnov distance of samples u from Uniform(0, 1)."""
    u, n = u.sort().values, len(u)
    i = torch.arange(1, n + 1)
    return float(torch.maximum(i / n - u, u - (i - 1) / n).max())


def test_speculative_sampling_long_runs_follow_the_target_conditionals():
    """Long sampled runs (past the window, whole chains and rejections mixed: a draft that is right
    about 3 times in 4) pass a randomized-PIT test against the target's exact per-step
    conditionals, one row and three rows at a time; the draft's own samples fail it."""
    target = random_gemma2(SMALL_VOCAB, std=0.5)
    draft = first_layers(target, 1)
    N, prompt = 300, torch.tensor([[2, 5, 6]])
    g = torch.Generator().manual_seed(1)
    config = SAMPLING.replace(max_new_tokens=N)
    u, drafter = [], Drafter(draft, 3)
    for rows in (1, 1, 3, 3):
        out = generate(target, prompt.repeat(rows, 1), config=config, draft=drafter, generator=g)
        u.append(randomized_pit(target, out, 3, config, g))
    u = torch.cat(u)  # 2400 values
    critical = 1.63 / len(u) ** 0.5  # KS at the 1% level
    assert ks_distance(u) < critical, ks_distance(u)
    assert 0.5 < drafter.acceptance_rate < 0.95 and drafter.tokens_per_round > 1.5
    wrong = generate(draft, prompt.repeat(8, 1), config=config, generator=g)  # accept every draft
    assert ks_distance(randomized_pit(target, wrong, 3, config, g)) > 2 * critical  # p < 1e-9


def test_speculative_errors(target, drafts):
    with pytest.raises(ValueError, match="num_tokens .* must be an int >= 1, got 0"):
        Drafter(target, num_tokens=0)
    with pytest.raises(ValueError, match=r"num_tokens 8 must be < the sliding window \(8\) of target and draft"):
        generate(target, PROMPT, max_new_tokens=4, draft=Drafter(target, num_tokens=8))
    other = random_gemma2(Gemma2Config.tiny(vocab_size=128))
    with pytest.raises(ValueError, match="draft vocab_size 128 != target vocab_size 256"):
        generate(target, PROMPT, max_new_tokens=4, draft=other)
    with pytest.raises(ValueError, match="compile=True does not combine with draft"):
        generate(target, PROMPT, max_new_tokens=4, draft=target, compile=True)
