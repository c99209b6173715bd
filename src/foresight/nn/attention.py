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
    "blockwise" eager's result one [128, 128] score tile at a time (online softmax, flash-style,
            `blockwise_attention`): soft-cap, GQA, window and padding exact; never holds T x S
            scores; skips tiles wholly in the future or outside the window (docs/gemini15_moe.md,
            "Long context").
    "auto"  the default of the models: "blockwise" for long inputs without autograd, else "eager"
            (training keeps eager; `AUTO_BLOCKWISE_MIN_SCORES` says where the switch is and why).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKENDS = ("eager", "flex", "sdpa", "blockwise", "auto")

# "auto" switches from eager to blockwise at B * H * T * S >= this many scores (16 MiB of fp32).
# Measured on this CPU, 1 thread, soft-cap 50, causal T = S: the two break even between 1M and 2.4M
# scores (B=1, H=4: eager 2.2 ms vs 2.3 ms at T=384, 4.1 vs 3.4 at T=512; B=16: 3.9 vs 8.0 ms at
# T=128, 14 vs 10 at T=192); from 4M on blockwise is faster (B=16, T=256: 23 vs 16 ms; B=1, T=4096:
# 520 vs 110 ms) and its memory stays flat. Below the switch eager is within a few ms either way.
AUTO_BLOCKWISE_MIN_SCORES = 1 << 22


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
    if backend == "auto":
        backend = auto_backend(q, k, v, mask)
    if backend == "blockwise":
        return blockwise_attention(q, k, v, mask, scale=scale, softcap=softcap)
    if backend == "eager":
        return eager_attention(q, k, v, mask, scale=scale, softcap=softcap)
    if backend == "flex":
        return flex_attention(q, k, v, mask, scale=scale, softcap=softcap)
    if backend == "sdpa":
        return sdpa_attention(q, k, v, mask, scale=scale, softcap=softcap)
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")


def auto_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask) -> str:
    """ "blockwise" for a long call that needs no gradient, else "eager" (see AUTO_BLOCKWISE_MIN_SCORES).

    Training keeps eager: blockwise's autograd would store every tile, i.e. the T x S scores anyway.
    Masks of a subclass (e.g. multimodal bidirectional spans) carry rules blockwise does not read.
    """
    B, H, T, _ = q.shape
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if grad or type(mask) is not AttentionMask or B * H * T * k.shape[2] < AUTO_BLOCKWISE_MIN_SCORES:
        return "eager"
    return "blockwise"


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


# ---------------------------------------------------------------------------------------------
# Blockwise (flash-style) attention: exact, O(block) score memory
# ---------------------------------------------------------------------------------------------

BLOCK_Q = 128  # query rows per block (x G heads of one kv head share each key block)
BLOCK_K = 128  # key slots per block


def blockwise_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: AttentionMask,
    *,
    scale: float,
    softcap: float | None = None,
    block_q: int = BLOCK_Q,
    block_k: int = BLOCK_K,
) -> torch.Tensor:
    """Eager's result, one [block_q, block_k] tile of scores at a time (online softmax, flash-style).

    For each query block the running row max m, row sum l and unnormalised output acc are updated
    per key block (Milakov & Gimelshein 2018; Dao et al. 2022, arXiv 2205.14135):

        s     = mask(cap * tanh(scale * q k^T / cap))         elementwise, so exact per tile
        m'    = max(m, rowmax(s));  p = exp(s - m')
        l     = l * exp(m - m') + rowsum(p)
        acc   = acc * exp(m - m') + p @ v
        out   = acc / l

    A key block whose written times are all in the future of the query block, all at or before
    `q_time - window`, all empty (-1) or all padding is skipped without computing anything, so a
    sliding layer costs O(T * W) and a causal one half of T x S. Tiles that are wholly visible
    skip the mask. A query row that sees no key at all (a padding query) gets eager's answer,
    the mean of v over all S slots (eager's softmax of a row of finfo.min is uniform).

    Memory: O(block_q * block_k) scores per kv head instead of O(T * S). Autograd works (out of
    place ops when a gradient is needed) but stores every tile; training keeps the eager backend.
    """
    if type(mask) is not AttentionMask:  # a subclass (e.g. multimodal spans) may see more keys
        raise ValueError(f"blockwise attention reads AttentionMask's fields only; got {type(mask).__name__}")
    B, H, T, E = q.shape
    K, S, Ev = k.shape[1], k.shape[2], v.shape[-1]
    G = H // K
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    window = mask.window
    q_time, k_time, k_valid = mask.q_time, mask.k_time, mask.k_valid
    plan = _tile_plan(mask, T, S, block_q, block_k)
    qg = q.view(B, K, G, T, E)
    out = q.new_empty(B, K, G, T, Ev)
    for (qs, qe), tiles in plan:
        tq = qe - qs
        qb = qg[:, :, :, qs:qe].reshape(B, K, G * tq, E)  # [B, K, G*tq, E]
        m = q.new_full((B, K, G * tq), -torch.inf, dtype=torch.float32)  # running row max
        l = q.new_zeros((B, K, G * tq), dtype=torch.float32)  # running row sum
        acc = q.new_zeros((B, K, G * tq, Ev), dtype=torch.float32)  # running p @ v
        for ks, ke, whole in tiles:
            s = torch.matmul(qb, k[:, :, ks:ke].transpose(-1, -2)).float()  # [B, K, G*tq, tk]
            if grad:
                s = s * scale
                if softcap is not None:
                    s = torch.tanh(s / softcap) * softcap  # cap BEFORE the mask, as eager
            else:
                s.mul_(scale)
                if softcap is not None:
                    s.div_(softcap).tanh_().mul_(softcap)
            if not whole:
                qt, kt = q_time[qs:qe, None], k_time[None, ks:ke]  # [tq, 1], [1, tk]
                vis = (kt >= 0) & (kt <= qt)  # [tq, tk]
                if window is not None:
                    vis = vis & (kt > qt - window)
                vis = vis[None] if k_valid is None else vis & k_valid[:, None, ks:ke]  # [B|1, tq, tk]
                s = s.view(B, K, G, tq, ke - ks).masked_fill(~vis[:, None, None], -torch.inf).view_as(s)
            m_new = torch.maximum(m, s.amax(-1))  # [B, K, G*tq]
            # A row with nothing visible yet has m_new = -inf; subtract 0 there so exp gives 0, not NaN.
            m_safe = m_new.masked_fill(m_new == -torch.inf, 0.0) if not whole else m_new
            alpha = torch.exp(m - m_safe)  # [B, K, G*tq]; 0 on the first visible tile
            p = torch.exp(s - m_safe[..., None]) if grad else s.sub_(m_safe[..., None]).exp_()
            pv = torch.matmul(p.to(v.dtype), v[:, :, ks:ke]).float()  # [B, K, G*tq, Ev]
            if grad:
                l = l * alpha + p.sum(-1)
                acc = acc * alpha[..., None] + pv
            else:
                l.mul_(alpha).add_(p.sum(-1))
                acc.mul_(alpha[..., None]).add_(pv)
            m = m_new
        empty = l == 0  # [B, K, G*tq]: rows that saw no key (padding queries)
        res = acc / l.masked_fill(empty, 1.0)[..., None]
        if bool(empty.any()):
            uniform = v.float().mean(2, keepdim=True)  # [B, K, 1, Ev]: eager's fully masked row
            res = torch.where(empty[..., None], uniform, res)
        out[:, :, :, qs:qe] = res.to(q.dtype).view(B, K, G, tq, Ev)
    return out.view(B, H, T, Ev)


def _tile_plan(mask: AttentionMask, T: int, S: int, block_q: int, block_k: int):
    """[((qs, qe), [(ks, ke, whole), ...]), ...]: the key blocks each query block must visit.

    Decided from per-block min/max of the time indices with one host sync: a key block is skipped
    when no key in it can be visible to any query of the block, and marked `whole` when every key
    is visible to every query (then its tile needs no mask).
    """
    q_time, k_time, k_valid, window = mask.q_time, mask.k_time, mask.k_valid, mask.window
    nq, nk = -(-T // block_q), -(-S // block_k)
    big = torch.iinfo(torch.long).max
    qt = F.pad(q_time, (0, nq * block_q - T), value=-1).view(nq, block_q)
    q_min = qt.masked_fill(qt < 0, big).amin(1)  # [nq]
    q_max = qt.amax(1)
    kt = F.pad(k_time, (0, nk * block_k - S), value=-1).view(nk, block_k)
    written = kt >= 0
    k_min = kt.masked_fill(~written, big).amin(1)  # [nk]; big if nothing is written
    k_max = kt.amax(1)  # -1 if nothing is written
    k_full = written.all(1)  # every slot written (the padded tail of the last block counts as empty)
    if k_valid is None:
        k_any = k_all = torch.ones(nk, dtype=torch.bool, device=k_time.device)
    else:
        kv = F.pad(k_valid, (0, nk * block_k - S), value=False).view(-1, nk, block_k)
        k_any, k_all = kv.any(-1).any(0), kv.all(-1).all(0)  # [nk]: some row / every row valid
    stats = torch.stack([q_min, q_max]).tolist(), torch.stack([k_min, k_max, k_full, k_any, k_all]).tolist()
    (q_min, q_max), (k_min, k_max, k_full, k_any, k_all) = stats
    plan = []
    for i in range(nq):
        tiles = []
        for j in range(nk):
            if not k_any[j] or k_max[j] < 0 or k_min[j] > q_max[i]:  # empty, padding or all in the future
                continue
            if window is not None and k_max[j] <= q_min[i] - window:  # all before every query's window
                continue
            whole = bool(k_full[j] and k_all[j] and k_max[j] <= q_min[i])
            if window is not None:
                whole = whole and k_min[j] > q_max[i] - window
            tiles.append((j * block_k, min(S, (j + 1) * block_k), whole))
        plan.append(((i * block_q, min(T, (i + 1) * block_q)), tiles))
    return plan
