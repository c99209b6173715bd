"""Long-prompt prefill on CPU: time and peak memory, foresight (chunked + blockwise) vs eager vs transformers.

    PYTHONPATH=src .venv/bin/python benchmarks/long_prefill.py --threads 2            # 1k .. 64k tokens
    PYTHONPATH=src .venv/bin/python benchmarks/long_prefill.py --lengths 1024 4096    # a subset

Model: a tiny random Gemma 2 with the real layer pattern and window (2 layers: one sliding with
W = 4096 keys, one global; D = 128, F = 512, H = 4, K = 2, E = 32, soft-caps 50 / 30, vocab 256). Every
implementation holds the same weights; transformers gets ours through `foresight.lm.hf_io`
(`lm_inference.hf_twin`, as in tests/lm/test_gemma2_parity.py).

Implementations, batch 1, last-position logits only, under inference mode:
- foresight: `foresight.lm.cache.prefill`, the default path of `generate` and NIAH: 1024-token chunks
  through the KV cache, the default "auto" attention (blockwise online-softmax tiles) in each chunk;
- foresight-chunked-eager: the same chunks with the eager attention (chunk x S scores per forward);
- foresight-eager: one forward over the whole prompt, eager attention ([K, G*T, T] fp32 scores);
- transformers: `Gemma2ForCausalLM` with eager attention (its sdpa path drops the soft-cap),
  `use_cache=False`, `logits_to_keep=1`.

Each (implementation, length) runs in a fresh subprocess: build the model, warm up on 256 tokens, time
one prefill (the best of two below 8k tokens), with passive OpenMP waits (see `measure`). Peak memory is VmHWM (the process's peak RSS, from
/proc; not ru_maxrss, which Linux carries over from the parent across fork + exec) and its growth
during the prefill. A cell whose attention scores are estimated above --max-gib is skipped, not run.
`max_abs_diff_vs_foresight` compares last-position logits across processes.

Results go to benchmarks/results/long_prefill-<date>-<threads>threads.json (paths relative to the
repository). Timings on a shared CPU are noisy: the load average at start and end is recorded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
IMPLS = ("foresight", "foresight-chunked-eager", "foresight-eager", "transformers")
LENGTHS = (1024, 4096, 8192, 16384, 32768, 65536)


def config():
    from foresight.lm import Gemma2Config

    return Gemma2Config.tiny(
        num_layers=2,
        hidden_size=128,
        intermediate_size=512,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        query_pre_attn_scalar=32.0,
        sliding_window=4096,
        max_position_embeddings=max(LENGTHS),
    )


def estimated_score_gib(impl: str, T: int) -> float:
    """Attention memory of one forward, the part that grows with T^2 (or chunk x T), in GiB.

    eager: fp32 scores [H, T, S] and its softmax (2 x 4 bytes x H) plus the bool mask and its
    complement (2 bytes), per T x S. transformers' eager: scores, soft-cap temporaries and softmax
    (~3 x 4 x H) plus a float mask per layer type (2 x 4). Chunked: the same with T = the chunk.
    """
    H = config().num_heads
    if impl == "foresight":
        return 0.0
    if impl == "foresight-chunked-eager":
        return (8 * H + 2) * min(T, 1024) * T / 2**30
    if impl == "foresight-eager":
        return (8 * H + 2) * T * T / 2**30
    return (12 * H + 8) * T * T / 2**30


def peak_rss_bytes() -> int:
    """VmHWM: this process's peak resident set (its own memory map only)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


# ---------------------------------------------------------------------------------------------
# One measurement (runs in its own process)
# ---------------------------------------------------------------------------------------------


def worker(impl: str, T: int, threads: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from foresight.lm.cache import prefill
    from lm_inference import hf_twin, random_model

    torch.set_num_threads(threads)
    model = random_model(config(), torch.float32, "cpu", std=0.1)
    if impl == "transformers":
        hf = hf_twin(model)

        def run(ids):
            return hf(ids, use_cache=False, logits_to_keep=1).logits[0, -1]
    elif impl == "foresight-eager":
        model.set_attn_backend("eager")

        def run(ids):
            return model(ids, logits_to_keep=1).logits[0, -1]
    else:
        model.set_attn_backend("eager" if impl == "foresight-chunked-eager" else "auto")

        def run(ids):
            return prefill(model, ids, cache=model.make_cache(1, ids.shape[1]))[0, -1]

    ids = torch.randint(3, 256, (1, T), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        run(ids[:, :256])  # warm-up
        before = peak_rss_bytes()
        times = []
        for _ in range(2 if T < 8192 else 1):
            t = time.perf_counter()
            logits = run(ids)
            times.append(time.perf_counter() - t)
    peak = peak_rss_bytes()
    return {
        "impl": impl,
        "tokens": T,
        "prefill_s": min(times),
        "tokens_per_s": T / min(times),
        "peak_rss_mib": peak / 2**20,
        "peak_rss_growth_mib": (peak - before) / 2**20,
        "last_logits": logits.tolist(),
    }


def measure(impl: str, T: int, threads: int, timeout: float) -> dict:
    """Run `worker` in a fresh interpreter; its JSON line, or the error it ended with."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, str(T), "--threads", str(threads)]
    # Passive OpenMP waits: on a shared, oversubscribed CPU spinning threads wait for each other's
    # time slices (measured here, load ~9 on 2 cores: a 4k prefill with 2 threads took 251 s spinning,
    # 1.8 s passive, 1.4 s with 1 thread).
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO / "src")}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "tokens": T, "error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        return {"impl": impl, "tokens": T, "error": (out.stderr.strip().splitlines() or ["?"])[-1][:500]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def benchmark(args) -> list[dict]:
    rows = []
    for T in args.lengths:
        cell = {}
        for impl in args.impls:
            need = estimated_score_gib(impl, T)
            if need > args.max_gib:
                row = {"impl": impl, "tokens": T, "skipped": f"~{need:.1f} GiB of attention scores > {args.max_gib}"}
            else:
                row = measure(impl, T, args.threads, args.timeout)
            cell[impl] = row
            print(json.dumps({k: v for k, v in row.items() if k != "last_logits"}), flush=True)
        ref = cell.get("foresight", {}).get("last_logits")
        for row in cell.values():
            logits = row.pop("last_logits", None)
            if ref is not None and logits is not None:
                row["max_abs_diff_vs_foresight"] = float((torch.tensor(logits) - torch.tensor(ref)).abs().max())
        ours = cell.get("foresight", {})
        for impl, row in cell.items():
            if impl != "foresight" and "prefill_s" in row and "prefill_s" in ours:
                row["time_vs_foresight"] = row["prefill_s"] / ours["prefill_s"]  # > 1: foresight is faster
                row["peak_rss_vs_foresight"] = row["peak_rss_mib"] / ours["peak_rss_mib"]
        rows += cell.values()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per measurement")
    parser.add_argument("--lengths", type=int, nargs="*", default=list(LENGTHS), help="prompt lengths (tokens)")
    parser.add_argument("--impls", nargs="*", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--max-gib", type=float, default=8.0, help="skip cells estimated above this")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement")
    parser.add_argument("--out", default=None, help="output JSON path")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.threads)))
        return 0

    import transformers

    started = datetime.datetime.now()
    cfg = config()
    report = {
        "benchmark": "long_prefill",
        "script": "benchmarks/long_prefill.py",
        "date": started.isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "model": {
            k: getattr(cfg, k)
            for k in ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim")
        }
        | {"sliding_window": cfg.sliding_window, "layer_types": list(cfg.layer_types), "vocab_size": cfg.vocab_size},
        "max_gib": args.max_gib,
        "omp_wait_policy": "PASSIVE",
        "load_average_start": os.getloadavg(),
        "rows": benchmark(args),
    }
    report["load_average_end"] = os.getloadavg()
    report["wall_s"] = (datetime.datetime.now() - started).total_seconds()
    out = Path(args.out) if args.out else RESULTS / f"long_prefill-{started:%Y-%m-%d}-{args.threads}threads.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    where = out.resolve().relative_to(REPO) if out.resolve().is_relative_to(REPO) else out.name
    print(f"wrote {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
