"""The ``foresight`` command line: list, run, reproduce, report, data, generate, serve, train-lm, distill.

    foresight list
    foresight run halfhop-heterophily --scale quick --seed 0 --out runs/hh --set epochs=50
    foresight run halfhop-ssl --resume runs/hh-ssl          # continue a killed run
    foresight reproduce --scale quick --out runs/rq         # every experiment + one REPORT.md;
                                                            # rerun the same command to continue it
    foresight report runs/hh
    foresight data                                          # where each dataset resolves

Imports are lazy: ``list``, ``--help`` and ``data`` never import torch. Every library error ends as one
``foresight: error: ...`` line and exit status 2; Ctrl-C as one line and status 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import traceback
from pathlib import Path

from foresight.core import fs
from foresight.core.config import SCALES

# What a user's input can raise inside the library (bad values, bad files, CheckpointError and RunFolderError
# are ValueErrors; missing/unwritable paths are OSErrors). Anything else is a bug and keeps its traceback.
_LIBRARY_ERRORS = (ValueError, KeyError, OSError, MemoryError)

_LM_COMMANDS = {
    "generate": "generate text with a Gemma 2 checkpoint (HF layout)",
    "train-lm": "pretrain a Gemma 2 LM by next-token prediction (resumable; torchrun)",
    "distill": "train a student LM by distillation from a Gemma 2 teacher",
    "serve": "serve a Gemma 2 checkpoint over an OpenAI-compatible HTTP API (FastAPI + uvicorn)",
}


def execute(
    exp,
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
    from foresight.core.report import write_run_report
    from foresight.core.run import Run, check_threads, dumps, torch_threads

    if threads is not None:
        check_threads(threads)  # before any folder is claimed
    if resume:
        if overrides:
            raise ValueError("--set cannot change a resumed run (its config is fixed); start a new run instead")
        run = Run.resume(resume, exp.config, experiment=exp.name, device=device, data_dir=data_dir, progress=progress)
    else:
        config = exp.make_config(scale, overrides)
        run = Run.create(
            exp.name, config, scale=scale, seed=seed, out=out, device=device, data_dir=data_dir, progress=progress
        )
    t0, counted = time.time(), False
    try:
        default = exp.threads if run.device.type == "cpu" else None
        with torch_threads(threads if threads is not None else default):
            result = exp.fn(run.config, run)
        total, counted = fs.add_seconds(run.dir, time.time() - t0), True
        record = {
            "experiment": exp.name,
            "system": exp.system,
            "paper": exp.paper,
            "claim": exp.claim,
            "scale": run.scale,
            "seed": run.seed,
            "device": str(run.device),
            **dataclasses.asdict(result),
            "wall_seconds": time.time() - t0,  # this session
            "wall_seconds_total": total,  # every session on this folder (a SIGKILLed one's time is lost)
            "resumed": run.resumed,
            "config": run.config.to_dict(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        fs.atomic_write_text(run.dir / "results.json", dumps(record))
        write_run_report(run.dir)
        run.finish()
    finally:
        if not counted and run.holds_folder:  # interrupted or failed: keep its time for the total
            fs.add_seconds(run.dir, time.time() - t0)
        run.close()
    return run.dir


def _cmd_list(args: argparse.Namespace) -> int:
    from foresight import experiments
    from foresight.core import registry

    rows = {name: (e.system, e.claim) for name, e in experiments.catalogue().items()}
    rows.update({name: (e.system, e.claim) for name, e in registry.experiments().items()})  # registered in-process
    for name, (system, claim) in sorted(rows.items()):
        print(f"{name:28s} {system:34s} {claim}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from foresight import experiments

    if args.resume and args.out:
        raise ValueError("give either --out (a new run) or --resume RUN_DIR (continue one), not both")
    exp = experiments.load(args.experiment)
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


def _claim_reproduce_folder(out: Path, record: dict) -> fs.FolderLock:
    """A reproduce folder is owned like a run folder; a rerun must use the same scale and seed."""
    marker = fs.read_marker(out) if out.is_dir() else None
    if marker is None:
        return fs.claim(out, "reproduce", resume=False, record=record)
    if marker["owner"] == "reproduce":
        started = marker.get("record", {})
        changed = [f"{k} {started.get(k)!r} -> {v!r}" for k, v in record.items() if started.get(k) != v]
        if changed:
            raise fs.RunFolderError(
                f"{out} is a reproduce run with other settings ({', '.join(changed)}); rerun it with the same "
                "--scale/--seed to continue it, or pick another --out"
            )
    return fs.claim(out, "reproduce", resume=True, allow_finished=True)


def _reproduce_one(name: str, module: str, run_dir: str, resume: bool, options: dict) -> bool:
    """One experiment of ``reproduce`` into ``run_dir`` (resumed if it holds an unfinished run); False if it
    failed, after recording the failure in its results.json (a rerun retries it). ``module`` registers it
    when imported (a spawned worker starts with an empty registry)."""
    import importlib

    from foresight.core import registry
    from foresight.core.run import dumps

    t0, exp = time.time(), None
    try:
        importlib.import_module(module)  # inside the try: a module that fails to import is one failed experiment
        exp = registry.get(name)
        print(f"== {name} ({exp.system}) at scale {options['scale']}{' (resuming)' if resume else ''}", flush=True)
        execute(exp, out=None if resume else run_dir, resume=run_dir if resume else None, **options)
        print(f"== {name}: done in {time.time() - t0:.0f} s", flush=True)
        return True
    except Exception:  # one failing experiment must not hide the others' results
        tb = traceback.format_exc()
        print(tb, file=sys.stderr)
        path = Path(run_dir)
        if path.is_dir() and fs.read_marker(path) is not None:  # ours, unfinished: a rerun resumes it
            error = {
                "experiment": name,
                **{k: getattr(exp, k, "") for k in ("system", "paper", "claim")},
                "scale": options["scale"],
                "seed": options["seed"],
                "verdict": "error",
                "rule": "",
                "metrics": {},
                "wall_seconds": time.time() - t0,
                "error": tb[-4000:],
            }
            fs.atomic_write_text(path / "results.json", dumps(error))
        return False


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from foresight import experiments
    from foresight.core import registry
    from foresight.core.report import write_combined_report

    out = fs.check_out_path(args.out or Path("runs") / f"reproduce-{args.scale}-{time.strftime('%Y%m%d-%H%M%S')}")
    modules = {name: e.module for name, e in experiments.catalogue().items()}
    modules |= {name: e.fn.__module__ for name, e in registry.experiments().items()}  # registered in-process
    names = args.only or list(experiments.catalogue())
    for name in names:
        if name not in modules:
            raise KeyError(f"unknown experiment {name!r}; available: {', '.join(sorted(modules))}")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1 (experiments run at once), got {args.jobs}")
    lock = _claim_reproduce_folder(out, {"scale": args.scale, "seed": args.seed})
    options = {
        "scale": args.scale,
        "seed": args.seed,
        "device": args.device,
        "data_dir": args.data_dir,
        "progress": not args.no_progress and args.jobs == 1,  # bars of parallel runs would interleave
        "threads": args.threads,
    }
    dirs, todo, failed = [], [], []
    try:
        for name in names:
            run_dir = out / name
            marker = fs.read_marker(run_dir) if run_dir.is_dir() else None
            if marker is not None and marker["owner"] != name:
                raise fs.RunFolderError(f"{run_dir} holds a run of {marker['owner']!r}, not {name!r}")
            dirs.append(run_dir)
            if marker is not None and marker["state"] == "finished" and (run_dir / "results.json").is_file():
                print(f"== {name}: finished earlier, kept", flush=True)
                continue
            todo.append((name, modules[name], str(run_dir), marker is not None))
        if args.jobs == 1:
            failed = [job[0] for job in todo if not _reproduce_one(*job, options)]
        else:  # each experiment in its own spawned process, `jobs` at a time
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # a fresh process per experiment: no module or torch state carries over from the one before
            spawn = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.jobs, mp_context=spawn, max_tasks_per_child=1) as pool:
                done = {job[0]: pool.submit(_reproduce_one, *job, options) for job in todo}
                failed = [name for name, future in done.items() if not future.result()]
        report = write_combined_report(dirs, out / "REPORT.md")
        print(f"wrote {report}")
        if failed:
            print(f"failed experiments: {', '.join(failed)}; rerun the same command to retry them", file=sys.stderr)
            return 1
        fs.set_state(out, "finished")
        return 0
    finally:
        lock.release()


def _cmd_report(args: argparse.Namespace) -> int:
    from foresight.core.report import write_run_report

    path = write_run_report(args.run_dir)
    print(path.read_text())
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from foresight.core import data, datasets  # noqa: F401  (importing datasets registers every pinned spec)

    rows = data.status(args.data_dir)
    print(
        "search order: "
        + " -> ".join(f"{why} ({root})" for why, root in data.candidate_roots(args.data_dir))
        + " -> pinned download"
    )
    bad = 0
    for row in rows:
        corrupt = row.get("corrupt", [])
        if row["missing"]:
            state = f"missing {len(row['missing'])}/{row['files']} files"
        elif corrupt:
            state = f"CORRUPT {len(corrupt)}/{row['files']} files"
        else:
            state = "ok (sha256 checked)"
        bad += bool(corrupt)
        print(f"{row['dataset']:24s} {state:28s} {row['where']}")
        for p in row["missing"][:5]:
            print(f"    missing: {p}")
        for p in corrupt[:5]:
            print(f"    sha256 mismatch: {p} (delete it; it is fetched again from the pinned URL)")
    return 1 if bad else 0


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser. The LM commands' flags are added only when ``argv`` names that command (lazy imports)."""
    p = argparse.ArgumentParser(
        prog="foresight", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
        sp.add_argument("--data-dir", default=None, help="folder holding dataset folders (before $FORESIGHT_DATA)")
        sp.add_argument("--no-progress", action="store_true", help="hide progress bars")
        sp.add_argument(
            "--threads",
            type=int,
            default=None,
            help="torch threads (default: the experiment's own default, else torch's)",
        )

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

    sp = sub.add_parser("reproduce", help="run every experiment and write one combined REPORT.md (resumable)")
    sp.add_argument("--scale", choices=SCALES, default="quick")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", default=None, help="folder (rerun the same command on it to continue)")
    sp.add_argument("--only", nargs="*", default=None, help="a subset of experiments")
    sp.add_argument("--jobs", type=int, default=1, help="experiments run at once, each in its own process")
    common(sp)
    sp.set_defaults(fn=_cmd_reproduce)

    sp = sub.add_parser("report", help="(re)write REPORT.md of a finished run")
    sp.add_argument("run_dir")
    sp.set_defaults(fn=_cmd_report)

    sp = sub.add_parser("data", help="where each dataset resolves, what is missing or corrupt (sha256)")
    sp.add_argument("--data-dir", default=None)
    sp.set_defaults(fn=_cmd_data)

    wanted = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, help in _LM_COMMANDS.items():
        sp = sub.add_parser(name, help=help)
        if name == wanted:
            _add_lm_command(name, sp)
    return p


def _add_lm_command(name: str, sp: argparse.ArgumentParser) -> None:
    """The LM commands live with their area (foresight.lm)."""
    import importlib

    if name == "generate":
        # import_module, not `from foresight.lm import generate`: the package re-exports a function of that name
        lm_generate = importlib.import_module("foresight.lm.generate")
        lm_generate.add_generate_arguments(sp)
        sp.set_defaults(fn=lm_generate.run_generate)
        return
    if name == "serve":
        from foresight.lm import serve

        serve.add_serve_arguments(sp)
        sp.set_defaults(fn=serve.run_serve)
        return
    from foresight.lm import train_cli

    if name == "train-lm":
        train_cli.add_train_arguments(sp)
        sp.set_defaults(fn=train_cli.run_train)
    else:
        train_cli.add_distill_arguments(sp)
        sp.set_defaults(fn=train_cli.run_distill)


def _error_line(e: BaseException) -> str:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, OSError) and e.filename is not None:
        msg = f"{e.strerror or type(e).__name__}: {e.filename}"
    msg = " ".join(str(msg).split()) or type(e).__name__
    return f"foresight: error: {msg}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        hint = f" (continue with: foresight run {args.experiment} --resume DIR)" if args.command == "run" else ""
        print(f"foresight: interrupted; rerun the same command to continue{hint}", file=sys.stderr)
        return 130
    except _LIBRARY_ERRORS as e:
        if os.environ.get("FORESIGHT_DEBUG"):
            raise
        print(_error_line(e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
