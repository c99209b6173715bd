"""Speed and peak memory of foresight's Half-Hop vs ``torch_geometric.transforms.HalfHop``.

Every (device, size, implementation) is measured in a fresh ``spawn`` child so that peak memory is
not polluted by earlier runs:

* CPU memory: increase of ``ru_maxrss`` (the process's peak resident set) over its value right after
  the input graph was built, i.e. the extra memory the transform needed at its peak.
* CUDA memory: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call.

Times are medians over ``--repeats`` calls (wall clock; CPU time of the process is reported too,
since it is less sensitive to other jobs on a shared machine). A measurement whose estimated peak
does not fit in the memory available now is skipped and reported as such instead of risking the OOM
killer on a shared host. Results go to ``benchmarks/results/halfhop_speed-<YYYYmmdd>-<device>.json``.

Usage::

    python benchmarks/halfhop_speed.py --sizes 1e4,1e5,1e6,2e6 --device cpu --repeats 3
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing the package

IMPLS = ("ours", "pyg")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e4,1e5,1e6,2e6", help="comma-separated node counts N")
    ap.add_argument("--edges-per-node", type=float, default=20.0, help="E = N * this (random directed)")
    ap.add_argument("--feat", type=int, default=64, help="feature dims F (float32)")
    ap.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median); >= 15 below N=1e5")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--p", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in children (0: default)")
    ap.add_argument("--impls", default="ours,pyg", help="subset of: ours,pyg")
    ap.add_argument("--mem-fraction", type=float, default=0.9, help="skip if est. peak > this * available")
    ap.add_argument("--out-dir", default="benchmarks/results", help="relative to the repository root unless absolute")
    ap.add_argument("--tag", default="", help="optional suffix of the result file name")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


# --------------------------------------------------------------------------------------------
# Child process: build the graph, time the transform, report peak memory
# --------------------------------------------------------------------------------------------


def _build(n: int, e: int, f: int, device: str, seed: int):
    import torch
    from torch_geometric.data import Data

    gen = torch.Generator().manual_seed(seed)
    # Built on CPU with a fixed generator (identical graph for both implementations), then moved.
    x = torch.randn(n, f, generator=gen)
    edge_index = torch.randint(0, n, (2, e), generator=gen)
    return Data(x=x.to(device), edge_index=edge_index.to(device))


def _make_transform(impl: str, alpha: float, p: float):
    if impl == "ours":
        from foresight.graph.halfhop import HalfHop

        return HalfHop(alpha=alpha, p=p)
    import torch_geometric.transforms as T

    return T.HalfHop(alpha=alpha, p=p)


def _fingerprint(out) -> list[float]:
    """Cheap summary of an output, to check that both implementations produced the same graph."""
    x, ei = out.x, out.edge_index
    return [
        float(x.size(0)),
        float(ei.size(1)),
        float(x[-min(1000, x.size(0)) :].double().sum()),
        float(ei[:, :: max(1, ei.size(1) // 4096)].double().sum()),
        float(out.slow_node_mask.sum()),
    ]


def measure(
    impl: str,
    n: int,
    e: int,
    f: int,
    device: str,
    repeats: int,
    alpha: float,
    p: float,
    threads: int,
    seed: int,
) -> dict[str, Any]:
    import gc
    import resource

    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    transform = _make_transform(impl, alpha, p)
    transform(_build(100, 1000, f, device, seed))  # warm-up: lazy imports, kernel caches
    data = _build(n, e, f, device, seed)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
    gc.collect()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    times, cpu_times, fingerprint = [], [], None
    for _ in range(repeats):
        torch.manual_seed(seed)  # same targets for both implementations when p < 1
        t0, c0 = time.perf_counter(), time.process_time()
        out = transform(data)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        if fingerprint is None:
            fingerprint = _fingerprint(out)
            num_slow = int(out.slow_node_mask.sum())
        del out
        gc.collect()
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base_alloc
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss
    return {
        "impl": impl,
        "status": "ok",
        "times_s": times,
        "time_median_s": statistics.median(times),
        "time_min_s": min(times),
        "cpu_times_s": cpu_times,
        "cpu_time_median_s": statistics.median(cpu_times),
        "peak_mem_bytes": int(peak),
        "num_slow_nodes": num_slow,
        "fingerprint": fingerprint,
        "threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------------------------
# Parent: memory estimates, scheduling, table and JSON
# --------------------------------------------------------------------------------------------


def estimate_peak_bytes(impl: str, n: int, e: int, f: int, p: float) -> int:
    """Rough extra memory of one call (assumes no self-loops, so M = p * E slow nodes)."""
    m = int(p * e)
    feat = 4 * f  # float32 row
    if impl == "ours":
        # edge phase: bool masks + [E] int64 order + output edge_index; feature phase: output
        # edge_index + output x + the <= M/16-row scratch buffer (the order is freed before).
        edges_out = 16 * (e + 2 * m)
        return edges_out + max(12 * e, (n + m) * feat + (m // 16 + 1) * feat) + (n + m)
    # PyG keeps x_src, x_dst, alpha*x_src, (1-alpha)*x_dst and their sum alive at once, then cats
    # into a new [N+M, F]; its edge pieces (masked copies, stacks, cat) are ~8 * (4E + 10M) bytes.
    return max(5 * m * feat, (n + 4 * m) * feat) + 8 * (4 * e + 10 * m)


def available_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def run_child(*args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        try:
            return pool.submit(measure, *args).result()
        except concurrent.futures.process.BrokenProcessPool:
            return {"impl": args[0], "status": "failed: child process died (out of memory?)"}


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(b) < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.2f} {unit}"
        b /= 1024
    return f"{b:.2f} GiB"


def fmt_time(t: float | None) -> str:
    return "-" if t is None else (f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s")


def print_table(rows: list[dict[str, Any]]) -> None:
    head = [
        "N",
        "E",
        "slow M",
        "ours time",
        "PyG time",
        "ratio",
        "ours cpu",
        "PyG cpu",
        "cpu ratio",
        "ours peak",
        "PyG peak",
        "same",
    ]
    lines = [head]
    for r in rows:
        o, g = r["ours"], r["pyg"]
        ot, gt = o.get("time_median_s"), g.get("time_median_s")
        oc, gc_ = o.get("cpu_time_median_s"), g.get("cpu_time_median_s")
        lines.append(
            [
                f"{r['nodes']:.0e}",
                f"{r['edges']:.0e}",
                str(o.get("num_slow_nodes", g.get("num_slow_nodes", "-"))),
                fmt_time(ot),
                fmt_time(gt) if gt is not None else g.get("status", "-")[:40],
                f"{gt / ot:.2f}x" if ot and gt else "-",
                fmt_time(oc),
                fmt_time(gc_),
                f"{gc_ / oc:.2f}x" if oc and gc_ else "-",
                fmt_bytes(o.get("peak_mem_bytes")),
                fmt_bytes(g.get("peak_mem_bytes")),
                {True: "yes", False: "NO", None: "-"}[r.get("same_output")],
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for k, line in enumerate(lines):
        print(" | ".join(c.rjust(w) for c, w in zip(line, widths)))
        if k == 0:
            print("-+-".join("-" * w for w in widths))


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch
    import torch_geometric

    sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    impls = [i for i in args.impls.split(",") if i]
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        print("CUDA not available; skipping cuda")
        devices.remove("cuda")
    for device in devices:
        started = dt.datetime.now()
        rows = []
        load_start = os.getloadavg()
        for n in sizes:
            e = int(n * args.edges_per_node)
            row: dict[str, Any] = {"nodes": n, "edges": e, "feat": args.feat}
            for impl in IMPLS:
                if impl not in impls:
                    row[impl] = {"impl": impl, "status": "not requested"}
                    continue
                est, avail = estimate_peak_bytes(impl, n, e, args.feat, args.p), available_bytes(device)
                if est > args.mem_fraction * avail:
                    status = f"skipped: est. {fmt_bytes(est)} > {args.mem_fraction} x {fmt_bytes(avail)} free"
                    row[impl] = {"impl": impl, "status": status, "est_peak_bytes": est}
                    print(f"[{device}] N={n:.0e} {impl}: {status}", flush=True)
                    continue
                # Small graphs take milliseconds: more calls make the median robust to other jobs.
                repeats = args.repeats if n >= 100_000 else max(args.repeats, 15)
                res = run_child(impl, n, e, args.feat, device, repeats, args.alpha, args.p, args.threads, args.seed)
                res["est_peak_bytes"] = est
                row[impl] = res
                print(
                    f"[{device}] N={n:.0e} {impl}: {fmt_time(res.get('time_median_s'))} "
                    f"peak {fmt_bytes(res.get('peak_mem_bytes'))} ({res['status']})",
                    flush=True,
                )
            fps = [row[i].get("fingerprint") for i in IMPLS]
            row["same_output"] = None if None in fps else fps[0] == fps[1]
            rows.append(row)
        print(
            f"\nHalf-Hop, device={device} ({device_name(device)}), F={args.feat}, alpha={args.alpha}, "
            f"p={args.p}, E/N={args.edges_per_node:g}, repeats={args.repeats}; ratio = PyG / ours"
        )
        print_table(rows)
        out_dir = Path(args.out_dir) if Path(args.out_dir).is_absolute() else ROOT / args.out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        suffix = f"-{args.tag}" if args.tag else ""
        path = out_dir / f"halfhop_speed-{started:%Y%m%d}-{device}{suffix}.json"
        meta = {
            "date": started.isoformat(timespec="seconds"),
            "device": device,
            "device_name": device_name(device),
            "torch": torch.__version__,
            "torch_geometric": torch_geometric.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "threads": rows[0]["ours"].get("threads", rows[0]["pyg"].get("threads")) if rows else None,
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
            "args": vars(args),
            "memory_metric": "CUDA max_memory_allocated delta"
            if device == "cuda"
            else "ru_maxrss delta after input built (fresh spawn child per measurement)",
        }
        path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
        print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
