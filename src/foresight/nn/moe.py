"""Sparse mixture-of-experts FFN block: top-k router, load-balancing and z-losses, dropless or capacity routing.

Axis legend: B batch, T tokens, D hidden, F expert intermediate size, E experts, k experts per token,
N = B * T flattened tokens, M = k * N token-slots ("assignments").

The math (references in docs/gemini15_moe.md, "The MoE layer (`SparseMoE`)"; the Gemini 1.5 report itself
discloses no MoE recipe, so this is the standard Switch / ST-MoE / Mixtral layer):

    z = x W_r                  router logits [N, E], W_r without bias, always in fp32 ("selective
                               precision", Switch §2.4; HF Mixtral also takes its softmax in fp32)
    p = softmax(z)             over all E experts
    e_1..e_k = top-k of p
    gate g_j:  "topk_softmax"  p_{e_j} / sum_j' p_{e_j'}   (Mixtral, HF `MixtralTopKRouter`: renormalised
                               over the k chosen, = a softmax over the k chosen logits)
               "softmax"       p_{e_j}                     (Switch Transformer: the full-softmax probability)
    y = sum_j g_j FFN_{e_j}(x),  FFN_e(x) = W_down,e (act(W_gate,e x) * W_up,e x)   (GeGLU or SwiGLU)

Losses (both returned unweighted by `forward`; `SparseMoE.loss` applies the config's coefficients):

    load balancing (Switch eqs. 4-6, top-k form)  L_aux = E * sum_i f_i P_i
        f_i = fraction of the (token, slot) assignments routed to expert i (not differentiable),
        P_i = mean router probability of expert i (differentiable).
        `normalise_top_k=True` divides the assignment count by k*N, so f sums to 1 and uniform routing gives 1
        (MegaBlocks `megablocks/layers/moe.py`); False divides by N only, so f sums to k and uniform routing
        gives k (HF Mixtral `load_balancing_loss_func`, for one layer). The block returns the normalised one.
    router z-loss (ST-MoE, arXiv 2202.08906)       L_z = mean_tokens logsumexp(z)^2

Routing:
- Dropless (capacity_factor = 0, HF Mixtral): every valid assignment is computed. Token-slots are sorted by
  expert, each expert that received tokens runs one batched matmul chain, and the weighted results are
  index_add_-ed back to their tokens.
- Capacity (capacity_factor > 0, Switch / GShard): capacity = ceil(capacity_factor * k * N_valid / E)
  assignments per expert per call. Priority is slot-major: every token's first choice is placed (in token
  order) before any token's second choice, and so on; an expert keeps the first `capacity` assignments in that
  order and drops the rest. A dropped slot contributes 0 to y; the token keeps its other slots and, in the
  surrounding block, its residual stream.
- Padding (valid=False) tokens are never routed: their output is 0 and they are excluded from f, P, the
  z-loss, the capacity's N_valid and the diagnostics.
- Router jitter (Switch, training mode only) multiplies the router *input* by uniform(1 - eps, 1 + eps);
  the experts see the clean x. (HF Mixtral's block jitters the experts' input too.)

Parameters map 1:1 onto transformers' Mixtral (`MixtralTopKRouter.weight`, `MixtralExperts.gate_up_proj`
[E, 2F, D] with gate rows first, `down_proj` [E, D, F]); tests/nn/test_nn_moe.py checks parity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import Linear

GATINGS = ("topk_softmax", "softmax")
ACTIVATIONS = ("gelu_tanh", "silu")


@dataclass(frozen=True)
class MoEConfig:
    num_experts: int = 8
    top_k: int = 2
    gating: str = "topk_softmax"  # "topk_softmax" (Mixtral: renormalise over the k) or "softmax" (Switch)
    capacity_factor: float = 0.0  # 0: dropless; > 0: capacity = ceil(cf * k * N_valid / E) per expert per call
    router_jitter: float = 0.0  # Switch eps: router input times uniform(1 - eps, 1 + eps), training mode only
    aux_loss_coef: float = 1e-2  # Switch alpha (load balancing), the paper's value
    z_loss_coef: float = 1e-3  # ST-MoE router z-loss
    activation: str = "gelu_tanh"  # expert FFN: GeGLU with tanh GELU (Gemma) or "silu" (SwiGLU, Mixtral)

    def __post_init__(self) -> None:
        if isinstance(self.num_experts, bool) or not isinstance(self.num_experts, int) or self.num_experts < 1:
            raise ValueError(f"num_experts must be an int >= 1, got {self.num_experts!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be an int in [1, num_experts={self.num_experts}], got {self.top_k!r}")
        if self.gating not in GATINGS:
            raise ValueError(f"gating={self.gating!r} is not allowed; expected one of {list(GATINGS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not allowed; expected one of {list(ACTIVATIONS)}")
        if not self.capacity_factor >= 0:  # also rejects NaN
            raise ValueError(f"capacity_factor must be >= 0 (0 = dropless), got {self.capacity_factor!r}")
        if not 0 <= self.router_jitter < 1:
            raise ValueError(f"router_jitter must be in [0, 1), got {self.router_jitter!r}")
        for name in ("aux_loss_coef", "z_loss_coef"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


def _check_valid(valid: torch.Tensor | None, shape: tuple[int, ...], what: str) -> None:
    if valid is not None and (valid.dtype != torch.bool or tuple(valid.shape) != shape):
        raise ValueError(
            f"valid must be a bool tensor of shape {list(shape)} ({what}), "
            f"got {valid.dtype} of shape {list(valid.shape)}"
        )


def load_balancing_loss(
    probs: torch.Tensor,  # [N, E] router softmax (fp32)
    expert_index: torch.Tensor,  # [N, k] long
    valid: torch.Tensor | None = None,  # [N] bool, False = padding
    normalise_top_k: bool = True,
) -> torch.Tensor:  # scalar
    """E * sum_i f_i P_i over valid tokens (Switch eqs. 4-6). f sums to 1 when `normalise_top_k` (MegaBlocks;
    uniform routing -> 1) and to k when not (HF Mixtral; uniform routing -> k). 0 when no token is valid."""
    if probs.dim() != 2 or expert_index.dim() != 2 or expert_index.shape[0] != probs.shape[0]:
        raise ValueError(
            f"expected probs [N, E] and expert_index [N, k], got {list(probs.shape)} and {list(expert_index.shape)}"
        )
    N, E = probs.shape
    k = expert_index.shape[1]
    _check_valid(valid, (N,), "one per token")
    weight = probs.new_ones(N, dtype=torch.float32) if valid is None else valid.float()  # [N]
    n_valid = weight.sum().clamp_min(1.0)
    counts = torch.zeros(E, dtype=torch.float32, device=probs.device)
    counts.index_add_(0, expert_index.reshape(-1), weight.repeat_interleave(k))  # [E] valid assignments
    f = counts / (n_valid * k if normalise_top_k else n_valid)  # [E]
    P = (probs.float() * weight[:, None]).sum(0) / n_valid  # [E]
    return E * (f * P).sum()


def router_z_loss(
    logits: torch.Tensor,  # [N, E]
    valid: torch.Tensor | None = None,  # [N] bool
) -> torch.Tensor:  # scalar
    """Mean over valid tokens of logsumexp(logits)^2 (ST-MoE). 0 when no token is valid."""
    if logits.dim() != 2:
        raise ValueError(f"expected logits [N, E], got {list(logits.shape)}")
    _check_valid(valid, (logits.shape[0],), "one per token")
    z2 = torch.logsumexp(logits.float(), dim=-1).square()  # [N]
    if valid is None:
        return z2.sum() / max(z2.shape[0], 1)  # not z2.mean(): the mean of zero tokens is NaN
    return (z2 * valid.float()).sum() / valid.sum().clamp_min(1)


@dataclass
class MoEOutput:
    hidden: torch.Tensor  # [B, T, D], dtype of x; 0 for padding tokens
    router_logits: torch.Tensor  # [N, E] fp32
    expert_index: torch.Tensor  # [N, k] long; rows of padding tokens hold the router's choice but were not routed
    aux_loss: torch.Tensor  # scalar, unweighted load_balancing_loss, normalised (1 under uniform routing)
    z_loss: torch.Tensor  # scalar, unweighted router_z_loss
    expert_fraction: torch.Tensor  # [E] detached: fraction of valid assignments per expert (kept + dropped)
    dropped_fraction: torch.Tensor  # scalar detached: fraction of valid assignments dropped (0 when dropless)


class SparseMoE(nn.Module):
    """Top-k routed GeGLU/SwiGLU experts (see the module docstring for the math and the routing rules).

    Parameters: `router` (a `Linear(D, E, bias=False)`, evaluated in fp32 whatever its dtype),
    `gate_up_proj` [E, 2F, D] (gate rows first, then up rows) and `down_proj` [E, D, F].

    `forward` raises ValueError when x holds NaN or Inf (anywhere, padding included): a non-finite router input
    makes NaN probabilities, whose top-k silently routes to arbitrary experts. Zero tokens ([0, T, D] or
    [B, 0, D]) give an empty `hidden`, zero aux and z losses and all-zero `expert_fraction` / `dropped_fraction`.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, config: MoEConfig):
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("intermediate_size", intermediate_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(config, MoEConfig):
            raise ValueError(f"config must be a MoEConfig, got {type(config).__name__}")
        self.hidden_size, self.intermediate_size, self.config = hidden_size, intermediate_size, config
        D, F_, E = hidden_size, intermediate_size, config.num_experts
        self.router = Linear(D, E, bias=False)
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * F_, D))
        self.down_proj = nn.Parameter(torch.empty(E, D, F_))
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """Normal(0, std) for router and expert weights (HF Mixtral `_init_weights`, initializer_range 0.02)."""
        if self.gate_up_proj.is_meta:  # shapes only: nothing to fill
            return
        for weight in (self.router.weight, self.gate_up_proj, self.down_proj):
            nn.init.normal_(weight, mean=0.0, std=std)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh") if self.config.activation == "gelu_tanh" else F.silu(x)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:  # [n, D] -> [n, D], dtype of x
        """FFN_e(x) = down(act(gate(x)) * up(x)) in x's dtype (weights are cast, a no-op when they match)."""
        gate, up = F.linear(x, self.gate_up_proj[e].to(x.dtype)).chunk(2, dim=-1)  # [n, F] each
        return F.linear(self._act(gate) * up, self.down_proj[e].to(x.dtype))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> MoEOutput:
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be [B, T, D={self.hidden_size}], got {list(x.shape)}")
        B, T, D = x.shape
        _check_valid(valid, (B, T), "[B, T], False = padding")
        if not torch.isfinite(x).all():  # one host sync; routing is already data-dependent (counts, capacity)
            raise ValueError(f"x must be finite, got NaN or Inf in the [B={B}, T={T}, D={D}] input")
        cfg, E, k, N = self.config, self.config.num_experts, self.config.top_k, B * T
        h = x.reshape(N, D)  # [N, D]
        valid_n = None if valid is None else valid.reshape(N)  # [N]

        # --- router, fp32 throughout (bf16 softmax/top-k flips near-tied choices) ---
        router_in = h.float()
        if self.training and cfg.router_jitter > 0:
            router_in = router_in * torch.empty_like(router_in).uniform_(1 - cfg.router_jitter, 1 + cfg.router_jitter)
        # F.linear on the fp32 copy, not self.router(...): the weight may be bf16 after module.to(bf16).
        logits = F.linear(router_in, self.router.weight.float())  # [N, E]
        probs = logits.softmax(dim=-1)  # [N, E]
        top_p, expert_index = probs.topk(k, dim=-1)  # [N, k]
        gate = top_p / top_p.sum(-1, keepdim=True) if cfg.gating == "topk_softmax" else top_p  # [N, k]

        # --- assignments in slot-major order (all first choices, then all second choices, ...) ---
        slot_expert = expert_index.t().reshape(-1)  # [M]
        slot_token = torch.arange(N, device=x.device).repeat(k)  # [M]
        slot_gate = gate.t().reshape(-1)  # [M]
        if valid_n is not None:  # padding slots go to a sentinel bucket E, which no expert reads
            slot_expert = torch.where(valid_n.repeat(k), slot_expert, E)
        n_valid = N if valid_n is None else int(valid_n.sum())
        # A stable sort groups slots by expert and keeps the slot-major priority inside each group.
        order = torch.argsort(slot_expert, stable=True)  # [M]
        counts = torch.bincount(slot_expert, minlength=E + 1)  # [E + 1], last = padding slots
        sorted_expert = slot_expert[order]  # [M]
        position = torch.arange(order.numel(), device=x.device) - (counts.cumsum(0) - counts)[sorted_expert]  # [M]
        keep = sorted_expert < E  # [M]
        counts = counts[:E]  # [E] valid assignments per expert
        kept_counts = counts
        if cfg.capacity_factor > 0:
            capacity = math.ceil(cfg.capacity_factor * k * n_valid / E)
            keep = keep & (position < capacity)
            kept_counts = counts.clamp_max(capacity)
        kept = order[keep]  # [M_kept] slot ids, grouped by expert, in priority order

        # --- experts: one matmul chain per expert that has tokens; combine in fp32, cast once ---
        token = slot_token[kept]  # [M_kept]
        xs = h.index_select(0, token)  # [M_kept, D]
        ys = [self.expert(e, xe) for e, xe in enumerate(xs.split(kept_counts.tolist())) if xe.shape[0] > 0]
        out = torch.zeros(N, D, dtype=torch.float32, device=x.device)  # [N, D]
        if ys:
            out.index_add_(0, token, torch.cat(ys).float() * slot_gate[kept, None])

        n_assign = max(k * n_valid, 1)
        return MoEOutput(
            hidden=out.to(x.dtype).reshape(B, T, D),
            router_logits=logits,
            expert_index=expert_index,
            aux_loss=load_balancing_loss(probs, expert_index, valid_n, normalise_top_k=True),
            z_loss=router_z_loss(logits, valid_n),
            expert_fraction=(counts.float() / n_assign).detach(),
            dropped_fraction=((counts - kept_counts).sum().float() / n_assign).detach(),
        )

    def loss(self, out: MoEOutput) -> torch.Tensor:
        """The weighted auxiliary terms to add to the task loss: aux_loss_coef * L_aux + z_loss_coef * L_z."""
        return self.config.aux_loss_coef * out.aux_loss + self.config.z_loss_coef * out.z_loss

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"hidden_size={self.hidden_size}, intermediate_size={self.intermediate_size}, "
            f"num_experts={c.num_experts}, top_k={c.top_k}, gating={c.gating}, activation={c.activation}, "
            f"capacity_factor={c.capacity_factor}, router_jitter={c.router_jitter}"
        )
