"""The directed arm of halfhop-heterophily keeps edge direction, end to end (no data files).

A tiny directed graph 0 -> 1 -> 2 (plus a self-loop on 2, as the Geom-GCN files have some): node 0 has
only out-edges, node 2 only in-edges. Kept directed, messages flow src -> dst only, so node 0 sees nothing
but itself and a feature change at node 2 reaches no other node; symmetrised, both travel both ways.
"""

import pytest
import torch

from foresight.graph.halfhop import half_hop
from foresight.graph.models import GCN, GraphSAGE, NodeClassifier, gcn_adj_t
from foresight.graph.train import row_normalise

DIRECTED = torch.tensor([[0, 1, 2], [1, 2, 2]])  # 0 -> 1, 1 -> 2, 2 -> 2
SYMMETRISED = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])  # what load_geom_gcn(undirected=True) makes of it


def dense(adj) -> torch.Tensor:
    return adj.adj_t.to_dense()  # [N, N], row = target


def test_directed_propagation_matrix_is_not_symmetric_and_is_a_plus_i():
    a = dense(gcn_adj_t(DIRECTED, 3))
    assert not torch.allclose(a, a.T)
    # D^-1/2 (A + I) D^-1/2 with in-degrees (self-loop counted once): deg = [1, 2, 2]
    s2 = 2**-0.5
    expected = torch.tensor([[1.0, 0.0, 0.0], [s2, 0.5, 0.0], [0.0, 0.5, 0.5]])
    torch.testing.assert_close(a, expected)
    sym = dense(gcn_adj_t(SYMMETRISED, 3))
    torch.testing.assert_close(sym, sym.T)


@pytest.mark.parametrize("backbone", [GCN, GraphSAGE])
@pytest.mark.parametrize("alpha", [None, 0.5])
def test_a_node_with_only_out_edges_aggregates_nothing_from_others(backbone, alpha):
    torch.manual_seed(0)
    model = NodeClassifier(backbone(4, 8, 3, num_layers=2, dropout=0.0), in_channels=5, alpha=alpha).eval()
    x = torch.rand(3, 5)
    changed = x.clone()
    changed[2] += 1.0  # node 2 has only in-edges (and its self-loop)
    with torch.no_grad():
        directed = model(changed, DIRECTED) - model(x, DIRECTED)
        symmetrised = model(changed, SYMMETRISED) - model(x, SYMMETRISED)
    # directed: node 2's change stays at node 2 (two layers, and nothing flows 2 -> 1 -> 0)
    assert torch.equal(directed[:2], torch.zeros(2, 3))
    assert directed[2].abs().max() > 0
    # symmetrised: it reaches node 1 (and node 0 too without Half-Hop; with it, 0 is 4 layers away)
    reached = symmetrised[:2].abs().amax(dim=1) > 0
    assert reached.tolist() == ([True, True] if alpha is None else [False, True])


def test_half_hop_on_directed_edges_adds_one_slow_node_per_directed_edge():
    x = torch.rand(3, 5)
    assert int(half_hop(x, DIRECTED).slow_node_mask.sum()) == 2  # 0 -> 1 and 1 -> 2; the self-loop is kept
    assert int(half_hop(x, SYMMETRISED).slow_node_mask.sum()) == 4


def test_row_normalise_is_geom_gcn_preprocess_features():
    x = torch.tensor([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]])
    torch.testing.assert_close(row_normalise(x), torch.tensor([[0.25, 0.75], [0.0, 0.0], [0.5, 0.5]]))
    assert torch.equal(x, torch.tensor([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]]))  # input untouched
    with pytest.raises(ValueError, match=r"x must be a floating \[N, F\] tensor, got torch.int64"):
        row_normalise(torch.ones(2, 2, dtype=torch.long))
