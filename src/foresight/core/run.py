"""A Run: one experiment's output folder, seed, device, metrics log, progress bars and checkpoints.

Layout of ``runs/<experiment>/<YYYYmmdd-HHMMSS>-<seed>/``::

    config.json      resolved config + experiment, scale, seed, device
    metrics.jsonl    one JSON object per logged step
    results.json     experiment, system, claim, scale, seed, verdict, metrics, wall_seconds, ...
    figures/*.png
    REPORT.md
    checkpoints/*.safetensors

Resuming: a run re-opened with :meth:`Run.resume` reads its ``config.json`` back; experiments call
:meth:`Run.load_checkpoint` and continue from where the last checkpoint left off. The checkpoint
remembers how many lines ``metrics.jsonl`` had, so lines written after it are dropped on resume and
the log ends exactly as an uninterrupted run's would.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from foresight.core.checkpoint import (
    atomic_write_text,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from foresight.core.config import Config

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(name: str | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when present, else CPU. Anything else is forced (and checked)."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r} asked for CUDA, but torch.cuda.is_available() is False")
    return device


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block; the previous count is restored on exit."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"thread count must be an int >= 1, got {n!r}")
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
        self.figures_dir = self.dir / "figures"
        self.checkpoint_dir = self.dir / "checkpoints"
        self.metrics_path = self.dir / "metrics.jsonl"
        self.started = time.time()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        experiment: str,
        config: Config,
        *,
        scale: str,
        seed: int = 0,
        out: str | os.PathLike | None = None,
        runs_root: str | os.PathLike = "runs",
        device: str | None = None,
        data_dir: str | None = None,
        progress: bool = True,
    ) -> Run:
        if out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = Path(runs_root) / experiment / f"{stamp}-{seed}"
        out = Path(out)
        if (out / "results.json").exists() or (out / "checkpoints").exists():
            raise FileExistsError(
                f"{out} already holds a run; use --resume {out} to continue it or choose another --out"
            )
        run = cls(
            out,
            experiment=experiment,
            config=config,
            scale=scale,
            seed=seed,
            device=select_device(device),
            data_dir=data_dir,
            progress=progress,
        )
        run.dir.mkdir(parents=True, exist_ok=True)
        run.figures_dir.mkdir(exist_ok=True)
        atomic_write_text(run.dir / "config.json", dumps(run._config_record()))
        run.metrics_path.write_text("")
        seed_everything(seed)
        return run

    @classmethod
    def resume(
        cls,
        dir: str | os.PathLike,
        config_cls: type[Config],
        *,
        device: str | None = None,
        data_dir: str | None = None,
        progress: bool = True,
    ) -> Run:
        dir = Path(dir)
        record_path = dir / "config.json"
        if not record_path.is_file():
            raise FileNotFoundError(f"cannot resume {dir}: no config.json there")
        record = json.loads(record_path.read_text())
        config = config_cls.from_dict(record["config"])
        run = cls(
            dir,
            experiment=record["experiment"],
            config=config,
            scale=record["scale"],
            seed=record["seed"],
            device=select_device(device or record.get("device")),
            data_dir=data_dir or record.get("data_dir"),
            progress=progress,
            resumed=True,
        )
        run.figures_dir.mkdir(exist_ok=True)
        seed_everything(run.seed)
        return run

    def _config_record(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "scale": self.scale,
            "seed": self.seed,
            "device": str(self.device),
            "data_dir": self.data_dir,
            "config": self.config.to_dict(),
            "torch": torch.__version__,
        }

    # -- logging ------------------------------------------------------------------------------
    def log(self, **metrics: Any) -> None:
        """Append one JSON line to metrics.jsonl (flushed, so a kill loses at most this line)."""
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics, default=_json_default) + "\n")
            f.flush()

    def metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def progress(self, iterable: Iterable[T], desc: str = "", total: int | None = None, **kw: Any) -> Iterator[T]:
        return iter(tqdm(iterable, desc=desc, total=total, disable=not self.show_progress, leave=False, **kw))

    def figure(self, name: str) -> Path:
        """Path for a figure (PNG) under figures/; the caller saves it there."""
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        return self.figures_dir / name

    def cpu_threads(self, n: int = 1) -> contextlib.AbstractContextManager[None]:
        """:func:`torch_threads` ``(n)`` when this run's device is the CPU, else nothing.

        For experiments with small models: one intra-op thread is faster than several for their small
        matrices, and on a shared CPU extra OpenMP threads spin-wait (measured 20x slower with 2 threads
        under load on the dev box, gemma2-distillation).
        """
        return torch_threads(n) if self.device.type == "cpu" else contextlib.nullcontext()

    # -- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        """Atomically save ``state`` plus RNG states and the metrics-log length under checkpoints/."""
        n_lines = len(self.metrics_path.read_text().splitlines()) if self.metrics_path.exists() else 0
        full = {"state": state, "rng": rng_state(), "metrics_lines": n_lines}
        save_checkpoint(self.checkpoint_dir / f"{name}.safetensors", full)

    def load_checkpoint(self, name: str) -> dict[str, Any] | None:
        """On a resumed run, restore RNG states and the metrics log and return the saved state."""
        path = self.checkpoint_dir / f"{name}.safetensors"
        if not self.resumed or not path.exists():
            return None
        full = load_checkpoint(path)
        set_rng_state(full["rng"])
        lines = self.metrics_path.read_text().splitlines() if self.metrics_path.exists() else []
        kept = lines[: full["metrics_lines"]]
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))
        return full["state"]

    @property
    def elapsed(self) -> float:
        return time.time() - self.started
