"""BGRL: bootstrapped graph latents (Thakoor et al., ICLR 2022), with optional Half-Hop views.

Paper: "Large-Scale Representation Learning on Graphs via Bootstrapping", https://arxiv.org/abs/2102.06514
(reference code: github.com/nerdslab/bgrl). Half-Hop views as in Azabou et al., ICML 2023, §5.

Axis legend for the shape comments:
    N  original nodes     M  slow nodes of a Half-Hop view     E  edges     F  input features
    D  embedding size (last encoder layer)     P  predictor hidden size    C  classes
    K  weight-decay grid points of the linear probe

One training step (:func:`bgrl_step`)::

    view_1, view_2 ~ T_1(G), T_2(G)                  feature masking + edge dropping [+ Half-Hop]
    q_1 = predictor(online(view_1)),  y_2 = target(view_2)      (and symmetrically q_2, y_1)
    loss = cosine_loss(q_1, sg(y_2)) + cosine_loss(q_2, sg(y_1)),   cosine_loss = 2 - 2 cos
    online <- Adam step;   target <- tau * target + (1 - tau) * online     (foresight.nn.ema.ema_update)

with ``tau`` rising from 0.99 to 1 on a cosine schedule (:func:`ema_decay`). Embeddings are taken from
the online encoder on the original graph (no augmentation, batch norm in eval mode) and evaluated
with an L2-regularised logistic regression on frozen embeddings (:func:`linear_probe`).

Half-Hop views. A view with Half-Hop is ``hh_alpha(T(G); p)``: features are masked and edges dropped
first, then the remaining edges are half-hopped. Losses are computed on original nodes only.
The first GCN layer multiplies features by its weight before propagating, so the interpolation is
done after that product (:class:`BGRLEncoder`, with :class:`foresight.graph.halfhop.HalfHopStructure`,
the helper the supervised :class:`foresight.graph.models.NodeClassifier` uses too), which is exact:
``(a x_i + (1 - a) x_j) W = a x_i W + (1 - a) x_j W``. This keeps BGRL's architecture unchanged while the
slow nodes cost D_1, not F, floats each. A view's graph (Half-Hop layout, normalised adjacency) is built
once per step (:func:`prepare_view`) and shared by the online and the target encoder.

What a Half-Hop view still costs. Batch norm takes its statistics over all N + M rows (as on a
materialised half-hopped graph), so every slow node goes through both layers: with Computers' fd+ed view
(~245k directed edges left, p = 0.75) M ~ 184k slow nodes against N = 13.7k, and the second layer's
``[N + M, D_1] x [D_1, D_2]`` product alone is ~2x the FLOPs of the first layer's ``[N, F] x [F, D_1]``
(``benchmarks/bgrl_epoch.py`` measures the epoch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GCNConv

from foresight.graph.halfhop import HalfHopStructure, half_hop_structure
from foresight.graph.models import SparseAdj, gcn_adj_t
from foresight.nn.ema import make_target
from foresight.nn.losses import byol_loss

__all__ = [
    "BGRL",
    "Augmentation",
    "BGRLEncoder",
    "LinearProbeResult",
    "PreparedView",
    "SparseFeatures",
    "View",
    "bgrl_loss",
    "bgrl_step",
    "cosine_loss",
    "draw_view",
    "ema_decay",
    "linear_probe",
    "lr_at",
    "prepare_view",
]


# -- inputs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SparseFeatures:
    """A sparse feature matrix ``x`` [N, F] stored as bags for ``F.embedding_bag``.

    ``x @ W`` costs ``nnz x D`` instead of ``N x F x D`` (Cora: 49k non-zeros out of 3.9M entries), for
    the forward and the weight gradient alike.
    """

    index: Tensor  # [nnz] feature id of each non-zero, rows concatenated
    offsets: Tensor  # [N] start of each row's non-zeros in ``index``
    value: Tensor  # [nnz] the non-zero values
    num_nodes: int
    num_features: int

    @classmethod
    def from_dense(cls, x: Tensor) -> SparseFeatures:
        coo = x.to_sparse_coo().coalesce()  # row-major order
        row, col = coo.indices()
        counts = torch.bincount(row, minlength=x.size(0))
        offsets = torch.cumsum(counts, 0) - counts
        return cls(col, offsets, coo.values(), x.size(0), x.size(1))

    def matmul(self, weight: Tensor) -> Tensor:
        """``x @ weight``: [N, F] x [F, D] -> [N, D] (rows without non-zeros give 0)."""
        return F.embedding_bag(self.index, weight, self.offsets, mode="sum", per_sample_weights=self.value)

    def to(self, device: torch.device | str) -> SparseFeatures:
        return SparseFeatures(
            self.index.to(device), self.offsets.to(device), self.value.to(device), self.num_nodes, self.num_features
        )


# -- augmentations -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Augmentation:
    """One view's augmentation ``T``: feature masking, edge dropping and optional Half-Hop.

    Args:
        feature_mask: probability that a feature dimension is zeroed (one mask shared by all nodes, BGRL).
        edge_drop: probability that an edge is removed (each directed edge independently, BGRL).
        half_hop_p: Half-Hop probability ``p`` of ``hh_alpha(G; p)``, or ``None`` for no Half-Hop.
        alpha: Half-Hop interpolation factor.
    """

    feature_mask: float = 0.0
    edge_drop: float = 0.0
    half_hop_p: float | None = None
    alpha: float = 0.5

    def __post_init__(self) -> None:
        for name in ("feature_mask", "edge_drop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.half_hop_p is not None and not 0.0 <= self.half_hop_p <= 1.0:
            raise ValueError(f"half_hop_p must be in [0, 1] or None, got {self.half_hop_p!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha!r}")


@dataclass(frozen=True)
class View:
    """One drawn view: the same draw is used by the online and the target encoder."""

    edge_index: Tensor  # [2, E'] edges left after dropping
    feature_mask: Tensor | None  # [F] 1.0 = kept, 0.0 = masked; None = no masking
    hh_node_mask: Tensor | None  # [N] bool Half-Hop targets; None = no Half-Hop
    alpha: float = 0.5


def draw_view(num_nodes: int, num_features: int, edge_index: Tensor, aug: Augmentation) -> View:
    """Draw ``T(G)`` from the global torch RNG: feature mask [F], then edge mask [E], then Half-Hop [N]."""
    device = edge_index.device
    fmask = None
    if aug.feature_mask > 0:
        fmask = (torch.rand(num_features, device=device) >= aug.feature_mask).float()
    if aug.edge_drop > 0:
        edge_index = edge_index[:, torch.rand(edge_index.size(1), device=device) >= aug.edge_drop]
    hh = None
    if aug.half_hop_p is not None:
        hh = torch.rand(num_nodes, device=device) < aug.half_hop_p  # half_hop's own draw, made here
    return View(edge_index, fmask, hh, aug.alpha)


@dataclass(frozen=True)
class PreparedView:
    """A drawn :class:`View` with its graph built: what every encoder pass on that view reads."""

    adj: SparseAdj  # GCN-normalised adjacency of the view's graph (N + M nodes with Half-Hop)
    hh: HalfHopStructure | None  # slow-node layout, None without Half-Hop
    feature_mask: Tensor | None  # [F] as in the View
    alpha: float = 0.5


def prepare_view(view: View, num_nodes: int) -> PreparedView:
    """Build ``view``'s graph once: its Half-Hop layout (if any) and ``D^-1/2 (A + I) D^-1/2``."""
    hh = None
    edge_index = view.edge_index
    if view.hh_node_mask is not None:
        hh = half_hop_structure(edge_index, num_nodes, view.hh_node_mask)
        edge_index = hh.edge_index
    total = num_nodes if hh is None else hh.total_nodes
    return PreparedView(gcn_adj_t(edge_index, total), hh, view.feature_mask, view.alpha)


# -- networks ------------------------------------------------------------------------------------
class BGRLEncoder(nn.Module):
    """BGRL's GCN encoder: ``[GCNConv -> BatchNorm -> PReLU]`` for every layer, the last one included.

    Args:
        in_channels: feature size F.
        layer_sizes: output size of each layer, e.g. ``(512, 256)`` (BGRL's WikiCS/Co.CS encoder).
        bn_momentum: batch-norm momentum (PyTorch convention; BGRL's 0.99 decay is 0.01 here).

    ``forward`` returns embeddings of the original nodes, [N, D]. A view's feature mask is folded into
    the first weight (``(x * m) W = x (m[:, None] * W)``) and its Half-Hop is applied after the first
    layer's linear map, before propagation (module docstring), which is exactly ``GCNConv.forward`` on
    the half-hopped graph.
    """

    def __init__(self, in_channels: int, layer_sizes: Sequence[int] = (512, 256), bn_momentum: float = 0.01) -> None:
        super().__init__()
        if not layer_sizes or any(s < 1 for s in layer_sizes):
            raise ValueError(f"layer_sizes must be a non-empty list of sizes >= 1, got {list(layer_sizes)}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        sizes = [in_channels, *layer_sizes]
        # normalize=False: the normalised adjacency is built once per forward (gcn_adj_t) for all layers,
        # and each layer is computed as adj_t @ lin(h) + bias with the layer's own weights
        self.convs = nn.ModuleList(GCNConv(sizes[i], sizes[i + 1], normalize=False) for i in range(len(layer_sizes)))
        self.norms = nn.ModuleList(nn.BatchNorm1d(s, momentum=bn_momentum) for s in layer_sizes)
        self.acts = nn.ModuleList(nn.PReLU(1) for _ in layer_sizes)
        self.out_channels = layer_sizes[-1]

    def reset_parameters(self) -> None:
        for conv, norm, act in zip(self.convs, self.norms, self.acts):
            conv.reset_parameters()
            norm.reset_parameters()
            act.reset_parameters()

    def forward(
        self, x: Tensor | SparseFeatures, edge_index: Tensor | None, view: View | PreparedView | None = None
    ) -> Tensor:
        """``x`` [N, F] (dense or :class:`SparseFeatures`), ``edge_index`` [2, E] -> [N, D].

        With a ``view`` (drawn, or already prepared by :func:`prepare_view`), its graph, feature mask and
        Half-Hop are used and ``edge_index`` is not read.
        """
        num_nodes = x.num_nodes if isinstance(x, SparseFeatures) else x.size(0)
        if view is None:
            view = PreparedView(gcn_adj_t(edge_index, num_nodes), None, None)
        elif isinstance(view, View):
            view = prepare_view(view, num_nodes)
        weight = self.convs[0].lin.weight.t()  # [F, D_1]
        if view.feature_mask is not None:
            weight = weight * view.feature_mask[:, None]
        h = x.matmul(weight) if isinstance(x, SparseFeatures) else x @ weight  # [N, D_1] = lin(x), no bias
        if view.hh is not None:
            h = view.hh.interpolate(h, view.alpha)  # [N + M, D_1]: slow rows interpolated after the weight
        for i, (conv, norm, act) in enumerate(zip(self.convs, self.norms, self.acts)):
            # GCNConv.forward with normalize=False: adj_t @ lin(h) + bias (lin of layer 0 is done above)
            h = view.adj.matmul(h if i == 0 else conv.lin(h)) + conv.bias
            h = act(norm(h))  # batch norm over all N + M rows, as on the materialised graph
        return h[:num_nodes]  # slow nodes are appended after the N original ones


class Predictor(nn.Module):
    """BGRL's predictor MLP ``D -> P -> D`` with a PReLU (nerdslab/bgrl ``MLP_Predictor``)."""

    def __init__(self, channels: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(channels, hidden), nn.PReLU(1), nn.Linear(hidden, channels))

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


class BGRL(nn.Module):
    """Online encoder + predictor (trained) and an EMA target encoder (not trained).

    The target starts as a copy of the online encoder with freshly re-initialised parameters, as in the
    reference code (``target_encoder.reset_parameters()``), and never receives gradients.
    """

    def __init__(self, encoder: BGRLEncoder, predictor_hidden: int = 512) -> None:
        super().__init__()
        self.online = encoder
        self.predictor = Predictor(encoder.out_channels, predictor_hidden)
        self.target = make_target(encoder)  # frozen deep copy, updated only by foresight.nn.ema.ema_update
        self.target.reset_parameters()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.online.parameters(), *self.predictor.parameters()]

    @torch.no_grad()
    def embed(self, x: Tensor | SparseFeatures, edge_index: Tensor) -> Tensor:
        """Frozen embeddings [N, D] of the online encoder on the original graph (eval mode)."""
        was_training = self.online.training
        self.online.eval()
        z = self.online(x, edge_index)
        self.online.train(was_training)
        return z


# -- losses and updates (pure) -------------------------------------------------------------------
def cosine_loss(q: Tensor, y: Tensor) -> Tensor:
    """BYOL/BGRL regression loss ``mean_i (2 - 2 cos(q_i, y_i))`` = mean squared distance of unit vectors.

    ``q`` [N, D] predictions, ``y`` [N, D] targets (the caller stops their gradient): one direction of
    :func:`bgrl_loss`, i.e. :func:`foresight.nn.losses.byol_loss` without its stop-gradient.
    """
    return byol_loss(q, y, stop_target_gradients=False)


def bgrl_loss(q_1: Tensor, y_2: Tensor, q_2: Tensor, y_1: Tensor) -> Tensor:
    """Symmetrised BGRL loss: view 1 predicts view 2's target embedding and vice versa (targets detached)."""
    return byol_loss(q_1, y_2) + byol_loss(q_2, y_1)


def ema_decay(step: int, total_steps: int, base: float = 0.99) -> float:
    """Cosine schedule ``tau_k = 1 - (1 - base) (cos(pi k / K) + 1) / 2``: ``base`` at k = 0, 1 at k = K."""
    if total_steps < 1 or not 0 <= step <= total_steps:
        raise ValueError(f"need 0 <= step <= total_steps and total_steps >= 1, got {step}, {total_steps}")
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / total_steps) + 1.0) / 2.0


def lr_at(epoch: int, total: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up for ``warmup`` epochs, then cosine decay to 0 at ``total`` (BGRL's schedule)."""
    if epoch < warmup:
        return base_lr * (epoch + 1) / warmup
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / max(1, total - warmup)))


def bgrl_step(
    model: BGRL,
    optimizer: torch.optim.Optimizer,
    x: Tensor | SparseFeatures,
    edge_index: Tensor,
    aug_1: Augmentation,
    aug_2: Augmentation,
) -> float:
    """One BGRL step (two views, symmetric loss, one optimiser step); returns the loss.

    The EMA update of the target is left to the caller (``foresight.nn.ema.ema_update`` with
    :func:`ema_decay`) so that its schedule is explicit in the training loop.
    """
    n, f = (x.num_nodes, x.num_features) if isinstance(x, SparseFeatures) else x.shape
    view_1 = prepare_view(draw_view(n, f, edge_index, aug_1), n)  # one graph per view, for both encoders
    view_2 = prepare_view(draw_view(n, f, edge_index, aug_2), n)
    model.train()
    q_1 = model.predictor(model.online(x, edge_index, view_1))  # [N, D]
    q_2 = model.predictor(model.online(x, edge_index, view_2))
    with torch.no_grad():
        y_1 = model.target(x, edge_index, view_1)  # [N, D]
        y_2 = model.target(x, edge_index, view_2)
    loss = bgrl_loss(q_1, y_2, q_2, y_1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


# -- linear evaluation ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearProbeResult:
    weight_decay: float  # selected on validation accuracy
    train_acc: float
    val_acc: float
    test_acc: float


def linear_probe(
    z: Tensor,
    y: Tensor,
    train: Tensor,
    val: Tensor,
    test: Tensor,
    *,
    weight_decays: Sequence[float] = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    steps: int = 300,
    lr: float = 0.01,
) -> LinearProbeResult:
    """Logistic regression on frozen embeddings, one model per weight decay, the best on validation.

    Embeddings are standardised with the training nodes' mean and std. For each ``wd`` in
    ``weight_decays`` the loss ``mean CE + wd / 2 * ||W||^2`` (bias not penalised) is minimised with
    full-batch Adam for ``steps`` steps, all K models at once. The reported model has the best
    validation accuracy (ties: the larger weight decay). Deterministic on CPU.

    Args:
        z: [N, D] embeddings (no gradient flows into them).
        y: [N] labels in ``0..C-1``.
        train, val, test: [N] bool masks.
    """
    if not weight_decays:
        raise ValueError("weight_decays must not be empty")
    z = z.detach()
    mu, sd = z[train].mean(0), z[train].std(0).clamp_min(1e-6)
    z = (z - mu) / sd  # [N, D]
    num_classes = int(y.max()) + 1
    wds = torch.tensor(list(weight_decays), dtype=z.dtype, device=z.device)  # [K]
    k, d = wds.numel(), z.size(1)
    weight = torch.zeros(k, d, num_classes, device=z.device, requires_grad=True)  # [K, D, C]
    bias = torch.zeros(k, 1, num_classes, device=z.device, requires_grad=True)  # [K, 1, C]
    opt = torch.optim.Adam([weight, bias], lr=lr)
    z_tr, y_tr = z[train], y[train]
    with torch.enable_grad():
        for _ in range(steps):
            logits = torch.einsum("nd,kdc->knc", z_tr, weight) + bias  # [K, n_train, C]
            ce = F.cross_entropy(logits.reshape(-1, num_classes), y_tr.repeat(k), reduction="none")
            loss = ce.view(k, -1).mean(1) + 0.5 * wds * weight.pow(2).sum((1, 2))  # [K]
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()  # the K problems are independent: summing keeps each gradient
            opt.step()
    with torch.no_grad():
        pred = (torch.einsum("nd,kdc->knc", z, weight) + bias).argmax(-1)  # [K, N]
        correct = pred == y  # [K, N]

        def acc(mask: Tensor, i: int) -> float:  # exact count / n (equal predictions -> equal floats)
            return int(correct[i, mask].sum()) / int(mask.sum())

        best = max(range(k), key=lambda i: (acc(val, i), wds[i].item()))
        return LinearProbeResult(float(wds[best]), acc(train, best), acc(val, best), acc(test, best))
