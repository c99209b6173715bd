"""Batched decoding for the server: one thread owns the model, and concurrent requests share decode steps.

Axis legend: B rows in the running batch, T tokens, V vocab.

    engine = Engine(model, tokenizer).start()
    request = Request(prompt_ids, SamplingParams(max_tokens=32), emit=print)   # emit: called per step
    engine.submit([request])          # thread-safe; emit(Output(...)) runs on the engine thread
    request.cancel()                  # e.g. the client went away: the row leaves at the next step

The loop (`Engine._loop`), one model forward per iteration:
1. Idle: block until requests wait, then prefill all waiting requests that fit (left-padded to the
   longest prompt, one attention mask) into one `Gemma2Cache`.
2. Running: pick every row's next token (greedy or sampled with its own generator), hand it to its
   request (text, stop strings, max_tokens), and drop finished or cancelled rows from the batch and
   the cache (their slot is free at once). Requests that arrived meanwhile join the running batch
   when they fit: they are prefilled left-padded to the batch's stream length in a cache of the same
   layout, which is then concatenated row-wise. Then one decode forward [B, 1] for all rows.

Joining needs a prompt no longer than the batch's stream length (left padding cannot be added in
front of rows already running) and room for its max_tokens before max_position_embeddings (padding
counts: it occupies stream time). A request that does not fit waits, and so do the ones behind it
(first come, first served); the batch then drains and the waiting request starts the next one.

Text: each row re-decodes its whole reply every step and hands out only text that is final: a
trailing U+FFFD (a character whose bytes are not all there yet) and any tail that could begin a stop
string are held back. A stop string ends the row and is not part of the text (OpenAI semantics).
"""

from __future__ import annotations

import math
import threading
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from foresight.lm.cache import Gemma2Cache
from foresight.lm.generate import select_next_token


@dataclass(frozen=True)
class SamplingParams:
    """Decoding controls of one request (OpenAI names and meanings)."""

    max_tokens: int = 16  # tokens to generate at most
    temperature: float = 1.0  # 0 = greedy (argmax)
    top_p: float = 1.0  # nucleus mass; 1 = off
    top_k: int = 0  # sample among the k most likely tokens; 0 = off
    seed: int | None = None  # seeds this request's own generator: same seed, same sample, whatever the batch
    stop: tuple[str, ...] = ()  # stop strings (excluded from the text)
    presence_penalty: float = 0.0  # subtracted once from the logit of every token already generated
    frequency_penalty: float = 0.0  # subtracted per occurrence of a token already generated
    logprobs: int | None = None  # None: no logprobs; n >= 0: the chosen token's and the n best alternatives'

    def __post_init__(self) -> None:
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if not _is_number(self.temperature) or not 0 <= self.temperature < math.inf:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must hold non-empty strings, got {self.stop!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not -2 <= value <= 2:
                raise ValueError(f"{name} must be a number in [-2, 2], got {value!r}")
        if self.logprobs is not None and (not _is_int(self.logprobs) or not 0 <= self.logprobs <= 20):
            raise ValueError(f"logprobs must be None or an int in [0, 20], got {self.logprobs!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class TokenLogprob:
    """The chosen token's log-probability under the model (raw logits: before temperature and
    penalties, as vLLM reports them by default) and the `top` most likely alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # [(token id, logprob)] best first


@dataclass
class Output:
    """What a request receives after a step: new final text, the tokens behind it, and at the end a
    finish_reason ("stop": stop token or string, "length": max_tokens, "abort": cancelled,
    "error": the engine failed; `error` holds the message)."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # generated so far (a stop token counts: it was computed)
    error: str | None = None


class Request:
    """One prompt to complete. `emit(Output)` is called on the engine thread, so it must be quick and
    thread-safe (the server posts to its event loop with `call_soon_threadsafe`)."""

    def __init__(self, prompt_ids: Sequence[int], params: SamplingParams, emit: Callable[[Output], None]):
        if len(prompt_ids) == 0:
            raise ValueError("the prompt must hold at least one token (e.g. <bos>)")
        self.prompt_ids = [int(i) for i in prompt_ids]
        self.params = params
        self.emit = emit
        self.cancelled = False  # set from any thread; read by the engine at every step

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class EngineStats:
    """Counters (read them from any thread). N concurrent requests of M tokens take about M forwards,
    where N sequential ones take N * M: the test of batching reads `forwards`."""

    forwards: int = 0  # model forwards (prefills and decode steps)
    decode_steps: int = 0  # decode forwards [B, 1]
    batches: int = 0  # batches started from idle
    joined: int = 0  # requests that joined a running batch
    requests: int = 0  # requests finished (any reason)
    tokens: int = 0  # tokens generated
    max_rows: int = 0  # the most rows one decode step carried
    running: int = 0  # rows in the running batch now
    waiting: int = 0  # requests queued now


class Engine:
    """Owns the model on one thread; see the module docstring for the loop."""

    def __init__(self, model, tokenizer, *, max_batch_size: int = 32):
        if not _is_int(max_batch_size) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size = max_batch_size
        cfg = model.config
        self.max_positions = cfg.max_position_embeddings
        stop = set(cfg.eos_token_ids) | {i for i in (tokenizer.eos_id, tokenizer.end_of_turn_id) if i is not None}
        self.stop_token_ids = frozenset(stop)
        self.pad_id = next(i for i in (tokenizer.pad_id, cfg.pad_token_id, 0) if i is not None)
        # Ids the tokenizer cannot decode (a model vocabulary padded past the tokenizer's) are never picked.
        self.vocab_limit = min(cfg.vocab_size, tokenizer.vocab_size)
        self.device = model.embed.weight.device
        self.stats = EngineStats()
        self._waiting: deque[Request] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- lifecycle (any thread) ------------------------------------------------------------------

    def start(self) -> Engine:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="foresight-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the step in progress, abort every request (running or waiting) and end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def check(self, prompt_len: int, max_tokens: int) -> None:
        """Raise ValueError unless a prompt of this length plus max_tokens fits the context."""
        if prompt_len + max_tokens > self.max_positions:
            raise ValueError(
                f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) exceeds the context of "
                f"{self.max_positions} tokens (max_position_embeddings)"
            )

    def submit(self, requests: Sequence[Request]) -> None:
        """Queue requests (together: they join the same batch when they fit)."""
        for r in requests:
            self.check(len(r.prompt_ids), r.params.max_tokens)
            bad = [i for i in r.prompt_ids if not 0 <= i < self.model.config.vocab_size]
            if bad:
                raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {self.model.config.vocab_size})")
        with self._cond:
            if self._stopping or self._thread is None:
                raise RuntimeError("the engine is not running")
            self._waiting.extend(requests)
            self.stats.waiting = len(self._waiting)
            self._cond.notify_all()

    # --- engine thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        batch: _Batch | None = None
        while True:
            with self._cond:
                while not self._stopping and batch is None and not self._waiting:
                    self._cond.wait()
                if self._stopping:
                    break
                start_len = 0 if batch is None else batch.cache.length
                taken = self._take(batch)
                self.stats.waiting = len(self._waiting)
            try:
                if batch is None:
                    if taken:
                        batch = self._prefill(taken)
                        self.stats.batches += 1
                else:
                    if taken:
                        batch.join(self._prefill(taken, length=start_len, like=batch.cache))
                        self.stats.joined += len(taken)
                    taken = []  # in the batch now
                    batch = self._step(batch)
            except Exception as e:  # a failed forward must not end the thread: fail its rows, go on
                traceback.print_exc()
                rows = [] if batch is None else batch.rows
                for row in rows + [_Row(r, self) for r in taken]:
                    row.fail(f"engine error: {type(e).__name__}: {e}")
                batch = None
            self.stats.running = 0 if batch is None else len(batch.rows)
        # Stopping: every request still known gets a final "abort".
        for row in [] if batch is None else batch.rows:
            row.finish("abort")
        with self._cond:
            for r in self._waiting:
                _Row(r, self).finish("abort")
            self._waiting.clear()

    def _take(self, batch: _Batch | None) -> list[Request]:
        """Pop the waiting requests that fit (lock held): first come, first served."""
        rows = 0 if batch is None else len(batch.rows)
        length = 0 if batch is None else batch.cache.length  # a running batch's stream length
        need = 0 if batch is None else max(r.remaining for r in batch.rows)  # tokens it may still add
        taken: list[Request] = []
        while self._waiting and rows + len(taken) < self.max_batch_size:
            r = self._waiting[0]
            if r.cancelled:
                self._waiting.popleft()
                _Row(r, self).finish("abort")
                continue
            T, N = len(r.prompt_ids), r.params.max_tokens
            if batch is None:
                fits = max(length, T) + max(need, N) <= self.max_positions
            else:  # joining: left-padded to the batch's stream length, which only grows
                fits = T <= length and length + max(need, N) <= self.max_positions
            if not fits:
                break
            taken.append(self._waiting.popleft())
            if batch is None:
                length, need = max(length, T), max(need, N)
        return taken

    @torch.inference_mode()
    def _prefill(self, requests: list[Request], length: int = 0, like: Gemma2Cache | None = None) -> _Batch:
        """One forward over the left-padded prompts (padded to `length` if longer). With `like`,
        the cache gets its capacity, so that its layout matches for concatenation."""
        T = max(length, *(len(r.prompt_ids) for r in requests))
        ids = torch.full((len(requests), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(requests), T, dtype=torch.long)
        for b, r in enumerate(requests):
            n = len(r.prompt_ids)
            ids[b, T - n :] = torch.tensor(r.prompt_ids)
            mask[b, T - n :] = 1
        capacity = like.capacity if like is not None else T + max(r.params.max_tokens for r in requests)
        cache = self.model.make_cache(len(requests), capacity)
        ids, mask = ids.to(self.device), mask.to(self.device)
        logits = self.model(ids, mask, cache=cache, logits_to_keep=1).logits[:, -1]  # [B, V]
        self.stats.forwards += 1
        return _Batch([_Row(r, self) for r in requests], cache, logits)

    @torch.inference_mode()
    def _step(self, batch: _Batch) -> _Batch | None:
        """Pick and hand out every row's next token, drop finished rows, run one decode forward."""
        tokens = self._select(batch)  # [B] on the CPU
        keep = []
        for b, row in enumerate(batch.rows):
            if row.request.cancelled:
                row.finish("abort")
            else:
                row.push(int(tokens[b]), batch.logprobs[b] if batch.logprobs is not None else None)
                self.stats.tokens += 1
            if not row.done:
                keep.append(b)
        if not keep:
            return None
        if len(keep) < len(batch.rows):
            batch.keep(keep)
            tokens = tokens[keep]
        self.stats.max_rows = max(self.stats.max_rows, len(batch.rows))
        batch.logits = self.model(tokens[:, None].to(self.device), cache=batch.cache, logits_to_keep=1).logits[:, -1]
        self.stats.forwards += 1
        self.stats.decode_steps += 1
        return batch

    def _select(self, batch: _Batch) -> torch.Tensor:
        """Next token of every row [B] (CPU): penalties, then greedy rows by one argmax and sampled
        rows each with its own generator (so a seeded request samples the same in any batch)."""
        logits = batch.logits.float()  # [B, V]
        if self.vocab_limit < logits.shape[-1]:
            logits[:, self.vocab_limit :] = float("-inf")
        batch.logprobs = None
        if any(row.params.logprobs is not None for row in batch.rows):
            lp = logits.log_softmax(-1).cpu()  # [B, V]
            batch.logprobs = [lp[b] if row.params.logprobs is not None else None for b, row in enumerate(batch.rows)]
        for b, row in enumerate(batch.rows):
            p = row.params
            if row.counts and (p.presence_penalty or p.frequency_penalty):
                ids = torch.tensor(list(row.counts), device=logits.device)
                n = torch.tensor(list(row.counts.values()), dtype=logits.dtype, device=logits.device)
                logits[b, ids] -= p.frequency_penalty * n + p.presence_penalty
        tokens = logits.argmax(-1).cpu()  # [B]: right for every greedy row
        for b, row in enumerate(batch.rows):
            p = row.params
            if not p.greedy:
                tokens[b] = select_next_token(
                    logits[b : b + 1],
                    do_sample=True,
                    temperature=p.temperature,
                    top_k=p.top_k or None,
                    top_p=p.top_p if p.top_p < 1 else None,
                    generator=row.generator,
                )[0].cpu()
        return tokens


@dataclass
class _Batch:
    rows: list[_Row]
    cache: Gemma2Cache
    logits: torch.Tensor  # [B, V] of the last forward: the next token is picked from it
    logprobs: list | None = field(default=None)

    def keep(self, index: list[int]) -> None:
        """Drop the rows not in `index` from the batch and the cache."""
        self.rows = [self.rows[i] for i in index]
        take_rows(self.cache, torch.tensor(index, device=self.cache.device))

    def join(self, other: _Batch) -> None:
        """Append `other`'s rows (prefilled to the same stream length in a same-capacity cache)."""
        merge_rows(self.cache, other.cache)
        self.rows += other.rows
        self.logits = torch.cat([self.logits, other.logits])


def take_rows(cache: Gemma2Cache, index: torch.Tensor) -> None:
    """Keep only the rows `index` of every per-row buffer of a (dynamic) cache, in place."""
    for bufs in (cache.keys, cache.values):
        for i, t in enumerate(bufs):
            bufs[i] = t.index_select(0, index)
    cache.full_valid = cache.full_valid.index_select(0, index)
    cache.ring_valid = cache.ring_valid.index_select(0, index)
    cache.next_position = cache.next_position.index_select(0, index)
    cache.batch_size = len(index)


def merge_rows(cache: Gemma2Cache, other: Gemma2Cache) -> None:
    """Append the rows of `other` to `cache`, in place. Both must be dynamic and at the same stream
    length with the same capacity: then their ring slots hold the same stream times."""
    if cache.static or other.static or cache.length != other.length or cache.capacity != other.capacity:
        raise ValueError(
            f"cannot merge caches of length/capacity {cache.length}/{cache.capacity} and "
            f"{other.length}/{other.capacity} (both must be dynamic and equal)"
        )
    if not torch.equal(cache.ring_time, other.ring_time):
        raise ValueError("cannot merge caches whose sliding-window rings hold different stream times")
    for mine, theirs in ((cache.keys, other.keys), (cache.values, other.values)):
        for i in range(len(mine)):
            mine[i] = torch.cat([mine[i], theirs[i]])
    cache.full_valid = torch.cat([cache.full_valid, other.full_valid])
    cache.ring_valid = torch.cat([cache.ring_valid, other.ring_valid])
    cache.next_position = torch.cat([cache.next_position, other.next_position])
    cache.batch_size += other.batch_size


class _Row:
    """A request's decoding state in the batch: its tokens, text handed out, generator, counts."""

    def __init__(self, request: Request, engine: Engine):
        self.request, self.params, self.engine = request, request.params, engine
        self.ids: list[int] = []  # generated tokens, stop token included
        self.text_ids: list[int] = []  # generated tokens that become text (no stop token)
        self.sent = 0  # characters of the decoded reply handed out so far
        self.counts: dict[int, int] = {}  # token -> times generated (presence/frequency penalties)
        self.done = False
        self.generator = None
        if not self.params.greedy:
            self.generator = torch.Generator(device=engine.device)
            if self.params.seed is not None:
                self.generator.manual_seed(self.params.seed)
            else:
                self.generator.seed()  # fresh entropy

    @property
    def remaining(self) -> int:
        return self.params.max_tokens - len(self.ids)

    def push(self, token: int, logprobs: torch.Tensor | None) -> None:
        self.ids.append(token)
        self.counts[token] = self.counts.get(token, 0) + 1
        lp = None
        if logprobs is not None:
            n = self.params.logprobs
            top = logprobs.topk(n) if n else None
            alternatives = [] if top is None else list(zip(top.indices.tolist(), top.values.tolist()))
            lp = [TokenLogprob(token, float(logprobs[token]), alternatives)]
        if token in self.engine.stop_token_ids:  # no text, so no logprobs entry either
            self._out(self._text()[self.sent :], [token], None, "stop")
            return
        self.text_ids.append(token)
        text = self._text()
        hit = _find_stop(text, self.params.stop, start=self.sent)
        if hit is not None:
            self._out(text[self.sent : max(hit, self.sent)], [token], lp, "stop")
        elif self.remaining == 0:
            self._out(text[self.sent :], [token], lp, "length")
        else:
            end = len(text) - _held_back(text, self.params.stop)
            self._out(text[self.sent : max(end, self.sent)], [token], lp, None)
            self.sent = max(end, self.sent)

    def _text(self) -> str:
        return self.engine.tokenizer.decode(self.text_ids)

    def _out(self, text: str, token_ids: list[int], lp, finish_reason: str | None, error: str | None = None) -> None:
        if finish_reason is not None:
            self.done = True
            self.engine.stats.requests += 1
        out = Output(
            text=text,
            token_ids=token_ids,
            logprobs=lp,
            finish_reason=finish_reason,
            prompt_tokens=len(self.request.prompt_ids),
            completion_tokens=len(self.ids),
            error=error,
        )
        try:
            self.request.emit(out)
        except Exception:  # its receiver is gone (e.g. the event loop closed): nobody to serve
            self.request.cancel()

    def finish(self, reason: str) -> None:
        if not self.done:
            self._out("", [], None, reason)

    def fail(self, message: str) -> None:
        if not self.done:
            self._out("", [], None, "error", message)


def _find_stop(text: str, stops: tuple[str, ...], start: int) -> int | None:
    """Index of the earliest stop string in text that ends after `start` (the text handed out), or None."""
    hits = [i for s in stops if (i := text.find(s, max(0, start - len(s) + 1))) >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of text that are not final yet: an incomplete character (U+FFFD) or
    the longest tail that could be the start of a stop string."""
    n = len(text) - len(text.rstrip("\ufffd"))
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                n = max(n, k)
                break
    return n
