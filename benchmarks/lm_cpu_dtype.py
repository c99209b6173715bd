"""CPU decode in bf16 vs fp32, foresight vs transformers, at Gemma 2 2B widths (2 layers, vocab 256000).

    nice .venv/bin/python benchmarks/lm_cpu_dtype.py            # writes benchmarks/results/lm_cpu_dtype-<date>.json
    nice .venv/bin/python benchmarks/lm_cpu_dtype.py --quick    # fewer tokens and repeats (smoke run)

Why: decoding one token reads every weight once, so on CPU it is bound by memory bandwidth, and a
bf16 checkpoint upcast to fp32 reads twice the bytes per token. This measures what keeping bf16 is
worth on a CPU with native bf16 (AVX512-BF16 / AMX), and what it costs in accuracy.

Four implementations, one process, the same random weights (the bf16 models hold the fp32 weights
rounded to bf16; each transformers model shares its twin's tensors, no copies):

    foresight-fp32 / foresight-bf16        `foresight.lm.generate` (row products where they measure faster)
    transformers-fp32 / transformers-bf16  `Gemma2ForCausalLM.generate` (eager attention: the only HF
                                           backend that applies the soft-cap), default dynamic cache

Per thread count (1 and 2), every implementation decodes greedily from the same 16-token batch-1
prompt, 1 token and N (32) tokens, interleaved (A B C D A B C D ...) so that the load of a shared
machine hits all alike, `--repeats` times; decode tokens/s = (N - 1) / (median t(N) - median t(1)),
so the prefill cancels out (also recorded: the same from the best times, and per CPU second of this
process, which at 1 thread is what a step costs however loaded the machine is). The error of bf16 is taken on the prompt's logits (all 16 positions):
max-abs and mean-abs of bf16 - fp32, for ours and for transformers, each against its own fp32 model
(the two fp32 models agree to ~1e-5). Greedy agreement counts the leading generated tokens shared.
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

from foresight.lm import Gemma2, Gemma2Config, generate
from foresight.lm.cpu_decode import cpu_has_native_bf16, cpu_model, enable_row_products

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_inference import hf_twin, random_model  # noqa: E402  (the sibling benchmark's shared-weight builders)

RESULTS = Path(__file__).resolve().parent / "results"
IMPLS = ("foresight-bf16", "foresight-fp32", "transformers-bf16", "transformers-fp32")


def rounded_copy(model: Gemma2, dtype: torch.dtype) -> Gemma2:
    """The same model with every parameter rounded to `dtype` (allocates only the new copy)."""
    with torch.device("meta"):
        copy = Gemma2(model.config)
    copy = copy.to(dtype).to_empty(device="cpu")
    copy.reset_buffers()
    with torch.no_grad():
        for p, q in zip(copy.parameters(), model.parameters(), strict=True):
            p.copy_(q)
    return copy.eval()


def decoders(models: dict) -> dict:
    """name -> decode(ids, n) -> the n generated tokens [n]."""

    def ours(model):
        return lambda ids, n: generate(model, ids, max_new_tokens=n)[0, ids.shape[1] :]

    def hf(model):
        def decode(ids, n):
            mask = torch.ones_like(ids)
            return model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False)[0, ids.shape[1] :]

        return decode

    return {name: (ours if name.startswith("foresight") else hf)(m) for name, m in models.items()}


def timed(fn) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def logit_errors(models: dict, prompt: torch.Tensor) -> dict:
    with torch.inference_mode():
        logits = {name: m(prompt).logits.float() for name, m in models.items()}  # [1, T, V] fp32

    def err(a, b):
        d = (logits[a] - logits[b]).abs()
        return {"max_abs": d.max().item(), "mean_abs": d.mean().item()}

    out = {
        "foresight-bf16_vs_foresight-fp32": err("foresight-bf16", "foresight-fp32"),
        "transformers-bf16_vs_transformers-fp32": err("transformers-bf16", "transformers-fp32"),
        "foresight-fp32_vs_transformers-fp32": err("foresight-fp32", "transformers-fp32"),
        "foresight-bf16_vs_transformers-fp32": err("foresight-bf16", "transformers-fp32"),
    }
    ours, ref = out["foresight-bf16_vs_foresight-fp32"], out["transformers-bf16_vs_transformers-fp32"]
    out["ours_over_transformers"] = {k: ours[k] / ref[k] for k in ("max_abs", "mean_abs")}
    out["logits_std_fp32"] = logits["foresight-fp32"].std().item()
    return out


def bench_threads(threads: int, decode: dict, prompt: torch.Tensor, new_tokens: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    with torch.inference_mode():
        for fn in decode.values():  # warm-up; ours measures its row products once per shape, dtype and threads
            fn(prompt, 2)
        t1 = {name: [] for name in decode}
        tn = {name: [] for name in decode}
        tokens = {}
        for _ in range(repeats):
            for name, fn in decode.items():
                t1[name].append(timed(lambda fn=fn: fn(prompt, 1)))
                start = time.perf_counter(), time.process_time()
                tokens[name] = fn(prompt, new_tokens).tolist()
                tn[name].append((time.perf_counter() - start[0], time.process_time() - start[1]))
    rows = []
    for name in decode:
        w1, wn = (statistics.median(t[0] for t in ts) for ts in (t1[name], tn[name]))
        c1, cn = (statistics.median(t[1] for t in ts) for ts in (t1[name], tn[name]))
        rows.append(
            {
                "impl": name,
                "decode_tokens_per_s": (new_tokens - 1) / (wn - w1),
                "decode_ms_per_step": (wn - w1) / (new_tokens - 1) * 1000,
                # Best-of: other processes only ever add time, so this bounds what the code can do here.
                "decode_tokens_per_s_best": (new_tokens - 1)
                / (min(t[0] for t in tn[name]) - min(t[0] for t in t1[name])),
                # Per CPU second of this process: at 1 thread, what the step costs whatever else runs.
                "decode_tokens_per_cpu_s": (new_tokens - 1) / (cn - c1),
                "end_to_end_tokens_per_s": new_tokens / wn,
                "wall_s_1_token": [t[0] for t in t1[name]],
                f"wall_s_{new_tokens}_tokens": [t[0] for t in tn[name]],
            }
        )
    speed = {r["impl"]: r["decode_tokens_per_s"] for r in rows}

    def agree(a, b):
        n = 0
        while n < new_tokens and tokens[a][n] == tokens[b][n]:
            n += 1
        return n

    return {
        "threads": threads,
        "rows": rows,
        "ratios": {
            "foresight-bf16/foresight-fp32": speed["foresight-bf16"] / speed["foresight-fp32"],
            "transformers-bf16/transformers-fp32": speed["transformers-bf16"] / speed["transformers-fp32"],
            "foresight-bf16/transformers-bf16": speed["foresight-bf16"] / speed["transformers-bf16"],
            "foresight-fp32/transformers-fp32": speed["foresight-fp32"] / speed["transformers-fp32"],
            "foresight-bf16/transformers-fp32": speed["foresight-bf16"] / speed["transformers-fp32"],
        },
        "greedy_tokens_agreeing": {
            "foresight-bf16_vs_foresight-fp32": agree("foresight-bf16", "foresight-fp32"),
            "transformers-bf16_vs_transformers-fp32": agree("transformers-bf16", "transformers-fp32"),
            "foresight-fp32_vs_transformers-fp32": agree("foresight-fp32", "transformers-fp32"),
            "foresight-bf16_vs_transformers-bf16": agree("foresight-bf16", "transformers-bf16"),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 new tokens, 2 repeats (smoke run)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU thread counts to time")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median is kept)")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", default=None, help="output JSON path")
    args = parser.parse_args(argv)
    new_tokens, repeats = (8, 2) if args.quick else (args.new_tokens, args.repeats)
    if new_tokens < 2:
        raise SystemExit(f"--new-tokens must be >= 2 (decode speed is a difference), got {new_tokens}")

    import transformers

    started = datetime.datetime.now()
    load_start = os.getloadavg()
    torch.set_num_threads(max(args.threads))  # building the models
    config = Gemma2Config.gemma2_2b().replace(num_layers=2)
    print("building models ...", flush=True)
    fp32 = random_model(config, torch.float32, "cpu", std=0.06)
    bf16 = rounded_copy(fp32, torch.bfloat16)
    models = {
        "foresight-bf16": bf16,
        "foresight-fp32": fp32,
        "transformers-bf16": hf_twin(bf16),
        "transformers-fp32": hf_twin(fp32),
    }
    prompt = torch.randint(3, config.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    errors = logit_errors(models, prompt)
    print(json.dumps(errors, indent=1), flush=True)

    decode = decoders(models)
    results = []
    for threads in args.threads:
        print(f"timing at {threads} thread(s) ...", flush=True)
        entry = bench_threads(threads, decode, prompt, new_tokens, repeats)
        # What the row-product measurement chose per weight (read back from its cache: no new timing).
        entry["row_products_chosen"] = {
            name: sum(enable_row_products(models[name], rows=1).values())
            for name in ("foresight-bf16", "foresight-fp32")
        }
        print(json.dumps({k: v for k, v in entry.items() if k != "rows"}, indent=1), flush=True)
        for r in entry["rows"]:
            print(
                f"  {r['impl']:18s} {r['decode_tokens_per_s']:7.2f} tokens/s median, "
                f"{r['decode_tokens_per_s_best']:7.2f} best, {r['decode_tokens_per_cpu_s']:7.2f} per CPU s"
            )
        results.append(entry)

    weight_bytes = {name: sum(p.numel() * p.element_size() for p in models[name].parameters()) for name in IMPLS[:2]}
    report = {
        "benchmark": "lm_cpu_dtype",
        "date": started.isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_has_native_bf16": cpu_has_native_bf16(),
        "config": "gemma2-2b widths, 2 layers, vocab 256000 (tied head), random weights std 0.06",
        "params": sum(p.numel() for p in fp32.parameters()),
        "weight_bytes": weight_bytes,
        "prompt_len": args.prompt_len,
        "new_tokens": new_tokens,
        "batch": 1,
        "repeats": repeats,
        "timing": "interleaved repeats; decode tokens/s = (N-1) / (t(N) - t(1)) from the median (and best) wall times",
        "load_average_start": load_start,
        "logit_errors": errors,
        "results": results,
        "load_average_end": os.getloadavg(),
        "wall_s": (datetime.datetime.now() - started).total_seconds(),
    }
    out = Path(args.out) if args.out else RESULTS / f"lm_cpu_dtype-{started:%Y-%m-%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
