"""Environments gymnasium lacks: a small continuous 2-D navigation task, and the Atari pieces it does not ship.

Everything else is created through gymnasium ids: ``gymnasium.make_vec(id, n, vector_kwargs={"autoreset_mode":
gymnasium.vector.AutoresetMode.SAME_STEP})`` or ``SyncVectorEnv`` / ``AsyncVectorEnv`` of ``gymnasium.make``,
including MiniGrid (``import minigrid`` registers ``MiniGrid-*`` ids; their ``Dict`` observations go to
:func:`foresight.rl.agents.train_ppo` as they are) and Atari (:func:`make_atari`; needs the optional ``ale-py``
and ``opencv-python-headless``).

Point navigation. The GGPI experiment's continuous stand-in for the paper's deep-RL control task: a point in the unit
square moves a fixed step in one of ``num_actions`` compass directions, with Gaussian noise, and is
clipped at the walls. The reward is paid on arrival, ``r(s') = Σ_g w_g exp(−|s' − c_g|² / 2σ²)``: one
Gaussian bump per reward location, so a task is a weight vector ``w`` over fixed locations and its
expectation under a Gaussian mixture is available in closed form (:meth:`BumpReward.expected`).

The dynamics are the pure function :func:`point_nav_step` on batches, shared by the gymnasium env and
by code that needs many transitions at once (GHM training, batched rollouts).

Axis legend: B batch, D = 2 state dimensions, G reward locations, K mixture components.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor


def compass_directions(num_actions: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Unit vectors ``[A, 2]``; action 0 points along +x (right), then counter-clockwise."""
    if num_actions < 1:
        raise ValueError(f"num_actions must be >= 1, got {num_actions}")
    angle = torch.arange(num_actions, dtype=dtype) * (2 * math.pi / num_actions)
    return torch.stack([torch.cos(angle), torch.sin(angle)], -1)


def point_nav_step(
    s: Tensor,
    a: Tensor,
    *,
    step_size: float,
    noise_std: float,
    directions: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``s' = clip(s + step_size · d_a + noise_std · ε, 0, 1)`` - [B, 2] from s [B, 2] and a [B] (long)."""
    eps = torch.randn(s.shape, generator=generator, dtype=s.dtype)
    return (s + step_size * directions.to(s.dtype)[a] + noise_std * eps).clamp(0.0, 1.0)


@dataclass(frozen=True)
class BumpReward:
    """``r(x) = Σ_g w_g exp(−|x − c_g|² / 2σ²)``. centers [G, 2], weights [G]."""

    centers: Tensor
    weights: Tensor
    width: float = 0.1

    def __post_init__(self) -> None:
        if self.centers.dim() != 2 or self.centers.shape[1] != 2:
            raise ValueError(f"centers must have shape [G, 2], got {tuple(self.centers.shape)}")
        if tuple(self.weights.shape) != (self.centers.shape[0],):
            raise ValueError(
                f"weights must have shape [G] = [{self.centers.shape[0]}], got {tuple(self.weights.shape)}"
            )
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width}")

    def __call__(self, x: Tensor) -> Tensor:
        """[...] for x [..., 2]."""
        d2 = (x[..., None, :] - self.centers.to(x.dtype)).pow(2).sum(-1)  # [..., G]
        return (self.weights.to(x.dtype) * torch.exp(-0.5 * d2 / self.width**2)).sum(-1)

    def expected(self, logits: Tensor, means: Tensor, log_stds: Tensor) -> Tensor:
        """``E_{x ~ Σ_k π_k N(μ_k, diag σ_k²)}[r(x)]`` - [...].

        Shapes: logits [..., K], means and log_stds [..., K, 2].

        Per dimension, ``∫ N(x; μ, s²) exp(−(x − c)²/2σ²) dx = σ/√(σ² + s²) · exp(−(μ − c)²/2(σ² + s²))``.
        """
        var = self.width**2 + torch.exp(2 * log_stds)[..., None, :]  # [..., K, 1, 2]
        diff2 = (means[..., None, :] - self.centers.to(means.dtype)).pow(2)  # [..., K, G, 2]
        per_dim = self.width / torch.sqrt(var) * torch.exp(-0.5 * diff2 / var)
        bumps = per_dim.prod(-1) @ self.weights.to(means.dtype)  # [..., K]
        return (logits.softmax(-1) * bumps).sum(-1)


class PointNavEnv(gym.Env):
    """A point in [0, 1]² moved by ``num_actions`` compass actions, paid a :class:`BumpReward` on arrival.

    Observation: ``Box(0, 1, (2,), float32)`` position. Action: ``Discrete(num_actions)``. The task is
    continuing (never terminates); episodes truncate after ``max_steps``. ``reset`` draws the start
    uniformly in the square unless ``options={"state": (x, y)}``.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        reward: BumpReward,
        *,
        num_actions: int = 4,
        step_size: float = 0.1,
        noise_std: float = 0.02,
        max_steps: int = 100,
    ) -> None:
        if step_size <= 0 or noise_std < 0 or max_steps < 1:
            raise ValueError(
                f"need step_size > 0, noise_std >= 0, max_steps >= 1; got step_size={step_size}, "
                f"noise_std={noise_std}, max_steps={max_steps}"
            )
        self.reward = reward
        self.directions = compass_directions(num_actions)
        self.step_size, self.noise_std, self.max_steps = step_size, noise_std, max_steps
        self.action_space = gym.spaces.Discrete(num_actions)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (2,), dtype=np.float32)
        self.state = torch.zeros(2, dtype=torch.float64)
        self.steps = 0
        self._gen = torch.Generator()

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._gen.manual_seed(int(self.np_random.integers(2**63 - 1)))
        if options and "state" in options:
            start = torch.tensor(options["state"], dtype=torch.float64)
            if start.shape != (2,) or not ((start >= 0) & (start <= 1)).all():
                raise ValueError(f"options['state'] must be a point of [0, 1]², got {options['state']}")
            self.state = start
        else:
            self.state = torch.rand(2, generator=self._gen, dtype=torch.float64)
        self.steps = 0
        return self.state.numpy().astype(np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = int(action)
        if not 0 <= a < self.action_space.n:
            raise ValueError(f"action {action} is not in [0, {self.action_space.n})")
        nxt = point_nav_step(
            self.state[None],
            torch.tensor([a]),
            step_size=self.step_size,
            noise_std=self.noise_std,
            directions=self.directions,
            generator=self._gen,
        )[0]
        self.state, self.steps = nxt, self.steps + 1
        r = float(self.reward(nxt))
        return nxt.numpy().astype(np.float32), r, False, self.steps >= self.max_steps, {}


# ------------------------------------------------------------------------------------------------
# Atari: the standard preprocessing (Mnih et al. 2015; cleanrl ppo_atari.py) from gymnasium's wrappers
# ------------------------------------------------------------------------------------------------
class FireResetEnv(gym.Wrapper):
    """Press FIRE after every reset, for games that wait for it (cleanrl / SB3 ``FireResetEnv``; gymnasium has
    no such wrapper). If FIRE ends the episode at once, reset again."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()
        if len(meanings) < 3 or meanings[1] != "FIRE":
            raise ValueError(f"FireResetEnv needs FIRE as action 1, got actions {meanings}")

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(**kwargs)
        obs, _, term, trunc, info = self.env.step(1)
        if term or trunc:
            obs, info = self.env.reset(**kwargs)
        return obs, info


def make_atari(env_id: str = "ALE/Breakout-v5", *, sticky_actions: float = 0.0, clip_rewards: bool = True) -> gym.Env:
    """One Atari env with the standard stack: no-op starts (≤ 30), frame skip 4 with max-pooling of the last two
    frames, 84x84 grey, FIRE on reset where the game needs it, episode statistics on the unclipped reward,
    sign-clipped rewards, 4 stacked frames → ``uint8 [4, 84, 84]``.

    ``sticky_actions`` is ALE's repeat-action probability (0 as in cleanrl's ``NoFrameskip-v4`` ids; Machado
    et al. 2018 recommend 0.25). Not applied: cleanrl's ``EpisodicLifeEnv`` (a lost life as an episode end).
    """
    try:
        import ale_py
    except ImportError as e:  # pragma: no cover - optional dependency
        raise ImportError("Atari needs the optional ale-py: pip install ale-py opencv-python-headless") from e
    gym.register_envs(ale_py)
    env = gym.make(env_id, frameskip=1, repeat_action_probability=sticky_actions, full_action_space=False)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True)
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = FireResetEnv(env)
    env = gym.wrappers.RecordEpisodeStatistics(env)
    if clip_rewards:
        env = gym.wrappers.TransformReward(env, lambda r: float(np.sign(r)))
    return gym.wrappers.FrameStackObservation(env, 4)


__all__ = ["BumpReward", "FireResetEnv", "PointNavEnv", "compass_directions", "make_atari", "point_nav_step"]
