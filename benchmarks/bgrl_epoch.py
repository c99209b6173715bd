"""Wall time of one BGRL epoch on Amazon Computers: ours without / with Half-Hop views vs plain PyG.

The model is BGRL's Computers setting (nerdslab/bgrl): a GCN encoder 767 -> 256 -> 128 with batch norm
and PReLU after every layer, a 128 -> 512 -> 128 predictor, an EMA target, AdamW, row-normalised
features, views with feature masking 0.2 / 0.1 and edge dropping 0.5 / 0.4. One epoch = one full-batch
step: draw two views, two online and two target passes, the symmetric cosine loss, one optimiser step,
the EMA update. Arms (all in this process, interleaved round by round so that load changes hit each arm
alike):

* ``ours``: ``foresight.graph.bgrl.bgrl_step`` without Half-Hop;
* ``ours_hh``: the same with Half-Hop views ``hh_alpha(T(G); p)`` (alpha 0.5, p 0.75);
* ``pyg``: the same model written plainly with PyG (``GCNConv``, ``BatchNorm1d``, ``PReLU``,
  ``dropout_edge``), no Half-Hop.

Reported: the median over ``--repeats`` epochs after one warm-up epoch per arm, and the ratios
``ours_hh / ours`` and ``ours / pyg``. Results go to ``benchmarks/results/bgrl_epoch-<YYYYmmdd>[-tag].json``.

Usage::

    FORESIGHT_DATA=../shared/data python benchmarks/bgrl_epoch.py --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing the package


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--repeats", type=int, default=5, help="timed epochs per arm (median)")
    ap.add_argument("--p", type=float, default=0.75, help="Half-Hop p of the ours_hh arm")
    ap.add_argument("--data-dir", default=None, help="folder holding gnn-benchmark/ (default: $FORESIGHT_DATA, ...)")
    ap.add_argument("--out-dir", default="benchmarks/results", help="relative to the repository root unless absolute")
    ap.add_argument("--tag", default="", help="optional suffix of the result file name")
    return ap.parse_args(argv)


def pyg_bgrl(in_channels: int):
    """BGRL written the plain PyG way (what a user of PyG would write), same sizes as ours."""
    import torch
    from torch import nn
    from torch_geometric.nn import GCNConv

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleList([GCNConv(in_channels, 256), GCNConv(256, 128)])
            self.norms = nn.ModuleList([nn.BatchNorm1d(256, momentum=0.01), nn.BatchNorm1d(128, momentum=0.01)])
            self.acts = nn.ModuleList([nn.PReLU(1), nn.PReLU(1)])

        def forward(self, x, edge_index):
            for conv, norm, act in zip(self.convs, self.norms, self.acts):
                x = act(norm(conv(x, edge_index)))
            return x

    online = Encoder()
    predictor = nn.Sequential(nn.Linear(128, 512), nn.PReLU(1), nn.Linear(512, 128))
    target = copy.deepcopy(online).requires_grad_(False)
    opt = torch.optim.AdamW([*online.parameters(), *predictor.parameters()], lr=5e-4, weight_decay=1e-5)
    return online, predictor, target, opt


def pyg_step(model, x, edge_index) -> float:
    import torch
    import torch.nn.functional as F
    from torch_geometric.utils import dropout_edge

    online, predictor, target, opt = model

    def view(fm: float, ed: float):
        mask = (torch.rand(x.size(1)) >= fm).float()
        return x * mask, dropout_edge(edge_index, p=ed)[0]

    (x1, e1), (x2, e2) = view(0.2, 0.5), view(0.1, 0.4)
    online.train(), target.train()
    q1, q2 = predictor(online(x1, e1)), predictor(online(x2, e2))
    with torch.no_grad():
        y1, y2 = target(x1, e1), target(x2, e2)
    loss = (2 - 2 * F.cosine_similarity(q1, y2, dim=-1)).mean() + (2 - 2 * F.cosine_similarity(q2, y1, dim=-1)).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        for pt, po in zip(target.parameters(), online.parameters()):
            pt.mul_(0.99).add_(po, alpha=0.01)
    return loss.item()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch
    import torch_geometric

    from foresight.graph.bgrl import BGRL, Augmentation, BGRLEncoder, bgrl_step
    from foresight.graph.datasets import load_gnn_benchmark
    from foresight.graph.train import keep_freed_memory
    from foresight.nn.ema import ema_update

    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the experiments do (fewer page faults on large temporaries)
    started = dt.datetime.now()
    load_start = os.getloadavg()
    data, meta = load_gnn_benchmark("amazon-computers", args.data_dir, num_splits=1)
    x = data.x / data.x.sum(1, keepdim=True).clamp_min(1.0)  # NormalizeFeatures
    ei = data.edge_index
    torch.manual_seed(0)

    def ours(hh: float | None):
        model = BGRL(BGRLEncoder(x.size(1), (256, 128)), 512)
        opt = torch.optim.AdamW(model.trainable_parameters(), lr=5e-4, weight_decay=1e-5)
        a1, a2 = Augmentation(0.2, 0.5, hh), Augmentation(0.1, 0.4, hh)

        def step() -> float:
            loss = bgrl_step(model, opt, x, ei, a1, a2)
            ema_update(model.target, model.online, 0.99)
            return loss

        return step

    pyg_model = pyg_bgrl(x.size(1))
    arms = {"ours": ours(None), "ours_hh": ours(args.p), "pyg": lambda: pyg_step(pyg_model, x, ei)}
    times: dict[str, list[float]] = {k: [] for k in arms}
    for fn in arms.values():  # warm-up
        fn()
    for r in range(args.repeats):
        for name, fn in arms.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {"ours_hh / ours": med["ours_hh"] / med["ours"], "ours / pyg": med["ours"] / med["pyg"]}
    print("median s/epoch: " + ", ".join(f"{k} {v:.3f}" for k, v in med.items()))
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    out_dir = Path(args.out_dir) if Path(args.out_dir).is_absolute() else ROOT / args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"-{args.tag}" if args.tag else ""
    path = out_dir / f"bgrl_epoch-{started:%Y%m%d}{suffix}.json"
    result = {
        "meta": {
            "date": started.isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "torch_geometric": torch_geometric.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
            "args": {**vars(args), "out_dir": args.out_dir},
            "dataset": meta.summary(),
            "model": "GCN 767-256-128 + BN + PReLU, predictor 512, fd 0.2/0.1, ed 0.5/0.4, half-hop alpha 0.5",
        },
        "seconds_per_epoch_median": med,
        "seconds_per_epoch": times,
        "ratios": ratios,
    }
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
