"""Losses shared by several systems (pure functions: no state, no parameters).

:func:`byol_loss` is the one spelling of BYOL's regression loss, used by BGRL
(``foresight.graph.bgrl.cosine_loss``), BAMS (``foresight.behavior.bams.bootstrap_loss``, half of it)
and BYOL-Explore (``foresight.rl.byol_explore.byol_explore_loss``, per row).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["REDUCTIONS", "byol_loss"]

REDUCTIONS = ("mean", "sum", "none")


def byol_loss(
    prediction: Tensor, target: Tensor, *, stop_target_gradients: bool = True, reduction: str = "mean"
) -> Tensor:
    r"""BYOL's regression loss: the squared distance between the unit-normalised vectors, per row.

    Grill et al., "Bootstrap your own latent", NeurIPS 2020, eq. 2 (https://arxiv.org/abs/2006.07733):

    .. math::
        \ell_i = \Big\| \frac{p_i}{\|p_i\|} - \frac{z_i}{\|z_i\|} \Big\|^2 = 2 - 2 \cos(p_i, z_i) \in [0, 4].

    It is computed as ``2 - 2 * F.cosine_similarity(p, z, dim=-1)`` (norms clamped at 1e-8, so a
    zero row counts as orthogonal: :math:`\ell = 2`), as in lucidrains/byol-pytorch ``loss_fn``.
    For :math:`\cos \ge 1/2` the subtraction is exact, so the error is that of the cosine (~1e-7 in
    float32), whatever the size of the loss.

    Args:
        prediction: ``[..., D]`` online predictions :math:`p`.
        target: ``[..., D]`` targets :math:`z`, same shape as ``prediction`` (no broadcasting).
        stop_target_gradients: detach ``target`` (BYOL's stop-gradient). ``False`` differentiates
            through it as well.
        reduction: ``"mean"`` over all rows, computed as ``2 - 2 * cos.mean()`` (BGRL's form);
            ``"sum"``; or ``"none"`` for the ``[...]`` per-row losses. ``"mean"`` equals
            ``byol_loss(..., reduction="none").mean()`` up to rounding, not bit for bit.

    Returns:
        A scalar for ``"mean"``/``"sum"``, else a ``[...]`` tensor (``prediction.shape[:-1]``).
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target must have the same shape, got {tuple(prediction.shape)} and {tuple(target.shape)}"
        )
    if prediction.dim() < 1:
        raise ValueError("prediction and target must have a feature axis [..., D], got 0-d tensors")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
    if stop_target_gradients:
        target = target.detach()
    cos = F.cosine_similarity(prediction, target, dim=-1)  # [...]
    if reduction == "mean":
        return 2.0 - 2.0 * cos.mean()
    loss = 2.0 - 2.0 * cos  # [...]
    return loss.sum() if reduction == "sum" else loss
