"""A vectorised PPO agent, cleanrl-grade, with hooks for an intrinsic bonus and an auxiliary representation loss.

Clipped PPO (Schulman et al. 2017) written linearly in the cleanrl style (``ppo.py``): rollout of
``num_steps`` steps in ``num_envs`` environments, GAE, then ``epochs`` passes of ``minibatches``
minibatches, with cleanrl's options: advantage normalisation per minibatch, value clipping
(``clip_vloss``), early stop of the epochs when the approximate KL exceeds ``target_kl``, and its
diagnostics (``approx_kl``, ``old_approx_kl``, ``clipfrac``, ``explained_variance``, ``sps``). Actor and
critic have separate bodies unless ``shared_body``: with cleanrl's CartPole-v1 defaults a shared body
reaches returns of ~65-70 at 100k steps where separate networks reach 200-500.

Observations become flat features (:func:`foresight.rl.encoders.space_encoder`) read by a body
(:func:`foresight.rl.encoders.make_body`): an MLP, MiniGrid's small CNN (image + direction) or the Nature
CNN on 84x84x4 Atari frames.

Environments: any gymnasium ``VectorEnv`` with same-step autoreset (``autoreset_mode=SAME_STEP``:
``gymnasium.vector.SyncVectorEnv`` / ``AsyncVectorEnv`` of ``gymnasium.make``, ``gymnasium.make_vec`` with
``vector_kwargs={"autoreset_mode": ...}``, or :class:`foresight.rl.gridworlds.GridVectorEnv`). Where an episode
ends, the true last observation comes from ``info["final_obs"]`` (an object array in gymnasium's own vector
envs, :func:`final_observations`); truncated episodes are bootstrapped with ``γ·V(final obs)``
(``bootstrap_truncated``), terminated ones are not.

Exploration methods plug in through :class:`ExplorationHooks`:

- ``intrinsic_reward(step, agent)`` -> ``[E]`` bonus for each transition;
- ``rollout_reward(rollout, agent)`` -> ``[T, E]`` bonus (or None) computed once the whole rollout is
  collected and before GAE, for methods whose bonus for step t depends on other steps of the
  sequence (BYOL-Explore's multi-step world-model losses) or on rollout-wide statistics (RND);
- ``observe(step)`` sees every transition (replay buffers, visit counters);
- ``aux_loss(agent)`` -> a scalar added, times ``aux_coef``, to every PPO minibatch loss; its
  parameters (``hooks.parameters()``) join the agent's optimiser, and it may use ``agent.torso``;
- ``after_update(agent)`` runs once after each PPO update (extra training, target networks, ...).

How the bonus enters: by default (one value head, episodic returns, as in count-bonus baselines) the
reward is ``r + int_coef · bonus``. Hooks with ``intrinsic_value_head = True`` (RND) get a second value head
and a separate, non-episodic return at discount ``hooks.int_gamma``; the advantage is
``hooks.ext_coef · A_ext + int_coef · A_int`` (cleanrl ``ppo_rnd_envpool.py``).

Axis legend: T rollout steps, E environments, O observation features, A actions, N = T·E.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from foresight.core.config import Config
from foresight.rl.encoders import ENCODERS, layer_init, make_body, space_encoder
from foresight.rl.mdp import check_discount


# ------------------------------------------------------------------------------------------------
# observations
# ------------------------------------------------------------------------------------------------
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


def final_observations(raw_next: Any, info: dict[str, Any]) -> Any:
    """The true o_{t+1} of every environment after a same-step-autoreset step: ``raw_next`` where the
    episode goes on, the episode's last observation (``info["final_obs"]``) where it ended.

    gymnasium's vector envs give ``final_obs`` as an object array (one observation or None per env);
    :class:`~foresight.rl.gridworlds.GridVectorEnv` gives a stacked array; ``Dict`` observations (MiniGrid)
    come back as a dict of per-key batches. ``raw_next`` is not modified.
    """
    if "final_obs" not in info:
        return raw_next
    idx = np.flatnonzero(np.asarray(info["_final_obs"], dtype=bool))
    final = info["final_obs"]

    def row(i: int) -> Any:
        if isinstance(final, dict):
            return {k: v[i] for k, v in final.items()}
        return final[i]

    if isinstance(raw_next, dict):
        out = {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else list(v) for k, v in raw_next.items()}
        for i in idx:
            last = row(i)
            for k in out:
                out[k][i] = last[k]
        return out
    out = np.array(raw_next, copy=True)
    if isinstance(final, np.ndarray) and final.dtype != object:
        out[idx] = final[idx]
    else:
        for i in idx:
            out[i] = row(i)
    return out


# ------------------------------------------------------------------------------------------------
# config and network
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PPOConfig(Config):
    """PPO settings. The defaults are this repository's gridworld settings (the exploration experiments);
    :meth:`cleanrl_cartpole`, :meth:`minigrid` and :meth:`atari` are the published ones."""

    num_envs: int = 16  # parallel environments
    num_steps: int = 64  # rollout length per environment and update
    total_steps: int = 50_000  # environment steps (all environments together)
    lr: float = 1e-3  # Adam, eps 1e-5 (cleanrl)
    anneal_lr: bool = True  # linear decay to 0 over training (cleanrl default)
    gamma: float = 0.99
    gae_lambda: float = 0.95
    epochs: int = 4  # passes over each rollout
    minibatches: int = 4  # per pass
    norm_adv: bool = True  # normalise advantages per minibatch (cleanrl default)
    clip: float = 0.2  # ε of the clipped surrogate
    clip_vloss: bool = False  # clip the value update to ±clip around the rollout's values (cleanrl: True)
    target_kl: float | None = None  # stop the epochs once the approximate KL exceeds this (cleanrl: None)
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 64  # MLP / MiniGrid body width (the Atari body is 512)
    shared_body: bool = False  # one body for actor and critic (default: two separate networks)
    encoder: str = "auto"  # observation body: auto, mlp, minigrid, atari (foresight.rl.encoders)
    bootstrap_truncated: bool = True  # add γ·V(final obs) to the reward of truncated (not terminated) episodes
    int_coef: float = 1.0  # weight of the hooks' intrinsic reward (of A_int with an intrinsic value head)
    aux_coef: float = 1.0  # weight of the hooks' auxiliary loss

    choices: ClassVar[dict[str, tuple]] = {"encoder": ENCODERS}

    @classmethod
    def cleanrl_cartpole(cls, total_steps: int = 100_000) -> PPOConfig:
        """cleanrl ``ppo.py``'s defaults (CartPole-v1; its own default budget is 500k steps)."""
        return cls(
            num_envs=4,
            num_steps=128,
            total_steps=total_steps,
            lr=2.5e-4,
            epochs=4,
            minibatches=4,
            clip=0.2,
            clip_vloss=True,
            ent_coef=0.01,
            vf_coef=0.5,
            max_grad_norm=0.5,
            hidden=64,
            encoder="mlp",
        )

    @classmethod
    def minigrid(cls, total_steps: int = 500_000) -> PPOConfig:
        """rl-starter-files' PPO on MiniGrid: 16 envs x 128 steps, lr 1e-3, batches of 256, 4 epochs."""
        return cls(
            num_envs=16,
            num_steps=128,
            total_steps=total_steps,
            lr=1e-3,
            minibatches=8,
            clip_vloss=True,
            encoder="minigrid",
        )

    @classmethod
    def atari(cls, total_steps: int = 10_000_000) -> PPOConfig:
        """cleanrl ``ppo_atari.py``: 8 envs x 128 steps, lr 2.5e-4, clip 0.1, one Nature CNN for both heads."""
        return cls(
            num_envs=8,
            num_steps=128,
            total_steps=total_steps,
            lr=2.5e-4,
            clip=0.1,
            clip_vloss=True,
            shared_body=True,
            encoder="atari",
        )

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
        if self.target_kl is not None and self.target_kl <= 0:
            raise ValueError(f"target_kl must be > 0 or None, got {self.target_kl}")


@dataclass
class ActorCriticOutput:
    logits: Tensor  # [N, A]
    value: Tensor  # [N] (extrinsic) value
    features: Tensor  # [N, F] the actor body's output (what auxiliary losses shape)
    int_value: Tensor | None = None  # [N] intrinsic value, with an intrinsic value head


class ActorCritic(nn.Module):
    """Actor and critic bodies (separate by default, cleanrl ``ppo.py``), a policy head and a value head
    (plus an intrinsic value head for RND-style bonuses).

    ``torso`` is the actor's body: auxiliary representation losses (SVD) shape it.
    """

    def __init__(
        self,
        space: gym.Space,
        num_actions: int,
        hidden: int = 64,
        *,
        encoder: str = "auto",
        shared_body: bool = False,
        int_value_head: bool = False,
    ) -> None:
        super().__init__()
        self.torso = make_body(space, encoder, hidden)
        self.critic_body = None if shared_body else make_body(space, encoder, hidden)
        width = self.torso.out_dim
        self.policy = layer_init(nn.Linear(width, num_actions), std=0.01)
        self.value = layer_init(nn.Linear(width, 1), std=1.0)
        self.int_value = layer_init(nn.Linear(width, 1), std=1.0) if int_value_head else None

    def critic(self, obs: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(value [N], int_value [N] or None)`` without the policy."""
        h = self.torso(obs) if self.critic_body is None else self.critic_body(obs)
        return self.value(h).squeeze(-1), None if self.int_value is None else self.int_value(h).squeeze(-1)

    def forward(self, obs: Tensor) -> ActorCriticOutput:
        h = self.torso(obs)  # [N, F]
        hv = h if self.critic_body is None else self.critic_body(obs)
        int_value = None if self.int_value is None else self.int_value(hv).squeeze(-1)
        return ActorCriticOutput(self.policy(h), self.value(hv).squeeze(-1), h, int_value)


# ------------------------------------------------------------------------------------------------
# hooks
# ------------------------------------------------------------------------------------------------
@dataclass
class StepBatch:
    """One vectorised environment step, as exploration hooks see it."""

    obs: Tensor  # [E, O] features of o_t
    actions: Tensor  # [E]
    next_obs: Tensor  # [E, O] features of o_{t+1} (the true last observation where an episode ended)
    raw_next_obs: Any  # [E, ...] the same, as the environment returned it (a dict of batches for Dict spaces)
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
    """No exploration: zero bonus, no auxiliary loss. Subclass and override what you need.

    Class attributes: ``intrinsic_value_head`` (False: the bonus is added to the reward; True: it gets its own
    value head and non-episodic return at discount ``int_gamma``, and advantages are
    ``ext_coef · A_ext + int_coef · A_int``).
    """

    intrinsic_value_head: bool = False
    int_gamma: float = 0.99
    ext_coef: float = 1.0

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


class ObservationCountBonus(ExplorationHooks):
    """``scale / sqrt(n(o') + 1)`` counting exact observations (their feature vectors) in a dictionary.

    The count bonus for any finite-looking observation space, e.g. MiniGrid's egocentric view + direction
    (a count of what the agent sees, not of its hidden position).
    """

    def __init__(self, scale: float = 0.1) -> None:
        super().__init__()
        self.scale = scale
        self.counts: dict[bytes, int] = {}

    @staticmethod
    def _keys(next_obs: Tensor) -> list[bytes]:
        return [row.tobytes() for row in next_obs.numpy()]

    def intrinsic_reward(self, step: StepBatch, agent: ActorCritic) -> Tensor:
        n = np.array([self.counts.get(k, 0) for k in self._keys(step.next_obs)], dtype=float)
        return torch.as_tensor(self.scale / np.sqrt(n + 1.0), dtype=torch.float32)

    def observe(self, step: StepBatch) -> None:
        for k in self._keys(step.next_obs):
            self.counts[k] = self.counts.get(k, 0) + 1


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


def explained_variance(y_pred: Tensor, y_true: Tensor) -> float:
    """``1 − Var(y_true − y_pred) / Var(y_true)`` (cleanrl), NaN when ``y_true`` is constant."""
    var_y = float(y_true.var(unbiased=False))
    return float("nan") if var_y == 0 else 1.0 - float((y_true - y_pred).var(unbiased=False)) / var_y


@dataclass
class PPOResult:
    """What a PPO run measured."""

    env_steps: int
    wall_seconds: float
    steps_per_second: float  # environment steps per wall-clock second, learning included
    episode_returns: list[float]  # extrinsic, in completion order
    episode_successes: list[bool]
    episode_end_steps: list[int]  # env step count at which each episode ended
    updates: list[dict[str, float]]  # per-update diagnostics (cleanrl's, see train_ppo)


def _episode_return(info: dict[str, Any], i: int, accumulated: float) -> float:
    """The unwrapped return of env i's finished episode where ``RecordEpisodeStatistics`` saw it (rewards
    clipped by a later wrapper, e.g. Atari's sign clipping), else the sum of the rewards train_ppo saw."""
    final_info = info.get("final_info")
    if isinstance(final_info, dict) and "episode" in final_info and final_info.get("_episode", [False] * (i + 1))[i]:
        return float(final_info["episode"]["r"][i])
    return accumulated


def train_ppo(
    envs: gym.vector.VectorEnv,
    cfg: PPOConfig,
    *,
    hooks: ExplorationHooks | None = None,
    seed: int = 0,
    on_step: Callable[[StepBatch], None] | None = None,
    progress: Callable[[Iterator[int]], Iterator[int]] | None = None,
) -> tuple[ActorCritic, PPOResult]:
    """Train a PPO agent on ``envs`` (``envs.num_envs`` must equal ``cfg.num_envs``; same-step autoreset).

    ``on_step`` sees every :class:`StepBatch` (e.g. for coverage metrics); ``progress`` wraps the
    update loop (e.g. ``run.progress``). The torch global RNG drives action sampling, ``seed`` the
    environments and the init (via ``torch.manual_seed``).

    Per update, ``result.updates`` logs cleanrl's diagnostics: ``policy_loss``, ``value_loss``,
    ``entropy``, ``old_approx_kl`` (mean −log r), ``approx_kl`` (mean (r − 1) − log r, Schulman's k3),
    ``clipfrac`` (means over the minibatches run), ``explained_variance`` (of the rollout's returns by its
    values), ``sps`` (env steps per second so far), ``lr``, ``epochs_run`` (< epochs after a ``target_kl``
    stop), ``aux_loss``, ``mean_bonus``, and ``int_value_loss`` with an intrinsic value head.
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
    if not isinstance(envs.single_action_space, gym.spaces.Discrete):
        raise ValueError(f"train_ppo needs a Discrete action space, got {envs.single_action_space!r}")
    torch.manual_seed(seed)
    hooks = hooks if hooks is not None else ExplorationHooks()
    two_heads = bool(hooks.intrinsic_value_head)
    space = envs.single_observation_space
    obs_dim, encode = space_encoder(space)
    num_actions = int(envs.single_action_space.n)
    agent = ActorCritic(
        space, num_actions, cfg.hidden, encoder=cfg.encoder, shared_body=cfg.shared_body, int_value_head=two_heads
    )
    agent_params = list(agent.parameters())
    hook_params = [p for p in hooks.parameters() if p.requires_grad and all(p is not q for q in agent_params)]
    opt = torch.optim.Adam(agent_params + hook_params, lr=cfg.lr, eps=1e-5)
    T, E = cfg.num_steps, cfg.num_envs
    num_updates = max(1, cfg.total_steps // (T * E))
    batch, mb_size = T * E, T * E // cfg.minibatches

    obs_buf = torch.zeros(T, E, obs_dim)
    act_buf = torch.zeros(T, E, dtype=torch.long)
    logp_buf = torch.zeros(T, E)
    ext_buf = torch.zeros(T, E)  # extrinsic rewards (what rollout_reward sees)
    boot_buf = torch.zeros(T, E)  # γ·V(final obs) of truncated episodes, added to the extrinsic reward
    int_buf = torch.zeros(T, E)  # intrinsic bonus
    next_buf = torch.zeros(T, E, obs_dim)  # true o_{t+1}, for rollout_reward
    done_buf = torch.zeros(T, E)
    val_buf = torch.zeros(T, E)
    int_val_buf = torch.zeros(T, E)

    raw, _ = envs.reset(seed=seed)
    x = encode(raw)
    ep_ret = np.zeros(E)
    result = PPOResult(0, 0.0, 0.0, [], [], [], [])
    t0 = time.time()
    updates: Iterator[int] = iter(range(num_updates))
    if progress is not None:
        updates = progress(updates)
    for update in updates:
        lr = cfg.lr * (1.0 - update / num_updates) if cfg.anneal_lr else cfg.lr
        opt.param_groups[0]["lr"] = lr
        boot_buf.zero_()
        for t in range(T):
            with torch.no_grad():
                out = agent(x)
                # sampling by hand: torch.distributions.Categorical's argument checks cost more than the net
                logp_all = torch.log_softmax(out.logits, -1)  # [E, A]
                a = torch.multinomial(logp_all.exp(), 1)[:, 0]
            raw_next, r, term, trunc, info = envs.step(a.numpy())
            term, trunc = np.asarray(term, dtype=bool), np.asarray(trunc, dtype=bool)
            done = term | trunc
            true_next = final_observations(raw_next, info)
            step = StepBatch(x, a, encode(true_next), true_next, torch.as_tensor(done), info)
            next_buf[t] = step.next_obs
            cut = np.flatnonzero(trunc & ~term)
            if cfg.bootstrap_truncated and len(cut):  # the episode would have gone on: bootstrap from V(o_T)
                with torch.no_grad():
                    boot_buf[t, cut] = cfg.gamma * agent.critic(step.next_obs[cut])[0]
            int_buf[t] = hooks.intrinsic_reward(step, agent)
            hooks.observe(step)
            if on_step is not None:
                on_step(step)
            obs_buf[t], act_buf[t], val_buf[t] = x, a, out.value
            if two_heads:
                int_val_buf[t] = out.int_value
            logp_buf[t] = logp_all.gather(1, a[:, None])[:, 0]
            ext_buf[t] = torch.as_tensor(r, dtype=torch.float32)
            done_buf[t] = torch.as_tensor(done, dtype=torch.float32)
            ep_ret += r
            result.env_steps += E
            for i in np.flatnonzero(done):
                result.episode_returns.append(_episode_return(info, i, float(ep_ret[i])))
                result.episode_successes.append(bool(info.get("success", term)[i]))
                result.episode_end_steps.append(result.env_steps)
                ep_ret[i] = 0.0
            x = encode(raw_next)

        seq_bonus = hooks.rollout_reward(Rollout(obs_buf, act_buf, next_buf, done_buf.bool(), ext_buf), agent)
        if seq_bonus is not None:
            if seq_bonus.shape != (T, E):
                raise ValueError(f"rollout_reward must return shape {(T, E)}, got {tuple(seq_bonus.shape)}")
            int_buf += seq_bonus.detach()
        with torch.no_grad():
            next_value, next_int_value = agent.critic(x)
        if two_heads:  # cleanrl ppo_rnd_envpool: extrinsic episodic, intrinsic non-episodic, advantages mixed
            ext_adv, ret = compute_gae(ext_buf + boot_buf, val_buf, done_buf, next_value, cfg.gamma, cfg.gae_lambda)
            no_ends = torch.zeros_like(done_buf)
            int_adv, int_ret = compute_gae(
                int_buf, int_val_buf, no_ends, next_int_value, hooks.int_gamma, cfg.gae_lambda
            )
            adv = hooks.ext_coef * ext_adv + cfg.int_coef * int_adv
        else:
            rew = ext_buf + boot_buf + cfg.int_coef * int_buf
            adv, ret = compute_gae(rew, val_buf, done_buf, next_value, cfg.gamma, cfg.gae_lambda)
            int_ret = torch.zeros_like(ret)
        b_obs, b_act, b_logp = obs_buf.reshape(batch, -1), act_buf.reshape(batch), logp_buf.reshape(batch)
        b_adv, b_ret, b_val = adv.reshape(batch), ret.reshape(batch), val_buf.reshape(batch)
        b_int_ret = int_ret.reshape(batch)
        sums = dict.fromkeys(
            ("policy_loss", "value_loss", "entropy", "old_approx_kl", "approx_kl", "clipfrac", "aux_loss"), 0.0
        )
        if two_heads:
            sums["int_value_loss"] = 0.0
        n_mb, epochs_run = 0, 0
        for _ in range(cfg.epochs):
            perm = torch.randperm(batch)
            for start in range(0, batch, mb_size):
                mb = perm[start : start + mb_size]
                out = agent(b_obs[mb])
                logp_all = torch.log_softmax(out.logits, -1)  # [mb, A]
                logratio = logp_all.gather(1, b_act[mb][:, None])[:, 0] - b_logp[mb]
                ratio = logratio.exp()
                with torch.no_grad():
                    old_approx_kl = (-logratio).mean()
                    approx_kl = ((ratio - 1) - logratio).mean()
                    sums["clipfrac"] += ((ratio - 1).abs() > cfg.clip).float().mean().item()
                mb_adv = b_adv[mb]
                if cfg.norm_adv:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss1 = -mb_adv * ratio
                pg_loss2 = -mb_adv * ratio.clamp(1 - cfg.clip, 1 + cfg.clip)
                pg_loss = torch.max(pg_loss1, pg_loss2).mean()
                v_loss_unclipped = (out.value - b_ret[mb]).pow(2)
                if cfg.clip_vloss:
                    v_clipped = b_val[mb] + (out.value - b_val[mb]).clamp(-cfg.clip, cfg.clip)
                    v_loss = 0.5 * torch.max(v_loss_unclipped, (v_clipped - b_ret[mb]).pow(2)).mean()
                else:
                    v_loss = 0.5 * v_loss_unclipped.mean()
                if two_heads:  # the intrinsic head is never clipped (cleanrl ppo_rnd_envpool)
                    int_v_loss = 0.5 * (out.int_value - b_int_ret[mb]).pow(2).mean()
                    sums["int_value_loss"] += int_v_loss.item()
                    v_loss_total = v_loss + int_v_loss
                else:
                    v_loss_total = v_loss
                entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
                loss = pg_loss + cfg.vf_coef * v_loss_total - cfg.ent_coef * entropy
                aux = hooks.aux_loss(agent)
                if aux is not None:
                    loss = loss + cfg.aux_coef * aux
                    sums["aux_loss"] += aux.item()
                opt.zero_grad()
                loss.backward()
                # clip the agent's and the hooks' gradients separately: an auxiliary loss with a larger
                # scale would otherwise dominate the global norm and shrink the policy's steps
                nn.utils.clip_grad_norm_(agent_params, cfg.max_grad_norm)
                if hook_params:
                    nn.utils.clip_grad_norm_(hook_params, cfg.max_grad_norm)
                opt.step()
                sums["policy_loss"] += pg_loss.item()
                sums["value_loss"] += v_loss.item()
                sums["entropy"] += entropy.item()
                sums["old_approx_kl"] += old_approx_kl.item()
                sums["approx_kl"] += approx_kl.item()
                n_mb += 1
            epochs_run += 1
            # cleanrl: the epoch's last minibatch decides
            if cfg.target_kl is not None and approx_kl.item() > cfg.target_kl:
                break
        hooks.after_update(agent)
        stats: dict[str, float] = {k: v / n_mb for k, v in sums.items()}
        stats.update(
            explained_variance=explained_variance(b_val, b_ret),
            update=update,
            env_steps=result.env_steps,
            sps=result.env_steps / max(time.time() - t0, 1e-9),
            lr=lr,
            epochs_run=epochs_run,
            mean_bonus=float(int_buf.mean()),
        )
        result.updates.append(stats)

    result.wall_seconds = time.time() - t0
    result.steps_per_second = result.env_steps / max(result.wall_seconds, 1e-9)
    return agent, result


__all__ = [
    "ActorCritic",
    "ActorCriticOutput",
    "ExplorationHooks",
    "ObservationCountBonus",
    "PPOConfig",
    "PPOResult",
    "Rollout",
    "SVDBonusHooks",
    "StepBatch",
    "TabularCountBonus",
    "compute_gae",
    "explained_variance",
    "final_observations",
    "layer_init",
    "space_encoder",
    "train_ppo",
    "uniform_space_sampler",
]
