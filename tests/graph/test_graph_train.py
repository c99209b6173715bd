"""graph/train.py: the BGRL pretraining loop (the hand-written loop, exactly resumable) and the supervised loop's
Geom-GCN protocol (selection rule, lr schedule); no data files."""

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.utils import coalesce

from foresight.core.checkpoint import rng_state, set_rng_state
from foresight.graph.bgrl import BGRL, Augmentation, BGRLEncoder, SparseFeatures, bgrl_step, ema_decay, lr_at
from foresight.graph.models import GCN, NodeClassifier
from foresight.graph.train import BGRLTrainConfig, EpochSelector, fit_node_classifier, pretrain_bgrl
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
        # what Run.save_checkpoint does: the state and every RNG, in one safetensors checkpoint
        saved.append({"state": state, "rng": rng_state()})
        if state["epoch"] == 6:
            raise Killed

    victim = new_model()
    torch.manual_seed(1)
    with pytest.raises(Killed):
        pretrain_bgrl(victim, x, ei, AUG_1, AUG_2, cfg, on_checkpoint=save_then_die)
    assert "rng" not in saved[-1]["state"]  # the RNG is saved once, by the caller
    # a new process: other initial weights, another RNG state; the checkpoint restores both
    resumed = new_model(seed=123)
    torch.manual_seed(999)
    set_rng_state(saved[-1]["rng"])  # what Run.load_checkpoint does
    result = pretrain_bgrl(resumed, x, ei, AUG_1, AUG_2, cfg, resume=saved[-1]["state"])
    assert_same_weights(resumed, full)
    assert result.history == reference.history
    # the state handed out is a snapshot, not the live tensors training went on with
    assert not torch.equal(saved[0]["state"]["model"]["online.convs.0.lin.weight"], full.online.convs[0].lin.weight)


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


# -- supervised loop: the Geom-GCN selection rule and lr schedule -----------------------------------
def test_geom_gcn_rule_resets_on_either_and_keeps_on_both():
    sel = EpochSelector("geom-gcn")
    steps = [(0.5, 1.0), (0.5, 1.1), (0.4, 0.9), (0.6, 0.95), (0.6, 0.9), (0.55, 0.92)]
    # (keep, progress): first epoch both; acc tie (>=) resets; loss alone resets; acc alone; both (ties); none
    expected = [(True, True), (False, True), (False, True), (False, True), (True, True), (False, False)]
    assert [sel.update(a, loss) for a, loss in steps] == expected
    best = EpochSelector("best-val")
    assert [best.update(a, loss) for a, loss in [(0.5, 1.0), (0.5, 0.9), (0.5, 0.95), (0.6, 2.0)]] == [
        (True, True),
        (True, True),
        (False, False),
        (True, True),
    ]
    with pytest.raises(ValueError, match="selection must be one of .*got 'last'"):
        EpochSelector("last")


def node_graph(n=40, f=6, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = coalesce(torch.randint(0, n, (2, 4 * n), generator=g), num_nodes=n)
    split = torch.rand(n, 1, generator=g)
    return Data(
        x=torch.rand(n, f, generator=g),
        edge_index=ei,
        y=torch.randint(0, c, (n,), generator=g),
        train_mask=split < 0.5,
        val_mask=(split >= 0.5) & (split < 0.8),
        test_mask=split >= 0.8,
    )


def test_fit_geom_gcn_protocol_is_the_hand_written_loop():
    """Adam + ReduceLROnPlateau on the val loss + the Geom-GCN rule, spelled out; Half-Hop with p < 1."""
    data = node_graph()
    kw = dict(epochs=30, lr=0.05, weight_decay=5e-5, patience=5, eval_seed=3)

    def model():
        torch.manual_seed(0)
        return NodeClassifier(GCN(8, 8, 3, dropout=0.5), in_channels=6, alpha=0.5, p=0.5)

    fitted = model()
    torch.manual_seed(1)
    got = fit_node_classifier(fitted, data, 0, selection="geom-gcn", lr_decay=(0.5, 2), **kw)

    ref = model()
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(3)
    eval_graph = ref.prepare(data.edge_index, 40, node_mask=torch.rand(40, generator=gen) < 0.5)
    opt = torch.optim.Adam(ref.parameters(), lr=0.05, weight_decay=5e-5)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)
    tr, va, te = data.train_mask[:, 0], data.val_mask[:, 0], data.test_mask[:, 0]
    max_acc, min_loss, since, kept, lrs = -1.0, float("inf"), 0, None, set()
    for epoch in range(1, 31):
        ref.train()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(data.x, data.edge_index)[tr], data.y[tr]).backward()
        opt.step()
        ref.eval()
        with torch.no_grad():
            out = ref(data.x, prepared=eval_graph)
        loss = torch.nn.functional.cross_entropy(out[va], data.y[va]).item()
        acc = (out[va].argmax(1) == data.y[va]).float().mean().item()
        sched.step(loss)
        lrs.add(opt.param_groups[0]["lr"])
        if acc >= max_acc or loss <= min_loss:
            if acc >= max_acc and loss <= min_loss:
                kept = (epoch, (out[te].argmax(1) == data.y[te]).float().mean().item(), loss)
            max_acc, min_loss, since = max(max_acc, acc), min(min_loss, loss), 0
        else:
            since += 1
            if since == 5:
                break
    assert (got.best_epoch, got.epochs_run) == (kept[0], epoch)
    assert got.test_acc == pytest.approx(kept[1]) and got.val_loss == pytest.approx(kept[2])
    assert len(lrs) > 1  # the schedule did decay the learning rate in this run


def test_fit_validates_its_options():
    data = node_graph()
    m = NodeClassifier(GCN(8, 8, 3), in_channels=6)
    with pytest.raises(ValueError, match="selection must be one of"):
        fit_node_classifier(m, data, 0, epochs=1, lr=0.01, weight_decay=0.0, selection="best")
    with pytest.raises(ValueError, match=r"lr_decay must be \(factor in \(0, 1\), patience >= 0\), got \(1.5, 2\)"):
        fit_node_classifier(m, data, 0, epochs=1, lr=0.01, weight_decay=0.0, lr_decay=(1.5, 2))
