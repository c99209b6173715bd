"""Training throughput on CPU: our trainer step vs a plain ``transformers`` Gemma 2 training step.

Both sides train the same Gemma 2 config from the same weights on the same batch:

    ours  foresight.lm.train.Trainer.train_step(): foresight Gemma2, fused AdamW, loss on the fp32
          logits without shift copies; optionally torch.compile (``--compile``) and bf16 autocast.
    hf    transformers.Gemma2ForCausalLM (attn_implementation="eager": the only HF backend that applies
          Gemma 2's attention soft-cap), ``model(input_ids, labels=input_ids).loss.backward()``,
          clip_grad_norm_, torch.optim.AdamW with its defaults (on CPU: the per-tensor for-loop).

Each variant runs ``--rounds`` rounds of ``--steps`` steps, interleaved (hf, ours, hf, ours, ...) so
that background load hits every variant alike. Per step we record wall time and this process's CPU
time; with one intra-op thread the CPU time is what the step costs, whatever else runs on the machine,
so the ratio is computed from the median CPU-time throughput (wall numbers are saved too).

    .venv/bin/python benchmarks/lm_train.py                 # writes benchmarks/results/lm_train-<date>.json
    .venv/bin/python benchmarks/lm_train.py --quick         # a smaller model, fewer rounds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def build(args):
    from transformers import Gemma2Config as HFConfig
    from transformers import Gemma2ForCausalLM

    from foresight.lm.gemma2 import Gemma2, Gemma2Config
    from foresight.lm.hf_io import config_to_hf_dict, hf_state_dict

    cfg = Gemma2Config.tiny(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=max(1, args.heads // 2),
        head_dim=args.hidden // args.heads,
        query_pre_attn_scalar=float(args.hidden // args.heads),
        sliding_window=args.seq_len // 2,
        max_position_embeddings=args.seq_len,
    )
    torch.manual_seed(0)
    ours = Gemma2(cfg)
    d = config_to_hf_dict(cfg)
    for key in ("architectures", "model_type"):
        d.pop(key)
    hf_cfg = HFConfig(**d)
    hf_cfg._attn_implementation = "eager"
    hf = Gemma2ForCausalLM(hf_cfg)
    result = hf.load_state_dict(hf_state_dict(ours), strict=False)
    # The tied head is the embedding in both models, so HF reports only its alias as missing.
    assert result.missing_keys == ["lm_head.weight"] and not result.unexpected_keys, result
    assert hf.lm_head.weight is hf.model.embed_tokens.weight
    return cfg, ours, hf


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--compile", default="both", choices=("off", "on", "both"), help="ours with torch.compile")
    p.add_argument("--quick", action="store_true", help="a small model and 3 rounds (a smoke run)")
    p.add_argument("--out", default=None, help="result JSON (default benchmarks/results/lm_train-<date>.json)")
    args = p.parse_args()
    if args.quick:
        args.vocab, args.hidden, args.layers, args.seq_len, args.rounds = 1024, 64, 2, 64, 3
    torch.set_num_threads(args.threads)

    from foresight.lm.text_data import PackedSequences
    from foresight.lm.train import TrainConfig, Trainer

    cfg, ours, hf = build(args)
    B, T = args.batch, args.seq_len
    rng = np.random.default_rng(0)
    data = PackedSequences(rng.integers(0, args.vocab, size=B * T * 4 + 1).astype(np.uint16), T)
    x, _ = data.batch(np.arange(B))
    with torch.no_grad():  # same weights, same function: the comparison is like for like
        diff = (ours(x).logits - hf(input_ids=x).logits).abs().max().item()
    assert diff < 1e-4, f"our logits differ from transformers' by {diff}"

    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def hf_step(bf16: bool) -> None:
        hf.train()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            loss = hf(input_ids=x, labels=x).loss  # HF shifts the labels itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)

    variants: dict[str, callable] = {}
    compile_seconds: dict[str, float] = {}
    precisions = args.precisions.split(",")
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    for prec in precisions:
        variants[f"hf-{prec}"] = lambda bf16=(prec == "bf16"): hf_step(bf16)
        for comp in compiles:
            tcfg = TrainConfig(
                steps=10**6,
                batch_size=B,
                lr=1e-4,
                warmup_steps=1,
                distributed="none",
                precision=prec,
                compile=comp,
            )
            model = ours if not comp else build(args)[1]  # a fresh module per compiled variant
            trainer = Trainer(model, tcfg, data)
            name = f"ours-{prec}" + ("-compiled" if comp else "")
            t0 = time.perf_counter()
            trainer.train_step()  # compiles here when asked
            compile_seconds[name] = time.perf_counter() - t0
            variants[name] = trainer.train_step
            print(f"ready {name} (first step {compile_seconds[name]:.1f} s)", flush=True)

    for f in variants.values():  # warm-up
        f()
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, f in variants.items():
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                f()
            w, c = time.perf_counter() - w0, time.process_time() - c0
            tokens = args.steps * B * T
            wall[name].append(tokens / w)
            cpu[name].append(tokens / c)
        print(
            f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {cpu[k][-1]:.0f}" for k in variants),
            flush=True,
        )

    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    ratios = {}
    for prec in precisions:
        for name in variants:
            if name.startswith("ours-" + prec):
                ratios[f"{name} / hf-{prec}"] = med_cpu[name] / med_cpu[f"hf-{prec}"]
    best = max((k for k in variants if k.startswith("ours")), key=med_cpu.get)
    ratios[f"best ours ({best}) / hf-fp32 (plain transformers)"] = med_cpu[best] / med_cpu["hf-fp32"]

    record = {
        "benchmark": "lm_train",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "threads": args.threads,
            "load_avg_at_end": os.getloadavg(),
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "python": platform.python_version(),
        },
        "model": {
            "vocab": cfg.vocab_size,
            "hidden": cfg.hidden_size,
            "layers": cfg.num_layers,
            "heads": cfg.num_heads,
            "kv_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim,
            "ffn": cfg.intermediate_size,
            "params": sum(p.numel() for p in ours.parameters()),
        },
        "batch": {"batch_size": B, "seq_len": T, "tokens_per_step": B * T},
        "protocol": (
            f"{args.rounds} interleaved rounds x {args.steps} steps per variant after a warm-up step; "
            "median over rounds; tokens/s of process CPU time (1 intra-op thread) and of wall time"
        ),
        "tokens_per_cpu_second": med_cpu,
        "tokens_per_wall_second": med_wall,
        "ratios_cpu_time": ratios,
        "first_step_seconds": compile_seconds,
        "all_rounds_cpu": cpu,
        "all_rounds_wall": wall,
    }
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"lm_train-{time.strftime('%Y%m%d')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"\n{'variant':28s} {'tok/s (cpu)':>12s} {'tok/s (wall)':>13s}")
    for k in variants:
        print(f"{k:28s} {med_cpu[k]:12.0f} {med_wall[k]:13.0f}")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
