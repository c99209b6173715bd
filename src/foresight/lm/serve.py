"""An OpenAI-compatible HTTP server for a Gemma 2 checkpoint: `foresight serve --model DIR`.

    foresight serve --model runs/lm/model --port 8000
    python -c "from openai import OpenAI; c = OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='x');
               print(c.completions.create(model='model', prompt='Once', max_tokens=8).choices[0].text)"

FastAPI + uvicorn in front of one `foresight.lm.engine.Engine` (a thread that owns the model and
batches concurrent requests into shared decode steps; each request becomes one
`foresight.lm.GenerationConfig` and decodes as `foresight generate` would decode it). Endpoints:

    GET  /v1/models, /v1/models/{id}   the one model, named after its folder
    POST /v1/completions               prompt: a string, a list of strings, token ids or lists of them
    POST /v1/chat/completions          messages rendered with the tokenizer's Gemma chat template
    GET  /health, /stats               liveness and the engine's counters (not OpenAI endpoints)

Both POST endpoints stream with "stream": true: server-sent events `data: {chunk}\\n\\n`, ending with
`data: [DONE]`; with "stream_options": {"include_usage": true} a last chunk carries the usage.

Request fields and what they map to (anything else is a 400 "unrecognized request argument"):

    max_tokens (chat: also max_completion_tokens)   default 16 for completions, the rest of the context for chat
    temperature 0..2 (0 = greedy), top_p (0, 1]
    top_k >= 0 (0 or -1 = off), min_p [0, 1], repetition_penalty > 0 (1 = off)   extensions, as vLLM's
    seed          the request's own generator: the same seed samples the same text in any batch, and
                  the text `foresight generate` samples with that seed (with n > 1, choice j uses seed + j)
    stop          a string or up to 16 strings; the text ends before the first one
    n             choices per prompt, 1..16
    presence_penalty, frequency_penalty   in [-2, 2], OpenAI's definition (over generated tokens)
    logprobs      completions: an int 0..5; chat: true with top_logprobs 0..20. Log-probabilities of
                  the distribution each token was chosen from, after penalties and (when sampling)
                  temperature/top-k/top-p/min-p: the library's definition (see GenerationConfig).
                  With temperature 0 or 1 and no penalties or filters, the model's own distribution.
                  Filtered alternatives are left out; a stop token has no entry
    stream, stream_options, user          as OpenAI
    logit_bias, echo, suffix, best_of > 1, tools, response_format, ...   400 "not supported"

Errors are OpenAI-shaped, `{"error": {"message", "type", "param", "code"}}`: 400 for a malformed
body (invalid JSON, wrong types, missing fields, values out of range, a prompt that does not fit the
context), 404 for an unknown model or path, 500 if the engine fails (the server keeps serving), 503
while it shuts down. A
client that disconnects cancels its request: the engine drops its row at the next step.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time, and
# `HTTPRequest` is imported inside create_app (so that this module imports without fastapi).
import argparse
import asyncio
import json
import math
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from foresight.lm.engine import Engine, Output, Request
from foresight.lm.generate import add_dtype_argument
from foresight.lm.sampling import GenerationConfig

MAX_CHOICES = 64  # prompts x n of one request
MAX_STOPS = 16
DISCONNECT_POLL_S = 0.25  # how often a non-streamed request checks that its client is still there

COMMON_FIELDS = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "seed",
    "stop",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "logit_bias",
    "stream",
    "stream_options",
    "user",
}
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt", "echo", "suffix", "best_of"}
CHAT_FIELDS = COMMON_FIELDS | {
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "response_format",
}


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class APIError(Exception):
    """An HTTP error with an OpenAI-shaped body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def _invalid(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


# ---------------------------------------------------------------------------------------------
# Request parsing: JSON body -> prompts (token ids) and GenerationConfigs
# ---------------------------------------------------------------------------------------------

_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", list: "an array", dict: "an object"}


def _get(body: dict, name: str, kind: type, default=None, required: bool = False):
    """body[name] checked against kind (float also takes ints; bool is never an int); None = absent."""
    value = body.get(name)
    if value is None:
        if required:
            raise _invalid(name, f"missing required parameter '{name}'", "missing_required_parameter")
        return default
    ok = isinstance(value, int | float) if kind is float else isinstance(value, kind)
    if kind in (int, float) and isinstance(value, bool):
        ok = False
    if not ok:
        got = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}
        got = got.get(type(value), "an object")
        raise _invalid(name, f"invalid type for '{name}': expected {_KINDS[kind]}, but got {got}", "invalid_type")
    if kind is float and not math.isfinite(value):
        raise _invalid(name, f"invalid '{name}': expected a finite number, got {value}")
    return value


def _in_range(name: str, value, low, high) -> None:
    if not low <= value <= high:
        raise _invalid(name, f"invalid '{name}': expected a value in [{low}, {high}], but got {value}")


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def check_fields(body: dict, known: set[str]) -> None:
    for name in body:
        if name not in known:
            raise _invalid(name, f"unrecognized request argument supplied: '{name}'", "unknown_parameter")
    if body.get("logit_bias"):  # {} and null are no-ops
        raise _invalid("logit_bias", "'logit_bias' is not supported by this server", "unsupported_parameter")
    for name in ("tools", "functions", "tool_choice", "function_call", "response_format", "suffix"):
        if body.get(name) not in (None, [], "none"):
            raise _invalid(
                name, f"'{name}' is not supported by this server (Gemma 2 has no tool calling)", "unsupported_parameter"
            )
    if body.get("echo"):
        raise _invalid("echo", "'echo' is not supported by this server", "unsupported_parameter")


@dataclass(frozen=True)
class Parsed:
    """A validated request: one entry per choice (prompt x n), in choice order."""

    prompts: list[list[int]]  # one per distinct prompt
    configs: list[GenerationConfig]  # one per choice: choice i completes prompts[i // n]
    n: int
    stream: bool
    include_usage: bool


def parse_sampling(
    body: dict, max_tokens: int | None, prompt_len: int, context: int, logprobs: int | None
) -> GenerationConfig:
    """The GenerationConfig of one choice from the shared fields (max_tokens None: the rest of the context)."""
    temperature = _get(body, "temperature", float, 1.0)
    _in_range("temperature", temperature, 0, 2)
    top_p = _get(body, "top_p", float, 1.0)
    if not 0 < top_p <= 1:
        raise _invalid("top_p", f"invalid 'top_p': expected a value in (0, 1], but got {top_p}")
    top_k = _get(body, "top_k", int, 0)
    if top_k == -1:  # vLLM's "off"
        top_k = 0
    if top_k < 0:
        raise _invalid("top_k", f"invalid 'top_k': expected an integer >= 0 (0 or -1 = off), but got {top_k}")
    min_p = _get(body, "min_p", float, 0.0)
    _in_range("min_p", min_p, 0, 1)
    repetition_penalty = _get(body, "repetition_penalty", float, 1.0)
    if not repetition_penalty > 0:
        raise _invalid(
            "repetition_penalty",
            f"invalid 'repetition_penalty': expected a value > 0 (1 = off), but got {repetition_penalty}",
        )
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stop = tuple(stop)
    else:
        raise _invalid("stop", "invalid type for 'stop': expected a string or an array of strings", "invalid_type")
    if len(stop) > MAX_STOPS or not all(stop):
        raise _invalid("stop", f"invalid 'stop': expected at most {MAX_STOPS} non-empty strings")
    penalties = {}
    for name in ("presence_penalty", "frequency_penalty"):
        penalties[name] = _get(body, name, float, 0.0)
        _in_range(name, penalties[name], -2, 2)
    remaining = context - prompt_len
    if max_tokens is None:
        max_tokens = remaining
    if max_tokens < 1 or prompt_len + max_tokens > context:
        raise _context_error(prompt_len, max_tokens, context)
    options = dict(
        max_new_tokens=max_tokens,
        temperature=float(temperature),  # 0 = greedy, as in GenerationConfig.from_options
        top_p=float(top_p),
        top_k=top_k or None,
        min_p=float(min_p) or None,
        repetition_penalty=float(repetition_penalty),
        seed=_get(body, "seed", int),
        stop=stop,
        logprobs=logprobs,
        **{k: float(v) for k, v in penalties.items()},
    )
    return GenerationConfig.from_options(options)


def _context_error(prompt_len: int, max_tokens: int, context: int) -> APIError:
    if prompt_len >= context:
        message = f"this model's maximum context length is {context} tokens, but the prompt has {prompt_len} tokens"
    else:
        message = (
            f"this model's maximum context length is {context} tokens, but {prompt_len + max_tokens} were requested "
            f"({prompt_len} in the prompt, {max_tokens} for the completion); lower max_tokens"
        )
    return APIError(
        400, message, param="max_tokens" if prompt_len < context else "prompt", code="context_length_exceeded"
    )


def _max_tokens(body: dict, *names: str) -> int | None:
    for name in names:
        value = _get(body, name, int)
        if value is not None:
            if value < 1:
                raise _invalid(
                    name, f"invalid '{name}': expected a value >= 1, but got {value}", "integer_below_min_value"
                )
            return value
    return None


def _choices(body: dict, prompts: list[list[int]], max_tokens, context: int, logprobs) -> Parsed:
    n = _get(body, "n", int, 1)
    _in_range("n", n, 1, 16)
    if len(prompts) * n > MAX_CHOICES:
        raise _invalid("n", f"{len(prompts)} prompts x n={n} is more than {MAX_CHOICES} choices per request")
    stream = _get(body, "stream", bool, False)
    options = _get(body, "stream_options", dict, {})
    if options and not stream:
        raise _invalid("stream_options", "'stream_options' is only allowed with \"stream\": true")
    include_usage = _get(options, "include_usage", bool, False)
    configs = []
    for ids in prompts:
        c = parse_sampling(body, max_tokens, len(ids), context, logprobs)
        configs += [c if c.seed is None else c.replace(seed=c.seed + j) for j in range(n)]
    return Parsed(prompts, configs, n, stream, include_usage)


def parse_completion(body: dict, tokenizer, vocab_size: int, context: int) -> Parsed:
    check_fields(body, COMPLETION_FIELDS)
    n = _get(body, "n", int, 1)
    if _get(body, "best_of", int, n) != n:
        raise _invalid("best_of", "'best_of' other than n is not supported by this server", "unsupported_parameter")
    prompt = body.get("prompt")
    if prompt is None:
        raise _invalid("prompt", "missing required parameter 'prompt'", "missing_required_parameter")
    if isinstance(prompt, str):
        prompts = [tokenizer.encode(prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = [tokenizer.encode(p) for p in prompt]
    elif isinstance(prompt, list) and prompt and all(_is_token(i) for i in prompt):
        prompts = [list(prompt)]
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(p, list) and p and all(map(_is_token, p)) for p in prompt)
    ):
        prompts = [list(p) for p in prompt]
    else:
        raise _invalid(
            "prompt",
            "invalid 'prompt': expected a string, an array of strings, a non-empty array of "
            "token ids or an array of them",
            "invalid_type",
        )
    for ids in prompts:
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise _invalid("prompt", f"invalid 'prompt': token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    logprobs = _get(body, "logprobs", int)
    if logprobs is not None:
        _in_range("logprobs", logprobs, 0, 5)
    return _choices(body, prompts, _max_tokens(body, "max_tokens") or _default_max(prompts, context), context, logprobs)


def _default_max(prompts: list[list[int]], context: int) -> int | None:
    """OpenAI's completions default of 16 tokens, cut to what the context leaves (None: let it fail)."""
    room = context - max(len(p) for p in prompts)
    return min(16, room) if room >= 1 else None


def _is_token(i) -> bool:
    return isinstance(i, int) and not isinstance(i, bool)


def parse_chat(body: dict, tokenizer, context: int) -> Parsed:
    check_fields(body, CHAT_FIELDS)
    raw = body.get("messages")
    if raw is None:
        raise _invalid("messages", "missing required parameter 'messages'", "missing_required_parameter")
    if not isinstance(raw, list) or not raw:
        raise _invalid("messages", "invalid 'messages': expected a non-empty array of messages", "invalid_type")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _invalid(
                f"messages[{i}]", f"invalid 'messages[{i}]': expected an object with a string 'role'", "invalid_type"
            )
        messages.append({"role": m["role"], "content": _message_text(m.get("content"), i)})
    try:
        ids = tokenizer.encode_chat(messages)
    except Exception as e:  # the chat template refuses the conversation (roles, system turn, ...)
        raise _invalid("messages", f"invalid 'messages': {e}") from None
    want_logprobs = _get(body, "logprobs", bool, False)
    top = _get(body, "top_logprobs", int)
    if top is not None:
        _in_range("top_logprobs", top, 0, 20)
        if not want_logprobs:
            raise _invalid("top_logprobs", "'top_logprobs' needs \"logprobs\": true")
    logprobs = (top or 0) if want_logprobs else None
    return _choices(body, [ids], _max_tokens(body, "max_completion_tokens", "max_tokens"), context, logprobs)


def _message_text(content, i: int) -> str:
    """A message's text: a string, or an array of {"type": "text", "text": ...} parts (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise _invalid(f"messages[{i}].content", "only text content parts are supported (Gemma 2 reads text)")
            parts.append(part["text"])
        return "".join(parts)
    raise _invalid(
        f"messages[{i}].content",
        f"invalid 'messages[{i}].content': expected a string or an array of text parts",
        "invalid_type",
    )


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------


class Choice:
    """What one choice has received so far."""

    def __init__(self):
        self.text, self.finish_reason, self.prompt_tokens, self.completion_tokens = "", None, 0, 0
        self.logprobs: list = []
        self.error: str | None = None

    def add(self, out: Output) -> None:
        self.text += out.text
        self.logprobs += out.logprobs or []
        self.prompt_tokens, self.completion_tokens = out.prompt_tokens, out.completion_tokens
        if out.finish_reason is not None:
            self.finish_reason, self.error = out.finish_reason, out.error


def _usage(choices: list[Choice], n: int) -> dict:
    prompt = sum(c.prompt_tokens for c in choices[::n])  # each prompt once, however many choices it has
    completion = sum(c.completion_tokens for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _token_text(tokenizer, i: int) -> str:
    return tokenizer.decode([i], skip_special_tokens=False)


def completion_logprobs(tokenizer, lps: list, offset: int = 0) -> dict:
    """OpenAI's completions logprobs: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens = [_token_text(tokenizer, lp.token_id) for lp in lps]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in lps],
        "top_logprobs": [{_token_text(tokenizer, i): v for i, v in lp.top} for lp in lps],
        "text_offset": offsets,
    }


def chat_logprobs(tokenizer, lps: list) -> dict:
    """OpenAI's chat logprobs: {"content": [{token, logprob, bytes, top_logprobs}]}."""

    def entry(i: int, logprob: float) -> dict:
        text = _token_text(tokenizer, i)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(i, v) for i, v in lp.top]} for lp in lps]
    }


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------


def create_app(engine: Engine, model_name: str):
    """A FastAPI app serving `engine` as `model_name`; it starts the engine and stops it on shutdown."""
    import contextlib

    from fastapi import FastAPI
    from fastapi import Request as HTTPRequest
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    tokenizer, context = engine.tokenizer, engine.max_positions
    vocab_size = engine.model.config.vocab_size
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="foresight", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return JSONResponse(e.body, status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):  # unknown path, wrong method
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(
            APIError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", code=code).body,
            status_code=e.status_code,
        )

    @app.exception_handler(Exception)
    async def server_error(request, e: Exception):  # a bug: answer 500, log it, keep serving
        return JSONResponse(APIError(500, f"internal error: {type(e).__name__}: {e}").body, status_code=500)

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "foresight"}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/stats")
    async def stats():
        return asdict(engine.stats)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        check_model(model_id)
        return model_card()

    def check_model(name) -> None:
        if name != model_name:
            raise APIError(
                404,
                f"the model '{name}' does not exist; this server has '{model_name}'",
                param="model",
                code="model_not_found",
            )

    async def read(request: HTTPRequest) -> dict:
        body = parse_json(await request.body())
        name = _get(body, "model", str, required=True)
        check_model(name)
        return body

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        parsed = parse_completion(await read(request), tokenizer, vocab_size, context)
        return await respond(request, parsed, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        parsed = parse_chat(await read(request), tokenizer, context)
        return await respond(request, parsed, chat=True)

    async def respond(request: HTTPRequest, parsed: Parsed, chat: bool):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, Output]] = asyncio.Queue()

        def emitter(index: int):
            return lambda out: loop.call_soon_threadsafe(events.put_nowait, (index, out))

        requests = [Request(parsed.prompts[i // parsed.n], c, emitter(i)) for i, c in enumerate(parsed.configs)]
        try:
            engine.submit(requests)
        except RuntimeError as e:  # shutting down
            raise APIError(503, str(e), code="unavailable") from None
        meta = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": model_name,
        }
        if parsed.stream:
            return StreamingResponse(
                stream(requests, events, parsed, meta, chat),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        choices = [Choice() for _ in requests]
        try:
            pending, checked = len(requests), time.monotonic()
            while pending:
                try:
                    index, out = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
                    choices[index].add(out)
                    pending -= out.finish_reason is not None
                except TimeoutError:
                    pass
                if time.monotonic() - checked > DISCONNECT_POLL_S:  # events may never pause long enough to time out
                    if await request.is_disconnected():
                        return None
                    checked = time.monotonic()
        finally:
            for r in requests:  # no-op for finished ones; frees the rows of a client that left
                r.cancel()
        for c in choices:
            if c.finish_reason in ("error", "abort"):
                raise failure(c.finish_reason, c.error)
        body = {**meta, "object": "chat.completion" if chat else "text_completion", "choices": []}
        for i, c in enumerate(choices):
            lp = None
            if parsed.configs[i].logprobs is not None:
                lp = chat_logprobs(tokenizer, c.logprobs) if chat else completion_logprobs(tokenizer, c.logprobs)
            if chat:
                item = {"index": i, "message": {"role": "assistant", "content": c.text}}
            else:
                item = {"index": i, "text": c.text}
            body["choices"].append({**item, "logprobs": lp, "finish_reason": c.finish_reason})
        body["usage"] = _usage(choices, parsed.n)
        return body

    def failure(reason: str, error: str | None) -> APIError:
        """The engine failed ("error") or dropped the request while shutting down ("abort")."""
        if reason == "abort":
            return APIError(503, "the server is shutting down", code="unavailable")
        return APIError(500, error or "engine error")

    async def stream(requests, events, parsed: Parsed, meta: dict, chat: bool):
        """Server-sent events: one chunk per step and choice with new text, then [DONE]. If the
        client goes away, Starlette cancels this generator, and `finally` cancels the requests."""
        kind = "chat.completion.chunk" if chat else "text_completion"
        choices = [Choice() for _ in requests]
        offsets = [0] * len(requests)

        def chunk(choice: dict | None, usage: dict | None = None) -> str:
            body = {**meta, "object": kind, "choices": [] if choice is None else [choice]}
            if parsed.include_usage:
                body["usage"] = usage
            return f"data: {json.dumps(body)}\n\n"

        try:
            if chat:
                for i in range(len(requests)):
                    delta = {"role": "assistant", "content": ""}
                    yield chunk({"index": i, "delta": delta, "logprobs": None, "finish_reason": None})
            pending = len(requests)
            while pending:
                i, out = await events.get()
                choices[i].add(out)
                if out.finish_reason in ("error", "abort"):
                    yield f"data: {json.dumps(failure(out.finish_reason, out.error).body)}\n\n"
                    return
                pending -= out.finish_reason is not None
                if not out.text and out.finish_reason is None and not out.logprobs:
                    continue  # text held back (a partial character or a possible stop string)
                lp = None
                if parsed.configs[i].logprobs is not None:
                    if chat:
                        lp = chat_logprobs(tokenizer, out.logprobs or [])
                    else:
                        lp = completion_logprobs(tokenizer, out.logprobs or [], offsets[i])
                offsets[i] += len(out.text)
                if chat:
                    delta = {"content": out.text} if out.text else {}
                    item = {"index": i, "delta": delta}
                else:
                    item = {"index": i, "text": out.text}
                yield chunk({**item, "logprobs": lp, "finish_reason": out.finish_reason})
            if parsed.include_usage:
                yield chunk(None, _usage(choices, parsed.n))
            yield "data: [DONE]\n\n"
        finally:
            for r in requests:
                r.cancel()

    return app


# ---------------------------------------------------------------------------------------------
# CLI: foresight serve --model DIR [--host 127.0.0.1 --port 8000]
# ---------------------------------------------------------------------------------------------


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="HF-layout directory: config.json, safetensors, tokenizer")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA when present)")
    add_dtype_argument(parser)
    parser.add_argument("--max-batch-size", type=int, default=32, help="rows one decode step may carry")
    return parser


def load_engine(model_dir, device: str | None = None, dtype: str = "auto", max_batch_size: int = 32) -> Engine:
    """Model + tokenizer from an HF-layout folder, in an Engine (not started)."""
    from foresight.core.run import select_device
    from foresight.lm.hf_io import (
        auto_dtype,
        check_tokenizer_compatible,
        checkpoint_dtype,
        load_pretrained,
        parse_dtype,
    )
    from foresight.lm.tokenizer import Gemma2Tokenizer

    device = select_device(device)
    torch_dtype = parse_dtype(dtype) or auto_dtype(checkpoint_dtype(model_dir), device)  # as `foresight generate`
    model = load_pretrained(model_dir, dtype=torch_dtype, device=device)
    tokenizer = Gemma2Tokenizer.from_pretrained(model_dir)
    check_tokenizer_compatible(tokenizer, model.config)
    return Engine(model, tokenizer, max_batch_size=max_batch_size)


def run_serve(args: argparse.Namespace) -> int:
    """Run `foresight serve` until Ctrl-C; returns the process exit code."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise ValueError(f"foresight serve needs fastapi and uvicorn ({e}): pip install -e '.[serve]'") from None
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    engine = load_engine(args.model, args.device, args.dtype, args.max_batch_size)
    name = Path(args.model).resolve().name
    app = create_app(engine, name)
    print(f"serving {name!r} on http://{args.host}:{args.port}/v1 (OpenAI API; Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def serve_cli(argv: list[str] | None = None) -> int:
    """`main(argv)`-style entry point: parse arguments and run."""
    parser = add_serve_arguments(argparse.ArgumentParser(prog="foresight serve"))
    return run_serve(parser.parse_args(argv))
