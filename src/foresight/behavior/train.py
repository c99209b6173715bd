"""Training BAMS: model inputs and HoA targets from keypoints, and the self-supervised training loop.

:func:`bams_inputs` turns MABe keypoints into what the objectives need, normalised as the public code
(nerdslab/bams) does: inputs divided by their per-channel max-abs, action channels by max(|p0.5|, |p99.5|),
then the "histogram of actions" targets of the next ``hoa_window`` frames.

:func:`train_bams` is the loop: per step a batch of animal sequences (optionally a random crop of frames),
``L = w_hoa L_HoA + w_short L_short + w_long L_long`` (:func:`foresight.behavior.bams.bams_losses`), an AdamW
step with 10x the learning rate for the bootstrap predictors (public code), then the EMA target update.

Shape legend: S clips, A animals per clip, N = S A sequences, T frames, F input channels, C action channels,
K histogram bins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from foresight.behavior import mabe
from foresight.behavior.bams import BAMS, bams_losses, future_histograms, hoa_bin_edges, quantize
from foresight.nn.ema import ema_update, make_target

__all__ = ["BAMSInputs", "BAMSTrainConfig", "bams_inputs", "train_bams"]


@dataclass
class BAMSInputs:
    """Training tensors of every animal sequence: [N, T, ...] with N = clips x animals (clip-major)."""

    x: torch.Tensor  # [N, T, F] normalised inputs
    hist: torch.Tensor  # [N, T, C, K] future action histograms (the HoA targets)
    weight: torch.Tensor  # [N, T] valid fraction of each frame's future window


def bams_inputs(keypoints: np.ndarray, hoa_window: int, bins: int = 32) -> BAMSInputs:
    """Inputs and HoA targets from keypoints [S, T, A, P, 2] (P keypoints per animal).

    Features are :func:`foresight.behavior.mabe.keypoint_features` (state + action channels, per animal);
    the bin edges are quantiles over all frames of all sequences, as in the public code.
    """
    x, action, valid = mabe.keypoint_features(keypoints)
    x = x / mabe.max_abs_scale(x)
    lo, hi = np.percentile(action.reshape(-1, action.shape[-1]), [0.5, 99.5], axis=0)
    action = action / np.maximum(np.maximum(np.abs(lo), np.abs(hi)), 1e-8)
    a = torch.from_numpy(action.astype(np.float32))  # [N, T, C]
    edges = hoa_bin_edges(a.reshape(-1, a.shape[-1]), bins=bins)  # [C, K - 1]
    hist, weight = future_histograms(quantize(a, edges), torch.from_numpy(valid), hoa_window, bins)
    return BAMSInputs(torch.from_numpy(x.astype(np.float32)), hist, weight)


@dataclass(frozen=True)
class BAMSTrainConfig:
    """BAMS optimisation (public code: AdamW lr 1e-3, wd 4e-5, 10x lr for the bootstrap predictors, batch 32)."""

    steps: int = 3000
    batch_size: int = 32  # animal sequences per step (>= 2: the bootstrap predictors use BatchNorm)
    crop: int = 0  # frames per training crop, one random offset per batch; 0 = whole sequences
    lr: float = 1e-3
    weight_decay: float = 4e-5
    predictor_lr_scale: float = 10.0  # the bootstrap predictors' learning rate is this times ``lr``
    log_every: int = 0  # steps between history records (the last step is always recorded); 0 = steps // 50

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (the bootstrap predictors use BatchNorm), got {self.batch_size}")
        if self.crop < 0 or self.log_every < 0:
            raise ValueError(f"crop and log_every must be >= 0, got {self.crop}, {self.log_every}")
        if not self.lr > 0 or self.weight_decay < 0 or not self.predictor_lr_scale > 0:
            raise ValueError(
                f"need lr > 0, weight_decay >= 0 and predictor_lr_scale > 0, got {self.lr}, {self.weight_decay}, "
                f"{self.predictor_lr_scale}"
            )

    @property
    def record_every(self) -> int:
        return self.log_every or max(1, self.steps // 50)


def train_bams(
    model: BAMS,
    data: BAMSInputs,
    config: BAMSTrainConfig,
    *,
    generator: torch.Generator,
    on_record: Callable[[dict[str, float]], None] | None = None,
    progress: Callable[[Iterable[int]], Iterator[int]] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place; returns the history (``step`` and the named loss terms, every ``record_every``).

    ``generator`` (CPU) draws the batches, crops and positive pairs; dropout uses the global torch RNG. The
    target encoder is an EMA of the online one with ``model.config.ema_decay`` (0: a detached copy, as in
    the public code), kept in eval mode so that the targets see no dropout. ``data`` stays on its device;
    each batch is moved to the model's. ``on_record`` sees every history record as it is made.
    """
    device = next(model.parameters()).device
    N, T = data.x.shape[:2]
    crop = config.crop or T
    if crop > T:
        raise ValueError(f"crop={crop} exceeds the {T} frames of the sequences")
    target = make_target(model.encoder)
    target.eval()  # deterministic targets (no dropout)
    predictors = {id(p) for p in model.bootstrap_params()}
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in model.parameters() if id(p) not in predictors], "lr": config.lr},
            {"params": model.bootstrap_params(), "lr": config.predictor_lr_scale * config.lr},
        ],
        weight_decay=config.weight_decay,
    )
    history = []
    model.train()
    steps: Iterable[int] = range(config.steps)
    for step in progress(steps) if progress is not None else steps:
        rows = torch.randperm(N, generator=generator)[: config.batch_size]  # [B] sequences
        t0 = int(torch.randint(0, T - crop + 1, (1,), generator=generator))
        frames = slice(t0, t0 + crop)
        x, hist, weight = (t[rows, frames].to(device) for t in (data.x, data.hist, data.weight))
        losses = bams_losses(model, target, x, hist, weight, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        optimizer.step()
        ema_update(target, model.encoder, model.config.ema_decay)
        if step % config.record_every == 0 or step == config.steps - 1:
            record = {
                "step": step,
                "loss": losses.total.item(),
                "hoa": losses.hoa.item(),
                "short": losses.short.item(),
                "long": losses.long.item(),
            }
            history.append(record)
            if on_record is not None:
                on_record(record)
    return history
