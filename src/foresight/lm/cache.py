"""KV cache for Gemma 2: ring buffers for sliding-window layers, flat buffers for global layers.

Axis legend: B batch, K kv heads, E head_dim, T new tokens, W sliding window, C capacity (tokens),
R ring size (= min(W, C)), S key slots one forward attends over.

Design (R2, R10 in docs/gemma2.md):
- The stream length (`length`) is tracked by the cache itself, never read back from a layer buffer
  (HF #38156: reading it from a sliding layer broke positions past W).
- A sliding layer keeps only the last R <= W keys in a ring: token at stream time t lives in slot
  t % R, and `ring_time[slot]` remembers t so that the mask is computed from real time indices.
  Memory is O(W) however long the stream.
- A global layer keeps every key; its buffer is preallocated for `capacity` tokens and grows
  (doubling) if more arrive, so the length is never fixed up front.
- Padding is remembered per (row, time) so later tokens never attend to it.
- All buffers are plain tensors in lists: inspect them, slice them, compute their bytes.

Chunk semantics: `begin(T, valid)` describes one forward of T new tokens and returns the masks;
`update(layer, k, v)` stores that layer's new keys/values and returns the slots to attend over:
- decode (T == 1): write into the ring first, then attend over the ring (no concatenation, no
  allocation: the W slots are exactly the window including the current token);
- prefill / chunk (T > 1): attend over [ring contents, new keys] (so a prompt longer than W still
  sees exact windows), then keep the last R new keys in the ring.
If a forward fails midway the cache contents are undefined; start a new one.

Chunked prefill (`prefill`): a long prompt goes through the model `PREFILL_CHUNK` tokens at a time,
each chunk attending over the cache plus itself, so no forward holds more than chunk x S scores
(and with the blockwise attention kernel only a tile of them): peak memory is the O(T) cache plus
O(chunk) activations, and the logits equal the one-shot forward's (tests/lm/test_gemma2_cache.py).

Static mode (`freeze()`, for torch.compile / CUDA graphs): after the prefill, every decode step has
the same shapes and no Python-side state: the stream time lives in a device tensor, writes use
tensor indices, and global layers attend over all C slots (unwritten ones are invalid, so masked).
Only single-token steps are allowed then, and the buffers can no longer grow.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch

from foresight.nn.attention import AttentionMask

# The two attention kinds of a Gemma 2 layer. They live here, the bottom of the LM package's
# import chain (cache <- gemma2 <- hf_io <- generate), because the cache lays out its buffers by them.
SLIDING = "sliding_attention"
FULL = "full_attention"
LAYER_TYPES = (SLIDING, FULL)

# Tokens per prefill forward. Measured on this CPU (1 thread, 16k-token prompt, 2-layer D=128 model,
# blockwise attention), chunks of 512 / 1024 / 2048 / 4096 tokens: 5.9 / 5.8 / 7.0 / 5.8 s with a
# 4096-key window, 3.3 / 3.0 / 3.0 / 3.0 s with a 128-key one, i.e. equal within the noise of a shared
# machine. 1024 is kept: it bounds the activations (chunk x intermediate_size) at no measured cost.
PREFILL_CHUNK = 1024


class CacheLayout(Protocol):
    """What the cache reads from a config; `Gemma2Config` is one."""

    layer_types: tuple[str, ...]
    sliding_window: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int


class Gemma2Cache:
    """KV cache for one batch of streams. Built by `Gemma2.make_cache` or directly from a config."""

    def __init__(
        self,
        config: CacheLayout,
        *,
        batch_size: int,
        capacity: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        if batch_size <= 0 or capacity <= 0:
            raise ValueError(f"batch_size and capacity must be positive, got {batch_size}, {capacity}")
        self.layer_types = tuple(config.layer_types)
        self.window = config.sliding_window
        self.batch_size = batch_size
        self.num_kv_heads, self.head_dim = config.num_kv_heads, config.head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.max_positions = config.max_position_embeddings
        self._length = 0  # tokens (time steps, padding included) written so far (dynamic mode)
        self.static = False  # see freeze()
        self.time: torch.Tensor | None = None  # [1] long: stream time of the next token (static mode)
        self.capacity = capacity  # C: global-layer slots currently allocated
        self.ring_size = min(self.window, capacity)  # R
        self.next_position = torch.zeros(batch_size, dtype=torch.long, device=self.device)  # [B] RoPE pos

        self.keys: list[torch.Tensor] = []  # per layer: [B, K, R, E] (sliding) or [B, K, C, E] (global)
        self.values: list[torch.Tensor] = []
        for t in self.layer_types:
            slots = self.ring_size if t == SLIDING else capacity
            self.keys.append(self._empty(slots))
            self.values.append(self._empty(slots))
        self.full_valid = torch.zeros(batch_size, capacity, dtype=torch.bool, device=self.device)  # [B, C]
        self.ring_time = torch.full((self.ring_size,), -1, dtype=torch.long, device=self.device)  # [R]
        self.ring_valid = torch.zeros(batch_size, self.ring_size, dtype=torch.bool, device=self.device)
        self._arange = torch.arange(capacity, device=self.device)  # [C] stream times of global slots
        self._chunk: tuple[int, int] | None = None  # (start, T) of the forward in progress
        self._static_index: tuple[torch.Tensor, torch.Tensor] | None = None  # ([1] time, [1] ring slot)

    def _empty(self, slots: int) -> torch.Tensor:
        B, K, E = self.batch_size, self.num_kv_heads, self.head_dim
        return torch.zeros(B, K, slots, E, dtype=self.dtype, device=self.device)

    # --- bookkeeping ---------------------------------------------------------------------------

    @property
    def length(self) -> int:
        """Tokens written so far (padding included). Reading it in static mode syncs the device."""
        return int(self.time) if self.static else self._length

    def freeze(self) -> None:
        """Enter static mode: fixed shapes and device-side bookkeeping for compiled decode steps."""
        if self.static:
            return
        self.time = torch.tensor([self._length], dtype=torch.long, device=self.device)
        self.static = True
        # Tell torch.compile these tensors keep their address, so CUDA graphs may mutate them in place.
        for t in [*self.keys, *self.values, self.full_valid, self.ring_time, self.ring_valid, self.next_position]:
            torch._dynamo.mark_static_address(t)
        torch._dynamo.mark_static_address(self.time)

    def reset(self) -> None:
        """Empty the cache in place (same tensors, so a compiled step that captured them stays valid)."""
        for t in [*self.keys, *self.values]:
            t.zero_()
        self.full_valid.zero_()
        self.ring_valid.zero_()
        self.ring_time.fill_(-1)
        self.next_position.zero_()
        self._length, self.static, self.time, self._chunk = 0, False, None, None

    def nbytes(self) -> int:
        """Bytes held by the key/value buffers (works on the meta device: nothing is read)."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def _grow(self, needed: int) -> None:
        """Make room for `needed` tokens in global layers (and the ring, up to W)."""
        if needed > self.capacity:
            new_cap = max(needed, 2 * self.capacity)
            for i, t in enumerate(self.layer_types):
                if t == FULL:
                    for bufs in (self.keys, self.values):
                        grown = self._empty(new_cap)
                        grown[:, :, : self.capacity] = bufs[i]
                        bufs[i] = grown
            valid = torch.zeros(self.batch_size, new_cap, dtype=torch.bool, device=self.device)
            valid[:, : self.capacity] = self.full_valid
            self.full_valid = valid
            self._arange = torch.arange(new_cap, device=self.device)
            self.capacity = new_cap
        new_ring = min(self.window, self.capacity)
        if new_ring > self.ring_size:
            # The ring only wraps once it is W slots long, so a smaller ring holds times 0..length-1
            # in slots 0..length-1 and can be extended by copying.
            R = self.ring_size
            for i, t in enumerate(self.layer_types):
                if t == SLIDING:
                    for bufs in (self.keys, self.values):
                        grown = self._empty(new_ring)
                        grown[:, :, :R] = bufs[i]
                        bufs[i] = grown
            ring_time = torch.full((new_ring,), -1, dtype=torch.long, device=self.device)
            ring_time[:R] = self.ring_time
            ring_valid = torch.zeros(self.batch_size, new_ring, dtype=torch.bool, device=self.device)
            ring_valid[:, :R] = self.ring_valid
            self.ring_time, self.ring_valid, self.ring_size = ring_time, ring_valid, new_ring

    def begin(self, T: int, valid: torch.Tensor | None) -> tuple[dict[str, AttentionMask], torch.Tensor]:
        """Start a forward of T new tokens (valid [B, T] bool or None = all real).

        Returns the attention mask for each layer type and the RoPE positions [B, T] of the new
        tokens, and advances `length` / `next_position`.
        """
        if self.static:
            if T != 1 or valid is not None:
                raise ValueError("a frozen (static) cache takes one token per row and no attention_mask")
            return self._begin_static()
        B, start = self.batch_size, self._length
        if start + T > self.max_positions:
            raise ValueError(
                f"sequence length {start + T} (cached {start} + new {T}) exceeds "
                f"max_position_embeddings={self.max_positions}"
            )
        if valid is None:
            valid = torch.ones(B, T, dtype=torch.bool, device=self.device)
        elif valid.shape != (B, T):
            raise ValueError(f"valid mask shape {tuple(valid.shape)} != {(B, T)} (batch, new tokens)")
        self._grow(start + T)
        times = self._arange[start : start + T]  # [T] stream times of the new tokens

        # Global layers: write the new flags, attend over every slot written so far.
        self.full_valid[:, start : start + T] = valid
        full = AttentionMask(times, self._arange[: start + T], self.full_valid[:, : start + T], None)

        # Sliding layers.
        R = self.ring_size
        if T == 1:
            slot = start % R
            self.ring_time[slot] = start
            self.ring_valid[:, slot] = valid[:, 0]
            sliding = AttentionMask(times, self.ring_time, self.ring_valid, self.window)
        else:
            if start == 0:  # empty ring: attend over the new keys only
                k_time, k_valid = times, valid
            else:
                k_time = torch.cat([self.ring_time, times])  # [R + T]
                k_valid = torch.cat([self.ring_valid, valid], dim=1)  # [B, R + T]
            sliding = AttentionMask(times, k_time, k_valid, self.window)
            keep = min(T, R)  # the ring keeps the last `keep` new tokens
            slots = self._ring_slots(start, T)
            self.ring_time[slots] = times[T - keep :]
            self.ring_valid[:, slots] = valid[:, T - keep :]

        positions = (valid.long().cumsum(-1) - 1).clamp(min=0) + self.next_position[:, None]  # [B, T]
        self.next_position += valid.long().sum(-1)  # in place: a frozen cache keeps these tensors
        self._chunk = (start, T)
        self._length = start + T
        return {SLIDING: sliding, FULL: full}, positions

    def _begin_static(self) -> tuple[dict[str, AttentionMask], torch.Tensor]:
        """One decode step with only tensor state (no Python ints that change between steps)."""
        t = self.time.clone()  # [1] this token's stream time (self.time moves on below)
        slot = t % self.ring_size  # [1]
        self.full_valid.index_fill_(1, t, True)
        self.ring_time.index_copy_(0, slot, t)
        self.ring_valid.index_fill_(1, slot, True)
        positions = self.next_position[:, None].clone()  # [B, 1]
        self.next_position.add_(1)
        self.time.add_(1)
        self._static_index = (t, slot)
        full = AttentionMask(t, self._arange, self.full_valid, None)  # all C slots; unwritten = invalid
        sliding = AttentionMask(t, self.ring_time, self.ring_valid, self.window)
        return {SLIDING: sliding, FULL: full}, positions

    def _ring_slots(self, start: int, T: int) -> torch.Tensor:
        keep = min(T, self.ring_size)
        return self._arange[start + T - keep : start + T] % self.ring_size  # [keep]

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this layer's new k, v [B, K, T, E]; return the keys/values to attend over [B, K, S, E]."""
        kb, vb = self.keys[layer_idx], self.values[layer_idx]
        if self.static:
            t, slot = self._static_index
            index = t if self.layer_types[layer_idx] == FULL else slot
            kb.index_copy_(2, index, k)
            vb.index_copy_(2, index, v)
            return kb, vb  # fixed shapes: every slot, masked by time and validity
        if self._chunk is None:
            raise RuntimeError("Gemma2Cache.update called before begin()")
        start, T = self._chunk
        if self.layer_types[layer_idx] == FULL:
            kb[:, :, start : start + T] = k
            vb[:, :, start : start + T] = v
            return kb[:, :, : start + T], vb[:, :, : start + T]  # views, no copy
        if T == 1:
            slot = start % self.ring_size
            kb[:, :, slot] = k[:, :, 0]
            vb[:, :, slot] = v[:, :, 0]
            return kb, vb  # all R ring slots; empty/out-of-window ones are masked by time
        if start == 0:
            k_all, v_all = k, v
        else:
            k_all, v_all = torch.cat([kb, k], dim=2), torch.cat([vb, v], dim=2)  # [B, K, R + T, E]
        keep = min(T, self.ring_size)
        slots = self._ring_slots(start, T)
        kb.index_copy_(2, slots, k[:, :, T - keep :])
        vb.index_copy_(2, slots, v[:, :, T - keep :])
        return k_all, v_all

    def __repr__(self) -> str:
        return (
            f"Gemma2Cache(batch={self.batch_size}, length={self.length}, capacity={self.capacity}, "
            f"static={self.static}, "
            f"ring={self.ring_size}, layers={len(self.layer_types)}, dtype={self.dtype}, device={self.device})"
        )


# ---------------------------------------------------------------------------------------------
# Chunked prefill
# ---------------------------------------------------------------------------------------------


def prefill_chunks(
    model,
    input_ids: torch.Tensor,  # [B, T] long
    attention_mask: torch.Tensor | None,  # [B, T], 1 = real, 0 = (left) padding
    cache: Gemma2Cache,  # filled in place; usually empty (length 0) on entry
    *,
    chunk_size: int = PREFILL_CHUNK,
    logits_to_keep: int = 1,  # 0 = every position; n = the last n positions of the whole prompt
) -> Iterator[tuple[int, int, torch.Tensor | None]]:
    """Feed the prompt to `model` (a Gemma2 or subclass) chunk by chunk through `cache`.

    Yields (start, end, logits) per chunk of tokens [start, end): logits [B, n, V] for the chunk's
    positions among the last `logits_to_keep` of the prompt (all of them for 0), None when it has
    none. Run it under torch.no_grad / inference_mode (the cache is written in place).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if logits_to_keep < 0:
        raise ValueError(f"logits_to_keep must be >= 0, got {logits_to_keep}")
    T = input_ids.shape[1]
    for start in range(0, T, chunk_size):
        end = min(T, start + chunk_size)
        keep = end - start if logits_to_keep == 0 else min(end - start, max(0, end - (T - logits_to_keep)))
        mask = None if attention_mask is None else attention_mask[:, start:end]
        # keep = 0: ask for one position (0 would mean all of them) and drop it.
        out = model(input_ids[:, start:end], mask, cache=cache, logits_to_keep=max(keep, 1))
        yield start, end, out.logits if keep > 0 else None


def prefill(
    model,
    input_ids: torch.Tensor,  # [B, T] long
    attention_mask: torch.Tensor | None = None,  # [B, T], 1 = real, 0 = (left) padding
    cache: Gemma2Cache | None = None,
    *,
    chunk_size: int = PREFILL_CHUNK,
    logits_to_keep: int = 1,
) -> torch.Tensor:
    """Logits [B, logits_to_keep or T, V] of a prompt run through `model` in chunks (`prefill_chunks`).

    With a `cache` it is filled for decoding. Without one, a prompt that fits one chunk takes a
    single plain forward (no cache, as `model(input_ids, ...)`), a longer one a throwaway cache.
    The logits equal the one-shot forward's up to float rounding; with an MoE in capacity mode
    (capacity_factor > 0) tokens are routed per chunk, as they are per step when decoding.
    """
    if cache is None:
        if input_ids.shape[1] <= chunk_size:  # `model(ids, logits_to_keep=n)` is all a short prompt needs
            mask = {} if attention_mask is None else {"attention_mask": attention_mask}
            return model(input_ids, logits_to_keep=logits_to_keep, **mask).logits
        cache = model.make_cache(input_ids.shape[0], input_ids.shape[1])
    kept = [
        logits
        for _, _, logits in prefill_chunks(
            model, input_ids, attention_mask, cache, chunk_size=chunk_size, logits_to_keep=logits_to_keep
        )
        if logits is not None
    ]
    return torch.cat(kept, dim=1)
