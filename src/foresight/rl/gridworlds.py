"""Small gymnasium environments for exploration and partial observability, vectorised in numpy.

- :class:`GridVectorEnv` / :class:`GridEnv`: a sparse-reward gridworld from ASCII art. The default
  :data:`MULTIROOM_LAYOUT` is a chain of four rooms joined by one-cell doors (a MiniGrid
  MultiRoom stand-in without doors to open): the goal sits in the last room and a random walk
  rarely reaches it within the step limit. Observation: the agent's (row, col), a ``MultiDiscrete``.
- :class:`TMazeVectorEnv` / :class:`TMazeEnv`: a T-maze whose start cell shows a cue saying which
  arm holds the reward; every corridor cell looks the same, so the last observation is not enough.

Both vector classes follow ``gymnasium.vector.VectorEnv`` with same-step autoreset: the
observation returned for a finished episode is the first of the next one, and the last one of the
finished episode is in ``info["final_obs"]`` (rows where ``info["_final_obs"]`` is True). Stepping is
a few numpy array operations for all environments at once (~10⁶ env steps/s), so the agent's network,
not the environment, bounds the speed.

Axis legend: E environments, H rows, W columns.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

from foresight.rl.mdp import GRID_ACTIONS, parse_grid

# Four 5x5 rooms in a ring that is cut between the first and the last room, so the only way
# from S to G is through all four rooms (door cells are the gaps in the inner walls).
MULTIROOM_LAYOUT = """\
#############
#S....#.....#
#.....#.....#
#...........#
#.....#.....#
#.....#.....#
#######.#####
#.....#.....#
#.....#.....#
#..G..#.....#
#...........#
#.....#.....#
#############"""

_MOVES = np.array(GRID_ACTIONS, dtype=np.int64)  # [4, 2] (d_row, d_col): up, down, left, right


def parse_layout(layout: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(free [H, W] bool, starts [n, 2], goals [m, 2])`` from ASCII art (:func:`foresight.rl.mdp.parse_grid`)."""
    grid = parse_grid(layout)  # [H, W]
    free = grid != "#"
    starts, goals = np.argwhere(grid == "S"), np.argwhere(grid == "G")
    if len(starts) == 0:
        raise ValueError("layout needs at least one start cell 'S'")
    if len(goals) == 0:
        raise ValueError("layout needs at least one goal cell 'G'")
    return free, starts, goals


def _move(free: np.ndarray, pos: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """``pos [E, 2]`` moved by ``actions [E]``; moves into walls or off the grid stay put."""
    target = pos + _MOVES[actions]
    H, W = free.shape
    inside = (target[:, 0] >= 0) & (target[:, 0] < H) & (target[:, 1] >= 0) & (target[:, 1] < W)
    ok = inside.copy()
    ok[inside] = free[target[inside, 0], target[inside, 1]]
    return np.where(ok[:, None], target, pos)


def _check_actions(actions: Any, num_envs: int, num_actions: int) -> np.ndarray:
    a = np.asarray(actions, dtype=np.int64).reshape(-1)
    if a.shape != (num_envs,):
        raise ValueError(f"expected {num_envs} actions, got shape {np.shape(actions)}")
    if (a < 0).any() or (a >= num_actions).any():
        raise ValueError(f"actions must be in [0, {num_actions}), got {a[(a < 0) | (a >= num_actions)][:5]}")
    return a


class GridVectorEnv(VectorEnv):
    """``num_envs`` copies of a sparse-reward gridworld, stepped together.

    Reward on reaching a goal: ``1 - 0.9 · t / max_steps`` (MiniGrid's), then the episode
    terminates; elsewhere 0. Episodes truncate after ``max_steps``. Observation ``[E, 2]`` int64
    (row, col); ``single_observation_space = MultiDiscrete([H, W])``. ``info["success"]`` marks
    episodes that ended at a goal this step.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int, layout: str = MULTIROOM_LAYOUT, max_steps: int = 200) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.free, self.starts, self.goals = parse_layout(layout)
        self.layout, self.max_steps, self.num_envs = layout, max_steps, num_envs
        H, W = self.free.shape
        self.goal_mask = np.zeros((H, W), dtype=bool)
        self.goal_mask[self.goals[:, 0], self.goals[:, 1]] = True
        self.single_observation_space = gym.spaces.MultiDiscrete([H, W])
        self.single_action_space = gym.spaces.Discrete(len(GRID_ACTIONS))
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.pos = np.zeros((num_envs, 2), dtype=np.int64)
        self.t = np.zeros(num_envs, dtype=np.int64)
        self._np_random = np.random.default_rng()

    @property
    def num_free_cells(self) -> int:
        return int(self.free.sum())

    def cell_index(self, obs: np.ndarray) -> np.ndarray:
        """Row-major cell id ``row · W + col`` of observations ``[..., 2]``."""
        return obs[..., 0] * self.free.shape[1] + obs[..., 1]

    def _starts(self, n: int) -> np.ndarray:
        return self.starts[self._np_random.integers(len(self.starts), size=n)]

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        if seed is not None:
            self._np_random = np.random.default_rng(seed)
        self.pos = self._starts(self.num_envs).copy()
        self.t[:] = 0
        return self.pos.copy(), {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        a = _check_actions(actions, self.num_envs, self.single_action_space.n)
        self.pos = _move(self.free, self.pos, a)
        self.t += 1
        at_goal = self.goal_mask[self.pos[:, 0], self.pos[:, 1]]
        reward = np.where(at_goal, 1.0 - 0.9 * self.t / self.max_steps, 0.0).astype(np.float32)
        terminated = at_goal
        truncated = (self.t >= self.max_steps) & ~terminated
        done = terminated | truncated
        info: dict[str, Any] = {"success": terminated.copy()}
        if done.any():
            info["final_obs"] = self.pos.copy()
            info["_final_obs"] = done.copy()
            self.pos[done] = self._starts(int(done.sum()))
            self.t[done] = 0
        return self.pos.copy(), reward, terminated, truncated, info


class CoverageTracker:
    """Visit counts of every cell of a :class:`GridVectorEnv` and the number of distinct cells visited
    at given env-step counts. Pass it as ``train_ppo(..., on_step=tracker)``; it reads the true next
    observations, so the last cell of every episode counts."""

    def __init__(self, env: GridVectorEnv, checkpoints) -> None:
        self.env = env
        self.counts = np.zeros(env.free.size)  # [H * W] visits per row-major cell id
        self.checkpoints = np.asarray(checkpoints, dtype=float)  # env steps at which coverage is read
        self.coverage: list[int] = []
        self.steps = 0

    def __call__(self, step) -> None:  # step: foresight.rl.agents.StepBatch
        np.add.at(self.counts, self.env.cell_index(step.raw_next_obs), 1)
        self.steps += step.obs.shape[0]
        while len(self.coverage) < len(self.checkpoints) and self.steps >= self.checkpoints[len(self.coverage)]:
            self.coverage.append(self.visited)

    @property
    def visited(self) -> int:
        return int((self.counts > 0).sum())

    def curve(self) -> list[int]:
        """Distinct cells at every checkpoint; those past the last step taken (the step budget need not
        be a multiple of a rollout) get the final count."""
        return self.coverage + [self.visited] * (len(self.checkpoints) - len(self.coverage))


class GridEnv(gym.Env):
    """The single-environment view of :class:`GridVectorEnv` (no autoreset; call ``reset``)."""

    metadata = {"render_modes": []}

    def __init__(self, layout: str = MULTIROOM_LAYOUT, max_steps: int = 200) -> None:
        self._core = GridVectorEnv(1, layout, max_steps)
        self.observation_space = self._core.single_observation_space
        self.action_space = self._core.single_action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        obs, _ = self._core.reset(seed=seed)
        return obs[0], {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        core = self._core
        a = _check_actions([action], 1, core.single_action_space.n)
        core.pos = _move(core.free, core.pos, a)
        core.t += 1
        term = bool(core.goal_mask[core.pos[0, 0], core.pos[0, 1]])
        reward = 1.0 - 0.9 * float(core.t[0]) / core.max_steps if term else 0.0
        trunc = bool(core.t[0] >= core.max_steps) and not term
        return core.pos[0].copy(), reward, term, trunc, {"success": term}


# ------------------------------------------------------------------------------------------------
# T-maze with a cue (partially observable)
# ------------------------------------------------------------------------------------------------
# Observation symbols of the T-maze.
CUE_UP, CUE_DOWN, CORRIDOR, JUNCTION, GOAL, WRONG = range(6)
TMAZE_SYMBOLS = ("cue_up", "cue_down", "corridor", "junction", "goal", "wrong")


def tmaze_step(
    pos: np.ndarray,
    cue: np.ndarray,
    actions: np.ndarray,
    length: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One T-maze step for a batch: ``pos [E]`` in {0..length} along the corridor (``length`` is the
    junction), ``length + 1`` = upper arm end, ``length + 2`` = lower arm end (both absorbing).
    ``cue [E]`` 0 = reward up, 1 = reward down. Returns ``(new_pos, reward [E])``.
    Actions: 0 up, 1 down, 2 left, 3 right (as in :data:`foresight.rl.mdp.GRID_ACTIONS`).
    """
    up_end, down_end = length + 1, length + 2
    in_arm = pos > length
    new = pos.copy()
    new = np.where((actions == 3) & (pos < length), pos + 1, new)
    new = np.where((actions == 2) & (pos > 0) & (pos <= length), pos - 1, new)
    new = np.where((actions == 0) & (pos == length), up_end, new)
    new = np.where((actions == 1) & (pos == length), down_end, new)
    new = np.where(in_arm, pos, new)  # arm ends absorb
    entered = ~in_arm & (new > length)
    correct = ((new == up_end) & (cue == 0)) | ((new == down_end) & (cue == 1))
    reward = np.where(entered, np.where(correct, 1.0, -1.0), 0.0).astype(np.float32)
    return new, reward


def tmaze_observation(pos: np.ndarray, cue: np.ndarray, length: int) -> np.ndarray:
    """The symbol (see :data:`TMAZE_SYMBOLS`) seen at ``pos`` given the hidden ``cue`` - [E] int64."""
    up_end, down_end = length + 1, length + 2
    obs = np.full(pos.shape, CORRIDOR, dtype=np.int64)
    obs[pos == 0] = np.where(cue[pos == 0] == 0, CUE_UP, CUE_DOWN)
    obs[pos == length] = JUNCTION
    correct = ((pos == up_end) & (cue == 0)) | ((pos == down_end) & (cue == 1))
    wrong = (pos > length) & ~correct
    obs[correct] = GOAL
    obs[wrong] = WRONG
    return obs


def tmaze_trajectories(
    num: int,
    steps: int,
    length: int,
    action_probs: tuple[float, ...] = (0.15, 0.15, 0.2, 0.5),
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Roll out ``num`` T-maze episodes of ``steps`` steps under a memoryless random policy.

    Arm ends absorb (the episode's reward arrives once; later steps repeat the arm's symbol), so
    every trajectory has the same length. Returns ``obs [N, steps+1]`` symbols, ``actions
    [N, steps]``, ``pos [N, steps+1]``, ``cue [N]`` and ``alive [N, steps+1]`` (True before the arm end
    is reached, i.e. while the hidden state matters).
    """
    if length < 1 or steps < 1 or num < 1:
        raise ValueError(f"num, steps and length must be >= 1, got num={num}, steps={steps}, length={length}")
    p = np.asarray(action_probs, dtype=float)
    if p.shape != (4,) or (p < 0).any() or abs(p.sum() - 1) > 1e-9:
        raise ValueError(f"action_probs must be 4 probabilities summing to 1, got {action_probs}")
    rng = np.random.default_rng() if rng is None else rng
    cue = rng.integers(2, size=num)
    pos = np.zeros((num, steps + 1), dtype=np.int64)
    actions = rng.choice(4, size=(num, steps), p=p)
    for t in range(steps):
        pos[:, t + 1], _ = tmaze_step(pos[:, t], cue, actions[:, t], length)
    obs = np.stack([tmaze_observation(pos[:, t], cue, length) for t in range(steps + 1)], 1)
    return {"obs": obs, "actions": actions, "pos": pos, "cue": cue, "alive": pos <= length}


class TMazeVectorEnv(VectorEnv):
    """``num_envs`` T-mazes. Observation: one symbol (``Discrete(6)``); reward +1 for the cued arm,
    -1 for the other, then the episode terminates; truncation after ``max_steps``.
    ``info["cue"]`` / ``info["pos"]`` expose the hidden state for probes (not for the agent)."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int, length: int = 6, max_steps: int = 50) -> None:
        if num_envs < 1 or length < 1 or max_steps < 1:
            raise ValueError(f"num_envs, length and max_steps must be >= 1, got {num_envs}, {length}, {max_steps}")
        self.num_envs, self.length, self.max_steps = num_envs, length, max_steps
        self.single_observation_space = gym.spaces.Discrete(len(TMAZE_SYMBOLS))
        self.single_action_space = gym.spaces.Discrete(4)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._np_random = np.random.default_rng()
        self.pos = np.zeros(num_envs, dtype=np.int64)
        self.cue = np.zeros(num_envs, dtype=np.int64)
        self.t = np.zeros(num_envs, dtype=np.int64)

    def _obs(self) -> np.ndarray:
        return tmaze_observation(self.pos, self.cue, self.length)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        if seed is not None:
            self._np_random = np.random.default_rng(seed)
        self.pos[:] = 0
        self.t[:] = 0
        self.cue = self._np_random.integers(2, size=self.num_envs)
        return self._obs(), {"cue": self.cue.copy(), "pos": self.pos.copy()}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        a = _check_actions(actions, self.num_envs, 4)
        self.pos, reward = tmaze_step(self.pos, self.cue, a, self.length)
        self.t += 1
        terminated = self.pos > self.length
        truncated = (self.t >= self.max_steps) & ~terminated
        done = terminated | truncated
        obs = self._obs()
        info: dict[str, Any] = {"success": reward > 0}
        if done.any():
            info["final_obs"] = obs.copy()
            info["_final_obs"] = done.copy()
            n = int(done.sum())
            self.pos[done], self.t[done] = 0, 0
            self.cue[done] = self._np_random.integers(2, size=n)
            obs = self._obs()
        info["cue"], info["pos"] = self.cue.copy(), self.pos.copy()
        return obs, reward, terminated, truncated, info


class TMazeEnv(gym.Env):
    """The single-environment T-maze (no autoreset). ``info["cue"]`` is the hidden arm (0 up, 1 down)."""

    metadata = {"render_modes": []}

    def __init__(self, length: int = 6, max_steps: int = 50) -> None:
        self._core = TMazeVectorEnv(1, length, max_steps)
        self.observation_space = self._core.single_observation_space
        self.action_space = self._core.single_action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[int, dict]:
        super().reset(seed=seed)
        obs, info = self._core.reset(seed=seed)
        return int(obs[0]), {"cue": int(info["cue"][0])}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
        core = self._core
        a = _check_actions([action], 1, 4)
        core.pos, reward = tmaze_step(core.pos, core.cue, a, core.length)
        core.t += 1
        term = bool(core.pos[0] > core.length)
        trunc = bool(core.t[0] >= core.max_steps) and not term
        return int(core._obs()[0]), float(reward[0]), term, trunc, {"cue": int(core.cue[0])}


__all__ = [
    "CORRIDOR",
    "CUE_DOWN",
    "CUE_UP",
    "GOAL",
    "JUNCTION",
    "MULTIROOM_LAYOUT",
    "TMAZE_SYMBOLS",
    "WRONG",
    "GridEnv",
    "GridVectorEnv",
    "TMazeEnv",
    "TMazeVectorEnv",
    "parse_layout",
    "tmaze_observation",
    "tmaze_step",
    "tmaze_trajectories",
]
