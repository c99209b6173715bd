"""A Run: one experiment's output folder, seed, device, metrics log, phases and checkpoints.

Layout of ``runs/<experiment>/<YYYYmmdd-HHMMSS>-<seed>/``::

    foresight-run.json   owner (experiment), state (running/finished), the config it started with
    config.json          resolved config + experiment, scale, seed, device
    metrics.jsonl        one JSON object per logged step
    results.json         experiment, system, claim, scale, seed, verdict, metrics, wall_seconds, ...
    figures/*.png
    REPORT.md
    checkpoints/*.safetensors

The unit of work is a *phase* (:meth:`Run.phase`: a function run once, its result checkpointed) or a
*sweep* (:meth:`Run.sweep`: one function over named cells, checkpointed after every cell). Call them in
the same order on every (re)start: a finished phase is read back, not rerun; an unfinished one continues
from its last checkpoint (RNG states restored, ``metrics.jsonl`` trimmed to it), so a resumed run logs and
computes exactly what an uninterrupted one does. Seeds come from :meth:`Run.seed_for` / :meth:`Run.generator`:
the run seed and a stage name, never ad-hoc offsets.

Folders are owned (:mod:`foresight.core.fs`): a run only writes into an empty folder or its own unfinished
run, holds a lock while it writes, and a resume checks ``config.json`` against what the run started with
and against every checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from foresight.core import fs
from foresight.core.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from foresight.core.config import Config

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(seed: int, stage: str) -> int:
    """A 63-bit seed from a run seed and a stage name (``"teacher"``, ``"arm=rnd/seed=3"``, ...).

    Stages get independent streams whatever order they run in, and adding a stage changes no other's.
    """
    digest = hashlib.sha256(f"{int(seed)}/{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def select_device(name: str | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when present, else CPU. Anything else is forced (and checked)."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name!r} is not a device; expected cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name!r} is not supported; expected cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r} asked for CUDA, but this machine has none (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def check_threads(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"--threads must be an int >= 1, got {n!r}")
    return n


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block (None: unchanged); the previous count is restored.

    The one place threads are set: the CLI wraps a whole experiment in it with ``--threads`` or, failing
    that, the experiment's declared default (small models run faster on one intra-op thread, and on a
    shared CPU extra OpenMP threads spin-wait).
    """
    if n is None:
        yield
        return
    check_threads(n)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.item() if o.numel() == 1 else o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, indent=2, sort_keys=False)


def _diff(old: dict[str, Any], new: dict[str, Any], ignore: Sequence[str] = ()) -> list[str]:
    """``"key: old -> new"`` for every key whose value differs, except those in ``ignore``."""
    keys = sorted((set(old) | set(new)) - set(ignore))
    return [
        f"{k}: {old.get(k, '<missing>')!r} -> {new.get(k, '<missing>')!r}" for k in keys if old.get(k) != new.get(k)
    ]


class Run:
    """Records one experiment run. Create with :meth:`create` or :meth:`resume`."""

    def __init__(
        self,
        dir: Path,
        *,
        experiment: str,
        config: Config,
        scale: str,
        seed: int,
        device: torch.device,
        data_dir: str | None = None,
        progress: bool = True,
        resumed: bool = False,
        main: bool = True,
        may_change: Sequence[str] = (),
    ) -> None:
        self.dir = Path(dir)
        self.experiment = experiment
        self.config = config
        self.scale = scale
        self.seed = seed
        self.device = device
        self.data_dir = data_dir
        self.show_progress = progress
        self.resumed = resumed
        self.main = main  # rank 0 of a torchrun launch (or the only process): the one that writes
        self.may_change = tuple(may_change)  # config fields a resume may change (checkpoints don't pin them)
        self.figures_dir = self.dir / "figures"
        self.checkpoint_dir = self.dir / "checkpoints"
        self.metrics_path = self.dir / "metrics.jsonl"
        self.started = time.time()
        self._lock: fs.FolderLock | None = None
        self._finished_lines = 0  # metrics.jsonl length when the last finished phase ended
        self._trim_to: int | None = None  # metrics.jsonl lines to keep, applied at the next write
        self.extra: dict[str, Any] = {}  # recorded in config.json beside the config (train-lm: model, data)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        experiment: str,
        config: Config,
        *,
        scale: str = "custom",
        seed: int = 0,
        out: str | os.PathLike | None = None,
        runs_root: str | os.PathLike = "runs",
        device: str | None = None,
        data_dir: str | None = None,
        progress: bool = True,
        main: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> Run:
        """A new run in ``out`` (missing or empty; default ``runs/<experiment>/<time>-<seed>``)."""
        if out is None:
            out = Path(runs_root) / experiment / f"{time.strftime('%Y%m%d-%H%M%S')}-{seed}"
        out = fs.check_out_path(out)
        run = cls(
            out,
            experiment=experiment,
            config=config,
            scale=scale,
            seed=seed,
            device=select_device(device),
            data_dir=data_dir,
            progress=progress,
            main=main,
        )
        run.extra = dict(extra or {})
        if main:
            run._lock = fs.claim(out, experiment, resume=False, record=run._config_record())
            run.figures_dir.mkdir(exist_ok=True)
            fs.atomic_write_text(run.dir / "config.json", dumps(run._config_record()))
            run.metrics_path.write_text("")
        seed_everything(seed)
        return run

    @classmethod
    def resume(
        cls,
        dir: str | os.PathLike,
        config_cls: type[Config],
        *,
        experiment: str | None = None,
        device: str | None = None,
        data_dir: str | None = None,
        progress: bool = True,
        main: bool = True,
        config: Config | None = None,
        may_change: Sequence[str] = (),
        allow_finished: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> Run:
        """Re-open ``dir`` to continue it.

        ``config.json`` is parsed as strictly as ``--set`` and must equal the config the run started with
        (a hand edit is refused naming the fields). ``config`` (train-lm: built from the command line)
        replaces it where only ``may_change`` fields differ; checkpoints are checked the same way on load.
        """
        folder = fs.check_out_path(dir)
        marker = fs.read_marker(folder) if folder.is_dir() else None
        owner = experiment or (marker or {}).get("owner")
        if owner is None:
            raise fs.RunFolderError(f"cannot resume {folder}: it is not a foresight run folder (no {fs.MARKER})")
        lock = fs.claim(folder, owner, resume=True, allow_finished=allow_finished) if main else None
        try:
            record_path = folder / "config.json"
            try:
                record = json.loads(record_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"cannot resume {folder}: config.json is unreadable ({e})") from None
            if not isinstance(record, dict):
                raise ValueError(
                    f"cannot resume {folder}: config.json must be a JSON object, not {type(record).__name__}"
                )
            for key, tp in (("experiment", str), ("scale", str), ("seed", int), ("config", dict)):
                if not isinstance(record.get(key), tp) or isinstance(record.get(key), bool):
                    raise ValueError(
                        f"cannot resume {folder}: config.json field {key!r} is missing or not a {tp.__name__}"
                    )
            saved = config_cls.from_dict(record["config"], where=f"{record_path}")
            started = (marker or {}).get("record", {}).get("config")
            if started is not None and main:
                started_cfg = config_cls.from_dict(started, where=f"{folder / fs.MARKER}")
                changed = _diff(started_cfg.to_dict(), saved.to_dict())
                if changed:
                    raise ValueError(
                        f"cannot resume {folder}: config.json differs from the config the run started with "
                        f"({'; '.join(changed)}); restore it or start a new run"
                    )
            if config is not None:
                changed = _diff(saved.to_dict(), config.to_dict(), ignore=may_change)
                if changed:
                    raise ValueError(f"cannot resume {folder} with a different config ({'; '.join(changed)})")
            run = cls(
                folder,
                experiment=record["experiment"],
                config=config or saved,
                scale=record["scale"],
                seed=record["seed"],
                device=select_device(device or record.get("device")),
                data_dir=data_dir or record.get("data_dir"),
                progress=progress,
                resumed=True,
                main=main,
                may_change=may_change,
            )
            run.extra = dict(extra if extra is not None else record.get("extra", {}))
        except Exception:
            if lock is not None:
                lock.release()
            raise
        run._lock = lock
        if main:
            if config is not None:  # the (allowed) new config is what the run continues with
                fs.atomic_write_text(folder / "config.json", dumps(run._config_record()))
                fs.write_marker(folder, run.experiment, "running", run._config_record())
            run.figures_dir.mkdir(exist_ok=True)
        seed_everything(run.seed)
        return run

    def _config_record(self) -> dict[str, Any]:
        record = {
            "experiment": self.experiment,
            "scale": self.scale,
            "seed": self.seed,
            "device": str(self.device),
            "data_dir": self.data_dir,
            "config": self.config.to_dict(),
            "torch": torch.__version__,
        }
        if self.extra:
            record["extra"] = self.extra
        return record

    def finish(self) -> None:
        """Mark the folder finished (a later ``run`` refuses it, ``reproduce`` keeps it) and unlock it."""
        if self.main:
            self._apply_trim()
            fs.set_state(self.dir, "finished")
        self.close()

    @property
    def holds_folder(self) -> bool:
        """True while this process holds the folder's lock (between create/resume and finish/close)."""
        return self._lock is not None

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- seeds --------------------------------------------------------------------------------
    def seed_for(self, stage: str) -> int:
        """The seed of ``stage`` (see :func:`derive_seed`): for env seeds and ``seed_everything``."""
        return derive_seed(self.seed, stage)

    def generator(self, stage: str, device: str | torch.device = "cpu") -> torch.Generator:
        """A torch Generator seeded for ``stage``."""
        return torch.Generator(device=device).manual_seed(self.seed_for(stage))

    def rng(self, stage: str) -> np.random.Generator:
        """A NumPy Generator seeded for ``stage``."""
        return np.random.default_rng(self.seed_for(stage))

    # -- logging ------------------------------------------------------------------------------
    def log(self, **metrics: Any) -> None:
        """Append one JSON line to metrics.jsonl (flushed, so a kill loses at most this line)."""
        if not self.main:
            return
        self._apply_trim()
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics, default=_json_default) + "\n")
            f.flush()

    def metrics(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._metrics_lines() if line.strip()]

    def _metrics_lines(self) -> list[str]:
        lines = self.metrics_path.read_text().splitlines() if self.metrics_path.exists() else []
        return lines if self._trim_to is None else lines[: self._trim_to]

    def _trim_metrics(self, n: int) -> None:
        """Keep the first ``n`` lines of metrics.jsonl, applied at the next write.

        Lazily, because resume loads nest: a sweep's checkpoint (n lines) and then the checkpoint of the cell
        it was in (more lines, logged inside that cell) - the last load decides what is kept.
        """
        self._trim_to = n

    def _apply_trim(self) -> None:
        if self._trim_to is not None and self.main:
            kept = self._metrics_lines()
            fs.atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))
        self._trim_to = None

    def progress(self, iterable: Iterable[T], desc: str = "", total: int | None = None, **kw: Any) -> Iterator[T]:
        return iter(tqdm(iterable, desc=desc, total=total, disable=not self.show_progress, leave=False, **kw))

    def figure(self, name: str) -> Path:
        """Path for a figure (PNG) under figures/; the caller saves it there."""
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        return self.figures_dir / name

    # -- checkpoints --------------------------------------------------------------------------
    def _checkpoint_path(self, name: str) -> Path:
        return self.checkpoint_dir / f"{name}.safetensors"

    def save_checkpoint(self, name: str, state: dict[str, Any], *, done: bool = False) -> None:
        """Atomically save ``state`` with the RNG states, the metrics-log length and this run's config."""
        if not self.main:
            return
        self._apply_trim()
        full = {
            "state": state,
            "rng": rng_state(),
            "metrics_lines": len(self._metrics_lines()),
            "done": done,
            "config": self.config.to_dict(),
        }
        save_checkpoint(self._checkpoint_path(name), full)

    def _read(self, name: str) -> dict[str, Any] | None:
        path = self._checkpoint_path(name)
        if not path.exists():
            return None
        full = load_checkpoint(path)
        for key in ("state", "rng", "metrics_lines", "done", "config"):
            if key not in full:
                raise CheckpointError(f"checkpoint {path} lacks {key!r}; it was not written by this version")
        changed = _diff(full["config"], self.config.to_dict(), ignore=self.may_change)
        if changed:
            raise CheckpointError(
                f"checkpoint {path} was written with another config ({'; '.join(changed)}); "
                "resume with the config it was written with"
            )
        return full

    def has_checkpoint(self, name: str) -> bool:
        return self._checkpoint_path(name).exists()

    def peek_checkpoint(self, name: str) -> dict[str, Any] | None:
        """The saved state of ``name`` without side effects (no RNG restore, no trimming), or None."""
        full = self._read(name)
        return None if full is None else full["state"]

    def load_checkpoint(self, name: str) -> dict[str, Any] | None:
        """On a resumed run, restore RNG states, trim metrics.jsonl to the checkpoint, return its state."""
        if not self.resumed:
            return None
        full = self._read(name)
        if full is None:
            return None
        set_rng_state(full["rng"])
        self._trim_metrics(full["metrics_lines"])
        return full["state"]

    # -- phases -------------------------------------------------------------------------------
    def finished_phase(self, name: str) -> dict[str, Any] | None:
        """The result of phase ``name`` if it finished (restoring the RNG it ended with), else None."""
        full = self._read(name) if self.resumed else None
        if full is None or not full["done"]:
            return None
        set_rng_state(full["rng"])
        self._finished_lines = full["metrics_lines"]
        return full["state"]

    def start_phase(self) -> None:
        """Drop the metrics lines an interrupted, checkpoint-less phase logged (resumed runs only)."""
        if self.resumed:
            self._trim_metrics(self._finished_lines)

    def end_phase(self) -> None:
        self._apply_trim()
        self._finished_lines = len(self._metrics_lines())

    def phase(self, name: str, fn: Callable[[], T]) -> T:
        """``fn()`` run once: its (checkpointable) result is saved as ``name`` and read back on resume."""
        done = self.finished_phase(name)
        if done is not None:
            return done["result"]
        self.start_phase()
        result = fn()
        self.save_checkpoint(name, {"result": result}, done=True)
        self.end_phase()
        return result

    def sweep(self, name: str, cells: Iterable[str], fn: Callable[[str], T], desc: str | None = None) -> dict[str, T]:
        """``{cell: fn(cell)}``, checkpointed after every cell: a killed sweep continues at the next one.

        Cells are strings (e.g. ``"texas/gcn/split=3"``); seed each from ``run.generator(cell)`` so it does
        not depend on which cells ran before it in this process.
        """
        cells = list(cells)
        if len(set(cells)) != len(cells):
            raise ValueError(f"sweep {name!r} has repeated cells")
        done = self.finished_phase(name)
        if done is not None:
            return done["cells"]
        partial = self.load_checkpoint(name)
        if partial is None:
            self.start_phase()
        results: dict[str, T] = dict(partial["cells"]) if partial else {}
        todo = [c for c in cells if c not in results]
        for cell in self.progress(todo, desc=desc or name, total=len(cells), initial=len(cells) - len(todo)):
            results[cell] = fn(cell)
            self.save_checkpoint(name, {"cells": results}, done=len(results) == len(cells))
        if not todo:
            self.save_checkpoint(name, {"cells": results}, done=True)
        self.end_phase()
        return {c: results[c] for c in cells}

    @property
    def elapsed(self) -> float:
        return time.time() - self.started
