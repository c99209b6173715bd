"""Attention: explicit sliding-window masks, soft-cap before mask, and fused backends vs eager."""

from __future__ import annotations

import pytest
import torch

from foresight.nn import AttentionMask, attention
from foresight.nn.attention import eager_attention


def test_sliding_mask_matches_hand_written_matrix():
    t = torch.arange(6)
    got = AttentionMask(t, t, None, window=3).dense()[0].int()
    # W = 3 keys including the current one: key j visible to query i iff i - 3 < j <= i.
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 1, 1, 1],
        ]
    )
    assert torch.equal(got, expected)
    # Flash-attention style window_size=(left, 0) needs left = W - 1 to give the same matrix.
    left = 3 - 1
    i, j = t[:, None], t[None, :]
    assert torch.equal(((j <= i) & (i - j <= left)).int(), expected)


def test_mask_with_padding_and_ring_slots():
    # A ring of 4 slots holding times [8, 5, 6, 7] (slot 0 overwritten by t=8); query t=8, W=4.
    mask = AttentionMask(
        q_time=torch.tensor([8]),
        k_time=torch.tensor([8, 5, 6, 7]),
        k_valid=torch.tensor([[True, True, True, True], [True, False, True, True]]),
        window=4,
    )
    assert mask.dense().int().tolist() == [[[1, 1, 1, 1]], [[1, 0, 1, 1]]]
    empty = AttentionMask(torch.tensor([1]), torch.tensor([0, 1, -1, -1]), None, 4)
    assert empty.dense().int().tolist() == [[[1, 1, 0, 0]]]  # never-written slots stay hidden


def test_softcap_is_applied_before_the_mask():
    # One query, 4 keys with raw scores far beyond the cap; the last key is masked (future).
    q = torch.ones(1, 1, 1, 1)
    k = torch.tensor([200.0, 180.0, -200.0, 500.0]).view(1, 1, 4, 1)
    v = torch.eye(4).view(1, 1, 4, 4)
    mask = AttentionMask(torch.tensor([2]), torch.arange(4), None, None)
    probs = attention(q, k, v, mask, scale=1.0, softcap=50.0)[0, 0, 0]  # = attention weights
    s = torch.tensor([200.0, 180.0, -200.0, 500.0])
    capped = 50.0 * torch.tanh(s / 50.0)
    ref = torch.softmax(torch.where(torch.tensor([True, True, True, False]), capped, -torch.inf), -1)
    torch.testing.assert_close(probs, ref)
    assert probs[3] == 0.0  # masked: exactly zero probability
    assert 0.4 < probs[1] < 0.5  # capped scores 49.97 vs 49.85 are close; raw 200 vs 180 are not
    uncapped = attention(q, k, v, mask, scale=1.0, softcap=None)[0, 0, 0]
    assert not torch.allclose(uncapped, ref, atol=1e-3)  # a backend without the cap fails this test


def _random_case(B=2, H=4, K=2, T=13, S=13, E=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, E, generator=g) * 3
    k = torch.randn(B, K, S, E, generator=g) * 3
    v = torch.randn(B, K, S, E, generator=g)
    return q, k, v


def _padding(B, S, pads):
    valid = torch.ones(B, S, dtype=torch.bool)
    for b, n in enumerate(pads):
        valid[b, :n] = False
    return valid


@pytest.mark.parametrize("window", [None, 4])
def test_flex_matches_eager_prefill(window):
    q, k, v = _random_case()
    t = torch.arange(13)
    valid = _padding(2, 13, [0, 3])
    mask = AttentionMask(t, t, valid, window)
    ref = attention(q, k, v, mask, scale=0.25, softcap=5.0, backend="eager")
    out = attention(q, k, v, mask, scale=0.25, softcap=5.0, backend="flex")
    real = valid[:, None, :, None].expand_as(ref)  # padding query rows are unused by design
    torch.testing.assert_close(out[real], ref[real], rtol=1e-5, atol=1e-5)


def test_flex_matches_eager_decode_over_ring():
    q, k, v = _random_case(T=1, S=6)
    mask = AttentionMask(torch.tensor([9]), torch.tensor([6, 7, 8, 9, 4, 5]), _padding(2, 6, [0, 2]), window=5)
    ref = attention(q, k, v, mask, scale=0.25, softcap=5.0, backend="eager")
    out = attention(q, k, v, mask, scale=0.25, softcap=5.0, backend="flex")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_sdpa_matches_eager_without_softcap_and_refuses_softcap():
    q, k, v = _random_case()
    t = torch.arange(13)
    mask = AttentionMask(t, t, _padding(2, 13, [0, 3]), window=4)
    ref = eager_attention(q, k, v, mask, scale=0.25, softcap=None)
    out = attention(q, k, v, mask, scale=0.25, softcap=None, backend="sdpa")
    torch.testing.assert_close(out[:, :, 3:], ref[:, :, 3:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="cannot apply the attention soft-cap"):
        attention(q, k, v, mask, scale=0.25, softcap=50.0, backend="sdpa")


def test_fully_masked_rows_give_no_nan_and_bad_arguments_raise():
    q, k, v = _random_case()
    t = torch.arange(13)
    mask = AttentionMask(t, t, _padding(2, 13, [0, 5]), window=None)
    for backend, cap in (("eager", 50.0), ("flex", 50.0), ("sdpa", None)):
        out = attention(q, k, v, mask, scale=0.25, softcap=cap, backend=backend)
        assert not torch.isnan(out).any(), backend
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        attention(q, k, v, mask, scale=0.25, backend="flash")
    with pytest.raises(ValueError, match=r"query heads \(4\) must be a multiple of kv heads \(3\)"):
        attention(q, torch.randn(2, 3, 13, 16), torch.randn(2, 3, 13, 16), mask, scale=0.25)


def test_gqa_equals_repeated_kv_heads():
    q, k, v = _random_case()
    t = torch.arange(13)
    mask = AttentionMask(t, t, None, None)
    grouped = attention(q, k, v, mask, scale=0.25, softcap=50.0)
    repeated = attention(
        q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), mask, scale=0.25, softcap=50.0
    )
    torch.testing.assert_close(grouped, repeated, rtol=1e-6, atol=1e-6)
