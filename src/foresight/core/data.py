"""Dataset resolution: ``--data-dir``, then ``$FORESIGHT_DATA``, then the user cache, then a pinned download.

A dataset is a folder of files (``<root>/<name>/<relative path>``) described by a
:class:`DatasetSpec`: for every file, the public URL it comes from and its sha256. ``resolve``
returns the first root that holds every requested file; if none does, it downloads the missing
files into the user cache and checks their hashes. Offline, it fails with a message that says which
files to put where.

``status`` verifies every present file against its pinned sha256. Legacy data files that are pickles
(Planetoid's ``ind.*``, MABe's object-array ``.npy``) are read with :class:`RestrictedUnpickler`, which
builds inert placeholders instead of calling anything a file names (see "Reading legacy pickles" below).
"""

from __future__ import annotations

import collections
import hashlib
import math
import os
import pickle
import re
import shutil
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from foresight.core.fs import atomic_write_bytes

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


# sha256 of files already hashed in this process, keyed by (path, device, inode, size, mtime_ns), so that repeated
# status() calls re-hash only files that changed (a file replaced by a rename gets a new inode). An edit within one filesystem clock tick (a few ms) of the last
# hash could keep its mtime: acceptable for a report, and loaders hash the bytes they read (uncached) anyway.
# Memory only, so nothing on disk can vouch for a file.
_HASH_CACHE: dict[tuple[str, int, int, int, int], str] = {}


def _cached_sha256(path: Path) -> str:
    st = path.stat()
    key = (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = sha256_file(path)
    return _HASH_CACHE[key]


def _manifest_sha256(folder: Path, paths: list[str]) -> str:
    """sha256 of ``"".join(f"{name} {sha256(file)}\\n")`` over ``paths`` sorted, ``name`` the file's base name."""
    lines = "".join(f"{Path(p).name} {_cached_sha256(folder / p)}\n" for p in sorted(paths))
    return hashlib.sha256(lines.encode()).hexdigest()


def _corrupt(spec: DatasetSpec, folder: Path) -> list[str]:
    """Files of ``spec`` present in ``folder`` whose sha256 differs from the pinned one (unpinned files pass).

    A sha256 pinned on several files that all differ from it may be the digest of their manifest (see
    :func:`_manifest_sha256`; fsdd pins its 3000 recordings that way): such a group passes when its manifest
    matches, and every file of it is flagged when it does not (a manifest cannot say which file changed).
    With a file of the group missing, the manifest cannot be checked, so its present files are not flagged
    (the dataset already shows as incomplete through ``missing``).
    """
    mismatched: dict[str, list[str]] = {}  # pinned sha256 -> present files that do not hash to it
    for f in spec.files:
        p = folder / f.path
        if not f.sha256 or not p.is_file():
            continue
        try:
            ok = _cached_sha256(p) == f.sha256.lower()
        except OSError:  # present but unreadable: it cannot be verified, so it is not trusted either
            ok = False
        if not ok:
            mismatched.setdefault(f.sha256, []).append(f.path)
    groups: dict[str, list[str]] = {}
    for f in spec.files:
        groups.setdefault(f.sha256, []).append(f.path)
    bad: set[str] = set()
    for pinned, paths in mismatched.items():
        group = groups[pinned]
        present = [p for p in group if (folder / p).is_file()]
        if len(group) > 1 and len(paths) == len(present):  # no present member matches: perhaps a manifest digest
            if len(present) < len(group):
                continue
            try:
                if _manifest_sha256(folder, group) == pinned.lower():
                    continue
            except OSError:
                pass
        bad.update(paths)
    return [f.path for f in spec.files if f.path in bad]


def status(data_dir: str | os.PathLike | None = None) -> list[dict[str, object]]:
    """Where each registered dataset resolves now (no download), what is missing and what fails its sha256.

    One row per dataset: ``dataset`` (name), ``where`` (the folder it resolves to, or the most complete
    candidate), ``files`` (number of files in the spec), ``missing`` (relative paths absent there) and
    ``corrupt`` (relative paths present there whose sha256 is not the pinned one). A file's hash is kept in
    memory per (path, size, mtime_ns), so a second call only re-hashes files that changed.
    """
    rows = []
    for spec in sorted(_DATASETS.values(), key=lambda s: s.name):
        paths = [f.path for f in spec.files]
        folder = locate(spec, paths, data_dir)
        if folder is None:
            # report the most complete candidate
            folder = max(
                (root / spec.name for _, root in candidate_roots(data_dir)),
                key=lambda d: sum((d / p).is_file() for p in paths),
            )
        missing = [p for p in paths if not (folder / p).is_file()]
        rows.append(
            {
                "dataset": spec.name,
                "where": str(folder),
                "missing": missing,
                "corrupt": _corrupt(spec, folder),
                "files": len(paths),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# Reading legacy pickles without running them
# ---------------------------------------------------------------------------------------------
# A pickle is a program: GLOBAL names any importable object, REDUCE / NEWOBJ call it, BUILD runs
# ``__setstate__`` or setattr on whatever is on the stack (a class object included, which monkey-patches it
# for the whole process). RestrictedUnpickler keeps the opcodes that only build lists, dicts, tuples and
# scalars, and gives every allowed global an inert stand-in: a numpy array or a scipy matrix becomes a
# placeholder holding its pickled state, and only the caller, after validating that state, turns it into a
# real object through the library's public constructors. Nothing a file names is ever called.


class _Placeholder:
    """Base of what a restricted pickle may construct: a holder for one BUILD state and nothing else."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: Any = None

    def set_state(self, state: Any) -> None:
        if self.state is not None:
            raise pickle.UnpicklingError(f"a second BUILD on one {type(self).__name__}")
        self.state = state


class PickledArray(_Placeholder):
    """A ``numpy.ndarray`` pickle (``_reconstruct`` + BUILD): :func:`decode_array` validates it into an array."""

    __slots__ = ()


class PickledDtype(_Placeholder):
    """A ``numpy.dtype(code, align, copy)`` pickle; only the type codes of :data:`_DTYPE_CODE` are accepted."""

    __slots__ = ("code",)

    def __init__(self, code: str) -> None:
        super().__init__()
        self.code = code


class PickledInstance(_Placeholder):
    """Base of stand-ins for an allowed class built with NEWOBJ (e.g. a scipy matrix); its state is a dict."""

    __slots__ = ()


@dataclass(frozen=True)
class SafeCall:
    """An allowed REDUCE target: our own function, which checks its arguments before building anything."""

    name: str
    fn: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


class _Named:
    """A global that may appear in a pickle only as an argument (``numpy.ndarray``), never be called."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<pickle global {self.name}>"


NDARRAY = _Named("numpy.ndarray")
_DTYPE_CODE = re.compile(r"b1|[iu][1248]|f[248]|c(8|16)|U[1-9][0-9]{0,5}|O[48]")


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> PickledArray:
    # numpy pickles every array as _reconstruct(ndarray, (0,), b"b") followed by BUILD(state)
    if cls is not NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise pickle.UnpicklingError(f"numpy _reconstruct called with unexpected arguments {cls!r}, {shape!r}")
    return PickledArray()


def _dtype(code: Any, align: Any = False, copy: Any = True) -> PickledDtype:
    if type(code) is not str or not _DTYPE_CODE.fullmatch(code):
        raise pickle.UnpicklingError(f"numpy dtype {code!r} is not allowed; expected a plain numeric or unicode code")
    return PickledDtype(code)


NUMPY_RECONSTRUCT = SafeCall("numpy.core.multiarray._reconstruct", _reconstruct)
NUMPY_DTYPE = SafeCall("numpy.dtype", _dtype)
# what numpy 1.x (``numpy.core``) and 2.x (``numpy._core``) write for an array
NUMPY_ARRAY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): NUMPY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): NUMPY_RECONSTRUCT,
    ("numpy", "ndarray"): NDARRAY,
    ("numpy", "dtype"): NUMPY_DTYPE,
}


def _refuse(opcode: str) -> Callable[[pickle._Unpickler], None]:
    def load(self: pickle._Unpickler) -> None:
        raise pickle.UnpicklingError(f"pickle opcode {opcode} is not allowed in a data file")

    return load


class RestrictedUnpickler(pickle._Unpickler):
    """A pickle reader that resolves only ``allowed`` globals and calls only our own checked stand-ins.

    ``allowed`` maps ``(module, name)`` to what GLOBAL pushes: a :class:`SafeCall` (the only REDUCE
    targets), a :class:`PickledInstance` subclass (the only NEWOBJ targets, with no arguments) or a plain
    value usable only as an argument. BUILD is accepted only on a placeholder instance, never on a class or
    any other object; APPEND(S) / SETITEM(S) / ADDITEMS only on a plain list / dict / set; INST, OBJ,
    NEWOBJ_EX, EXT* and persistent ids are refused. Everything refused raises ``pickle.UnpicklingError``.
    Built on the pure-Python unpickler because the C one cannot have single opcodes replaced.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: IO[bytes], allowed: Mapping[tuple[str, str], Any], *, what: str, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._allowed = dict(allowed)
        self._what = what

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} from {self._what}; "
                f"allowed: {sorted(f'{m}.{n}' for m, n in self._allowed)}"
            )
        return self._allowed[(module, name)]

    def load(self) -> Any:
        try:
            return super().load()
        except pickle.UnpicklingError:
            raise
        except (AttributeError, EOFError, IndexError, KeyError, TypeError, ValueError, UnicodeError) as e:
            raise pickle.UnpicklingError(f"malformed pickle in {self._what}: {type(e).__name__}: {e}") from e

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if type(func) is not SafeCall or type(args) is not tuple:
            raise pickle.UnpicklingError(f"refusing to call {func!r} while reading {self._what}")
        self.stack[-1] = func(*args)

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if not (isinstance(cls, type) and issubclass(cls, PickledInstance)) or args != ():
            raise pickle.UnpicklingError(f"refusing to construct {cls!r} while reading {self._what}")
        self.append(cls())

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        # isinstance on a class object is False, so a BUILD aimed at a class (monkey-patching it) lands here
        if not isinstance(inst, _Placeholder):
            raise pickle.UnpicklingError(f"refusing to set state on {inst!r} while reading {self._what}")
        inst.set_state(state)

    def _container(self, types: tuple[type, ...], opcode: str) -> Any:
        target = self.stack[-1]
        if type(target) not in types:
            raise pickle.UnpicklingError(f"{opcode} on a {type(target).__name__} while reading {self._what}")
        return target

    def _load_append(self) -> None:
        value = self.stack.pop()
        self._container((list,), "APPEND").append(value)

    def _load_appends(self) -> None:
        items = self.pop_mark()
        self._container((list,), "APPENDS").extend(items)

    def _load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._container((dict, collections.defaultdict), "SETITEM")[key] = value

    def _load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._container((dict, collections.defaultdict), "SETITEMS")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _load_additems(self) -> None:
        items = self.pop_mark()
        self._container((set,), "ADDITEMS").update(items)

    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.APPEND[0]] = _load_append
    dispatch[pickle.APPENDS[0]] = _load_appends
    dispatch[pickle.SETITEM[0]] = _load_setitem
    dispatch[pickle.SETITEMS[0]] = _load_setitems
    dispatch[pickle.ADDITEMS[0]] = _load_additems
    for _op in ("NEWOBJ_EX", "INST", "OBJ", "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"):
        dispatch[getattr(pickle, _op)[0]] = _refuse(_op)
    del _op


def decode_dtype(obj: Any) -> np.dtype:
    """A :class:`PickledDtype` -> ``np.dtype``, built from its type code and byte order only."""
    if type(obj) is not PickledDtype:
        raise ValueError(f"expected a numpy dtype, got {type(obj).__name__}")
    dtype = np.dtype(obj.code)
    state = obj.state
    if state is None:
        return dtype
    # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
    if type(state) is not tuple or len(state) not in (8, 9) or state[0] not in (3, 4) or state[2:5] != (None,) * 3:
        raise ValueError(f"numpy dtype {obj.code}: unexpected state {state!r:.80}")
    order = state[1]
    if order not in ("<", ">", "|", "="):
        raise ValueError(f"numpy dtype {obj.code}: byte order must be one of < > | =, got {order!r}")
    return dtype.newbyteorder(order) if order in "<>" and dtype.itemsize > 1 and dtype.kind != "O" else dtype


def decode_array(obj: Any, *, allow_object: bool = False) -> np.ndarray:
    """A :class:`PickledArray` -> a fresh ``np.ndarray``, after checking shape, dtype and data length.

    Object arrays (``allow_object``) hold the already-unpickled items (placeholders stay placeholders).
    Raises ValueError naming what is wrong.
    """
    if type(obj) is not PickledArray or obj.state is None:
        raise ValueError(f"expected a numpy array, got {type(obj).__name__}")
    state = obj.state
    if type(state) is tuple and len(state) == 5 and state[0] == 1:
        _, shape, dtype, fortran, raw = state
    elif type(state) is tuple and len(state) == 4:  # numpy's pre-versioned layout
        shape, dtype, fortran, raw = state
    else:
        raise ValueError(f"numpy array: unexpected state of type {type(state).__name__}")
    if type(shape) is not tuple or not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"numpy array: shape must be a tuple of non-negative ints, got {shape!r:.80}")
    dtype = decode_dtype(dtype)
    if type(fortran) not in (bool, int) or fortran not in (0, 1):
        raise ValueError(f"numpy array: is_fortran must be a bool, got {fortran!r:.40}")
    order = "F" if fortran else "C"
    count = math.prod(shape)
    if dtype.hasobject:
        if not allow_object:
            raise ValueError(f"numpy array: object arrays are not allowed here (shape {shape})")
        if type(raw) is not list or len(raw) != count:
            raise ValueError(f"numpy array: an object array of shape {shape} needs a list of {count} items")
        out = np.empty(count, dtype=object)
        for i, item in enumerate(raw):
            out[i] = item
        return out.reshape(shape, order=order)
    if type(raw) is str:  # a Python-2 str, read with encoding="latin1" (one char per byte)
        raw = raw.encode("latin1")
    if type(raw) not in (bytes, bytearray):
        raise ValueError(f"numpy array: data must be bytes, got {type(raw).__name__}")
    if len(raw) != count * dtype.itemsize:
        raise ValueError(
            f"numpy array: {len(raw)} data bytes, but shape {shape} of {dtype} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape, order=order).copy(order="K")
