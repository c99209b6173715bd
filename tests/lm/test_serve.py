"""`foresight serve`: the batching engine, and the OpenAI-compatible server driven by the official client.

The server runs on 127.0.0.1 (a free port) in a background thread of this process, so the tests can
read the engine's counters; one test starts the real `foresight serve` command in a subprocess.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch
from gemma2_testing import make_json_tokenizer, random_gemma2

from foresight import cli
from foresight.lm import Gemma2Config, GenerationConfig, generate, save_pretrained
from foresight.lm.engine import Engine, Request
from foresight.lm.generate import complete
from foresight.lm.tokenizer import Gemma2Tokenizer

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from foresight.lm.serve import create_app, load_engine  # noqa: E402  (needs fastapi)

CONTEXT = 256  # max_position_embeddings of the test model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Gemma 2 and a 120-token BPE with Gemma's special and chat tokens, HF layout."""
    d = tmp_path_factory.mktemp("served")
    make_json_tokenizer(d)
    vocab = Gemma2Tokenizer.from_pretrained(d).vocab_size
    save_pretrained(random_gemma2(Gemma2Config.tiny(vocab_size=vocab, max_position_embeddings=CONTEXT)), d)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlowModel:
    """The model with a fixed delay per forward, so a test's timing does not hinge on machine speed."""

    def __init__(self, model, delay: float):
        self._model, self._delay = model, delay

    def __call__(self, *args, **kwargs):
        time.sleep(self._delay)
        return self._model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


@pytest.fixture(scope="module")
def server(model_dir):
    """(engine, base_url) of a server in a background thread (uvicorn skips signal handlers there)."""
    engine = load_engine(model_dir, "cpu")
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(engine, "tiny"), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not srv.started and time.time() < deadline:
        time.sleep(0.01)
    assert srv.started, "the server did not start"
    yield engine, f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key="x", max_retries=0, timeout=20)


def reference(engine: Engine, ids: list[int], max_tokens: int, config: GenerationConfig | None = None) -> list[int]:
    """Tokens of `generate` on the prompt alone (greedy unless `config`), stopping where the engine stops.
    A config goes in as a list: per-row seeding, the engine's (each request has its own generator)."""
    config = (config or GenerationConfig()).replace(max_new_tokens=max_tokens, stop_token_ids=engine.stop_token_ids)
    out = generate(engine.model, torch.tensor([ids]), config=[config], row_products=False)[0, len(ids) :].tolist()
    stop = [i for i, t in enumerate(out) if t in engine.stop_token_ids]
    return out[: stop[0] + 1] if stop else out


def text_of(engine: Engine, ids: list[int]) -> str:
    return engine.tokenizer.decode([i for i in ids if i not in engine.stop_token_ids])


# ---------------------------------------------------------------------------------------------
# The engine on its own
# ---------------------------------------------------------------------------------------------


class Collector:
    """emit() target: gathers a request's outputs; `done` is set at its finish."""

    def __init__(self):
        self.outputs, self.done, self.first = [], threading.Event(), threading.Event()

    def __call__(self, out) -> None:
        self.outputs.append(out)
        self.first.set()
        if out.finish_reason is not None:
            self.done.set()

    @property
    def tokens(self) -> list[int]:
        return [t for o in self.outputs for t in o.token_ids]

    @property
    def text(self) -> str:
        return "".join(o.text for o in self.outputs)


@pytest.fixture
def engine(model_dir):
    e = load_engine(model_dir, "cpu").start()
    yield e
    e.stop()


def test_engine_rows_joining_a_running_batch_decode_as_if_alone(engine):
    """A long prompt runs; two shorter ones join it mid-way (left-padded to its stream length);
    a greedy row's tokens equal `generate` on its prompt alone, and all share decode steps."""
    tok = engine.tokenizer
    prompts = [tok.encode(p) for p in ("what is the capital of France? Paris", "hello world", "the")]
    later = [Collector(), Collector()]
    joiners = [Request(p, GenerationConfig(max_new_tokens=12), c) for p, c in zip(prompts[1:], later)]

    class First(Collector):  # submits the others from the engine thread at its 4th token: they must join
        def __call__(self, out):
            super().__call__(out)
            if len(self.outputs) == 4:
                engine.submit(joiners)

    first = First()
    engine.submit([Request(prompts[0], GenerationConfig(max_new_tokens=24), first)])
    for c in [first, *later]:
        assert c.done.wait(10)
    assert engine.stats.batches == 1 and engine.stats.joined == 2 and engine.stats.max_rows == 3
    for ids, c, n in zip(prompts, [first, *later], (24, 12, 12)):
        ref = reference(engine, ids, n)
        assert c.tokens == ref
        assert c.text == text_of(engine, ref)
        assert c.outputs[-1].finish_reason == ("stop" if ref[-1] in engine.stop_token_ids else "length")
        assert c.outputs[-1].completion_tokens == len(ref) and c.outputs[-1].prompt_tokens == len(ids)


def test_engine_stop_string_across_tokens_and_seeded_sampling(engine):
    tok = engine.tokenizer
    ids = tok.encode("the quick brown fox")
    ref = reference(engine, ids, 16)
    pieces = [tok.decode([t]) for t in ref if t not in engine.stop_token_ids]
    i = next(i for i in range(len(pieces) - 1) if pieces[i] and pieces[i + 1])
    stop = pieces[i][-1] + pieces[i + 1][0]  # the last character of one token and the first of the next
    full = "".join(pieces)
    got = Collector()
    engine.submit([Request(ids, GenerationConfig(max_new_tokens=16, stop=(stop,)), got)])
    assert got.done.wait(10)
    assert got.outputs[-1].finish_reason == "stop"
    assert got.text == full[: full.index(stop)]

    # A seeded sampled request gives the same tokens alone and in a batch with others.
    config = GenerationConfig(max_new_tokens=12, do_sample=True, top_p=0.9, seed=7)
    alone, together, other = Collector(), Collector(), Collector()
    engine.submit([Request(ids, config, alone)])
    assert alone.done.wait(10)
    unseeded = GenerationConfig(max_new_tokens=12, do_sample=True)
    engine.submit([Request(tok.encode("hello"), unseeded, other), Request(ids, config, together)])
    assert together.done.wait(10) and other.done.wait(10)
    assert together.tokens == alone.tokens


def test_engine_penalties_and_logprobs_match_a_plain_loop(engine):
    """OpenAI's presence/frequency penalties (over generated tokens) and the logprobs of the
    distribution each token was chosen from (here the penalised logits: greedy has no temperature),
    against a loop that recomputes the whole sequence each step."""
    ids = engine.tokenizer.encode("the quick brown fox")
    config = GenerationConfig(max_new_tokens=10, presence_penalty=0.5, frequency_penalty=1.5, logprobs=3)
    got = Collector()
    engine.submit([Request(ids, config, got)])
    assert got.done.wait(10)
    seq, counts, expected, expected_lp = list(ids), {}, [], []
    with torch.no_grad():
        for _ in range(10):
            logits = engine.model(torch.tensor([seq])).logits[0, -1].float()
            for t, n in counts.items():
                logits[t] -= 1.5 * n + 0.5
            lp = logits.log_softmax(-1)
            t = int(logits.argmax())
            expected.append(t)
            expected_lp.append((float(lp[t]), lp.topk(3).indices.tolist()))
            if t in engine.stop_token_ids:
                break
            counts[t] = counts.get(t, 0) + 1
            seq.append(t)
    assert got.tokens == expected
    assert got.tokens != reference(engine, ids, 10)  # the penalties changed the greedy reply
    lps = [lp for o in got.outputs for lp in o.logprobs or []]
    assert len(lps) == len([t for t in expected if t not in engine.stop_token_ids])
    for lp, (logprob, top) in zip(lps, expected_lp):
        assert lp.logprob == pytest.approx(logprob, abs=1e-4)
        assert [i for i, _ in lp.top] == top


def test_engine_decodes_as_generate_does(engine):
    """Every control of a request's GenerationConfig, seeded sampling included, gives the tokens and
    the logprobs `generate` / `complete` give the prompt alone: the engine picks tokens with the
    library's code. The request shares its decode steps with another one."""
    tok = engine.tokenizer
    ids = tok.encode("the quick brown fox")
    config = GenerationConfig(
        max_new_tokens=14, do_sample=True, temperature=1.5, top_k=40, min_p=0.02, repetition_penalty=1.3, seed=11
    )
    config = config.replace(presence_penalty=0.4, frequency_penalty=0.3, logprobs=4)
    got, other = Collector(), Collector()
    engine.submit(
        [Request(tok.encode("hello world"), GenerationConfig(max_new_tokens=9), other), Request(ids, config, got)]
    )
    assert got.done.wait(10) and other.done.wait(10)
    assert got.tokens == reference(engine, ids, 14, config)
    [c] = complete(engine.model, tok, [ids], [config.replace(stop_token_ids=engine.stop_token_ids)], row_products=False)
    assert (got.text, got.outputs[-1].finish_reason) == (c.text, c.finish_reason)
    assert got.tokens != reference(engine, ids, 14)  # sampled, not greedy
    lps = [lp for o in got.outputs for lp in o.logprobs or []]
    expected = [lp for lp in c.logprobs if lp.token_id not in engine.stop_token_ids]  # a stop token has no entry
    assert [lp.token_id for lp in lps] == [lp.token_id for lp in expected]
    for a, b in zip(lps, expected, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
        assert [i for i, _ in a.top] == [i for i, _ in b.top]


def test_engine_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="max_new_tokens >= 1"):
        Request([2, 5], GenerationConfig(max_new_tokens=0), print)
    with pytest.raises(ValueError, match="top_p must be in"):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ValueError, match="at least one token"):
        Request([], GenerationConfig(), print)
    with pytest.raises(TypeError, match="config must be a GenerationConfig"):
        Request([2], {"max_new_tokens": 4}, print)


# ---------------------------------------------------------------------------------------------
# The server, through the official openai client
# ---------------------------------------------------------------------------------------------


def test_models_completion_and_chat_with_usage(server, client):
    engine, _ = server
    tok = engine.tokenizer
    assert [m.id for m in client.models.list().data] == ["tiny"]

    prompt = "the quick brown"
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)
    ids = tok.encode(prompt)
    ref = reference(engine, ids, 10)
    assert r.choices[0].text == text_of(engine, ref)
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.completion_tokens == len(ref)
    assert r.usage.total_tokens == len(ids) + len(ref)

    messages = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "what?"},
    ]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    ids = tok.encode_chat(messages)  # <bos><start_of_turn>user\n...<end_of_turn>\n...<start_of_turn>model\n
    ref = reference(engine, ids, 8)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == text_of(engine, ref)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), len(ref))

    # Two prompts x n=2 sampled choices, seeded: four choices in order, each prompt counted once.
    r = client.completions.create(model="tiny", prompt=["the", "hello"], max_tokens=5, n=2, seed=3, logprobs=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage.prompt_tokens == len(tok.encode("the")) + len(tok.encode("hello"))
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) and all(
        len(t) == 2 for t in lp.top_logprobs
    )
    assert all(v <= 0 for v in lp.token_logprobs)


def test_streaming_completion_and_chat(server, client):
    engine, _ = server
    plain = client.completions.create(model="tiny", prompt="hello world", max_tokens=12, temperature=0)
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt="hello world",
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens

    messages = [{"role": "user", "content": [{"type": "text", "text": "what is the capital of France?"}]}]
    plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    chunks = list(
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0, stream=True)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason


def test_sampling_fields_decode_as_the_library_does(server, client):
    """A request's sampling fields become one GenerationConfig: a seeded sampled completion with
    penalties and the vLLM-style extensions (top_k, min_p, repetition_penalty) is the text `complete`
    samples with that config, and its streamed logprobs are the non-streamed ones, token for token."""
    engine, _ = server
    tok = engine.tokenizer
    fields = dict(temperature=1.5, top_p=0.95, seed=5, presence_penalty=0.2, frequency_penalty=0.1)
    extra = dict(top_k=40, min_p=0.02, repetition_penalty=1.3)
    kw = dict(model="tiny", prompt="the quick brown", max_tokens=12, logprobs=2, extra_body=extra, **fields)
    r = client.completions.create(**kw)
    options = {"max_new_tokens": 12, "logprobs": 2, **fields, **extra}
    config = GenerationConfig.from_options(options).replace(stop_token_ids=engine.stop_token_ids)
    [c] = complete(engine.model, tok, [tok.encode("the quick brown")], [config], row_products=False)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (c.text, c.finish_reason)
    assert r.usage.completion_tokens == len(c.token_ids)
    lp = r.choices[0].logprobs
    kept = [t for t in c.logprobs if t.token_id not in engine.stop_token_ids]
    assert lp.token_logprobs == pytest.approx([t.logprob for t in kept], abs=1e-5)
    chunks = [ch.choices[0] for ch in client.completions.create(stream=True, **kw) if ch.choices]
    assert "".join(ch.text for ch in chunks) == r.choices[0].text
    streamed = [t for ch in chunks if ch.logprobs for t in ch.logprobs.tokens]
    assert streamed == lp.tokens and "".join(streamed) == r.choices[0].text  # the tokens spell the text


def post(base: str, path: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(base + path, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


BAD_REQUESTS = [
    ("/v1/completions", b'{"model": "tiny", "prompt": "x"', 400),  # invalid JSON
    ("/v1/completions", b"[1, 2]", 400),  # not an object
    ("/v1/completions", {"prompt": "x"}, 400),  # no model
    ("/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404),  # unknown model
    ("/v1/completions", {"model": "tiny"}, 400),  # no prompt
    ("/v1/completions", {"model": "tiny", "prompt": 5}, 400),  # wrong type
    ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": "8"}, 400),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": -1}, 400),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 0}, 400),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "temperature": True}, 400),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "top_p": 0}, 400),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "n": 0}, 400),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "min_p": 1.5}, 400),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "repetition_penalty": 0}, 400),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "stop": [1]}, 400),
    ("/v1/completions", {"model": "tiny", "prompt": [1, 10_000]}, 400),  # token id outside the vocab
    ("/v1/completions", {"model": "tiny", "prompt": "fox " * CONTEXT}, 400),  # longer than the context
    ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": CONTEXT}, 400),  # prompt + max_tokens too long
    ("/v1/completions", {"model": "tiny", "prompt": "x", "logit_bias": {"5": 10}}, 400),  # not supported
    ("/v1/completions", {"model": "tiny", "prompt": "x", "frobnicate": 1}, 400),  # unknown field
    ("/v1/chat/completions", {"model": "tiny"}, 400),  # no messages
    ("/v1/chat/completions", {"model": "tiny", "messages": "hi"}, 400),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"content": "hi"}]}, 400),  # no role
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "system", "content": "be brief"}]}, 400),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400),
    ("/v1/nowhere", {"model": "tiny"}, 404),
]


def test_malformed_requests_get_a_4xx_error_body_and_the_server_keeps_serving(server, client):
    _, base = server
    for path, body, status in BAD_REQUESTS:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        got, reply = post(base, path, raw)
        assert got == status, (body, reply)
        assert set(reply["error"]) == {"message", "type", "param", "code"}, reply
        assert reply["error"]["type"] == "invalid_request_error" and reply["error"]["message"]
    # The official client maps them to its exceptions.
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny", prompt="x", max_tokens=-1)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "fox " * CONTEXT}])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="tiny", prompt="x", temperature="hot")
    assert client.completions.create(model="tiny", prompt="still here", max_tokens=3).usage.completion_tokens >= 1


def test_an_engine_failure_is_a_500_and_the_next_request_is_served(server, client, monkeypatch):
    engine, base = server

    class Broken(SlowModel):
        def __call__(self, *args, **kwargs):
            raise RuntimeError("simulated device failure")

    monkeypatch.setattr(engine, "model", Broken(engine.model, 0.0))  # every forward fails now
    status, reply = post(base, "/v1/completions", json.dumps({"model": "tiny", "prompt": "x"}).encode())
    assert status == 500 and reply["error"]["type"] == "server_error"
    assert "simulated device failure" in reply["error"]["message"]
    monkeypatch.undo()
    assert client.completions.create(model="tiny", prompt="x", max_tokens=2).choices[0].finish_reason


def test_a_client_leaving_mid_stream_frees_its_row(server, client, monkeypatch):
    engine, base = server
    monkeypatch.setattr(engine, "model", SlowModel(engine.model, 0.005))
    tokens_before = engine.stats.tokens
    stream = client.completions.create(model="tiny", prompt="the", max_tokens=CONTEXT - 8, temperature=0, stream=True)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()  # the client goes away
    deadline = time.time() + 5
    while engine.stats.running and time.time() < deadline:
        time.sleep(0.01)
    assert engine.stats.running == 0
    assert engine.stats.tokens - tokens_before < CONTEXT // 2  # it stopped long before max_tokens

    # The same for a request without streaming: its handler polls the connection while it waits.
    tokens_before = engine.stats.tokens
    body = json.dumps({"model": "tiny", "prompt": "the", "max_tokens": CONTEXT - 8}).encode()
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        head = f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        s.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        while not engine.stats.running:
            time.sleep(0.005)
    deadline = time.time() + 5
    while engine.stats.running and time.time() < deadline:
        time.sleep(0.01)
    assert engine.stats.running == 0
    assert engine.stats.tokens - tokens_before < CONTEXT // 2
    assert client.completions.create(model="tiny", prompt="next", max_tokens=4).choices[0].finish_reason


def test_concurrent_requests_share_decode_steps(server, client, monkeypatch):
    """N concurrent requests of M tokens take far fewer forwards than the N * M of serving them one
    by one, and each gets the tokens it would get alone."""
    engine, _ = server
    monkeypatch.setattr(engine, "model", SlowModel(engine.model, 0.003))
    N, M = 6, 16
    prompts = [f"request {i}: the quick brown fox" for i in range(N)]
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        r = client.completions.create(model="tiny", prompt=prompts[i], max_tokens=M, temperature=0)
        results[i] = r.choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(N)]
    forwards = engine.stats.forwards
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    used = engine.stats.forwards - forwards
    assert len(results) == N
    assert used < N * M / 2, f"{used} forwards for {N} requests of {M} tokens"
    assert engine.stats.max_rows > 1
    for i, p in enumerate(prompts):
        assert results[i] == text_of(engine, reference(engine, engine.tokenizer.encode(p), M))


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def test_foresight_serve_command(model_dir):
    """The real `foresight serve` in a subprocess, on localhost, driven by the openai client."""
    port = free_port()
    cmd = ["serve", "--model", str(model_dir), "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "foresight.cli", *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    assert json.loads(r.read()) == {"status": "ok"}
                    break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stdout.read()
                assert time.time() < deadline, "foresight serve did not come up"
                time.sleep(0.1)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=20)
        name = model_dir.name
        assert [m.id for m in c.models.list().data] == [name]
        r = c.completions.create(model=name, prompt="hello", max_tokens=4)
        assert r.usage.prompt_tokens == len(Gemma2Tokenizer.from_pretrained(model_dir).encode("hello"))
        assert 1 <= r.usage.completion_tokens <= 4
        with pytest.raises(openai.BadRequestError):
            c.completions.create(model=name, prompt="hello", max_tokens=-1)
        assert c.completions.create(model=name, prompt="hello", max_tokens=2).choices
    finally:
        proc.terminate()
        proc.wait(10)


def test_serve_errors_are_one_line(model_dir, tmp_path, capsys):
    assert cli.main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("foresight: error: ")
    if not torch.cuda.is_available():
        assert cli.main(["serve", "--model", str(model_dir), "--device", "cuda"]) == 2
        assert "has none" in capsys.readouterr().err
