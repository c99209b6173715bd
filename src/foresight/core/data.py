"""Dataset resolution: ``--data-dir``, then ``$FORESIGHT_DATA``, then the user cache, then a pinned download.

A dataset is a folder of files (``<root>/<name>/<relative path>``) described by a
:class:`DatasetSpec`: for every file, the public URL it comes from and its sha256. ``resolve``
returns the first root that holds every requested file; if none does, it downloads the missing
files into the user cache and checks their hashes. Offline, it fails with a message that says which
files to put where.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from foresight.core.checkpoint import atomic_write_bytes

ENV_DATA = "FORESIGHT_DATA"
ENV_OFFLINE = "FORESIGHT_OFFLINE"


class DataNotFoundError(FileNotFoundError):
    """A dataset could not be found locally nor downloaded."""


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to the dataset folder, e.g. "splits/texas_split_0.6_0.2_0.npz"
    url: str  # public, pinned (commit-addressed) URL
    sha256: str


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # folder name under a data root, e.g. "geom-gcn"
    files: tuple[RemoteFile, ...]
    source: str  # where it comes from (repository @ commit), one line
    license: str

    def file(self, path: str) -> RemoteFile:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(f"dataset {self.name!r} has no file {path!r}")


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    _DATASETS[spec.name] = spec
    return spec


def datasets() -> dict[str, DatasetSpec]:
    return dict(_DATASETS)


def get_dataset(name: str) -> DatasetSpec:
    if name not in _DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(_DATASETS))}")
    return _DATASETS[name]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "foresight"


def candidate_roots(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The data roots searched, in order, each with the reason it is searched."""
    roots: list[tuple[str, Path]] = []
    if data_dir:
        roots.append(("--data-dir", Path(data_dir)))
    if os.environ.get(ENV_DATA):
        roots.append((f"${ENV_DATA}", Path(os.environ[ENV_DATA])))
    roots.append(("user cache", cache_root()))
    return roots


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def locate(spec: DatasetSpec, paths: Iterable[str], data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first root holding every file in ``paths`` for ``spec``, or None."""
    paths = list(paths)
    for _, root in candidate_roots(data_dir):
        folder = root / spec.name
        if all((folder / p).is_file() for p in paths):
            return folder
    return None


def _download(f: RemoteFile, dest: Path) -> None:
    def write(tmp: str) -> None:
        with urllib.request.urlopen(f.url, timeout=30) as r, open(tmp, "wb") as out:
            shutil.copyfileobj(r, out)
        got = sha256_file(tmp)
        if got != f.sha256:
            raise DataNotFoundError(f"sha256 mismatch for {f.url}: expected {f.sha256}, got {got}")

    atomic_write_bytes(dest, write)


def resolve(name: str, paths: Iterable[str] | None = None, data_dir: str | os.PathLike | None = None) -> Path:
    """Return the folder holding ``paths`` (default: all files) of dataset ``name``, downloading if needed."""
    spec = get_dataset(name)
    paths = [f.path for f in spec.files] if paths is None else list(paths)
    for p in paths:
        spec.file(p)  # unknown file names are programming errors: fail loudly
    found = locate(spec, paths, data_dir)
    if found is not None:
        return found
    folder = cache_root() / spec.name
    missing = [p for p in paths if not (folder / p).is_file()]
    if os.environ.get(ENV_OFFLINE, "") not in ("", "0"):
        raise DataNotFoundError(_missing_message(spec, missing, data_dir, f"${ENV_OFFLINE} is set"))
    try:
        for p in missing:
            _download(spec.file(p), folder / p)
    except (OSError, DataNotFoundError) as e:
        raise DataNotFoundError(_missing_message(spec, missing, data_dir, str(e))) from e
    return folder


def _missing_message(spec: DatasetSpec, missing: list[str], data_dir: object, why: str) -> str:
    roots = "\n".join(f"  - {reason}: {root / spec.name}" for reason, root in candidate_roots(data_dir))
    files = "\n".join(f"  - {p}  <- {spec.file(p).url}" for p in missing[:10])
    more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
    return (
        f"dataset {spec.name!r} not found and could not be downloaded ({why}).\n"
        f"Searched these folders:\n{roots}\n"
        f"Put these files (relative to one of those folders) there, or pass --data-dir DIR "
        f"(or set ${ENV_DATA}) to a folder holding '{spec.name}/':\n{files}{more}\n"
        f"Source: {spec.source}"
    )


def status(data_dir: str | os.PathLike | None = None) -> list[dict[str, object]]:
    """Where each registered dataset resolves now (no download), and what is missing."""
    rows = []
    for spec in sorted(_DATASETS.values(), key=lambda s: s.name):
        paths = [f.path for f in spec.files]
        folder = locate(spec, paths, data_dir)
        if folder is None:
            # report the most complete candidate
            best = max(
                (root / spec.name for _, root in candidate_roots(data_dir)),
                key=lambda d: sum((d / p).is_file() for p in paths),
            )
            missing = [p for p in paths if not (best / p).is_file()]
            rows.append({"dataset": spec.name, "where": str(best), "missing": missing, "files": len(paths)})
        else:
            rows.append({"dataset": spec.name, "where": str(folder), "missing": [], "files": len(paths)})
    return rows
