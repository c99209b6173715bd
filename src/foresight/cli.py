"""The ``foresight`` command line: list, run, reproduce, report, data, generate.

foresight list
foresight run halfhop-heterophily --scale quick --seed 0 --out runs/hh --set epochs=50
foresight run halfhop-ssl --resume runs/hh-ssl          # continue a killed run
foresight reproduce --scale quick                       # every experiment + one REPORT.md
foresight report runs/hh
foresight data                                          # where each dataset resolves
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import traceback
from pathlib import Path

from foresight.core import registry
from foresight.core.checkpoint import atomic_write_text
from foresight.core.config import SCALES
from foresight.core.report import write_combined_report, write_run_report
from foresight.core.run import Run, dumps


def execute(
    exp: registry.Experiment,
    *,
    scale: str = "quick",
    seed: int = 0,
    out: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    resume: str | None = None,
    device: str | None = None,
    data_dir: str | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> Path:
    """Run one experiment into a Run folder; write results.json and REPORT.md; return the folder."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    if resume:
        run = Run.resume(resume, exp.config, device=device, data_dir=data_dir, progress=progress)
        if run.experiment != exp.name:
            raise ValueError(f"{resume} is a run of {run.experiment!r}, not {exp.name!r}")
    else:
        config = exp.make_config(scale, overrides)
        run = Run.create(
            exp.name, config, scale=scale, seed=seed, out=out, device=device, data_dir=data_dir, progress=progress
        )
    t0 = time.time()
    result = exp.fn(run.config, run)
    record = {
        "experiment": exp.name,
        "system": exp.system,
        "paper": exp.paper,
        "claim": exp.claim,
        "scale": run.scale,
        "seed": run.seed,
        "device": str(run.device),
        **dataclasses.asdict(result),
        "wall_seconds": time.time() - t0,
        "config": run.config.to_dict(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_text(run.dir / "results.json", dumps(record))
    write_run_report(run.dir)
    return run.dir


def _cmd_list(args: argparse.Namespace) -> int:
    for name, exp in registry.experiments().items():
        print(f"{name:28s} {exp.system:28s} {exp.claim}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    exp = registry.get(args.experiment)
    run_dir = execute(
        exp,
        scale=args.scale,
        seed=args.seed,
        out=args.out,
        overrides=args.set,
        resume=args.resume,
        device=args.device,
        data_dir=args.data_dir,
        progress=not args.no_progress,
        threads=args.threads,
    )
    print(f"wrote {run_dir / 'REPORT.md'}")
    print((run_dir / "REPORT.md").read_text())
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    out = Path(args.out or Path("runs") / f"reproduce-{args.scale}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(registry.experiments())
    dirs, failed = [], []
    for name in names:
        exp = registry.get(name)
        run_dir = out / name
        print(f"== {name} ({exp.system}) at scale {args.scale}", flush=True)
        t0 = time.time()
        try:
            execute(
                exp,
                scale=args.scale,
                seed=args.seed,
                out=str(run_dir),
                device=args.device,
                data_dir=args.data_dir,
                progress=not args.no_progress,
                threads=args.threads,
            )
        except Exception:  # one failing experiment must not hide the others' results
            failed.append(name)
            tb = traceback.format_exc()
            print(tb, file=sys.stderr)
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                run_dir / "results.json",
                dumps(
                    {
                        "experiment": name,
                        "system": exp.system,
                        "paper": exp.paper,
                        "claim": exp.claim,
                        "scale": args.scale,
                        "seed": args.seed,
                        "verdict": "error",
                        "rule": "",
                        "metrics": {},
                        "wall_seconds": time.time() - t0,
                        "error": tb[-4000:],
                    }
                ),
            )
        dirs.append(run_dir)
    report = write_combined_report(dirs, out / "REPORT.md")
    print(f"wrote {report}")
    if failed:
        print(f"failed experiments: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    path = write_run_report(args.run_dir)
    print(path.read_text())
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from foresight.core import data

    _import_dataset_modules()
    rows = data.status(args.data_dir)
    print(
        "search order: "
        + " -> ".join(f"{why} ({root})" for why, root in data.candidate_roots(args.data_dir))
        + " -> pinned download"
    )
    for row in rows:
        state = "ok" if not row["missing"] else f"missing {len(row['missing'])}/{row['files']} files"
        print(f"{row['dataset']:24s} {state:28s} {row['where']}")
        for p in row["missing"][:5]:
            print(f"    missing: {p}")
    return 0


def _import_dataset_modules() -> None:
    """Datasets register themselves when their area's loader module is imported."""
    import importlib

    modules = ("foresight.graph.datasets", "foresight.lm.text_data", "foresight.lm.mm_data", "foresight.behavior.mabe")
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError:
            pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="foresight", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
        sp.add_argument("--data-dir", default=None, help="folder holding dataset folders (before $FORESIGHT_DATA)")
        sp.add_argument("--no-progress", action="store_true", help="hide progress bars")
        sp.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")

    sp = sub.add_parser("list", help="list experiments")
    sp.set_defaults(fn=_cmd_list)

    sp = sub.add_parser("run", help="run one experiment")
    sp.add_argument("experiment")
    sp.add_argument("--scale", choices=SCALES, default="quick")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", default=None, help="run folder (default runs/<experiment>/<time>-<seed>)")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    sp.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a killed run")
    common(sp)
    sp.set_defaults(fn=_cmd_run)

    sp = sub.add_parser("reproduce", help="run every experiment and write one combined REPORT.md")
    sp.add_argument("--scale", choices=SCALES, default="quick")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", default=None)
    sp.add_argument("--only", nargs="*", default=None, help="a subset of experiments")
    common(sp)
    sp.set_defaults(fn=_cmd_reproduce)

    sp = sub.add_parser("report", help="(re)write REPORT.md of a finished run")
    sp.add_argument("run_dir")
    sp.set_defaults(fn=_cmd_report)

    sp = sub.add_parser("data", help="where each dataset resolves and what is missing")
    sp.add_argument("--data-dir", default=None)
    sp.set_defaults(fn=_cmd_data)

    _add_optional_commands(sub)
    return p


def _add_optional_commands(sub: argparse._SubParsersAction) -> None:
    """Commands that live with their area (the LM commands live in foresight.lm)."""
    import importlib

    # import_module, not `from foresight.lm import generate`: the package re-exports a function of that name
    lm_generate = importlib.import_module("foresight.lm.generate")
    sp = sub.add_parser("generate", help="generate text with a Gemma 2 checkpoint (HF layout)")
    lm_generate.add_generate_arguments(sp)
    sp.set_defaults(fn=lm_generate.run_generate)

    from foresight.lm import train_cli

    sp = sub.add_parser("train-lm", help="pretrain a Gemma 2 LM by next-token prediction (resumable; torchrun)")
    train_cli.add_train_arguments(sp)
    sp.set_defaults(fn=train_cli.run_train)
    sp = sub.add_parser("distill", help="train a student LM by distillation from a Gemma 2 teacher")
    train_cli.add_distill_arguments(sp)
    sp.set_defaults(fn=train_cli.run_distill)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as e:
        if os.environ.get("FORESIGHT_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"foresight: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
