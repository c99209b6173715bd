"""Tests for foresight.rl.agents: GAE, observation encoders, PPO learning, exploration hooks."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from foresight.rl import agents as AG
from foresight.rl import gridworlds as GW
from foresight.rl import mdp as M
from foresight.rl import svd as V

torch.set_num_threads(1)

CORRIDOR = "#######\n#S...G#\n#######"


def _gae_reference(rewards, values, dones, next_value, gamma, lam):
    """GAE from its definition: A_t = Σ_l (γλ)^l δ_{t+l}, truncated at the end of each episode."""
    T, E = rewards.shape
    values_ext = torch.cat([values, next_value[None]], 0)
    adv = torch.zeros(T, E)
    for e in range(E):
        for t in range(T):
            total, discount = 0.0, 1.0
            for u in range(t, T):
                nonterminal = 1.0 - float(dones[u, e])
                delta = rewards[u, e] + gamma * values_ext[u + 1, e] * nonterminal - values_ext[u, e]
                total += discount * delta
                if nonterminal == 0.0:
                    break
                discount *= gamma * lam
            adv[t, e] = total
    return adv


def test_gae_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    dones = torch.tensor([[0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]]).float()
    next_value = torch.randn(3, generator=g)
    adv, ret = AG.compute_gae(rewards, values, dones, next_value, 0.9, 0.8)
    torch.testing.assert_close(adv, _gae_reference(rewards, values, dones, next_value, 0.9, 0.8))
    torch.testing.assert_close(ret, adv + values)
    adv0, _ = AG.compute_gae(rewards, values, dones, next_value, 0.0, 0.8)
    torch.testing.assert_close(adv0, rewards - values)  # γ = 0: one-step advantage


def test_space_encoders_and_uniform_sampler():
    dim, enc = AG.space_encoder(gym.spaces.MultiDiscrete([3, 4]))
    assert dim == 7
    torch.testing.assert_close(enc(np.array([[2, 1]])), torch.tensor([[0, 0, 1, 0, 1, 0, 0.0]]))
    dim, enc = AG.space_encoder(gym.spaces.Discrete(3, start=1))
    torch.testing.assert_close(enc(np.array([1, 3])), torch.tensor([[1, 0, 0], [0, 0, 1.0]]))
    dim, enc = AG.space_encoder(gym.spaces.Box(0, 1, (2, 2)))
    assert dim == 4 and enc(np.zeros((5, 2, 2))).shape == (5, 4)
    sample, prob = AG.uniform_space_sampler(gym.spaces.MultiDiscrete([13, 13]), np.random.default_rng(0))
    draws = sample(20_000)
    assert prob == pytest.approx(1 / 169) and draws.shape == (20_000, 2)
    assert draws.min() == 0 and draws.max() == 12 and abs(draws.mean() - 6) < 0.1
    with pytest.raises(ValueError, match="unsupported observation space"):
        AG.space_encoder(gym.spaces.Text(3))
    with pytest.raises(ValueError, match="needs a Discrete or MultiDiscrete space"):
        AG.uniform_space_sampler(gym.spaces.Box(0, 1, (2,)), np.random.default_rng(0))


def test_ppo_config_validation_names_the_value():
    with pytest.raises(ValueError, match="minibatches=3"):
        AG.PPOConfig(num_envs=4, num_steps=8, minibatches=3)
    with pytest.raises(ValueError, match="num_envs must be >= 1, got 0"):
        AG.PPOConfig(num_envs=0)
    env = GW.GridVectorEnv(2, CORRIDOR)
    with pytest.raises(ValueError, match="envs.num_envs=2 but cfg.num_envs=16"):
        AG.train_ppo(env, AG.PPOConfig())


def test_ppo_learns_a_short_corridor():
    env = GW.GridVectorEnv(8, CORRIDOR, max_steps=20)
    cfg = AG.PPOConfig(num_envs=8, num_steps=16, total_steps=6144, lr=3e-3)
    agent, res = AG.train_ppo(env, cfg, seed=0)
    assert res.env_steps == 6144 and res.steps_per_second > 0
    late = np.asarray(res.episode_returns)[np.asarray(res.episode_end_steps) > 4000]
    # optimal return: 4 steps right, 1 - 0.9 * 4 / 20 = 0.82
    assert late.mean() > 0.7
    obs = AG.space_encoder(env.single_observation_space)[1](np.array([[1, 1], [1, 2], [1, 3], [1, 4]]))
    with torch.no_grad():
        assert (agent(obs).logits.argmax(-1) == 3).all()  # "right" everywhere on the way


def _chain_envs(n, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP):
    def make():
        return M.FiniteMDPEnv(M.chain_mdp(5), max_steps=20, terminal_states=(4,))

    return gym.vector.SyncVectorEnv([make] * n, autoreset_mode=autoreset_mode)


def test_ppo_learns_a_finite_mdp_from_the_toolkit_through_gymnasium():
    """foresight.rl.mdp.FiniteMDPEnv in a gymnasium SyncVectorEnv: walk right along a 5-state chain."""
    cfg = AG.PPOConfig(num_envs=4, num_steps=16, total_steps=4096, lr=3e-3, gamma=0.9)
    agent, res = AG.train_ppo(_chain_envs(4), cfg, seed=0)
    late = np.asarray(res.episode_end_steps) > 3000
    assert np.asarray(res.episode_successes)[late].mean() > 0.9
    assert np.asarray(res.episode_returns)[late].mean() == pytest.approx(1.0)  # R = 1 on arriving at 4
    with torch.no_grad():
        assert (agent(torch.eye(5)[:4]).logits.argmax(-1) == 1).all()  # action 1 = right
    with pytest.raises(ValueError, match="needs same-step autoreset"):
        AG.train_ppo(_chain_envs(4, gym.vector.AutoresetMode.NEXT_STEP), cfg)


class _Recorder(AG.ExplorationHooks):
    """Pays 1 for the first visit to each cell, has one parameter under an auxiliary loss."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.steps, self.updates, self.aux_calls = 0, 0, 0

    def intrinsic_reward(self, step, agent):
        return torch.full((step.obs.shape[0],), 0.5)

    def observe(self, step):
        self.steps += step.obs.shape[0]
        assert step.next_obs.shape == step.obs.shape and step.raw_next_obs.shape == (step.obs.shape[0], 2)

    def aux_loss(self, agent):
        self.aux_calls += 1
        return (self.w - 3.0) ** 2

    def after_update(self, agent):
        self.updates += 1


def test_hooks_are_called_and_their_parameters_trained():
    env = GW.GridVectorEnv(4, CORRIDOR, max_steps=20)
    cfg = AG.PPOConfig(num_envs=4, num_steps=8, total_steps=4 * 8 * 5, epochs=2, minibatches=2)
    hooks = _Recorder()
    _, res = AG.train_ppo(env, cfg, hooks=hooks, seed=0)
    assert hooks.steps == 160 and hooks.updates == 5 and hooks.aux_calls == 5 * 2 * 2
    assert hooks.w.item() > 1.0  # moved towards the aux loss's minimum at 3
    assert all(u["mean_bonus"] == pytest.approx(0.5) for u in res.updates)


def test_true_count_bonus_counts_every_arrival():
    env = GW.GridVectorEnv(4, CORRIDOR, max_steps=20)
    hooks = AG.TabularCountBonus(env.cell_index, 21, scale=1.0)
    AG.train_ppo(env, AG.PPOConfig(num_envs=4, num_steps=8, total_steps=64), hooks=hooks, seed=0)
    assert hooks.counts.sum() == 64 and hooks.counts[env.cell_index(np.array([1, 0]))] == 0


@pytest.mark.parametrize("share_torso", [True, False])
def test_svd_hooks_train_the_representation_and_pay_a_bonus(share_torso):
    env = GW.GridVectorEnv(8, GW.MULTIROOM_LAYOUT, max_steps=50)
    cfg = AG.PPOConfig(num_envs=8, num_steps=16, total_steps=8 * 16 * 3, hidden=32)
    obs_dim, encode = AG.space_encoder(env.single_observation_space)
    torch.manual_seed(0)
    explorer = V.SVDExplorer(
        obs_dim, 8, torso_dim=32 if share_torso else None, hidden=32, buffer_size=1000, batch_size=64, bonus_scale=0.1
    )
    head_before = explorer.f_head.weight.detach().clone()
    hooks = AG.SVDBonusHooks(explorer, share_torso=share_torso, extra_steps=2)
    agent, res = AG.train_ppo(env, cfg, hooks=hooks, seed=0)
    assert explorer.total == 384 and explorer.refreshed
    assert not torch.allclose(explorer.f_head.weight, head_before)
    assert res.updates[0]["aux_loss"] != 0.0
    torso = agent.torso if share_torso else None
    bonus = explorer.intrinsic_reward(encode(np.array([[1, 1], [9, 3]])), torso)
    assert (bonus > 0).all() and (bonus <= 0.1).all()
