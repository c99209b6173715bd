"""Full-batch supervised node classification: train on one split, select the best-validation epoch.

Model selection follows the Half-Hop paper's heterophilic protocol ("test accuracy at the best
validation model"): after every epoch the model is evaluated, and the reported test accuracy is the
one of the epoch with the highest validation accuracy (ties broken by the lower validation loss,
then by the earlier epoch).

Evaluation of a model with stochastic Half-Hop (``p < 1``) uses one fixed augmented graph, drawn with a
``torch.Generator`` seeded by ``eval_seed``: every epoch is then compared on the same graph, and the
global RNG (which drives training) is not touched by evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data

from foresight.graph.models import NodeClassifier

__all__ = ["FitResult", "accuracy", "fit_node_classifier", "keep_freed_memory", "split_masks"]


def keep_freed_memory() -> bool:
    """Ask glibc malloc to keep freed large blocks instead of returning them to the OS (Linux only).

    PyTorch's CPU allocator does not cache: every [N + M, H] temporary of a Half-Hop graph (50-100 MB on
    squirrel) is a fresh ``mmap`` whose pages are faulted in and zeroed by the kernel, then ``munmap``-ed.
    On the quick-scale heterophily run that kernel time was half of all CPU time. Raising the mmap and
    trim thresholds makes such blocks come from (and return to) the heap: same results, about 2x less
    wall time, at the cost of the process keeping its peak memory. Returns whether it was applied.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
        return libc.mallopt(m_trim_threshold, (1 << 31) - 1) == 1 and ok
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False


@dataclass(frozen=True)
class FitResult:
    """Outcome of :func:`fit_node_classifier` (accuracies in [0, 1], at ``best_epoch``)."""

    best_epoch: int  # 1-based epoch of the selected model
    train_acc: float
    val_acc: float
    test_acc: float
    val_loss: float
    epochs_run: int  # < epochs when early stopping triggered


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Fraction of rows of ``logits`` [n, C] whose argmax equals ``y`` [n]; NaN for n = 0.

    Computed as an exact ``count / n`` in Python floats, so equal predictions give bit-equal
    accuracies (and equal means), whatever the reduction order.
    """
    if y.numel() == 0:
        return float("nan")
    return int((logits.argmax(dim=-1) == y).sum()) / y.numel()


def split_masks(data: Data, split: int) -> tuple[Tensor, Tensor, Tensor]:
    """Column ``split`` of ``train_mask`` / ``val_mask`` / ``test_mask`` ([N, S] bool) as [N] masks."""
    num_splits = data.train_mask.size(1)
    if not 0 <= split < num_splits:
        raise ValueError(f"split must be in [0, {num_splits}), got {split}")
    return data.train_mask[:, split], data.val_mask[:, split], data.test_mask[:, split]


def fit_node_classifier(
    model: NodeClassifier,
    data: Data,
    split: int,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    patience: int | None = None,
    eval_seed: int = 0,
) -> FitResult:
    """Train ``model`` full-batch with Adam and cross-entropy on split ``split`` of ``data``.

    Args:
        model: the classifier (Half-Hop, if any, is inside it and resampled every training step).
        data: graph with ``x``, ``edge_index``, ``y`` and [N, S] masks, on the model's device.
        split: which mask column to use.
        epochs: maximum number of epochs (one optimiser step each).
        lr, weight_decay: Adam's learning rate and (L2) weight decay.
        patience: stop after this many epochs without a new best validation model (None: never).
        eval_seed: seed of the generator drawing the fixed evaluation graph when Half-Hop has p < 1.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    train, val, test = split_masks(data, split)
    x, edge_index, y = data.x, data.edge_index, data.y
    n = data.num_nodes
    # Fixed graphs are preprocessed once (model.prepare); only p < 1 Half-Hop redraws every step.
    train_graph = None if model.stochastic else model.prepare(edge_index, n)
    eval_graph = train_graph
    if model.stochastic:
        gen = torch.Generator(device=x.device).manual_seed(eval_seed)
        eval_mask = torch.rand(n, generator=gen, device=x.device) < model.p  # half_hop's draw
        eval_graph = model.prepare(edge_index, n, node_mask=eval_mask)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best: tuple[float, float] | None = None  # (val_acc, -val_loss) of the selected epoch
    result = FitResult(0, float("nan"), float("nan"), float("nan"), float("nan"), 0)
    since_best = 0
    for epoch in range(1, epochs + 1):
        model.train()
        optimizer.zero_grad(set_to_none=True)
        out = model(x, edge_index, prepared=train_graph)  # [N, C]; p < 1: a fresh Half-Hop draw
        loss = F.cross_entropy(out[train], y[train])
        loss.backward()
        optimizer.step()

        model.eval()
        with torch.no_grad():
            out = model(x, prepared=eval_graph)
        val_loss = F.cross_entropy(out[val], y[val]).item()
        key = (accuracy(out[val], y[val]), -val_loss)
        if best is None or key > best:
            best, since_best = key, 0
            result = FitResult(
                epoch, accuracy(out[train], y[train]), key[0], accuracy(out[test], y[test]), val_loss, epoch
            )
        else:
            since_best += 1
            if patience is not None and since_best >= patience:
                break
    return FitResult(result.best_epoch, result.train_acc, result.val_acc, result.test_acc, result.val_loss, epoch)
