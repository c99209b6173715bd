"""EMA ("target") networks, shared by BYOL-style methods (BGRL, BAMS, BYOL-Π, BYOL-Explore, GHM target networks).

A target network is created eagerly as a frozen deep copy and moved towards the online network by
one explicit function, so optimiser contents never depend on call order.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_target(online: nn.Module) -> nn.Module:
    """A frozen deep copy of ``online`` (``requires_grad=False``) to be updated by :func:`ema_update`."""
    target = copy.deepcopy(online)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    """Polyak averaging in place: ``θ_target ← decay · θ_target + (1 − decay) · θ_online``.

    ``decay = 0`` copies the online weights; ``decay = 1`` leaves the target unchanged. A Polyak rate
    ``tau`` (``θ̄ ← (1 − τ) θ̄ + τ θ``, the GHM target networks) is ``decay = 1 − tau``. Buffers (e.g.
    BatchNorm running statistics) are copied, as in BYOL, since averaging them has no meaning.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    t_params, o_params = list(target.parameters()), list(online.parameters())
    if len(t_params) != len(o_params):
        raise ValueError(f"target has {len(t_params)} parameter tensors but online has {len(o_params)}")
    for t, o in zip(t_params, o_params):
        if t.shape != o.shape:
            raise ValueError(f"target/online parameter shapes differ: {tuple(t.shape)} vs {tuple(o.shape)}")
        t.lerp_(o, 1.0 - decay)
    for tb, ob in zip(target.buffers(), online.buffers()):
        tb.copy_(ob)
