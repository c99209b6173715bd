"""Decode speed and KV-cache bytes of GQA vs its MHA twin (Gemma 2 report, Table 8: "GQA ... is faster at
inference time").

    nice .venv/bin/python benchmarks/gqa_decode.py           # writes benchmarks/results/gqa_decode-<date>.json
    nice .venv/bin/python benchmarks/gqa_decode.py --quick   # fewer tokens and repeats (smoke run)

Two shapes, each as GQA (K = H / 2, Gemma 2's ratio) and as its MHA twin (`foresight.lm.twins.mha_twin`:
K = H, same width and depth, random weights):
- `ablation`: the deep model of `gemma2-ablations` (6 layers x 64, vocab 1024), batch 8 at its context 128;
  this is what Table 8's ablation trains, where per-op overhead dominates.
- `2b-attention`: Gemma 2 2B's attention (D 2304, H 8, E 256, window 4096) in 2 layers (one local, one
  global), with the feed-forward narrowed to F = D and vocab 1024 so that attention and the KV cache, not
  the MLP and the 256k head, are what a decode step reads; batch 4, a 1024-token prompt.
Decode tokens/s (batch rows x tokens per second) = B x (N - 1) / (median t(N) - median t(1)), greedy, with
GQA and MHA interleaved so the load of a shared machine hits both alike; KV bytes after the prompt and N
tokens from `kv_cache_bytes` (equal to `Gemma2Cache.nbytes()`, tested). fp32, 1 thread and 2 threads.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from foresight.lm import Gemma2Config, generate
from foresight.lm.cpu_decode import cpu_model
from foresight.lm.twins import count_parameters, kv_cache_bytes, mha_twin

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_inference import random_model  # noqa: E402  (the sibling benchmark's fast random init)

RESULTS = Path(__file__).resolve().parent / "results"


def shapes() -> dict[str, tuple[Gemma2Config, int, int]]:
    """name -> (GQA config, batch, prompt length)."""
    ablation = Gemma2Config.tiny(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=256,
        num_layers=6,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16.0,
        sliding_window=64,
        max_position_embeddings=128,
    )
    attention_2b = Gemma2Config.gemma2_2b().replace(
        num_layers=2, intermediate_size=2304, vocab_size=1024, max_position_embeddings=2048
    )
    return {"ablation": (ablation, 8, 64), "2b-attention": (attention_2b, 4, 1024)}


def median_time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench(cfg: Gemma2Config, batch: int, prompt_len: int, new_tokens: int, repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    models = {"GQA": random_model(cfg, torch.float32, "cpu", std=0.05), "MHA": None}
    models["MHA"] = random_model(mha_twin(cfg), torch.float32, "cpu", std=0.05)
    prompt = torch.randint(3, cfg.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(0))
    times = {name: {1: [], new_tokens: []} for name in models}
    with torch.inference_mode():
        for m in models.values():
            generate(m, prompt, max_new_tokens=2)  # warm-up
        for _ in range(repeats):  # interleaved: GQA, MHA, GQA, MHA ...
            for name, m in models.items():
                for n in (1, new_tokens):
                    times[name][n] += median_time(lambda m=m, n=n: generate(m, prompt, max_new_tokens=n), 1)
    rows = {}
    for name, m in models.items():
        dt = statistics.median(times[name][new_tokens]) - statistics.median(times[name][1])
        rows[name] = {
            "kv_heads": m.config.num_kv_heads,
            "params": count_parameters(m.config),
            "kv_cache_bytes_fp32": kv_cache_bytes(m.config, prompt_len + new_tokens, batch, torch.float32),
            "decode_tokens_per_s": batch * (new_tokens - 1) / dt if dt > 0 else float("nan"),
            "times_s": {str(k): v for k, v in times[name].items()},
        }
    rows["GQA_over_MHA_speed"] = rows["GQA"]["decode_tokens_per_s"] / rows["MHA"]["decode_tokens_per_s"]
    rows["GQA_over_MHA_kv_bytes"] = rows["GQA"]["kv_cache_bytes_fp32"] / rows["MHA"]["kv_cache_bytes_fp32"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 new tokens, 1 repeat, 1 thread (smoke run)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", default=None, help="output JSON path")
    args = parser.parse_args(argv)
    new_tokens, repeats, threads = (8, 1, [1]) if args.quick else (args.new_tokens, args.repeats, args.threads)
    if new_tokens < 2:
        raise SystemExit(f"--new-tokens must be >= 2 (decode speed is a difference), got {new_tokens}")
    started, load_start = datetime.datetime.now(), os.getloadavg()
    results = []
    for name, (cfg, batch, prompt_len) in shapes().items():
        for t in threads:
            print(f"{name}: batch {batch}, prompt {prompt_len}, {t} thread(s) ...", flush=True)
            rows = bench(cfg, batch, prompt_len, new_tokens, repeats, t)
            print(
                f"  GQA {rows['GQA']['decode_tokens_per_s']:.1f} vs MHA {rows['MHA']['decode_tokens_per_s']:.1f} "
                f"tokens/s (x{rows['GQA_over_MHA_speed']:.2f}), KV bytes x{rows['GQA_over_MHA_kv_bytes']:.2f}",
                flush=True,
            )
            results.append({"shape": name, "batch": batch, "prompt_len": prompt_len, "threads": t, **rows})
    report = {
        "benchmark": "gqa_decode",
        "date": started.isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "new_tokens": new_tokens,
        "repeats": repeats,
        "timing": "interleaved; decode tokens/s = batch x (N-1) / (median t(N) - median t(1)), greedy, fp32",
        "load_average_start": load_start,
        "results": results,
        "load_average_end": os.getloadavg(),
        "wall_s": (datetime.datetime.now() - started).total_seconds(),
    }
    out = Path(args.out) if args.out else RESULTS / f"gqa_decode-{started:%Y-%m-%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {os.path.relpath(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
