"""Graph dataset loaders: shapes, counts and split sizes from the SOURCE.md files, sources, safety.

Tests that read data need the pinned files under ``$FORESIGHT_DATA`` (or the user cache, or the
repository's sibling ``../shared/data``); without them they are skipped with the reason.
"""

import collections
import json
import os
import pickle
import shutil
import struct
import warnings

import numpy as np
import pytest
import scipy.sparse
import torch

from foresight.core.data import DataNotFoundError, get_dataset, locate
from foresight.graph.datasets import (
    GEOM_GCN_COMMIT,
    GNN_BENCHMARK_COMMIT,
    GNN_BENCHMARK_FILES,
    HETEROPHILIC,
    PLANETOID_COMMIT,
    YANDEX_COMMIT,
    git_blob_sha1,
    load_dataset,
    load_geom_gcn,
    load_gnn_benchmark,
    load_planetoid,
    load_wikics,
    random_splits,
    read_gnn_benchmark_npz,
    read_planetoid_pickle,
    read_wikics_json,
)
from graph_data import ROOT, needs_data

# from ../shared/data/*/SOURCE.md: nodes, features, classes, undirected edges, split-0 train/val/test
EXPECTED = {
    "texas": (183, 1703, 5, 279, (87, 59, 37)),
    "wisconsin": (251, 1703, 5, 450, (120, 80, 51)),
    "cornell": (183, 1703, 5, 277, (87, 59, 37)),
    "film": (7600, 932, 5, 26659, (3648, 2432, 1520)),
    "chameleon": (2277, 2325, 5, 31371, (1092, 729, 456)),
    "squirrel": (5201, 2089, 5, 198353, (2496, 1664, 1041)),
    "cora": (2708, 1433, 7, 5278, (1192, 796, 497)),
    "citeseer": (3327, 3703, 6, 4552, (1596, 1065, 666)),
}


@needs_data
@pytest.mark.parametrize("name", list(EXPECTED))
def test_shapes_counts_and_split_sizes(name):
    data, meta = load_dataset(name, ROOT)
    n, f, c, und_edges, split0 = EXPECTED[name]
    assert data.x.shape == (n, f) and data.x.dtype == torch.float32
    assert data.y.shape == (n,) and int(data.y.max()) + 1 == c
    for key in ("train_mask", "val_mask", "test_mask"):
        assert data[key].shape == (n, 10) and data[key].dtype == torch.bool
    assert tuple(int(data[k][:, 0].sum()) for k in ("train_mask", "val_mask", "test_mask")) == split0
    # masks are disjoint within every split
    assert int((data.train_mask.int() + data.val_mask.int() + data.test_mask.int()).max()) == 1
    # undirected convention: symmetric, deduplicated, no self-loops
    ei = data.edge_index
    assert ei.size(1) == 2 * und_edges
    assert not (ei[0] == ei[1]).any()
    pairs = set(map(tuple, ei.t().tolist()))
    assert len(pairs) == ei.size(1) and all((v, u) in pairs for u, v in pairs)
    assert meta.undirected and not meta.self_loops and meta.num_splits == 10
    assert meta.num_nodes == n and meta.num_classes == c and meta.num_edges == ei.size(1)
    assert "48/32/20" in meta.split
    assert len(meta.checksum) == 64 and all(len(s) == 64 for _, _, s in meta.files)


@needs_data
def test_directed_convention_keeps_stored_direction_and_self_loops():
    data, meta = load_geom_gcn("chameleon", ROOT, undirected=False)
    # SOURCE.md: 36101 unique directed lines, 50 of them self-loops
    assert data.edge_index.size(1) == 36101 and not meta.undirected and meta.self_loops
    assert int((data.edge_index[0] == data.edge_index[1]).sum()) == 50
    film, _ = load_geom_gcn("actor", ROOT, undirected=False)  # duplicate lines collapse
    assert film.edge_index.size(1) == 30019
    with pytest.raises(ValueError, match="cornell .* only undirected"):
        load_geom_gcn("cornell", ROOT, undirected=False)


@needs_data
def test_cornell_comes_from_yandex_not_the_texas_copy():
    texas, _ = load_geom_gcn("texas", ROOT)
    cornell, meta = load_geom_gcn("cornell", ROOT)
    assert "cornell.npz" in meta.source and "yandex" in meta.source
    assert torch.bincount(cornell.y).tolist() == [38, 16, 30, 82, 17]
    assert torch.bincount(texas.y).tolist() == [33, 1, 18, 101, 30]
    assert not torch.equal(cornell.x, texas.x)


@needs_data
def test_film_features_are_index_lists_and_rows_follow_node_ids():
    data, _ = load_geom_gcn("film", ROOT)
    assert (data.x.sum(1) > 0).all() and set(data.x.unique().tolist()) == {0.0, 1.0}
    # the first line of the file is node 4873 with features 521,92,111,77,770 and label 3
    assert data.x[4873].nonzero().flatten().tolist() == [77, 92, 111, 521, 770] and int(data.y[4873]) == 3


@needs_data
def test_planetoid_public_split_and_citeseer_padding():
    cora, _ = load_planetoid("cora", ROOT, split="public")
    assert tuple(int(cora[k].sum()) for k in ("train_mask", "val_mask", "test_mask")) == (140, 500, 1000)
    assert cora.train_mask.shape == (2708, 1) and torch.bincount(cora.y[cora.train_mask[:, 0]]).tolist() == [20] * 7
    citeseer, meta = load_planetoid("citeseer", ROOT, split="public")
    assert citeseer.num_nodes == 3327 and "15 isolated" in meta.notes
    assert int((citeseer.x.sum(1) == 0).sum()) >= 15
    with pytest.raises(ValueError, match="split must be 'geom-gcn' or 'public', got 'random'"):
        load_planetoid("cora", ROOT, split="random")


@needs_data
def test_cora_unconnected_nodes_are_in_no_geom_gcn_mask():
    cora, meta = load_planetoid("cora", ROOT)
    lines = (ROOT / "geom-gcn" / "unconnected_nodes" / "cora_unconnected_nodes.txt").read_text().split()
    ids = torch.tensor([int(v) for v in lines[1:]])
    assert len(ids) == 223 and "223 unconnected" in meta.notes
    anywhere = cora.train_mask | cora.val_mask | cora.test_mask  # [N, 10]
    assert not anywhere[ids].any() and anywhere.sum(0).eq(2708 - 223).all()


@needs_data
def test_a_modified_file_is_refused(tmp_path):
    for rel in ["new_data/texas", "splits"]:
        shutil.copytree(ROOT / "geom-gcn" / rel, tmp_path / "geom-gcn" / rel)
    edges = tmp_path / "geom-gcn" / "new_data" / "texas" / "out1_graph_edges.txt"
    os.chmod(edges, 0o644)
    edges.write_text(edges.read_text() + "0\t1\n")
    with pytest.raises(ValueError, match="out1_graph_edges.txt has sha256 .* expected 0fe85183"):
        load_geom_gcn("texas", tmp_path)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown dataset 'pubmed'"):
        load_planetoid("pubmed")
    with pytest.raises(ValueError, match="unknown dataset 'minesweeper'"):
        load_geom_gcn("minesweeper")


def test_registered_files_are_pinned_and_hashed():
    commits = {"geom-gcn": GEOM_GCN_COMMIT, "heterophilous-graphs": YANDEX_COMMIT, "planetoid": PLANETOID_COMMIT}
    for name, commit in commits.items():
        spec = get_dataset(name)
        assert spec.files
        for f in spec.files:
            assert f.url.startswith("https://raw.githubusercontent.com/") and f"/{commit}/" in f.url
            assert f.url.endswith("/" + f.path) and len(f.sha256) == 64
    geom = {f.path for f in get_dataset("geom-gcn").files}
    for name in HETEROPHILIC:
        assert all(f"splits/{name}_split_0.6_0.2_{k}.npz" in geom for k in range(10))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("payload", [_Evil(), pickle.loads(pickle.dumps(eval))])
def test_restricted_unpickler_refuses_foreign_globals(tmp_path, payload):
    path = tmp_path / "ind.evil.x"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        read_planetoid_pickle(path)


def test_restricted_unpickler_reads_allowed_globals(tmp_path):
    import collections

    # protocol 2 writes Python-2 module names (``__builtin__.list``), like the Planetoid ``graph`` files
    raw = pickle.dumps(collections.defaultdict(list, {0: [1], 1: [0]}), protocol=2)
    assert b"c__builtin__\nlist" in raw
    path = tmp_path / "ind.toy.graph"
    path.write_bytes(raw)
    assert read_planetoid_pickle(path) == {0: [1], 1: [0]}
    # (numpy/scipy objects are covered by loading the real files in the data tests above)


# --- attacks on the Planetoid unpickler ------------------------------------------------------------
# The pinned sha256 keeps a tampered file from reaching the unpickler in load_planetoid; these attack the
# unpickler itself (read_planetoid_pickle), the second line of defence.
def _p2_tuple(values) -> bytes:
    return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"


def _p2_array(values, code: bytes) -> bytes:
    """Protocol-2 opcodes numpy (Python 2) writes for a 1-D array, as in ind.cora.x."""
    raw = np.asarray(values, dtype="<" + code.decode()).tobytes()
    dtype = b"cnumpy\ndtype\nU\x02" + code + b"K\x00K\x01\x87R(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    head = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
    return head + b"(K\x01" + _p2_tuple([len(values)]) + dtype + b"\x89T" + struct.pack("<I", len(raw)) + raw + b"tb"


def _p2_csr(shape, indptr, indices, data) -> bytes:
    """A Planetoid-style csr_matrix pickle: NEWOBJ, then BUILD of its __dict__ (scipy checks nothing here)."""
    items = b"U\x06formatU\x03csrU\x06_shape" + _p2_tuple(shape)
    items += b"U\x06indptr" + _p2_array(indptr, b"i4") + b"U\x07indices" + _p2_array(indices, b"i4")
    items += b"U\x04data" + _p2_array(data, b"f4")
    return b"\x80\x02cscipy.sparse.csr\ncsr_matrix\n)\x81}(" + items + b"ub."


def _write(tmp_path, raw: bytes, name="ind.evil.x"):
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def test_the_handmade_csr_pickle_is_what_scipy_reads_and_the_unpickler_rebuilds_it(tmp_path):
    raw = _p2_csr((2, 3), [0, 1, 3], [2, 0, 1], [1.0, 2.0, 3.0])
    with warnings.catch_warnings():  # scipy.sparse.csr / numpy.core are deprecated names, still importable
        warnings.simplefilter("ignore")
        reference = pickle.loads(raw, encoding="latin1")
    m = read_planetoid_pickle(_write(tmp_path, raw))
    assert type(m) is scipy.sparse.csr_matrix and m.shape == (2, 3)
    np.testing.assert_array_equal(m.toarray(), reference.toarray())
    np.testing.assert_array_equal(m.toarray(), [[0, 0, 1], [2, 3, 0]])


@pytest.mark.parametrize(
    "parts, match",
    [
        (((2, 3), [0, 1, 3], [2, 0, 1_000_000], [1, 2, 3]), r"column index out of range \[0, 3\)"),
        (((2, 3), [0, 1, 3], [2, -1, 1], [1, 2, 3]), r"column index out of range \[0, 3\): -1"),
        (((2, 3), [0, 3, 1], [2, 0, 1], [1, 2, 3]), r"indptr must rise from 0"),
        (((2, 3), [0, 1, 2, 3], [2, 0, 1], [1, 2, 3]), r"indptr must rise from 0 in 3 entries, got 4"),
        (((2, 3), [0, 1, 9], [2, 0, 1], [1, 2, 3]), r"indptr ends at 9, with 3 indices, 3 values"),
        (((2, 3), [0, 1, 3], [2, 0, 1], [1, float("nan"), 3]), r"csr_matrix data holds NaN or Inf"),
        (((-2, 3), [0, 1, 3], [2, 0, 1], [1, 2, 3]), r"shape must be two non-negative ints"),
    ],
)
def test_a_csr_with_bad_indices_is_refused_before_anything_reads_them(tmp_path, monkeypatch, parts, match):
    raw = _p2_csr(*parts)
    with warnings.catch_warnings():  # the stock unpickler builds the broken matrix without a word ...
        warnings.simplefilter("ignore")
        assert type(pickle.loads(raw, encoding="latin1")) is scipy.sparse.csr_matrix

    def boom(*args, **kwargs):  # ... whose toarray() writes out of bounds; it must never be reached
        raise AssertionError("toarray called on an unvalidated matrix")

    monkeypatch.setattr(scipy.sparse.csr_matrix, "toarray", boom)
    path = _write(tmp_path, raw)
    with pytest.raises(ValueError, match=f"{path}: .*{match}"):
        read_planetoid_pickle(path)


def test_array_data_shorter_than_its_shape_is_refused(tmp_path):
    raw = _p2_csr((2, 3), [0, 1, 3], [2, 0, 1], [1.0, 2.0, 3.0])
    raw = raw.replace(b"\x89T\x0c\x00\x00\x00", b"\x89T\x08\x00\x00\x00", 1)  # indptr: 2 of its 3 int32s
    raw = raw.replace(struct.pack("<3i", 0, 1, 3), struct.pack("<2i", 0, 1), 1)
    with pytest.raises(ValueError, match=r"csr_matrix: numpy array: 8 data bytes, but shape \(3,\) of int32 needs 12"):
        read_planetoid_pickle(_write(tmp_path, raw))


@pytest.mark.parametrize(
    "target", [b"cscipy.sparse.csr\ncsr_matrix\n", b"ccollections\ndefaultdict\n", b"cnumpy\nndarray\n"]
)
def test_build_on_a_class_is_refused_and_patches_nothing(tmp_path, target):
    # GLOBAL <class>, BUILD (None, {"foresight_pwned": 1}): the stock unpickler setattr()s it onto the class
    raw = b"\x80\x02" + target + b"N}U\x0fforesight_pwnedK\x01s\x86b."
    with pytest.raises(pickle.UnpicklingError, match="refusing to set state on"):
        read_planetoid_pickle(_write(tmp_path, raw))
    assert not hasattr(scipy.sparse.csr_matrix, "foresight_pwned")
    assert not hasattr(collections.defaultdict, "foresight_pwned")


def test_calls_and_constructions_outside_the_allow_list_are_refused(tmp_path):
    call_list = b"\x80\x02c__builtin__\nlist\nU\x02ab\x85\x85R."  # list(("ab",)): an allowed global, called
    with pytest.raises(pickle.UnpicklingError, match="refusing to call"):
        read_planetoid_pickle(_write(tmp_path, call_list))
    new_array = b"\x80\x02cnumpy\nndarray\n)\x81."  # NEWOBJ on numpy.ndarray
    with pytest.raises(pickle.UnpicklingError, match="refusing to construct"):
        read_planetoid_pickle(_write(tmp_path, new_array))
    factory = b"\x80\x02ccollections\ndefaultdict\nccollections\ndefaultdict\n\x85R."  # defaultdict(defaultdict)
    with pytest.raises(pickle.UnpicklingError, match="defaultdict factory must be list"):
        read_planetoid_pickle(_write(tmp_path, factory))


def test_os_system_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"

    class Touch:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load global (posix|os|nt).system"):
        read_planetoid_pickle(_write(tmp_path, pickle.dumps(Touch(), protocol=2)))
    assert not marker.exists()


@pytest.mark.parametrize(
    "graph", [{0: [1], 1: [-1]}, {0: [1], "1": [0]}, {0: (1,), 1: [0]}, {0: [1.5], 1: [0]}, {0: [True]}]
)
def test_a_graph_with_non_int_or_negative_ids_is_refused(tmp_path, graph):
    raw = pickle.dumps(collections.defaultdict(list, graph), protocol=2)
    with pytest.raises(ValueError, match="adjacency entry .* must be a non-negative int -> list of such ints"):
        read_planetoid_pickle(_write(tmp_path, raw, "ind.evil.graph"))


# -- Amazon / Coauthor (gnn-benchmark) and WikiCS ------------------------------------------------------------
def _gnn_benchmark_root():
    spec = get_dataset("gnn-benchmark")
    paths = [f.path for f in spec.files]
    sibling = ROOT if ROOT is not None else None
    found = locate(spec, paths) or (locate(spec, paths, sibling) if sibling else None)
    return None if found is None else found.parent


GNN_ROOT = _gnn_benchmark_root()
needs_gnn_benchmark = pytest.mark.skipif(
    GNN_ROOT is None, reason="gnn-benchmark npz files not found: set FORESIGHT_DATA to a folder holding gnn-benchmark/"
)
WIKICS_ROOT = next(
    (r for r in (GNN_ROOT, ROOT) if r is not None and (r / "wiki-cs" / "data.json").is_file()),
    None,
)

# ../shared/data/gnn-benchmark/SOURCE.md (= torch_geometric.io.read_npz(to_undirected=True)):
# nodes / undirected edges / features / classes
PUBLISHED = {
    "amazon-computers": (13752, 245861, 767, 10),
    "amazon-photos": (7650, 119081, 745, 8),
    "coauthor-cs": (18333, 81894, 6805, 15),
    "coauthor-physics": (34493, 247962, 8415, 5),
}


@needs_gnn_benchmark
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_gnn_benchmark_counts_match_the_published_statistics(name):
    data, meta = load_gnn_benchmark(name, GNN_ROOT, num_splits=3)
    n, und_edges, f, c = PUBLISHED[name]
    assert data.x.shape == (n, f) and data.x.dtype == torch.float32
    assert data.y.shape == (n,) and int(data.y.max()) + 1 == c and meta.num_classes == c
    ei = data.edge_index
    assert ei.size(1) == 2 * und_edges and not (ei[0] == ei[1]).any()
    pairs = set(map(tuple, ei.t().tolist()))
    assert len(pairs) == ei.size(1) and all((v, u) in pairs for u, v in pairs)
    assert meta.undirected and not meta.self_loops and meta.num_splits == 3
    assert meta.files == (
        (
            "gnn-benchmark",
            GNN_BENCHMARK_FILES[name],
            get_dataset("gnn-benchmark").file(GNN_BENCHMARK_FILES[name]).sha256,
        ),
    )
    assert tuple(int(data[k][:, 0].sum()) for k in ("train_mask", "val_mask", "test_mask")) == (
        n // 10,
        n // 10,
        n - 2 * (n // 10),
    )


def test_random_splits_partition_the_nodes_and_depend_only_on_the_seed():
    a = random_splits(101, 4, seed=7)
    b = random_splits(101, 4, seed=7)
    assert all(torch.equal(a[k], b[k]) for k in a)
    total = a["train_mask"].int() + a["val_mask"].int() + a["test_mask"].int()
    assert (
        total.eq(1).all() and a["train_mask"].sum(0).tolist() == [10] * 4 and a["val_mask"].sum(0).tolist() == [10] * 4
    )
    assert not torch.equal(a["train_mask"][:, 0], a["train_mask"][:, 1])  # one permutation per split
    assert torch.equal(random_splits(101, 1, seed=9)["train_mask"][:, 0], a["train_mask"][:, 2])  # split s = seed + s
    with pytest.raises(ValueError, match="train=0.6, val=0.5"):
        random_splits(10, 1, train=0.6, val=0.5)


def _npz(path, **over):
    adj = scipy.sparse.csr_matrix(np.array([[0, 1, 0], [1, 0, 1], [0, 0, 0]], dtype=np.float32))
    attr = scipy.sparse.csr_matrix(np.array([[1, 0], [0, 2], [3, 0]], dtype=np.float32))
    arrays = {
        "adj_data": adj.data,
        "adj_indices": adj.indices,
        "adj_indptr": adj.indptr,
        "adj_shape": np.array(adj.shape),
        "attr_data": attr.data,
        "attr_indices": attr.indices,
        "attr_indptr": attr.indptr,
        "attr_shape": np.array(attr.shape),
        "labels": np.array([0, 1, 1]),
        "node_names": np.array(["a", "b", "c"], dtype=object),  # never read (would need pickle)
    }
    arrays.update(over)
    np.savez(path, **arrays)
    return path


def test_gnn_benchmark_npz_is_validated_before_use(tmp_path):
    adj, attr, labels = read_gnn_benchmark_npz(_npz(tmp_path / "ok.npz"))
    assert adj.shape == (3, 3) and attr.toarray().tolist() == [[1, 0], [0, 2], [3, 0]] and labels.tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match=r"\[adj\]: csr_matrix column index out of range \[0, 3\)"):
        read_gnn_benchmark_npz(_npz(tmp_path / "a.npz", adj_indices=np.array([1, 0, 5], dtype=np.int32)))
    with pytest.raises(ValueError, match=r"\[attr\]: csr_matrix indptr must rise from 0"):
        read_gnn_benchmark_npz(_npz(tmp_path / "b.npz", attr_indptr=np.array([0, 2, 1, 3], dtype=np.int32)))
    with pytest.raises(ValueError, match="labels .* disagree"):
        read_gnn_benchmark_npz(_npz(tmp_path / "c.npz", labels=np.array([0, 1])))


def test_gnn_benchmark_and_wikics_specs_are_pinned():
    spec = get_dataset("gnn-benchmark")
    assert {f.path for f in spec.files} == set(GNN_BENCHMARK_FILES.values())
    for f in spec.files:
        assert (
            f.url == f"https://raw.githubusercontent.com/shchur/gnn-benchmark/{GNN_BENCHMARK_COMMIT}/data/npz/{f.path}"
        )
        assert len(f.sha256) == 64
    (wiki,) = get_dataset("wiki-cs").files
    assert wiki.url == "https://github.com/pmernyei/wiki-cs-dataset/raw/master/dataset/data.json"
    with pytest.raises(ValueError, match="unknown dataset 'amazon-books'"):
        load_gnn_benchmark("amazon-books")


def _wikics(path, n=4):
    obj = {
        "features": [[float(i), 1.0] for i in range(n)],
        "labels": [i % 2 for i in range(n)],
        "links": [[1], [0, 2], [2], []],  # 2 -> 2 is a self-loop
        "train_masks": [[int(i == s % n) for i in range(n)] for s in range(20)],
        "val_masks": [[int(i == (s + 1) % n) for i in range(n)] for s in range(20)],
        "stopping_masks": [[0] * n for _ in range(20)],
        "test_mask": [0, 0, 1, 1],
    }
    path.write_text(json.dumps(obj))
    return path


def test_wikics_json_gives_20_splits_and_undirected_edges(tmp_path):
    data, links = read_wikics_json(_wikics(tmp_path / "data.json"))
    assert links == 4 and data.edge_index.t().tolist() == [[0, 1], [1, 0], [1, 2], [2, 1]]
    assert data.train_mask.shape == (4, 20) and data.train_mask[:, 5].tolist() == [False, True, False, False]
    assert data.test_mask.shape == (4, 20) and data.test_mask[:, 19].tolist() == [False, False, True, True]
    bad = json.loads((tmp_path / "data.json").read_text())
    bad["train_masks"] = bad["train_masks"][:3]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"train_masks has shape \(3, 4\), expected \(20, 4\)"):
        read_wikics_json(tmp_path / "bad.json")


def test_wikics_offline_says_what_to_put_where_and_checks_the_blob(tmp_path, monkeypatch):
    monkeypatch.setenv("FORESIGHT_OFFLINE", "1")
    monkeypatch.setenv("FORESIGHT_DATA", str(tmp_path / "none"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError, match=r"(?s)wiki-cs.*data.json  <- https://github.com/pmernyei"):
        load_wikics(tmp_path / "empty")
    _wikics((tmp_path / "wiki-cs").mkdir() or tmp_path / "wiki-cs" / "data.json")
    blob = git_blob_sha1(tmp_path / "wiki-cs" / "data.json")
    with pytest.raises(ValueError, match=f"git blob id {blob}, expected f1b74311"):
        load_wikics(tmp_path)


@pytest.mark.skipif(WIKICS_ROOT is None, reason="wiki-cs/data.json not found (not available offline; see SOURCE.md)")
def test_wikics_counts():
    data, meta = load_wikics(WIKICS_ROOT)
    assert meta.num_nodes == 11701 and meta.num_classes == 10 and data.train_mask.shape == (11701, 20)
    assert data.x.size(1) == 300
