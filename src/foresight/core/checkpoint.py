"""Checkpoints: safetensors only, written atomically, holding nested training state.

One checkpoint is one ``.safetensors`` file. Tensors are stored under flat ``/``-joined keys; the
non-tensor skeleton (step counters, optimizer hyperparameters, Python/NumPy RNG states) rides in the
file's string metadata as JSON. Writing one file and renaming it into place means a reader sees
either the old checkpoint or the new one, never half of each - whatever moment the writer is killed.
Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from foresight.core.fs import atomic_write_bytes, atomic_write_text

__all__ = [
    "CheckpointError",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_INTKEYS = "__intkeys__"
_META_KEY = "foresight_state"
_SUM_KEY = "foresight_sha256"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, non-finite or not what was expected."""


def _content_sha256(skeleton_json: str, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the skeleton and every tensor's key, dtype, shape and bytes (in key order)."""
    h = hashlib.sha256(skeleton_json.encode())
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(f"\0{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
    skeleton_json = json.dumps(skeleton)
    metadata = {_META_KEY: skeleton_json, _SUM_KEY: _content_sha256(skeleton_json, tensors)}
    atomic_write_bytes(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (safetensors; nothing is unpickled).

    Refused with :class:`CheckpointError`: a truncated or unparsable file, content whose sha256 differs
    from the one recorded at save time (a flipped bit anywhere), and floating tensors holding NaN or inf
    (a diverged state must not be trained on).
    """
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
    if _META_KEY not in metadata or _SUM_KEY not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not a foresight checkpoint (no state metadata)")
    if _content_sha256(metadata[_META_KEY], tensors) != metadata[_SUM_KEY]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its content does not match its recorded sha256")
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"checkpoint {path} holds non-finite values in {key.lstrip('/')!r}; refusing to resume from it"
            )
    try:
        skeleton = json.loads(metadata[_META_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path} has unreadable state metadata: {e}") from None
    return unpack(skeleton, tensors)


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
