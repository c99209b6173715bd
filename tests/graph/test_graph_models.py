"""Backbones, the Half-Hop node classifier and the supervised training loop (no data files needed)."""

import pytest
import torch
from torch_geometric.nn import GATConv, GCNConv, SAGEConv
from torch_geometric.utils import coalesce

from foresight.graph.halfhop import half_hop
from foresight.graph.models import (
    GAT,
    GCN,
    GraphSAGE,
    NodeClassifier,
    SparseAdj,
    dropout,
    gcn_adj_t,
    make_backbone,
    mean_adj_t,
)
from foresight.graph.train import FitResult, accuracy, fit_node_classifier


def random_graph(n=40, e=200, f=6, seed=0, self_loops=True):
    g = torch.Generator().manual_seed(seed)
    ei = coalesce(torch.randint(0, n, (2, e), generator=g), num_nodes=n)  # directed, some self-loops
    if not self_loops:
        ei = ei[:, ei[0] != ei[1]]
    return torch.randn(n, f, generator=g), ei


@pytest.mark.parametrize("name,conv", [("gcn", GCNConv), ("sage", SAGEConv)])
def test_csr_backbones_equal_plain_pyg_layers(name, conv):
    # directed graph with self-loops: checks the adj_t orientation and GCN's self-loop handling
    x, ei = random_graph()
    assert (ei[0] == ei[1]).any()
    model = make_backbone(name, 6, 16, 3, num_layers=3, dropout=0.0).eval()
    ref = [conv(6, 16), conv(16, 16), conv(16, 3)]
    for r, c in zip(ref, model.convs):
        r.load_state_dict(c.state_dict())
    h = x
    for i, r in enumerate(ref):
        h = r(h, ei)
        h = h.relu() if i < 2 else h
    torch.testing.assert_close(model(x, ei), h, rtol=1e-5, atol=1e-5)


def test_gat_equals_plain_pyg_layers():
    x, ei = random_graph()
    model = GAT(6, 16, 3, num_layers=2, dropout=0.0, heads=4).eval()
    ref = [GATConv(6, 4, heads=4), GATConv(16, 3, heads=1)]
    for r, c in zip(ref, model.convs):
        r.load_state_dict(c.state_dict())
    torch.testing.assert_close(model(x, ei), ref[1](ref[0](x, ei).relu(), ei))


def test_gcn_adj_t_is_symmetric_normalisation_with_self_loops():
    ei = torch.tensor([[0, 1], [1, 0]])  # one undirected edge
    adj = gcn_adj_t(ei, 3).adj_t.to_dense()
    # nodes 0,1: degree 2 (neighbour + self) -> 1/2 everywhere; node 2: isolated, self-loop only -> 1
    torch.testing.assert_close(adj, torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))


def test_sparse_adj_matmul_and_its_gradient_match_dense():
    _, ei = random_graph()  # directed: adj_t is not symmetric
    w = torch.rand(ei.size(1))
    a = SparseAdj.from_edges(ei, 40, w)
    dense_t = torch.zeros(40, 40).index_put_((ei[1], ei[0]), w, accumulate=True)  # [dst, src]
    torch.testing.assert_close(a.adj_t.to_dense(), dense_t)
    torch.testing.assert_close(a.adj.to_dense(), dense_t.t())
    x = torch.randn(40, 5, requires_grad=True)
    g = torch.randn(40, 5)
    (a.matmul(x) * g).sum().backward()
    torch.testing.assert_close(x.grad, dense_t.t() @ g)
    mean = mean_adj_t(ei, 40).adj_t.to_dense()
    deg = torch.bincount(ei[1], minlength=40)
    torch.testing.assert_close(mean.sum(1)[deg > 0], torch.ones(int((deg > 0).sum())))


def test_half_hop_after_encoder_equals_half_hop_of_raw_features():
    # NodeClassifier interpolates encoder outputs; that must equal running encoder + backbone on HH(x)
    x, ei = random_graph(self_loops=True)
    torch.manual_seed(0)
    model = NodeClassifier(GCN(8, 8, 3, dropout=0.0), in_channels=6, alpha=0.3, p=0.6).eval()
    mask = torch.rand(x.size(0)) < 0.6
    out = model(x, ei, node_mask=mask)
    aug = half_hop(x, ei, alpha=0.3, node_mask=mask)
    ref = model.backbone(model.encoder(aug.x), aug.edge_index)[~aug.slow_node_mask]
    assert out.shape == (x.size(0), 3)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backbone", ["gcn", "sage", "gat"])
@pytest.mark.parametrize("alpha", [None, 0.5])
def test_prepared_graph_equals_on_the_fly(backbone, alpha):
    x, ei = random_graph()
    model = NodeClassifier(make_backbone(backbone, 8, 8, 3, dropout=0.0, heads=2), in_channels=6, alpha=alpha).eval()
    mask = torch.rand(x.size(0)) < 0.5
    prepared = model.prepare(ei, x.size(0), node_mask=mask)
    torch.testing.assert_close(model(x, prepared=prepared), model(x, ei, node_mask=mask), rtol=1e-5, atol=1e-5)
    if alpha is not None:  # default preparation is the p = 1 graph
        full = model.prepare(ei, x.size(0))
        torch.testing.assert_close(model(x, prepared=full), model(x, ei, node_mask=torch.ones_like(mask)))


def test_stochastic_half_hop_redraws_and_gradients_reach_the_encoder():
    x, ei = random_graph()
    model = NodeClassifier(GraphSAGE(8, 8, 3, dropout=0.0), in_channels=6, alpha=0.5, p=0.5)
    assert model.stochastic
    torch.manual_seed(1)
    a = model(x, ei)
    b = model(x, ei)
    assert not torch.allclose(a, b)  # a new augmented graph each call
    a.sum().backward()
    assert model.encoder.weight.grad is not None and model.encoder.weight.grad.abs().sum() > 0


def test_dropout_helper():
    x = torch.ones(1000, 50)
    assert dropout(x, 0.5, training=False) is x
    torch.manual_seed(0)
    y = dropout(x, 0.5, training=True)
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert abs(y.mean().item() - 1.0) < 0.05


def test_construction_validation_names_the_value():
    with pytest.raises(ValueError, match="num_layers must be an integer >= 1, got 0"):
        GCN(4, 8, 2, num_layers=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        GraphSAGE(4, 8, 2, dropout=1.0)
    with pytest.raises(ValueError, match=r"hidden_channels \(10\) must be divisible by heads \(4\)"):
        GAT(4, 10, 2, heads=4)
    with pytest.raises(ValueError, match="unknown backbone 'gin'"):
        make_backbone("gin", 4, 8, 2)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\].*got 1.5"):
        NodeClassifier(GCN(4, 8, 2), alpha=1.5)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got -0.1"):
        NodeClassifier(GCN(4, 8, 2), alpha=0.5, p=-0.1)


def test_repr_shows_hyperparameters():
    model = NodeClassifier(GAT(4, 8, 2, heads=2), in_channels=10, alpha=0.5, p=0.75)
    text = repr(model)
    assert "half_hop=(alpha=0.5, p=0.75)" in text
    assert "num_layers=2, dropout=0.5, heads=2" in text


def planted_graph(n=120, seed=0):
    """Two classes; features carry the label weakly, and every node links to 4 same-class nodes."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 8, generator=g) + 1.5 * torch.nn.functional.one_hot(y, 8).float()
    src = torch.arange(n).repeat_interleave(4)
    dst = (src + 2 * torch.randint(1, n // 2, (4 * n,), generator=g)) % n  # same parity = same class
    ei = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)
    from torch_geometric.data import Data

    perm = torch.randperm(n, generator=g)
    masks = torch.zeros(3, n, 2, dtype=torch.bool)
    for s in range(2):
        perm = torch.randperm(n, generator=g)
        masks[0, perm[:60], s], masks[1, perm[60:90], s], masks[2, perm[90:], s] = True, True, True
    return Data(
        x=x, edge_index=coalesce(ei, num_nodes=n), y=y, train_mask=masks[0], val_mask=masks[1], test_mask=masks[2]
    )


@pytest.mark.parametrize("alpha,p", [(None, 1.0), (0.5, 1.0), (0.5, 0.5)])
def test_fit_learns_a_planted_graph_and_selects_best_val(alpha, p):
    data = planted_graph()
    torch.manual_seed(0)
    model = NodeClassifier(GCN(16, 16, 2, dropout=0.2), in_channels=8, alpha=alpha, p=p)
    fit = fit_node_classifier(model, data, 1, epochs=60, lr=0.02, weight_decay=5e-4, patience=20, eval_seed=3)
    assert isinstance(fit, FitResult)
    assert 1 <= fit.best_epoch <= fit.epochs_run <= 60
    assert fit.val_acc > 0.85 and fit.test_acc > 0.8


def test_fit_is_deterministic_given_the_seed():
    data = planted_graph()
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        model = NodeClassifier(GAT(8, 8, 2, heads=2), in_channels=8, alpha=0.5, p=0.7)
        runs.append(fit_node_classifier(model, data, 0, epochs=10, lr=0.01, weight_decay=0.0, eval_seed=1))
    assert runs[0] == runs[1]


def test_accuracy_and_split_validation():
    assert accuracy(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1])) == 0.5
    data = planted_graph()
    model = NodeClassifier(GCN(8, 8, 2), in_channels=8)
    with pytest.raises(ValueError, match=r"split must be in \[0, 2\), got 2"):
        fit_node_classifier(model, data, 2, epochs=1, lr=0.01, weight_decay=0.0)
