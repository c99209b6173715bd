"""BGRL: losses, schedules, the Half-Hop-aware encoder, the step and the linear probe (no data files)."""

import copy
import math

import pytest
import torch
from torch import nn
from torch_geometric.nn import GCNConv
from torch_geometric.utils import coalesce

from foresight.graph.bgrl import (
    BGRL,
    Augmentation,
    BGRLEncoder,
    SparseFeatures,
    View,
    bgrl_loss,
    bgrl_step,
    cosine_loss,
    draw_view,
    ema_decay,
    linear_probe,
    lr_at,
    prepare_view,
)
from foresight.graph.halfhop import half_hop
from foresight.nn.ema import ema_update


def graph(n=30, e=120, f=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = coalesce(torch.randint(0, n, (2, e), generator=g), num_nodes=n)
    x = (torch.rand(n, f, generator=g) < 0.3).float() * torch.rand(n, f, generator=g)  # sparse-ish
    x[3] = 0.0  # a node without features
    return x, ei


def test_cosine_loss_golden_values():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    assert cosine_loss(q, q * 5).item() == pytest.approx(0.0, abs=1e-6)  # scale-invariant
    assert cosine_loss(q, -q).item() == pytest.approx(4.0)
    assert cosine_loss(q[:1], torch.tensor([[0.0, 1.0]])).item() == pytest.approx(2.0)  # orthogonal
    with pytest.raises(ValueError, match=r"same shape, got \(3, 2\) and \(2, 2\)"):
        cosine_loss(q, q[:2])


def test_bgrl_loss_is_symmetric_and_stops_target_gradients():
    q1, q2 = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    y1, y2 = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    loss = bgrl_loss(q1, y2, q2, y1)
    torch.testing.assert_close(loss, cosine_loss(q1, y2) + cosine_loss(q2, y1))
    loss.backward()
    assert q1.grad is not None and q2.grad is not None
    assert y1.grad is None and y2.grad is None


def test_ema_decay_cosine_schedule():
    assert ema_decay(0, 100) == pytest.approx(0.99)
    assert ema_decay(50, 100) == pytest.approx(0.995)
    assert ema_decay(100, 100) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="0 <= step <= total_steps"):
        ema_decay(101, 100)


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 10) == pytest.approx(0.5)


def test_target_is_frozen_reinitialised_and_moved_only_by_ema():
    torch.manual_seed(0)
    model = BGRL(BGRLEncoder(12, (16, 8)), predictor_hidden=16)
    assert all(not p.requires_grad for p in model.target.parameters())
    w_online, w_target = model.online.convs[0].lin.weight, model.target.convs[0].lin.weight
    assert not torch.equal(w_online, w_target)  # re-initialised, as in the reference code
    assert {id(p) for p in model.trainable_parameters()}.isdisjoint({id(p) for p in model.target.parameters()})
    x, ei = graph()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    before = w_target.clone()
    aug = Augmentation(0.2, 0.2, 0.75)
    loss = bgrl_step(model, opt, x, ei, aug, aug)
    assert math.isfinite(loss)
    torch.testing.assert_close(w_target, before)  # the optimiser never touches the target
    ema_update(model.target, model.online, 0.9)
    torch.testing.assert_close(w_target, 0.9 * before + 0.1 * w_online, rtol=1e-5, atol=1e-6)


def reference_encoder_forward(enc: BGRLEncoder, x, view: View):
    """BGRL's encoder run the plain way: mask x, half-hop the raw features, default GCNConv layers."""
    xm = x * view.feature_mask
    aug = half_hop(xm, view.edge_index, alpha=view.alpha, node_mask=view.hh_node_mask)
    h = aug.x
    for conv, norm, act in zip(enc.convs, enc.norms, enc.acts):
        ref = GCNConv(conv.in_channels, conv.out_channels)  # normalize=True, on edge_index
        ref.load_state_dict(conv.state_dict())
        h = act(norm(ref(h, aug.edge_index)))
    return h[~aug.slow_node_mask]


@pytest.mark.parametrize("sparse", [False, True])
def test_encoder_interpolating_after_the_first_weight_is_exact(sparse):
    x, ei = graph()
    torch.manual_seed(0)
    enc = BGRLEncoder(12, (16, 8)).eval()  # eval: batch norm uses fixed statistics, rows independent
    for norm in enc.norms:
        norm.running_mean.uniform_(-0.1, 0.1)
        norm.running_var.uniform_(0.5, 1.5)
    view = draw_view(30, 12, ei, Augmentation(0.3, 0.2, 0.6, alpha=0.25))
    assert view.hh_node_mask.any() and view.feature_mask.min() == 0
    inp = SparseFeatures.from_dense(x) if sparse else x
    torch.testing.assert_close(enc(inp, ei, view), reference_encoder_forward(enc, x, view), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sparse", [False, True])
def test_training_mode_half_hop_view_equals_the_materialised_graph(sparse):
    """Batch norm in training mode (statistics over all N + M rows), outputs, gradients and running stats:
    the commuted path (interpolate after the first weight, slow nodes appended) against half_hop on the raw
    masked features followed by default GCNConv layers."""
    x, ei = graph(n=40, e=220, seed=3)
    torch.manual_seed(1)
    enc = BGRLEncoder(12, (16, 8)).train()
    ref = copy.deepcopy(enc)
    for conv in ref.convs:
        conv.normalize = conv.add_self_loops = True  # a default GCNConv on edge_index, the plain PyG way
    view = draw_view(40, 12, ei, Augmentation(0.3, 0.2, 0.75, alpha=0.3))
    assert view.hh_node_mask.any() and not view.hh_node_mask.all()
    x_fast, x_ref = x.clone().requires_grad_(not sparse), x.clone().requires_grad_()
    out = enc(SparseFeatures.from_dense(x) if sparse else x_fast, ei, view)  # [N, D]
    aug = half_hop(x_ref * view.feature_mask, view.edge_index, alpha=view.alpha, node_mask=view.hh_node_mask)
    h = aug.x  # [N + M, F] materialised slow-node features
    for conv, norm, act in zip(ref.convs, ref.norms, ref.acts):
        h = act(norm(conv(h, aug.edge_index)))
    expected = h[~aug.slow_node_mask]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (expected * w).sum().backward()
    # float32 rounding relative to the largest gradient (~10 here); a conv bias feeds a training-mode batch
    # norm, which removes it, so its gradient is 0 up to that rounding
    scale = max(float(q.grad.abs().max()) for q in ref.parameters())
    for (name, p), q in zip(enc.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=2e-6 * scale, msg=name)
    for (name, b), c in zip(enc.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6, msg=name)
    if not sparse:
        torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1e-4, atol=1e-6)


def test_a_prepared_view_gives_what_the_drawn_view_gives():
    x, ei = graph()
    torch.manual_seed(0)
    enc = BGRLEncoder(12, (16, 8))
    view = draw_view(30, 12, ei, Augmentation(0.3, 0.2, 0.6))
    prepared = prepare_view(view, 30)
    assert prepared.hh.total_nodes == prepared.adj.adj_t.size(0) > 30
    torch.testing.assert_close(enc(x, None, prepared), enc(x, ei, view), rtol=0, atol=0)


def test_sparse_features_matmul():
    x, _ = graph()
    w = torch.randn(12, 5)
    sx = SparseFeatures.from_dense(x)
    assert sx.num_nodes == 30 and sx.num_features == 12
    torch.testing.assert_close(sx.matmul(w), x @ w)


def test_draw_view_and_augmentation_validation():
    _, ei = graph()
    torch.manual_seed(0)
    v = draw_view(30, 12, ei, Augmentation())
    assert v.feature_mask is None and v.hh_node_mask is None and torch.equal(v.edge_index, ei)
    v = draw_view(30, 12, ei, Augmentation(0.5, 0.5, 1.0))
    assert v.edge_index.size(1) < ei.size(1) and v.hh_node_mask.all()
    with pytest.raises(ValueError, match=r"edge_drop must be in \[0, 1\), got 1.0"):
        Augmentation(edge_drop=1.0)
    with pytest.raises(ValueError, match=r"half_hop_p must be in \[0, 1\] or None, got 2"):
        Augmentation(half_hop_p=2)


def test_linear_probe_selects_on_validation_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    z = torch.randn(300, 16, generator=g) + 4.0 * nn.functional.one_hot(y, 16).float()
    idx = torch.randperm(300, generator=g)
    masks = [torch.zeros(300, dtype=torch.bool) for _ in range(3)]
    masks[0][idx[:150]], masks[1][idx[150:225]], masks[2][idx[225:]] = True, True, True
    a = linear_probe(z, y, *masks, weight_decays=(1e-4, 1.0, 100.0))
    b = linear_probe(z, y, *masks, weight_decays=(1e-4, 1.0, 100.0))
    assert a == b
    assert a.weight_decay in (1e-4, 1.0) and a.test_acc > 0.9
    with pytest.raises(ValueError, match="weight_decays must not be empty"):
        linear_probe(z, y, *masks, weight_decays=())


def test_bgrl_training_is_reproducible_across_a_state_dict_round_trip():
    """Resuming = rebuilding the model, loading model/optimiser state and the RNG: same losses."""
    x, ei = graph()
    aug1, aug2 = Augmentation(0.2, 0.2, 0.75), Augmentation(0.1, 0.3, 0.75)

    def make():
        torch.manual_seed(0)
        m = BGRL(BGRLEncoder(12, (16, 8)), 16)
        return m, torch.optim.AdamW(m.trainable_parameters(), lr=1e-2)

    def steps(m, opt, k, start=0):
        out = []
        for i in range(start, start + k):
            out.append(bgrl_step(m, opt, x, ei, aug1, aug2))
            ema_update(m.target, m.online, ema_decay(i + 1, 10))
        return out

    m, opt = make()
    full = steps(m, opt, 6)
    m, opt = make()
    steps(m, opt, 3)
    saved = (m.state_dict(), opt.state_dict(), torch.get_rng_state())
    m2, opt2 = make()
    m2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    torch.set_rng_state(saved[2])
    assert steps(m2, opt2, 3, start=3) == full[3:]
