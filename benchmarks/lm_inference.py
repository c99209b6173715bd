"""Gemma 2 inference speed and memory: foresight vs transformers.Gemma2ForCausalLM, same weights.

    PYTHONPATH=src .venv/bin/python benchmarks/lm_inference.py            # CPU part (+ CUDA if present)
    PYTHONPATH=src .venv/bin/python benchmarks/lm_inference.py --quick    # smaller, for a smoke run

Both models share the very same weight tensors (transformers is built on the meta device and gets
our parameters assigned), run on the same device, in one process, one after the other:

- prefill tokens/s: one forward over a batch-1 prompt, last-position logits only (what generation
  needs; transformers is given `logits_to_keep=1` too);
- decode tokens/s at batch 1 and 8: greedy generation of N tokens, timed as
  (time(N tokens) - time(1 token)) / (N - 1) so the prefill cancels out; transformers runs its own
  `generate` (default dynamic cache, eager attention: its sdpa path drops the soft-cap);
- peak memory: CPU RSS growth above the level before the call (sampled every millisecond), or CUDA
  `max_memory_allocated` growth; the shared weights are excluded either way.

CPU configs: "tiny" (Gemma2Config.tiny, overhead-bound) and "2b-dims-2l" (2B widths, 2 layers,
vocab 256000: the 2.36 GB fp32 LM head dominates each decode step). On CPU ours also runs with
`row_products=False` (plain F.linear, no `foresight.lm.cpu_decode`); the first CPU decode measures
the row products once per machine and caches the choice in ~/.cache/foresight/cpu_decode.json. On CUDA: the full 2B config in
bf16, including our static-cache + torch.compile (CUDA graph) decode, and decode speed as a fraction
of the memory-bandwidth floor: bytes read per step (weights + KV cache) / measured copy bandwidth.

Results go to benchmarks/results/lm_inference-<date>.json. Timings on a shared CPU are noisy: the
load average at start and end is recorded with them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import threading
import time
from pathlib import Path

import psutil
import torch

from foresight.lm import Gemma2, Gemma2Config, generate
from foresight.lm.hf_io import config_to_hf_dict, hf_state_dict

RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------------
# Models with shared weights
# ---------------------------------------------------------------------------------------------


def random_model(config: Gemma2Config, dtype: torch.dtype, device: str, std: float, seed: int = 0) -> Gemma2:
    """Random weights without a slow init pass: big tensors cycle a random vector of prime length
    (the same trick as tests/lm/gemma2_testing.py); speed does not depend on the values."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = Gemma2(config)
    model = model.to(dtype).to_empty(device=device)
    period = 1_048_573
    table = (torch.randn(period) * std).to(device=device, dtype=dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(std=0.1)
                continue
            flat = p.view(-1)
            for start in range(0, flat.numel(), period):
                n = min(period, flat.numel() - start)
                flat[start : start + n] = table[:n]
    return model.eval()


def hf_twin(model: Gemma2):
    """transformers.Gemma2ForCausalLM (eager attention) holding our parameter tensors, no copies."""
    import transformers

    hf_config = transformers.Gemma2Config.from_dict(config_to_hf_dict(model.config))
    hf_config._attn_implementation = "eager"
    with torch.device("meta"):
        hf = transformers.Gemma2ForCausalLM(hf_config)
    device = model.embed.weight.device
    state = {k: v.to(device) for k, v in hf_state_dict(model).items()}  # .to(): no copy if already there
    if model.config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf.load_state_dict(state, strict=True, assign=True)
    hf.tie_weights()
    inv_freq, _ = hf.model.rotary_emb.compute_default_rope_parameters(hf_config)
    hf.model.rotary_emb.inv_freq = inv_freq.to(device)
    hf.model.rotary_emb.original_inv_freq = inv_freq.to(device)
    emb = hf.model.embed_tokens
    emb.embed_scale = torch.tensor(emb.scalar_embed_scale, device=device)
    hf.generation_config.eos_token_id = None  # never stop early: both sides generate N tokens
    hf.generation_config.pad_token_id = 0
    return hf.eval()


# ---------------------------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fix_malloc_threshold() -> bool:
    """Make CPU RSS track live memory: with glibc's default *dynamic* mmap threshold, freed large
    blocks stay in the heap after the warm-up, so later peaks would not show up in RSS at all.
    A fixed 64 KiB threshold returns every large block to the OS when it is freed."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 64 * 1024))  # M_MMAP_THRESHOLD = -3
    except (OSError, AttributeError):
        return False


class PeakMemory:
    """Peak memory growth during a block: RSS sampled in a thread (CPU) or CUDA allocator stats."""

    def __init__(self, device: str):
        self.device, self.peak_bytes = device, 0

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            return self
        self.proc, self.stop = psutil.Process(), threading.Event()
        self.base = self.peak = self.proc.memory_info().rss

        def sample():
            while not self.stop.is_set():
                self.peak = max(self.peak, self.proc.memory_info().rss)
                time.sleep(0.001)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.stop.set()
            self.thread.join()
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.peak_bytes = self.peak - self.base


def timed(fn, device: str, repeats: int) -> float:
    """Best wall time of `repeats` calls (best, not mean: other processes only ever add time)."""
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def compare(impls: dict, *, device, prompt_len, new_tokens, batches, repeats) -> list[dict]:
    """Measure every implementation; impls maps name -> (prefill_fn(ids), decode_fn(ids, n)).

    Timings are interleaved (impl A, impl B, A, B, ...) so that the load of a shared machine hits
    all of them alike, and the best of `repeats` is kept. Decode per step = (best time for N
    tokens - best time for 1 token) / (N - 1): the prefill and the first token cancel out.
    Memory is measured in a separate, untimed call.
    """
    gen = torch.Generator().manual_seed(0)
    vocab = 256  # ids valid for every config here
    rows = {name: {"impl": name} for name in impls}
    prompt = torch.randint(3, vocab, (1, prompt_len), generator=gen).to(device)
    decode_ids = {B: torch.randint(3, vocab, (B, 32), generator=gen).to(device) for B in batches}
    with torch.inference_mode():
        for name, (prefill, decode) in list(impls.items()):
            try:  # warm-up, and compilation for compiled paths
                prefill(prompt)
                for ids in decode_ids.values():
                    decode(ids, 2)
            except Exception as e:  # record and drop the implementation, keep the others
                rows[name]["error"] = f"{type(e).__name__}: {e}"[:500]
                del impls[name]

        best = {name: float("inf") for name in impls}
        for _ in range(repeats):
            for name, (prefill, _) in impls.items():
                best[name] = min(best[name], timed(lambda f=prefill: f(prompt), device, 1))
        for name, (prefill, _) in impls.items():
            rows[name]["prefill_tokens_per_s"] = prompt_len / best[name]
            with PeakMemory(device) as mem:
                prefill(prompt)
            rows[name]["prefill_peak_mem_mb"] = mem.peak_bytes / 2**20

        for B, ids in decode_ids.items():
            t1 = {name: float("inf") for name in impls}
            tn = dict(t1)
            for _ in range(repeats):
                for name, (_, decode) in impls.items():
                    t1[name] = min(t1[name], timed(lambda d=decode, x=ids: d(x, 1), device, 1))
                    tn[name] = min(tn[name], timed(lambda d=decode, x=ids: d(x, new_tokens), device, 1))
            for name, (_, decode) in impls.items():
                per_step = (tn[name] - t1[name]) / (new_tokens - 1)
                rows[name][f"decode_b{B}_tokens_per_s"] = B / per_step
                rows[name][f"decode_b{B}_ms_per_step"] = per_step * 1000
                with PeakMemory(device) as mem:
                    decode(ids, new_tokens)
                rows[name][f"decode_b{B}_peak_mem_mb"] = mem.peak_bytes / 2**20
    return list(rows.values())


def ours_fns(model, compile: bool = False, row_products: bool = True):
    def prefill(ids):
        model(ids, logits_to_keep=1)

    def decode(ids, n):
        generate(model, ids, max_new_tokens=n, compile=compile, row_products=row_products)

    return prefill, decode


def hf_fns(hf, **generate_kwargs):
    def prefill(ids):
        hf(ids, logits_to_keep=1, use_cache=False)

    def decode(ids, n):
        hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, **generate_kwargs)

    return prefill, decode


def ratios(rows: list[dict]) -> dict:
    """ours / transformers for every throughput metric (>1 = we are faster)."""
    base = next(r for r in rows if r["impl"] == "transformers")
    out = {}
    for r in rows:
        if r["impl"] == "transformers" or "error" in r:
            continue
        for k, v in r.items():
            if k.endswith("tokens_per_s") and k in base:
                out[f"{r['impl']}/{k}"] = v / base[k]
    return out


# ---------------------------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------------------------


def cpu_benchmarks(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    results = []
    cases = [
        (
            "tiny",
            Gemma2Config.tiny(max_position_embeddings=8192),
            0.3,
            256,
            64 if not args.quick else 16,
            10 * args.repeats,
        ),
        (
            "2b-dims-2l",
            Gemma2Config.gemma2_2b().replace(num_layers=2),
            0.06,
            128 if not args.quick else 32,
            12 if not args.quick else 4,
            args.repeats,
        ),
    ]
    for name, config, std, prompt_len, new_tokens, repeats in cases:
        if args.only and name not in args.only:
            continue
        print(f"[cpu] {name}: building models ...", flush=True)
        model = random_model(config, torch.float32, "cpu", std)
        hf = hf_twin(model)
        impls = {
            "foresight": ours_fns(model),
            # The same model without foresight.lm.cpu_decode: what the row products are worth.
            "foresight-no-row-products": ours_fns(model, row_products=False),
            "transformers": hf_fns(hf),
        }
        if args.compile_cpu:
            impls["foresight+compile"] = ours_fns(model, compile=True)
        rows = compare(
            impls, device="cpu", prompt_len=prompt_len, new_tokens=new_tokens, batches=(1, 8), repeats=repeats
        )
        entry = {
            "config": name,
            "device": "cpu",
            "dtype": "float32",
            "threads": args.threads,
            "prompt_len": prompt_len,
            "new_tokens": new_tokens,
            "params": sum(p.numel() for p in model.parameters()),
            "rows": rows,
            "ratios": ratios(rows),
        }
        print(json.dumps(entry, indent=1), flush=True)
        results.append(entry)
        del model, hf
    return results


def copy_bandwidth_gbs(device: str, nbytes: int = 2**30) -> float:
    """Device copy bandwidth counting read + write, over a 1 GiB copy (best of 10)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = timed(lambda: dst.copy_(src), device, 10)
    return 2 * nbytes / t / 1e9


def cuda_benchmarks(args) -> list[dict]:
    """Full 2B in bf16 on one GPU. Written for CUDA but not run where it was written (no GPU there)."""
    device = "cuda"
    config = Gemma2Config.gemma2_2b()
    prompt_len, new_tokens = 512, 64 if not args.quick else 16
    model = random_model(config, torch.bfloat16, device, std=0.06)
    hf = hf_twin(model)
    impls = {
        "foresight": ours_fns(model),
        "foresight+static+compile": ours_fns(model, compile=True),
        "transformers": hf_fns(hf),
        # HF's own fast path; it has crashed in some versions (recorded as an error, not fatal).
        "transformers+static": hf_fns(hf, cache_implementation="static"),
    }
    rows = compare(
        impls, device=device, prompt_len=prompt_len, new_tokens=new_tokens, batches=(1, 8), repeats=args.repeats
    )
    for r in rows:
        print(json.dumps(r), flush=True)
    bandwidth = copy_bandwidth_gbs(device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # KV bytes read by one decode step at the end of the timed run (batch 1, bf16).
    context = 32 + new_tokens
    per_token_kv = 2 * config.num_kv_heads * config.head_dim * 2
    kv_bytes = sum(
        min(context, config.sliding_window) if t == "sliding_attention" else context for t in config.layer_types
    )
    kv_bytes *= per_token_kv
    floor = bandwidth * 1e9 / (weight_bytes + kv_bytes)
    for r in rows:
        if "decode_b1_tokens_per_s" in r:
            r["decode_b1_fraction_of_bandwidth_floor"] = r["decode_b1_tokens_per_s"] / floor
    entry = {
        "config": "gemma2-2b",
        "device": torch.cuda.get_device_name(),
        "dtype": "bfloat16",
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "params": sum(p.numel() for p in model.parameters()),
        "copy_bandwidth_gb_s": bandwidth,
        "bytes_per_decode_step_b1": weight_bytes + kv_bytes,
        "decode_floor_tokens_per_s_b1": floor,
        "rows": rows,
        "ratios": ratios(rows) if any(r["impl"] == "transformers" and "error" not in r for r in rows) else {},
    }
    print(json.dumps(entry, indent=1), flush=True)
    return [entry]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens (smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared 2-core box)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (best is kept)")
    parser.add_argument("--only", nargs="*", help="subset of configs: tiny 2b-dims-2l")
    parser.add_argument("--compile-cpu", action="store_true", help="also time our compiled static-cache decode on CPU")
    parser.add_argument("--no-cuda", action="store_true")
    parser.add_argument("--out", default=None, help="output JSON path")
    args = parser.parse_args(argv)

    import transformers

    started = datetime.datetime.now()
    malloc_fixed = fix_malloc_threshold()
    report = {
        "cpu_rss_tracks_frees": malloc_fixed,
        "benchmark": "lm_inference",
        "date": started.isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "results": cpu_benchmarks(args),
    }
    if torch.cuda.is_available() and not args.no_cuda:
        report["results"] += cuda_benchmarks(args)
    else:
        report["cuda"] = "not run: no CUDA device available"
    report["load_average_end"] = os.getloadavg()
    report["wall_s"] = (datetime.datetime.now() - started).total_seconds()
    summary = {f"{e['config']}:{k}": round(v, 3) for e in report["results"] for k, v in e["ratios"].items()}
    report["summary_ratios"] = summary
    out = Path(args.out) if args.out else RESULTS / f"lm_inference-{started:%Y-%m-%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
