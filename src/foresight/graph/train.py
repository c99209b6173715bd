"""Graph training loops: supervised node classification (:func:`fit_node_classifier`) and BGRL
self-supervised pretraining (:func:`pretrain_bgrl`).

Supervised: full-batch, train on one split, evaluate after every epoch, keep the test accuracy of the
selected epoch. Two selection rules (``selection``):

- ``"best-val"``: the epoch with the highest validation accuracy (ties broken by the lower validation
  loss, then by the earlier epoch); patience counts epochs since that epoch.
- ``"geom-gcn"``: the rule of Pei et al.'s ``train_GCN.py`` (Geom-GCN, ICLR 2020), whose protocol the
  Half-Hop paper follows on heterophilic graphs. The patience counter resets whenever the validation
  accuracy is ``>=`` its running maximum *or* the validation loss ``<=`` its running minimum, and the kept
  model is the last one where *both* held. With ``lr_decay=(factor, patience)`` the learning rate is
  multiplied by ``factor`` when the validation loss has not improved for ``patience`` epochs
  (``torch.optim.lr_scheduler.ReduceLROnPlateau`` with its defaults otherwise, stepped on the validation
  loss after every epoch; Geom-GCN uses (0.8, 50)).

Evaluation of a model with stochastic Half-Hop (``p < 1``) uses one fixed augmented graph, drawn with a
``torch.Generator`` seeded by ``eval_seed``: every epoch is then compared on the same graph, and the
global RNG (which drives training) is not touched by evaluation.

BGRL pretraining (Thakoor et al., ICLR 2022; reference code nerdslab/bgrl): full-batch AdamW, one step
per epoch, a linear warm-up then cosine decay of the learning rate (:func:`foresight.graph.bgrl.lr_at`)
and the target's EMA decay rising from ``tau_base`` to 1 on a cosine (:func:`foresight.graph.bgrl.ema_decay`).
It is resumable: every ``checkpoint_every`` epochs, at an epoch boundary, it hands a state (model,
optimiser, epoch, history) to a callback, and a run started with that state and the global RNG state of
that moment ends exactly as the uninterrupted one. Saving both is the caller's business: ``Run``'s
``save_checkpoint`` / ``load_checkpoint`` already save and restore every RNG with a state
(``foresight.core.checkpoint.rng_state``), so the state here carries none of its own.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data

from foresight.graph.bgrl import BGRL, Augmentation, SparseFeatures, bgrl_step, ema_decay, lr_at
from foresight.graph.models import NodeClassifier
from foresight.nn.ema import ema_update

__all__ = [
    "BGRLTrainConfig",
    "BGRLTrainResult",
    "EpochSelector",
    "FitResult",
    "accuracy",
    "fit_node_classifier",
    "keep_freed_memory",
    "pretrain_bgrl",
    "row_normalise",
    "split_masks",
]


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


SELECTIONS = ("best-val", "geom-gcn")


def row_normalise(x: Tensor) -> Tensor:
    """Features divided by their row sum, ``x_i / sum_f x_if`` (rows summing to 0 are left at 0).

    Geom-GCN's ``preprocess_features`` (and PyG's ``NormalizeFeatures`` for non-negative features): the
    row-normalised features of the Geom-GCN protocol. ``x`` [N, F] -> [N, F]; the input is not modified.
    """
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a floating [N, F] tensor, got {x.dtype} of shape {tuple(x.shape)}")
    rowsum = x.sum(dim=1, keepdim=True)  # [N, 1]
    return torch.where(rowsum == 0, torch.zeros_like(x), x / rowsum.masked_fill(rowsum == 0, 1.0))


class EpochSelector:
    """The model-selection and patience rule of :func:`fit_node_classifier` (module docstring).

    :meth:`update` is called once per epoch with that epoch's validation accuracy and loss and returns
    ``(keep, progress)``: whether this epoch's model becomes the selected one, and whether the patience
    counter resets.
    """

    def __init__(self, selection: str = "best-val") -> None:
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        self.selection = selection
        self.best: tuple[float, float] | None = None  # best-val: (val_acc, -val_loss) of the selected epoch
        self.max_acc, self.min_loss = -math.inf, math.inf  # geom-gcn: running maximum / minimum

    def update(self, val_acc: float, val_loss: float) -> tuple[bool, bool]:
        if self.selection == "best-val":
            keep = self.best is None or (val_acc, -val_loss) > self.best
            if keep:
                self.best = (val_acc, -val_loss)
            return keep, keep
        # geom-gcn (train_GCN.py): either one improving (ties count) resets patience, both keep the model
        progress = val_acc >= self.max_acc or val_loss <= self.min_loss
        keep = val_acc >= self.max_acc and val_loss <= self.min_loss
        self.max_acc, self.min_loss = max(self.max_acc, val_acc), min(self.min_loss, val_loss)
        return keep, progress


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
    selection: str = "best-val",
    lr_decay: tuple[float, int] | None = None,
) -> FitResult:
    """Train ``model`` full-batch with Adam and cross-entropy on split ``split`` of ``data``.

    Every epoch is one optimiser step on the training nodes, then one evaluation (``model.eval()``, no
    gradient) that the selection rule, early stopping and the learning-rate schedule read (module
    docstring). Nothing is skipped or evaluated less often: the protocol is the same at any size.

    Args:
        model: the classifier (Half-Hop, if any, is inside it and resampled every training step).
        data: graph with ``x``, ``edge_index``, ``y`` and [N, S] masks, on the model's device.
        split: which mask column to use.
        epochs: maximum number of epochs (one optimiser step each).
        lr, weight_decay: Adam's learning rate and (L2) weight decay.
        patience: stop after this many epochs without progress under ``selection`` (None: never).
        eval_seed: seed of the generator drawing the fixed evaluation graph when Half-Hop has p < 1.
        selection: ``"best-val"`` or ``"geom-gcn"`` (module docstring).
        lr_decay: ``(factor, patience)`` of a ``ReduceLROnPlateau`` on the validation loss, or None.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    selector = EpochSelector(selection)  # validates selection
    if lr_decay is not None and not (0.0 < lr_decay[0] < 1.0 and int(lr_decay[1]) >= 0):
        raise ValueError(f"lr_decay must be (factor in (0, 1), patience >= 0), got {lr_decay}")
    train, val, test = (m.nonzero().view(-1) for m in split_masks(data, split))  # index tensors: cheaper
    x, edge_index, y = data.x, data.edge_index, data.y
    y_train, y_val, y_test = y[train], y[val], y[test]
    n = data.num_nodes
    # Fixed graphs are preprocessed once (model.prepare); only p < 1 Half-Hop redraws every step.
    train_graph = None if model.stochastic else model.prepare(edge_index, n)
    eval_graph = train_graph
    if model.stochastic:
        gen = torch.Generator(device=x.device).manual_seed(eval_seed)
        eval_mask = torch.rand(n, generator=gen, device=x.device) < model.p  # half_hop's draw
        eval_graph = model.prepare(edge_index, n, node_mask=eval_mask)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = None
    if lr_decay is not None:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=lr_decay[0], patience=int(lr_decay[1])
        )
    result = FitResult(0, float("nan"), float("nan"), float("nan"), float("nan"), 0)
    since_best = 0
    for epoch in range(1, epochs + 1):
        model.train()
        optimizer.zero_grad(set_to_none=True)
        out = model(x, edge_index, prepared=train_graph)  # [N, C]; p < 1: a fresh Half-Hop draw
        loss = F.cross_entropy(out[train], y_train)
        loss.backward()
        optimizer.step()

        model.eval()
        with torch.no_grad():
            out = model(x, prepared=eval_graph)
        out_val = out[val]
        val_loss = F.cross_entropy(out_val, y_val).item()
        val_acc = accuracy(out_val, y_val)
        if scheduler is not None:
            scheduler.step(val_loss)
        keep, progress = selector.update(val_acc, val_loss)
        if keep:
            result = FitResult(
                epoch, accuracy(out[train], y_train), val_acc, accuracy(out[test], y_test), val_loss, epoch
            )
        if progress:
            since_best = 0
        else:
            since_best += 1
            if patience is not None and since_best >= patience:
                break
    return FitResult(result.best_epoch, result.train_acc, result.val_acc, result.test_acc, result.val_loss, epoch)


# -- BGRL pretraining ----------------------------------------------------------------------------
@dataclass(frozen=True)
class BGRLTrainConfig:
    """BGRL's optimisation schedule (defaults: BGRL's WikiCS setting)."""

    epochs: int = 2000  # full batch: one AdamW step per epoch
    lr: float = 5e-4  # peak learning rate
    weight_decay: float = 1e-5  # AdamW (decoupled) weight decay
    warmup_frac: float = 0.1  # linear warm-up over this fraction of the epochs, then cosine decay to 0
    tau_base: float = 0.99  # EMA decay of the target at epoch 0, cosine-annealed to 1 at the last epoch
    checkpoint_every: int = 100  # epochs between history points and ``on_checkpoint`` calls

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if not 0.0 < self.tau_base <= 1.0:
            raise ValueError(f"tau_base must be in (0, 1], got {self.tau_base}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")

    @property
    def warmup(self) -> int:
        """Warm-up epochs (at least one, so the first step never has lr = 0)."""
        return max(1, int(self.warmup_frac * self.epochs))


@dataclass
class BGRLTrainResult:
    """What :func:`pretrain_bgrl` trained: the loss every ``checkpoint_every`` epochs and at the end."""

    history: list[tuple[int, float]] = field(default_factory=list)  # (epochs done, loss of that epoch)

    @property
    def final_loss(self) -> float:
        return self.history[-1][1]


def pretrain_bgrl(
    model: BGRL,
    x: Tensor | SparseFeatures,
    edge_index: Tensor,
    aug_1: Augmentation,
    aug_2: Augmentation,
    config: BGRLTrainConfig,
    *,
    resume: dict[str, Any] | None = None,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    progress: Callable[[Iterable[int]], Iterator[int]] | None = None,
) -> BGRLTrainResult:
    """Train ``model`` with BGRL on one graph: two views per epoch, AdamW, EMA target.

    Per epoch ``k`` (0-based): ``lr = lr_at(k, K, lr, warmup)``; one :func:`bgrl_step` (views drawn from the
    global torch RNG); then ``target <- ema(target, online, ema_decay(k + 1, K, tau_base))``.

    Args:
        model: a fresh :class:`BGRL` (its initial weights are replaced when resuming).
        x, edge_index: features [N, F] (dense or :class:`SparseFeatures`) and edges [2, E], on one device.
        aug_1, aug_2: the two views' augmentations.
        config: the schedule.
        resume: a state handed to ``on_checkpoint`` by an earlier (interrupted) call with the same arguments;
            training continues from it and ends exactly as an uninterrupted call would, provided the global
            RNG is restored to what it was when the state was handed out (``Run.load_checkpoint`` does).
        on_checkpoint: called with that state after every ``checkpoint_every``-th epoch but the last, at an
            epoch boundary (after all of that epoch's RNG use): save the RNG with it (``Run.save_checkpoint``
            does).
        progress: wraps the epoch iterator (e.g. a progress bar).
    """
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start, result = 0, BGRLTrainResult()
    if resume is not None:
        model.load_state_dict(resume["model"])
        # load_state_dict adopts the given tensors (no copy): without one, training would mutate ``resume``
        optimizer.load_state_dict(copy.deepcopy(resume["optimizer"]))
        start = int(resume["epoch"])
        result.history = [(int(e), float(loss)) for e, loss in resume["history"]]
    if not 0 <= start < config.epochs:
        raise ValueError(f"resume epoch must be in [0, {config.epochs}), got {start}")
    epochs: Iterable[int] = range(start, config.epochs)
    for epoch in progress(epochs) if progress is not None else epochs:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(epoch, config.epochs, config.lr, config.warmup)
        loss = bgrl_step(model, optimizer, x, edge_index, aug_1, aug_2)
        ema_update(model.target, model.online, ema_decay(epoch + 1, config.epochs, config.tau_base))
        done = epoch + 1
        if done % config.checkpoint_every == 0 or done == config.epochs:
            result.history.append((done, loss))
            if on_checkpoint is not None and done < config.epochs:
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
                on_checkpoint(
                    {
                        "epoch": done,
                        **copy.deepcopy(state),  # a snapshot: the live tensors keep training
                        "history": [list(h) for h in result.history],
                    }
                )
    return result
