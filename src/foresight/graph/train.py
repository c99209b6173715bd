"""Graph training loops: supervised node classification (:func:`fit_node_classifier`) and BGRL
self-supervised pretraining (:func:`pretrain_bgrl`).

Supervised: full-batch, train on one split, select the best-validation epoch.

Model selection follows the Half-Hop paper's heterophilic protocol ("test accuracy at the best
validation model"): after every epoch the model is evaluated, and the reported test accuracy is the
one of the epoch with the highest validation accuracy (ties broken by the lower validation loss,
then by the earlier epoch).

Evaluation of a model with stochastic Half-Hop (``p < 1``) uses one fixed augmented graph, drawn with a
``torch.Generator`` seeded by ``eval_seed``: every epoch is then compared on the same graph, and the
global RNG (which drives training) is not touched by evaluation.

BGRL pretraining (Thakoor et al., ICLR 2022; reference code nerdslab/bgrl): full-batch AdamW, one step
per epoch, a linear warm-up then cosine decay of the learning rate (:func:`foresight.graph.bgrl.lr_at`)
and the target's EMA decay rising from ``tau_base`` to 1 on a cosine (:func:`foresight.graph.bgrl.ema_decay`).
It is resumable: every ``checkpoint_every`` epochs it hands a state (model, optimiser, epoch, history and
the torch RNG that draws the views) to a callback, and a run started with that state ends exactly as the
uninterrupted one. Saving it is the caller's business (an experiment passes ``run.save_checkpoint``).
"""

from __future__ import annotations

import copy
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
    "FitResult",
    "accuracy",
    "fit_node_classifier",
    "keep_freed_memory",
    "pretrain_bgrl",
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


def _torch_rng(device: torch.device) -> dict[str, Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_torch_rng(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


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
            training continues from it, RNG included, and ends exactly as an uninterrupted call would.
        on_checkpoint: called with that state after every ``checkpoint_every``-th epoch but the last, at an
            epoch boundary (after all of that epoch's RNG use).
        progress: wraps the epoch iterator (e.g. a progress bar).
    """
    device = edge_index.device
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start, result = 0, BGRLTrainResult()
    if resume is not None:
        model.load_state_dict(resume["model"])
        # load_state_dict adopts the given tensors (no copy): without one, training would mutate ``resume``
        optimizer.load_state_dict(copy.deepcopy(resume["optimizer"]))
        start = int(resume["epoch"])
        result.history = [(int(e), float(loss)) for e, loss in resume["history"]]
        _set_torch_rng(resume["rng"], device)  # continue the view stream exactly where it stopped
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
                        "rng": _torch_rng(device),
                    }
                )
    return result
