"""graph/train.py's BGRL pretraining loop: the same as the hand-written loop, exactly resumable (no data files)."""

import pytest
import torch
from torch_geometric.utils import coalesce

from foresight.graph.bgrl import BGRL, Augmentation, BGRLEncoder, SparseFeatures, bgrl_step, ema_decay, lr_at
from foresight.graph.train import BGRLTrainConfig, pretrain_bgrl
from foresight.nn.ema import ema_update

AUG_1, AUG_2 = Augmentation(0.2, 0.2, 0.75), Augmentation(0.1, 0.3, 0.75)


def graph(n=30, e=120, f=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = coalesce(torch.randint(0, n, (2, e), generator=g), num_nodes=n)
    x = (torch.rand(n, f, generator=g) < 0.3).float() * torch.rand(n, f, generator=g)
    return x, ei


def new_model(seed=0):
    torch.manual_seed(seed)
    return BGRL(BGRLEncoder(12, (16, 8)), predictor_hidden=16)


def assert_same_weights(a: BGRL, b: BGRL):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_pretrain_bgrl_is_the_hand_written_loop():
    """Warm-up + cosine lr, one bgrl_step, then the cosine EMA schedule: what halfhop-ssl used to spell out."""
    x, ei = graph()
    cfg = BGRLTrainConfig(epochs=8, lr=5e-3, weight_decay=1e-4, warmup_frac=0.25, tau_base=0.9, checkpoint_every=3)
    ref = new_model()
    opt = torch.optim.AdamW(ref.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    torch.manual_seed(7)
    losses = []
    for epoch in range(cfg.epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at(epoch, cfg.epochs, cfg.lr, 2)
        losses.append(bgrl_step(ref, opt, x, ei, AUG_1, AUG_2))
        ema_update(ref.target, ref.online, ema_decay(epoch + 1, cfg.epochs, cfg.tau_base))

    model = new_model()
    torch.manual_seed(7)
    result = pretrain_bgrl(model, x, ei, AUG_1, AUG_2, cfg)
    assert_same_weights(model, ref)
    assert result.history == [(3, losses[2]), (6, losses[5]), (8, losses[7])]  # every 3rd epoch and the last
    assert result.final_loss == losses[-1]
    assert cfg.warmup == 2


@pytest.mark.parametrize("sparse", [False, True])
def test_killed_and_resumed_ends_exactly_like_an_uninterrupted_run(sparse):
    x, ei = graph()
    x = SparseFeatures.from_dense(x) if sparse else x
    cfg = BGRLTrainConfig(epochs=10, lr=1e-2, checkpoint_every=3)
    full = new_model()
    torch.manual_seed(1)
    seen = []
    reference = pretrain_bgrl(full, x, ei, AUG_1, AUG_2, cfg, on_checkpoint=lambda s: seen.append(s["epoch"]))
    assert seen == [3, 6, 9]  # never at the last epoch: the caller keeps the finished result instead

    class Killed(Exception):
        pass

    saved = []

    def save_then_die(state):
        saved.append(state)
        if state["epoch"] == 6:
            raise Killed

    victim = new_model()
    torch.manual_seed(1)
    with pytest.raises(Killed):
        pretrain_bgrl(victim, x, ei, AUG_1, AUG_2, cfg, on_checkpoint=save_then_die)
    # a new process: other initial weights, another RNG state; the checkpoint restores both
    resumed = new_model(seed=123)
    torch.manual_seed(999)
    result = pretrain_bgrl(resumed, x, ei, AUG_1, AUG_2, cfg, resume=saved[-1])
    assert_same_weights(resumed, full)
    assert result.history == reference.history
    # the state handed out is a snapshot, not the live tensors training went on with
    assert not torch.equal(saved[0]["model"]["online.convs.0.lin.weight"], full.online.convs[0].lin.weight)


def test_tau_base_one_leaves_the_target_at_its_initial_weights():
    x, ei = graph()
    model = new_model()
    before = {k: v.clone() for k, v in model.target.state_dict().items()}
    online_before = model.online.convs[0].lin.weight.clone()
    pretrain_bgrl(model, x, ei, AUG_1, AUG_2, BGRLTrainConfig(epochs=4, lr=1e-2, tau_base=1.0))
    after = model.target.state_dict()
    for k, v in before.items():
        if "running" in k or "num_batches" in k:
            continue  # batch-norm statistics are copied from the online network by ema_update
        assert torch.equal(after[k], v), k
    assert not torch.equal(model.online.convs[0].lin.weight, online_before)  # the online network did train


def test_config_and_resume_validation_name_the_value():
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        BGRLTrainConfig(epochs=0)
    with pytest.raises(ValueError, match=r"tau_base must be in \(0, 1\], got 0.0"):
        BGRLTrainConfig(tau_base=0.0)
    with pytest.raises(ValueError, match=r"warmup_frac must be in \[0, 1\), got 1.0"):
        BGRLTrainConfig(warmup_frac=1.0)
    with pytest.raises(ValueError, match="checkpoint_every must be >= 1, got 0"):
        BGRLTrainConfig(checkpoint_every=0)
    x, ei = graph()
    cfg = BGRLTrainConfig(epochs=4, checkpoint_every=2)
    saved = []
    model = new_model()
    pretrain_bgrl(model, x, ei, AUG_1, AUG_2, cfg, on_checkpoint=saved.append)
    late = {**saved[0], "epoch": 4}
    with pytest.raises(ValueError, match=r"resume epoch must be in \[0, 4\), got 4"):
        pretrain_bgrl(new_model(), x, ei, AUG_1, AUG_2, cfg, resume=late)
