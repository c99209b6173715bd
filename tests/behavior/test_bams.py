"""BAMS model pieces: causal TCNs and their receptive fields, the HoA future histogram, EMD losses, bootstrap."""

import pytest
import torch

from foresight.behavior.bams import (
    BAMS,
    LONG_TERM,
    SHORT_TERM,
    TCN,
    BAMSConfig,
    TCNConfig,
    bams_losses,
    bootstrap_loss,
    earth_movers_distance,
    future_histograms,
    hoa_bin_edges,
    hoa_loss,
    quantize,
    receptive_field,
    sample_positive_pairs,
)
from foresight.nn.ema import ema_update, make_target

torch.set_num_threads(1)


def _small(**kw) -> BAMSConfig:
    base = dict(
        input_dim=5,
        action_dim=2,
        short=TCNConfig(channels=(6, 4), dilation_base=2),
        long=TCNConfig(channels=(6, 4), dilation_base=3),
        hoa_bins=8,
        hoa_window=4,
        hoa_hidden=(16,),
        short_skip=3,
        long_skip=4,
    )
    return BAMSConfig(**{**base, **kw})


def test_receptive_fields_match_the_public_code_defaults():
    assert SHORT_TERM.dilations == (1, 2, 4, 8) and SHORT_TERM.receptive_field == 61
    assert LONG_TERM.dilations == (1, 4, 16, 64, 256) and LONG_TERM.receptive_field == 1365
    assert receptive_field(3, (1, 2)) == 1 + 2 * 2 * 1 + 2 * 2 * 2 == 13
    cfg = BAMSConfig()
    assert cfg.embedding_dim == 64 and cfg.short.receptive_field == 61 and cfg.long.receptive_field == 1365


@pytest.mark.parametrize(
    "config",
    [
        TCNConfig(channels=(4, 4, 3), dilation_base=2, dropout=0.0),
        TCNConfig(channels=(3, 3), kernel_size=4, dilation_base=3, dropout=0.0),
    ],
)
def test_tcn_is_causal_and_its_receptive_field_is_exact(config):
    torch.manual_seed(0)
    tcn = TCN(2, config).eval()
    for p in tcn.parameters():  # larger weights than the N(0, 0.01) init so that every path shows
        torch.nn.init.normal_(p, 0.0, 0.5)
    rf, T, t = config.receptive_field, 90, 70
    x = torch.randn(1, T, 2)
    y = tcn(x)
    assert y.shape == (1, T, config.channels[-1])
    x_future = x.clone()
    x_future[:, t + 1 :] += torch.randn(1, T - t - 1, 2)  # changing the future leaves outputs <= t unchanged
    assert torch.allclose(tcn(x_future)[:, : t + 1], y[:, : t + 1])
    # the output at t sees frame t - rf + 1 but not t - rf
    x_in = x.clone()
    x_in[:, t - rf + 1] += 1.0
    assert not torch.allclose(tcn(x_in)[:, t], y[:, t])
    x_out = x.clone()
    x_out[:, t - rf] += 1.0
    assert torch.allclose(tcn(x_out)[:, t], y[:, t])


def test_future_histogram_counts_the_next_window_not_the_current_frame():
    # one channel, 3 bins, frames' bins 0 1 2 2 1 0, window 3
    bins = torch.tensor([0, 1, 2, 2, 1, 0]).view(1, 6, 1)
    valid = torch.ones(1, 6, dtype=torch.bool)
    hist, weight = future_histograms(bins, valid, window=3, num_bins=3)
    assert hist.shape == (1, 6, 1, 3)
    # frame 0: future frames 1, 2, 3 have bins 1, 2, 2 (the public code would count bin 0, frame 0's own)
    assert torch.allclose(hist[0, 0, 0], torch.tensor([0.0, 1 / 3, 2 / 3]))
    assert torch.allclose(hist[0, 2, 0], torch.tensor([1 / 3, 1 / 3, 1 / 3]))
    assert torch.allclose(hist[0, 4, 0], torch.tensor([1.0, 0.0, 0.0]))  # only frame 5 is left
    assert torch.allclose(hist[0, 5, 0], torch.zeros(3))
    assert torch.allclose(weight[0], torch.tensor([1, 1, 1, 2 / 3, 1 / 3, 0]))
    # a missing future frame is left out of the counts and lowers the weight (valid frames weigh MORE)
    valid[0, 2] = False
    hist, weight = future_histograms(bins, valid, window=3, num_bins=3)
    assert torch.allclose(hist[0, 0, 0], torch.tensor([0.0, 0.5, 0.5]))
    assert torch.allclose(weight[0, :2], torch.tensor([2 / 3, 2 / 3]))
    with pytest.raises(ValueError, match=r"expected bins \[B, T, C\] and valid \[B, T\]"):
        future_histograms(bins[0], valid, 3, 3)


def test_quantize_follows_np_digitize_and_edges_span_the_quantiles():
    edges = torch.tensor([[-1.0, 0.0, 1.0]])
    a = torch.tensor([[-2.0], [-1.0], [-0.5], [0.0], [0.99], [1.0], [5.0]])
    assert quantize(a, edges).view(-1).tolist() == [0, 1, 1, 2, 2, 3, 3]
    values = torch.linspace(-10, 10, 2001).view(-1, 1)
    e = hoa_bin_edges(values, bins=5, min_abs=0.1)
    assert e.shape == (1, 4)
    assert e[0, 0] == pytest.approx(-9.9, abs=0.05) and e[0, -1] == pytest.approx(9.9, abs=0.05)
    with pytest.raises(ValueError, match=r"values must be \[N, C\], got shape \(2001,\)"):
        hoa_bin_edges(values.view(-1))


def test_emd_by_hand():
    p = torch.tensor([1.0, 0.0, 0.0, 0.0])
    q = torch.tensor([0.0, 0.0, 0.5, 0.5])
    # moving all mass from bin 0 to bins 2 and 3 costs 0.5 * 2 + 0.5 * 3 = 2.5 = L1 of CDF difference
    assert float(earth_movers_distance(p, q)) == pytest.approx(2.5)
    # CDFs: (1, 1, 1, 1) vs (0, 0, .5, 1) -> squared differences 1, 1, .25, 0 -> mean 0.5625
    assert float(earth_movers_distance(p, q, power=2)) == pytest.approx(0.5625)
    assert float(earth_movers_distance(q, q)) == 0.0
    with pytest.raises(ValueError, match="power must be 1 or 2, got 3"):
        earth_movers_distance(p, q, power=3)
    with pytest.raises(ValueError, match=r"histograms differ in shape: \(4,\) vs \(3,\)"):
        earth_movers_distance(p, q[:3])


def test_hoa_loss_is_a_weighted_mean_that_skips_early_frames():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 3, 4)
    target = torch.softmax(torch.randn(2, 5, 3, 4), -1)
    weight = torch.rand(2, 5)
    emd2 = earth_movers_distance(logits.softmax(-1), target, power=2)  # [2, 5, 3]
    want = (emd2[:, 2:] * weight[:, 2:, None]).sum() / (3 * weight[:, 2:].sum())
    assert torch.allclose(hoa_loss(logits, target, weight, skip_frames=2), want)
    # perfect logits (log of the target) give zero loss
    assert float(hoa_loss(target.log(), target, weight)) == pytest.approx(0.0, abs=1e-7)


def test_bootstrap_loss_stops_target_gradients():
    pred = torch.randn(4, 3, requires_grad=True)
    tgt = torch.randn(4, 3, requires_grad=True)
    loss = bootstrap_loss(pred, tgt)
    loss.backward()
    assert pred.grad is not None and tgt.grad is None
    assert bootstrap_loss(tgt, tgt).item() == pytest.approx(0.0, abs=1e-6)
    assert bootstrap_loss(tgt, -tgt).item() == pytest.approx(2.0, abs=1e-6)


def test_positive_pairs_follow_the_public_sampling():
    cfg = _small(short_skip=10, long_skip=20, short_positive_window=5)
    g = torch.Generator().manual_seed(0)
    (ts, ts2), (tl, tl2) = sample_positive_pairs(500, 40, cfg, g)
    assert ts.min() >= 10 and ts.max() < 35 and ((ts2 - ts) >= 0).all() and ((ts2 - ts) <= 5).all()
    assert tl.min() >= 20 and tl.max() < 40 and (tl != tl2).any()
    with pytest.raises(ValueError, match="sequences of 12 frames are too short: the objectives need >= 21"):
        sample_positive_pairs(2, 12, cfg)


def test_model_forward_and_losses_train_the_online_network_only():
    torch.manual_seed(0)
    cfg = _small()
    model = BAMS(cfg)
    target = make_target(model.encoder)
    x = torch.randn(3, 20, 5)
    out = model(x)
    assert out.short.shape == (3, 20, 4) and out.long.shape == (3, 20, 4)
    assert out.hoa_logits.shape == (3, 20, 2, 8) and out.embedding.shape == (3, 20, 8)
    hist = torch.softmax(torch.randn(3, 20, 2, 8), -1)
    losses = bams_losses(model, target, x, hist, torch.ones(3, 20), torch.Generator().manual_seed(1))
    assert torch.allclose(losses.total, 500 * losses.hoa + 0.5 * losses.short + 0.5 * losses.long)
    losses.total.backward()
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert model.short_predictor[0].weight.grad is not None and model.long_predictor[0].weight.grad is not None
    # EMA with decay 0 makes the target the online encoder again; decay 1 leaves it
    before = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.1)
    ema_update(target, model.encoder, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))
    ema_update(target, model.encoder, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(model.encoder.parameters(), target.parameters()))
    with pytest.raises(ValueError, match=r"expected input \[B, T, 5\], got \(3, 20, 4\)"):
        model(x[..., :4])


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match=r"channels must be a non-empty tuple of positive widths, got \(\)"):
        TCNConfig(channels=())
    with pytest.raises(ValueError, match="dropout must be in \\[0, 1\\), got 1.0"):
        TCNConfig(dropout=1.0)
    with pytest.raises(ValueError, match="hoa_bins must be >= 2, got 1"):
        BAMSConfig(hoa_bins=1)
    with pytest.raises(ValueError, match="ema_decay must be in \\[0, 1\\], got 1.5"):
        BAMSConfig(ema_decay=1.5)
    with pytest.raises(ValueError, match="hoa_weight must be >= 0, got -1"):
        BAMSConfig(hoa_weight=-1)
