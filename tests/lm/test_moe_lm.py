import pytest
import torch
from gemma2_testing import random_gemma2

from foresight.lm import Gemma2, Gemma2Config
from foresight.lm.gemma2 import Gemma2Block
from foresight.lm.moe_lm import (
    MoEBlock,
    MoELM,
    MoELMConfig,
    MoENextTokenObjective,
    copy_shared_weights,
    expert_load_stats,
    init_twins,
)
from foresight.lm.train import TrainConfig, Trainer
from foresight.nn.moe import MoEConfig

torch.set_num_threads(1)


def _randomise(model: torch.nn.Module, std: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Weights large enough that routing and logits are far from uniform (as gemma2_testing.random_gemma2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.1 if "norm" in name else std))
    return model.eval()


def _model(**moe) -> MoELM:
    return _randomise(MoELM(MoELMConfig.tiny(**moe)))


def test_shapes_and_loss_terms():
    model = _model()
    E, L = 4, 4
    ids = torch.randint(0, 256, (2, 11))
    out = model(ids)
    assert out.logits.shape == (2, 11, 256) and out.logits.dtype == torch.float32
    assert out.expert_fraction.shape == (L, E)
    torch.testing.assert_close(out.expert_fraction.sum(-1), torch.ones(L))  # each block's slots sum to 1
    assert len(out.expert_index) == L and out.expert_index[0].shape == (22, 2)
    assert out.aux_loss.ndim == 0 and out.z_loss.ndim == 0 and float(out.dropped_fraction) == 0.0
    assert float(out.aux_loss.detach()) > 0 and float(out.z_loss.detach()) > 0
    cfg = model.moe_config.moe
    torch.testing.assert_close(out.moe_loss, cfg.aux_loss_coef * out.aux_loss + cfg.z_loss_coef * out.z_loss)
    # the mean over blocks: recompute block by block through the public SparseMoE API is covered by equality
    # of moe_loss and the coefficients above; logits_to_keep keeps the last positions only
    last = model(ids, logits_to_keep=3).logits
    assert last.shape == (2, 3, 256)
    torch.testing.assert_close(last, out.logits[:, -3:])


def test_losses_are_means_over_moe_blocks():
    model = _model()
    ids = torch.randint(0, 256, (2, 9))
    out = model(ids)
    per_block = []
    hooks = [b.mlp.register_forward_hook(lambda m, a, o: per_block.append(o)) for b in model.layers]
    model(ids)
    for h in hooks:
        h.remove()
    assert len(per_block) == 4
    torch.testing.assert_close(out.aux_loss, torch.stack([o.aux_loss for o in per_block]).mean())
    torch.testing.assert_close(out.z_loss, torch.stack([o.z_loss for o in per_block]).mean())
    torch.testing.assert_close(out.expert_fraction, torch.stack([o.expert_fraction for o in per_block]))


def test_padding_is_invisible_to_logits_and_router():
    model = _model()
    real = torch.randint(0, 256, (1, 7))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), real], dim=1)  # left padding
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 7)], dim=1).long()
    a, b = model(real), model(padded, attention_mask=mask)
    torch.testing.assert_close(b.logits[:, 3:], a.logits, atol=1e-5, rtol=1e-5)
    # pads are not routed: balance statistics and losses are those of the real tokens alone
    torch.testing.assert_close(b.expert_fraction, a.expert_fraction)
    torch.testing.assert_close(b.aux_loss, a.aux_loss)
    torch.testing.assert_close(b.z_loss, a.z_loss)


@pytest.mark.parametrize("moe,batch", [(dict(), 2), (dict(top_k=1, capacity_factor=1.0), 1)])
def test_causal_future_tokens_do_not_change_past_logits(moe, batch):
    # Dropless routing is per token, so causal for any batch. Capacity routing is causal only for one row
    # and top-1: tokens compete for capacity in flat (row-major) order, so row 0's future tokens can
    # displace row 1's past ones, and with k > 1 a later token's first choice outranks an earlier
    # token's second choice (the known leak of capacity-based routing; docs/gemini15_moe.md, "Routing").
    model = _randomise(MoELM(MoELMConfig(base=Gemma2Config.tiny(), moe=MoEConfig(**{"top_k": 2, **moe}))))
    ids = torch.randint(0, 256, (batch, 12))
    other = ids.clone()
    other[:, 8:] = torch.randint(0, 256, (batch, 4))
    a, b = model(ids).logits, model(other).logits
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


@pytest.mark.parametrize("gating", ["topk_softmax", "softmax"])
def test_one_expert_top1_equals_gemma2_with_the_same_weights(gating):
    base = Gemma2Config.tiny()
    dense = random_gemma2(base)
    moe = MoELM(MoELMConfig(base=base, moe=MoEConfig(num_experts=1, top_k=1, gating=gating))).eval()
    state = dense.state_dict()
    for i in range(base.num_layers):
        p = f"layers.{i}.mlp."
        state[p + "gate_up_proj"] = torch.cat([state.pop(p + "gate_proj.weight"), state.pop(p + "up_proj.weight")])[
            None
        ]  # [1, 2F, D], gate rows first
        state[p + "down_proj"] = state.pop(p + "down_proj.weight")[None]  # [1, D, F]
        state[p + "router.weight"] = torch.randn(1, base.hidden_size)  # softmax over one expert: gate = 1
    moe.load_state_dict(state, strict=True)
    ids = torch.randint(0, base.vocab_size, (2, 13))
    out = moe(ids)
    torch.testing.assert_close(out.logits, dense(ids).logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.aux_loss, torch.tensor(1.0))  # one expert: perfectly "balanced"
    assert moe.num_params() == sum(p.numel() for p in dense.parameters()) + base.num_layers * base.hidden_size


def test_active_params_match_the_dense_twin_for_top1():
    cfg = MoELMConfig(base=Gemma2Config.tiny(), moe=MoEConfig(num_experts=8, top_k=1, gating="softmax"))
    moe, dense = MoELM(cfg), Gemma2(cfg.base)
    n_dense = sum(p.numel() for p in dense.parameters())
    D, F, L = cfg.base.hidden_size, cfg.base.intermediate_size, cfg.base.num_layers
    assert moe.num_active_params() == n_dense + L * D * 8  # + the routers
    assert moe.num_params() == moe.num_active_params() + L * 7 * 3 * D * F  # 7 idle experts per block


def test_moe_layers_subset_keeps_the_other_blocks_dense():
    cfg = MoELMConfig(base=Gemma2Config.tiny(), moe=MoEConfig(num_experts=4, top_k=2), moe_layers=(3, 1))
    assert cfg.moe_layers == (1, 3)
    model = _randomise(MoELM(cfg))
    assert [type(b) for b in model.layers] == [Gemma2Block, MoEBlock, Gemma2Block, MoEBlock]
    out = model(torch.randint(0, 256, (1, 5)))
    assert out.expert_fraction.shape == (2, 4) and len(out.expert_index) == 2


def test_objective_adds_the_weighted_moe_losses_and_trains():
    model = _model()
    ids = torch.randint(0, 256, (2, 9))
    targets = torch.randint(0, 256, (2, 9))
    objective = MoENextTokenObjective()
    res = objective(model, ids, targets, None)
    out = model(ids)
    ce = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 256), targets.reshape(-1))
    torch.testing.assert_close(res.ce, ce)
    torch.testing.assert_close(res.loss, ce + out.moe_loss)
    assert float(out.moe_loss.detach()) > 0
    stats = res.extra
    assert set(stats) == {
        "aux_loss",
        "z_loss",
        "moe_loss",
        "expert_fraction_min",
        "expert_fraction_max",
        "dropped_fraction",
    }
    assert float(stats["aux_loss"]) == pytest.approx(float(out.aux_loss.detach()), rel=1e-5)
    assert float(stats["expert_fraction_max"]) == pytest.approx(float(out.expert_fraction.max()), rel=1e-6)
    assert not any(torch.is_tensor(v) and v.requires_grad for v in stats.values())

    # zero coefficients: the loss is the CE alone
    plain = _model(aux_loss_coef=0.0, z_loss_coef=0.0)
    res0 = MoENextTokenObjective()(plain, ids, targets, None)
    torch.testing.assert_close(res0.loss, res0.ce)


class _Windows:  # the PackedSequences interface the Trainer reads
    seq_len = 8

    def __len__(self):
        return 4

    def batch(self, ids):
        g = torch.Generator().manual_seed(int(sum(ids)))
        w = torch.randint(0, 256, (len(ids), 9), generator=g)
        return w[:, :-1], w[:, 1:]


def test_trainer_runs_the_moe_objective_and_updates_routers_and_experts():
    model = MoELM(MoELMConfig.tiny())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tcfg = TrainConfig(
        steps=2, batch_size=2, warmup_steps=1, eval_every=0, checkpoint_every=0, distributed="none", precision="fp32"
    )
    result = Trainer(model, tcfg, _Windows(), _Windows(), objective=MoENextTokenObjective()).fit()
    assert result.steps == 2 and result.val_loss is not None and math_isfinite(result.val_loss)
    for name in ("layers.0.mlp.router.weight", "layers.0.mlp.gate_up_proj", "layers.3.mlp.down_proj"):
        assert not torch.equal(before[name], model.get_parameter(name)), name


def math_isfinite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def test_cached_decoding_matches_a_full_forward():
    model = _model()
    ids = torch.randint(0, 256, (2, 10))
    full = model(ids).logits
    cache = model.make_cache(2, 10)
    first = model(ids[:, :7], cache=cache).logits
    step = model(ids[:, 7:8], cache=cache).logits
    torch.testing.assert_close(first, full[:, :7], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step[:, 0], full[:, 7], atol=1e-5, rtol=1e-5)


def test_bad_configs_raise():
    base = Gemma2Config.tiny()
    with pytest.raises(ValueError, match=r"moe_layers entry 4 is not a block index in \[0, 4\)"):
        MoELMConfig(base=base, moe_layers=(0, 4))
    with pytest.raises(ValueError, match="repeats a block"):
        MoELMConfig(base=base, moe_layers=(1, 1))
    with pytest.raises(ValueError, match="moe_layers is empty"):
        MoELMConfig(base=base, moe_layers=())
    with pytest.raises(ValueError, match="base must be a Gemma2Config, got MoEConfig"):
        MoELMConfig(base=MoEConfig())
    with pytest.raises(ValueError, match="config must be a MoELMConfig, got Gemma2Config"):
        MoELM(base)
    with pytest.raises(ValueError, match="top_k must be an int in"):
        MoELMConfig.tiny(top_k=5)
    model = _model()
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(1, 5))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=512"):
        model(torch.zeros(1, 513, dtype=torch.long))


def test_same_seed_gives_the_dense_twin_s_shared_weights():
    cfg = MoELMConfig(base=Gemma2Config.tiny(), moe=MoEConfig(num_experts=4, top_k=1), moe_layers=(0, 2))
    torch.manual_seed(7)
    dense = Gemma2(cfg.base)
    torch.manual_seed(7)
    moe = MoELM(cfg)
    moe_state = moe.state_dict()
    shared = [k for k in dense.state_dict() if k in moe_state]
    assert len(shared) > 20 and all(".mlp." not in k or k.startswith(("layers.1.", "layers.3.")) for k in shared)
    for k in shared:
        assert torch.equal(dense.state_dict()[k], moe_state[k]), k
    # the experts are initialised like the dense weights: Normal(0, initializer_range)
    experts = moe.layers[0].mlp.gate_up_proj
    assert abs(float(experts.detach().std()) - cfg.base.initializer_range) < 2e-3


def test_copy_shared_weights_makes_a_wider_dense_twin_share_all_but_the_ffns():
    cfg = MoELMConfig.tiny()  # experts of width F = 128
    torch.manual_seed(0)
    dense = Gemma2(cfg.base.replace(intermediate_size=256))  # the twin's FFN: k = 2 experts' width
    torch.manual_seed(1)
    moe = MoELM(cfg)
    mlp_before = {k: v.clone() for k, v in moe.state_dict().items() if ".mlp." in k}
    assert not torch.equal(moe.embed.weight, dense.embed.weight)  # different seeds: nothing shared yet
    shared = copy_shared_weights(moe, dense)
    d, m = dense.state_dict(), moe.state_dict()
    assert shared == [k for k in m if ".mlp." not in k] and "embed.weight" in shared
    assert all(torch.equal(m[k], d[k]) for k in shared)
    assert all(torch.equal(m[k], v) for k, v in mlp_before.items())  # experts and routers untouched
    # a twin of another depth or width cannot be matched
    with pytest.raises(ValueError, match=r"MoE weights \['layers.2.attn_norm.weight'"):
        copy_shared_weights(moe, Gemma2(cfg.base.replace(num_layers=2)))
    with pytest.raises(ValueError, match="differ in shape from the dense twin's"):
        copy_shared_weights(moe, Gemma2(cfg.base.replace(vocab_size=300)))


def test_expert_load_stats_matches_the_router_outputs():
    model = _model()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (2, 12), generator=g), torch.randint(0, 256, (3, 12), generator=g)]
    stats = expert_load_stats(model, batches, buckets=4)
    outs = [model(x) for x in batches]
    # per block: the token-weighted mean of each batch's expert_fraction (24 and 36 tokens)
    want = (outs[0].expert_fraction * 24 + outs[1].expert_fraction * 36) / 60
    torch.testing.assert_close(torch.tensor(stats["per_layer"], dtype=torch.float32), want)
    assert stats["tokens"] == 60 and stats["buckets"] == 4
    assert stats["fraction_min"] == pytest.approx(float(want.min())) and stats["fraction_max"] == pytest.approx(
        float(want.max())
    )
    # by position: count the last block's choices by hand (positions 0-2 -> bucket 0, ..., 9-11 -> bucket 3)
    counts = torch.zeros(4, 4)
    for x, out in zip(batches, outs, strict=True):
        idx = out.expert_index[-1].view(x.shape[0], 12, 2)
        for b in range(x.shape[0]):
            for t in range(12):
                for e in idx[b, t].tolist():
                    counts[t // 3, e] += 1
    torch.testing.assert_close(
        torch.tensor(stats["last_layer_by_position"], dtype=torch.float32), counts / counts.sum(-1, keepdim=True)
    )
    # every bucket holds the same number of tokens here, so the buckets average back to the last block's load
    by_pos = torch.tensor(stats["last_layer_by_position"]).mean(0)
    torch.testing.assert_close(by_pos, torch.tensor(stats["per_layer"][-1]), atol=1e-6, rtol=1e-6)
    assert expert_load_stats(model, batches[:1], buckets=50)["buckets"] == 12  # at most one bucket per position


def test_expert_load_stats_rejects_bad_input():
    model = _model()
    with pytest.raises(ValueError, match="batches is empty"):
        expert_load_stats(model, [])
    with pytest.raises(ValueError, match="same length T=5, got 6"):
        expert_load_stats(model, [torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 6, dtype=torch.long)])
    with pytest.raises(ValueError, match="buckets must be >= 1, got 0"):
        expert_load_stats(model, [torch.zeros(1, 5, dtype=torch.long)], buckets=0)


def test_compute_matched_twins_share_all_but_the_ffns_and_match_active_parameters():
    dense_cfg = Gemma2Config.tiny(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, head_dim=16)
    cfg = MoELMConfig.compute_matched(dense_cfg, MoEConfig(num_experts=4, top_k=2))
    assert cfg.base.intermediate_size == 32 and cfg.base.replace(intermediate_size=64) == dense_cfg
    dense, moe = init_twins(dense_cfg, cfg, seed=3)
    d, m = dense.state_dict(), moe.state_dict()
    shared = [k for k in m if ".mlp." not in k]
    assert shared and all(torch.equal(m[k], d[k]) for k in shared)
    assert not any(k in d for k in m if ".mlp." in k)  # the FFNs differ: experts + router vs one FFN
    # k experts of width F / k: the dense FFN's parameters per token, plus the [D, E] router per block
    n_dense = sum(p.numel() for p in dense.parameters())
    assert moe.num_active_params() == n_dense + 2 * 32 * 4 and moe.num_params() > moe.num_active_params()
    # the seed decides the init: the same seed gives the same pair, another seed another one
    again, other = init_twins(dense_cfg, cfg, seed=3)[1], init_twins(dense_cfg, cfg, seed=4)[1]
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in m.items())
    assert not torch.equal(other.embed.weight, moe.embed.weight)
    with pytest.raises(ValueError, match="intermediate_size=64 must be a multiple of top_k=3"):
        MoELMConfig.compute_matched(dense_cfg, MoEConfig(num_experts=4, top_k=3))


def test_set_rope_base_equals_a_model_built_with_that_base():
    from foresight.lm.gemma2 import Gemma2
    from foresight.lm.moe_lm import MoELM, set_rope_base

    cfg = MoELMConfig.tiny()
    torch.manual_seed(0)
    moe = MoELM(cfg).eval()
    ids = torch.randint(0, cfg.base.vocab_size, (2, 40))
    before = moe(ids).logits
    assert set_rope_base(moe, 1e5) is moe
    assert moe.config.rope_theta == 1e5 and moe.moe_config.base.rope_theta == 1e5 and moe.rope.base == 1e5
    twin = MoELM(cfg.replace(base=cfg.base.replace(rope_theta=1e5))).eval()
    twin.load_state_dict(moe.state_dict())
    after = moe(ids).logits
    torch.testing.assert_close(after, twin(ids).logits, rtol=0, atol=0)
    assert (after - before).abs().max() > 1e-4  # the base matters: positions rotate differently
    dense = set_rope_base(Gemma2(cfg.base), 5e4)
    assert dense.config.rope_theta == 5e4 and dense.rope.inv_freq.dtype == torch.float32
    with pytest.raises(ValueError, match="RoPE base must be > 0, got -1"):
        set_rope_base(dense, -1)
