r"""Half-Hop graph upsampling (Azabou et al., ICML 2023), vectorised and PyG-compatible.

Paper: "Half-Hop: A graph upsampling approach for slowing down message passing", ICML 2023,
PMLR 202:1341-1360; https://openreview.net/forum?id=lXczFIwQkv, https://arxiv.org/abs/2308.09198.
Official code: https://github.com/nerdslab/halfhop.

Axis legend used in the shape comments:
    N  original nodes          E  input edges           F  feature dims (any trailing shape)
    M  half-hopped edges = slow nodes                   K  kept (not half-hopped) edges
    L  self-loops                                       B  graphs in a batch
    E' = K + L + 3M output edges                        N' = N + M output nodes

The reference contract is ``torch_geometric.transforms.HalfHop`` (PyG >= 2.4): for a single graph
the output here is bit-for-bit equal to PyG's (same random draw, same edge order, same float ops).
Beyond PyG this module carries ``edge_attr``/``edge_weight`` and supports batched graphs, and it
avoids PyG's full-size temporaries, which makes it faster with a fraction of the peak memory
(numbers in ``benchmarks/results/``, produced by ``benchmarks/halfhop_speed.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

__all__ = [
    "HalfHop",
    "HalfHopOutput",
    "HalfHopStructure",
    "half_hop",
    "half_hop_reference",
    "half_hop_structure",
    "original_nodes",
]

# Slow-node features are written straight into the output; only the target term goes through a
# scratch buffer, processed in at most _MAX_CHUNKS row blocks, so the buffer is at most
# max(1/16 of the slow features, 64 MiB) instead of PyG's five full [M, F] temporaries. Few, large
# blocks matter on a busy host: every op is an OpenMP parallel region, and with 1 MiB blocks
# (thousands of regions) a 2-core box shared with other jobs spent 20x longer in barriers than in
# the copies themselves; cache-sized blocks were only ~25% faster on an idle box.
_MAX_CHUNKS = 16
_MIN_CHUNK_BYTES = 64 << 20
_INT32_MAX = torch.iinfo(torch.int32).max


@dataclass(frozen=True)
class HalfHopOutput:
    """Result of :func:`half_hop`.

    Attributes:
        x: ``[N + M, *F]`` node features; rows of slow nodes hold the interpolated features.
        edge_index: ``[2, K + L + 3M]`` edges, ordered as documented in :func:`half_hop`.
        slow_node_mask: ``[N + M]`` bool, True for slow nodes.
        edge_attr: ``[K + L + 3M, ...]`` edge attributes, or None if none were given.
        batch: ``[N + M]`` graph id per node, or None for a single graph.
        ptr: ``[B + 1]`` node offsets of each graph in the output, or None for a single graph.
    """

    x: Tensor
    edge_index: Tensor
    slow_node_mask: Tensor
    edge_attr: Tensor | None = None
    batch: Tensor | None = None
    ptr: Tensor | None = None


def half_hop(
    x: Tensor,
    edge_index: Tensor,
    *,
    alpha: float = 0.5,
    p: float = 1.0,
    edge_attr: Tensor | None = None,
    batch: Tensor | None = None,
    node_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    num_graphs: int | None = None,
) -> HalfHopOutput:
    r"""Half-Hop upsampling: insert a "slow node" into every incoming edge of sampled target nodes.

    Definition (the paper's, as implemented by ``torch_geometric.transforms.HalfHop``). Draw one uniform
    number per node, :math:`u_j \sim U[0, 1)`, and select target :math:`j` iff :math:`u_j < p`.
    Every directed edge :math:`i \to j` with :math:`i \ne j` and :math:`j` selected is replaced by a
    new node :math:`k` and three edges,

    .. math::
        E' = (E \setminus \{i \to j\}) \cup \{i \to k,\; k \to j,\; j \to k\}, \qquad
        x_k = \alpha\, x_i + (1 - \alpha)\, x_j .

    The slow node only forwards messages in the original direction (:math:`k \to j`); self-loops
    are never half-hopped. An undirected edge stored as two directed edges gets two slow nodes.
    ``p = 1`` is the deterministic :math:`HH_\alpha(G)`; ``p < 1`` is :math:`hh_\alpha(G; p)`.
    Note that ``p`` selects *nodes*: PyG's and the official docstrings call it the probability of
    half-hopping an edge, but both (and this function) half-hop all incoming edges of a selected
    target, so edges sharing a target are hopped together.

    Output order (single graph, same as PyG): slow nodes are appended as ``N .. N+M-1`` in the
    order of the half-hopped edges in ``edge_index``, and edges are
    ``[kept (K), self-loops (L), src->slow (M), slow->dst (M), dst->slow (M)]``, each block in
    input order. ``edge_attr`` rows follow their edge: kept edges and self-loops keep theirs, and
    all three edges that replace ``i -> j`` inherit the attribute of ``i -> j``.

    Batched graphs (``batch`` given, nodes sorted by graph as in a PyG ``Batch``): the output is
    laid out graph by graph, ``[nodes of g0, slow nodes of g0, nodes of g1, slow nodes of g1,
    ...]``, and the edges are grouped by graph (stably, in graph order), each group in the
    single-graph block order above, with node ids renumbered accordingly. When the input edges are
    already grouped by graph in graph order (every ``Batch.from_data_list`` output), the result
    equals transforming each graph alone and re-batching with ``Batch.from_data_list``. This holds
    for ``p = 1`` or an injected ``node_mask``; with ``p < 1`` the one draw of ``N`` numbers here
    is not the same stream as one draw per graph, so only the distribution matches.

    The random draw is ``torch.rand(N, generator=generator, device=x.device) < p``, made even for
    ``p = 1`` so that the global RNG advances exactly as under PyG and seeded runs stay equal.

    Args:
        x: ``[N, *F]`` floating-point node features (no NaN).
        edge_index: ``[2, E]`` int64 or int32 edges ``(src, dst)`` with entries in ``[0, N)``.
        alpha: interpolation factor in ``[0, 1]``; 1 copies the source, 0 copies the target.
        p: probability in ``[0, 1]`` that a node is selected as a half-hop target.
        edge_attr: optional ``[E, ...]`` per-edge tensor (attributes or weights) to carry along.
        batch: optional ``[N]`` sorted graph id per node; enables the batched layout above.
        node_mask: optional ``[N]`` bool set of selected targets; replaces the random draw (``p``
            and ``generator`` are then unused and the RNG is not advanced).
        generator: optional ``torch.Generator`` on ``x.device`` for the random draw.
        num_graphs: number of graphs ``B`` when ``batch`` is given (default ``batch.max() + 1``;
            pass it when trailing graphs have no nodes). Ignored without ``batch``.

    Returns:
        :class:`HalfHopOutput` with ``x [N+M, *F]``, ``edge_index [2, K+L+3M]``,
        ``slow_node_mask [N+M]``, ``edge_attr [K+L+3M, ...]`` or None, ``batch [N+M]`` or None and
        ``ptr [B+1]`` or None. ``edge_index`` keeps the input dtype (int32 is widened to int64 only
        if ``N + M`` would overflow it). Inputs are never modified.

    Raises:
        ValueError: for out-of-range ``alpha``/``p``, malformed ``edge_index``, NaN features or
            tensors whose lengths do not match ``N``/``E`` (the message names the offending value).

    Example::

        >>> x = torch.tensor([[0.0], [2.0]])
        >>> out = half_hop(x, torch.tensor([[0], [1]]), alpha=0.5)
        >>> out.edge_index.tolist()  # 0->2 (src->slow), 2->1 (slow->dst), 1->2 (dst->slow)
        [[0, 2, 1], [2, 1, 2]]
        >>> out.x[2].item(), out.slow_node_mask.tolist()
        (1.0, [False, False, True])
    """
    _check_fraction("alpha", alpha, "interpolation factor")
    _check_fraction("p", p, "probability of selecting a target node")
    out, _, _ = _half_hop(
        x,
        edge_index,
        alpha=float(alpha),
        p=float(p),
        edge_tensors=[] if edge_attr is None else [edge_attr],
        edge_names=["edge_attr"],
        batch=batch,
        node_mask=node_mask,
        generator=generator,
        num_graphs=num_graphs,
    )
    return out


@dataclass(frozen=True)
class HalfHopStructure:
    """The graph of :func:`half_hop` without its features, for models that interpolate hidden features.

    Interpolation commutes with any affine map ``A``: ``A(a x_i + (1 - a) x_j) = a A(x_i) + (1 - a) A(x_j)``.
    A model whose first operation on node features is linear (a GCN layer's ``X W``, an input encoder) can
    therefore run it on the N original rows only and interpolate its output (:meth:`interpolate`): the slow
    rows then cost the output width instead of the input width F, and the result equals the materialised
    ``half_hop(x, ...)`` path up to float rounding. Built by :func:`half_hop_structure`.
    """

    edge_index: Tensor  # [2, K + L + 3M] half_hop's output edges (slow nodes are N .. N + M - 1)
    num_nodes: int  # N original nodes
    src: Tensor  # [M] source i of the half-hopped edge i -> j behind slow node N + m
    dst: Tensor  # [M] its target j

    @property
    def num_slow(self) -> int:
        return int(self.src.numel())

    @property
    def total_nodes(self) -> int:
        return self.num_nodes + self.num_slow

    def interpolate(self, h: Tensor, alpha: float) -> Tensor:
        """``[N, *H] -> [N + M, *H]``: original rows, then ``alpha h_i + (1 - alpha) h_j`` per slow node.

        The float ops are :func:`half_hop`'s (two scalar products, then a sum); ``index_select`` keeps the
        backward a scatter-add (no sort).
        """
        if h.size(0) != self.num_nodes:
            raise ValueError(f"h has {h.size(0)} rows, expected one per original node ({self.num_nodes})")
        slow = alpha * h.index_select(0, self.src) + (1 - alpha) * h.index_select(0, self.dst)  # [M, *H]
        return torch.cat([h, slow], dim=0)


def half_hop_structure(edge_index: Tensor, num_nodes: int, node_mask: Tensor) -> HalfHopStructure:
    """The edges and slow-node endpoints of ``half_hop(x, edge_index, node_mask=node_mask)`` for any ``x``.

    ``node_mask`` [N] bool selects the half-hopped targets (draw it as ``torch.rand(N) < p`` to follow
    :func:`half_hop`'s random stream). The endpoints are read from the documented output order
    ``[kept, self-loops, src->slow (M), slow->dst (M), dst->slow (M)]``.
    """
    probe = torch.zeros(num_nodes, 1, device=edge_index.device)  # features are not needed, only the layout
    out = half_hop(probe, edge_index, node_mask=node_mask)
    m, e = out.x.size(0) - num_nodes, out.edge_index.size(1)
    src = out.edge_index[0, e - 3 * m : e - 2 * m]  # i of i -> k
    dst = out.edge_index[1, e - 2 * m : e - m]  # j of k -> j
    return HalfHopStructure(out.edge_index, num_nodes, src, dst)


def original_nodes(out: Tensor, slow_node_mask: Tensor) -> Tensor:
    """Readout on original nodes: drop slow-node rows, ``[N + M, ...] -> [N, ...]``.

    Use it on model outputs before the loss/metrics, which are defined on original nodes only.
    """
    if slow_node_mask.dtype != torch.bool or slow_node_mask.dim() != 1:
        raise ValueError(
            f"slow_node_mask must be a 1-D bool tensor, got dtype {slow_node_mask.dtype} "
            f"and shape {tuple(slow_node_mask.shape)}"
        )
    if out.size(0) != slow_node_mask.numel():
        raise ValueError(
            f"out has {out.size(0)} rows but slow_node_mask has {slow_node_mask.numel()} entries; "
            "expected one row per node of the half-hopped graph"
        )
    return out[~slow_node_mask]


def half_hop_reference(
    x: Tensor, edge_index: Tensor, node_mask: Tensor, alpha: float, edge_attr: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The readable specification of :func:`half_hop` on one graph, which the fast path is tested against.

    The definition in :func:`half_hop`'s docstring, written with boolean masks and one ``cat`` per
    output in PyG's order; no chunking, buffers or batching. ``node_mask [N]`` is the set of selected
    targets (the random draw is not part of the spec). Returns ``(x [N+M, *F], edge_index
    [2, K+L+3M], slow_node_mask [N+M], edge_attr [K+L+3M, ...] or None)``, equal to the fields of
    ``half_hop(x, edge_index, alpha=alpha, edge_attr=edge_attr, node_mask=node_mask)`` bit for bit
    (``tests/graph/test_halfhop.py``).
    """
    loop = edge_index[0] == edge_index[1]  # [E]
    hop = node_mask[edge_index[1]] & ~loop  # incoming non-loop edges of selected targets
    kept = ~loop & ~hop
    h = edge_index[:, hop]  # [2, M] the half-hopped edges i -> j, in input order
    n, m = x.size(0), h.size(1)
    slow_ids = torch.arange(n, n + m, dtype=edge_index.dtype, device=edge_index.device)  # k, one per hopped edge
    new_edge_index = torch.cat(
        [
            edge_index[:, kept],  # K
            edge_index[:, loop],  # L
            torch.stack([h[0], slow_ids]),  # i -> k
            torch.stack([slow_ids, h[1]]),  # k -> j
            torch.stack([h[1], slow_ids]),  # j -> k
        ],
        dim=1,
    )
    new_x = torch.cat([x, alpha * x[h[0]] + (1 - alpha) * x[h[1]]])  # x_k = a x_i + (1 - a) x_j
    slow = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(m, dtype=torch.bool)]).to(x.device)
    new_attr = None
    if edge_attr is not None:  # the three edges replacing i -> j inherit its attribute
        new_attr = torch.cat([edge_attr[kept], edge_attr[loop], edge_attr[hop], edge_attr[hop], edge_attr[hop]])
    return new_x, new_edge_index, slow, new_attr


class HalfHop(BaseTransform):
    r"""Half-Hop transform for PyG ``Data``/``Batch`` objects (drop-in for ``T.HalfHop``).

    Applies :func:`half_hop` (see there for the math, the output order and the batched layout) and
    returns a shallow copy of ``data`` with ``x``, ``edge_index`` and ``slow_node_mask`` set. The
    input object and its tensors are never modified. Unlike PyG's transform it also supports:

    * ``edge_attr`` ``[E, ...]`` and ``edge_weight`` ``[E]``: kept edges and self-loops keep their
      values, the three edges replacing ``i -> j`` all inherit the value of ``i -> j``;
    * batched graphs (a ``batch`` vector, e.g. a ``Batch``): ``batch``, ``ptr`` and the ``Batch``
      bookkeeping are updated so that ``to_data_list()`` returns the per-graph half-hopped graphs.

    Node-level attributes other than ``x`` (``y``, ``train_mask``, ...) are **not** extended; index
    model outputs with ``~slow_node_mask`` (or :func:`original_nodes`) before using them. Other
    edge-level attributes than ``edge_attr``/``edge_weight`` are left as they are.

    Args:
        alpha: interpolation factor in ``[0, 1]``, slow features ``alpha * x_src + (1 - alpha) * x_dst``.
        p: probability in ``[0, 1]`` that a node is selected; all its incoming non-self-loop edges
            are then half-hopped.

    Example::

        transform = HalfHop(alpha=0.5, p=0.75)
        aug = transform(data)                          # data is unchanged
        out = model(aug.x, aug.edge_index)             # [N + M, C]
        loss = criterion(original_nodes(out, aug.slow_node_mask)[data.train_mask], data.y[...])
    """

    def __init__(self, alpha: float = 0.5, p: float = 1.0) -> None:
        _check_fraction("alpha", alpha, "interpolation factor")
        _check_fraction("p", p, "probability of selecting a target node")
        self.alpha = float(alpha)
        self.p = float(p)

    def forward(self, data: Data, *, node_mask: Tensor | None = None) -> Data:
        """Transform ``data`` in place; ``__call__`` hands it a shallow copy (BaseTransform)."""
        if getattr(data, "x", None) is None:
            raise ValueError("HalfHop needs node features data.x to interpolate slow nodes; got None")
        if getattr(data, "edge_index", None) is None:
            raise ValueError("HalfHop needs data.edge_index; got None")
        names = [k for k in ("edge_attr", "edge_weight") if getattr(data, k, None) is not None]
        batch = getattr(data, "batch", None)
        num_graphs = None
        if batch is not None:
            ptr = getattr(data, "ptr", None)
            num_graphs = ptr.numel() - 1 if ptr is not None else getattr(data, "num_graphs", None)
        out, extra, edge_counts = _half_hop(
            data.x,
            data.edge_index,
            alpha=self.alpha,
            p=self.p,
            edge_tensors=[data[k] for k in names],
            edge_names=names,
            batch=batch,
            node_mask=node_mask,
            generator=None,
            num_graphs=num_graphs,
        )
        data.x = out.x
        data.edge_index = out.edge_index
        data.slow_node_mask = out.slow_node_mask
        for name, value in zip(names, extra):
            data[name] = value
        if "num_nodes" in data:  # an explicitly stored node count would go stale
            data.num_nodes = out.x.size(0)
        if batch is not None:
            data.batch = out.batch
            data.ptr = out.ptr
            _update_batch_bookkeeping(data, out, names, edge_counts)
        return data

    def __call__(self, data: Any, *, node_mask: Tensor | None = None) -> Any:
        """Half-hop a shallow copy of ``data``; ``node_mask`` ([N] bool) replaces the random draw."""
        # Shallow copy (as PyG's BaseTransform does) so the caller's object keeps its tensors.
        return self.forward(copy.copy(data), node_mask=node_mask)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(alpha={self.alpha}, p={self.p})"


# --------------------------------------------------------------------------------------------
# Implementation
# --------------------------------------------------------------------------------------------


def _check_fraction(name: str, value: float, what: str) -> None:
    # `not (0 <= v <= 1)` also rejects NaN, which every comparison answers False.
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} ({what}) must be a number in [0, 1], got {value!r}")


def _validate(
    x: Tensor,
    edge_index: Tensor,
    edge_tensors: Sequence[Tensor],
    edge_names: Sequence[str],
    batch: Tensor | None,
    node_mask: Tensor | None,
) -> None:
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise ValueError(
            f"x must be a tensor of shape [N, *F], got {type(x).__name__} of shape {tuple(getattr(x, 'shape', ()))}"
        )
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point to interpolate slow-node features, got dtype {x.dtype}")
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape [2, E], got shape {tuple(getattr(edge_index, 'shape', ()))}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"edge_index must be an integer tensor (int64 or int32), got dtype {edge_index.dtype}")
    if edge_index.device != x.device:
        raise ValueError(f"edge_index is on {edge_index.device} but x is on {x.device}; expected one device")
    num_nodes, num_edges = x.size(0), edge_index.size(1)
    if num_edges > 0:
        # One fused pass for both bounds; .tolist() is the only host sync of the validation.
        lo, hi = (int(v) for v in torch.stack(torch.aminmax(edge_index)).tolist())
        if lo < 0:
            raise ValueError(f"edge_index must be non-negative, found min entry {lo}")
        if hi >= num_nodes:
            raise ValueError(
                f"edge_index refers to node {hi} (max entry) but x has only N={num_nodes} nodes; "
                f"expected entries < {num_nodes}"
            )
    # x.sum() is NaN iff x holds a NaN (or +inf and -inf); it avoids a bool [N, *F] temporary and the
    # exact isnan check only runs in that rare case.
    if x.numel() > 0 and torch.isnan(x.sum()) and bool(torch.isnan(x).any()):
        raise ValueError(f"x contains NaN ({int(torch.isnan(x).sum())} entries); expected finite features")
    for name, t in zip(edge_names, edge_tensors):
        if not isinstance(t, Tensor) or t.dim() < 1 or t.size(0) != num_edges:
            raise ValueError(
                f"{name} must have one row per edge, i.e. shape [E={num_edges}, ...], got shape "
                f"{tuple(getattr(t, 'shape', ()))}"
            )
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; expected one device")
    if node_mask is not None:
        if not isinstance(node_mask, Tensor) or node_mask.dtype != torch.bool or node_mask.shape != (num_nodes,):
            raise ValueError(
                f"node_mask must be a bool tensor of shape [N={num_nodes}], got "
                f"{getattr(node_mask, 'dtype', type(node_mask).__name__)} of shape "
                f"{tuple(getattr(node_mask, 'shape', ()))}"
            )
        if node_mask.device != x.device:
            raise ValueError(f"node_mask is on {node_mask.device} but x is on {x.device}; expected one device")
    if batch is not None:
        if not isinstance(batch, Tensor) or batch.dim() != 1 or batch.size(0) != num_nodes:
            raise ValueError(
                f"batch must have one graph id per node, i.e. shape [N={num_nodes}], got shape "
                f"{tuple(getattr(batch, 'shape', ()))}"
            )
        if batch.dtype not in (torch.int64, torch.int32) or batch.device != x.device:
            raise ValueError(f"batch must be an int64/int32 tensor on {x.device}, got {batch.dtype} on {batch.device}")


def _random_node_mask(num_nodes: int, p: float, device: torch.device, generator: torch.Generator | None) -> Tensor:
    # Exactly PyG's draw (one uniform per node on x.device, then `< p`), so a seeded run selects the
    # same targets and leaves the global RNG in the same state.
    return torch.rand(num_nodes, generator=generator, device=device) < p


def _edge_dtype(edge_index: Tensor, total_nodes: int) -> torch.dtype:
    if edge_index.dtype == torch.int32 and total_nodes - 1 > _INT32_MAX:
        return torch.int64
    return edge_index.dtype


def _half_hop(
    x: Tensor,
    edge_index: Tensor,
    *,
    alpha: float,
    p: float,
    edge_tensors: Sequence[Tensor],
    edge_names: Sequence[str],
    batch: Tensor | None,
    node_mask: Tensor | None,
    generator: torch.Generator | None,
    num_graphs: int | None,
) -> tuple[HalfHopOutput, list[Tensor], Tensor | None]:
    """Validate, sample targets and dispatch.

    Returns the output, every carried edge tensor (in ``edge_tensors`` order) and, for batches,
    the ``[B]`` output edge count per graph.
    """
    _validate(x, edge_index, edge_tensors, edge_names, batch, node_mask)
    if node_mask is None:
        node_mask = _random_node_mask(x.size(0), p, x.device, generator)
    if batch is None:
        out, extra = _half_hop_single(x, edge_index, node_mask, alpha, edge_tensors)
        edge_counts = None
    else:
        out, extra, edge_counts = _half_hop_batched(x, edge_index, node_mask, alpha, edge_tensors, batch, num_graphs)
    return out, extra, edge_counts


def _classify_edges(src: Tensor, dst: Tensor, node_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Bool masks ``[E]`` of kept edges, self-loops and half-hopped edges (a partition of E)."""
    not_loop = src != dst  # [E]
    hop = node_mask[dst]  # [E] edge is half-hopped iff its target was selected ...
    hop &= not_loop  # ... and it is not a self-loop
    kept = not_loop ^ hop  # hop is a subset of not_loop, so xor == not_loop & ~hop
    loop = not_loop.logical_not_()  # reuse the buffer: not_loop is no longer needed
    return kept, loop, hop


def _interpolate_rows(
    x: Tensor,
    src: Tensor,
    dst: Tensor,
    alpha: float,
    out: Tensor,
    out_index: Tensor | None = None,
) -> None:
    """Write ``alpha * x[src] + (1 - alpha) * x[dst]`` into ``out`` (``[M, *F]``) or ``out[out_index]``.

    The float ops are PyG's (two scalar multiplies, each rounded, then an add; no lerp/FMA), so the
    result is bit-identical to ``torch_geometric.transforms.HalfHop``.
    """
    num = src.numel()
    if num == 0:
        return
    beta = 1.0 - alpha
    if x.requires_grad and torch.is_grad_enabled():
        # out= kernels are not differentiable; keep the exact same ops on the autograd path.
        rows = alpha * x[src] + beta * x[dst]
        if out_index is None:
            out.copy_(rows)
        else:
            out.index_copy_(0, out_index, rows)
        return
    row_bytes = max(1, x[0].numel() * x.element_size())
    chunk = max(-(-num // _MAX_CHUNKS), _MIN_CHUNK_BYTES // row_bytes, 1)
    buf_dst = x.new_empty((min(chunk, num), *x.shape[1:]))  # [chunk, *F] scratch for the target term
    if out_index is None:
        # The source term goes straight into the output (one gather, one in-place scale).
        torch.index_select(x, 0, src, out=out)
        out.mul_(alpha)
        buf_src = None
    else:
        buf_src = torch.empty_like(buf_dst)
    # A loop over <= _MAX_CHUNKS row blocks (not over edges), a few vectorised kernels each.
    for start in range(0, num, chunk):
        stop = min(num, start + chunk)
        b = buf_dst[: stop - start]
        torch.index_select(x, 0, dst[start:stop], out=b)
        b.mul_(beta)
        if buf_src is None:
            out[start:stop].add_(b)
        else:
            a = buf_src[: stop - start]
            torch.index_select(x, 0, src[start:stop], out=a)
            a.mul_(alpha).add_(b)
            out.index_copy_(0, out_index[start:stop], a)  # type: ignore[index]


def _half_hop_single(
    x: Tensor,
    edge_index: Tensor,
    node_mask: Tensor,
    alpha: float,
    edge_tensors: Sequence[Tensor],
) -> tuple[HalfHopOutput, list[Tensor]]:
    """Single-graph path: a stable 3-way partition of the edges by index arithmetic, no sort."""
    num_nodes, num_edges = x.size(0), edge_index.size(1)
    src, dst = edge_index[0], edge_index[1]  # [E] views
    kept, loop, hop = _classify_edges(src, dst, node_mask)
    # count_nonzero is a single cheap pass; .tolist() syncs once for all three sizes.
    num_kept, num_loop, num_hop = torch.stack(
        [torch.count_nonzero(kept), torch.count_nonzero(loop), torch.count_nonzero(hop)]
    ).tolist()
    kl = num_kept + num_loop  # edges that are copied as they are
    total_nodes = num_nodes + num_hop
    dtype = _edge_dtype(edge_index, total_nodes)

    # order [E]: input positions of kept edges, then self-loops, then half-hopped edges, each in
    # input order. nonzero(out=view) writes straight into the slices (no cat).
    order = torch.empty(num_edges, dtype=torch.int64, device=x.device)
    torch.nonzero(kept, out=order[:num_kept].view(-1, 1))
    torch.nonzero(loop, out=order[num_kept:kl].view(-1, 1))
    torch.nonzero(hop, out=order[kl:].view(-1, 1))
    del kept, loop, hop

    # Output blocks (columns): [0, kl) kept+loops | [kl, kl+M) src->slow | [kl+M, kl+2M) slow->dst
    # | [kl+2M, kl+3M) dst->slow.
    h0, h1, h2, h3 = kl, kl + num_hop, kl + 2 * num_hop, kl + 3 * num_hop
    new_ei = torch.empty((2, h3), dtype=dtype, device=x.device)
    src_c = src if dtype == src.dtype else src.to(dtype)
    dst_c = dst if dtype == dst.dtype else dst.to(dtype)
    torch.index_select(src_c, 0, order, out=new_ei[0, :h1])  # sources of kept, loops and src->slow
    torch.index_select(dst_c, 0, order[:kl], out=new_ei[1, :h0])  # targets of kept and loops
    torch.index_select(dst_c, 0, order[kl:], out=new_ei[1, h1:h2])  # slow->dst targets
    new_ei[0, h2:h3].copy_(new_ei[1, h1:h2])  # dst->slow sources
    torch.arange(num_nodes, total_nodes, dtype=dtype, device=x.device, out=new_ei[1, h0:h1])
    new_ei[0, h1:h2].copy_(new_ei[1, h0:h1])
    new_ei[1, h2:h3].copy_(new_ei[1, h0:h1])

    extra = []
    for t in edge_tensors:
        new_t = t.new_empty((h3, *t.shape[1:]))
        torch.index_select(t, 0, order, out=new_t[:h1])  # kept, loops, and the first new edge
        new_t[h1:h2].copy_(new_t[h0:h1])  # the other two new edges inherit the same attribute
        new_t[h2:h3].copy_(new_t[h0:h1])
        extra.append(new_t)
    del order

    new_x = x.new_empty((total_nodes, *x.shape[1:]))  # [N + M, *F]
    new_x[:num_nodes].copy_(x)
    # Gather indices are the src->slow sources and slow->dst targets already written above.
    _interpolate_rows(x, new_ei[0, h0:h1], new_ei[1, h1:h2], alpha, new_x[num_nodes:])

    slow = torch.zeros(total_nodes, dtype=torch.bool, device=x.device)
    slow[num_nodes:] = True
    out = HalfHopOutput(x=new_x, edge_index=new_ei, slow_node_mask=slow, edge_attr=extra[0] if extra else None)
    return out, extra


def _exclusive_cumsum(t: Tensor) -> Tensor:
    """``[n] -> [n + 1]`` offsets ``[0, t0, t0 + t1, ...]``."""
    out = t.new_zeros(t.numel() + 1)
    torch.cumsum(t, 0, out=out[1:])
    return out


def _half_hop_batched(
    x: Tensor,
    edge_index: Tensor,
    node_mask: Tensor,
    alpha: float,
    edge_tensors: Sequence[Tensor],
    batch: Tensor,
    num_graphs: int | None,
) -> tuple[HalfHopOutput, list[Tensor], Tensor]:
    """Batched path: per-graph layout via one stable sort of the edges by (graph, block)."""
    device = x.device
    num_nodes, num_edges = x.size(0), edge_index.size(1)
    batch = batch.long()
    if num_nodes > 0:
        if bool((batch[1:] < batch[:-1]).any()) or int(batch[0]) < 0:
            raise ValueError("batch must be sorted (non-decreasing graph ids >= 0), as in a PyG Batch")
        max_graph = int(batch[-1])
    else:
        max_graph = -1
    if num_graphs is None:
        num_graphs = max_graph + 1
    if max_graph >= num_graphs:
        raise ValueError(f"batch holds graph id {max_graph} but num_graphs is {num_graphs}")

    src, dst = edge_index[0].long(), edge_index[1].long()  # [E]
    graph = batch[src]  # [E] graph of each edge
    if num_edges > 0 and not torch.equal(graph, batch[dst]):
        bad = int((graph != batch[dst]).nonzero()[0, 0])
        raise ValueError(
            f"edge {bad} ({int(src[bad])} -> {int(dst[bad])}) connects graphs {int(graph[bad])} and "
            f"{int(batch[dst[bad]])}; expected every edge inside one graph"
        )
    _, loop, hop = _classify_edges(src, dst, node_mask)
    block = loop.long() + 2 * hop.long()  # [E] 0 kept, 1 self-loop, 2 half-hopped
    key = graph * 3 + block  # [E] output group (graph, block)
    key_sorted, perm = torch.sort(key, stable=True)  # [E] stable: input order within each group
    counts = torch.bincount(key, minlength=3 * num_graphs).view(num_graphs, 3)  # [B, 3] = K_g, L_g, M_g

    nodes_per_graph = torch.bincount(batch, minlength=num_graphs)  # [B]
    hops = counts[:, 2]  # [B] slow nodes per graph
    node_shift = _exclusive_cumsum(hops)  # [B + 1] slow nodes inserted before graph g
    out_ptr = _exclusive_cumsum(nodes_per_graph + hops)  # [B + 1]
    edges_out = counts[:, 0] + counts[:, 1] + 3 * hops  # [B]
    edge_ptr = _exclusive_cumsum(edges_out)  # [B + 1]
    # First output column of each (graph, block) group, and first sorted position of the group.
    group_start = torch.stack(
        [edge_ptr[:-1], edge_ptr[:-1] + counts[:, 0], edge_ptr[:-1] + counts[:, 0] + counts[:, 1]], dim=1
    ).view(-1)  # [3B]
    sorted_start = _exclusive_cumsum(counts.view(-1))[:-1]  # [3B]

    rank = torch.arange(num_edges, device=device) - sorted_start[key_sorted]  # [E] rank within group
    col = group_start[key_sorted] + rank  # [E] output column of each edge's first (or only) copy
    g_sorted = key_sorted.div(3, rounding_mode="floor")  # [E]
    e_src, e_dst = src[perm], dst[perm]  # [E] original ids, sorted
    new_src = e_src + node_shift[g_sorted]  # [E] renumbered for the interleaved layout
    new_dst = e_dst + node_shift[g_sorted]

    is_hop = key_sorted.remainder(3) == 2  # [E]
    h_graph = g_sorted[is_hop]  # [M]
    h_rank = rank[is_hop]  # [M]
    slow_id = out_ptr[h_graph] + nodes_per_graph[h_graph] + h_rank  # [M] output id of each slow node
    h_col = col[is_hop]  # [M]
    h_m = hops[h_graph]  # [M] block length of this edge's graph
    h_dst = new_dst[is_hop]  # [M]

    total_nodes = num_nodes + int(hops.sum())
    dtype = _edge_dtype(edge_index, total_nodes)
    total_edges = int(edge_ptr[-1])
    new_ei = torch.empty((2, total_edges), dtype=torch.int64, device=device)
    second = new_dst.clone()
    second[is_hop] = slow_id  # src->slow replaces the target by the slow node
    new_ei[0, col] = new_src
    new_ei[1, col] = second
    new_ei[0, h_col + h_m] = slow_id  # slow->dst
    new_ei[1, h_col + h_m] = h_dst
    new_ei[0, h_col + 2 * h_m] = h_dst  # dst->slow
    new_ei[1, h_col + 2 * h_m] = slow_id
    new_ei = new_ei.to(dtype)

    extra = []
    for t in edge_tensors:
        t_sorted = t[perm]
        new_t = t.new_empty((total_edges, *t.shape[1:]))
        new_t[col] = t_sorted
        t_hop = t_sorted[is_hop]
        new_t[h_col + h_m] = t_hop
        new_t[h_col + 2 * h_m] = t_hop
        extra.append(new_t)

    new_x = x.new_empty((total_nodes, *x.shape[1:]))
    new_x.index_copy_(0, torch.arange(num_nodes, device=device) + node_shift[batch], x)
    _interpolate_rows(x, e_src[is_hop], e_dst[is_hop], alpha, new_x, out_index=slow_id)

    slow = torch.zeros(total_nodes, dtype=torch.bool, device=device)
    slow[slow_id] = True
    new_batch = torch.repeat_interleave(
        torch.arange(num_graphs, device=device), nodes_per_graph + hops, output_size=total_nodes
    )
    out = HalfHopOutput(
        x=new_x,
        edge_index=new_ei,
        slow_node_mask=slow,
        edge_attr=extra[0] if extra else None,
        batch=new_batch.to(batch.dtype),
        ptr=out_ptr,
    )
    return out, extra, edges_out


def _update_batch_bookkeeping(data: Any, out: HalfHopOutput, names: Sequence[str], edge_counts: Tensor) -> None:
    """Make ``Batch.to_data_list()`` / ``get_example`` return the per-graph half-hopped graphs."""
    slice_dict = getattr(data, "_slice_dict", None)
    inc_dict = getattr(data, "_inc_dict", None)
    if slice_dict is None or inc_dict is None:
        return
    # New dicts: copy.copy(Batch) shares these with the caller's Batch, which must stay intact.
    slice_dict, inc_dict = dict(slice_dict), dict(inc_dict)
    node_slices = out.ptr.cpu()  # type: ignore[union-attr]
    edge_slices = _exclusive_cumsum(edge_counts).cpu()
    num_graphs = node_slices.numel() - 1
    zeros = torch.zeros(num_graphs, dtype=torch.long)
    slice_dict["x"] = node_slices
    slice_dict["slow_node_mask"] = node_slices
    inc_dict["slow_node_mask"] = zeros
    slice_dict["edge_index"] = edge_slices
    inc_dict["edge_index"] = node_slices[:-1]
    for name in names:
        slice_dict[name] = edge_slices
        inc_dict.setdefault(name, zeros)
    data._slice_dict = slice_dict
    data._inc_dict = inc_dict
    store = data._store  # copy.copy(Batch) gave this object its own store, so assigning is safe
    if hasattr(store, "_num_nodes"):  # per-graph counts that separate() restores as num_nodes
        store._num_nodes = node_slices.diff().tolist()
