"""behavior/train.py: BAMS inputs and HoA targets from keypoints, and the training loop."""

import numpy as np
import pytest
import torch

from foresight.behavior import mabe
from foresight.behavior.bams import BAMS, BAMSConfig, TCNConfig, bams_losses
from foresight.behavior.train import BAMSTrainConfig, bams_inputs, train_bams
from foresight.nn.ema import ema_update, make_target

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def inputs():
    clips = mabe.synthetic_mouse_triplets(4, mabe.SyntheticSpec(frames=60), seed=1)
    kp = np.stack([c["keypoints"] for c in clips["sequences"].values()])  # [4, 60, 3, 12, 2]
    return bams_inputs(kp, hoa_window=5, bins=8)


def small_model(seed=0, ema_decay=0.0) -> BAMS:
    torch.manual_seed(seed)
    return BAMS(
        BAMSConfig(
            input_dim=48,
            action_dim=24,
            short=TCNConfig(channels=(6, 4), dilation_base=2),
            long=TCNConfig(channels=(6, 4), dilation_base=3),
            hoa_bins=8,
            hoa_window=5,
            hoa_hidden=(16,),
            short_skip=4,
            long_skip=6,
            ema_decay=ema_decay,
        )
    )


def test_bams_inputs_shapes_and_targets(inputs):
    assert inputs.x.shape == (12, 60, 48) and inputs.x.dtype == torch.float32  # 4 clips x 3 mice
    assert inputs.hist.shape == (12, 60, 24, 8) and inputs.weight.shape == (12, 60)
    assert inputs.x.abs().max() <= 1.0 + 1e-6  # max-abs normalised per channel
    sums = inputs.hist.sum(-1)  # [N, T, C]: a distribution wherever a future frame is valid
    has_future = inputs.weight > 0
    torch.testing.assert_close(sums[has_future], torch.ones_like(sums[has_future]))
    assert (sums[~has_future] == 0).all()
    # the last frame has no future; a frame with the whole window ahead has weight 1
    assert (inputs.weight[:, -1] == 0).all() and inputs.weight[:, 10].max() == 1.0


def test_train_bams_is_the_hand_written_loop(inputs):
    """AdamW with 10x lr for the predictors, a random crop per batch, EMA target: the experiment's old loop."""
    cfg = BAMSTrainConfig(steps=5, batch_size=4, crop=30, lr=1e-3, weight_decay=4e-5, log_every=2)
    ref = small_model(ema_decay=0.5)
    target = make_target(ref.encoder)
    target.eval()
    boot = {id(p) for p in ref.bootstrap_params()}
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in ref.parameters() if id(p) not in boot], "lr": cfg.lr},
            {"params": ref.bootstrap_params(), "lr": 10 * cfg.lr},
        ],
        weight_decay=cfg.weight_decay,
    )
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(4)
    losses_ref = []
    ref.train()
    for _ in range(cfg.steps):
        rows = torch.randperm(12, generator=g)[: cfg.batch_size]
        t0 = int(torch.randint(0, 60 - 30 + 1, (1,), generator=g))
        batch = [t[rows, t0 : t0 + 30] for t in (inputs.x, inputs.hist, inputs.weight)]
        losses = bams_losses(ref, target, *batch, generator=g)
        opt.zero_grad(set_to_none=True)
        losses.total.backward()
        opt.step()
        ema_update(target, ref.encoder, 0.5)
        losses_ref.append(losses.total.item())

    model = small_model(ema_decay=0.5)
    torch.manual_seed(4)
    seen = []
    history = train_bams(model, inputs, cfg, generator=torch.Generator().manual_seed(3), on_record=seen.append)
    for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    assert [h["step"] for h in history] == [0, 2, 4] and seen == history
    assert [h["loss"] for h in history] == [losses_ref[0], losses_ref[2], losses_ref[4]]
    for h in history:  # the named loss terms add up to the total
        assert h["loss"] == pytest.approx(500 * h["hoa"] + 0.5 * h["short"] + 0.5 * h["long"], rel=1e-5)


def test_training_lowers_the_hoa_loss_and_records_the_last_step(inputs):
    model = small_model()
    cfg = BAMSTrainConfig(steps=43, batch_size=6, lr=1e-2, log_every=10)
    history = train_bams(model, inputs, cfg, generator=torch.Generator().manual_seed(0))
    assert [h["step"] for h in history] == [0, 10, 20, 30, 40, 42]
    assert history[-1]["hoa"] < 0.8 * history[0]["hoa"]


def test_config_validation_names_the_bad_value(inputs):
    with pytest.raises(ValueError, match="batch_size must be >= 2 .*, got 1"):
        BAMSTrainConfig(batch_size=1)
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        BAMSTrainConfig(steps=0)
    with pytest.raises(ValueError, match="need lr > 0"):
        BAMSTrainConfig(lr=0.0)
    assert BAMSTrainConfig(steps=500).record_every == 10 and BAMSTrainConfig(steps=500, log_every=7).record_every == 7
    with pytest.raises(ValueError, match="crop=61 exceeds the 60 frames"):
        train_bams(small_model(), inputs, BAMSTrainConfig(crop=61), generator=torch.Generator())
