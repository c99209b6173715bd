"""Autoregressive generation for Gemma 2: greedy and sampled decoding, streaming, and the CLI.

Axis legend: B batch, T prompt length, N new tokens, V vocab.

One prefill forward over the (left-padded) prompt fills a preallocated `Gemma2Cache`, then each
step feeds one token per row with `logits_to_keep=1`. Rows that emit a stop token are finished:
they keep receiving `pad_token_id` (as HF `generate` does) until every row is finished. On CPU the
B-row products of the decode steps use `foresight.lm.cpu_decode` where it measures faster
(`row_products=False` keeps plain `F.linear`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator

import torch

from foresight.core.run import select_device
from foresight.lm.cpu_decode import disable_row_products, enable_row_products
from foresight.lm.hf_io import auto_dtype, check_tokenizer_compatible, checkpoint_dtype, load_pretrained, parse_dtype
from foresight.lm.tokenizer import Gemma2Tokenizer

SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": None, "top_p": None}


# ---------------------------------------------------------------------------------------------
# Token selection
# ---------------------------------------------------------------------------------------------


def select_next_token(
    logits: torch.Tensor,  # [B, V] (soft-capped) logits of the last position
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:  # [B] long
    """Greedy argmax, or sampling after temperature -> top-k -> top-p (HF's warper order)."""
    if not do_sample:
        return logits.argmax(dim=-1)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    logits = logits.float() / temperature
    if top_k is not None:
        if top_k <= 0:
            raise ValueError(f"top_k must be a positive int, got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, V]
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens ranked above it already cover top_p (the best one always stays).
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


# ---------------------------------------------------------------------------------------------
# Generation loop
# ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def generate_stream(
    model,
    input_ids: torch.Tensor,  # [B, T]
    attention_mask: torch.Tensor | None = None,  # [B, T], 1 = real, 0 = left padding
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    stop_token_ids=None,
    pad_token_id: int | None = None,
    compile: bool = False,
    row_products: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, [B] long, one step at a time (at most max_new_tokens).

    compile=True decodes with a frozen (static-shape) cache and a `torch.compile`d single-token
    step, captured as a CUDA graph on GPU; the compiled step and its cache are kept on the model
    and reused by later calls with the same batch size and length (the first call compiles).

    row_products=True (CPU only) switches the model's big B-row products to compiled reductions
    where they measure faster (`cpu_decode.enable_row_products`: in place, same parameters, timed
    once per machine and shape); False switches them back to `F.linear` (`disable_row_products`).
    """
    cfg = model.config
    if input_ids.dim() != 2 or input_ids.numel() == 0:
        raise ValueError(
            f"input_ids must be a non-empty [batch, tokens] prompt (at least <bos>), got shape {tuple(input_ids.shape)}"
        )
    B, T = input_ids.shape
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if T > cfg.max_position_embeddings:
        raise ValueError(f"prompt of {T} tokens is longer than max_position_embeddings={cfg.max_position_embeddings}")
    if T + max_new_tokens > cfg.max_position_embeddings:
        raise ValueError(
            f"prompt ({T}) + max_new_tokens ({max_new_tokens}) exceeds max_position_embeddings="
            f"{cfg.max_position_embeddings}; lower max_new_tokens"
        )
    if max_new_tokens == 0:
        return
    device = input_ids.device
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    stop = torch.tensor(sorted(set(stop_token_ids or ())), dtype=torch.long, device=device)
    pad = cfg.pad_token_id if pad_token_id is None else pad_token_id
    if pad is None:
        pad = 0
    sample_kw = dict(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)

    if compile:
        decoder = StaticDecoder.for_model(model, B, T + max_new_tokens)
        cache = decoder.cache
        cache.reset()
    else:
        cache = model.make_cache(B, T + max_new_tokens)
    # The prefill checks the prompt's token ids, before any time goes into measuring row products.
    logits = model(input_ids, attention_mask, cache=cache, logits_to_keep=1).logits[:, -1]  # [B, V]
    if device.type == "cpu":
        if row_products:  # B-row products: BLAS or a compiled reduction, whichever is faster here
            enable_row_products(model, rows=B)
        else:
            disable_row_products(model)
    if compile:
        cache.freeze()
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        token = select_next_token(logits, **sample_kw)  # [B]
        if stop.numel():
            token = token.masked_fill(finished, pad)
            finished = finished | torch.isin(token, stop)
        yield token
        if step == max_new_tokens - 1 or bool(finished.all()):
            return
        if compile:
            logits = decoder.step(token[:, None])
        else:
            logits = model(token[:, None], cache=cache, logits_to_keep=1).logits[:, -1]


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
    *,
    max_new_tokens: int = 32,
    streamer: Callable[[torch.Tensor], None] | None = None,
    **kwargs,
) -> torch.Tensor:
    """Prompt + generated tokens [B, T + N] (N <= max_new_tokens: stops early once every row stopped).

    Keyword arguments are those of `generate_stream` (do_sample, temperature, top_k, top_p,
    generator, seed, stop_token_ids, pad_token_id, compile, row_products). `streamer(tokens [B])`
    is called after each step.
    """
    out = [input_ids]
    for token in generate_stream(model, input_ids, attention_mask, max_new_tokens=max_new_tokens, **kwargs):
        if streamer is not None:
            streamer(token)
        out.append(token[:, None])
    return torch.cat(out, dim=1)


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
# CLI: foresight generate --model DIR --prompt TEXT [...]
# ---------------------------------------------------------------------------------------------


def add_generate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="HF-layout directory: config.json, safetensors, tokenizer")
    parser.add_argument("--prompt", default=None, help="prompt text (with --chat: the first user turn)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate per reply")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    parser.add_argument("--chat", action="store_true", help="interactive chat on stdin (one line per turn)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (CUDA when present)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bfloat16 on CUDA; on CPU bfloat16 for a bf16 checkpoint if the CPU has native bf16, else float32",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="decode with a static cache and a torch.compile'd step (CUDA graphs on GPU); the first reply compiles",
    )
    return parser


def run_generate(args: argparse.Namespace, stdin=None, stdout=None) -> int:
    """Run `foresight generate`; returns the process exit code."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if args.prompt is None and not args.chat:
        print("error: --prompt is required unless --chat is given", file=sys.stderr)
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
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    stop_ids = set(model.config.eos_token_ids)
    stop_ids |= {i for i in (tokenizer.eos_id, tokenizer.end_of_turn_id) if i is not None}
    sample_kw = dict(
        do_sample=args.temperature > 0,
        temperature=args.temperature if args.temperature > 0 else 1.0,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_token_ids=stop_ids,
        pad_token_id=tokenizer.pad_id,
        compile=args.compile,
    )

    def reply(ids: list[int]) -> str:
        streamer = TextStreamer(tokenizer, out=stdout, skip_ids=stop_ids)
        prompt = torch.tensor([ids], dtype=torch.long, device=device)
        generate(model, prompt, max_new_tokens=args.max_new_tokens, streamer=streamer, **sample_kw)
        stdout.write("\n")
        stdout.flush()
        return streamer.text()

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


def generate_cli(argv: list[str] | None = None) -> int:
    """`main(argv)`-style entry point: parse arguments and run."""
    parser = add_generate_arguments(argparse.ArgumentParser(prog="foresight generate"))
    return run_generate(parser.parse_args(argv))
