"""Files a run owns: atomic writes, the run-folder marker, the writer's lock, temp-file sweeping.

Nothing here imports torch, so the CLI can check a folder before paying for the ML stack.

A run folder carries ``foresight-run.json`` (the *marker*)::

    {"owner": "halfhop-ssl", "state": "running" | "finished", "record": {...}, "created_at": "..."}

``owner`` is the experiment name (or ``train-lm`` / ``distill`` / ``reproduce``); ``record`` is what the run
was started with (its config), so a resume can tell a hand-edited ``config.json`` from the real one. Only
:func:`claim` writes into a folder, and it refuses any folder that is not empty and not this owner's
unfinished run, so a typo in ``--out`` never overwrites an HF model folder, another experiment's run or
finished results. While a process writes a folder it holds an ``fcntl`` lock on ``.lock`` there: a second
writer fails at once instead of interleaving checkpoints.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = "foresight-run.json"
LOCK = ".lock"
_TMP_SUFFIX = ".tmp"  # atomic writes go through ".<name>.<random>.tmp" beside the target


class RunFolderError(ValueError):
    """A run folder cannot be used as asked (not ours, finished, in use, not a folder)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)``, fsync, and rename ``tmp_path`` over ``path``.

    A reader sees the old file or the new one, never half of each, whenever the writer is killed. The
    file gets the permissions a plain ``open(path, "w")`` would give (mkstemp's 0600 is reset).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)  # fsync the directory so the rename survives a crash
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write_bytes(path, write)


def sweep_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files a killed atomic write left under ``folder``; return them."""
    swept = []
    for p in Path(folder).rglob(f".*{_TMP_SUFFIX}"):
        if p.is_file():
            p.unlink()
            swept.append(p)
    return swept


def read_marker(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's marker, or None when it has none. A marker that is not ours is an error."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunFolderError(f"{path} is unreadable ({e}); not touching {folder}") from None
    if not (
        isinstance(marker, dict)
        and isinstance(marker.get("owner"), str)
        and marker.get("state") in ("running", "finished")
    ):
        raise RunFolderError(f"{path} is not a foresight run marker (needs owner and state); not touching {folder}")
    return marker


def _describe(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(names[:5]) + (f", ... ({len(names)} entries)" if len(names) > 5 else "")
    return shown


def check_out_path(out: str | os.PathLike) -> Path:
    """``out`` as a Path, refusing an empty string and anything that exists but is not a folder."""
    if str(out).strip() == "":
        raise RunFolderError("--out '' is not a folder; give a path such as runs/my-run")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"--out {str(path)!r} exists and is not a folder; pick a folder path")
    return path


class FolderLock:
    """An exclusive ``fcntl.flock`` on ``folder/.lock`` (released by :meth:`release` or process exit)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._fd: int | None = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode("ascii", "replace").strip() or "?"
            os.close(self._fd)
            self._fd = None
            raise RunFolderError(
                f"{folder} is in use by another foresight process (pid {holder}); "
                "wait for it to finish or pick another --out"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()


def claim(
    out: str | os.PathLike,
    owner: str,
    *,
    resume: bool,
    record: dict[str, Any] | None = None,
    allow_finished: bool = False,
) -> FolderLock:
    """Take ``out`` for writing as ``owner``; return the held lock.

    New (``resume=False``): ``out`` must be missing or empty; it gets a fresh marker holding ``record``.
    Resume: ``out`` must hold ``owner``'s run, unfinished unless ``allow_finished``; temp files a killed
    write left there are swept. Anything else is a :class:`RunFolderError` saying what is there and what
    to do, and nothing in the folder is changed.
    """
    folder = check_out_path(out)
    marker = read_marker(folder) if folder.is_dir() else None
    if not resume:
        if folder.is_dir() and any(folder.iterdir()):
            if marker is None:
                raise RunFolderError(
                    f"--out {folder} is not empty and is not a foresight run folder (it holds {_describe(folder)}); "
                    "nothing was changed; pick another --out"
                )
            if marker["owner"] != owner:
                raise RunFolderError(
                    f"--out {folder} holds a run of {marker['owner']!r}, not {owner!r}; pick another --out"
                )
            if marker["state"] == "finished":
                raise RunFolderError(
                    f"--out {folder} holds a finished {owner} run (its results are kept); pick another --out"
                )
            raise RunFolderError(
                f"--out {folder} holds an unfinished {owner} run; continue it with --resume {folder} "
                "or pick another --out"
            )
        folder.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(folder)
        if any(p.name != LOCK for p in folder.iterdir()):  # another process got here first
            lock.release()
            raise RunFolderError(f"--out {folder} was filled by another process meanwhile; pick another --out")
        write_marker(folder, owner, "running", record or {})
        return lock
    if not folder.is_dir():
        raise RunFolderError(f"cannot resume {folder}: no such folder")
    if marker is None:
        raise RunFolderError(f"cannot resume {folder}: it is not a foresight run folder (no {MARKER})")
    if marker["owner"] != owner:
        raise RunFolderError(f"cannot resume {folder}: it is a run of {marker['owner']!r}, not {owner!r}")
    if marker["state"] == "finished" and not allow_finished:
        raise RunFolderError(f"{folder} holds a finished {owner} run; nothing to resume (pick another --out)")
    lock = FolderLock(folder)
    sweep_temp_files(folder)
    return lock


def write_marker(
    folder: str | os.PathLike, owner: str, state: str, record: dict[str, Any], seconds: float = 0.0
) -> None:
    marker = {
        "owner": owner,
        "state": state,
        "record": record,
        "seconds": seconds,  # wall time of the sessions that worked on this folder, summed
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_text(Path(folder) / MARKER, json.dumps(marker, indent=2, default=str))


def add_seconds(folder: str | os.PathLike, seconds: float) -> float:
    """Add one session's wall time to the marker's total (a SIGKILLed session's time is lost); return it."""
    marker = read_marker(folder)
    if marker is None:
        raise RunFolderError(f"{folder} has no {MARKER}")
    total = float(marker.get("seconds", 0.0)) + seconds
    write_marker(folder, marker["owner"], marker["state"], marker.get("record", {}), total)
    return total


def set_state(folder: str | os.PathLike, state: str) -> None:
    """Mark the run ``running`` (again, e.g. when a finished LM run is extended) or ``finished``."""
    marker = read_marker(folder)
    if marker is None:
        raise RunFolderError(f"{folder} has no {MARKER}")
    write_marker(folder, marker["owner"], state, marker.get("record", {}), float(marker.get("seconds", 0.0)))
