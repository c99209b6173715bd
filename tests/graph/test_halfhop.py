"""Tests for foresight.graph.halfhop: PyG golden cases, PyG parity, properties, batching, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_geometric.transforms as T
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch_geometric.data import Batch, Data

from foresight.graph.halfhop import HalfHop, HalfHopOutput, half_hop, half_hop_structure, original_nodes
from foresight.graph.halfhop import half_hop_reference as reference

PROPERTY = settings(max_examples=40, deadline=None)

# The two PyG golden cases share this input (test/transforms/test_half_hop.py).
GOLDEN_X = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]], dtype=torch.float)
GOLDEN_EI = torch.tensor([[0, 1, 1, 2, 0, 1, 2], [1, 0, 2, 1, 0, 1, 2]])


def golden_data() -> Data:
    return Data(x=GOLDEN_X.clone(), edge_index=GOLDEN_EI.clone())


@st.composite
def graphs(draw, max_nodes: int = 10, max_edges: int = 30, min_nodes: int = 1, features: int | None = None):
    """Small directed multigraphs with self-loops and duplicate edges, plus a target mask."""
    n = draw(st.integers(min_nodes, max_nodes))
    e = draw(st.integers(0, max_edges))
    pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), min_size=e, max_size=e))
    ei = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).t().contiguous()
    f = features if features is not None else draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, f, generator=gen)
    attr = torch.randn(e, 2, generator=gen)
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=torch.bool)
    return x, ei, attr, mask


def random_graph(n: int, e: int, f: int = 4, seed: int = 0) -> Data:
    """Random graph with forced self-loops and duplicate edges."""
    gen = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=gen)
    ei[1, : e // 10] = ei[0, : e // 10]  # self-loops
    ei = torch.cat([ei, ei[:, : e // 5]], dim=1)  # duplicates
    return Data(x=torch.randn(n, f, generator=gen), edge_index=ei)


# --------------------------------------------------------------------------------------------
# Golden cases (PyG test/transforms/test_half_hop.py; docs/halfhop.md, "PyG golden cases")
# --------------------------------------------------------------------------------------------


def test_golden_case_1_p1():
    data = golden_data()
    out = HalfHop()(data)
    assert out.num_nodes == 7 and out.num_edges == 15
    assert out.slow_node_mask.tolist() == [False] * 3 + [True] * 4
    # blocks: self-loops | src->slow | slow->dst | dst->slow (no kept edges at p=1)
    expected = torch.tensor(
        [[0, 1, 2, 0, 1, 1, 2, 3, 4, 5, 6, 1, 0, 2, 1], [0, 1, 2, 3, 4, 5, 6, 1, 0, 2, 1, 3, 4, 5, 6]]
    )
    assert torch.equal(out.edge_index, expected)
    slow_x = torch.tensor([[3, 4, 5, 6], [3, 4, 5, 6], [7, 8, 9, 10], [7, 8, 9, 10]], dtype=torch.float)
    assert torch.equal(out.x, torch.cat([GOLDEN_X, slow_x]))


GOLDEN_2_EI = torch.tensor([[1, 0, 1, 2, 0, 1, 2, 3, 4, 5, 1, 2, 1], [0, 0, 1, 2, 3, 4, 5, 1, 2, 1, 3, 4, 5]])
GOLDEN_2_X = torch.cat([GOLDEN_X, torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10], [7, 8, 9, 10]], dtype=torch.float)])


def test_golden_case_2_seeded():
    torch.manual_seed(1)  # torch.rand(3) = [0.7576, 0.2793, 0.4031] -> targets 1 and 2
    out = HalfHop(p=0.5)(golden_data())
    assert out.num_nodes == 6 and out.num_edges == 13
    assert out.slow_node_mask.tolist() == [False] * 3 + [True] * 3
    assert torch.equal(out.edge_index, GOLDEN_2_EI)
    assert torch.equal(out.x, GOLDEN_2_X)


def test_golden_case_2_injected_mask():
    mask = torch.tensor([False, True, True])
    out = HalfHop(p=0.5)(golden_data(), node_mask=mask)
    assert torch.equal(out.edge_index, GOLDEN_2_EI)
    assert torch.equal(out.x, GOLDEN_2_X)
    fn = half_hop(GOLDEN_X, GOLDEN_EI, node_mask=mask)
    assert isinstance(fn, HalfHopOutput)
    assert torch.equal(fn.edge_index, GOLDEN_2_EI) and torch.equal(fn.x, GOLDEN_2_X)
    assert fn.edge_attr is None and fn.batch is None and fn.ptr is None


def test_repr():
    assert repr(HalfHop()) == "HalfHop(alpha=0.5, p=1.0)"
    assert repr(HalfHop(alpha=1, p=0)) == "HalfHop(alpha=1.0, p=0.0)"


# --------------------------------------------------------------------------------------------
# Parity with torch_geometric.transforms.HalfHop
# --------------------------------------------------------------------------------------------


def assert_same_as_pyg(ours: Data, theirs: Data) -> None:
    assert torch.equal(ours.x, theirs.x)  # bit-identical: same float ops
    assert torch.equal(ours.edge_index, theirs.edge_index)  # including order
    assert torch.equal(ours.slow_node_mask, theirs.slow_node_mask)


@pytest.mark.parity
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("alpha", [0.5, 0.3, 1.0, 0.0])
def test_parity_with_pyg_p1(seed: int, alpha: float):
    data = random_graph(60, 400, seed=seed)
    assert_same_as_pyg(HalfHop(alpha=alpha)(data), T.HalfHop(alpha=alpha)(data))


@pytest.mark.parity
@pytest.mark.parametrize("p", [0.0, 0.25, 0.75])
def test_parity_with_pyg_seeded(p: float):
    data = random_graph(80, 500, seed=7)
    torch.manual_seed(123)
    ours = HalfHop(alpha=0.2, p=p)(data)
    after_ours = torch.rand(4)  # both must also leave the global RNG in the same state
    torch.manual_seed(123)
    theirs = T.HalfHop(alpha=0.2, p=p)(data)
    after_theirs = torch.rand(4)
    assert_same_as_pyg(ours, theirs)
    assert torch.equal(after_ours, after_theirs)


@pytest.mark.parity
def test_parity_with_pyg_injected_targets():
    data = random_graph(50, 300, seed=3)
    torch.manual_seed(5)
    mask = torch.rand(data.num_nodes) < 0.5  # the target set PyG draws under seed 5
    torch.manual_seed(5)
    theirs = T.HalfHop(p=0.5)(data)
    assert_same_as_pyg(HalfHop(p=0.5)(data, node_mask=mask), theirs)
    fn = half_hop(data.x, data.edge_index, node_mask=mask)
    assert torch.equal(fn.x, theirs.x) and torch.equal(fn.edge_index, theirs.edge_index)


@pytest.mark.parity
@given(graphs())
@PROPERTY
def test_parity_with_pyg_property(g):
    x, ei, _, _ = g
    data = Data(x=x, edge_index=ei)
    assert_same_as_pyg(HalfHop(alpha=0.7)(data), T.HalfHop(alpha=0.7)(data))


def test_generator_is_used_and_deterministic():
    data = random_graph(40, 200, seed=1)
    a = half_hop(data.x, data.edge_index, p=0.5, generator=torch.Generator().manual_seed(0))
    b = half_hop(data.x, data.edge_index, p=0.5, generator=torch.Generator().manual_seed(0))
    mask = torch.rand(40, generator=torch.Generator().manual_seed(0)) < 0.5
    c = half_hop(data.x, data.edge_index, node_mask=mask)
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.edge_index, c.edge_index)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@given(graphs(), st.floats(0.0, 1.0))
@PROPERTY
def test_matches_reference_spec(g, alpha: float):
    x, ei, attr, mask = g
    out = half_hop(x, ei, alpha=alpha, edge_attr=attr, node_mask=mask)
    ref_x, ref_ei, ref_slow, ref_attr = reference(x, ei, mask, alpha, attr)
    assert torch.equal(out.edge_index, ref_ei)
    assert torch.equal(out.x, ref_x)
    assert torch.equal(out.slow_node_mask, ref_slow)
    assert torch.equal(out.edge_attr, ref_attr)


@given(graphs(), st.floats(0.0, 1.0))
@PROPERTY
def test_counts_features_loops_and_attrs(g, alpha: float):
    x, ei, attr, mask = g
    x0, ei0, attr0, mask0 = x.clone(), ei.clone(), attr.clone(), mask.clone()
    out = half_hop(x, ei, alpha=alpha, edge_attr=attr, node_mask=mask)
    n, e = x.size(0), ei.size(1)
    loop = ei[0] == ei[1]
    m = int((mask[ei[1]] & ~loop).sum())
    # counts: one slow node and two extra edges per half-hopped edge
    assert out.x.size(0) == n + m and out.slow_node_mask.sum() == m
    assert out.edge_index.size(1) == e + 2 * m and out.edge_attr.size(0) == e + 2 * m
    # original rows untouched, slow rows interpolated
    assert torch.equal(out.x[:n], x)
    kl = e - m
    src, dst = out.edge_index[0, kl : kl + m], out.edge_index[1, kl + m : kl + 2 * m]
    torch.testing.assert_close(out.x[n:], alpha * x[src] + (1 - alpha) * x[dst])
    # self-loops intact, with their attributes, right after the kept edges
    num_loops = int(loop.sum())
    block = slice(kl - num_loops, kl)
    assert torch.equal(out.edge_index[:, block], ei[:, loop])
    assert torch.equal(out.edge_attr[block], attr[loop])
    # every slow node k has exactly src->k, k->dst, dst->k, and all three carry the attr of src->dst
    hop = mask[ei[1]] & ~loop
    ids = torch.arange(n, n + m)
    blocks = [out.edge_index[:, kl + j * m : kl + (j + 1) * m] for j in range(3)]
    assert torch.equal(blocks[0], torch.stack([ei[0, hop], ids]))
    assert torch.equal(blocks[1], torch.stack([ids, ei[1, hop]]))
    assert torch.equal(blocks[2], torch.stack([ei[1, hop], ids]))
    for j in range(3):
        assert torch.equal(out.edge_attr[kl + j * m : kl + (j + 1) * m], attr[hop])
    # slow nodes have in-degree 2 and out-degree 1
    assert torch.equal(torch.bincount(out.edge_index[1], minlength=n + m)[n:], torch.full((m,), 2))
    assert torch.equal(torch.bincount(out.edge_index[0], minlength=n + m)[n:], torch.ones(m, dtype=torch.long))
    # inputs unchanged
    assert torch.equal(x, x0) and torch.equal(ei, ei0) and torch.equal(attr, attr0) and torch.equal(mask, mask0)


@given(graphs(max_nodes=8, max_edges=16))
@PROPERTY
def test_two_slow_nodes_per_undirected_edge(g):
    x, ei, _, _ = g
    ei = ei[:, ei[0] != ei[1]]
    und = torch.unique(torch.cat([ei, ei.flip(0)], dim=1), dim=1)  # both directions, no duplicates
    out = half_hop(x, und)
    n, e = x.size(0), und.size(1)
    assert out.x.size(0) == n + e  # one slow node per direction = two per undirected edge
    src_to_slow = out.edge_index[:, :e]
    slow_to_dst = out.edge_index[:, e : 2 * e]
    pairs = torch.stack([src_to_slow[0], slow_to_dst[1]])  # (i, j) of each slow node
    assert torch.equal(pairs, und)
    for u, v in und.t().tolist():
        if u < v:
            assert {(u, v), (v, u)} <= set(map(tuple, pairs.t().tolist()))


@given(graphs())
@PROPERTY
def test_transform_does_not_modify_input(g):
    x, ei, attr, _ = g
    data = Data(x=x, edge_index=ei, edge_attr=attr, edge_weight=attr[:, 0].clone(), y=torch.arange(x.size(0)))
    before = {k: v.clone() for k, v in data.items()}
    out = HalfHop(p=0.5)(data)
    assert set(data.keys()) == set(before) and "slow_node_mask" not in data
    for k, v in data.items():
        assert torch.equal(v, before[k]), k
    for k in ("x", "edge_index", "edge_attr", "edge_weight"):
        assert out[k] is not data[k], k
    assert out.y is data.y  # node-level attributes are not extended
    assert out.edge_weight.size(0) == out.edge_index.size(1) == out.edge_attr.size(0)


# --------------------------------------------------------------------------------------------
# Batched graphs
# --------------------------------------------------------------------------------------------


@st.composite
def graph_lists(draw):
    items = draw(st.lists(graphs(max_nodes=7, max_edges=14, features=2), min_size=1, max_size=4))
    datas, masks = [], []
    for x, ei, attr, mask in items:
        datas.append(Data(x=x, edge_index=ei, edge_attr=attr, edge_weight=attr[:, 1].clone(), y=x[:, 0]))
        masks.append(mask)
    return datas, masks


def assert_same_value(a, b, key: str) -> None:
    assert torch.equal(a, b) if isinstance(b, Tensor) else a == b, key


def assert_batches_equal(a: Batch, b: Batch) -> None:
    assert set(a.keys()) == set(b.keys())
    for key in b.keys():  # x, edge_index, slow_node_mask, batch, ptr and whatever else is present
        assert_same_value(a[key], b[key], key)
    for ga, gb in zip(a.to_data_list(), b.to_data_list(), strict=True):
        assert set(ga.keys()) == set(gb.keys())
        for key in gb.keys():
            assert_same_value(ga[key], gb[key], key)


@given(graph_lists(), st.booleans())
@PROPERTY
def test_batched_equals_each_graph_alone(gl, use_mask: bool):
    datas, masks = gl
    batch = Batch.from_data_list(datas)
    if use_mask:
        transform = HalfHop(alpha=0.3, p=0.5)
        alone = [transform(d, node_mask=m) for d, m in zip(datas, masks)]
        out = transform(batch, node_mask=torch.cat(masks))
    else:  # p = 1: deterministic
        transform = HalfHop(alpha=0.3)
        alone = [transform(d) for d in datas]
        out = transform(batch)
    assert isinstance(out, Batch)
    assert_batches_equal(out, Batch.from_data_list(alone))
    # the input Batch is untouched, including the bookkeeping used by to_data_list()
    assert torch.equal(Batch.from_data_list(datas).x, batch.x)
    assert "slow_node_mask" not in batch._slice_dict


@given(graphs())
@settings(max_examples=25, deadline=None)
def test_batched_path_with_one_graph_equals_single_path(g):
    x, ei, attr, mask = g
    single = half_hop(x, ei, edge_attr=attr, node_mask=mask)
    batched = half_hop(x, ei, edge_attr=attr, node_mask=mask, batch=torch.zeros(x.size(0), dtype=torch.long))
    for key in ("x", "edge_index", "slow_node_mask", "edge_attr"):
        assert torch.equal(getattr(single, key), getattr(batched, key)), key
    assert torch.equal(batched.ptr, torch.tensor([0, single.x.size(0)]))


def test_batched_interleaved_edges_are_grouped_by_graph():
    a = Data(x=torch.randn(3, 2), edge_index=torch.tensor([[0, 1, 2], [1, 2, 2]]))
    b = Data(x=torch.randn(2, 2), edge_index=torch.tensor([[0, 1], [1, 0]]))
    batch = Batch.from_data_list([a, b])
    shuffled = batch.edge_index[:, [3, 0, 4, 1, 2]]  # edges of the two graphs interleaved
    out = half_hop(batch.x, shuffled, batch=batch.batch)
    expected = Batch.from_data_list([HalfHop()(a), HalfHop()(b)])
    assert torch.equal(out.edge_index, expected.edge_index)
    assert torch.equal(out.x, expected.x) and torch.equal(out.batch, expected.batch)


def test_batched_trailing_empty_graph_keeps_num_graphs():
    x = torch.randn(3, 1)
    out = half_hop(x, torch.tensor([[0], [1]]), batch=torch.zeros(3, dtype=torch.long), num_graphs=2)
    assert out.ptr.tolist() == [0, 4, 4]


def test_explicit_num_nodes_is_updated():
    data = golden_data()
    data.num_nodes = 3
    assert HalfHop()(data).num_nodes == 7 and data.num_nodes == 3
    datas = [golden_data(), random_graph(5, 12, seed=2)]
    for d in datas:
        d.num_nodes = d.x.size(0)
    out = HalfHop()(Batch.from_data_list(datas))
    assert_batches_equal(out, Batch.from_data_list([HalfHop()(d) for d in datas]))
    assert [g.num_nodes for g in out.to_data_list()] == [HalfHop()(d).num_nodes for d in datas]


def test_multi_chunk_feature_paths(monkeypatch: pytest.MonkeyPatch):
    import foresight.graph.halfhop as hh

    monkeypatch.setattr(hh, "_MIN_CHUNK_BYTES", 1)  # force _MAX_CHUNKS row blocks on tiny graphs
    data = random_graph(50, 400, seed=4)
    assert_same_as_pyg(HalfHop(alpha=0.3)(data), T.HalfHop(alpha=0.3)(data))
    datas = [random_graph(20, 80, seed=s) for s in range(3)]
    expected = Batch.from_data_list([T.HalfHop(alpha=0.3)(d) for d in datas])
    assert_batches_equal(HalfHop(alpha=0.3)(Batch.from_data_list(datas)), expected)


# --------------------------------------------------------------------------------------------
# Misc API
# --------------------------------------------------------------------------------------------


def test_original_nodes_readout():
    out = half_hop(GOLDEN_X, GOLDEN_EI)
    h = torch.arange(out.x.size(0) * 2.0).view(-1, 2)
    assert torch.equal(original_nodes(h, out.slow_node_mask), h[:3])
    with pytest.raises(ValueError, match="6 rows but slow_node_mask has 7"):
        original_nodes(h[:6], out.slow_node_mask)


def test_edge_weight_and_attr_on_data():
    data = golden_data()
    data.edge_weight = torch.arange(7.0)
    data.edge_attr = torch.arange(14.0).view(7, 2)
    out = HalfHop(p=0.5)(data, node_mask=torch.tensor([False, True, True]))
    # input edge ids in output order: kept 1 | loops 4 5 6 | hops 0 2 3 (x3)
    order = [1, 4, 5, 6, 0, 2, 3, 0, 2, 3, 0, 2, 3]
    assert out.edge_weight.tolist() == [float(i) for i in order]
    assert torch.equal(out.edge_attr, data.edge_attr[order])


def test_int32_edge_index_and_empty_graphs():
    out = half_hop(GOLDEN_X, GOLDEN_EI.int())
    assert out.edge_index.dtype == torch.int32
    assert torch.equal(out.edge_index.long(), half_hop(GOLDEN_X, GOLDEN_EI).edge_index)
    empty = half_hop(GOLDEN_X, torch.empty(2, 0, dtype=torch.long), edge_attr=torch.empty(0, 3))
    assert torch.equal(empty.x, GOLDEN_X) and empty.edge_index.shape == (2, 0) and empty.edge_attr.shape == (0, 3)
    none = half_hop(torch.empty(0, 2), torch.empty(2, 0, dtype=torch.long))
    assert none.x.shape == (0, 2) and none.slow_node_mask.shape == (0,)


def test_multidim_features_and_half_precision():
    x = torch.randn(3, 2, 3).to(torch.bfloat16)
    out = half_hop(x, GOLDEN_EI, alpha=0.25)
    theirs = T.HalfHop(alpha=0.25)(Data(x=x, edge_index=GOLDEN_EI))
    assert out.x.shape == (7, 2, 3) and torch.equal(out.x, theirs.x)


def test_gradient_flows_to_x():
    x = GOLDEN_X.clone().requires_grad_()
    out = half_hop(x, GOLDEN_EI, alpha=0.25)
    out.x.sum().backward()
    # each node gets 1 (its own row) + 0.25 per outgoing + 0.75 per incoming half-hopped edge
    # node 0: out 0->1, in 1->0; node 1: out 1->0, 1->2, in 0->1, 2->1; node 2: out 2->1, in 1->2
    expected = torch.tensor([1 + 0.25 + 0.75, 1 + 0.5 + 1.5, 1 + 0.25 + 0.75])
    assert torch.allclose(x.grad, expected[:, None].expand(3, 4))


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_bad_alpha_and_p(value: float):
    with pytest.raises(ValueError, match=r"alpha \(interpolation factor\) must be a number in \[0, 1\], got"):
        HalfHop(alpha=value)
    with pytest.raises(ValueError, match=r"p \(probability .*\) must be a number in \[0, 1\], got"):
        HalfHop(p=value)
    with pytest.raises(ValueError, match=rf"alpha .* got {value}"):
        half_hop(GOLDEN_X, GOLDEN_EI, alpha=value)
    with pytest.raises(ValueError, match=rf"p .* got {value}"):
        half_hop(GOLDEN_X, GOLDEN_EI, p=value)


@pytest.mark.parametrize(
    ("edge_index", "match"),
    [
        (torch.tensor([0, 1, 2]), r"edge_index must have shape \[2, E\], got shape \(3,\)"),
        (torch.zeros(3, 4, dtype=torch.long), r"edge_index must have shape \[2, E\], got shape \(3, 4\)"),
        (GOLDEN_EI.float(), r"edge_index must be an integer tensor .* got dtype torch.float32"),
        (GOLDEN_EI.bool(), r"got dtype torch.bool"),
        (torch.tensor([[0, -1], [1, 2]]), r"edge_index must be non-negative, found min entry -1"),
        (torch.tensor([[0, 5], [1, 2]]), r"refers to node 5 \(max entry\) but x has only N=3 nodes"),
    ],
)
def test_bad_edge_index(edge_index: Tensor, match: str):
    with pytest.raises(ValueError, match=match):
        half_hop(GOLDEN_X, edge_index)
    with pytest.raises(ValueError, match=match):
        HalfHop()(Data(x=GOLDEN_X, edge_index=edge_index))


def test_bad_features():
    x = GOLDEN_X.clone()
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"x contains NaN \(1 entries\)"):
        half_hop(x, GOLDEN_EI)
    x[0, 0], x[0, 1] = float("inf"), float("-inf")  # inf alone is allowed, NaN still found
    with pytest.raises(ValueError, match="x contains NaN"):
        half_hop(x, GOLDEN_EI)
    with pytest.raises(ValueError, match="x must be floating point .* got dtype torch.int64"):
        half_hop(GOLDEN_X.long(), GOLDEN_EI)
    with pytest.raises(ValueError, match="needs node features data.x"):
        HalfHop()(Data(edge_index=GOLDEN_EI, num_nodes=3))


def test_bad_edge_tensor_lengths():
    with pytest.raises(ValueError, match=r"edge_attr must have one row per edge, i.e. shape \[E=7, ...\], got"):
        half_hop(GOLDEN_X, GOLDEN_EI, edge_attr=torch.randn(6, 2))
    data = golden_data()
    data.edge_weight = torch.ones(8)
    with pytest.raises(ValueError, match=r"edge_weight must have one row per edge, .*got shape \(8,\)"):
        HalfHop()(data)


def test_bad_batch_and_node_mask():
    with pytest.raises(ValueError, match=r"batch must have one graph id per node, i.e. shape \[N=3\], got"):
        half_hop(GOLDEN_X, GOLDEN_EI, batch=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="batch must be sorted"):
        half_hop(GOLDEN_X, torch.empty(2, 0, dtype=torch.long), batch=torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match=r"edge 0 \(0 -> 1\) connects graphs 0 and 1"):
        half_hop(GOLDEN_X, GOLDEN_EI, batch=torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="batch holds graph id 1 but num_graphs is 1"):
        half_hop(GOLDEN_X, GOLDEN_EI[:, 4:], batch=torch.tensor([0, 1, 1]), num_graphs=1)
    with pytest.raises(ValueError, match=r"node_mask must be a bool tensor of shape \[N=3\]"):
        half_hop(GOLDEN_X, GOLDEN_EI, node_mask=torch.ones(3))
    with pytest.raises(ValueError, match=r"node_mask must be a bool tensor of shape \[N=3\]"):
        HalfHop()(golden_data(), node_mask=torch.ones(4, dtype=torch.bool))


# --------------------------------------------------------------------------------------------
# CUDA
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu_and_pyg():
    data = random_graph(300, 3000, f=8, seed=11)
    cuda = data.to("cuda")
    out = HalfHop(alpha=0.3)(cuda)
    assert out.x.is_cuda and out.edge_index.is_cuda and out.slow_node_mask.is_cuda
    assert_same_as_pyg(out.cpu(), HalfHop(alpha=0.3)(data))
    assert_same_as_pyg(out, T.HalfHop(alpha=0.3)(cuda))
    torch.manual_seed(0)
    ours = HalfHop(p=0.5)(cuda)
    torch.manual_seed(0)
    assert_same_as_pyg(ours, T.HalfHop(p=0.5)(cuda))  # same CUDA random stream
    datas = [random_graph(20, 60, seed=s) for s in range(3)]
    batched = HalfHop()(Batch.from_data_list(datas).to("cuda"))
    assert_batches_equal(batched.cpu(), Batch.from_data_list([HalfHop()(d) for d in datas]))
    gen = torch.Generator(device="cuda").manual_seed(0)
    assert half_hop(cuda.x, cuda.edge_index, p=0.5, generator=gen).x.is_cuda


def test_shallow_copy_semantics():
    data = golden_data()
    snapshot = copy.copy(data)
    out = HalfHop()(data)
    assert out is not data and data.x is snapshot.x and data.edge_index is snapshot.edge_index


def test_half_hop_structure_interpolates_like_half_hop_bit_for_bit():
    """The feature-free layout + interpolation (used by NodeClassifier and BGRL) is half_hop's output."""
    g = torch.Generator().manual_seed(5)
    ei = torch.randint(0, 20, (2, 90), generator=g)
    x = torch.randn(20, 7, generator=g)
    mask = torch.rand(20, generator=g) < 0.6
    out = half_hop(x, ei, alpha=0.3, node_mask=mask)
    hh = half_hop_structure(ei, 20, mask)
    assert torch.equal(hh.edge_index, out.edge_index) and hh.total_nodes == out.x.size(0)
    assert torch.equal(hh.interpolate(x, 0.3), out.x)
    with pytest.raises(ValueError, match="h has 19 rows, expected one per original node \\(20\\)"):
        hh.interpolate(x[:19], 0.3)
