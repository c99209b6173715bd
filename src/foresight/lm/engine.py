"""Batched decoding for the server: one thread owns the model, and concurrent requests share decode steps.

Axis legend: B rows in the running batch, T tokens, V vocab.

    engine = Engine(model, tokenizer).start()
    config = GenerationConfig.from_options({"max_new_tokens": 32, "temperature": 0.7, "seed": 1})
    request = Request(prompt_ids, config, emit=print)   # emit: called per step
    engine.submit([request])          # thread-safe; emit(Output(...)) runs on the engine thread
    request.cancel()                  # e.g. the client went away: the row leaves at the next step

Decoding is `foresight.lm.generate`'s, row by row: each request carries its own `GenerationConfig`
(every field is honoured; the model's eos ids always stop a row, `stop_token_ids` add to them), the
next tokens come from one `sampling.Sampler` over the batch's configs (`process_logits`: penalties,
temperature, top-k, top-p, min-p), and each row's text is a `completion.Reply` (incremental decoding,
stop strings across tokens). A greedy request gets the tokens `generate` gives its prompt alone; a
seeded sampled one draws from its own generator, as `generate(..., config=[config])` does, so it
gets the same tokens in any batch. Logprobs are `GenerationConfig`'s (the distribution the token
was chosen from).

The loop (`Engine._loop`), one model forward per iteration:
1. Idle: block until requests wait, then prefill all waiting requests that fit (left-padded to the
   longest prompt, one attention mask) into one `Gemma2Cache`.
2. Running: pick every row's next token, hand it to its request (text, stop strings, max_new_tokens,
   max_time), and drop finished or cancelled rows from the batch and the cache (their slot is free
   at once). Requests that arrived meanwhile join the running batch when they fit: they are
   prefilled left-padded to the batch's stream length in a cache of the same layout, which is then
   concatenated row-wise. Then one decode forward [B, 1] for all rows.

Joining needs a prompt no longer than the batch's stream length (left padding cannot be added in
front of rows already running) and room for its max_new_tokens before max_position_embeddings
(padding counts: it occupies stream time). A request that does not fit waits, and so do the ones
behind it (first come, first served); the batch then drains and the waiting request starts the next one.

Streaming: a request receives only text that is final (`Reply.stable_text`: no half characters, no
tail that could begin a stop string), with the logprobs of the tokens wholly inside it. A stop
string ends the row and is not part of the text (OpenAI semantics); a stop token ends it too and
counts as generated, but has no text and no logprobs entry (OpenAI's logprob tokens spell the text).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from foresight.lm.cache import Gemma2Cache, prefill
from foresight.lm.completion import LENGTH, STOP, TIME, Reply, TokenLogprob
from foresight.lm.generate import check_context, default_stop_token_ids, left_pad
from foresight.lm.sampling import GenerationConfig, History, Sampler, top_logprobs


@dataclass
class Output:
    """What a request receives after a step: new final text, the token generated this step, the
    logprobs of the tokens whose text became final with it, and at the end a finish_reason ("stop":
    stop token or string, "length": max_new_tokens, "time": max_time, "abort": cancelled, "error":
    the engine failed; `error` holds the message)."""

    text: str
    token_ids: list[int]  # generated this step (a stop token included); [] for a final abort/error
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # generated so far (a stop token counts: it was computed)
    error: str | None = None


class Request:
    """One prompt to complete with one `GenerationConfig`. `emit(Output)` is called on the engine
    thread, so it must be quick and thread-safe (the server posts to its event loop with
    `call_soon_threadsafe`)."""

    def __init__(self, prompt_ids: Sequence[int], config: GenerationConfig, emit: Callable[[Output], None]):
        if len(prompt_ids) == 0:
            raise ValueError("the prompt must hold at least one token (e.g. <bos>)")
        if not isinstance(config, GenerationConfig):
            raise TypeError(f"config must be a GenerationConfig, got {type(config).__name__}")
        if config.max_new_tokens < 1:
            raise ValueError(f"a request must ask for max_new_tokens >= 1, got {config.max_new_tokens}")
        self.prompt_ids = [int(i) for i in prompt_ids]
        self.config = config
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
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size = max_batch_size
        cfg = model.config
        self.max_positions = cfg.max_position_embeddings
        self.stop_token_ids = frozenset(default_stop_token_ids(model, tokenizer))
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

    def submit(self, requests: Sequence[Request]) -> None:
        """Queue requests (together: they join the same batch when they fit)."""
        for r in requests:
            check_context(len(r.prompt_ids), r.config.max_new_tokens, self.max_positions)
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
            T, N = len(r.prompt_ids), r.config.max_new_tokens
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
        ids, mask = left_pad([r.prompt_ids for r in requests], self.pad_id, device=self.device, length=length)
        T = ids.shape[1]
        capacity = like.capacity if like is not None else T + max(r.config.max_new_tokens for r in requests)
        cache = self.model.make_cache(len(requests), capacity)
        logits = prefill(self.model, ids, mask, cache=cache)[:, -1]  # [B, V]; in chunks: O(chunk) memory
        self.stats.forwards += 1
        return _Batch([_Row(r, self) for r in requests], cache, logits, self)

    @torch.inference_mode()
    def _step(self, batch: _Batch) -> _Batch | None:
        """Pick and hand out every row's next token, drop finished rows, run one decode forward."""
        tokens, entries = self._select(batch)  # [B] on the CPU, a logprobs entry (or None) per row
        batch.history.add(tokens.to(self.device))
        keep = []
        for b, row in enumerate(batch.rows):
            if row.request.cancelled:
                row.finish("abort")
            else:
                row.push(int(tokens[b]), entries[b])
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

    def _select(self, batch: _Batch) -> tuple[torch.Tensor, list[TokenLogprob | None]]:
        """Every row's next token [B] (CPU) and logprobs entry, as `generate` picks them."""
        logits = batch.logits.float()  # [B, V]
        if self.vocab_limit < logits.shape[-1]:
            logits[:, self.vocab_limit :] = float("-inf")
        processed = batch.sampler.process(logits, batch.history.seen, batch.history.counts)
        tokens = batch.sampler.choose(processed)
        entries: list[TokenLogprob | None] = [None] * len(batch.rows)
        wanted = [row.config.logprobs for row in batch.rows if row.config.logprobs is not None]
        if wanted:
            chosen, top_ids, top_lp = (t.tolist() for t in top_logprobs(processed, tokens, max(wanted)))
            for b, row in enumerate(batch.rows):
                if (n := row.config.logprobs) is not None:
                    entries[b] = TokenLogprob.ranked(int(tokens[b]), chosen[b], top_ids[b], top_lp[b], n)
        return tokens.cpu(), entries


class _Batch:
    """The running rows, their cache, the logits of the last forward, and what picks their next token
    (a `Sampler` over the rows' configs and generators, and the penalties' `History`): both are
    rebuilt when rows join or leave."""

    def __init__(self, rows: list[_Row], cache: Gemma2Cache, logits: torch.Tensor, engine: Engine):
        self.rows, self.cache, self.logits, self.engine = rows, cache, logits, engine
        self._rebuild()

    def _rebuild(self, history: History | None = None) -> None:
        e = self.engine
        configs = [row.config for row in self.rows]
        self.sampler = Sampler(configs, [row.generator for row in self.rows], device=e.device)
        if history is None:  # from the rows' tokens (a joined batch): only where a row needs it
            prompts = [row.request.prompt_ids for row in self.rows]
            history = History(configs, prompts, e.model.config.vocab_size, e.device, [row.ids for row in self.rows])
        self.history = history

    def keep(self, index: list[int]) -> None:
        """Drop the rows not in `index` from the batch and the cache."""
        self.rows = [self.rows[i] for i in index]
        index = torch.tensor(index, device=self.cache.device)
        take_rows(self.cache, index)
        self.history.select(index)
        self._rebuild(self.history)

    def join(self, other: _Batch) -> None:
        """Append `other`'s rows (prefilled to the same stream length in a same-capacity cache)."""
        merge_rows(self.cache, other.cache)
        self.rows += other.rows
        self.logits = torch.cat([self.logits, other.logits])
        self._rebuild()


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
    """A request's decoding state in the batch: its tokens, its `Reply`, what it has been sent, its generator."""

    def __init__(self, request: Request, engine: Engine):
        self.request, self.config, self.engine = request, request.config, engine
        self.ids: list[int] = []  # generated tokens, stop token included
        self.reply = Reply(engine.tokenizer, self.config.stop, len(request.prompt_ids))
        self.stop_ids = engine.stop_token_ids | set(self.config.stop_token_ids)
        self.sent_text = self.sent_tokens = 0  # characters / tokens (with their logprobs) handed out
        self.started = time.monotonic()  # max_time counts from the prefill, as generate's from its call
        self.done = False
        self.generator = None  # every sampled row has its own: seeded, or fresh entropy
        if self.config.do_sample:
            self.generator = torch.Generator(device=engine.device)
            if self.config.seed is not None:
                self.generator.manual_seed(self.config.seed)
            else:
                self.generator.seed()

    @property
    def remaining(self) -> int:
        return self.config.max_new_tokens - len(self.ids)

    def push(self, token: int, logprob: TokenLogprob | None) -> None:
        self.ids.append(token)
        reason = None
        if token in self.stop_ids:  # no text: not part of the reply, no logprobs entry
            reason = STOP
            self.reply.finish(STOP, token)
        elif self.reply.add(token, logprob):
            reason = STOP
        elif self.remaining == 0:
            reason = LENGTH
        elif self.config.max_time is not None and time.monotonic() - self.started > self.config.max_time:
            reason = TIME
        if reason is not None:
            self.reply.finish(reason)  # no-op after a stop token
        end, n = self.reply.stable_length(), self.reply.stable_tokens()  # no copy of the whole text per token
        lps = self.reply.logprobs[self.sent_tokens : n] if self.config.logprobs is not None else None
        self._out(self.reply.text[self.sent_text : end], [token], lps, reason)
        self.sent_text, self.sent_tokens = end, max(n, self.sent_tokens)

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
