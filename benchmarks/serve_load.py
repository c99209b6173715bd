"""Load test of `foresight serve`: N concurrent streaming clients vs the same N requests one after another.

    .venv/bin/python benchmarks/serve_load.py            # writes benchmarks/results/serve_load-<date>.json
    .venv/bin/python benchmarks/serve_load.py --quick    # the tiny test config, fewer tokens

Localhost only, a fixed amount of work and a time bound: a random small Gemma 2 (with a byte-level
BPE trained on a synthetic text) is saved to a temporary folder and served by the real command,
`python -m foresight.cli serve --model DIR --port P`, in a subprocess (so the clients' Python does
not share a GIL with the engine). Then `--rounds` rounds of:

    concurrent  N threads, released together by a barrier, each streams one completion of M tokens
    sequential  the same N requests, one after another

Every request is greedy (temperature 0), so both phases generate exactly the same tokens, and asks for
`stream_options.include_usage`, so the token count is the server's own. Reported per phase: failed
requests (an exception, a missing finish_reason or a missing usage chunk), p50/p99 of the request
latency and the time to first token, aggregate tokens/s (completion tokens / phase wall time) and the
server's model forwards (its /stats counter: batching shows as far fewer forwards than tokens).
The whole run is aborted past `--time-limit` seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# A small decoder (16M parameters; the BPE learns ~730 tokens of the synthetic text): a decode step
# costs milliseconds on one CPU core, and the per-step overhead and the weights read once per step
# are what batching shares between rows.
SMALL = dict(
    hidden_size=512,
    intermediate_size=2048,
    num_layers=4,
    num_heads=8,
    num_kv_heads=4,
    head_dim=64,
    query_pre_attn_scalar=64.0,
    sliding_window=256,
    max_position_embeddings=1024,
)
WORDS = "the a model server request token batch stream decode prompt reply client thread engine step".split()


def build_model_dir(path: Path, quick: bool) -> dict:
    """Save a random Gemma 2 + a byte-level BPE (at most 1024 tokens) into path; return the model config."""
    from foresight.lm import Gemma2, Gemma2Config, save_pretrained
    from foresight.lm.text_data import train_tokenizer

    lines = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(12)) + f" {i}\n" for i in range(400)]
    tok = train_tokenizer(["".join(lines)], 1024, path / "tokenizer.json")
    vocab = tok.get_vocab_size()
    fields = {} if quick else SMALL
    config = Gemma2Config.tiny(vocab_size=vocab, **fields)
    torch.manual_seed(0)
    model = Gemma2(config)
    model.reset_parameters(std=0.05)
    save_pretrained(model.eval(), path)
    shape = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")
    return {
        "preset": "tiny" if quick else "small",
        "params": sum(p.numel() for p in model.parameters()),
        **{k: getattr(config, k) for k in (*shape, "max_position_embeddings")},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def start_server(model_dir: Path, port: int, threads: int, timeout: float = 60.0) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "foresight.cli", "serve", "--model", str(model_dir), "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd + ["--device", "cpu"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"foresight serve exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            get_json(f"http://127.0.0.1:{port}/health")
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"foresight serve did not answer within {timeout} s")


def one_request(client, model: str, prompt: str, max_tokens: int) -> dict:
    """Stream one completion; latency, time to first token, tokens (server's usage), ok."""
    t0 = time.perf_counter()
    first, finish, usage, text = None, None, None, []
    try:
        stream = client.completions.create(
            model=model,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.choices:
                if first is None:
                    first = time.perf_counter() - t0
                text.append(chunk.choices[0].text)
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage is not None:
                usage = chunk.usage
        error = None if finish and usage else f"finish_reason={finish}, usage={usage}"
    except Exception as e:  # a failed request is counted, not fatal
        error = f"{type(e).__name__}: {e}"
    return {
        "latency_s": time.perf_counter() - t0,
        "ttft_s": first,
        "tokens": usage.completion_tokens if usage else 0,
        "text": "".join(text),
        "error": error,
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a small sample."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def run_phase(client, base: str, model: str, prompts: list[str], max_tokens: int, concurrent: bool) -> dict:
    before = get_json(base + "/stats")
    results: list[dict | None] = [None] * len(prompts)
    t0 = time.perf_counter()
    if concurrent:
        barrier = threading.Barrier(len(prompts))

        def worker(i: int) -> None:
            barrier.wait()
            results[i] = one_request(client, model, prompts[i], max_tokens)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i, p in enumerate(prompts):
            results[i] = one_request(client, model, p, max_tokens)
    wall = time.perf_counter() - t0
    after = get_json(base + "/stats")
    return {
        "wall_s": wall,
        "results": results,
        "forwards": after["forwards"] - before["forwards"],
        "max_rows": after["max_rows"],
    }


def summarize(phases: list[dict]) -> dict:
    results = [r for p in phases for r in p["results"]]
    ok = [r for r in results if r["error"] is None]
    tokens = sum(r["tokens"] for r in results)
    wall = sum(p["wall_s"] for p in phases)
    lat = [r["latency_s"] for r in ok]
    ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    return {
        "requests": len(results),
        "failed": len(results) - len(ok),
        "errors": sorted({r["error"] for r in results if r["error"]})[:5],
        "completion_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall if wall else 0.0,
        "latency_p50_s": percentile(lat, 50) if lat else None,
        "latency_p99_s": percentile(lat, 99) if lat else None,
        "ttft_p50_s": percentile(ttft, 50) if ttft else None,
        "ttft_p99_s": percentile(ttft, 99) if ttft else None,
        "model_forwards": sum(p["forwards"] for p in phases),
        "wall_s_per_round": [p["wall_s"] for p in phases],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="N: concurrent clients (and sequential requests)")
    parser.add_argument("--max-tokens", type=int, default=64, help="M: tokens per request")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of (concurrent, sequential)")
    parser.add_argument("--time-limit", type=float, default=600.0, help="abort the run past this many seconds")
    parser.add_argument(
        "--threads", type=int, default=1, help="the server's OMP_NUM_THREADS (1 on a shared 2-core box)"
    )
    parser.add_argument("--quick", action="store_true", help="the tiny config, 16 tokens, 1 round")
    parser.add_argument("--out", default=None, help="output JSON (default benchmarks/results/serve_load-<date>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_tokens, args.rounds = 16, 1

    from openai import OpenAI

    started = datetime.datetime.now()
    report: dict = {
        "benchmark": "serve_load",
        "script": "benchmarks/serve_load.py",
        "date": started.isoformat(timespec="seconds"),
        "command": "OMP_NUM_THREADS=<threads> python -m foresight.cli serve --model <tmp>/model --port <free port> --device cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "server_threads": args.threads,
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
    }
    prompts = [f"{' '.join(WORDS[i : i + 4])} request {i}:" for i in range(args.clients)]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        report["model"] = build_model_dir(model_dir, args.quick)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_server(model_dir, port, args.threads)
        timed_out = threading.Event()

        def abort() -> None:  # the time bound: a stuck run ends here, and the report says so
            timed_out.set()
            proc.kill()

        timer = threading.Timer(args.time_limit, abort)
        timer.start()
        try:
            client = OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=args.time_limit)
            warm = one_request(client, "model", prompts[0], 4)  # first-request costs out of the timings
            if warm["error"]:
                raise RuntimeError(f"warm-up request failed: {warm['error']}")
            phases: dict[str, list[dict]] = {"concurrent": [], "sequential": []}
            for r in range(args.rounds):
                for kind in ("concurrent", "sequential") if r % 2 == 0 else ("sequential", "concurrent"):
                    phases[kind].append(
                        run_phase(client, base, "model", prompts, args.max_tokens, kind == "concurrent")
                    )
                    print(f"round {r} {kind}: {phases[kind][-1]['wall_s']:.2f} s", flush=True)
        finally:
            timer.cancel()
            proc.terminate()
            proc.wait(10)
        report["aborted_by_time_limit"] = timed_out.is_set()
    summary = {kind: summarize(p) for kind, p in phases.items()}
    same = all(
        c["text"] == s["text"]
        for pc, ps in zip(phases["concurrent"], phases["sequential"])
        for c, s in zip(pc["results"], ps["results"])
    )
    c, s = summary["concurrent"], summary["sequential"]
    report.update(
        {
            "phases": summary,
            "same_text_concurrent_and_sequential": same,
            "throughput_ratio_concurrent_over_sequential": c["tokens_per_s"] / max(s["tokens_per_s"], 1e-9),
            "forwards_ratio_sequential_over_concurrent": s["model_forwards"] / max(c["model_forwards"], 1),
            "load_average_end": os.getloadavg(),
            "wall_s": (datetime.datetime.now() - started).total_seconds(),
        }
    )
    out = Path(args.out) if args.out else RESULTS / f"serve_load-{started:%Y-%m-%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for kind in ("concurrent", "sequential"):
        p = summary[kind]
        print(
            f"{kind:10s} failed {p['failed']}/{p['requests']}  {p['tokens_per_s']:.0f} tok/s  "
            f"latency p50 {p['latency_p50_s']:.3f} s p99 {p['latency_p99_s']:.3f} s  forwards {p['model_forwards']}"
        )
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    print(f"throughput ratio {report['throughput_ratio_concurrent_over_sequential']:.2f}x; wrote {shown}")
    return 0 if c["failed"] == 0 and s["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
