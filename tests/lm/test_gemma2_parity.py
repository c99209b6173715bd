"""Logit and greedy-generation parity with transformers.Gemma2ForCausalLM (fp32, CPU, random weights)."""

from __future__ import annotations

import pytest
import torch
from gemma2_testing import hf_twin, random_gemma2

from foresight.lm import Gemma2Config, generate

pytestmark = pytest.mark.parity
transformers = pytest.importorskip("transformers")


def _left_padded(batch_lengths, T, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (len(batch_lengths), T), generator=g)
    mask = torch.zeros(len(batch_lengths), T, dtype=torch.long)
    for b, n in enumerate(batch_lengths):
        mask[b, T - n :] = 1
    return ids.masked_fill(mask == 0, 0), mask


@torch.inference_mode()
def test_tiny_logits_match_transformers_past_the_window(tiny_model):
    hf = hf_twin(tiny_model)
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))  # 40 > W = 8
    ours = tiny_model(ids).logits
    ref = hf(ids).logits
    assert ours.std() > 1.0 and ours.abs().max() < 29.0  # informative, not saturated by the cap
    assert (ours - ref).abs().max() <= 1e-4


@torch.inference_mode()
def test_tiny_left_padded_logits_match_transformers(tiny_model):
    hf = hf_twin(tiny_model)
    ids, mask = _left_padded([30, 21, 9], 30, 256)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what HF generate passes for left padding
    ours = tiny_model(ids, attention_mask=mask).logits
    ref = hf(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert (ours[real] - ref[real]).abs().max() <= 1e-4


@torch.inference_mode()
def test_tiny_bf16_logits_are_as_close_to_fp32_as_transformers_bf16():
    """bf16 on CPU: rounding differs from HF's (logits, RoPE dtype), so compare error sizes: our
    bf16 model must sit no further from the fp32 model than transformers' bf16 model does."""
    fp32 = random_gemma2(Gemma2Config.tiny())
    model = random_gemma2(Gemma2Config.tiny()).to(torch.bfloat16)
    hf = hf_twin(model)
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(3))
    exact = fp32(ids).logits
    ours, ref = model(ids).logits, hf(ids).logits.float()
    assert (ref - exact).abs().mean() > 1e-3  # bf16 rounding is visible at all
    assert (ours - exact).abs().mean() <= (ref - exact).abs().mean()
    assert (ours - exact).abs().max() <= 1.5 * (ref - exact).abs().max()


@torch.inference_mode()
def test_2b_dimensions_logits_match_transformers():
    # 2B widths (D 2304, H 8, K 4, E 256, F 9216), 2 layers; W shrunk to 16 so 40 tokens exceed it.
    # The vocab is shrunk here for speed; the next test runs the real 256000 vocab.
    config = Gemma2Config.gemma2_2b().replace(num_layers=2, sliding_window=16, vocab_size=4096)
    model = random_gemma2(config, std=0.06)
    hf = hf_twin(model)
    ids = torch.randint(0, config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(2))
    ours, ref = model(ids).logits, hf(ids).logits
    assert ours.std() > 1.0
    assert (ours - ref).abs().max() <= 1e-4


@torch.inference_mode()
def test_2b_dimensions_real_vocab_logits_match_transformers():
    config = Gemma2Config.gemma2_2b().replace(num_layers=2, sliding_window=16)
    assert config.vocab_size == 256_000
    model = random_gemma2(config, std=0.06)
    ids = torch.randint(0, config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(3))
    hf = hf_twin(model)
    # logits_to_keep keeps the 256000-wide head cheap; the window is still exceeded (24 > 16).
    ours = model(ids, logits_to_keep=4).logits
    ref = hf(ids, logits_to_keep=4).logits
    assert ours.shape == (1, 4, 256_000)
    assert (ours - ref).abs().max() <= 1e-4


@torch.inference_mode()
def test_greedy_generation_is_token_identical_batch_1(tiny_model):
    hf = hf_twin(tiny_model)
    ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(4))
    ours = generate(tiny_model, ids, max_new_tokens=100, stop_token_ids=[1])
    ref = hf.generate(ids, max_new_tokens=100, do_sample=False, eos_token_id=1, pad_token_id=0)
    assert ours.shape == (1, 105)  # ran 100 steps, far past W = 8
    assert torch.equal(ours, ref)


@torch.inference_mode()
def test_greedy_generation_is_token_identical_left_padded_batch(tiny_model):
    hf = hf_twin(tiny_model)
    ids, mask = _left_padded([11, 4, 7], 11, 256, seed=5)
    ours = generate(tiny_model, ids, mask, max_new_tokens=100, stop_token_ids=[1])
    ref = hf.generate(ids, attention_mask=mask, max_new_tokens=100, do_sample=False, eos_token_id=1, pad_token_id=0)
    assert ours.shape == ref.shape == (3, 111)
    assert torch.equal(ours, ref)
