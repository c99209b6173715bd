"""Autoregressive generation for Gemma 2: greedy and sampled decoding, streaming, and the CLI.

Axis legend: B batch, T prompt length, N new tokens, V vocab.

A chunked prefill over the (left-padded) prompt (`foresight.lm.cache.prefill`, `prefill_chunk`
tokens per forward, so peak memory grows with T, not T^2) fills a preallocated `Gemma2Cache`, then
each step feeds one token per row with `logits_to_keep=1`. Rows that emit a stop token are finished:
they keep receiving `pad_token_id` (as HF `generate` does) until every row is finished. On CPU the
B-row products of the decode steps use `foresight.lm.cpu_decode` where it measures faster
(`row_products=False` keeps plain `F.linear`).

Decoding controls (repetition penalty, temperature, top-k, top-p, min-p, stop tokens and strings,
max_time, logprobs) are one frozen `GenerationConfig` per prompt (`foresight.lm.sampling`); the
keyword arguments of `generate` / `generate_stream` are its fields. `draft=Drafter(small_model, K)`
decodes speculatively (`foresight.lm.speculative`). `generate_steps` is the loop itself: each step
also carries logprobs, finish reasons and, given a tokenizer, the replies as text
(`foresight.lm.completion.Reply`); `complete` returns them as `Completion`s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from foresight.core.run import select_device
from foresight.lm import generate_jsonl
from foresight.lm.cache import PREFILL_CHUNK, prefill
from foresight.lm.completion import LENGTH, STOP, TIME, Completion, Reply, TokenLogprob
from foresight.lm.cpu_decode import disable_row_products, enable_row_products
from foresight.lm.hf_io import auto_dtype, check_tokenizer_compatible, checkpoint_dtype, load_pretrained, parse_dtype
from foresight.lm.sampling import (
    GenerationConfig,
    History,
    Sampler,
    row_configs,
    row_generators,
    select_next_token,  # noqa: F401  (its home was here: tests import it from here)
    top_logprobs,
)
from foresight.lm.speculative import Drafter, speculative_blocks
from foresight.lm.tokenizer import Gemma2Tokenizer

_clock = time.monotonic  # max_time's clock (a module attribute so that tests can replace it)


# ---------------------------------------------------------------------------------------------
# Generation loop
# ---------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One decode step of a batch, as `generate_steps` yields it."""

    tokens: torch.Tensor  # [B] long; pad_token_id for rows that had finished before this step
    active: torch.Tensor  # [B] bool: rows this token belongs to (unfinished before the step)
    finish_reasons: list[str | None]  # per row: "stop", "length" or "time" at the step it finishes
    logprobs: torch.Tensor | None = None  # [B] the tokens' logprobs (see GenerationConfig), if asked
    top_ids: torch.Tensor | None = None  # [B, n] the n most likely alternatives, best first
    top_logprobs: torch.Tensor | None = None  # [B, n]
    replies: list[Reply] | None = None  # with a tokenizer: each row's reply so far (the same objects every step)


@torch.inference_mode()
def generate_steps(
    model,
    input_ids: torch.Tensor,  # [B, T]
    attention_mask: torch.Tensor | None = None,  # [B, T], 1 = real, 0 = left padding
    config: GenerationConfig | Sequence[GenerationConfig] | None = None,  # one for all rows, or one per row
    *,
    tokenizer=None,
    draft: Drafter | None = None,
    generator: torch.Generator | None = None,
    pad_token_id: int | None = None,
    compile: bool = False,
    row_products: bool = True,
    prefill_chunk: int = PREFILL_CHUNK,
    **options,
) -> Iterator[Step]:
    """Decode step by step; yield a `Step` per generated position (at most max_new_tokens of them).

    `options` are `GenerationConfig` fields (max_new_tokens, do_sample, temperature, top_k, top_p,
    min_p, repetition_penalty, stop, stop_token_ids, max_time, logprobs, seed) and override `config`.
    A tokenizer is needed for stop strings; with one, each step carries every row's `Reply`.
    Rows that finish keep receiving `pad_token_id` until every row has finished.

    draft: a `Drafter` (or a bare draft model, K = 4) decodes speculatively; same outputs in
    distribution (greedy: the same tokens), fewer target forwards when the draft guesses well.

    compile=True decodes with a frozen (static-shape) cache and a `torch.compile`d single-token
    step, captured as a CUDA graph on GPU; the compiled step and its cache are kept on the model
    and reused by later calls with the same batch size and length (the first call compiles).

    row_products=True (CPU only) switches the model's big B-row products to compiled reductions
    where they measure faster (`cpu_decode.enable_row_products`: in place, same parameters, timed
    once per machine and shape); False switches them back to `F.linear` (`disable_row_products`).

    prefill_chunk: prompt tokens per prefill forward (`foresight.lm.cache.prefill`).
    """
    start = _clock()
    cfg = model.config
    if input_ids.dim() != 2 or input_ids.numel() == 0:
        raise ValueError(
            f"input_ids must be a non-empty [batch, tokens] prompt (at least <bos>), got shape {tuple(input_ids.shape)}"
        )
    B, T = input_ids.shape
    configs = row_configs(config, B, **options)
    N = max(c.max_new_tokens for c in configs)
    check_context(T, N, cfg.max_position_embeddings)
    if draft is not None and not isinstance(draft, Drafter):
        draft = Drafter(draft)
    if draft is not None and compile:
        raise ValueError("compile=True does not combine with draft=...: verifying drafts needs multi-token steps")
    if draft is not None and any(c.penalised[1] for c in configs):
        raise ValueError("presence_penalty / frequency_penalty do not combine with draft=... (drafts would count)")
    if N == 0:
        return
    pad = cfg.pad_token_id if pad_token_id is None else pad_token_id
    shared = config is None or isinstance(config, GenerationConfig)
    device = input_ids.device
    sampler = Sampler(configs, row_generators(configs, device, generator, shared), device=device)
    pad = 0 if pad is None else pad
    rows = _Rows(configs, input_ids, attention_mask, cfg.vocab_size, pad, tokenizer)
    if draft is not None:
        blocks = speculative_blocks(model, draft, input_ids, attention_mask, sampler, rows, N)
    else:
        blocks = _plain_blocks(model, input_ids, attention_mask, sampler, rows, N, compile, row_products, prefill_chunk)
    for tokens, processed in blocks:  # [B, n] tokens and the processed logits [B, n, V] they came from
        for j in range(tokens.shape[1]):
            yield rows.emit(tokens[:, j], processed[:, j], _clock() - start)
            if rows.done:
                return


def check_context(prompt_len: int, max_new_tokens: int, max_positions: int) -> None:
    """Raise ValueError unless a prompt of this length and max_new_tokens fit max_position_embeddings."""
    if prompt_len > max_positions:
        raise ValueError(f"prompt of {prompt_len} tokens is longer than max_position_embeddings={max_positions}")
    if prompt_len + max_new_tokens > max_positions:
        raise ValueError(
            f"prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) exceeds max_position_embeddings="
            f"{max_positions}; lower max_new_tokens"
        )


def _plain_blocks(model, input_ids, attention_mask, sampler, rows, max_new_tokens, compile, row_products, chunk):
    """One token per forward: (tokens [B, 1], processed logits [B, 1, V]) per step."""
    B, T = input_ids.shape
    if compile:
        decoder = StaticDecoder.for_model(model, B, T + max_new_tokens)
        cache = decoder.cache
        cache.reset()
    else:
        cache = model.make_cache(B, T + max_new_tokens)
    # The prefill checks the prompt's token ids, before any time goes into measuring row products.
    logits = prefill(model, input_ids, attention_mask, cache, chunk_size=chunk)[:, -1]  # [B, V]
    if input_ids.device.type == "cpu":
        if row_products:  # B-row products: BLAS or a compiled reduction, whichever is faster here
            enable_row_products(model, rows=B)
        else:
            disable_row_products(model)
    if compile:
        cache.freeze()
    while True:
        # Consumed before the next step: a CUDA graph's output logits are overwritten by its next replay.
        processed = sampler.process(logits, rows.history.seen, rows.history.counts)
        yield sampler.choose(processed)[:, None], processed[:, None]
        token = rows.last_tokens[:, None]  # pad for finished rows, as the loop emitted it
        if compile:
            logits = decoder.step(token)
        else:
            logits = model(token, cache=cache, logits_to_keep=1).logits[:, -1]


class _Rows:
    """Per-row state of the loop: finished rows, penalty history, stop conditions, replies."""

    def __init__(self, configs, input_ids, attention_mask, vocab_size: int, pad: int, tokenizer):
        B, device = len(configs), input_ids.device
        self.configs, self.pad = configs, pad
        self.finished = torch.zeros(B, dtype=torch.bool, device=device)
        self.last_tokens: torch.Tensor | None = None
        prompts = [[]] * B  # the real prompt tokens: the repetition penalty's history, read only if needed
        if any(c.penalised[0] for c in configs):
            mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            prompts = [row[m].tolist() for row, m in zip(input_ids, mask, strict=True)]
        self.history = History(configs, prompts, vocab_size, device)
        self.steps, self.done = 0, False
        self.stop_mask = None  # [B, V] bool: each row's stop token ids
        if any(c.stop_token_ids for c in configs):
            self.stop_mask = torch.zeros(B, vocab_size, dtype=torch.bool, device=device)
            for b, c in enumerate(configs):
                for i in c.stop_token_ids:
                    if i >= vocab_size:
                        raise ValueError(f"stop token id {i} is outside the vocabulary [0, {vocab_size})")
                    self.stop_mask[b, i] = True
        wanted = [c.logprobs for c in configs if c.logprobs is not None]
        self.n_logprobs = max(wanted) if wanted else None
        self.replies = None
        if tokenizer is not None:
            real = attention_mask.sum(-1).tolist() if attention_mask is not None else [input_ids.shape[1]] * B
            self.replies = [Reply(tokenizer, c.stop, int(n)) for c, n in zip(configs, real, strict=True)]
        elif any(c.stop for c in configs):
            raise ValueError("stop strings are matched on text: pass tokenizer=... to generate")
        for b, c in enumerate(configs):  # a row asking for no tokens (in a batch that asks for some)
            if c.max_new_tokens == 0:
                self.finished[b] = True
                if self.replies is not None:
                    self.replies[b].finish(LENGTH)

    @property
    def seen(self) -> torch.Tensor | None:  # [B, V] bool; speculative decoding reads it
        return self.history.seen

    def emit(self, token: torch.Tensor, processed: torch.Tensor, elapsed: float) -> Step:
        """Record one generated position; decide which rows finish with it."""
        active = ~self.finished
        token = token.masked_fill(self.finished, self.pad)
        self.last_tokens = token
        self.history.add(token, active)
        step = Step(tokens=token, active=active, finish_reasons=[None] * len(self.configs), replies=self.replies)
        if self.n_logprobs is not None:
            step.logprobs, step.top_ids, step.top_logprobs = top_logprobs(processed, token, self.n_logprobs)
            lp, top_ids, top_lp = step.logprobs.tolist(), step.top_ids.tolist(), step.top_logprobs.tolist()
        self.steps += 1
        ids, act = token.tolist(), active.tolist()
        stop_hit = (
            self.stop_mask[torch.arange(len(ids), device=token.device), token].tolist()
            if self.stop_mask is not None
            else None
        )
        for b, c in enumerate(self.configs):
            if not act[b]:
                continue
            reason = None
            if self.replies is not None:
                entry = None
                if c.logprobs is not None:
                    entry = TokenLogprob.ranked(ids[b], lp[b], top_ids[b], top_lp[b], c.logprobs)
                if self.replies[b].add(ids[b], entry):
                    reason = STOP
            if stop_hit is not None and stop_hit[b]:
                reason = STOP
            elif reason is None and self.steps >= c.max_new_tokens:
                reason = LENGTH
            elif reason is None and c.max_time is not None and elapsed > c.max_time:
                reason = TIME
            if reason is not None:
                step.finish_reasons[b] = reason
                if self.replies is not None:
                    self.replies[b].finish(reason, ids[b] if stop_hit is not None and stop_hit[b] else None)
        newly = torch.tensor([r is not None for r in step.finish_reasons], device=token.device)
        self.finished = self.finished | newly
        self.done = bool(self.finished.all())
        return step


def generate_stream(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, config=None, **kwargs):
    """Yield the next token of every row, [B] long, one step at a time (at most max_new_tokens).

    Arguments are those of `generate_steps` (a `GenerationConfig` or its fields as keywords, and
    tokenizer, draft, generator, pad_token_id, compile, row_products, prefill_chunk).
    """
    for step in generate_steps(model, input_ids, attention_mask, config, **kwargs):
        yield step.tokens


class StaticDecoder:
    """A preallocated cache plus a compiled single-token decode step, reusable across calls.

    The step runs the ordinary `Gemma2.forward` on a frozen cache (see `Gemma2Cache.freeze`), so
    there is no second model implementation to keep in sync. On CUDA it is compiled with
    mode="reduce-overhead" (CUDA graphs): its output logits are overwritten by the next replay, so
    callers must consume them (argmax/sample) before calling `step` again, as `generate` does.
    """

    def __init__(self, model, batch_size: int, max_length: int):
        self.model = model
        self.cache = model.make_cache(batch_size, max_length)
        self.on_cuda = self.cache.device.type == "cuda"
        mode = "reduce-overhead" if self.on_cuda else None
        self._compiled = torch.compile(self._step, mode=mode, fullgraph=True, dynamic=False)

    @classmethod
    def for_model(cls, model, batch_size: int, max_length: int) -> StaticDecoder:
        """Reuse a decoder whose cache is long enough, else build one with a power-of-two capacity:
        each new decoder compiles afresh, so lengths are bucketed rather than matched exactly."""
        p = model.embed.weight
        key = (batch_size, p.dtype, p.device, model.attn_backend)
        decoders = model.__dict__.setdefault("_static_decoders", {})
        decoder = decoders.get(key)
        if decoder is None or decoder.cache.capacity < max_length:
            capacity = min(max(256, 1 << (max_length - 1).bit_length()), model.config.max_position_embeddings)
            decoder = decoders[key] = cls(model, batch_size, max(capacity, max_length))
        return decoder

    def _step(self, token: torch.Tensor) -> torch.Tensor:  # [B, 1] -> [B, V]
        return self.model(token, cache=self.cache, logits_to_keep=1).logits[:, -1]

    def step(self, token: torch.Tensor) -> torch.Tensor:
        if not self.cache.static:
            raise RuntimeError("StaticDecoder.step needs a frozen cache: prefill, then cache.freeze()")
        if self.on_cuda:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs may be reused
        return self._compiled(token)


def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    config: GenerationConfig | Sequence[GenerationConfig] | None = None,
    *,
    streamer: Callable[[torch.Tensor], None] | None = None,
    **kwargs,
) -> torch.Tensor:
    """Prompt + generated tokens [B, T + N] (N <= max_new_tokens: stops early once every row stopped).

    `config` and the keyword arguments are those of `generate_steps`: `GenerationConfig` fields
    (max_new_tokens, do_sample, temperature, top_k, top_p, min_p, repetition_penalty, stop,
    stop_token_ids, max_time, logprobs, seed), and tokenizer, draft, generator, pad_token_id,
    compile, row_products, prefill_chunk. Every generated token is kept, a stop string's too (HF semantics;
    `complete` cuts it off). `streamer(tokens [B])` is called after each step.
    """
    out = [input_ids]
    for token in generate_stream(model, input_ids, attention_mask, config, **kwargs):
        if streamer is not None:
            streamer(token)
        out.append(token[:, None])
    return torch.cat(out, dim=1)


def complete(
    model,
    tokenizer,
    prompts: Sequence[str | Sequence[int]],
    config: GenerationConfig | Sequence[GenerationConfig] | None = None,
    **kwargs,
) -> list[Completion]:
    """Complete a batch of prompts (text, encoded with <bos>, or token ids) in one left-padded batch.

    Returns one `Completion` per prompt: text and token ids without the stop string (OpenAI
    semantics), finish_reason, logprobs if asked. Keyword arguments are those of `generate_steps`.
    """
    if not prompts:
        return []
    rows = [tokenizer.encode(p) if isinstance(p, str) else [int(i) for i in p] for p in prompts]
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else (model.config.pad_token_id or 0)
    input_ids, attention_mask = left_pad(rows, pad, device=model.embed.weight.device)
    kwargs.setdefault("pad_token_id", pad)
    replies = [Reply(tokenizer, (), len(r)) for r in rows]  # what comes back if nothing is generated
    for step in generate_steps(model, input_ids, attention_mask, config, tokenizer=tokenizer, **kwargs):
        replies = step.replies
    for r in replies:
        r.finish(LENGTH)  # no-op for the rows that finished
    return [r.completion() for r in replies]


def left_pad(
    rows: Sequence[Sequence[int]], pad_id: int, device=None, length: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows -> (input_ids [B, T], attention_mask [B, T]), padded on the left to the longest
    row, or to `length` if that is longer (the server's rows joining a batch at its stream length)."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt must hold at least one token (e.g. <bos>)")
    T = max(length, *(len(r) for r in rows))
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, T - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[b, T - len(r) :] = 1
    return ids.to(device), mask.to(device)


def default_stop_token_ids(model, tokenizer) -> tuple[int, ...]:
    """The ids that end a reply: the checkpoint's eos ids plus the tokenizer's <eos> and <end_of_turn>."""
    ids = set(model.config.eos_token_ids)
    ids |= {i for i in (tokenizer.eos_id, tokenizer.end_of_turn_id) if i is not None}
    return tuple(sorted(ids))


class TextStreamer:
    """A `streamer` callback that prints decoded text of row 0 as tokens arrive.

    It re-decodes the whole reply and prints only the new suffix, because one character can span
    several byte-fallback tokens (a trailing U+FFFD means "wait for the rest").
    """

    def __init__(self, tokenizer, out=None, skip_ids=()):
        self.tokenizer, self.out, self.skip_ids = tokenizer, out or sys.stdout, set(skip_ids)
        self.ids: list[int] = []
        self.printed = 0

    def __call__(self, token: torch.Tensor) -> None:
        i = int(token.reshape(-1)[0])
        if i in self.skip_ids:
            return
        self.ids.append(i)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        self.out.write(text[self.printed :])
        self.out.flush()
        self.printed = len(text)

    def text(self) -> str:
        return self.tokenizer.decode(self.ids)


# ---------------------------------------------------------------------------------------------
# CLI: foresight generate --model DIR (--prompt TEXT | --chat | --input prompts.jsonl --output out.jsonl) [...]
# ---------------------------------------------------------------------------------------------


def add_generate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="HF-layout directory: config.json, safetensors, tokenizer")
    parser.add_argument("--prompt", default=None, help="prompt text (with --chat: the first user turn)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate per reply")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    parser.add_argument("--min-p", type=float, default=None, help="drop tokens below min_p * the top token's prob")
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="> 1 discourages tokens already seen (1 = off)"
    )
    parser.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="stop string, excluded from the reply (repeatable)"
    )
    parser.add_argument("--max-time", type=float, default=None, metavar="SECONDS", help="stop a reply after this long")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    parser.add_argument(
        "--input", default=None, metavar="JSONL", help="prompts, one JSON object per line (see --output)"
    )
    parser.add_argument("--output", default=None, metavar="JSONL", help="with --input: one JSON result per prompt")
    parser.add_argument("--batch-size", type=int, default=8, help="with --input: prompts decoded together")
    parser.add_argument(
        "--logprobs", type=int, default=None, metavar="N", help="with --input: each token's logprob and N alternatives"
    )
    parser.add_argument("--draft", default=None, metavar="DIR", help="draft model for speculative decoding")
    parser.add_argument(
        "--num-draft-tokens", type=int, default=4, metavar="K", help="tokens the draft proposes per round"
    )
    parser.add_argument("--chat", action="store_true", help="interactive chat on stdin (one line per turn)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (CUDA when present)")
    add_dtype_argument(parser)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="decode with a static cache and a torch.compile'd step (CUDA graphs on GPU); the first reply compiles",
    )
    return parser


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    """--dtype, as `foresight generate` and `foresight serve` take it (`hf_io.parse_dtype`, `auto_dtype`)."""
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bfloat16 on CUDA; on CPU bfloat16 for a bf16 checkpoint if the CPU has native bf16, else float32",
    )


def run_generate(args: argparse.Namespace, stdin=None, stdout=None) -> int:
    """Run `foresight generate`; returns the process exit code."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if args.prompt is None and not args.chat and args.input is None:
        print("error: --prompt is required unless --chat or --input is given", file=sys.stderr)
        return 2
    if (args.input is None) != (args.output is None) or (args.input is not None and (args.prompt or args.chat)):
        print("error: --input and --output go together, without --prompt or --chat", file=sys.stderr)
        return 2
    if args.logprobs is not None and args.input is None:
        print("error: --logprobs needs --input (logprobs are written to the --output JSONL)", file=sys.stderr)
        return 2
    try:  # bad values are one-line errors before anything is loaded
        options = dict(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            min_p=args.min_p,
            repetition_penalty=args.repetition_penalty,
            stop=tuple(args.stop),
            max_time=args.max_time,
            logprobs=args.logprobs,
            seed=args.seed,
        )
        config = GenerationConfig.from_options(options)
        drafter = None if args.draft is None else Drafter(None, args.num_draft_tokens)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:  # a one-line error, not the traceback of the first tensor moved to a missing GPU
        device = select_device(args.device)
        dtype = parse_dtype(args.dtype)  # None: auto
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if dtype == torch.float16:
        print("warning: Gemma 2 is unstable in float16 (27B erratic); prefer bfloat16", file=sys.stderr)
    try:
        dtype = dtype or auto_dtype(checkpoint_dtype(args.model), device)
        model = load_pretrained(args.model, dtype=dtype, device=device)
        tokenizer = Gemma2Tokenizer.from_pretrained(args.model)
        check_tokenizer_compatible(tokenizer, model.config)
        if drafter is not None:
            drafter.model = load_pretrained(args.draft, dtype=dtype, device=device)
            drafter.check(model)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    config = config.replace(stop_token_ids=default_stop_token_ids(model, tokenizer))
    run_kw = dict(tokenizer=tokenizer, pad_token_id=tokenizer.pad_id, compile=args.compile, draft=drafter)
    if args.input is not None:
        code = _run_jsonl(model, tokenizer, args, config, run_kw)
        _report_drafter(drafter)
        return code

    def reply(ids: list[int]) -> str:
        # Print text as it becomes final: bytes of a half-decoded character and a tail that may
        # begin a stop string wait (`Reply.stable_text`).
        prompt = torch.tensor([ids], dtype=torch.long, device=device)
        text = ""
        for step in generate_steps(model, prompt, None, config, **run_kw):
            new = step.replies[0].stable_text()
            stdout.write(new[len(text) :])
            stdout.flush()
            text = new
        stdout.write("\n")
        stdout.flush()
        return text

    try:
        if not args.chat:
            reply(tokenizer.encode(args.prompt))
            return 0
        messages: list[dict] = []
        pending = [args.prompt] if args.prompt else []
        while True:
            if pending:
                line = pending.pop()
            else:
                stdout.write("> ")
                stdout.flush()
                line = stdin.readline()
                if not line:  # EOF ends the chat
                    return 0
            line = line.strip()
            if not line:
                continue
            messages.append({"role": "user", "content": line})
            messages.append({"role": "assistant", "content": reply(tokenizer.encode_chat(messages))})
    except ValueError as e:  # e.g. the conversation outgrew max_position_embeddings
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        _report_drafter(drafter)


def _run_jsonl(model, tokenizer, args, base: GenerationConfig, run_kw: dict) -> int:
    """--input/--output: every line of the input, in batches, one JSON result per line."""
    if args.batch_size < 1:
        print(f"error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    try:  # every line is checked before anything is generated
        prompts = generate_jsonl.read_prompts(args.input, tokenizer, base)
        groups = generate_jsonl.batches(prompts, args.batch_size, model.config.max_position_embeddings)
        out = open(args.output, "w", encoding="utf-8")  # noqa: SIM115  (closed below; flushed per batch)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_kw = {k: v for k, v in run_kw.items() if k != "tokenizer"}
    with out:
        for group in groups:
            completions = complete(model, tokenizer, [p.token_ids for p in group], [p.config for p in group], **run_kw)
            for p, c in zip(group, completions, strict=True):
                out.write(json.dumps(generate_jsonl.to_json(p, c), ensure_ascii=False) + "\n")
            out.flush()
    return 0


def _report_drafter(drafter: Drafter | None) -> None:
    if drafter is not None and drafter.rounds:
        print(
            f"speculative decoding: acceptance rate {drafter.acceptance_rate:.3f} with {drafter.num_tokens} draft "
            f"tokens per round, {drafter.tokens_per_round:.2f} tokens per target forward",
            file=sys.stderr,
        )


def generate_cli(argv: list[str] | None = None) -> int:
    """`main(argv)`-style entry point: parse arguments and run."""
    parser = add_generate_arguments(argparse.ArgumentParser(prog="foresight generate"))
    return run_generate(parser.parse_args(argv))
