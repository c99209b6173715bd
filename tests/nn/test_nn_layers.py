"""RMSNorm (1 + w) in fp32, rotate-half RoPE and the tanh soft-cap, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from foresight.nn import RMSNorm, RotaryEmbedding, apply_rope, rotate_half, softcap


def test_rmsnorm_golden_values():
    norm = RMSNorm(4, eps=0.0 + 1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.0, 1.0, -0.5, 2.0]))
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    rms = math.sqrt((1 + 4 + 9 + 16) / 4 + 1e-6)  # sqrt(7.5 + eps)
    expected = torch.tensor([[1 / rms * 1.0, 2 / rms * 2.0, 3 / rms * 0.5, 4 / rms * 3.0]])
    torch.testing.assert_close(norm(x), expected, rtol=1e-6, atol=1e-6)


def test_rmsnorm_is_zero_initialised_identity_scale():
    norm = RMSNorm(8)
    assert torch.count_nonzero(norm.weight) == 0
    x = torch.randn(3, 8)
    torch.testing.assert_close(norm(x), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def test_rmsnorm_bf16_multiplies_in_fp32_then_casts_once():
    torch.manual_seed(0)
    norm = RMSNorm(64)
    with torch.no_grad():
        norm.weight.normal_(std=0.5)
    x = torch.randn(16, 64).to(torch.bfloat16)
    x32 = x.float()
    gemma = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + norm.weight)).bfloat16()
    llama_style = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16() * (
        1 + norm.weight
    ).bfloat16()
    out = norm(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, gemma)
    assert not torch.equal(out, llama_style)  # the two casts orders really differ in bf16


def test_rmsnorm_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dim must be positive, got 0"):
        RMSNorm(0)
    with pytest.raises(ValueError, match="eps must be positive"):
        RMSNorm(4, eps=0.0)


def test_rope_is_complex_rotation_of_halves():
    torch.manual_seed(0)
    E, base = 8, 10_000.0
    rope = RotaryEmbedding(E, base)
    pos = torch.tensor([[0, 1, 5, 300]])
    x = torch.randn(1, 2, 4, E)  # [B, H, T, E]
    cos, sin = rope(pos)
    assert cos.dtype == torch.float32 and cos.shape == (1, 4, E)
    got = apply_rope(x, cos, sin)
    # Reference: pair dimension j with j + E/2 and multiply by exp(i * pos * base^(-2j/E)).
    freqs = base ** (-torch.arange(0, E, 2, dtype=torch.float64) / E)  # [E/2]
    z = torch.complex(x[..., : E // 2].double(), x[..., E // 2 :].double())
    z = z * torch.exp(1j * pos[0, :, None].double() * freqs)  # [1, 2, 4, E/2]
    expected = torch.cat([z.real, z.imag], dim=-1).float()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    rope = RotaryEmbedding(16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        cq, sq = rope(torch.tensor([[m]]))
        ck, sk = rope(torch.tensor([[n]]))
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(score(7, 3), score(104, 100), rtol=1e-4, atol=1e-4)


def test_rope_keeps_dtype_and_rotate_half():
    x = torch.arange(4.0)
    assert torch.equal(rotate_half(x), torch.tensor([-2.0, -3.0, 0.0, 1.0]))
    rope = RotaryEmbedding(4)
    cos, sin = rope(torch.tensor([[8191]]))
    assert cos.dtype == torch.float32  # angles in fp32 even for bf16 activations
    y = apply_rope(torch.randn(1, 1, 1, 4, dtype=torch.bfloat16), cos, sin)
    assert y.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="even, got 5"):
        RotaryEmbedding(5)


def test_softcap_values():
    x = torch.tensor([-200.0, -1.0, 0.0, 1.0, 200.0])
    y = softcap(x, 50.0)
    torch.testing.assert_close(y, 50.0 * torch.tanh(x / 50.0))
    assert y.abs().max() < 50.0
    assert softcap(x, None) is x
    with pytest.raises(ValueError, match="positive or None, got -1"):
        softcap(x, -1.0)


def test_rope_frequencies_stay_fp32_through_dtype_casts_and_meta_init():
    exact = RotaryEmbedding(64).inv_freq.clone()
    rope = RotaryEmbedding(64).to(torch.bfloat16)
    assert rope.inv_freq.dtype == torch.float32 and torch.equal(rope.inv_freq, exact)
    with torch.device("meta"):
        lazy = RotaryEmbedding(64)
    lazy = lazy.to_empty(device="cpu")  # uninitialised memory would otherwise remain
    assert torch.equal(lazy.inv_freq, exact)
