"""Normalisation layers shared by the language models.

Axis legend: `...` any leading axes, D the normalised (model) width.
"""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm with a zero-centred scale: `y = x * rsqrt(mean(x^2) + eps) * (1 + w)`.

    This is the Gemma flavour (Gemma 1/2/3, HF `Gemma2RMSNorm`, google/gemma_pytorch):

    - `w` is stored zero-centred and initialised to zero, so a fresh norm is the identity scale.
      Checkpoints store `w`, not `1 + w`.
    - The normalisation *and* the `(1 + w)` multiply run in float32 and the result is cast back
      once at the end. Llama-style norms cast to the activation dtype before the multiply; Gemma
      does `(x * w).to(dtype)`, which changes bf16 outputs (HF PR #29402).

    Shapes: x [..., D] -> [..., D], same dtype as x.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        if dim <= 0:
            raise ValueError(f"RMSNorm dim must be positive, got {dim}")
        if eps <= 0:
            raise ValueError(f"RMSNorm eps must be positive, got {eps}")
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))  # zero-centred: the effective scale is 1 + w

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch.rms_norm computes x * rsqrt(mean(x^2) + eps), bit-identical to the spelled-out
        # formula on CPU, in one call (this norm runs 4x per block in every decode step).
        y = torch.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        y = y * (1.0 + self.weight.float())
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
