"""Tanh soft-capping, as used by Gemma 2 on attention scores and final logits."""

from __future__ import annotations

import torch


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Squash `x` smoothly into (-cap, cap): `cap * tanh(x / cap)`; identity when `cap` is None.

    Gemma 2 uses cap = 50 on attention scores (applied *before* the mask: capping a masked score
    would turn -inf into a finite -cap) and cap = 30 on the final logits.
    """
    if cap is None:
        return x
    if cap <= 0:
        raise ValueError(f"softcap cap must be positive or None, got {cap}")
    return torch.tanh(x / cap) * cap
