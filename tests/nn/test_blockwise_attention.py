"""Blockwise (online-softmax) attention equals the eager reference: soft-cap, window, GQA, padding, ring slots."""

from __future__ import annotations

import pytest
import torch

from foresight.nn import AttentionMask, attention
from foresight.nn.attention import (
    AUTO_BLOCKWISE_MIN_SCORES,
    _tile_plan,
    auto_backend,
    blockwise_attention,
    eager_attention,
)

torch.set_num_threads(1)


def _case(B, H, K, T, S, E=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, E, generator=g) * 3  # spread scores: the soft-cap of 5 below bites
    k = torch.randn(B, K, S, E, generator=g) * 3
    v = torch.randn(B, K, S, E, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _left_padding(B, S, pads):
    valid = torch.ones(B, S, dtype=torch.bool)
    for b, n in enumerate(pads):
        valid[b, :n] = False
    return valid


def _max_diff(mask, q, k, v, block_q, block_k, softcap=5.0):
    ref = eager_attention(q, k, v, mask, scale=0.3, softcap=softcap)
    out = blockwise_attention(q, k, v, mask, scale=0.3, softcap=softcap, block_q=block_q, block_k=block_k)
    return (out - ref).abs().max().item()


@pytest.mark.parametrize("window", [None, 7, 40])
@pytest.mark.parametrize("heads", [(4, 2), (6, 2), (3, 3)])  # GQA with G = 2, G = 3, and plain MHA
def test_prefill_equals_eager_with_softcap_window_gqa_and_left_padding(window, heads):
    H, K = heads
    T = 203  # divisible by neither block size
    q, k, v = _case(3, H, K, T, T)
    t = torch.arange(T)
    mask = AttentionMask(t, t, _left_padding(3, T, [0, 17, 150]), window)
    # Every row compared, padding queries included: blockwise gives eager's uniform average there.
    assert _max_diff(mask, q, k, v, block_q=32, block_k=48) <= 1e-5
    assert _max_diff(mask, q, k, v, block_q=256, block_k=256) <= 1e-5  # one tile holding everything


def test_without_softcap_and_without_padding():
    q, k, v = _case(2, 4, 2, 77, 77)
    t = torch.arange(77)
    for window in (None, 10):
        mask = AttentionMask(t, t, None, window)
        assert _max_diff(mask, q, k, v, 16, 16, softcap=None) <= 1e-5


def test_chunk_over_a_rotated_ring_and_a_flat_cache():
    # What Gemma2Cache hands a sliding layer for a chunk of 37 tokens at stream time 70 with W = 24:
    # the ring (24 slots, wrapped: slot i holds the latest time = i mod 24, one never-written slot)
    # followed by the new keys.
    W, start, T = 24, 70, 37
    ring_time = torch.tensor([(start - 1) - ((start - 1 - i) % W) for i in range(W)])
    ring_time[5] = -1  # an empty slot
    k_time = torch.cat([ring_time, torch.arange(start, start + T)])
    valid = torch.ones(2, W + T, dtype=torch.bool)
    valid[1, :9] = False  # a padded row
    q, k, v = _case(2, 4, 2, T, W + T, seed=1)
    mask = AttentionMask(torch.arange(start, start + T), k_time, valid, W)
    assert _max_diff(mask, q, k, v, block_q=16, block_k=8) <= 1e-5
    # A global layer: every earlier key, then the chunk's own (flat buffer, times 0..start+T-1).
    q, k, v = _case(2, 4, 2, T, start + T, seed=2)
    times = torch.arange(start + T)
    mask = AttentionMask(times[start:], times, _left_padding(2, start + T, [0, 30]), None)
    assert _max_diff(mask, q, k, v, block_q=16, block_k=32) <= 1e-5


def test_decode_step_over_the_ring():
    q, k, v = _case(2, 4, 2, 1, 6, seed=3)
    mask = AttentionMask(torch.tensor([9]), torch.tensor([6, 7, 8, 9, 4, 5]), _left_padding(2, 6, [0, 2]), 5)
    assert _max_diff(mask, q, k, v, block_q=1, block_k=4) <= 1e-5


def test_fully_masked_rows_are_eagers_uniform_average_and_never_nan():
    q, k, v = _case(2, 4, 2, 13, 13, seed=4)
    t = torch.arange(13)
    mask = AttentionMask(t, t, _left_padding(2, 13, [0, 13]), None)  # row 1 is all padding
    out = blockwise_attention(q, k, v, mask, scale=0.3, softcap=50.0, block_q=4, block_k=4)
    assert not torch.isnan(out).any()
    uniform = v[1].mean(1).repeat_interleave(2, dim=0)  # [H, E]: kv head h // G
    torch.testing.assert_close(out[1], uniform[:, None].expand(4, 13, 16), rtol=1e-6, atol=1e-6)


def test_tiles_outside_the_window_and_in_the_future_are_skipped():
    T, W, b = 1024, 100, 64
    t = torch.arange(T)
    plan = _tile_plan(AttentionMask(t, t, None, W), T, T, b, b)
    for (qs, qe), tiles in plan:
        for ks, ke, whole in tiles:
            assert ks <= qe - 1 and ke - 1 > qs - W  # some key of the tile can be visible
            assert whole == (ke - 1 <= qs and ks > qe - 1 - W)  # no mask needed iff all are visible
    visited = sum(len(tiles) for _, tiles in plan)
    # Query block i (64 rows) reaches back to time 64 i - 99, i.e. into key blocks i - 2, i - 1 and i.
    assert visited == 1 + 2 + 3 * 14
    causal = sum(len(tiles) for _, tiles in _tile_plan(AttentionMask(t, t, None, None), T, T, b, b))
    assert causal == 16 * 17 // 2  # the lower triangle only
    # A key block that is all padding (for every row) is skipped too.
    valid = _left_padding(2, T, [b, 3 * b])
    padded = sum(len(tiles) for _, tiles in _tile_plan(AttentionMask(t, t, valid, None), T, T, b, b))
    assert padded == causal - 16


def test_gradients_equal_eager():
    q, k, v = _case(2, 4, 2, 45, 45, seed=5)
    t = torch.arange(45)
    mask = AttentionMask(t, t, _left_padding(2, 45, [0, 6]), 9)
    w = torch.randn(2, 4, 45, 16, generator=torch.Generator().manual_seed(6))
    grads = []
    for fn in (eager_attention, blockwise_attention):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        kw = dict(block_q=8, block_k=16) if fn is blockwise_attention else {}
        (fn(*leaves, mask, scale=0.3, softcap=5.0, **kw) * w).sum().backward()
        grads.append([x.grad for x in leaves])
    for ref, got in zip(*grads, strict=True):
        assert (got - ref).abs().max().item() <= 1e-5


def test_bfloat16_stays_close_to_eager():
    q, k, v = _case(1, 4, 2, 150, 150, seed=7, dtype=torch.bfloat16)
    t = torch.arange(150)
    mask = AttentionMask(t, t, None, 20)
    ref = eager_attention(q, k, v, mask, scale=0.3, softcap=5.0).float()
    out = blockwise_attention(q, k, v, mask, scale=0.3, softcap=5.0, block_q=32, block_k=32)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max().item() <= 2e-2  # bf16 rounding of p @ v, 8 mantissa bits


def test_auto_picks_blockwise_for_long_inference_calls_only():
    t = torch.arange(4)
    mask = AttentionMask(t, t, None, None)
    small = _case(1, 4, 2, 4, 4)
    assert auto_backend(*small, mask) == "eager"
    T = 1024  # 4 heads x 1024 x 1024 = 4M scores: at the switch
    assert 4 * T * T >= AUTO_BLOCKWISE_MIN_SCORES
    q, k, v = (torch.empty(1, n, T, 8) for n in (4, 2, 2))
    long_mask = AttentionMask(torch.arange(T), torch.arange(T), None, None)
    assert auto_backend(q, k, v, long_mask) == "blockwise"
    assert auto_backend(q.requires_grad_(), k, v, long_mask) == "eager"  # training keeps eager
    with torch.no_grad():
        assert auto_backend(q, k, v, long_mask) == "blockwise"

    class SpanMask(AttentionMask):  # a subclass may see more keys than AttentionMask's rule
        pass

    span = SpanMask(torch.arange(T), torch.arange(T), None, None)
    assert auto_backend(q.detach(), k, v, span) == "eager"
    with pytest.raises(ValueError, match="blockwise attention reads AttentionMask's fields only; got SpanMask"):
        blockwise_attention(*small, SpanMask(t, t, None, None), scale=1.0)


def test_attention_dispatches_blockwise_and_auto():
    q, k, v = _case(2, 4, 2, 13, 13)
    t = torch.arange(13)
    mask = AttentionMask(t, t, _left_padding(2, 13, [0, 3]), 4)
    ref = attention(q, k, v, mask, scale=0.25, softcap=5.0, backend="eager")
    for backend in ("blockwise", "auto"):
        out = attention(q, k, v, mask, scale=0.25, softcap=5.0, backend=backend)
        assert (out - ref).abs().max().item() <= 1e-5, backend
