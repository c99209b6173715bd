"""Scaled dot-product attention with Gemma 2 semantics, behind one function and three backends.

Axis legend:
    B batch, H query heads, K key/value heads (GQA: H = K * G), G query heads per kv head,
    T queries (new tokens), S key slots, E head_dim.

Score order (every reference implementation agrees, see docs/gemma2.md, "Forward pass"):
    1. s = (q . k) * scale                  scale = query_pre_attn_scalar ** -0.5, read from config
    2. s = cap * tanh(s / cap)              attention soft-cap, BEFORE the mask
    3. mask (causal, sliding window, padding)
    4. softmax in float32, then probs @ v

Backends:
    "eager" the reference. Grouped matmuls (no repeat_kv copy of K/V), fp32 scores and softmax,
            masked scores set to finfo(float32).min so a fully masked (padding) row is a uniform
            average instead of NaN.
    "flex"  torch FlexAttention: the soft-cap is a `score_mod` and the mask a `BlockMask`, so both
            stay exact. Compiled (fused kernel) on CUDA; on CPU the uncompiled path materialises
            the scores and is slower than "eager" (it exists there for testing). Fully masked
            rows return zeros.
    "sdpa"  `F.scaled_dot_product_attention`. It has no soft-cap, so it refuses (ValueError)
            any call with a soft-cap instead of silently computing another model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKENDS = ("eager", "flex", "sdpa")


@dataclass(frozen=True)
class AttentionMask:
    """Which keys each query may see, described by stream time indices rather than a dense matrix.

    Every backend builds its own representation from these few vectors (a dense bool matrix for
    eager/sdpa, a `mask_mod` for flex). Time indices count tokens in the stream, padding included,
    so they are shared by all rows of a left-padded batch; RoPE positions are separate.

    Key j is visible to query i iff
        k_valid[b, j]  and  0 <= k_time[j] <= q_time[i]  and  (window is None or k_time[j] > q_time[i] - window)
    i.e. a sliding window holds `window` keys *including* the current one (FA-style left = window - 1).
    """

    q_time: torch.Tensor  # [T] long: stream index of each query
    k_time: torch.Tensor  # [S] long: stream index held by each key slot, -1 for an empty slot
    k_valid: torch.Tensor | None = None  # [B, S] bool: False for padding keys; None = all real
    window: int | None = None  # sliding-window size W (keys), None = global causal

    def dense(self) -> torch.Tensor:
        """Boolean visibility matrix [B or 1, T, S] (True = may attend), computed once per mask.

        One mask object serves every layer of a type in a forward pass, so it is worth caching;
        the cache lives in the instance dict because the dataclass is frozen.
        """
        if "_dense" not in self.__dict__:
            self.__dict__["_dense"] = self._build_dense()
        return self.__dict__["_dense"]

    def blocked(self) -> torch.Tensor:
        """The complement of `dense()` (True = must not attend), cached the same way."""
        if "_blocked" not in self.__dict__:
            self.__dict__["_blocked"] = ~self.dense()
        return self.__dict__["_blocked"]

    def _build_dense(self) -> torch.Tensor:
        q = self.q_time[:, None]  # [T, 1]
        k = self.k_time[None, :]  # [1, S]
        visible = (k >= 0) & (k <= q)  # [T, S] causal, empty ring slots hidden
        if self.window is not None:
            visible = visible & (k > q - self.window)
        visible = visible[None]  # [1, T, S]
        if self.k_valid is not None:
            visible = visible & self.k_valid[:, None, :]  # [B, T, S]
        return visible


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: AttentionMask,
    *,
    scale: float,
    softcap: float | None = None,
    backend: str = "eager",
) -> torch.Tensor:
    """Attention of q [B, H, T, E] over k, v [B, K, S, E] -> [B, H, T, E_v] (dtype of q).

    `softcap=None` disables the tanh cap. Raises ValueError for an unknown backend, a head count
    that GQA cannot group, or a backend that cannot honour the request (sdpa + soft-cap).
    """
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]})")
    if backend == "eager":
        return eager_attention(q, k, v, mask, scale=scale, softcap=softcap)
    if backend == "flex":
        return flex_attention(q, k, v, mask, scale=scale, softcap=softcap)
    if backend == "sdpa":
        return sdpa_attention(q, k, v, mask, scale=scale, softcap=softcap)
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")


def eager_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: AttentionMask,
    *,
    scale: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """Reference backend: plain matmuls, fp32 soft-cap + mask + softmax."""
    B, H, T, E = q.shape
    K, S = k.shape[1], k.shape[2]
    G = H // K
    # Head h reads kv head h // G, so the G query heads of one kv head are contiguous: fold them
    # into the query axis and use one batched matmul per kv head instead of copying K/V G times.
    qg = q.reshape(B, K, G * T, E)  # [B, K, G*T, E]
    scores = torch.matmul(qg, k.transpose(-1, -2)).float()  # [B, K, G*T, S]
    blocked = mask.blocked()[:, None, None]  # [B|1, 1, 1, T, S]
    low = torch.finfo(torch.float32).min
    # Same operation order as the references: scale, then cap * tanh(s / cap), then the mask.
    if scores.requires_grad:  # training: autograd needs every intermediate
        scores = scores * scale
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap  # cap BEFORE the mask
        scores = scores.view(B, K, G, T, S).masked_fill(blocked, low)
    else:  # inference: in place, since these [.., T, S] passes dominate a long prefill
        scores.mul_(scale)
        if softcap is not None:
            scores.div_(softcap).tanh_().mul_(softcap)  # cap BEFORE the mask
        scores = scores.view(B, K, G, T, S).masked_fill_(blocked, low)
    probs = torch.softmax(scores, dim=-1).to(v.dtype)  # [B, K, G, T, S]
    out = torch.matmul(probs.view(B, K, G * T, S), v)  # [B, K, G*T, E]
    return out.view(B, H, T, v.shape[-1])


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: AttentionMask,
    *,
    scale: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """PyTorch SDPA. Only valid without a soft-cap (it cannot apply tanh to the scores)."""
    if softcap is not None:
        raise ValueError(
            f"the 'sdpa' attention backend cannot apply the attention soft-cap ({softcap}); "
            "use backend='eager' or 'flex' (Gemma 2 requires the cap)"
        )
    B, H, T, E = q.shape
    K = k.shape[1]
    visible = mask.dense()[:, None]  # [B|1, 1, T, S]
    # A fully masked (padding) query row would give NaN; let it see everything instead (its output
    # is never used by real tokens, which cannot attend to padding).
    visible = visible | ~visible.any(dim=-1, keepdim=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scale, enable_gqa=K != H)


def flex_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: AttentionMask,
    *,
    scale: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """FlexAttention with the soft-cap as a score_mod and the mask as a block mask."""
    from torch.nn.attention import flex_attention as flex

    B, H, T, E = q.shape
    S = k.shape[2]
    # Every layer of one type shares the same AttentionMask, so build its block mask only once.
    key = ("block_mask", B, T, S, q.device)
    block_mask = mask.__dict__.get(key)  # frozen dataclass: the cache lives in the instance dict
    if block_mask is None:
        block_mask = mask.__dict__[key] = _block_mask(mask, B, T, S, q.device)

    def score_mod(score, b, h, qi, ki):
        return torch.tanh(score / softcap) * softcap

    kwargs = dict(
        score_mod=score_mod if softcap is not None else None,
        block_mask=block_mask,
        scale=scale,
        enable_gqa=k.shape[1] != H,  # GQA handled natively (no K/V copies)
    )
    if q.device.type == "cuda":
        return _compiled_flex()(q, k, v, **kwargs)
    # On CPU the unfused path is a deliberate choice (compiling costs ~17 s per shape), so its
    # "use torch.compile" warning is noise here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex.flex_attention(q, k, v, **kwargs)


def _block_mask(mask: AttentionMask, B: int, T: int, S: int, device):
    from torch.nn.attention import flex_attention as flex

    q_time, k_time, k_valid, window = mask.q_time, mask.k_time, mask.k_valid, mask.window

    # mask_mod receives index tensors; the closure reads the small time/valid vectors.
    # create_block_mask pads lengths up to its block size, so indices are clamped before use and
    # the padded part is hidden by the explicit bounds check.
    def mask_mod(b, h, qi, ki):
        qi_c = qi.clamp(max=T - 1)
        ki_c = ki.clamp(max=S - 1)
        qt, kt = q_time[qi_c], k_time[ki_c]
        ok = (ki < S) & (qi < T) & (kt >= 0) & (kt <= qt)
        if window is not None:
            ok = ok & (kt > qt - window)
        if k_valid is not None:
            ok = ok & k_valid[b, ki_c]
        return ok

    return flex.create_block_mask(mask_mod, B if k_valid is not None else 1, None, T, S, device=device)


_COMPILED_FLEX = None


def _compiled_flex():
    """torch.compile(flex_attention), created once: uncompiled flex materialises the full score matrix."""
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention as raw

        _COMPILED_FLEX = torch.compile(raw, dynamic=False)
    return _COMPILED_FLEX
