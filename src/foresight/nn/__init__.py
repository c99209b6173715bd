"""Shared, tested building blocks (norms, rotary embeddings, soft-capping, attention backends, EMA targets)."""

from foresight.nn.attention import BACKENDS, AttentionMask, attention, eager_attention
from foresight.nn.ema import ema_update, make_target
from foresight.nn.norms import RMSNorm
from foresight.nn.rope import RotaryEmbedding, apply_rope, rotate_half
from foresight.nn.softcap import softcap

__all__ = [
    "BACKENDS",
    "AttentionMask",
    "RMSNorm",
    "RotaryEmbedding",
    "apply_rope",
    "attention",
    "eager_attention",
    "ema_update",
    "make_target",
    "rotate_half",
    "softcap",
]
