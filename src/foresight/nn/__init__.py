"""Shared, tested building blocks (norms, rotary embeddings, soft-capping, attention backends, EMA targets,
a linear layer with a compiled one-row CPU path, a sparse mixture-of-experts block)."""

from foresight.nn.attention import BACKENDS, AttentionMask, attention, eager_attention
from foresight.nn.ema import ema_update, make_target
from foresight.nn.linear import Linear, linear, row_product_is_faster, tune_row_products
from foresight.nn.losses import byol_loss
from foresight.nn.moe import MoEConfig, MoEOutput, SparseMoE, load_balancing_loss, router_z_loss
from foresight.nn.norms import RMSNorm
from foresight.nn.rope import RotaryEmbedding, apply_rope, rotate_half
from foresight.nn.softcap import softcap

__all__ = [
    "BACKENDS",
    "AttentionMask",
    "Linear",
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
    "linear",
    "load_balancing_loss",
    "make_target",
    "rotate_half",
    "router_z_loss",
    "row_product_is_faster",
    "softcap",
    "tune_row_products",
]
