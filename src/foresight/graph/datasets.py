"""Graph datasets for the Half-Hop experiments: six heterophilic sets, Cora/CiteSeer, and the SSL benchmarks
(Amazon Computers/Photos, Coauthor CS/Physics from shchur/gnn-benchmark; WikiCS when its file is present).

Every loader returns a :class:`LoadedGraph` ``(data, meta)``:

- ``data``: a ``torch_geometric.data.Data`` with ``x`` [N, F] float32, ``edge_index`` [2, E] int64,
  ``y`` [N] int64 and ``train_mask`` / ``val_mask`` / ``test_mask`` [N, S] bool, one column per split
  (S = 10 for the standard Geom-GCN splits, 1 for the public Planetoid split);
- ``meta``: a :class:`GraphMeta` naming the source files (with their verified sha256), the split
  convention and the edge convention, so that a result can say exactly what it was computed on.

Sources (each file pinned to a commit; see ``../shared/data/*/SOURCE.md`` for the cross-checks):

==========  =======================================================  =================================
dataset     features / labels                                        edges
==========  =======================================================  =================================
texas       Geom-GCN ``new_data/texas`` (equal to the Yandex npz)     Geom-GCN ``out1_graph_edges.txt``
wisconsin   Geom-GCN ``new_data/wisconsin`` (equal to Yandex)         Geom-GCN
film        Geom-GCN ``new_data/film`` (= Yandex ``actor``)           Geom-GCN
chameleon   Yandex ``chameleon.npz`` (Geom-GCN's file is not here)    Geom-GCN (= Yandex ``*_directed``)
squirrel    Yandex ``squirrel.npz`` (Geom-GCN's file is not here)     Geom-GCN (= Yandex ``*_directed``)
cornell     Yandex ``cornell.npz`` (see the Cornell caveat)           Yandex ``cornell.npz``
cora        Planetoid ``ind.cora.*`` (Kipf & Welling ordering)        Planetoid ``graph``
citeseer    Planetoid ``ind.citeseer.*`` (+15 zero rows)              Planetoid ``graph``
amazon-*    gnn-benchmark ``amazon_electronics_*.npz`` (PyG's files)  same npz, symmetrised
coauthor-*  gnn-benchmark ``ms_academic_*.npz``                       same npz
wiki-cs     ``dataset/data.json`` (git blob pinned; not offline)       same file, symmetrised
==========  =======================================================  =================================

Amazon/Coauthor have no official splits: :func:`random_splits` draws 10/10/80 ones (BGRL's protocol).
WikiCS comes with 20 splits.

Why these sources:

- The Geom-GCN repository is the origin of the heterophilic benchmarks and of their 10 splits, so it
  is used wherever its files are complete. It is also the only source of the *directed* WebKB/film
  edge lists, which matter for Half-Hop (one slow node per directed edge).
- chameleon/squirrel: their Geom-GCN feature files (> 4 MiB) are not mirrored; the Yandex npz
  (Platonov et al., ICLR 2023) is the only offline source of their features. Its node order is the
  Geom-GCN order (its ``*_directed`` edge lists equal the Geom-GCN ones), so Geom-GCN edges are used.
- **Cornell caveat.** In the Geom-GCN repository, ``new_data/cornell/out1_node_feature_label.txt`` is
  byte-identical to Texas's (same git blob in every commit; PyG's ``WebKB`` downloads it too), so a
  "Geom-GCN Cornell" carries Texas's features and labels on Cornell's edges. The Yandex
  ``cornell.npz`` has distinct features and labels (class counts 38/16/30/82/17), the same masks and
  the same degree multiset, but re-indexed nodes; it is used here, and results name it
  (``meta.source``). Its edges are only available undirected, so ``undirected=False`` is refused.

Split convention: the Geom-GCN files are named ``*_split_0.6_0.2_<k>.npz`` but hold **about 48% train /
32% val / 20% test** (an 80/20 ShuffleSplit, then 60% of the 80% for training; not stratified). In Cora,
the 223 nodes of ``unconnected_nodes/cora_unconnected_nodes.txt`` are in no mask.

Edge convention (``undirected``, recorded in ``meta``):

- ``True`` (default): symmetrised, deduplicated, self-loops dropped. This matches the Yandex files and
  the usual PyG ``ToUndirected`` preprocessing.
- ``False``: the Geom-GCN directed edge list as stored, deduplicated (film has duplicate lines), with its
  self-loops kept (the Geom-GCN loader reads it into a ``networkx.DiGraph``, which keeps them).

Planetoid files are Python-2 pickles. They are read by :class:`_PlanetoidUnpickler`, which resolves only
the six globals those files reference (``csr_matrix``, numpy array reconstruction, ``defaultdict``,
``list``), and only as inert stand-ins, and refuses everything else, so a tampered file cannot run code or
patch a class. Every matrix, array and graph is validated (indices in range, indptr monotone, values finite,
shapes consistent across the files) before the real ``csr_matrix`` is built and densified.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import coalesce, remove_self_loops, to_undirected

from foresight.core.data import (
    NUMPY_ARRAY_GLOBALS,
    DatasetSpec,
    PickledArray,
    PickledInstance,
    RestrictedUnpickler,
    SafeCall,
    decode_array,
    resolve,
    sha256_file,
)
from foresight.core.datasets import (
    GEOM_GCN,
    GEOM_GCN_COMMIT,
    GNN_BENCHMARK,
    GNN_BENCHMARK_COMMIT,
    PLANETOID,
    PLANETOID_COMMIT,
    WIKICS,
    WIKICS_BLOB,
    YANDEX,
    YANDEX_COMMIT,
)

HETEROPHILIC = ("texas", "wisconsin", "cornell", "film", "chameleon", "squirrel")
PLANETOID_NAMES = ("cora", "citeseer")
# name -> npz file in gnn-benchmark (Shchur et al.); the BGRL protocol's names
GNN_BENCHMARK_FILES = {
    "amazon-computers": "amazon_electronics_computers.npz",
    "amazon-photos": "amazon_electronics_photo.npz",
    "coauthor-cs": "ms_academic_cs.npz",
    "coauthor-physics": "ms_academic_phy.npz",
}
HOMOPHILIC = (*GNN_BENCHMARK_FILES, "wiki-cs")
NUM_WIKICS_SPLITS = 20
_ALIASES = {
    "actor": "film",
    "computers": "amazon-computers",
    "photo": "amazon-photos",
    "photos": "amazon-photos",
    "cs": "coauthor-cs",
    "physics": "coauthor-physics",
    "wikics": "wiki-cs",
}
NUM_GEOM_GCN_SPLITS = 10

GEOM_GCN_SPLIT_NOTE = (
    "Geom-GCN splits (files named 0.6_0.2, really ~48/32/20 train/val/test: 80/20 ShuffleSplit then 60% "
    "of the 80% for train; not stratified)"
)


@dataclass(frozen=True)
class GraphMeta:
    """Where a graph came from and how it was preprocessed (goes into results verbatim)."""

    name: str
    source: str  # one line naming the repositories/files used for features, labels, edges, splits
    files: tuple[tuple[str, str, str], ...]  # (dataset folder, relative path, verified sha256)
    split: str  # the split convention
    num_splits: int
    undirected: bool  # True: symmetrised + deduplicated
    self_loops: bool  # whether edge_index contains self-loops
    num_nodes: int
    num_edges: int  # columns of edge_index (an undirected edge counts twice)
    num_features: int
    num_classes: int
    notes: str = ""

    @property
    def checksum(self) -> str:
        """One sha256 over the ``path:sha256`` lines of every file read (identifies the exact inputs)."""
        lines = "".join(f"{a}/{p}:{s}\n" for a, p, s in sorted(self.files))
        return hashlib.sha256(lines.encode()).hexdigest()

    def summary(self) -> dict[str, Any]:
        """The record a result carries: everything but the per-file list, plus :attr:`checksum`."""
        d = {k: v for k, v in asdict(self).items() if k != "files"}
        d["checksum"] = self.checksum
        return d

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["files"] = [{"dataset": a, "path": p, "sha256": s} for a, p, s in self.files]
        return d


class LoadedGraph(NamedTuple):
    data: Data
    meta: GraphMeta


# -- file access ---------------------------------------------------------------------------------
class _Files:
    """Resolves files of one registered dataset and verifies each one's sha256 before it is read."""

    def __init__(self, spec: DatasetSpec, paths: list[str], data_dir: str | Path | None) -> None:
        self.spec = spec
        self.folder = resolve(spec.name, paths, data_dir=data_dir)
        self.used: list[tuple[str, str, str]] = []

    def path(self, rel: str) -> Path:
        expected = self.spec.file(rel).sha256
        p = self.folder / rel
        got = sha256_file(p)
        if got != expected:
            raise ValueError(
                f"{p} has sha256 {got}, expected {expected} ({self.spec.source}); the file is not the pinned one"
            )
        self.used.append((self.spec.name, rel, got))
        return p


def _canonical(name: str, allowed: tuple[str, ...]) -> str:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in allowed:
        raise ValueError(f"unknown dataset {name!r}; expected one of {list(allowed)} (aliases: {_ALIASES})")
    return key


def _split_paths(name: str) -> list[str]:
    return [f"splits/{name}_split_0.6_0.2_{k}.npz" for k in range(NUM_GEOM_GCN_SPLITS)]


def _read_geom_gcn_splits(files: _Files, name: str, num_nodes: int) -> dict[str, torch.Tensor]:
    """The 10 Geom-GCN masks of ``name`` stacked to [N, 10] bool."""
    cols: dict[str, list[np.ndarray]] = {"train_mask": [], "val_mask": [], "test_mask": []}
    for rel in _split_paths(name):
        with np.load(files.path(rel), allow_pickle=False) as z:
            for key in cols:
                m = z[key]
                if m.shape != (num_nodes,):
                    raise ValueError(f"{rel}: {key} has shape {m.shape}, expected ({num_nodes},)")
                cols[key].append(m.astype(bool))
    return {k: torch.from_numpy(np.stack(v, axis=1)) for k, v in cols.items()}


def _read_geom_gcn_edges(path: Path) -> torch.Tensor:
    """``out1_graph_edges.txt``: a header line, then ``src<TAB>dst`` per line -> [2, E] as stored."""
    tokens = path.read_text().split()
    if tokens[:2] != ["node_id", "node_id"]:
        raise ValueError(f"{path}: unexpected header {tokens[:2]}")
    pairs = np.asarray(tokens[2:], dtype=np.int64).reshape(-1, 2)
    return torch.from_numpy(pairs.T.copy())


def _read_geom_gcn_features(path: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``out1_node_feature_label.txt`` -> (x [N, F] float32, y [N] int64), rows placed by node id.

    WebKB files hold a dense comma-separated 0/1 vector; film holds the indices of its active
    features (indices up to 931, so 932 dimensions, as in the Geom-GCN loader) and is not sorted.
    """
    lines = path.read_text().splitlines()
    header, rows = lines[0], [ln.split("\t") for ln in lines[1:] if ln.strip()]
    ids = np.array([int(r[0]) for r in rows])
    labels = np.array([int(r[2]) for r in rows])
    n = len(rows)
    if sorted(ids.tolist()) != list(range(n)):
        raise ValueError(f"{path}: node ids are not a permutation of 0..{n - 1}")
    if name == "film":
        if "feature_amount:931" not in header:
            raise ValueError(f"{path}: unexpected header {header!r}")
        x = np.zeros((n, 932), dtype=np.float32)
        for i, r in zip(ids, rows):
            x[i, np.asarray(r[1].split(","), dtype=np.int64)] = 1.0
    else:
        dense = np.array([np.asarray(r[1].split(","), dtype=np.float32) for r in rows])
        x = np.empty_like(dense)
        x[ids] = dense
    y = np.empty(n, dtype=np.int64)
    y[ids] = labels
    return torch.from_numpy(x), torch.from_numpy(y)


def _finish_edges(edge_index: torch.Tensor, num_nodes: int, undirected: bool) -> torch.Tensor:
    """Apply the edge convention of the module docstring."""
    if undirected:
        edge_index, _ = remove_self_loops(edge_index)
        return to_undirected(edge_index, num_nodes=num_nodes)  # symmetrise + coalesce (dedupe, sort)
    return coalesce(edge_index, num_nodes=num_nodes)  # dedupe only; direction and self-loops kept


def _meta(name: str, data: Data, source: str, used: list, split: str, undirected: bool, notes: str = "") -> GraphMeta:
    ei = data.edge_index
    return GraphMeta(
        name=name,
        source=source,
        files=tuple(used),
        split=split,
        num_splits=int(data.train_mask.size(1)),
        undirected=undirected,
        self_loops=bool((ei[0] == ei[1]).any()),
        num_nodes=int(data.num_nodes),
        num_edges=int(ei.size(1)),
        num_features=int(data.x.size(1)),
        num_classes=int(data.y.max()) + 1,
        notes=notes,
    )


# -- heterophilic sets ----------------------------------------------------------------------------
def load_geom_gcn(name: str, data_dir: str | Path | None = None, *, undirected: bool = True) -> LoadedGraph:
    """Load texas, wisconsin, cornell, film (= actor), chameleon or squirrel with the 10 Geom-GCN splits.

    Args:
        name: dataset name (case-insensitive; ``actor`` is an alias of ``film``).
        data_dir: a folder holding ``geom-gcn/`` and ``heterophilous-graphs/`` (searched before
            ``$FORESIGHT_DATA``, the user cache and a pinned download; see ``foresight.core.data``).
        undirected: the edge convention (module docstring). Cornell only exists undirected.

    Returns:
        ``(data, meta)``; masks are [N, 10] bool.
    """
    name = _canonical(name, HETEROPHILIC)
    if name == "cornell":
        if not undirected:
            raise ValueError(
                "cornell is loaded from the Yandex cornell.npz (Geom-GCN's cornell features are a copy of "
                "Texas's), whose edges exist only undirected; use undirected=True"
            )
        return _load_yandex_cornell(data_dir)

    geom_paths = [f"new_data/{name}/out1_graph_edges.txt", *_split_paths(name)]
    if name in ("chameleon", "squirrel"):
        yandex = _Files(YANDEX, [f"{name}.npz"], data_dir)
        with np.load(yandex.path(f"{name}.npz"), allow_pickle=False) as z:
            x = torch.from_numpy(z["node_features"].astype(np.float32))
            y = torch.from_numpy(z["node_labels"].astype(np.int64))
        source = (
            f"features/labels: yandex-research/heterophilous-graphs@{YANDEX_COMMIT[:7]} {name}.npz; "
            f"edges and splits: graphdml-uiuc-jlu/geom-gcn@{GEOM_GCN_COMMIT[:7]}"
        )
        used_first = yandex.used
    else:
        geom_paths.append(f"new_data/{name}/out1_node_feature_label.txt")
        used_first = []
        source = f"graphdml-uiuc-jlu/geom-gcn@{GEOM_GCN_COMMIT[:7]} new_data/{name} + splits"
    geom = _Files(GEOM_GCN, geom_paths, data_dir)
    if name not in ("chameleon", "squirrel"):
        x, y = _read_geom_gcn_features(geom.path(f"new_data/{name}/out1_node_feature_label.txt"), name)
    n = x.size(0)
    edge_index = _read_geom_gcn_edges(geom.path(f"new_data/{name}/out1_graph_edges.txt"))
    if int(edge_index.max()) >= n:
        raise ValueError(f"{name}: edge list refers to node {int(edge_index.max())} but there are {n} nodes")
    data = Data(x=x, edge_index=_finish_edges(edge_index, n, undirected), y=y, **_read_geom_gcn_splits(geom, name, n))
    return LoadedGraph(data, _meta(name, data, source, used_first + geom.used, GEOM_GCN_SPLIT_NOTE, undirected))


def _load_yandex_cornell(data_dir: str | Path | None) -> LoadedGraph:
    files = _Files(YANDEX, ["cornell.npz"], data_dir)
    with np.load(files.path("cornell.npz"), allow_pickle=False) as z:
        x = torch.from_numpy(z["node_features"].astype(np.float32))
        y = torch.from_numpy(z["node_labels"].astype(np.int64))
        edges = torch.from_numpy(z["edges"].T.astype(np.int64).copy())  # [2, E], u < v, no self-loops
        masks = {f"{k}_mask": torch.from_numpy(z[f"{k}_masks"].T.copy()) for k in ("train", "val", "test")}
    data = Data(x=x, edge_index=_finish_edges(edges, x.size(0), True), y=y, **masks)
    source = (
        f"yandex-research/heterophilous-graphs@{YANDEX_COMMIT[:7]} cornell.npz (NOT the Geom-GCN cornell "
        "features, which are a byte copy of Texas's)"
    )
    notes = "nodes re-indexed relative to Geom-GCN; masks equal the Geom-GCN cornell split files"
    return LoadedGraph(data, _meta("cornell", data, source, files.used, GEOM_GCN_SPLIT_NOTE, True, notes))


# -- Planetoid ------------------------------------------------------------------------------------
class _PickledCsr(PickledInstance):
    """A ``scipy.sparse.csr_matrix`` pickle (NEWOBJ + BUILD of its ``__dict__``); see :func:`_csr_from_state`."""

    __slots__ = ()


def _defaultdict_of_list(factory: Any = None) -> collections.defaultdict:
    # the graph files pickle defaultdict(list); any other factory would be a callable the file chose
    if factory is not list:
        raise pickle.UnpicklingError(f"defaultdict factory must be list, got {factory!r}")
    return collections.defaultdict(list)


class _PlanetoidUnpickler(RestrictedUnpickler):
    """Unpickler for the Planetoid ``ind.*`` files: the six globals those files use, as inert stand-ins.

    The files (Python 2, protocol 2) reference exactly: ``scipy.sparse.csr.csr_matrix``,
    ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``,
    ``collections.defaultdict`` and ``__builtin__.list``. Any other global - ``os.system``,
    ``builtins.eval``, ... - raises ``pickle.UnpicklingError`` before it can be called. The allowed ones do
    not resolve to scipy / numpy either (see ``foresight.core.data.RestrictedUnpickler``): a matrix or an
    array comes out as a placeholder of its pickled state, a BUILD on anything but such a placeholder (a
    class object, say) is refused, and :func:`read_planetoid_pickle` validates the state before it builds
    the real ``csr_matrix`` / array with their public constructors.
    """

    ALLOWED: dict[tuple[str, str], Any] = {
        ("scipy.sparse.csr", "csr_matrix"): _PickledCsr,
        ("numpy.core.multiarray", "_reconstruct"): NUMPY_ARRAY_GLOBALS[("numpy.core.multiarray", "_reconstruct")],
        ("numpy", "ndarray"): NUMPY_ARRAY_GLOBALS[("numpy", "ndarray")],
        ("numpy", "dtype"): NUMPY_ARRAY_GLOBALS[("numpy", "dtype")],
        ("collections", "defaultdict"): SafeCall("collections.defaultdict", _defaultdict_of_list),
        ("__builtin__", "list"): list,  # only ever an argument (the defaultdict factory), never called
    }

    def __init__(self, file: Any, what: str) -> None:
        super().__init__(file, self.ALLOWED, what=what, encoding="latin1")


def _numeric(a: np.ndarray, path: str, what: str) -> np.ndarray:
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{path}: {what} must be numeric, got dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{path}: {what} holds NaN or Inf")
    return a


def _csr_from_state(state: Any, path: str) -> Any:
    """Validate a pickled csr_matrix's arrays, THEN build it: a bad index would crash ``toarray`` (no check)."""
    if type(state) is not dict:
        raise ValueError(f"{path}: csr_matrix state must be a dict, got {type(state).__name__}")
    if state.get("format", "csr") != "csr":
        raise ValueError(f"{path}: csr_matrix state has format {state.get('format')!r}, expected 'csr'")
    shape = state.get("_shape", state.get("shape"))
    if type(shape) is not tuple or len(shape) != 2 or not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"{path}: csr_matrix shape must be two non-negative ints, got {shape!r:.80}")
    try:
        arrays = {k: decode_array(state[k]) for k in ("data", "indices", "indptr")}
    except KeyError as e:
        raise ValueError(f"{path}: csr_matrix state has no {e.args[0]!r} array") from None
    except ValueError as e:
        raise ValueError(f"{path}: csr_matrix: {e}") from None
    return checked_csr(arrays["data"], arrays["indices"], arrays["indptr"], shape, path)


def checked_csr(data: Any, indices: Any, indptr: Any, shape: tuple[int, int], path: str) -> Any:
    """Validate the three arrays of a CSR matrix of ``shape``, THEN build the ``scipy.sparse.csr_matrix``.

    Shared by the Planetoid pickles and the gnn-benchmark npz files: a bad index would crash (or silently
    read out of bounds in) ``toarray``, which checks nothing. Raises a one-line ValueError naming ``path``.
    """
    import scipy.sparse

    rows, cols = shape
    data, indices, indptr = (
        _numeric(a, path, f"csr_matrix {k}") for k, a in (("data", data), ("indices", indices), ("indptr", indptr))
    )
    if data.ndim != 1 or indices.ndim != 1 or indptr.ndim != 1:
        raise ValueError(f"{path}: csr_matrix data/indices/indptr must be 1-D, got {data.shape}/{indices.shape}")
    if indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
        raise ValueError(f"{path}: csr_matrix indices/indptr must be integers, got {indices.dtype}/{indptr.dtype}")
    if len(indptr) != rows + 1 or indptr[0] != 0 or (np.diff(indptr.astype(np.int64)) < 0).any():
        raise ValueError(f"{path}: csr_matrix indptr must rise from 0 in {rows + 1} entries, got {len(indptr)}")
    if not int(indptr[-1]) == len(indices) == len(data):
        raise ValueError(
            f"{path}: csr_matrix indptr ends at {int(indptr[-1])}, with {len(indices)} indices, {len(data)} values"
        )
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= cols):
        raise ValueError(
            f"{path}: csr_matrix column index out of range [0, {cols}): {int(indices.min())}..{int(indices.max())}"
        )
    m = scipy.sparse.csr_matrix((data, indices, indptr), shape=(rows, cols))
    m.check_format(full_check=True)  # scipy's own verdict, after ours
    if type(m) is not scipy.sparse.csr_matrix:  # pragma: no cover - the constructor above
        raise ValueError(f"{path}: expected a csr_matrix, got {type(m).__name__}")
    return m


def _graph_from(obj: Any, path: str) -> collections.defaultdict:
    """Adjacency lists: int node -> list of int nodes, all non-negative (the node count is checked later)."""
    if type(obj) not in (dict, collections.defaultdict):
        raise ValueError(f"{path}: expected a dict of adjacency lists, got {type(obj).__name__}")
    for u, nbrs in obj.items():
        if type(u) is not int or u < 0 or type(nbrs) is not list or not all(type(v) is int and v >= 0 for v in nbrs):
            raise ValueError(f"{path}: adjacency entry {u!r:.20} must be a non-negative int -> list of such ints")
    return obj


def read_planetoid_pickle(path: str | Path) -> Any:
    """Read one Planetoid ``ind.*`` pickle with :class:`_PlanetoidUnpickler` (``latin1`` for Python 2).

    Returns a validated ``csr_matrix`` (x, tx, allx), a numeric ``np.ndarray`` (y, ty, ally) or the
    ``defaultdict`` graph. Raises ``pickle.UnpicklingError`` for a pickle that tries anything else and a
    one-line ValueError naming the file for a malformed matrix, array or graph.
    """
    data = Path(path).read_bytes()
    obj = _PlanetoidUnpickler(io.BytesIO(data), what=str(path)).load()
    if type(obj) is _PickledCsr:
        return _csr_from_state(obj.state, str(path))
    if type(obj) is PickledArray:
        try:
            return _numeric(decode_array(obj), str(path), "array")
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    if type(obj) in (dict, collections.defaultdict):
        return _graph_from(obj, str(path))
    raise ValueError(f"{path}: expected a csr_matrix, an array or a graph dict, got {type(obj).__name__}")


def _dense(m: Any, path: str) -> np.ndarray:
    import scipy.sparse

    if type(m) is scipy.sparse.csr_matrix:  # built by _csr_from_state, after validation
        return np.asarray(m.toarray(), dtype=np.float32)
    if isinstance(m, np.ndarray) and m.ndim == 2:
        return m.astype(np.float32)
    raise ValueError(f"{path}: expected a [nodes, features] matrix, got {type(m).__name__} {getattr(m, 'shape', '')}")


def _labels(a: Any, path: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.ndim != 2:
        raise ValueError(
            f"{path}: expected one-hot labels [nodes, classes], got {type(a).__name__} {getattr(a, 'shape', '')}"
        )
    return a.astype(np.float32)


def _check_planetoid_shapes(
    name: str, obj: dict[str, Any], allx: np.ndarray, tx: np.ndarray, ally: np.ndarray, ty: np.ndarray, test: np.ndarray
) -> None:
    """The files must agree before they are combined: a mismatch would index out of range or misalign rows."""
    x, y = _dense(obj["x"], f"ind.{name}.x"), _labels(obj["y"], f"ind.{name}.y")
    pairs = {"x/y": (x.shape[0], y.shape[0]), "allx/ally": (allx.shape[0], ally.shape[0])}
    pairs["tx/ty/test.index"] = (tx.shape[0], ty.shape[0], len(test))
    for what, counts in pairs.items():
        if len(set(counts)) != 1:
            raise ValueError(f"ind.{name}.{what}: row counts differ, {counts}")
    if not x.shape[1] == allx.shape[1] == tx.shape[1] or not y.shape[1] == ally.shape[1] == ty.shape[1]:
        raise ValueError(
            f"ind.{name}: feature widths {x.shape[1]}/{allx.shape[1]}/{tx.shape[1]} (x/allx/tx) or class counts "
            f"{y.shape[1]}/{ally.shape[1]}/{ty.shape[1]} (y/ally/ty) differ"
        )
    if len(test) == 0 or len(np.unique(test)) != len(test) or int(test.min()) != allx.shape[0]:
        raise ValueError(
            f"ind.{name}.test.index: ids must be distinct and start right after the {allx.shape[0]} allx rows, "
            f"got {len(test)} ids from {int(test.min()) if len(test) else None}"
        )


def load_planetoid(name: str, data_dir: str | Path | None = None, split: str = "geom-gcn") -> LoadedGraph:
    """Load Cora or CiteSeer (Kipf & Welling node order), always undirected without self-loops.

    Args:
        name: ``cora`` or ``citeseer``.
        data_dir: a folder holding ``planetoid/`` (and ``geom-gcn/`` for the Geom-GCN splits).
        split: ``"geom-gcn"``: the 10 Geom-GCN splits (~48/32/20, masks [N, 10]); ``"public"``: the
            Planetoid split (20 labels per class, the next 500 nodes for validation, the 1000 test ids;
            masks [N, 1]).

    Node order: ``vstack(allx, tx)`` with the ``tx`` rows moved to their ``test.index`` positions. For
    CiteSeer, 15 ids in the test range have no ``tx`` row (isolated nodes); they get zero features and a
    zero label row, whose argmax is class 0, exactly as in Kipf's and Geom-GCN's loaders (3327 nodes).
    """
    name = _canonical(name, PLANETOID_NAMES)
    if split not in ("geom-gcn", "public"):
        raise ValueError(f"split must be 'geom-gcn' or 'public', got {split!r}")
    keys = ("x", "y", "tx", "ty", "allx", "ally", "graph")
    files = _Files(PLANETOID, [f"ind.{name}.{k}" for k in (*keys, "test.index")], data_dir)
    obj = {k: read_planetoid_pickle(files.path(f"ind.{name}.{k}")) for k in keys}
    test_index = np.asarray(files.path(f"ind.{name}.test.index").read_text().split(), dtype=np.int64)

    allx, tx = _dense(obj["allx"], f"ind.{name}.allx"), _dense(obj["tx"], f"ind.{name}.tx")
    ally, ty = _labels(obj["ally"], f"ind.{name}.ally"), _labels(obj["ty"], f"ind.{name}.ty")
    _check_planetoid_shapes(name, obj, allx, tx, ally, ty, test_index)
    test_sorted = np.sort(test_index)
    # CiteSeer: the test range holds ids with no tx row; pad so that every id in it has a row
    n_test_range = int(test_sorted[-1]) - int(test_sorted[0]) + 1
    tx_full = np.zeros((n_test_range, tx.shape[1]), dtype=np.float32)
    ty_full = np.zeros((n_test_range, ty.shape[1]), dtype=np.float32)
    tx_full[test_sorted - test_sorted[0]] = tx
    ty_full[test_sorted - test_sorted[0]] = ty
    features = np.vstack([allx, tx_full])
    labels = np.vstack([ally, ty_full])
    # the i-th tx row belongs to node test_index[i]; Kipf's loader reorders test_sorted -> test_index
    features[test_index] = features[test_sorted]
    labels[test_index] = labels[test_sorted]
    num_nodes = features.shape[0]

    graph = obj["graph"]
    if not isinstance(graph, dict):
        raise ValueError(f"ind.{name}.graph: expected a dict of adjacency lists, got {type(graph).__name__}")
    src = [u for u, nbrs in graph.items() for _ in nbrs]
    dst = [v for nbrs in graph.values() for v in nbrs]
    # read_planetoid_pickle checked the types and signs; the node range needs the features' row count
    if len(graph) != num_nodes or max(max(src, default=0), max(dst, default=0)) >= num_nodes:
        raise ValueError(
            f"ind.{name}.graph has {len(graph)} nodes and ids up to {max(src + dst, default=0)}, "
            f"features have {num_nodes} nodes"
        )
    edge_index = torch.tensor([src, dst], dtype=torch.long)

    x = torch.from_numpy(features)
    y = torch.from_numpy(labels.argmax(axis=1).astype(np.int64))
    data = Data(x=x, edge_index=_finish_edges(edge_index, num_nodes, True), y=y)
    source = f"kimiyoung/planetoid@{PLANETOID_COMMIT[:7]} ind.{name}.*"
    notes = f"{n_test_range - len(test_index)} isolated test-range ids padded with zero rows (label 0)"
    if split == "public":
        n_train = np.asarray(obj["y"]).shape[0]
        masks = {k: torch.zeros(num_nodes, 1, dtype=torch.bool) for k in ("train_mask", "val_mask", "test_mask")}
        masks["train_mask"][:n_train, 0] = True
        masks["val_mask"][n_train : n_train + 500, 0] = True
        masks["test_mask"][torch.from_numpy(test_index), 0] = True
        split_note = "public Planetoid split (20 per class train, next 500 val, 1000 test ids)"
    else:
        geom = _Files(GEOM_GCN, _split_paths(name), data_dir)
        masks = _read_geom_gcn_splits(geom, name, num_nodes)
        files.used += geom.used
        split_note = GEOM_GCN_SPLIT_NOTE
        source += f"; splits: graphdml-uiuc-jlu/geom-gcn@{GEOM_GCN_COMMIT[:7]}"
        if name == "cora":
            notes += "; 223 unconnected Cora nodes are in no Geom-GCN mask"
    for k, v in masks.items():
        data[k] = v
    return LoadedGraph(data, _meta(name, data, source, files.used, split_note, True, notes))


# -- homophilic SSL benchmarks (Amazon, Coauthor, WikiCS) -------------------------------------------
RANDOM_SPLIT_NOTE = "random {train:.0%}/{val:.0%}/{test:.0%} train/val/test, {num} splits drawn with seed {seed}"


def random_splits(
    num_nodes: int, num_splits: int, *, train: float = 0.1, val: float = 0.1, seed: int = 0
) -> dict[str, Tensor]:
    """``num_splits`` random train/val/test partitions of the nodes as [N, S] bool masks (BGRL's protocol).

    Split ``s`` is a permutation from ``torch.Generator().manual_seed(seed + s)``: its first
    ``floor(train N)`` nodes train, the next ``floor(val N)`` validate, the rest test (not stratified,
    as in nerdslab/bgrl's ``create_masks``; with 10/10 the test set is the remaining ~80%).
    """
    if num_splits < 1 or num_nodes < 1:
        raise ValueError(f"need num_nodes >= 1 and num_splits >= 1, got {num_nodes}, {num_splits}")
    if not (0 < train and 0 < val and train + val < 1):
        raise ValueError(f"need 0 < train, 0 < val and train + val < 1, got train={train!r}, val={val!r}")
    n_train, n_val = int(train * num_nodes), int(val * num_nodes)
    masks = {k: torch.zeros(num_nodes, num_splits, dtype=torch.bool) for k in ("train_mask", "val_mask", "test_mask")}
    for s in range(num_splits):
        perm = torch.randperm(num_nodes, generator=torch.Generator().manual_seed(seed + s))
        masks["train_mask"][perm[:n_train], s] = True
        masks["val_mask"][perm[n_train : n_train + n_val], s] = True
        masks["test_mask"][perm[n_train + n_val :], s] = True
    return masks


def read_gnn_benchmark_npz(path: str | Path) -> tuple[Any, Any, np.ndarray]:
    """One gnn-benchmark npz -> (adjacency csr [N, N], attributes csr [N, F], labels [N] int64), validated.

    Only the numeric keys are read (``np.load(allow_pickle=False)``; Coauthor's name arrays are object
    arrays and are never touched). Both CSR matrices go through :func:`checked_csr`; the adjacency must be
    square and agree with the attribute rows and the labels.
    """
    with np.load(path, allow_pickle=False) as z:
        mats = []
        for what in ("adj", "attr"):
            shape = z[f"{what}_shape"]
            if shape.shape != (2,) or shape.dtype.kind not in "iu" or (shape < 0).any():
                raise ValueError(f"{path}: {what}_shape must be two non-negative ints, got {shape!r:.80}")
            rows, cols = int(shape[0]), int(shape[1])
            arrays = (z[f"{what}_data"], z[f"{what}_indices"], z[f"{what}_indptr"])
            mats.append(checked_csr(*arrays, (rows, cols), f"{path} [{what}]"))
        labels = _numeric(z["labels"], str(path), "labels")
    adj, attr = mats
    n = adj.shape[0]
    if adj.shape != (n, n) or attr.shape[0] != n or labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"{path}: adjacency {adj.shape}, attributes {attr.shape} and labels {labels.shape} {labels.dtype} "
            "disagree; expected [N, N], [N, F] and [N] integers"
        )
    if n and (int(labels.min()) < 0):
        raise ValueError(f"{path}: labels must be >= 0, got {int(labels.min())}")
    return adj, attr, labels.astype(np.int64)


def load_gnn_benchmark(
    name: str, data_dir: str | Path | None = None, *, num_splits: int = 20, split_seed: int = 0
) -> LoadedGraph:
    """Amazon Computers/Photos or Coauthor CS/Physics, as ``torch_geometric.io.read_npz(to_undirected=True)``.

    Args:
        name: ``amazon-computers``, ``amazon-photos``, ``coauthor-cs`` or ``coauthor-physics`` (aliases
            ``computers``, ``photo``, ``cs``, ``physics``).
        data_dir: a folder holding ``gnn-benchmark/`` (see ``foresight.core.data`` for the search order).
        num_splits, split_seed: these sets have no official splits; masks are :func:`random_splits`
            10/10/80 (BGRL's protocol), [N, num_splits]. An experiment may draw its own instead.

    Edges: the stored adjacency's non-zeros (binary), self-loops removed, symmetrised and deduplicated (the
    Amazon adjacency is stored asymmetric). Features: the dense attribute matrix, float32, not normalised
    (Coauthor's are counts). Counts (nodes / undirected edges / features / classes) match the published ones:
    Computers 13752/245861/767/10, Photos 7650/119081/745/8, CS 18333/81894/6805/15, Physics 34493/247962/8415/5.
    """
    name = _canonical(name, tuple(GNN_BENCHMARK_FILES))
    rel = GNN_BENCHMARK_FILES[name]
    files = _Files(GNN_BENCHMARK, [rel], data_dir)
    adj, attr, labels = read_gnn_benchmark_npz(files.path(rel))
    coo = adj.tocoo()
    edge_index = torch.from_numpy(np.stack([coo.row, coo.col]).astype(np.int64))
    n = adj.shape[0]
    x = torch.from_numpy(np.asarray(attr.toarray(), dtype=np.float32))
    masks = random_splits(n, num_splits, seed=split_seed)
    data = Data(x=x, edge_index=_finish_edges(edge_index, n, True), y=torch.from_numpy(labels), **masks)
    source = f"shchur/gnn-benchmark@{GNN_BENCHMARK_COMMIT[:7]} data/npz/{rel}"
    split = RANDOM_SPLIT_NOTE.format(train=0.1, val=0.1, test=0.8, num=num_splits, seed=split_seed)
    notes = "no official splits (BGRL protocol: random 10/10/80 per seed); features not normalised"
    return LoadedGraph(data, _meta(name, data, source, files.used, split, True, notes))


def planted_partition(
    num_nodes: int = 300, num_classes: int = 3, num_features: int = 40, *, degree: float = 8.0, seed: int = 0
) -> LoadedGraph:
    """A small synthetic homophilic graph for smoke tests (no files): a stochastic block model.

    Nodes get classes ``i % C``; an undirected edge joins two nodes of one class with probability
    ``0.8 degree / (N / C)`` and of different classes with ``0.2 degree / (N - N / C)``. Features are
    0/1 bags of words: each node switches on 8 words, 4 from its class's block of ``F / C`` and 4 at random.
    Masks: :func:`random_splits` 10/10/80 (one split). Deterministic in ``seed``.
    """
    if num_nodes < 2 * num_classes or num_classes < 2 or num_features < num_classes:
        raise ValueError(
            f"need num_nodes >= 2 C, C >= 2 and F >= C, got N={num_nodes}, C={num_classes}, F={num_features}"
        )
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num_nodes) % num_classes
    same = y[:, None] == y[None, :]  # [N, N]
    size = num_nodes / num_classes
    prob = torch.where(same, 0.8 * degree / size, 0.2 * degree / (num_nodes - size)).clamp(max=1.0)
    upper = torch.triu(torch.rand(num_nodes, num_nodes, generator=g) < prob, diagonal=1)
    edge_index = _finish_edges(upper.nonzero().t(), num_nodes, True)
    block = num_features // num_classes
    own = y[:, None] * block + torch.randint(0, block, (num_nodes, 4), generator=g)
    noise = torch.randint(0, num_features, (num_nodes, 4), generator=g)
    x = torch.zeros(num_nodes, num_features)
    x.scatter_(1, torch.cat([own, noise], dim=1), 1.0)
    data = Data(x=x, edge_index=edge_index, y=y, **random_splits(num_nodes, 1, seed=seed))
    split = RANDOM_SPLIT_NOTE.format(train=0.1, val=0.1, test=0.8, num=1, seed=seed)
    source = f"synthetic planted partition (N={num_nodes}, C={num_classes}, F={num_features}, seed={seed})"
    return LoadedGraph(data, _meta("synthetic", data, source, [], split, True))


def git_blob_sha1(path: str | Path) -> str:
    """``git hash-object`` of a file: sha1 over ``b"blob <size>\\0"`` + its bytes."""
    raw = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()


def read_wikics_json(path: str | Path) -> tuple[Data, int]:
    """WikiCS ``data.json`` -> (``Data`` with [N, 20] masks, number of directed links), as PyG's ``WikiCS``.

    Keys: ``features`` [N][F], ``labels`` [N], ``links`` (node i's out-neighbours), ``train_masks``,
    ``val_masks``, ``stopping_masks`` (20 lists of N 0/1 each) and ``test_mask`` (one list of N, shared by
    the 20 splits; repeated to [N, 20] here). Edges are symmetrised and deduplicated (PyG's default
    ``is_undirected=True``; BGRL makes WikiCS undirected too), self-loops dropped.
    """
    import json

    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a WikiCS data.json ({e})") from None
    keys = ("features", "labels", "links", "train_masks", "val_masks", "stopping_masks", "test_mask")
    if not isinstance(obj, dict) or any(k not in obj for k in keys):
        raise ValueError(f"{path}: expected a JSON object with keys {list(keys)}")
    x = torch.tensor(obj["features"], dtype=torch.float32)
    y = torch.tensor(obj["labels"], dtype=torch.int64)
    n = y.numel()
    if x.dim() != 2 or x.size(0) != n or len(obj["links"]) != n:
        raise ValueError(f"{path}: features {tuple(x.shape)}, {n} labels and {len(obj['links'])} link lists disagree")
    src = [i for i, nbrs in enumerate(obj["links"]) for _ in nbrs]
    dst = [int(j) for nbrs in obj["links"] for j in nbrs]
    edge_index = torch.tensor([src, dst], dtype=torch.int64).view(2, -1)
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
        raise ValueError(f"{path}: links refer to nodes outside [0, {n})")
    masks = {}
    for key, out in (("train_masks", "train_mask"), ("val_masks", "val_mask"), ("stopping_masks", "stopping_mask")):
        m = torch.tensor(obj[key], dtype=torch.bool)
        if m.shape != (NUM_WIKICS_SPLITS, n):
            raise ValueError(f"{path}: {key} has shape {tuple(m.shape)}, expected ({NUM_WIKICS_SPLITS}, {n})")
        masks[out] = m.t().contiguous()  # [N, 20]
    test = torch.tensor(obj["test_mask"], dtype=torch.bool)
    if test.shape != (n,):
        raise ValueError(f"{path}: test_mask has shape {tuple(test.shape)}, expected ({n},)")
    masks["test_mask"] = test[:, None].expand(n, NUM_WIKICS_SPLITS).contiguous()
    data = Data(x=x, edge_index=_finish_edges(edge_index, n, True), y=y, **masks)
    return data, int(edge_index.size(1))


def load_wikics(data_dir: str | Path | None = None) -> LoadedGraph:
    """WikiCS with its 20 official splits (train/val/stopping masks [N, 20], the one test mask repeated).

    ``data.json`` is pinned by its git blob id (no sha256 is known, see ``foresight.core.datasets.WIKICS``):
    put it into ``<data root>/wiki-cs/``; without it, resolution fails naming the folders searched.
    """
    folder = resolve(WIKICS.name, ["data.json"], data_dir=data_dir)
    path = folder / "data.json"
    got = git_blob_sha1(path)
    if got != WIKICS_BLOB:
        raise ValueError(f"{path} has git blob id {got}, expected {WIKICS_BLOB} ({WIKICS.source})")
    data, _ = read_wikics_json(path)
    used = [(WIKICS.name, "data.json", sha256_file(path))]
    source = f"pmernyei/wiki-cs-dataset dataset/data.json (git blob {WIKICS_BLOB[:7]})"
    split = "20 official WikiCS splits (train/val/stopping masks; one shared test mask)"
    return LoadedGraph(data, _meta("wiki-cs", data, source, used, split, True))


def load_dataset(name: str, data_dir: str | Path | None = None, *, undirected: bool = True) -> LoadedGraph:
    """Any set of this module: Geom-GCN splits for the heterophilic and Planetoid sets (Planetoid ones
    always undirected), random 10/10/80 splits for Amazon/Coauthor, the official 20 for WikiCS."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key == "synthetic":
        return planted_partition()
    if key in HOMOPHILIC:
        if not undirected:
            raise ValueError(f"{name} is only provided undirected (undirected=True)")
        return load_wikics(data_dir) if key == "wiki-cs" else load_gnn_benchmark(key, data_dir)
    if key in PLANETOID_NAMES:
        if not undirected:
            raise ValueError(f"{name} is only provided undirected (undirected=True)")
        return load_planetoid(key, data_dir, split="geom-gcn")
    return load_geom_gcn(key, data_dir, undirected=undirected)
