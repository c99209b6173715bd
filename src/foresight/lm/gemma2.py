"""Gemma 2 (Gemma Team, 2024, arXiv 2408.00118): config, presets and the decoder-only model.

Every number used here, with its source: docs/gemma2.md.

Axis legend (used in every shape comment of the LM package):
    B batch           T tokens in this forward call     S key slots attended (cache + new)
    D hidden_size     H query heads                     K key/value heads (GQA, G = H / K)
    E head_dim        F intermediate_size (per proj.)   V vocab size
    L layers          W sliding window (keys, current one included)

One decoder block (HF, google/gemma_pytorch and google-deepmind/gemma agree):
    h = x + post_attn_norm(Attn(attn_norm(x)))
    y = h + post_mlp_norm(MLP(mlp_norm(h)))
Layers alternate local (sliding-window, layer 0) and global attention; the LM head is the tied
embedding, followed by a tanh soft-cap of 30 on the logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

# Imports go one way through the LM package: cache <- gemma2 <- hf_io <- generate.
from foresight.lm.cache import FULL, LAYER_TYPES, SLIDING, Gemma2Cache
from foresight.nn.attention import BACKENDS, AttentionMask, attention
from foresight.nn.norms import RMSNorm
from foresight.nn.rope import RotaryEmbedding, apply_rope
from foresight.nn.softcap import softcap


def alternating_layer_types(num_layers: int, pattern: tuple[str, ...] = (SLIDING, FULL)) -> tuple[str, ...]:
    """Repeat `pattern` over `num_layers` layers. Gemma 2: (sliding, full) so layer 0 is local."""
    for t in pattern:
        if t not in LAYER_TYPES:
            raise ValueError(f"unknown layer type {t!r}; expected one of {LAYER_TYPES}")
    return tuple(pattern[i % len(pattern)] for i in range(num_layers))


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gemma2Config:
    """Gemma 2 hyperparameters. Defaults are the 2B ("gemma-2-2b") model; see the presets."""

    vocab_size: int = 256_000  # V: HF/PyTorch checkpoints (Flax ones carry 256128 rows)
    hidden_size: int = 2304  # D: residual stream width
    intermediate_size: int = 9216  # F: width of EACH of gate_proj and up_proj (paper counts 2F)
    num_layers: int = 26  # L: decoder blocks
    num_heads: int = 8  # H: query heads
    num_kv_heads: int = 4  # K: key/value heads shared by H / K query heads each (GQA)
    head_dim: int = 256  # E: per-head width; NOT hidden_size / num_heads in Gemma 2
    query_pre_attn_scalar: float = 256.0  # scores are scaled by this ** -0.5; read, never derived
    sliding_window: int = 4096  # W: keys a local layer sees, the current token included
    # Per-layer attention kind, explicit (R4 in docs/gemma2.md: never recomputed from layer_idx % 2).
    # None -> alternating (sliding, full), filled in by __post_init__.
    layer_types: tuple[str, ...] | None = None
    max_position_embeddings: int = 8192  # longest sequence (prompt + generated) we accept
    attn_logit_softcap: float | None = 50.0  # tanh cap on attention scores, before the mask
    final_logit_softcap: float | None = 30.0  # tanh cap on output logits
    rope_theta: float = 10_000.0  # RoPE base, same for local and global layers
    rms_norm_eps: float = 1e-6  # epsilon inside every RMSNorm
    tie_word_embeddings: bool = True  # LM head = embedding matrix (all official checkpoints)
    pad_token_id: int | None = 0  # <pad>
    bos_token_id: int | None = 2  # <bos>
    eos_token_ids: tuple[int, ...] = (1,)  # <eos>; instruction-tuned checkpoints add 107 <end_of_turn>
    initializer_range: float = 0.02  # std of the normal init of linear and embedding weights

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "sliding_window",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even for rotate-half RoPE, got {self.head_dim}")
        for name in ("query_pre_attn_scalar", "rope_theta", "rms_norm_eps", "initializer_range"):
            if not _is_positive_finite(getattr(self, name)):
                raise ValueError(f"{name} must be a positive finite number, got {getattr(self, name)!r}")
        for name in ("attn_logit_softcap", "final_logit_softcap"):
            value = getattr(self, name)
            if value is not None and not _is_positive_finite(value):
                raise ValueError(f"{name} must be a positive finite number or None, got {value!r}")
        if not isinstance(self.tie_word_embeddings, bool):
            raise ValueError(f"tie_word_embeddings must be a bool, got {self.tie_word_embeddings!r}")

        # Frozen dataclass: normalise derived/defaulted fields through object.__setattr__.
        layer_types = self.layer_types
        if layer_types is None:
            layer_types = alternating_layer_types(self.num_layers)
        layer_types = tuple(layer_types)
        object.__setattr__(self, "layer_types", layer_types)
        object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))  # a list from JSON is fine too
        if len(layer_types) != self.num_layers:
            raise ValueError(f"layer_types has {len(layer_types)} entries but num_layers is {self.num_layers}")
        for i, t in enumerate(layer_types):
            if t not in LAYER_TYPES:
                raise ValueError(f"layer_types[{i}] = {t!r}; expected one of {LAYER_TYPES}")
        for name, ids in (
            ("pad_token_id", (self.pad_token_id,)),
            ("bos_token_id", (self.bos_token_id,)),
            ("eos_token_ids", self.eos_token_ids),
        ):
            for i in ids:
                if i is None:
                    continue
                if not isinstance(i, int) or isinstance(i, bool):
                    raise ValueError(f"{name} must hold int token ids, got {i!r}")
                if not 0 <= i < self.vocab_size:
                    raise ValueError(f"{name} {i} is outside the vocabulary [0, {self.vocab_size})")

    # --- presets (docs/gemma2.md, "Sizes") ---------------------------------------------------

    @classmethod
    def gemma2_2b(cls) -> Gemma2Config:
        return cls()

    @classmethod
    def gemma2_9b(cls) -> Gemma2Config:
        # query_pre_attn_scalar = 256 = head_dim since gemma_pytorch 03e6575 (it was 224 at launch).
        return cls(
            hidden_size=3584,
            intermediate_size=14336,
            num_layers=42,
            num_heads=16,
            num_kv_heads=8,
            head_dim=256,
            query_pre_attn_scalar=256.0,
        )

    @classmethod
    def gemma2_27b(cls) -> Gemma2Config:
        # query_pre_attn_scalar = 144 = hidden_size / num_heads, not head_dim (128).
        return cls(
            hidden_size=4608,
            intermediate_size=36864,
            num_layers=46,
            num_heads=32,
            num_kv_heads=16,
            head_dim=128,
            query_pre_attn_scalar=144.0,
        )

    @classmethod
    def tiny(cls, **overrides) -> Gemma2Config:
        """A 4-layer toy for tests: head_dim != D/H and query_pre_attn_scalar != head_dim on purpose."""
        base = dict(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_layers=4,
            num_heads=4,
            num_kv_heads=2,
            head_dim=24,
            query_pre_attn_scalar=32.0,
            sliding_window=8,
            max_position_embeddings=512,
        )
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes) -> Gemma2Config:
        """A copy with some fields changed (layer_types is rebuilt if num_layers changes)."""
        if "num_layers" in changes and "layer_types" not in changes:
            changes["layer_types"] = None
        return replace(self, **changes)

    @property
    def num_groups(self) -> int:
        """G: query heads per key/value head."""
        return self.num_heads // self.num_kv_heads


def _is_positive_finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf


# ---------------------------------------------------------------------------------------------
# Modules: attention -> MLP -> block -> model
# ---------------------------------------------------------------------------------------------


class Gemma2Attention(nn.Module):
    """GQA self-attention with RoPE, query_pre_attn_scalar scaling and a tanh soft-cap."""

    def __init__(self, config: Gemma2Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.layer_type = config.layer_types[layer_idx]
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.scale = config.query_pre_attn_scalar**-0.5
        self.softcap = config.attn_logit_softcap
        D, H, K, E = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        self.q_proj = nn.Linear(D, H * E, bias=False)
        self.k_proj = nn.Linear(D, K * E, bias=False)
        self.v_proj = nn.Linear(D, K * E, bias=False)
        self.o_proj = nn.Linear(H * E, D, bias=False)
        self.window = config.sliding_window if self.layer_type == SLIDING else None

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
            f"window={self.window}, scale={self.scale:.4g}, softcap={self.softcap}"
        )

    def forward(
        self,
        x: torch.Tensor,  # [B, T, D]
        cos: torch.Tensor,  # [B, T, E] fp32
        sin: torch.Tensor,  # [B, T, E] fp32
        mask: AttentionMask,
        cache: Gemma2Cache | None = None,
        backend: str = "eager",
    ) -> torch.Tensor:
        B, T, _ = x.shape
        H, K, E = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, E).transpose(1, 2)  # [B, H, T, E]
        k = self.k_proj(x).view(B, T, K, E).transpose(1, 2)  # [B, K, T, E]
        v = self.v_proj(x).view(B, T, K, E).transpose(1, 2)  # [B, K, T, E]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # [B, K, S, E]: what this chunk attends over
        y = attention(q, k, v, mask, scale=self.scale, softcap=self.softcap, backend=backend)  # [B, H, T, E]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * E))  # [B, T, D]


class Gemma2MLP(nn.Module):
    """GeGLU: down(gelu_tanh(gate(x)) * up(x)). The tanh approximation is the trained one (R12)."""

    def __init__(self, config: Gemma2Config):
        super().__init__()
        D, F_ = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(D, F_, bias=False)
        self.up_proj = nn.Linear(D, F_, bias=False)
        self.down_proj = nn.Linear(F_, D, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, T, D]
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class Gemma2Block(nn.Module):
    """Pre- and post-norm around both sublayers (4 RMSNorms per block)."""

    def __init__(self, config: Gemma2Config, layer_idx: int):
        super().__init__()
        self.layer_type = config.layer_types[layer_idx]
        D, eps = config.hidden_size, config.rms_norm_eps
        self.attn_norm = RMSNorm(D, eps)
        self.attn = Gemma2Attention(config, layer_idx)
        self.post_attn_norm = RMSNorm(D, eps)
        self.mlp_norm = RMSNorm(D, eps)
        self.mlp = Gemma2MLP(config)
        self.post_mlp_norm = RMSNorm(D, eps)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, D]
        cos: torch.Tensor,  # [B, T, E]
        sin: torch.Tensor,  # [B, T, E]
        mask: AttentionMask,
        cache: Gemma2Cache | None = None,
        backend: str = "eager",
    ) -> torch.Tensor:  # [B, T, D]
        x = self.attention_sublayer(x, cos, sin, mask, cache, backend)
        return x + self.post_mlp_norm(self.mlp(self.mlp_norm(x)))

    def attention_sublayer(self, x, cos, sin, mask: AttentionMask, cache=None, backend: str = "eager") -> torch.Tensor:
        """x + post_attn_norm(Attn(attn_norm(x))): the first residual half, shared by blocks with other FFNs."""
        return x + self.post_attn_norm(self.attn(self.attn_norm(x), cos, sin, mask, cache, backend))


@dataclass
class Gemma2Output:
    """What `Gemma2.forward` returns."""

    logits: torch.Tensor  # [B, T_keep, V] float32, soft-capped (T_keep = T or logits_to_keep)
    cache: Gemma2Cache | None = None  # the cache passed in (updated in place), or None
    # With output_hidden_states: L + 1 tensors [B, T, D]: the scaled embeddings, then the output of
    # each block (the last one before the final norm).
    hidden_states: tuple[torch.Tensor, ...] | None = field(default=None)


class Gemma2(nn.Module):
    """The Gemma 2 decoder-only language model.

    `attn_backend` picks the attention implementation (`foresight.nn.attention`): "auto" (the
    default: the exact blockwise kernel for long inference calls, the "eager" reference otherwise
    and for training), "eager", "blockwise", "flex"; "sdpa" refuses Gemma 2's soft-cap. It can be
    changed later with `set_attn_backend`. HF checkpoints are read and written by
    `foresight.lm.hf_io.load_pretrained` / `save_pretrained`. Long prompts: `foresight.lm.cache.prefill`.
    """

    def __init__(self, config: Gemma2Config, attn_backend: str = "auto"):
        super().__init__()
        self.config = config
        self.set_attn_backend(attn_backend)
        self._normalizers: dict[torch.dtype, float] = {}
        D, V = config.hidden_size, config.vocab_size
        self.embed = nn.Embedding(V, D)
        self.layers = nn.ModuleList(Gemma2Block(config, i) for i in range(config.num_layers))
        self.final_norm = RMSNorm(D, config.rms_norm_eps)
        # Tied by default: the LM head reads self.embed.weight (no second [V, D] matrix).
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(D, V, bias=False)
        self.rope = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.reset_parameters()

    # --- init ---------------------------------------------------------------------------------

    def reset_parameters(self, std: float | None = None) -> None:
        """Normal(0, std) for embeddings and linear weights; zeros for the (1 + w) norm scales."""
        if self.embed.weight.is_meta:  # shapes only (parameter counts, hf_io.load_pretrained): nothing to fill
            return
        std = self.config.initializer_range if std is None else std
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                module.reset_parameters()

    def reset_buffers(self) -> None:
        """Recompute non-persistent buffers (after `to_empty()` from the meta device)."""
        self.rope.reset_buffers()

    def set_attn_backend(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
        if backend == "sdpa" and self.config.attn_logit_softcap is not None:
            raise ValueError(
                f"attention backend 'sdpa' cannot apply attn_logit_softcap="
                f"{self.config.attn_logit_softcap}; use 'auto', 'eager', 'blockwise' or 'flex'"
            )
        self.attn_backend = backend

    # --- helpers -------------------------------------------------------------------------------

    @property
    def lm_head_weight(self) -> torch.Tensor:  # [V, D]
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def normalizer(self, dtype: torch.dtype) -> float:
        """sqrt(D) rounded to the activation dtype (48.0 / 59.75 / 68.0 in bf16 for 2B / 9B / 27B).

        All references multiply by a tensor of that dtype (HF PR #29402, gemma_pytorch f499fd4),
        so the rounded value *is* the model; multiplying by the exact float would shift the 9B/27B.
        """
        if dtype not in self._normalizers:  # cached: .item() would break a torch.compile graph
            self._normalizers[dtype] = torch.tensor(math.sqrt(self.config.hidden_size), dtype=dtype).item()
        return self._normalizers[dtype]

    def make_cache(
        self,
        batch_size: int,
        max_length: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Gemma2Cache:
        """A preallocated `Gemma2Cache` for `max_length` tokens (prompt + generated)."""
        p = self.embed.weight
        return Gemma2Cache(
            self.config,
            batch_size=batch_size,
            capacity=max_length,
            dtype=p.dtype if dtype is None else dtype,
            device=p.device if device is None else device,
        )

    # --- forward ---------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T] long
        attention_mask: torch.Tensor | None = None,  # [B, T] or [B, past + T]; 1 = real, 0 = pad
        cache: Gemma2Cache | None = None,  # updated in place
        position_ids: torch.Tensor | None = None,  # [B, T]; default: count real tokens (left padding)
        logits_to_keep: int = 0,  # 0 = logits for every position, n = the last n positions only
        output_hidden_states: bool = False,
    ) -> Gemma2Output:
        valid, masks, positions = self._inputs(input_ids, attention_mask, cache, position_ids)
        x = self.embed(input_ids)  # [B, T, D]
        x = x * self.normalizer(x.dtype)
        cos, sin = self.rope(positions)  # [B, T, E] each, fp32
        hidden = [x] if output_hidden_states else None
        for block in self.layers:
            x = block(x, cos, sin, masks[block.layer_type], cache, self.attn_backend)
            if hidden is not None:
                hidden.append(x)
        logits = self._logits(x, logits_to_keep)
        return Gemma2Output(logits=logits, cache=cache, hidden_states=None if hidden is None else tuple(hidden))

    def _inputs(self, input_ids, attention_mask, cache, position_ids):
        """Forward's set-up: (valid [B, T] bool or None, {layer type: AttentionMask}, RoPE positions [B, T])."""
        cfg = self.config
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, tokens], got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        # An id past the embedding would index out of bounds. One min/max check, skipped inside a
        # compiled graph (it is data-dependent) and on the meta device (no data).
        if input_ids.numel() and input_ids.device.type != "meta" and not torch.compiler.is_compiling():
            for i in torch.stack(torch.aminmax(input_ids)).tolist():  # [min, max]: one sync
                if not 0 <= i < cfg.vocab_size:
                    raise ValueError(f"token id {i} in input_ids is outside the vocabulary [0, {cfg.vocab_size})")
        valid = None
        if attention_mask is not None:
            if attention_mask.shape[0] != B or attention_mask.shape[1] < T:
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} does not cover input_ids {(B, T)}"
                )
            valid = attention_mask[:, -T:].bool()  # [B, T]: only the new tokens' flags are needed
        if cache is None:
            if T > cfg.max_position_embeddings:
                raise ValueError(f"sequence length {T} exceeds max_position_embeddings={cfg.max_position_embeddings}")
            times = torch.arange(T, device=input_ids.device)
            masks = {
                SLIDING: AttentionMask(times, times, valid, cfg.sliding_window),
                FULL: AttentionMask(times, times, valid, None),
            }
            positions = default_positions(valid, B, T, input_ids.device)
        else:
            # The cache checks the length limit, builds the masks and advances its own clock.
            masks, positions = cache.begin(T, valid)
        return valid, masks, positions if position_ids is None else position_ids

    def _logits(self, x: torch.Tensor, logits_to_keep: int) -> torch.Tensor:  # [B, T, D] -> [B, T_keep, V] fp32
        """Final norm, tied head and soft-cap on the last `logits_to_keep` positions (0 = all)."""
        if logits_to_keep > 0:
            x = x[:, -logits_to_keep:]  # norm and head are per-token: slicing first saves work
        x = self.final_norm(x)
        logits = self.lm_head_product(x)  # [B, T_keep, V]
        return softcap(logits.float(), self.config.final_logit_softcap)

    def lm_head_product(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, T, V]
        """x @ lm_head_weight.T, before the soft-cap. A method of its own because the tied head is no
        module, and `foresight.lm.cpu_decode` must still reach the biggest product of a decode step."""
        return F.linear(x, self.embed.weight) if self.lm_head is None else self.lm_head(x)


def default_positions(valid: torch.Tensor | None, B: int, T: int, device) -> torch.Tensor:
    """RoPE positions [B, T]: the count of real tokens before each one (pads get 0).

    With left padding this makes every row's first real token position 0, as HF `generate` does
    (cumsum(mask) - 1). Without a mask: 0..T-1.
    """
    if valid is None:
        return torch.arange(T, device=device).expand(B, T)
    return (valid.long().cumsum(-1) - 1).clamp(min=0)
