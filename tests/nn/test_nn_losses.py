"""foresight.nn.losses.byol_loss: values, stop-gradient, reductions, and the scale of each call site."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from foresight.behavior.bams import bootstrap_loss
from foresight.graph.bgrl import bgrl_loss, cosine_loss
from foresight.nn import byol_loss
from foresight.rl.byol_explore import byol_explore_loss

EPS32 = torch.finfo(torch.float32).eps


def _numpy_byol(p: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Per-row ‖p/‖p‖ − z/‖z‖‖², the paper's form, in float64."""
    p_hat = p / np.linalg.norm(p, axis=-1, keepdims=True)
    z_hat = z / np.linalg.norm(z, axis=-1, keepdims=True)
    return ((p_hat - z_hat) ** 2).sum(-1)


def test_values_match_the_normalised_squared_error():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    z = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    want = _numpy_byol(p.numpy(), z.numpy())  # [3, 7]
    np.testing.assert_allclose(byol_loss(p, z, reduction="none").numpy(), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(byol_loss(p, z).item(), want.mean(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(byol_loss(p, z, reduction="sum").item(), want.sum(), rtol=0, atol=1e-11)


def test_golden_values():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    per_row = byol_loss(q, torch.tensor([[5.0, 0.0], [0.0, -1.0], [0.0, 4.0]]), reduction="none")
    assert per_row.tolist() == [0.0, 4.0, 2.0]  # aligned (any scale), opposite, orthogonal
    # a zero row has no direction: the clamped norm makes it orthogonal to everything
    assert byol_loss(torch.zeros(1, 3), torch.ones(1, 3)).item() == 2.0


def test_stop_target_gradients():
    p = torch.randn(4, 3, requires_grad=True)
    z = torch.randn(4, 3, requires_grad=True)
    byol_loss(p, z).backward()
    assert z.grad is None and p.grad is not None and p.grad.abs().sum() > 0
    byol_loss(p, z, stop_target_gradients=False).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    # the loss is symmetric in p and z, so with the stop-gradient off both get mirrored gradients
    p2, z2 = p.detach().clone().requires_grad_(), z.detach().clone().requires_grad_()
    byol_loss(z2, p2, stop_target_gradients=False).backward()
    torch.testing.assert_close(z2.grad, z.grad)


def test_reductions():
    g = torch.Generator().manual_seed(1)
    p, z = torch.randn(6, 2, 8, generator=g), torch.randn(6, 2, 8, generator=g)
    rows = byol_loss(p, z, reduction="none")
    assert rows.shape == (6, 2)
    assert torch.equal(byol_loss(p, z, reduction="sum"), rows.sum())
    torch.testing.assert_close(byol_loss(p, z, reduction="mean"), rows.mean(), rtol=0, atol=4 * EPS32)
    assert byol_loss(p, z).dim() == 0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"same shape, got \(3, 2\) and \(2, 2\)"):
        byol_loss(torch.ones(3, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"reduction must be one of \['mean', 'sum', 'none'\], got 'max'"):
        byol_loss(torch.ones(3, 2), torch.ones(3, 2), reduction="max")
    with pytest.raises(ValueError, match="feature axis"):
        byol_loss(torch.tensor(1.0), torch.tensor(1.0))


# -- every call site keeps its paper's scale, with the numbers of the code it replaced ----------
def _close_pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    p = torch.randn(500, 32, generator=g)
    z = p + 0.2 * torch.randn(500, 32, generator=g)  # close to p: small losses, where rounding shows
    return p.requires_grad_(), z


def test_bgrl_is_bit_identical_to_two_minus_two_mean_cosine():
    p, z = _close_pair()
    old = 2.0 - 2.0 * F.cosine_similarity(p, z, dim=-1).mean()
    new = cosine_loss(p, z)
    assert torch.equal(new, old)
    assert torch.equal(torch.autograd.grad(new, p)[0], torch.autograd.grad(old, p)[0])
    assert torch.equal(bgrl_loss(p, z, p, z), old + old)


def test_bams_is_bit_identical_to_mean_one_minus_cosine():
    p, z = _close_pair()
    old = (1.0 - F.cosine_similarity(p, z, dim=-1)).mean()  # BAMS's 1 - cos: half of BYOL's scale
    new = bootstrap_loss(p, z)
    assert torch.equal(new, old)
    assert torch.equal(torch.autograd.grad(new, p)[0], torch.autograd.grad(old, p)[0])


def test_byol_explore_matches_the_normalised_difference_to_float32_rounding():
    # The BYOL-Explore table used ‖normalize(p) − normalize(z)‖² before; 2 − 2 cos is the same
    # number up to a few float32 ulps of the loss range [0, 4] (not bit for bit).
    g = torch.Generator().manual_seed(3)
    T, K, B, D = 7, 3, 5, 16
    pred = torch.randn(T, K, B, D, generator=g)
    target = torch.randn(T, B, D, generator=g)
    res = byol_explore_loss(pred, target)
    for t in range(T):
        for k in range(1, min(K, T - t) + 1):
            old = (F.normalize(pred[t, k - 1], dim=-1) - F.normalize(target[t + k - 1], dim=-1)).pow(2).sum(-1)
            torch.testing.assert_close(res.per_step[t, k - 1], old, rtol=0, atol=8 * EPS32)
