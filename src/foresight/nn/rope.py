"""Rotary position embeddings (RoPE), rotate-half layout.

Axis legend: B batch, T tokens, H heads, E head_dim (even).

Layout: the head vector is split into two halves [x1, x2] and rotated as complex numbers
(x1 + i x2) * exp(i * pos * f_j), with frequencies f_j = base^(-2j/E). This is the layout of HF
(`rotate_half`), google/gemma_pytorch (chunk into 2) and google-deepmind/gemma (`apply_rope`), so
Gemma checkpoints need no q/k permutation. It is NOT the interleaved-pairs layout of GPT-J/Meta Llama.
"""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Computes RoPE cos/sin tables in float32 for arbitrary (per-row) positions.

    Shapes: positions [B, T] (int) -> cos, sin [B, T, E] float32.
    """

    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"RoPE head_dim must be even, got {head_dim}")
        self.head_dim = head_dim
        self.base = base
        # Non-persistent: derived from (head_dim, base), never stored in checkpoints.
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self, device: torch.device | str | None = None) -> torch.Tensor:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
        return 1.0 / (self.base**exponent)  # [E/2]

    def reset_buffers(self) -> None:
        """Recompute `inv_freq` exactly, in float32, on its current device."""
        self.inv_freq = self._inv_freq(device=self.inv_freq.device)

    def _apply(self, fn, recurse=True):
        # `model.to(torch.bfloat16)` would round the frequencies and `to_empty()` would leave them
        # uninitialised; after any such conversion keep only the new device and recompute in fp32.
        super()._apply(fn, recurse)
        self.reset_buffers()
        return self

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # fp32 on purpose: at position 8191 a bf16 angle would be off by whole radians.
        freqs = positions.float()[..., None] * self.inv_freq  # [B, T, E/2]
        angles = torch.cat((freqs, freqs), dim=-1)  # [B, T, E]: same angle for both halves
        return angles.cos(), angles.sin()

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] along the last axis (multiplication by i in the half-split layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, E] by cos/sin [B, T, E]; computed in float32, returned in x's dtype."""
    x32 = x.float()  # no-op (no copy) for fp32 activations
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, E]: broadcast over heads
    y = x32 * cos + rotate_half(x32) * sin
    return y if y.dtype == x.dtype else y.to(x.dtype)
