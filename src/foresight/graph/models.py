"""GNN backbones (GCN, GraphSAGE, GAT) built from PyG layers, and a Half-Hop-aware node classifier.

Axis legend for the shape comments:
    N  original nodes     M  slow nodes added by Half-Hop     E  edges
    F  input features     H  hidden channels                  C  classes (output channels)

Where Half-Hop is applied. Half-Hop gives a slow node k on edge i -> j the features
``x_k = alpha * x_i + (1 - alpha) * x_j``. Interpolation commutes with any affine map ``A``:
``A(x_k) = alpha * A(x_i) + (1 - alpha) * A(x_j)``. :class:`NodeClassifier` therefore has an optional
linear input encoder ``F -> H`` and applies Half-Hop to its output: the slow-node hidden features are
exactly those the encoder would compute from interpolated raw features, but they cost ``M x H``
floats instead of ``M x F`` (squirrel at p = 1: 397k slow nodes x 2089 features = 3.3 GB raw, 0.1 GB
at H = 64). An encoder followed by the first conv is a factorisation ``W = W_enc W_1`` of that conv's
weight, so the function class is GCN's/SAGE's/GAT's (training dynamics differ slightly). Without an
encoder, Half-Hop is applied to the raw features, exactly as ``T.HalfHop`` + a plain PyG model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, GCNConv, SAGEConv
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import to_torch_csr_tensor

from foresight.graph.halfhop import HalfHopStructure, half_hop, half_hop_structure, original_nodes

__all__ = [
    "BACKBONES",
    "GAT",
    "GCN",
    "GNN",
    "GraphSAGE",
    "NodeClassifier",
    "PreparedGraph",
    "SparseAdj",
    "dropout",
    "gcn_adj_t",
    "make_backbone",
    "mean_adj_t",
]


def _csr(rows: Tensor, cols: Tensor, weight: Tensor, num_nodes: int) -> Tensor:
    with warnings.catch_warnings():  # torch's "sparse CSR is in beta" / "invariant checks disabled" notices
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*", category=UserWarning)
        return to_torch_csr_tensor(torch.stack([rows, cols]), weight, size=(num_nodes, num_nodes))


class _SpMM(torch.autograd.Function):
    """``adj_t @ x`` whose backward uses a stored ``adj`` (= adj_t^T) instead of transposing a CSR."""

    @staticmethod
    def forward(ctx, adj_t: Tensor, adj: Tensor, x: Tensor) -> Tensor:
        ctx.adj = adj
        return adj_t @ x

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, None, Tensor]:
        return None, None, ctx.adj @ grad


@dataclass(frozen=True)
class SparseAdj:
    """A weighted adjacency for sparse aggregation: ``out[i] = sum_j w_ji x_j`` over edges j -> i.

    Holds ``adj_t`` [N, N] (CSR, row = target: PyG's convention) and its transpose ``adj`` (row =
    source). ``matmul`` is differentiable in ``x``; its backward is ``adj @ grad``, so no CSR is
    transposed (a sort over all edges) in every backward pass, as ``torch.sparse.mm`` would do.
    """

    adj_t: Tensor
    adj: Tensor

    @classmethod
    def from_edges(cls, edge_index: Tensor, num_nodes: int, weight: Tensor | None = None) -> SparseAdj:
        """``edge_index`` [2, E] (src, dst) with optional ``weight`` [E] (default 1)."""
        if weight is None:
            weight = torch.ones(edge_index.size(1), device=edge_index.device)
        src, dst = edge_index
        return cls(_csr(dst, src, weight, num_nodes), _csr(src, dst, weight, num_nodes))

    def matmul(self, x: Tensor) -> Tensor:
        """[N, C] -> [N, C]."""
        return _SpMM.apply(self.adj_t, self.adj, x)


def gcn_adj_t(edge_index: Tensor, num_nodes: int) -> SparseAdj:
    """GCN's normalised adjacency ``D^-1/2 (A + I) D^-1/2`` (PyG's ``gcn_norm``: nodes without a
    self-loop get one of weight 1; degrees are in-degrees), as a :class:`SparseAdj`."""
    edge_index, weight = gcn_norm(edge_index, None, num_nodes, add_self_loops=True)
    return SparseAdj.from_edges(edge_index, num_nodes, weight)


def mean_adj_t(edge_index: Tensor, num_nodes: int) -> SparseAdj:
    """Mean aggregation ``1 / in-degree(i)`` on every edge j -> i, as a :class:`SparseAdj`."""
    deg = torch.bincount(edge_index[1], minlength=num_nodes).clamp_min(1).float()
    return SparseAdj.from_edges(edge_index, num_nodes, 1.0 / deg[edge_index[1]])


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout, ``x * (u >= p) / (1 - p)`` with ``u ~ U[0, 1)``.

    Same distribution as ``F.dropout``, but the mask comes from ``torch.rand``, which on CPU is ~5x
    faster than the ``bernoulli_`` kernel ``F.dropout`` uses (Half-Hop graphs have many more rows).
    """
    if not training or p == 0.0:
        return x
    return x * ((torch.rand_like(x) >= p) * (1.0 / (1.0 - p)))


class GNN(nn.Module):
    """A stack of ``num_layers`` message-passing layers: ``[dropout -> conv -> act]* -> dropout -> conv``.

    Subclasses only choose the layer (:meth:`init_conv`), as PyG's ``BasicGNN`` does. Dropout is applied
    to the input of every layer (Kipf & Welling's placement); the last layer has no activation, so the
    output is logits ``[N, C]`` (or embeddings, for an encoder).

    Args:
        in_channels: input feature size.
        hidden_channels: width of the hidden layers (unused when ``num_layers == 1``).
        out_channels: output size (number of classes for a classifier).
        num_layers: number of message-passing layers, >= 1.
        dropout: dropout probability in [0, 1).

    :meth:`graph` turns ``edge_index`` into what :meth:`apply_conv` consumes, once per forward. GCN and
    GraphSAGE aggregate with sparse CSR products (:class:`SparseAdj`): on CPU this is several times
    faster than PyG's gather/scatter over ``edge_index``, and equal to it up to float summation order
    (tested against plain PyG layers). GAT needs per-edge attention and keeps ``edge_index``.
    """

    def __init__(
        self, in_channels: int, hidden_channels: int, out_channels: int, num_layers: int = 2, dropout: float = 0.5
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("hidden_channels", hidden_channels),
            ("out_channels", out_channels),
            ("num_layers", num_layers),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.in_channels, self.hidden_channels, self.out_channels = in_channels, hidden_channels, out_channels
        self.num_layers, self.dropout = num_layers, dropout
        sizes = [in_channels] + [hidden_channels] * (num_layers - 1) + [out_channels]
        self.convs = nn.ModuleList(
            self.init_conv(sizes[i], sizes[i + 1], last=i == num_layers - 1) for i in range(num_layers)
        )

    def init_conv(self, in_channels: int, out_channels: int, *, last: bool) -> MessagePassing:
        raise NotImplementedError

    def graph(self, edge_index: Tensor, num_nodes: int) -> Any:
        """The graph as :meth:`apply_conv` consumes it (default: ``edge_index`` unchanged)."""
        return edge_index

    def apply_conv(self, conv: MessagePassing, x: Tensor, graph: Any) -> Tensor:
        """One layer on the output of :meth:`graph` (default: the PyG layer itself)."""
        return conv(x, graph)

    def reset_parameters(self) -> None:
        for conv in self.convs:
            conv.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor | None, *, graph: Any = None) -> Tensor:
        """``x`` [N, in_channels], ``edge_index`` [2, E] (src, dst) -> [N, out_channels].

        ``graph``: the output of :meth:`graph` for this ``edge_index``, if already computed (then
        ``edge_index`` is not read); lets a caller reuse it across steps on a fixed graph.
        """
        if graph is None:
            graph = self.graph(edge_index, x.size(0))
        for i, conv in enumerate(self.convs):
            x = dropout(x, self.dropout, self.training)
            x = self.apply_conv(conv, x, graph)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return x

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, hidden_channels={self.hidden_channels}, "
            f"out_channels={self.out_channels}, num_layers={self.num_layers}, dropout={self.dropout}"
        )


class GCN(GNN):
    """Kipf & Welling (ICLR 2017): ``GCNConv`` layers, ``D^-1/2 (A + I) D^-1/2 X W + b``.

    The normalised adjacency is built once per forward (:func:`gcn_adj_t`) and each layer computes
    ``GCNConv.forward`` by hand with the layer's own ``lin`` and ``bias``: ``adj_t @ lin(x) + bias``
    (the layers are created with ``normalize=False``). Equal to a stack of default ``GCNConv`` (tested).
    """

    def init_conv(self, in_channels: int, out_channels: int, *, last: bool) -> MessagePassing:
        return GCNConv(in_channels, out_channels, normalize=False)

    def graph(self, edge_index: Tensor, num_nodes: int) -> SparseAdj:
        return gcn_adj_t(edge_index, num_nodes)

    def apply_conv(self, conv: MessagePassing, x: Tensor, graph: SparseAdj) -> Tensor:
        return graph.matmul(conv.lin(x)) + conv.bias


class GraphSAGE(GNN):
    """Hamilton et al. (NeurIPS 2017): ``SAGEConv`` with mean aggregation and a separate root weight.

    Each layer computes ``SAGEConv.forward`` (mean aggregation, root weight, no projection or
    normalisation) by hand with the layer's own weights: ``lin_l(mean_j x_j) + lin_r(x_i)``, the mean
    being a sparse product with :func:`mean_adj_t`. Equal to a stack of default ``SAGEConv`` (tested).
    """

    def init_conv(self, in_channels: int, out_channels: int, *, last: bool) -> MessagePassing:
        return SAGEConv(in_channels, out_channels, aggr="mean")

    def graph(self, edge_index: Tensor, num_nodes: int) -> SparseAdj:
        return mean_adj_t(edge_index, num_nodes)

    def apply_conv(self, conv: MessagePassing, x: Tensor, graph: SparseAdj) -> Tensor:
        return conv.lin_l(graph.matmul(x)) + conv.lin_r(x)


class GAT(GNN):
    """Veličković et al. (ICLR 2018): ``GATConv`` layers.

    Hidden layers use ``heads`` heads of ``hidden_channels // heads`` channels, concatenated; the output
    layer uses one head. ``dropout`` is also the attention-coefficient dropout, as in the GAT paper.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        num_layers: int = 2,
        dropout: float = 0.5,
        heads: int = 8,
    ) -> None:
        if not isinstance(heads, int) or heads < 1:
            raise ValueError(f"heads must be an integer >= 1, got {heads!r}")
        if num_layers > 1 and hidden_channels % heads != 0:
            raise ValueError(f"hidden_channels ({hidden_channels}) must be divisible by heads ({heads})")
        self.heads = heads
        super().__init__(in_channels, hidden_channels, out_channels, num_layers, dropout)

    def init_conv(self, in_channels: int, out_channels: int, *, last: bool) -> MessagePassing:
        if last:
            return GATConv(in_channels, out_channels, heads=1, dropout=self.dropout)
        return GATConv(in_channels, out_channels // self.heads, heads=self.heads, dropout=self.dropout)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, heads={self.heads}"


BACKBONES: dict[str, type[GNN]] = {"gcn": GCN, "sage": GraphSAGE, "gat": GAT}


def make_backbone(
    name: str,
    in_channels: int,
    hidden_channels: int,
    out_channels: int,
    *,
    num_layers: int = 2,
    dropout: float = 0.5,
    heads: int = 8,
) -> GNN:
    """``"gcn"``, ``"sage"`` or ``"gat"`` (``heads`` is used by GAT only)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {list(BACKBONES)}")
    if name == "gat":
        return GAT(in_channels, hidden_channels, out_channels, num_layers, dropout, heads=heads)
    return BACKBONES[name](in_channels, hidden_channels, out_channels, num_layers, dropout)


@dataclass(frozen=True)
class PreparedGraph:
    """A fixed (possibly half-hopped) graph, preprocessed once for :meth:`NodeClassifier.forward`.

    Built by :meth:`NodeClassifier.prepare`. With Half-Hop it stores the augmented graph's structure and
    the endpoints of the half-hopped edges, so a forward pass only has to interpolate the slow-node
    features; the structure (Half-Hop, normalisation, CSR conversion) is not recomputed each step.
    """

    graph: Any  # what the backbone's layers consume, for N + M nodes (GNN.graph output)
    num_nodes: int  # N original nodes
    hh: HalfHopStructure | None = None  # the half-hopped layout (slow-node endpoints), None without Half-Hop


class NodeClassifier(nn.Module):
    """``[linear encoder] -> [Half-Hop] -> backbone -> original-node readout``.

    Args:
        backbone: a :class:`GNN`; its ``in_channels`` is the encoder's output size (or the feature
            size when there is no encoder).
        in_channels: if given, a linear encoder ``in_channels -> backbone.in_channels`` runs first and
            Half-Hop interpolates its output (see the module docstring for why this is exact).
        alpha: Half-Hop interpolation factor in [0, 1], or ``None`` for no Half-Hop.
        p: Half-Hop probability that a node's incoming edges are half-hopped (1 = deterministic).

    ``forward`` returns ``[N, C]``: logits of the original nodes only (slow nodes are dropped with
    ``original_nodes(out, slow_node_mask)``), so losses and metrics index them with the usual masks.
    """

    def __init__(
        self, backbone: GNN, *, in_channels: int | None = None, alpha: float | None = None, p: float = 1.0
    ) -> None:
        super().__init__()
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (or None for no Half-Hop), got {alpha!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        if in_channels is not None and (not isinstance(in_channels, int) or in_channels < 1):
            raise ValueError(f"in_channels must be an integer >= 1 or None, got {in_channels!r}")
        self.encoder = None if in_channels is None else nn.Linear(in_channels, backbone.in_channels)
        self.backbone = backbone
        self.alpha, self.p = alpha, p

    @property
    def uses_half_hop(self) -> bool:
        return self.alpha is not None

    @property
    def stochastic(self) -> bool:
        """Whether each forward draws a new augmented graph (Half-Hop with p < 1)."""
        return self.alpha is not None and self.p < 1.0

    def prepare(self, edge_index: Tensor, num_nodes: int, *, node_mask: Tensor | None = None) -> PreparedGraph:
        """Preprocess a fixed graph: the original one, or its Half-Hop graph for ``node_mask``.

        ``node_mask`` [N] bool selects the half-hopped targets; default: all nodes (``HH_alpha(G)``, the
        ``p = 1`` graph). For ``p < 1`` pass one draw to evaluate on a fixed augmented graph.
        """
        if self.alpha is None:
            return PreparedGraph(self.backbone.graph(edge_index, num_nodes), num_nodes)
        if node_mask is None:
            node_mask = torch.ones(num_nodes, dtype=torch.bool, device=edge_index.device)
        hh = half_hop_structure(edge_index, num_nodes, node_mask)
        return PreparedGraph(self.backbone.graph(hh.edge_index, hh.total_nodes), num_nodes, hh)

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor | None = None,
        *,
        prepared: PreparedGraph | None = None,
        generator: torch.Generator | None = None,
        node_mask: Tensor | None = None,
    ) -> Tensor:
        """``x`` [N, F] and either ``edge_index`` [2, E] or ``prepared`` -> logits [N, C].

        With ``edge_index``, Half-Hop is applied here (a fresh draw for ``p < 1``; ``generator`` /
        ``node_mask`` are passed to :func:`half_hop`). With ``prepared``, the prepared graph is used.
        """
        h = x if self.encoder is None else self.encoder(x)  # [N, H] (or [N, F] without encoder)
        if prepared is not None:
            if prepared.num_nodes != x.size(0):
                raise ValueError(f"prepared graph has {prepared.num_nodes} nodes but x has {x.size(0)} rows")
            if prepared.hh is not None:
                h = prepared.hh.interpolate(h, self.alpha)  # [N + M, H], as half_hop would
            return self.backbone(h, None, graph=prepared.graph)[: x.size(0)]  # slow nodes come last
        if edge_index is None:
            raise ValueError("forward needs edge_index or prepared")
        if self.alpha is None:
            return self.backbone(h, edge_index)
        aug = half_hop(h, edge_index, alpha=self.alpha, p=self.p, generator=generator, node_mask=node_mask)
        out = self.backbone(aug.x, aug.edge_index)  # [N + M, C]
        return original_nodes(out, aug.slow_node_mask)  # [N, C]

    def extra_repr(self) -> str:
        hh = "none" if self.alpha is None else f"alpha={self.alpha}, p={self.p}"
        return f"half_hop=({hh})"
