"""Shared, tested building blocks (norms, rotary embeddings, soft-capping, attention backends, EMA targets,
a compiled few-row CPU product for decoding, a sparse mixture-of-experts block)."""

from foresight.nn.attention import BACKENDS, AttentionMask, attention, eager_attention
from foresight.nn.ema import ema_update, make_target
from foresight.nn.linear import row_product
from foresight.nn.losses import byol_loss
from foresight.nn.moe import MoEConfig, MoEOutput, SparseMoE, load_balancing_loss, router_z_loss
from foresight.nn.norms import RMSNorm
from foresight.nn.rope import RotaryEmbedding, apply_rope, rotate_half
from foresight.nn.softcap import softcap

__all__ = [
    "BACKENDS",
    "AttentionMask",
    "MoEConfig",
    "MoEOutput",
    "RMSNorm",
    "RotaryEmbedding",
    "SparseMoE",
    "apply_rope",
    "attention",
    "byol_loss",
    "eager_attention",
    "ema_update",
    "load_balancing_loss",
    "make_target",
    "rotate_half",
    "router_z_loss",
    "row_product",
    "softcap",
]
