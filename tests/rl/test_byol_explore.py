"""Tests for foresight.rl.byol_explore: loss, masks, reward indexing, normaliser, world model, PPO hooks."""

import math

import pytest
import torch
from torch.nn import functional as F

from foresight.rl import agents as AG
from foresight.rl import byol_explore as BE
from foresight.rl import gridworlds as GW

torch.set_num_threads(1)

CORRIDOR = "#######\n#S...G#\n#######"


def _loop_loss(pred, target, mask):
    """ℓ(t, k) from its definition, one (t, k, b) at a time."""
    T, K, B, _ = pred.shape
    table = torch.zeros(T, K, B, dtype=pred.dtype)
    for t in range(T):
        for k in range(1, min(K, T - t) + 1):
            for b in range(B):
                if mask[t, k - 1, b]:
                    g, y = pred[t, k - 1, b], target[t + k - 1, b]
                    table[t, k - 1, b] = (g / g.norm() - y / y.norm()).pow(2).sum()
    return table


def test_loss_is_two_minus_two_cosine_and_matches_the_double_loop():
    g = torch.Generator().manual_seed(0)
    T, K, B, D = 6, 3, 4, 5
    pred = torch.randn(T, K, B, D, generator=g, dtype=torch.float64)
    target = torch.randn(T, B, D, generator=g, dtype=torch.float64)
    res = BE.byol_explore_loss(pred, target)
    for t in range(T):
        for k in range(1, min(K, T - t) + 1):
            cos = F.cosine_similarity(pred[t, k - 1], target[t + k - 1], dim=-1)  # [B]
            torch.testing.assert_close(res.per_step[t, k - 1], 2 - 2 * cos, atol=1e-6, rtol=0)
    mask = torch.rand(T, K, B, generator=g) > 0.3
    res = BE.byol_explore_loss(pred, target, mask)
    full_mask = mask & BE.horizon_mask(T, K)
    torch.testing.assert_close(res.per_step, _loop_loss(pred, target, full_mask))
    torch.testing.assert_close(res.loss, res.per_step.sum() / (B * T))
    assert torch.equal(res.mask, full_mask)


def test_horizon_is_truncated_at_the_rollout_end_and_at_episode_ends():
    T, K = 5, 3
    mask = BE.horizon_mask(T, K)[:, :, 0]
    # K(t) = min(K, T − t): rows 0..2 see 3 steps ahead, row 3 two, row 4 one
    assert mask.sum(1).tolist() == [3, 3, 3, 2, 1]
    assert mask.tolist()[3] == [True, True, False]
    pred, target = torch.randn(T, K, 1, 4), torch.randn(T, 1, 4)
    res = BE.byol_explore_loss(pred, target)
    assert (res.per_step[~res.mask] == 0).all() and (res.per_step[res.mask] > 0).all()
    # an episode ends at step 1: from t = 0 the prediction of o_2 (k = 2) is valid - it is the episode's
    # last observation - but o_3 (k = 3) belongs to the next episode
    dones = torch.tensor([[False], [True], [False], [False], [False]])
    m = BE.horizon_mask(T, K, dones)[:, :, 0]
    assert m[0].tolist() == [True, True, False]
    assert m[1].tolist() == [True, False, False]
    assert m[2].tolist() == [True, True, True]


def test_no_gradient_reaches_the_target():
    pred = torch.randn(4, 2, 3, 5, requires_grad=True)
    target = torch.randn(4, 3, 5, requires_grad=True)
    BE.byol_explore_loss(pred, target).loss.backward()
    assert target.grad is None and pred.grad.abs().sum() > 0
    BE.byol_explore_loss(pred, target, stop_target_gradients=False).loss.backward()
    assert target.grad is not None  # the switch is what stops it
    # in the world model the target encoder is frozen and outside the graph
    wm = BE.BYOLWorldModel(6, 4, BE.BYOLExploreConfig(horizon=3))
    assert all(not p.requires_grad for p in wm.target_encoder.parameters())
    T, B = 5, 2
    out = wm(
        torch.randn(T, B, 6),
        torch.randint(0, 4, (T, B)),
        torch.randn(T, B, 6),
        torch.zeros(T, B, dtype=torch.bool),
        torch.zeros(B, 64),
        torch.full((B,), 4),
    )
    assert not out.target.requires_grad
    BE.byol_explore_loss(out.pred, out.target, out.mask).loss.backward()
    assert all(p.grad is None for p in wm.target_encoder.parameters())
    # the online encoder learns only through the closed loop's input, never through the target
    assert wm.encoder[0].weight.grad.abs().sum() > 0 and wm.closed_loop.weight_ih.grad.abs().sum() > 0


def test_hand_made_loss_table_under_both_reward_indexings():
    T, K = 4, 2
    table = torch.zeros(T, K, 1)
    for t in range(T):
        for k in range(1, K + 1):
            if t + k <= T:
                table[t, k - 1, 0] = 10 * t + k  # ℓ(t, k)
    from_t = BE.transition_uncertainty(table, "from_t")[:, 0]
    targeting = BE.transition_uncertainty(table, "targeting_t1")[:, 0]
    assert from_t.tolist() == [1 + 2, 11 + 12, 21 + 22, 31]  # Σ_k ℓ(t, k)
    assert targeting.tolist() == [1, 11 + 2, 21 + 12, 31 + 22]  # ℓ(t, 1) + ℓ(t − 1, 2)
    assert from_t.sum() == targeting.sum() == table.sum()  # every loss is charged to one transition
    with pytest.raises(ValueError, match="indexing='both' is not allowed"):
        BE.transition_uncertainty(table, "both")
    with pytest.raises(ValueError, match="per_step must be \\[T, K, B\\], got shape \\(4, 2\\)"):
        BE.transition_uncertainty(table[:, :, 0])


def test_normaliser_matches_a_hand_computation():
    norm = BE.RewardNormaliser(decay=0.5)
    # batch 1: m = 1, m₂ = 2.5, bias-corrected by 1 − 0.5 = 0.5 → mean 2, mean sq 5, σ = 1; r̃ = r;
    # μ = 0.5·0 + 0.5·2 = 1; max(r̃ − μ, 0) zeroes the below-average step
    out = norm(torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(out, torch.tensor([0.0, 2.0]), atol=1e-6, rtol=0)
    # batch 2: m = 1.5, m₂ = 3.25, corrected by 0.75 → 2 and 13/3, σ = sqrt(1/3); r̃ = 2·sqrt(3);
    # μ = 0.5·1 + 0.5·2·sqrt(3)
    out = norm(torch.tensor([2.0, 2.0]))
    r_norm = 2 * math.sqrt(3)
    assert norm.count == 2 and norm.mean == pytest.approx(1.5) and norm.mean_sq == pytest.approx(3.25)
    torch.testing.assert_close(out, torch.full((2,), r_norm - (0.5 + 0.5 * r_norm)), atol=1e-5, rtol=0)
    clone = BE.RewardNormaliser()
    clone.load_state_dict(norm.state_dict())
    assert clone.state_dict() == norm.state_dict()
    # on a stream of fixed variance the bias-corrected σ is right from the first batch
    g = torch.Generator().manual_seed(0)
    norm = BE.RewardNormaliser(0.99)
    for _ in range(5):
        r = 5.0 + 3.0 * torch.randn(4096, generator=g)
        norm(r)
        m = norm.mean / (1 - 0.99**norm.count)
        sigma = math.sqrt(norm.mean_sq / (1 - 0.99**norm.count) - m * m)
        assert sigma == pytest.approx(3.0, rel=0.05)
    with pytest.raises(ValueError, match="decay must be in \\[0, 1\\), got 1.0"):
        BE.RewardNormaliser(1.0)


def test_vectorised_world_model_matches_a_step_by_step_rollout_and_resets_at_episode_ends():
    torch.manual_seed(0)
    cfg = BE.BYOLExploreConfig(horizon=3, latent_dim=8, state_dim=12, mlp_hidden=16, action_embed_dim=4)
    wm = BE.BYOLWorldModel(6, 4, cfg)
    T, B, none = 7, 2, 4
    obs, next_obs = torch.randn(T, B, 6), torch.randn(T, B, 6)
    actions = torch.randint(0, 4, (T, B))
    dones = torch.zeros(T, B, dtype=torch.bool)
    dones[2, 0] = True
    h0, a0 = torch.randn(B, 12), torch.tensor([1, none])
    with torch.no_grad():
        out = wm(obs, actions, next_obs, dones, h0, a0)
        for b in range(B):
            h, a_prev = h0[b : b + 1], a0[b : b + 1]
            for t in range(T):
                h = wm.closed_loop(torch.cat([wm.encoder(obs[t, b : b + 1]), wm.action_embed(a_prev)], -1), h)
                hk = h
                for k in range(1, min(cfg.horizon, T - t) + 1):
                    hk = wm.open_loop(wm.action_embed(actions[t + k - 1, b : b + 1]), hk)
                    torch.testing.assert_close(out.pred[t, k - 1, b : b + 1], wm.predictor(hk))
                if dones[t, b]:
                    h, a_prev = torch.zeros_like(h), torch.tensor([none])
                else:
                    a_prev = actions[t, b : b + 1]
            torch.testing.assert_close(out.state[b : b + 1], h)
        torch.testing.assert_close(out.target, wm.target_encoder(next_obs))
        # what happened before the episode end at step 2 does not reach the next episode's predictions
        obs2 = obs.clone()
        obs2[:3, 0] += 1.0
        out2 = wm(obs2, actions, next_obs, dones, h0, a0)
        torch.testing.assert_close(out2.pred[3:, :, 0], out.pred[3:, :, 0])
        assert not torch.allclose(out2.pred[:3, :, 0], out.pred[:3, :, 0])


def test_hooks_train_the_world_model_and_ema_the_target_inside_ppo():
    env = GW.GridVectorEnv(4, CORRIDOR, max_steps=12)
    ppo = AG.PPOConfig(num_envs=4, num_steps=16, total_steps=4 * 16 * 4)
    obs_dim, _ = AG.space_encoder(env.single_observation_space)
    torch.manual_seed(0)
    cfg = BE.BYOLExploreConfig(horizon=4, wm_updates=1, ema_decay=0.9, int_coef=0.5)
    hooks = BE.BYOLExploreHooks(obs_dim, 4, 4, cfg)
    target0 = [p.clone() for p in hooks.model.target_encoder.parameters()]
    online0 = [p.clone() for p in hooks.model.encoder.parameters()]
    # record the target the way the hook's single Adam step + ema_update should move it
    seen = []
    orig = hooks.model.update_target

    def spy():
        before = [p.clone() for p in hooks.model.target_encoder.parameters()]
        orig()
        seen.append(
            (
                before,
                [p.clone() for p in hooks.model.encoder.parameters()],
                [p.clone() for p in hooks.model.target_encoder.parameters()],
            )
        )

    hooks.model.update_target = spy
    _, res = AG.train_ppo(env, ppo, hooks=hooks, seed=0)
    assert len(hooks.history) == len(res.updates) == 4 == len(seen)  # one rollout_reward per rollout
    for before, online, after in seen:  # φ ← αφ + (1 − α)θ_f
        for b, o, a in zip(before, online, after):
            torch.testing.assert_close(a, 0.9 * b + 0.1 * o)
    assert all(not torch.equal(a, b) for a, b in zip(hooks.model.target_encoder.parameters(), target0))
    assert all(not torch.equal(a, b) for a, b in zip(hooks.model.encoder.parameters(), online0))
    assert all(math.isfinite(h["wm_loss"]) for h in hooks.history)
    assert res.updates[0]["mean_bonus"] > 0  # early on most steps are above the running mean
    assert hooks.normaliser.count == 4
    assert hooks.state.shape == (4, cfg.state_dim) and hooks.prev_action.shape == (4,)


def test_rollout_reward_of_the_wrong_shape_is_rejected():
    class Bad(AG.ExplorationHooks):
        def rollout_reward(self, rollout, agent):
            return torch.zeros(rollout.obs.shape[1])

    env = GW.GridVectorEnv(2, CORRIDOR)
    with pytest.raises(ValueError, match="rollout_reward must return shape \\(8, 2\\), got \\(2,\\)"):
        AG.train_ppo(env, AG.PPOConfig(num_envs=2, num_steps=8, total_steps=16, minibatches=2), hooks=Bad())


def test_bad_configs_and_shapes_name_the_value():
    with pytest.raises(ValueError, match="horizon must be >= 1, got 0"):
        BE.BYOLExploreConfig(horizon=0)
    with pytest.raises(ValueError, match="ema_decay must be in \\[0, 1\\), got 1.0"):
        BE.BYOLExploreConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="reward_indexing='t' is not allowed"):
        BE.BYOLExploreConfig(reward_indexing="t")
    with pytest.raises(ValueError, match="int_coef must be >= 0, got -1"):
        BE.BYOLExploreConfig(int_coef=-1)
    with pytest.raises(ValueError, match="lr and max_grad_norm must be > 0, got lr=0"):
        BE.BYOLExploreConfig(lr=0)
    with pytest.raises(ValueError, match="expected pred \\[T, K, B, D\\] and target \\[T, B, D\\]"):
        BE.byol_explore_loss(torch.zeros(4, 2, 3, 5), torch.zeros(5, 3, 5))
    with pytest.raises(ValueError, match="mask must have shape \\(4, 2, 3\\)"):
        BE.byol_explore_loss(torch.zeros(4, 2, 3, 5), torch.zeros(4, 3, 5), torch.ones(4, 2, 1, dtype=torch.bool))


@pytest.mark.parametrize("indexing", BE.REWARD_INDEXINGS)
def test_rollout_reward_uses_the_configured_indexing(indexing):
    torch.manual_seed(0)
    T, E, O = 6, 3, 5
    cfg = BE.BYOLExploreConfig(horizon=3, wm_updates=1, reward_indexing=indexing, int_coef=2.0)
    hooks = BE.BYOLExploreHooks(O, 4, E, cfg)
    dones = torch.zeros(T, E, dtype=torch.bool)
    dones[-1, 0] = True
    ro = AG.Rollout(torch.randn(T, E, O), torch.randint(0, 4, (T, E)), torch.randn(T, E, O), dones, torch.zeros(T, E))
    with torch.no_grad():  # the losses the hook will see, before its update
        out = hooks.model(ro.obs, ro.actions, ro.next_obs, ro.dones, hooks.state, hooks.prev_action)
        raw = BE.transition_uncertainty(BE.byol_explore_loss(out.pred, out.target, out.mask).per_step, indexing)
    expected = 2.0 * BE.RewardNormaliser(cfg.norm_decay)(raw)
    torch.testing.assert_close(hooks.rollout_reward(ro, None), expected)
    # the episode of env 0 ended at the last step: its closed-loop state restarts, the others carry on
    assert hooks.state[0].abs().sum() == 0 and hooks.state[1:].abs().sum() > 0
    assert hooks.prev_action[0] == 4 and torch.equal(hooks.prev_action[1:], ro.actions[-1, 1:])
