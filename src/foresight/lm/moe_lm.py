"""A sparse mixture-of-experts language model: the Gemma 2 decoder with routed expert FFNs.

Gemini 1.5 Pro "is a sparse mixture-of-expert (MoE) Transformer-based model" (Gemini Team 2024, arXiv
2403.05530; docs: docs/gemini15_moe.md). The report discloses no MoE recipe, so
this module puts the standard layer (`foresight.nn.moe.SparseMoE`: Switch / ST-MoE / Mixtral) into the
Gemma 2 decoder (`foresight.lm.gemma2`). Only the delta is written here:

    MoEBlock(Gemma2Block)   the same attention sublayer and four RMSNorms; the FFN is a SparseMoE
    MoELM(Gemma2)           the same embedding, RoPE, masks, final norm, tied head and soft-cap; the
                            blocks in `moe_layers` are MoEBlocks, the others stay dense Gemma2Blocks

Axis legend (as in gemma2.py): B batch, T tokens, D hidden, F intermediate size of ONE expert (= the
dense FFN's), V vocab, E experts, k experts per token, N = B*T, L_moe MoE blocks.

Losses: every MoE block returns its load-balancing loss (normalised: 1 under uniform routing) and its
router z-loss, unweighted. The model averages each over the MoE blocks (MegaBlocks' per-layer
convention, so the size of the auxiliary term does not grow with depth) and
``moe_loss = aux_loss_coef * aux_loss + z_loss_coef * z_loss`` is what training adds to the
cross-entropy (`MoENextTokenObjective`).

Routing inside a Gemma 2 block: the FFN output passes through ``post_mlp_norm`` (an RMSNorm) before
the residual add, and an RMSNorm ignores the scale of its input. With top-1 routing the gate only
scales that input, so the router gets (almost) no gradient from the task loss — only from L_aux and
L_z (measured: ~1e-4 vs ~3e-2 for top-2 on the gemini15-moe quick model). Use top-k >= 2 (Mixtral's
renormalised gate: the RELATIVE weights of the k experts survive the norm), as `gemini15-moe` does.

Compute matching: ``MoELMConfig.base`` is a complete Gemma2Config whose ``intermediate_size`` is the
width of ONE expert, so ``Gemma2(config.base)`` is the dense twin. With top-1 routing it runs the
same FFN FLOPs per token as the MoE model (plus the [D, E] router), i.e. the same active parameters up
to ``D * E`` per MoE block; with top-k every token runs k experts (see `num_active_params`).
`MoELMConfig.compute_matched(dense, moe)` is the top-k twin of a dense decoder (k experts of width F / k),
and `init_twins` initialises the two from the same shared weights.

Routing statistics: `router_stats` (per training step, from one forward) and `expert_load_stats`
(per-expert load by block and by position, over held-out batches).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import torch

from foresight.lm.distill import LMLoss, next_token_loss
from foresight.lm.gemma2 import Gemma2, Gemma2Block, Gemma2Config
from foresight.nn.attention import AttentionMask
from foresight.nn.moe import MoEConfig, MoEOutput, SparseMoE
from foresight.nn.rope import RotaryEmbedding

# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MoELMConfig:
    """A Gemma 2 decoder (``base``) whose FFN is a sparse MoE (``moe``) in the blocks ``moe_layers``."""

    base: Gemma2Config  # every dense part; base.intermediate_size = F of ONE expert
    moe: MoEConfig = field(default_factory=MoEConfig)  # router, experts, k, capacity, loss coefficients
    # Block indices whose FFN is a SparseMoE, explicit per layer (like Gemma2Config.layer_types).
    # None -> every block (Switch replaces every other FFN; Mixtral, and the default here, every one).
    moe_layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.base, Gemma2Config):
            raise ValueError(f"base must be a Gemma2Config, got {type(self.base).__name__}")
        if not isinstance(self.moe, MoEConfig):
            raise ValueError(f"moe must be a MoEConfig, got {type(self.moe).__name__}")
        L = self.base.num_layers
        layers = tuple(range(L)) if self.moe_layers is None else tuple(self.moe_layers)
        if not layers:
            raise ValueError("moe_layers is empty; name at least one block (a model without MoE is a Gemma2)")
        for i in layers:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < L:
                raise ValueError(f"moe_layers entry {i!r} is not a block index in [0, {L})")
        if len(set(layers)) != len(layers):
            raise ValueError(f"moe_layers {layers} repeats a block")
        object.__setattr__(self, "moe_layers", tuple(sorted(layers)))

    @classmethod
    def tiny(cls, **moe_overrides) -> MoELMConfig:
        """Gemma2Config.tiny() (4 blocks, D=64, F=128 per expert) with 4 experts, top-2, in every block."""
        return cls(base=Gemma2Config.tiny(), moe=MoEConfig(**{"num_experts": 4, "top_k": 2, **moe_overrides}))

    @classmethod
    def compute_matched(cls, dense: Gemma2Config, moe: MoEConfig, moe_layers: tuple[int, ...] | None = None):
        """The MoE twin of the dense decoder ``dense``: experts of width F / k, so the k experts a token is
        routed to run the dense FFN's FLOPs (fine-grained experts, DeepSeekMoE-style) and the active
        parameters are the dense model's plus the [D, E] routers."""
        F, k = dense.intermediate_size, moe.top_k
        if F % k:
            raise ValueError(f"the dense intermediate_size={F} must be a multiple of top_k={k} (experts of F / k)")
        return cls(base=dense.replace(intermediate_size=F // k), moe=moe, moe_layers=moe_layers)

    def replace(self, **changes) -> MoELMConfig:
        return replace(self, **changes)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class MoEBlock(Gemma2Block):
    """A Gemma2Block whose `mlp` is a SparseMoE: same norms and attention, routed FFN.

    The padding flags reach the router, so pads are neither routed nor counted in the losses.
    """

    def __init__(self, config: MoELMConfig, layer_idx: int):
        super().__init__(config.base, layer_idx)
        self.mlp = SparseMoE(config.base.hidden_size, config.base.intermediate_size, config.moe)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, D]
        cos: torch.Tensor,  # [B, T, E]
        sin: torch.Tensor,  # [B, T, E]
        mask: AttentionMask,
        cache=None,
        backend: str = "eager",
        valid: torch.Tensor | None = None,  # [B, T] bool, False = padding
    ) -> tuple[torch.Tensor, MoEOutput]:
        x = self.attention_sublayer(x, cos, sin, mask, cache, backend)
        moe = self.mlp(self.mlp_norm(x), valid)
        return x + self.post_mlp_norm(moe.hidden), moe


@dataclass
class MoELMOutput:
    """What `MoELM.forward` returns (losses unweighted except `moe_loss`)."""

    logits: torch.Tensor  # [B, T_keep, V] float32, soft-capped
    aux_loss: torch.Tensor  # scalar: load-balancing loss, mean over MoE blocks (1 = perfectly uniform)
    z_loss: torch.Tensor  # scalar: router z-loss, mean over MoE blocks
    moe_loss: torch.Tensor  # scalar: aux_loss_coef * aux_loss + z_loss_coef * z_loss (add it to the CE)
    expert_fraction: torch.Tensor  # [L_moe, E] detached: share of valid token-slots per expert, per block
    dropped_fraction: torch.Tensor  # scalar detached: share of valid token-slots dropped, mean over blocks
    expert_index: tuple[torch.Tensor, ...] = ()  # L_moe tensors [N, k]: the experts each token chose
    cache: object | None = None  # the Gemma2Cache passed in (updated in place), or None


class MoELM(Gemma2):
    """Gemma 2 with SparseMoE FFNs in ``config.moe_layers``; see the module docstring.

    ``self.config`` stays the base Gemma2Config (the KV cache and `generate` read it);
    ``self.moe_config`` is the full MoELMConfig.
    """

    def __init__(self, config: MoELMConfig, attn_backend: str = "auto"):
        if not isinstance(config, MoELMConfig):
            raise ValueError(f"config must be a MoELMConfig, got {type(config).__name__}")
        super().__init__(config.base, attn_backend)  # the dense twin, initialised as Gemma2(config.base)
        self.moe_config = config
        for i in config.moe_layers:
            dense, block = self.layers[i], MoEBlock(config, i)
            # Keep the twin's attention and norms, so that under one seed MoELM(config) and
            # Gemma2(config.base) start from the same shared weights and differ only in the FFNs.
            for name in ("attn_norm", "attn", "post_attn_norm", "mlp_norm", "post_mlp_norm"):
                setattr(block, name, getattr(dense, name))
            if not self.embed.weight.is_meta:
                block.mlp.reset_parameters(config.base.initializer_range)
            self.layers[i] = block

    def reset_parameters(self, std: float | None = None) -> None:
        """Gemma2's init (router included: it is a Linear) plus Normal(0, std) for the expert tensors."""
        super().reset_parameters(std)
        if self.embed.weight.is_meta:
            return
        std = self.config.initializer_range if std is None else std
        for module in self.modules():
            if isinstance(module, SparseMoE):
                module.reset_parameters(std)

    # --- parameter counts (compute matching) ------------------------------------------------

    def num_params(self) -> int:
        """Every parameter (the tied LM head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def num_active_params(self) -> int:
        """Parameters one token uses: all but the (E - k) experts it is not routed to, in every MoE block.

        Top-1 (Switch): equals ``Gemma2(config.base)``'s count plus the routers' ``D * E`` per MoE block.
        """
        E, k = self.moe_config.moe.num_experts, self.moe_config.moe.top_k
        inactive = 0
        for i in self.moe_config.moe_layers:
            moe = self.layers[i].mlp
            inactive += (moe.gate_up_proj.numel() + moe.down_proj.numel()) // E * (E - k)
        return self.num_params() - inactive

    # --- forward -------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T] long
        attention_mask: torch.Tensor | None = None,  # [B, T] or [B, past + T]; 1 = real, 0 = pad
        cache=None,  # Gemma2Cache, updated in place
        position_ids: torch.Tensor | None = None,  # [B, T]
        logits_to_keep: int = 0,  # 0 = every position, n = the last n
    ) -> MoELMOutput:
        valid, masks, positions = self._inputs(input_ids, attention_mask, cache, position_ids)
        x = self.embed(input_ids)  # [B, T, D]
        x = x * self.normalizer(x.dtype)
        cos, sin = self.rope(positions)  # [B, T, E] each, fp32
        routed: list[tuple[SparseMoE, MoEOutput]] = []
        for block in self.layers:
            mask = masks[block.layer_type]
            if isinstance(block, MoEBlock):
                x, moe = block(x, cos, sin, mask, cache, self.attn_backend, valid)
                routed.append((block.mlp, moe))
            else:
                x = block(x, cos, sin, mask, cache, self.attn_backend)

        logits = self._logits(x, logits_to_keep)  # Gemma2's final norm, tied head and soft-cap

        n = len(routed)
        return MoELMOutput(
            logits=logits,
            aux_loss=sum(o.aux_loss for _, o in routed) / n,
            z_loss=sum(o.z_loss for _, o in routed) / n,
            moe_loss=sum(m.loss(o) for m, o in routed) / n,
            expert_fraction=torch.stack([o.expert_fraction for _, o in routed]),  # [L_moe, E]
            dropped_fraction=sum(o.dropped_fraction for _, o in routed) / n,
            expert_index=tuple(o.expert_index for _, o in routed),
            cache=cache,
        )


# ---------------------------------------------------------------------------------------------
# Training objective
# ---------------------------------------------------------------------------------------------


def router_stats(out: MoELMOutput) -> dict[str, torch.Tensor]:
    """Per-step router diagnostics (docs/gemini15_moe.md, "Router diagnostics"), detached, for ``LMLoss.extra``: L_aux, L_z, the weighted
    MoE loss, the smallest and largest per-expert share of token-slots over all MoE blocks, the dropped share."""
    frac = out.expert_fraction  # [L_moe, E]
    return {
        "aux_loss": out.aux_loss.detach(),
        "z_loss": out.z_loss.detach(),
        "moe_loss": out.moe_loss.detach(),
        "expert_fraction_min": frac.min(),
        "expert_fraction_max": frac.max(),
        "dropped_fraction": out.dropped_fraction,
    }


class MoENextTokenObjective:
    """Next-token CE plus the model's weighted MoE losses, for `foresight.lm.train.Trainer`.

    ``loss = CE + moe_loss`` (``ce`` alone is what the trainer logs as "ce"); the router diagnostics go
    to ``LMLoss.extra``, which the Trainer averages over the step and logs by name.
    """

    def __call__(self, model, input_ids, targets, window_ids) -> LMLoss:
        out = model(input_ids)
        ce = next_token_loss(out.logits, targets)
        return LMLoss(loss=ce + out.moe_loss, ce=ce.detach(), extra=router_stats(out))

    def __repr__(self) -> str:
        return "MoENextTokenObjective()"


# ---------------------------------------------------------------------------------------------
# Dense twin and routing statistics
# ---------------------------------------------------------------------------------------------


def copy_shared_weights(moe: MoELM, dense: Gemma2) -> list[str]:
    """Copy every weight the MoE model shares with its dense twin (all but the FFNs) from ``dense``; returns
    the copied names.

    Use it when the twin's FFN is wider than one expert (k experts of width F / k against one FFN of
    width F): the init then draws different numbers of values per block, so one seed alone no longer gives
    both models the same embedding, attention and norms.
    """
    twin = dense.state_dict()
    shared = [name for name in moe.state_dict() if ".mlp." not in name]
    missing = [name for name in shared if name not in twin]
    if missing:
        raise ValueError(f"MoE weights {missing} have no counterpart in the dense twin")
    mismatched = [n for n in shared if twin[n].shape != moe.state_dict()[n].shape]
    if mismatched:
        raise ValueError(f"MoE weights {mismatched} differ in shape from the dense twin's")
    with torch.no_grad():
        state = moe.state_dict()
        for name in shared:
            state[name].copy_(twin[name])
    return shared


def init_twins(dense_config: Gemma2Config, moe_config: MoELMConfig, seed: int) -> tuple[Gemma2, MoELM]:
    """(dense model, MoE model) that start from the same point and differ only in their FFN sublayers.

    Each is initialised after ``torch.manual_seed(seed)``; then the MoE's embedding, attention and norms
    are copied from the dense model (`copy_shared_weights`), so a comparison of the two trainings measures
    the FFNs alone.
    """
    torch.manual_seed(seed)
    dense = Gemma2(dense_config)
    torch.manual_seed(seed)
    moe = MoELM(moe_config)
    copy_shared_weights(moe, dense)
    return dense, moe


@torch.no_grad()
def expert_load_stats(model: MoELM, batches: Iterable[torch.Tensor], buckets: int = 8) -> dict:
    """How the routers spread tokens over the experts on ``batches`` of input ids ([B, T] each, same T).

    Returns (JSON-able lists)::

        per_layer               [L_moe][E]  share of token-slots per expert in each MoE block (rows sum to 1),
                                            token-weighted over the batches
        last_layer_by_position  [P][E]      the last MoE block's share per position bucket
                                            (bucket of position t = t * P // T; rows sum to 1)
        fraction_min, fraction_max          extremes of ``per_layer`` (uniform routing: both 1 / E)
        buckets, tokens                     P = min(buckets, T) and the number of tokens seen

    A position bucket shows whether an expert specialises in early or late context (e.g. the needle's
    answer positions); ``per_layer`` is the load the balancing loss targets.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    model.eval()
    E = model.moe_config.moe.num_experts
    device = next(model.parameters()).device
    load, by_pos, tokens, T = None, None, 0, None
    for x in batches:
        B, t = x.shape
        if T is None:
            T, P = t, min(buckets, t)
            by_pos = torch.zeros(P, E, dtype=torch.float64)
        elif t != T:
            raise ValueError(f"every batch must have the same length T={T}, got {t}")
        out = model(x.to(device))
        frac = out.expert_fraction.double().cpu() * (B * t)  # [L_moe, E], weighted by the batch's tokens
        load = frac if load is None else load + frac
        tokens += B * t
        idx = out.expert_index[-1].view(B, t, -1).cpu()  # [B, T, k]
        pos = (torch.arange(t) * P // t).view(1, -1, 1).expand_as(idx)  # [B, T, k] bucket per slot
        by_pos.index_put_((pos.reshape(-1), idx.reshape(-1)), torch.ones(idx.numel(), dtype=torch.float64), True)
    if load is None:
        raise ValueError("batches is empty; need at least one batch of input ids")
    per_layer = load / tokens
    per_pos = by_pos / by_pos.sum(-1, keepdim=True).clamp_min(1.0)
    return {
        "per_layer": per_layer.tolist(),
        "last_layer_by_position": per_pos.tolist(),
        "fraction_min": float(per_layer.min()),
        "fraction_max": float(per_layer.max()),
        "buckets": P,
        "tokens": tokens,
    }


# ---------------------------------------------------------------------------------------------
# Context extension
# ---------------------------------------------------------------------------------------------


def set_rope_base(model: Gemma2, base: float) -> Gemma2:
    """Give ``model`` (a Gemma2 or MoELM) the RoPE base ``base`` in place, for a long-context training stage.

    Raising the base lowers every rotary frequency ``base^(-2j/E)``, so positions far beyond the short
    stage's context rotate the low-frequency pairs by angles the short stage already saw ("adjusted base
    frequency", Xiong et al. 2023, arXiv 2309.16039; Code Llama's 10k -> 1M). The weights are unchanged;
    ``model.config.rope_theta`` (and the MoE's ``moe_config.base``) record the new base, so a checkpoint's
    saved config rebuilds the same model. Returns ``model``.
    """
    if not base > 0:
        raise ValueError(f"RoPE base must be > 0, got {base!r}")
    if model.config.rope_theta == base:
        return model
    device = model.rope.inv_freq.device
    model.rope = RotaryEmbedding(model.config.head_dim, float(base)).to(device)
    model.config = model.config.replace(rope_theta=float(base))
    if isinstance(model, MoELM):
        model.moe_config = model.moe_config.replace(base=model.config)
    return model
