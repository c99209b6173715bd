"""A small vectorised PPO agent with hooks for an intrinsic bonus and an auxiliary representation loss.

Clipped PPO (Schulman et al. 2017) written linearly in the cleanrl style (``ppo.py``): rollout of
``num_steps`` steps in ``num_envs`` environments, GAE, then ``epochs`` passes of ``minibatches``
minibatches. Exploration methods plug in through :class:`ExplorationHooks`:

- ``intrinsic_reward(step, agent)`` -> ``[E]`` bonus for each transition, added to the extrinsic
  reward as ``r + int_coef · bonus`` (one value head, episodic returns - as in count-bonus baselines);
- ``observe(step)`` sees every transition (replay buffers, visit counters);
- ``aux_loss(agent)`` -> a scalar added, times ``aux_coef``, to every PPO minibatch loss; its
  parameters (``hooks.parameters()``) join the agent's optimiser, and it may use ``agent.torso``;
- ``after_update(agent)`` runs once after each PPO update (extra training, target networks, ...);
- ``rollout_reward(rollout, agent)`` -> ``[T, E]`` bonus (or None) computed once the whole rollout is
  collected and before GAE, for methods whose bonus for step t depends on other steps of the
  sequence (e.g. BYOL-Explore's multi-step world-model losses); it is added like the per-step bonus.

Written for gymnasium ``VectorEnv``s with same-step autoreset (``info["final_obs"]``), e.g.
:class:`foresight.rl.gridworlds.GridVectorEnv`. Observations go through :func:`space_encoder`.

Axis legend: T rollout steps, E environments, O observation features, N = T·E.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from foresight.core.config import Config
from foresight.rl.mdp import check_discount


# ------------------------------------------------------------------------------------------------
# observations
# ------------------------------------------------------------------------------------------------
def space_encoder(space: gym.Space) -> tuple[int, Callable[[np.ndarray], Tensor]]:
    """``(feature_dim, encode)`` for a single-env observation space; ``encode`` maps a batch ``[E, ...]``.

    ``Discrete(n)``: one-hot ``[E, n]``; ``MultiDiscrete(nvec)``: concatenated one-hots ``[E, Σ nvec]``;
    ``Box``: flattened float32.
    """
    if isinstance(space, gym.spaces.Discrete):
        n = int(space.n)
        start = int(space.start)
        return n, lambda o: nn.functional.one_hot(torch.as_tensor(np.asarray(o) - start).long(), n).float()
    if isinstance(space, gym.spaces.MultiDiscrete):
        nvec = [int(v) for v in np.asarray(space.nvec).reshape(-1)]

        def encode(o: np.ndarray) -> Tensor:
            o = torch.as_tensor(np.asarray(o)).long().reshape(-1, len(nvec))
            return torch.cat([nn.functional.one_hot(o[:, i], n) for i, n in enumerate(nvec)], -1).float()

        return sum(nvec), encode
    if isinstance(space, gym.spaces.Box):
        dim = int(np.prod(space.shape))
        return dim, lambda o: torch.as_tensor(np.asarray(o), dtype=torch.float32).reshape(-1, dim)
    raise ValueError(f"unsupported observation space {space!r}; expected Discrete, MultiDiscrete or Box")


def uniform_space_sampler(
    space: gym.Space,
    rng: np.random.Generator,
) -> tuple[Callable[[int], np.ndarray], float]:
    """``(sample, prob)``: ``sample(n)`` draws n observations uniformly from a finite space (``[n]`` for
    ``Discrete``, ``[n, len(nvec)]`` for ``MultiDiscrete``); ``prob`` is the probability of each one.

    The fixed reference measure μ of the SVD pseudo-counts: it needs only the observation space,
    not the set of states the environment can reach.
    """
    if isinstance(space, gym.spaces.Discrete):
        n_values = int(space.n)
        return (lambda n: space.start + rng.integers(n_values, size=n)), 1.0 / n_values
    if isinstance(space, gym.spaces.MultiDiscrete):
        nvec = np.asarray(space.nvec).reshape(-1)
        return (lambda n: rng.integers(nvec, size=(n, len(nvec)))), float(1.0 / np.prod(nvec.astype(float)))
    raise ValueError(f"uniform_space_sampler needs a Discrete or MultiDiscrete space, got {space!r}")


# ------------------------------------------------------------------------------------------------
# config and network
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PPOConfig(Config):
    num_envs: int = 16  # parallel environments
    num_steps: int = 64  # rollout length per environment and update
    total_steps: int = 50_000  # environment steps (all environments together)
    lr: float = 1e-3
    anneal_lr: bool = True  # linear decay to 0 over training (cleanrl default)
    gamma: float = 0.99
    gae_lambda: float = 0.95
    epochs: int = 4
    minibatches: int = 4
    clip: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 64  # torso width
    int_coef: float = 1.0  # weight of the hooks' intrinsic reward
    aux_coef: float = 1.0  # weight of the hooks' auxiliary loss

    def validate(self) -> None:
        for name in ("num_envs", "num_steps", "total_steps", "epochs", "minibatches", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if (self.num_envs * self.num_steps) % self.minibatches:
            raise ValueError(
                f"num_envs*num_steps={self.num_envs * self.num_steps} is not divisible by "
                f"minibatches={self.minibatches}"
            )
        check_discount(self.gamma, allow_one=True)
        if not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        if self.lr <= 0 or self.clip <= 0:
            raise ValueError(f"lr and clip must be > 0, got lr={self.lr}, clip={self.clip}")


def layer_init(layer: nn.Linear, std: float = 2**0.5, bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights (cleanrl ``layer_init``): std √2 for ReLU/tanh layers, 0.01 policy, 1 value."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


@dataclass
class ActorCriticOutput:
    logits: Tensor  # [N, A]
    value: Tensor  # [N]
    features: Tensor  # [N, hidden] torso output (what auxiliary losses shape)


class ActorCritic(nn.Module):
    """Shared tanh MLP torso, a policy head and a value head."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.torso = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden)), nn.Tanh(), layer_init(nn.Linear(hidden, hidden)), nn.Tanh()
        )
        self.policy = layer_init(nn.Linear(hidden, num_actions), std=0.01)
        self.value = layer_init(nn.Linear(hidden, 1), std=1.0)

    def forward(self, obs: Tensor) -> ActorCriticOutput:
        h = self.torso(obs)
        return ActorCriticOutput(self.policy(h), self.value(h).squeeze(-1), h)


# ------------------------------------------------------------------------------------------------
# hooks
# ------------------------------------------------------------------------------------------------
@dataclass
class StepBatch:
    """One vectorised environment step, as exploration hooks see it."""

    obs: Tensor  # [E, O] features of o_t
    actions: Tensor  # [E]
    next_obs: Tensor  # [E, O] features of o_{t+1} (the true last observation where an episode ended)
    raw_next_obs: np.ndarray  # [E, ...] the same, as the environment returned it
    dones: Tensor  # [E] bool, episode ended at this step
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rollout:
    """A whole rollout, as :meth:`ExplorationHooks.rollout_reward` sees it (the buffers are reused by
    the next rollout: clone what you keep)."""

    obs: Tensor  # [T, E, O] features of o_t
    actions: Tensor  # [T, E] long
    next_obs: Tensor  # [T, E, O] features of o_{t+1} (the true last observation where an episode ended)
    dones: Tensor  # [T, E] bool, episode ended at step t (obs[t + 1] starts a new one)
    rewards: Tensor  # [T, E] extrinsic rewards


class ExplorationHooks(nn.Module):
    """No exploration: zero bonus, no auxiliary loss. Subclass and override what you need."""

    def intrinsic_reward(self, step: StepBatch, agent: ActorCritic) -> Tensor:
        return torch.zeros(step.obs.shape[0])

    def observe(self, step: StepBatch) -> None:
        pass

    def aux_loss(self, agent: ActorCritic) -> Tensor | None:
        return None

    def after_update(self, agent: ActorCritic) -> None:
        """Called once after each PPO update (extra training of the hook's own models, targets, ...)."""

    def rollout_reward(self, rollout: Rollout, agent: ActorCritic) -> Tensor | None:
        """``[T, E]`` bonus for a whole rollout, added (times ``int_coef``) before GAE; None adds nothing."""
        return None


class TabularCountBonus(ExplorationHooks):
    """The oracle baseline: ``scale / sqrt(n(s') + 1)`` from exact visit counts of a hashable state key.

    ``key(raw_next_obs [E, ...]) -> [E]`` int ids in ``[0, num_keys)``.
    """

    def __init__(self, key: Callable[[np.ndarray], np.ndarray], num_keys: int, scale: float = 0.1) -> None:
        super().__init__()
        self.key, self.scale = key, scale
        self.counts = np.zeros(num_keys, dtype=np.int64)

    def intrinsic_reward(self, step: StepBatch, agent: ActorCritic) -> Tensor:
        n = self.counts[self.key(step.raw_next_obs)]
        return torch.as_tensor(self.scale / np.sqrt(n + 1.0), dtype=torch.float32)

    def observe(self, step: StepBatch) -> None:
        np.add.at(self.counts, self.key(step.raw_next_obs), 1)


class SVDBonusHooks(ExplorationHooks):
    """:class:`foresight.rl.svd.SVDExplorer` as hooks: SVD auxiliary loss on the agent's torso and the
    pseudo-count bonus read from the same representation."""

    def __init__(
        self,
        explorer: nn.Module,
        share_torso: bool = True,
        extra_steps: int = 0,
        lr: float = 1e-3,
    ) -> None:
        super().__init__()
        self.explorer, self.share_torso, self.extra_steps, self.lr = explorer, share_torso, extra_steps, lr
        self._opt: torch.optim.Optimizer | None = None

    def _torso(self, agent: ActorCritic) -> Callable[[Tensor], Tensor] | None:
        return agent.torso if self.share_torso else None

    def intrinsic_reward(self, step: StepBatch, agent: ActorCritic) -> Tensor:
        return self.explorer.intrinsic_reward(step.next_obs, self._torso(agent))

    def observe(self, step: StepBatch) -> None:
        self.explorer.observe(step.obs, step.next_obs)

    def aux_loss(self, agent: ActorCritic) -> Tensor | None:
        return self.explorer.aux_loss(self._torso(agent))

    def after_update(self, agent: ActorCritic) -> None:
        """``extra_steps`` more SVD steps on the representation alone (the counts track the replay
        faster than the PPO minibatches alone would let them)."""
        if self.extra_steps > 0 and self._opt is None:
            params = list(self.explorer.parameters())
            if self.share_torso:
                params += list(agent.torso.parameters())
            self._opt = torch.optim.Adam(params, lr=self.lr)
        for _ in range(self.extra_steps):
            loss = self.explorer.aux_loss(self._torso(agent))
            self._opt.zero_grad()
            loss.backward()
            self._opt.step()
        self.explorer.refresh(self._torso(agent))


# ------------------------------------------------------------------------------------------------
# PPO
# ------------------------------------------------------------------------------------------------
def compute_gae(
    rewards: Tensor, values: Tensor, dones: Tensor, next_value: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over a rollout.

    ``rewards, values, dones [T, E]`` where ``dones[t]`` says the episode ended *at* step t (so
    step t+1 starts a new one and nothing is bootstrapped across it); ``next_value [E]`` is the
    value of the observation after the last step. Returns ``(advantages, returns)``, each ``[T, E]``.
    """
    if rewards.shape != values.shape or rewards.shape != dones.shape or rewards.dim() != 2:
        raise ValueError(
            f"rewards, values, dones must share shape [T, E], got {tuple(rewards.shape)}, "
            f"{tuple(values.shape)}, {tuple(dones.shape)}"
        )
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        v_tp1 = next_value if t == T - 1 else values[t + 1]
        nonterminal = 1.0 - dones[t].to(rewards.dtype)
        delta_t = rewards[t] + gamma * v_tp1 * nonterminal - values[t]
        last = delta_t + gamma * lam * nonterminal * last
        adv[t] = last
    return adv, adv + values


@dataclass
class PPOResult:
    """What a PPO run measured."""

    env_steps: int
    wall_seconds: float
    steps_per_second: float  # environment steps per wall-clock second, learning included
    episode_returns: list[float]  # extrinsic, in completion order
    episode_successes: list[bool]
    episode_end_steps: list[int]  # env step count at which each episode ended
    updates: list[dict[str, float]]  # per-update diagnostics


def train_ppo(
    envs: gym.vector.VectorEnv,
    cfg: PPOConfig,
    *,
    hooks: ExplorationHooks | None = None,
    seed: int = 0,
    on_step: Callable[[StepBatch], None] | None = None,
    progress: Callable[[Iterator[int]], Iterator[int]] | None = None,
) -> tuple[ActorCritic, PPOResult]:
    """Train a PPO agent on ``envs`` (``envs.num_envs`` must equal ``cfg.num_envs``).

    ``on_step`` sees every :class:`StepBatch` (e.g. for coverage metrics); ``progress`` wraps the
    update loop (e.g. ``run.progress``). The torch global RNG drives action sampling, ``seed`` the
    environments and the init (via ``torch.manual_seed``).
    """
    if envs.num_envs != cfg.num_envs:
        raise ValueError(f"envs.num_envs={envs.num_envs} but cfg.num_envs={cfg.num_envs}")
    mode = envs.metadata.get("autoreset_mode")
    if mode not in (gym.vector.AutoresetMode.SAME_STEP, "SameStep"):
        # next-step autoreset would insert a fake (last obs -> first obs) transition after every episode
        raise ValueError(
            f"train_ppo needs same-step autoreset, got autoreset_mode={mode!r}; build the "
            "vector env with autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP"
        )
    torch.manual_seed(seed)
    hooks = hooks if hooks is not None else ExplorationHooks()
    obs_dim, encode = space_encoder(envs.single_observation_space)
    num_actions = int(envs.single_action_space.n)
    agent = ActorCritic(obs_dim, num_actions, cfg.hidden)
    agent_params = list(agent.parameters())
    hook_params = [p for p in hooks.parameters() if p.requires_grad and all(p is not q for q in agent_params)]
    opt = torch.optim.Adam(agent_params + hook_params, lr=cfg.lr, eps=1e-5)
    T, E = cfg.num_steps, cfg.num_envs
    num_updates = max(1, cfg.total_steps // (T * E))
    batch, mb_size = T * E, T * E // cfg.minibatches

    obs_buf = torch.zeros(T, E, obs_dim)
    act_buf = torch.zeros(T, E, dtype=torch.long)
    logp_buf = torch.zeros(T, E)
    rew_buf = torch.zeros(T, E)
    ext_buf = torch.zeros(T, E)  # extrinsic part of rew_buf, for rollout_reward
    next_buf = torch.zeros(T, E, obs_dim)  # true o_{t+1}, for rollout_reward
    done_buf = torch.zeros(T, E)
    val_buf = torch.zeros(T, E)

    raw, _ = envs.reset(seed=seed)
    x = encode(raw)
    ep_ret = np.zeros(E)
    result = PPOResult(0, 0.0, 0.0, [], [], [], [])
    t0 = time.time()
    updates: Iterator[int] = iter(range(num_updates))
    if progress is not None:
        updates = progress(updates)
    for update in updates:
        if cfg.anneal_lr:
            opt.param_groups[0]["lr"] = cfg.lr * (1.0 - update / num_updates)
        int_sum = 0.0
        for t in range(T):
            with torch.no_grad():
                out = agent(x)
                # sampling by hand: torch.distributions.Categorical's argument checks cost more than the net
                logp_all = torch.log_softmax(out.logits, -1)  # [E, A]
                a = torch.multinomial(logp_all.exp(), 1)[:, 0]
            raw_next, r, term, trunc, info = envs.step(a.numpy())
            done = np.logical_or(term, trunc)
            true_next = raw_next
            if "final_obs" in info:  # same-step autoreset: the episode's real last observation
                true_next = np.array(raw_next, copy=True)
                true_next[info["_final_obs"]] = np.asarray(info["final_obs"])[info["_final_obs"]]
            step = StepBatch(x, a, encode(true_next), true_next, torch.as_tensor(done), info)
            next_buf[t] = step.next_obs
            bonus = hooks.intrinsic_reward(step, agent)
            hooks.observe(step)
            if on_step is not None:
                on_step(step)
            int_sum += float(bonus.sum())
            obs_buf[t], act_buf[t], val_buf[t] = x, a, out.value
            logp_buf[t] = logp_all.gather(1, a[:, None])[:, 0]
            ext_buf[t] = torch.as_tensor(r, dtype=torch.float32)
            rew_buf[t] = ext_buf[t] + cfg.int_coef * bonus
            done_buf[t] = torch.as_tensor(done, dtype=torch.float32)
            ep_ret += r
            result.env_steps += E
            for i in np.flatnonzero(done):
                result.episode_returns.append(float(ep_ret[i]))
                result.episode_successes.append(bool(info.get("success", term)[i]))
                result.episode_end_steps.append(result.env_steps)
                ep_ret[i] = 0.0
            x = encode(raw_next)

        seq_bonus = hooks.rollout_reward(Rollout(obs_buf, act_buf, next_buf, done_buf.bool(), ext_buf), agent)
        if seq_bonus is not None:
            if seq_bonus.shape != (T, E):
                raise ValueError(f"rollout_reward must return shape {(T, E)}, got {tuple(seq_bonus.shape)}")
            rew_buf += cfg.int_coef * seq_bonus.detach()
            int_sum += float(seq_bonus.sum())
        with torch.no_grad():
            next_value = agent(x).value
        adv, ret = compute_gae(rew_buf, val_buf, done_buf, next_value, cfg.gamma, cfg.gae_lambda)
        b_obs, b_act, b_logp = obs_buf.reshape(batch, -1), act_buf.reshape(batch), logp_buf.reshape(batch)
        b_adv, b_ret = adv.reshape(batch), ret.reshape(batch)
        stats = {"pg_loss": 0.0, "v_loss": 0.0, "entropy": 0.0, "aux_loss": 0.0, "clipfrac": 0.0}
        n_mb = 0
        for _ in range(cfg.epochs):
            perm = torch.randperm(batch)
            for start in range(0, batch, mb_size):
                mb = perm[start : start + mb_size]
                out = agent(b_obs[mb])
                logp_all = torch.log_softmax(out.logits, -1)  # [mb, A]
                logratio = logp_all.gather(1, b_act[mb][:, None])[:, 0] - b_logp[mb]
                ratio = logratio.exp()
                mb_adv = b_adv[mb]
                mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss1 = -mb_adv * ratio
                pg_loss2 = -mb_adv * ratio.clamp(1 - cfg.clip, 1 + cfg.clip)
                pg_loss = torch.max(pg_loss1, pg_loss2).mean()
                v_loss = 0.5 * (out.value - b_ret[mb]).pow(2).mean()
                entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
                loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
                aux = hooks.aux_loss(agent)
                if aux is not None:
                    loss = loss + cfg.aux_coef * aux
                    stats["aux_loss"] += aux.item()
                opt.zero_grad()
                loss.backward()
                # clip the agent's and the hooks' gradients separately: an auxiliary loss with a larger
                # scale would otherwise dominate the global norm and shrink the policy's steps
                nn.utils.clip_grad_norm_(agent_params, cfg.max_grad_norm)
                if hook_params:
                    nn.utils.clip_grad_norm_(hook_params, cfg.max_grad_norm)
                opt.step()
                stats["pg_loss"] += pg_loss.item()
                stats["v_loss"] += v_loss.item()
                stats["entropy"] += entropy.item()
                stats["clipfrac"] += ((ratio - 1).abs() > cfg.clip).float().mean().item()
                n_mb += 1
        hooks.after_update(agent)
        stats = {k: v / n_mb for k, v in stats.items()}
        stats.update(update=update, env_steps=result.env_steps, mean_bonus=int_sum / (T * E))
        result.updates.append(stats)

    result.wall_seconds = time.time() - t0
    result.steps_per_second = result.env_steps / max(result.wall_seconds, 1e-9)
    return agent, result


__all__ = [
    "ActorCritic",
    "ActorCriticOutput",
    "ExplorationHooks",
    "PPOConfig",
    "PPOResult",
    "Rollout",
    "SVDBonusHooks",
    "StepBatch",
    "TabularCountBonus",
    "compute_gae",
    "layer_init",
    "space_encoder",
    "train_ppo",
    "uniform_space_sampler",
]
