"""MABe 2022 (trajectory track, round 1): file format, a synthetic stand-in, features and the linear evaluator.

Sun, Marks et al., "MABe22: A Multi-Species Multi-Task Benchmark for Learned Representations of Behavior",
ICML 2023. Docs: docs/multitask_behavior.md (format, tasks, evaluator, data availability).

No MABe trajectories are available offline (see the docs), so :func:`synthetic_mouse_triplets` writes clips in the
mouse-triplet format of §3.1 — keypoints [T, 3 mice, 12 keypoints, (x, y)] in pixels of an 850 x 850 arena —
with known labels: two SEQUENCE-level binary factors that are weak per frame and only decodable by integrating
over many seconds, and two FRAME-level labels from scripted interactions:

* ``strain``: every mouse of the clip turns with a small bias, clockwise for one strain, anticlockwise for the
  other, buried in per-frame turning noise;
* ``lights``: the clip's mean running speed is a few percent higher with lights on, buried in speed noise;
* ``chases``: a scripted bout in which one mouse runs after another at high speed;
* ``close``: some pair of mice is within ``close_distance`` pixels (geometric, from the trajectories).

Anything measured on these clips is a SYNTHETIC result and says nothing about real mice.

Files: the challenge ships each split as a dict pickled into an ``.npy`` (an object array), and unpickling a
file runs whatever code it names. foresight reads and writes a pickle-free ``.npz`` instead
(:func:`save_keypoints_file`, :func:`load_keypoints_file`); a challenge ``.npy`` is refused with a pointer to
:func:`convert_pickled_keypoints_file`, a one-off converter that decodes it with a restricted unpickler.

Shape legend: T frames, M mice, K keypoints, N frames of all clips stacked, D embedding width.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foresight.core.checkpoint import atomic_write_bytes
from foresight.core.data import (
    NUMPY_ARRAY_GLOBALS,
    DataNotFoundError,
    PickledArray,
    RestrictedUnpickler,
    decode_array,
    resolve,
)
from foresight.core.datasets import METADATA

MOUSE_KEYPOINTS = (
    "nose",
    "left ear",
    "right ear",
    "neck",
    "left forepaw",
    "right forepaw",
    "centre back",
    "left hindpaw",
    "right hindpaw",
    "tail base",
    "tail middle",
    "tail tip",
)
MOUSE_SHAPE = (3, 12, 2)  # mice x keypoints x (x, y), per frame (docs/multitask_behavior.md)
MOUSE_MAX_EMBEDDING = 128
SPLITS = ("SubmissionTrain", "publicTest", "privateTest")
EVALUATOR_SEEDS = (42, 43, 44)
SYNTHETIC_TASKS = ("strain", "lights", "chases", "close")
SYNTHETIC_SEQUENCE_TASKS = ("strain", "lights")

PUBLISHED_SPLIT_SIZES = {"SubmissionTrain": 2668, "publicTest": 533, "privateTest": 535}  # mouse triplets


# ---------------------------------------------------------------------------------------------
# File format (docs/multitask_behavior.md, "MABe 2022 format and evaluator")
# ---------------------------------------------------------------------------------------------
def validate_keypoints_file(data: Any, frame_shape: tuple[int, ...] = MOUSE_SHAPE, labelled: bool = False) -> None:
    """Check a loaded MABe trajectory dict: ``{"vocabulary", "sequences": {id: {"keypoints", "annotations"}}}``.

    keypoints: float [T, *frame_shape]; annotations (when ``labelled``): [len(vocabulary), T].
    """
    if not isinstance(data, dict) or "sequences" not in data or "vocabulary" not in data:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"expected a dict with 'vocabulary' and 'sequences', got {got}")
    if not isinstance(data["sequences"], dict) or not data["sequences"]:
        raise ValueError("'sequences' must be a non-empty dict of seq_id -> {'keypoints': ...}")
    for seq_id, seq in data["sequences"].items():
        kp = np.asarray(seq.get("keypoints")) if isinstance(seq, dict) else None
        if kp is None or kp.ndim != 1 + len(frame_shape) or tuple(kp.shape[1:]) != tuple(frame_shape):
            got = None if kp is None else tuple(kp.shape)
            raise ValueError(f"sequence {seq_id}: keypoints must be [T, {', '.join(map(str, frame_shape))}], got {got}")
        if labelled:
            ann = np.asarray(seq.get("annotations"))
            if ann.shape != (len(data["vocabulary"]), kp.shape[0]):
                raise ValueError(
                    f"sequence {seq_id}: annotations must be [{len(data['vocabulary'])}, "
                    f"{kp.shape[0]}], got {ann.shape}"
                )


# Pickle-free on-disk layout of a trajectory dict (``save_keypoints_file`` / ``load_keypoints_file``): one
# uncompressed-by-default ``.npz`` of plain arrays, so that ``np.load(..., allow_pickle=False)`` reads all of it.
#   format                      "foresight-mabe-keypoints/1"
#   keys                        unicode, the top-level keys in order ("sequences" among them)
#   sequence_ids                unicode [S], the sequence ids in order
#   sequences/<i>/<field>       numeric array, field of sequence i ("keypoints", "annotations", ...)
#   strings/<key>               unicode [n], a top-level list of strings ("vocabulary", "task_type", ...)
#   arrays/<key>                numeric or unicode array, any other top-level array
KEYPOINTS_FORMAT = "foresight-mabe-keypoints/1"
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class PickledKeypointsFileError(ValueError):
    """A MABe ``.npy`` that is a pickle (the challenge's own format); foresight never unpickles a data file."""


def _str_array(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=str) if values else np.zeros(0, dtype="U1")


def save_keypoints_file(data: dict[str, Any], path: str | Path, compressed: bool = False) -> Path:
    """Write a MABe trajectory dict (as :func:`validate_keypoints_file` describes) as a pickle-free ``.npz``.

    Keeps every top-level key: ``sequences`` (each sequence's fields must be numeric arrays), lists of strings
    (``vocabulary``, ``task_type``, ...) and plain arrays. Raises ValueError naming anything else (a nested
    dict, an object array), which could not be read back without pickle. The file is written atomically.
    """
    if not isinstance(data, dict) or not isinstance(data.get("sequences"), dict) or "vocabulary" not in data:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"expected a dict with 'vocabulary' and a 'sequences' dict, got {got}")
    ids = list(data["sequences"])
    if not all(isinstance(i, str) for i in ids):
        raise ValueError(f"sequence ids must be strings, got {sorted({type(i).__name__ for i in ids})}")
    arrays: dict[str, np.ndarray] = {"format": np.array(KEYPOINTS_FORMAT), "keys": _str_array(list(data))}
    arrays["sequence_ids"] = _str_array(ids)
    for i, seq_id in enumerate(ids):
        seq = data["sequences"][seq_id]
        if not isinstance(seq, dict):
            raise ValueError(f"sequence {seq_id}: expected a dict of arrays, got {type(seq).__name__}")
        for field, value in seq.items():
            a = np.asarray(value)
            if not (isinstance(field, str) and _FIELD.fullmatch(field)) or a.dtype.kind not in "biuf":
                raise ValueError(f"sequence {seq_id}: field {field!r} must be an identifier -> numeric array")
            arrays[f"sequences/{i}/{field}"] = a
    for key, value in data.items():
        if key == "sequences":
            continue
        if not (isinstance(key, str) and _FIELD.fullmatch(key)):
            raise ValueError(f"top-level key {key!r} must be an identifier")
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            arrays[f"strings/{key}"] = _str_array(list(value))
        elif isinstance(value, np.ndarray) and value.dtype.kind in "biufU":
            arrays[f"arrays/{key}"] = value
        else:
            raise ValueError(
                f"top-level {key!r} must be a list of strings or a numeric array, got {type(value).__name__}"
            )

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
            (np.savez_compressed if compressed else np.savez)(f, **arrays)

    atomic_write_bytes(path, write)
    return Path(path)


def _read_npz(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        names = set(z.files)
        if "format" not in names or z["format"].shape != () or str(z["format"]) != KEYPOINTS_FORMAT:
            raise ValueError(f"{path}: not a foresight MABe keypoints file (no format entry {KEYPOINTS_FORMAT!r})")
        ids = z["sequence_ids"] if "sequence_ids" in names else None
        if ids is None or ids.ndim != 1 or ids.dtype.kind != "U" or len(set(ids.tolist())) != len(ids):
            raise ValueError(f"{path}: sequence_ids must be a 1-D array of distinct strings")
        sequences: dict[str, dict[str, np.ndarray]] = {str(s): {} for s in ids.tolist()}
        order = list(sequences)
        data: dict[str, Any] = {}
        keys = z["keys"] if "keys" in names else None
        for name in z.files:  # in the order written
            if name in ("format", "keys", "sequence_ids"):
                continue
            parts = name.split("/")
            try:
                value = z[name]  # an object array raises here (allow_pickle=False), before any pickle runs
            except ValueError as e:
                raise ValueError(f"{path}: entry {name!r} cannot be read without pickle ({e})") from None
            if len(parts) == 3 and parts[0] == "sequences" and parts[1].isdigit() and int(parts[1]) < len(order):
                if value.dtype.kind not in "biuf" or not _FIELD.fullmatch(parts[2]):
                    raise ValueError(f"{path}: entry {name!r} must be a numeric array, got {value.dtype}")
                sequences[order[int(parts[1])]][parts[2]] = value
            elif len(parts) == 2 and parts[0] == "strings" and value.dtype.kind == "U" and value.ndim == 1:
                data[parts[1]] = value.tolist()
            elif len(parts) == 2 and parts[0] == "arrays" and value.dtype.kind in "biufU":
                data[parts[1]] = value
            else:
                raise ValueError(f"{path}: unexpected entry {name!r} ({value.dtype} {value.shape})")
    data["sequences"] = sequences
    if keys is None or keys.ndim != 1 or keys.dtype.kind != "U" or sorted(keys.tolist()) != sorted(data):
        raise ValueError(f"{path}: keys must list the top-level entries {sorted(data)}")
    return {k: data[k] for k in keys.tolist()}


def load_keypoints_file(
    path: str | Path, frame_shape: tuple[int, ...] = MOUSE_SHAPE, labelled: bool = False
) -> dict[str, Any]:
    """Load a trajectory file written by :func:`save_keypoints_file` (``.npz``) and validate it.

    Nothing is unpickled: the challenge's own ``mouse_triplet_{train,test}.npy`` files are pickles (an object
    array holding the dict), and reading one raises :class:`PickledKeypointsFileError`, which says how to
    convert it once with :func:`convert_pickled_keypoints_file`.
    """
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:4] == b"PK\x03\x04":  # a zip, i.e. an .npz
        data = _read_npz(path)
    elif magic == b"\x93NUMPY":
        with open(path, "rb") as f:
            dtype = _npy_header(f, path)[2]
        if not dtype.hasobject:
            raise ValueError(f"{path} holds one plain {dtype} array, not a MABe trajectory dict")
        raise PickledKeypointsFileError(
            f"{path} is a pickled .npy (an object array), which foresight does not unpickle; convert it once with "
            f"foresight.behavior.mabe.convert_pickled_keypoints_file('{path}', '{path.with_suffix('.npz')}') "
            "and load the .npz"
        )
    else:
        raise ValueError(f"{path} is neither an .npz nor an .npy file (starts with {magic!r})")
    validate_keypoints_file(data, frame_shape, labelled)
    return data


def _npy_header(f: Any, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"{path}: .npy format version {version} is not supported (expected 1.0 or 2.0)")


def _decode_tree(obj: Any, path: Path, depth: int = 0) -> Any:
    """Placeholders from the restricted unpickler -> arrays, inside dicts / lists of str, int, float, bool."""
    if depth > 8:  # the MABe dict is 3 levels deep; deeper (or a cycle) is not a MABe file
        raise ValueError(f"{path}: nesting deeper than 8 levels")
    if isinstance(obj, PickledArray):
        try:
            return decode_array(obj)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    if type(obj) is dict:
        return {k: _decode_tree(v, path, depth + 1) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return [_decode_tree(v, path, depth + 1) for v in obj]
    if obj is None or type(obj) in (str, int, float, bool):
        return obj
    raise ValueError(f"{path}: unexpected {type(obj).__name__} in the pickled dict")


def convert_pickled_keypoints_file(src: str | Path, dst: str | Path, compressed: bool = False) -> Path:
    """Convert a challenge ``.npy`` (a pickled dict in an object array) into the pickle-free ``.npz`` format, once.

    Run it on a file you trust (the CaltechDATA download, say): the pickle is decoded by
    ``foresight.core.data.RestrictedUnpickler``, which resolves only numpy's array globals and builds only
    dicts, lists, strings, numbers and plain numeric arrays (any other global, call or BUILD raises
    ``pickle.UnpicklingError``), so a hostile file cannot run code here either; the result is then read with
    no pickle at all by :func:`load_keypoints_file`. Returns ``dst``.
    """
    src = Path(src)
    with open(src, "rb") as f:
        _, _, dtype = _npy_header(f, src)
        if not dtype.hasobject:
            raise ValueError(f"{src} holds one plain {dtype} array, not a pickled MABe trajectory dict")
        top = RestrictedUnpickler(f, NUMPY_ARRAY_GLOBALS, what=str(src)).load()
    try:
        arr = decode_array(top, allow_object=True)
    except ValueError as e:
        raise ValueError(f"{src}: {e}") from None
    if arr.shape != ():
        raise ValueError(f"{src}: expected a 0-d object array holding the dict, got shape {arr.shape}")
    return save_keypoints_file(_decode_tree(arr.item(), src), dst, compressed=compressed)


def frame_number_map(lengths: dict[str, int]) -> dict[str, tuple[int, int]]:
    """seq_id -> half-open (start, end) rows of the stacked embedding, in the given order."""
    out, start = {}, 0
    for seq_id, n in lengths.items():
        out[seq_id] = (start, start + int(n))
        start += int(n)
    return out


def validate_submission(
    submission: Any, expected_map: dict[str, tuple[int, int]], max_dim: int = MOUSE_MAX_EMBEDDING
) -> None:
    """The evaluator's checks: the exact frame map, float32 [frames, <= max_dim] embeddings, no NaN or Inf."""
    if not isinstance(submission, dict) or set(submission) != {"frame_number_map", "embeddings"}:
        got = sorted(submission) if isinstance(submission, dict) else type(submission).__name__
        raise ValueError(f"a submission is {{'frame_number_map', 'embeddings'}}, got {got}")
    fmap = {k: tuple(v) for k, v in submission["frame_number_map"].items()}
    if list(fmap.items()) != [(k, tuple(v)) for k, v in expected_map.items()]:
        raise ValueError("frame_number_map differs from the expected one (same ids, order and row ranges needed)")
    emb = submission["embeddings"]
    n = max((end for _, end in expected_map.values()), default=0)
    if not isinstance(emb, np.ndarray) or emb.dtype != np.float32 or emb.ndim != 2:
        raise ValueError(
            f"embeddings must be a float32 [frames, dim] array, got "
            f"{getattr(emb, 'dtype', type(emb).__name__)} {getattr(emb, 'shape', '')}"
        )
    if emb.shape[0] != n or emb.shape[1] > max_dim:
        raise ValueError(f"embeddings must be [{n}, <= {max_dim}], got {list(emb.shape)}")
    if not np.isfinite(emb).all():
        raise ValueError("embeddings contain NaN or Inf")


def load_task_metadata(data_dir: str | Path | None = None) -> dict[str, Any]:
    """``jax_tasks.json`` and the split sizes of ``jax_split.json`` (the evaluator's metadata), resolved
    through `foresight.core.data` (--data-dir, $FORESIGHT_DATA, cache, pinned download)."""
    root = resolve(METADATA.name, data_dir=data_dir) / "round1" / "metadata"
    tasks = json.loads((root / "jax_tasks.json").read_text())
    split = json.loads((root / "jax_split.json").read_text())
    return {**tasks, "split_sizes": {k: len(v) for k, v in split.items()}}


def split_fractions(data_dir: str | Path | None = None) -> dict[str, float]:
    """Fractions of the test clips in SubmissionTrain / publicTest / privateTest (2668 / 533 / 535 for mice).

    Read from the evaluator metadata when it resolves; offline without it, the published counts
    (the same numbers) are used, since only the proportions matter for synthetic clips.
    """
    try:
        meta = load_task_metadata(data_dir)["split_sizes"]
        sizes = {k: meta[k] for k in SPLITS}
    except DataNotFoundError:
        sizes = dict(PUBLISHED_SPLIT_SIZES)
    total = sum(sizes.values())
    return {k: v / total for k, v in sizes.items()}


def assign_splits(seq_ids: list[str], seed: int, fractions: dict[str, float] | None = None) -> dict[str, str]:
    """seq_id -> evaluator split, drawn at random in the metadata's proportions (at least one clip each)."""
    fractions = fractions or split_fractions()
    n = len(seq_ids)
    if n < len(SPLITS) + 1:
        raise ValueError(f"need at least {len(SPLITS) + 1} clips to split, got {n}")
    n_pub = max(1, round(fractions["publicTest"] * n))
    n_priv = max(1, round(fractions["privateTest"] * n))
    order = np.random.default_rng(seed).permutation(n)
    names = ["publicTest"] * n_pub + ["privateTest"] * n_priv + ["SubmissionTrain"] * (n - n_pub - n_priv)
    return {seq_ids[i]: names[j] for j, i in enumerate(order)}


# ---------------------------------------------------------------------------------------------
# Synthetic mouse triplets
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticSpec:
    """Knobs of the synthetic clips; defaults make the slow factors weak per frame (see module docstring)."""

    frames: int = 1800
    fps: float = 30.0
    arena: float = 850.0  # pixels
    body_length: float = 60.0  # pixels, nose to tail base
    speed: float = 3.0  # pixels / frame, mean running speed
    speed_noise: float = 0.3  # OU std of the speed, relative to ``speed``
    speed_tau: float = 10.0  # frames, OU time constant of the speed
    lights_effect: float = 0.1  # relative mean-speed change, + with lights on, - off
    turn_noise: float = 0.12  # radians / frame, std of the heading change
    turn_bias: float = 0.008  # radians / frame, mean heading change (+ strain 1, - strain 0)
    chase_rate: float = 1 / 300  # bouts started per frame when none runs
    chase_frames: tuple[int, int] = (30, 90)  # bout length range
    chase_speed: float = 3.0  # speed multiplier during a chase
    close_distance: float = 90.0  # pixels between mouse centres for "close"
    keypoint_noise: float = 1.0  # pixels
    missing_rate: float = 0.0  # fraction of (frame, mouse) entries zeroed (x = 0 marks missing in BAMS)

    def __post_init__(self) -> None:
        for name in ("frames", "fps", "arena", "body_length", "speed", "speed_tau", "close_distance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        lo, hi = self.chase_frames
        if not 1 <= lo <= hi:
            raise ValueError(f"chase_frames must be (lo, hi) with 1 <= lo <= hi, got {self.chase_frames}")
        if not 0.0 <= self.missing_rate < 1.0:
            raise ValueError(f"missing_rate must be in [0, 1), got {self.missing_rate}")


# body-frame offsets of the 12 keypoints, in body lengths (x forward, y left); the tail swings laterally
_BODY = np.array(
    [
        [0.5, 0.0],
        [0.38, 0.08],
        [0.38, -0.08],
        [0.3, 0.0],
        [0.25, 0.12],
        [0.25, -0.12],
        [0.0, 0.0],
        [-0.25, 0.12],
        [-0.25, -0.12],
        [-0.5, 0.0],
        [-0.75, 0.0],
        [-1.0, 0.0],
    ]
)
_TAIL_SWING = np.array([0.0] * 10 + [0.06, 0.15])


def _simulate_clip(
    spec: SyntheticSpec, strain: int, lights: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One clip: keypoints [T, 3, 12, 2], chase labels [T], close labels [T]."""
    T, M = spec.frames, 3
    margin = 1.25 * spec.body_length  # keeps the tail tip (1 body length + swing) inside: x = 0 means "missing"
    pos = rng.uniform(margin, spec.arena - margin, size=(M, 2))
    heading = rng.uniform(-np.pi, np.pi, size=M)
    mean_speed = spec.speed * (1 + spec.lights_effect * (2 * lights - 1))
    bias = spec.turn_bias * (2 * strain - 1)
    speed_dev = np.zeros(M)
    a = math.exp(-1.0 / spec.speed_tau)
    centres, headings = np.zeros((T, M, 2)), np.zeros((T, M))
    chase = np.zeros(T, dtype=bool)
    bout_left, chaser, target = 0, 0, 1
    for t in range(T):
        if bout_left == 0 and rng.random() < spec.chase_rate:
            bout_left = int(rng.integers(spec.chase_frames[0], spec.chase_frames[1] + 1))
            chaser, target = rng.choice(M, size=2, replace=False)
        speed_dev = a * speed_dev + math.sqrt(1 - a * a) * spec.speed_noise * rng.standard_normal(M)
        speed = np.maximum(mean_speed * (1 + speed_dev), 0.0)
        heading = heading + bias + spec.turn_noise * rng.standard_normal(M)
        if bout_left > 0:
            chase[t] = True
            bout_left -= 1
            to_target = pos[target] - pos[chaser]
            heading[chaser] = math.atan2(to_target[1], to_target[0]) + 0.05 * rng.standard_normal()
            speed[chaser] *= spec.chase_speed
            speed[target] *= spec.chase_speed * 0.9
        step = speed[:, None] * np.stack([np.cos(heading), np.sin(heading)], axis=1)
        new = pos + step
        # a wall turns the mouse back towards the arena centre
        hit = ((new < margin) | (new > spec.arena - margin)).any(1)
        if hit.any():
            to_centre = spec.arena / 2 - pos[hit]
            heading[hit] = np.arctan2(to_centre[:, 1], to_centre[:, 0]) + 0.3 * rng.standard_normal(hit.sum())
            new = np.clip(new, margin, spec.arena - margin)
        pos = new
        centres[t], headings[t] = pos, heading
    # keypoints: the body template rotated by the heading, with a tail swing and tracking noise
    swing = np.sin(2 * np.pi * np.arange(T) / spec.fps * 1.5)[:, None, None] * _TAIL_SWING[None, None]  # [T, 1, 12]
    bx = np.broadcast_to(_BODY[:, 0], (T, M, 12)) * spec.body_length
    by = (_BODY[:, 1] + swing) * spec.body_length  # [T, 1|M, 12]
    c, s = np.cos(headings)[..., None], np.sin(headings)[..., None]  # [T, M, 1]
    kp = np.stack([centres[..., :1] + c * bx - s * by, centres[..., 1:] + s * bx + c * by], axis=-1)  # [T, M, 12, 2]
    kp = kp + spec.keypoint_noise * rng.standard_normal(kp.shape)
    if spec.missing_rate > 0:
        kp[rng.random((T, M)) < spec.missing_rate] = 0.0
    d = np.linalg.norm(centres[:, :, None] - centres[:, None], axis=-1)  # [T, M, M]
    d[:, np.arange(M), np.arange(M)] = np.inf
    close = d.min(axis=(1, 2)) < spec.close_distance
    return kp.astype(np.float32), chase, close


def synthetic_mouse_triplets(num_clips: int, spec: SyntheticSpec = SyntheticSpec(), seed: int = 0) -> dict[str, Any]:
    """A labelled MABe-format dict of synthetic clips (see the module docstring). SYNTHETIC data.

    Returns ``{"vocabulary": SYNTHETIC_TASKS, "task_type": [...], "sequence_level_tasks": [...],
    "sequences": {seq_id: {"keypoints": [T, 3, 12, 2], "annotations": [4, T]}}}``; strain and lights are balanced
    (each combination once per 4 clips, in a shuffled order).
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    rng = np.random.default_rng(seed)
    combos = np.array([(s, li) for s in (0, 1) for li in (0, 1)] * (num_clips // 4 + 1))[:num_clips]
    combos = combos[rng.permutation(num_clips)]
    sequences = {}
    for i, (strain, lights) in enumerate(combos):
        kp, chase, close = _simulate_clip(spec, int(strain), int(lights), rng)
        ann = np.stack([np.full(spec.frames, strain), np.full(spec.frames, lights), chase, close]).astype(np.float32)
        sequences[f"SYN{seed:05d}{i:012d}"] = {"keypoints": kp, "annotations": ann}
    return {
        "vocabulary": list(SYNTHETIC_TASKS),
        "task_type": ["Discrete"] * len(SYNTHETIC_TASKS),
        "sequence_level_tasks": list(SYNTHETIC_SEQUENCE_TASKS),
        "sequences": sequences,
    }


# ---------------------------------------------------------------------------------------------
# Features (the public code's generic KeypointsDataset features; docs/multitask_behavior.md)
# ---------------------------------------------------------------------------------------------
def keypoint_features(keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-animal sequences from clips: state = keypoints, action = their first difference in time.

    keypoints: [S, T, M, K, 2] (S clips). Returns input [S * M, T, 4K] = [state ; action], target
    [S * M, T, 2K] = action, and valid bool [S * M, T]. A frame is missing when any keypoint has x == 0 (BAMS's
    mouse convention) or is NaN (flies); missing values become 0, and a frame whose action needs a missing
    frame is missing too. Animal a of clip s is row s * M + a.
    """
    if keypoints.ndim != 5 or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints must be [clips, T, animals, keypoints, 2], got {keypoints.shape}")
    S, T, M, K, _ = keypoints.shape
    kp = np.moveaxis(keypoints, 2, 1).reshape(S * M, T, 2 * K).astype(np.float32)  # [S*M, T, 2K]
    valid = ~(np.isnan(kp).any(-1) | (kp[..., 0::2] == 0).any(-1))  # [S*M, T]
    kp = np.where(valid[..., None], np.nan_to_num(kp), 0.0)
    # first difference with edge padding: action_t = state_t - state_{t-1}, action_0 = action_1
    action = np.diff(kp, axis=1, prepend=kp[:, :1])
    action[:, 0] = action[:, 1] if T > 1 else 0.0
    step_valid = valid & np.concatenate([valid[:, :1], valid[:, :-1]], axis=1)
    action = np.where(step_valid[..., None], action, 0.0)
    return np.concatenate([kp, action], axis=-1), action, step_valid


def oracle_slow_features(keypoints: np.ndarray, window: int) -> np.ndarray:
    """The ideal readout of the slow factors: causal moving averages of turning and speed over ``window`` frames.

    keypoints: [S, T, M, 12, 2] mouse clips -> [S, T, 2] (mean over mice of the body-axis turn per frame and of
    the centre-back speed). Probing it at windows 61 vs the long RF shows how much a longer memory can help.
    """
    kp = keypoints.astype(np.float64)
    body = kp[..., 0, :] - kp[..., 9, :]  # nose - tail base, [S, T, M, 2]
    theta = np.arctan2(body[..., 1], body[..., 0])
    turn = np.angle(np.exp(1j * np.diff(theta, axis=1, prepend=theta[:, :1])))  # wrapped, [S, T, M]
    centre = kp[..., 6, :]
    speed = np.linalg.norm(np.diff(centre, axis=1, prepend=centre[:, :1]), axis=-1)  # [S, T, M]
    x = np.stack([turn.mean(-1), speed.mean(-1)], axis=-1)  # [S, T, 2]
    csum = np.cumsum(x, axis=1)
    avg = csum.copy()
    avg[:, window:] -= csum[:, :-window]
    return avg / np.minimum(np.arange(1, x.shape[1] + 1), window)[None, :, None]


def max_abs_scale(x: np.ndarray) -> np.ndarray:
    """Per-channel max-abs of [..., F] (the public code's input normalisation; not a z-score)."""
    scale = np.abs(x.reshape(-1, x.shape[-1])).max(0)
    return np.where(scale > 0, scale, 1.0).astype(np.float32)


def pool_animals(embeddings: np.ndarray, animals: int) -> np.ndarray:
    """Per-clip readout of BAMS (see docs): [S * M, T, D] -> [S, T, 2D] = [mean over animals ; max - min]."""
    e = embeddings.reshape(-1, animals, *embeddings.shape[1:])  # [S, M, T, D]
    return np.concatenate([e.mean(1), e.max(1) - e.min(1)], axis=-1)


# ---------------------------------------------------------------------------------------------
# Linear evaluator (docs/multitask_behavior.md): ridge / balanced ridge classifier, alpha = 1, seeds 42-44, 90/10
# ---------------------------------------------------------------------------------------------
def ridge_fit(
    X: np.ndarray, y: np.ndarray, alpha: float = 1.0, sample_weight: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Weighted ridge with an unpenalised intercept (as scikit-learn's ``Ridge``): returns (w [D], b)."""
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"expected X [N, D] and y [N], got {X.shape} and {y.shape}")
    sw = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    X = X.astype(np.float64)
    x_mean = (sw[:, None] * X).sum(0) / sw.sum()
    y_mean = float((sw * y).sum() / sw.sum())
    Xc, yc = X - x_mean, y - y_mean
    A = (Xc * sw[:, None]).T @ Xc + alpha * np.eye(X.shape[1])
    w = np.linalg.solve(A, (Xc * sw[:, None]).T @ yc)
    return w, y_mean - float(x_mean @ w)


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """``class_weight='balanced'``: n / (n_classes * count(class)) per sample."""
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    return (len(y) / (len(classes) * counts))[inverse]


def f1_binary(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    tp = float(np.sum((y_true == 1) & (y_pred == 1)))
    fp = float(np.sum((y_true != 1) & (y_pred == 1)))
    fn = float(np.sum((y_true == 1) & (y_pred != 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


@dataclass
class ProbeScore:
    task: str
    sequence_level: bool
    f1: float  # per-frame F1 of the seed ensemble on the test clips
    pooled_f1: float  # sequence-level tasks: F1 of the per-clip mean prediction (NaN for frame-level)


def linear_probe(
    embeddings: np.ndarray,
    labels: np.ndarray,
    splits: list[str],
    tasks: tuple[str, ...],
    sequence_level: tuple[str, ...],
    alpha: float = 1.0,
    seeds: tuple[int, ...] = EVALUATOR_SEEDS,
    train_fraction: float = 0.9,
    max_train_frames: int | None = None,
) -> list[ProbeScore]:
    """The public evaluator's protocol for binary tasks, on per-clip arrays.

    embeddings: [S, T, D]; labels: [S, len(tasks), T] in {0, 1} (NaN = unlabelled, dropped); splits: per clip.
    Per seed, a random ``train_fraction`` of the SubmissionTrain clips fits a ``RidgeClassifier(alpha,
    class_weight='balanced')`` (targets ±1); the test clips are publicTest + privateTest (the "private" score).
    The seeds' 0/1 predictions are combined by majority vote (the README's 2-of-3; the code's ">0 of the mean" is
    "any seed says 1"). ``max_train_frames`` subsamples training frames uniformly, for speed.
    """
    S, T, D = embeddings.shape
    if labels.shape != (S, len(tasks), T) or len(splits) != S:
        raise ValueError(f"labels must be [{S}, {len(tasks)}, {T}] with {S} splits, got {labels.shape}, {len(splits)}")
    train_clips = np.array([i for i, s in enumerate(splits) if s == "SubmissionTrain"])
    test_clips = np.array([i for i, s in enumerate(splits) if s in ("publicTest", "privateTest")])
    if len(train_clips) < 2 or len(test_clips) < 1:
        raise ValueError(f"need >= 2 SubmissionTrain and >= 1 test clips, got {len(train_clips)} and {len(test_clips)}")
    X_test = embeddings[test_clips].reshape(-1, D)
    scores = []
    for k, task in enumerate(tasks):
        votes = []
        for seed in seeds:
            rng = np.random.default_rng(seed)
            chosen = rng.permutation(train_clips)[: max(1, int(round(train_fraction * len(train_clips))))]
            X = embeddings[chosen].reshape(-1, D)
            y = labels[chosen, k].reshape(-1)
            keep = ~np.isnan(y)
            X, y = X[keep], y[keep]
            if max_train_frames is not None and len(y) > max_train_frames:
                idx = rng.choice(len(y), max_train_frames, replace=False)
                X, y = X[idx], y[idx]
            if len(np.unique(y)) < 2:  # one class only: predict it
                votes.append(np.full(len(X_test), y[0] if len(y) else 0.0))
                continue
            w, b = ridge_fit(X, 2 * y - 1, alpha, balanced_weights(y))
            votes.append((X_test @ w + b > 0).astype(np.float64))
        pred = (np.mean(votes, axis=0) > 0.5).astype(np.float64)  # [N_test]
        y_test = labels[test_clips, k].reshape(-1)
        keep = ~np.isnan(y_test)
        f1 = f1_binary(y_test[keep], pred[keep])
        pooled = float("nan")
        if task in sequence_level:
            clip_score = np.stack(votes).mean(0).reshape(len(test_clips), T).mean(1)  # [S_test]
            clip_label = np.nanmean(labels[test_clips, k], axis=1)
            pooled = f1_binary(np.round(clip_label), (clip_score > 0.5).astype(np.float64))
        scores.append(ProbeScore(task, task in sequence_level, f1, pooled))
    return scores


def zscore(embeddings: np.ndarray) -> np.ndarray:
    """Per-channel z-score over all frames of all clips, [..., D]; constant channels become 0."""
    flat = embeddings.reshape(-1, embeddings.shape[-1])
    mu, sd = flat.mean(0), flat.std(0)
    return ((embeddings - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)
