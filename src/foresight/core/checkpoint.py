"""Checkpoints: safetensors only, written atomically, holding nested training state.

One checkpoint is one ``.safetensors`` file. Tensors are stored under flat ``/``-joined keys; the
non-tensor skeleton (step counters, optimizer hyperparameters, Python/NumPy RNG states) rides in the
file's string metadata as JSON. Writing one file and renaming it into place means a reader sees
either the old checkpoint or the new one, never half of each - whatever moment the writer is killed.
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_INTKEYS = "__intkeys__"
_META_KEY = "foresight_state"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or not what was expected."""


def atomic_write_bytes(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(tmp_path)`` then fsync and rename ``tmp_path`` over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        # fsync the directory so the rename itself survives a crash
        dir_fd = os.open(path.parent, os.O_RDONLY)
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


def pack(obj: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested structure into a JSON skeleton and a flat dict of tensors."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(o: Any, key: str) -> Any:
        if isinstance(o, torch.Tensor):
            # contiguous clone: safetensors refuses shared/strided storage
            tensors[key] = o.detach().cpu().contiguous().clone()
            return {_TENSOR: key}
        if isinstance(o, np.ndarray):
            return walk(torch.from_numpy(np.ascontiguousarray(o)), key)
        if isinstance(o, dict):
            if o and all(isinstance(k, int) for k in o):  # optimizer state is keyed by ints
                return {_INTKEYS: {str(k): walk(v, f"{key}/{k}") for k, v in o.items()}}
            return {str(k): walk(v, f"{key}/{k}") for k, v in o.items()}
        if isinstance(o, tuple):
            return {_TUPLE: [walk(v, f"{key}/{i}") for i, v in enumerate(o)]}
        if isinstance(o, list):
            return [walk(v, f"{key}/{i}") for i, v in enumerate(o)]
        if o is None or isinstance(o, bool | int | float | str):
            return o
        if isinstance(o, np.integer | np.floating):
            return o.item()
        raise TypeError(f"cannot checkpoint value of type {type(o).__name__} at {key or '<root>'}")

    return walk(obj, prefix), tensors


def unpack(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`pack`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {_TENSOR}:
            key = skeleton[_TENSOR]
            if key not in tensors:
                raise CheckpointError(f"checkpoint is missing tensor {key!r}")
            return tensors[key]
        if set(skeleton) == {_TUPLE}:
            return tuple(unpack(v, tensors) for v in skeleton[_TUPLE])
        if set(skeleton) == {_INTKEYS}:
            return {int(k): unpack(v, tensors) for k, v in skeleton[_INTKEYS].items()}
        return {k: unpack(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unpack(v, tensors) for v in skeleton]
    return skeleton


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (nested dicts/lists of tensors and JSON values) to ``path``."""
    skeleton, tensors = pack(state)
    metadata = {_META_KEY: json.dumps(skeleton)}
    atomic_write_bytes(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (safetensors; nothing is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {e}") from e
    if _META_KEY not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not a foresight checkpoint (no state metadata)")
    return unpack(json.loads(metadata[_META_KEY]), tensors)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states, in a form :func:`save_checkpoint` accepts."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": py[0], "state": torch.tensor(py[1], dtype=torch.int64), "gauss": py[2]},
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
