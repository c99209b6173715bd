"""Speculative decoding: a small draft model proposes K tokens, the target model checks them in one forward.

Axis legend: B batch, T prompt length, K draft tokens per round, V vocab.

Leviathan et al. 2023 (arXiv 2211.17192) / Chen et al. 2023 (arXiv 2302.01318). One round, with the
target's cache holding every known token but the last one (x, still to be fed):
1. draft: d_1..d_K, each drawn from q_i, the draft's processed distribution (same controls as the target);
2. verify: one target forward over [x, d_1..d_K] gives p_0..p_K, the target's processed distributions
   at those K + 1 positions;
3. accept d_i while u_i < p_i(d_i) / q_i(d_i) (u_i uniform; greedy rows: while d_i == argmax p_i);
   at the first rejection draw from norm(max(0, p - q)), or after K acceptances a bonus from p_K.
Every emitted token is then distributed exactly as the target alone would draw it (greedy: the
target's own argmax, token for token), so the output matches plain decoding in distribution.

Batches: all rows advance by the same number of tokens per round, so the caches stay aligned. It is
m + 1, where m is the fewest drafts accepted by any unfinished row. A row that accepted more emits
its accepted draft at position m + 1 instead of a residual draw: a prefix of a valid speculative
output, cut at a length that does not depend on this row's draws, is still distributed as the target.

Rejected drafts are removed from both KV caches (`RollbackCache`): global layers just forget them
(their slots are marked invalid and rewritten), sliding layers restore the ring slots the drafts
overwrote. That needs K + 1 <= sliding_window, so every ring slot is written at most once a round.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from foresight.lm.cache import SLIDING, Gemma2Cache, prefill
from foresight.lm.sampling import Sampler


class RollbackCache(Gemma2Cache):
    """A `Gemma2Cache` that can drop its newest tokens (`rollback`), as rejected drafts need.

    Each forward first saves what it will overwrite in the sliding layers' rings (ring time,
    validity, keys and values of the slots its tokens land in); `rollback(n)` undoes the forwards
    since the last rollback back to `n` tokens, newest first. Dynamic mode only (no `freeze`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._undo: list[tuple] = []  # per forward since the last rollback: (start, T, slots, saved state)
        self._sliding = [i for i, t in enumerate(self.layer_types) if t == SLIDING]

    def begin(self, T: int, valid: torch.Tensor | None):
        start, R = self._length, self.ring_size
        if start + T > self.capacity:
            raise ValueError(f"RollbackCache holds {self.capacity} tokens; a forward to {start + T} would grow it")
        slots = self._arange[start : start + min(T, R)] % R if T <= R else torch.arange(R, device=self.device)
        saved = (
            self.ring_time[slots].clone(),
            self.ring_valid[:, slots].clone(),
            [self.keys[i][:, :, slots].clone() for i in self._sliding],
            [self.values[i][:, :, slots].clone() for i in self._sliding],
        )
        self._undo.append((start, T, slots, saved))
        return super().begin(T, valid)

    def freeze(self) -> None:
        raise RuntimeError("RollbackCache is for dynamic decoding; a frozen cache cannot roll back")

    def rollback(self, length: int) -> None:
        """Forget every token from stream time `length` on, as if they had never been fed."""
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot roll back to {length} tokens: the cache holds {self._length}")
        while self._undo:
            start, T, slots, (ring_time, ring_valid, keys, values) = self._undo.pop()
            if start + T <= length:
                break
            if T > self.ring_size and length > start:
                raise RuntimeError("a forward wider than the ring cannot be partly rolled back")
            drop = slice(max(length - start, 0), None)  # the forward's tokens at times >= length
            s = slots[drop]
            self.ring_time[s] = ring_time[drop]
            self.ring_valid[:, s] = ring_valid[:, drop]
            for j, i in enumerate(self._sliding):
                self.keys[i][:, :, s] = keys[j][:, :, drop]
                self.values[i][:, :, s] = values[j][:, :, drop]
        self._undo.clear()  # what is left is kept for good
        self.next_position -= self.full_valid[:, length : self._length].long().sum(-1)
        self.full_valid[:, length : self._length] = False
        self._length, self._chunk = length, None


class Drafter:
    """A draft model and how many tokens it proposes per round; counts what the target accepted.

    Pass it to `generate(..., draft=Drafter(small_model, num_tokens=4))`. The draft must share the
    target's vocabulary (same tokenizer). Its counters add up over every call:
    acceptance_rate = accepted / drafted, per unfinished row (the standard alpha estimate), and
    tokens_per_round = emitted tokens per target forward (what the speed-up rests on).
    """

    def __init__(self, model, num_tokens: int = 4):
        if not isinstance(num_tokens, int) or isinstance(num_tokens, bool) or num_tokens < 1:
            raise ValueError(f"num_tokens (draft tokens per round) must be an int >= 1, got {num_tokens!r}")
        self.model, self.num_tokens = model, num_tokens
        self.drafted = self.accepted = self.rounds = self.emitted = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else float("nan")

    @property
    def tokens_per_round(self) -> float:
        return self.emitted / self.rounds if self.rounds else float("nan")

    def check(self, target) -> None:
        t, d, K = target.config, self.model.config, self.num_tokens
        if d.vocab_size != t.vocab_size:
            raise ValueError(
                f"draft vocab_size {d.vocab_size} != target vocab_size {t.vocab_size}: they must share a tokenizer"
            )
        window = min(t.sliding_window, d.sliding_window)
        if K + 1 > window:
            raise ValueError(f"num_tokens {K} must be < the sliding window ({window}) of target and draft")

    def __repr__(self) -> str:
        return (
            f"Drafter(num_tokens={self.num_tokens}, rounds={self.rounds}, "
            f"acceptance_rate={self.acceptance_rate:.3f}, tokens_per_round={self.tokens_per_round:.2f})"
        )


def speculative_blocks(
    target,
    drafter: Drafter,
    input_ids: torch.Tensor,  # [B, T]
    attention_mask: torch.Tensor | None,
    sampler: Sampler,
    rows,  # the loop's row state: .seen [B, V] bool or None, .finished [B] bool (read at each round)
    max_new_tokens: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (tokens [B, n], processed target logits [B, n, V]) for n = m + 1 tokens per round."""
    draft = drafter.model
    drafter.check(target)
    B, T = input_ids.shape
    K, device = drafter.num_tokens, input_ids.device
    capacity = T + max_new_tokens + K + 1
    caches = [
        RollbackCache(m.config, batch_size=B, capacity=capacity, dtype=m.embed.weight.dtype, device=device)
        for m in (target, draft)
    ]
    tcache, dcache = caches
    seq = torch.zeros(B, capacity, dtype=torch.long, device=device)  # every known token, in stream time
    seq[:, :T] = input_ids
    valid = torch.ones(B, capacity, dtype=torch.bool, device=device)
    if attention_mask is not None:
        valid[:, :T] = attention_mask.bool()
    # Prefill all but the last prompt token: it is fed with the first round's drafts.
    if T > 1:
        for m, c in ((target, tcache), (draft, dcache)):
            prefill(m, seq[:, : T - 1], valid[:, : T - 1], cache=c)  # in chunks: O(chunk) memory
    L, dlen, produced = T, T - 1, 0  # known tokens; tokens in the draft cache; tokens emitted
    while produced < max_new_tokens:
        k = min(K, max_new_tokens - produced - 1)  # the round emits at most k + 1 tokens
        seen = None if rows.seen is None else rows.seen.clone()
        # 1. Draft k tokens, each from the draft's processed distribution.
        drafts, q = [], []
        if k > 0:
            logits = draft(seq[:, dlen:L], valid[:, dlen:L], cache=dcache, logits_to_keep=1).logits[:, -1]
            for i in range(k):
                qi = sampler.process(logits, seen)
                d = sampler.choose(qi)
                drafts.append(d)
                q.append(qi)
                if seen is not None:  # our own copy (cloned above): update it in place
                    seen[torch.arange(B, device=device), d] = True
                if i < k - 1:
                    logits = draft(d[:, None], cache=dcache, logits_to_keep=1).logits[:, -1]
            dlen = L + k - 1
        d = torch.stack(drafts, dim=1) if k else seq[:, :0]  # [B, k]
        # 2. Verify: the target's processed distributions p_0..p_k in one forward.
        chunk = torch.cat([seq[:, L - 1 : L], d], dim=1)  # [B, k + 1]
        logits = target(chunk, valid[:, L - 1 : L + k], cache=tcache).logits  # [B, k + 1, V]
        seen = None if rows.seen is None else rows.seen.clone()
        p = []
        for j in range(k + 1):
            p.append(sampler.process(logits[:, j], seen))
            if seen is not None and j < k:
                seen[torch.arange(B, device=device), d[:, j]] = True
        p = torch.stack(p, dim=1)  # [B, k + 1, V]
        # 3. Accept.
        if k > 0:
            P = p[:, :k].softmax(-1)
            Q = torch.stack(q, dim=1).softmax(-1)  # [B, k, V]
            p_d = P.gather(-1, d[..., None])[..., 0]  # [B, k]
            q_d = Q.gather(-1, d[..., None])[..., 0]
            u = sampler.uniform(k)
            greedy = sampler.greedy[:, None]
            accept = torch.where(greedy, d == p[:, :k].argmax(-1), u * q_d < p_d)  # u < p/q, no 0/0
            n = accept.long().cumprod(-1).sum(-1)  # [B] leading accepted drafts
            active = ~rows.finished
            m = int(n[active].min()) if bool(active.any()) else k
            drafter.drafted += k * int(active.sum())
            drafter.accepted += int(n[active].sum())
        else:
            n, m = torch.zeros(B, dtype=torch.long, device=device), 0
        # 4. The token at position m: accepted draft, residual draw, or (m == k) the bonus from p_k.
        P_m = p[:, m].softmax(-1)
        if m < k:
            residual = (P_m - Q[:, m]).clamp(min=0)
            residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, P_m)  # p == q: never rejected
            y = torch.where(n > m, d[:, m], sampler.sample(residual))
        else:
            y = sampler.sample(P_m)
        y = torch.where(sampler.greedy, p[:, m].argmax(-1), y)
        tokens = torch.cat([d[:, :m], y[:, None]], dim=1)  # [B, m + 1]
        # 5. Forget the rejected drafts; the target keeps all but the newest token (fed next round).
        tcache.rollback(L + m)
        if dlen > L + m:
            dcache.rollback(L + m)
            dlen = L + m
        seq[:, L : L + m + 1] = tokens
        L, produced = L + m + 1, produced + m + 1
        drafter.rounds += 1
        drafter.emitted += m + 1
        yield tokens, p[:, : m + 1]
