"""Exploration bonuses behind one interface, and one exploration arm measured the same way for every bonus.

Every bonus is an :class:`~foresight.rl.agents.ExplorationHooks` that the same PPO
(:func:`~foresight.rl.agents.train_ppo`) takes; :func:`make_bonus_hooks` builds one by name (:data:`BONUSES`)
for any vector env (a :class:`~foresight.rl.gridworlds.GridVectorEnv`, MiniGrid, ...):

- ``"none"``: plain PPO, the baseline every bonus is compared against;
- ``"count"``: ``β / sqrt(n(s') + 1)`` from exact visit counts: of the cell on a ``GridVectorEnv``
  (:class:`~foresight.rl.agents.TabularCountBonus`, an oracle reference that knows the state), of the exact
  observation elsewhere (:class:`~foresight.rl.agents.ObservationCountBonus`);
- ``"rnd"``: Random Network Distillation (:class:`~foresight.rl.rnd.RNDHooks`), the standard baseline, with its
  own non-episodic value head;
- ``"byol"``: BYOL-Explore's world-model prediction error (:class:`~foresight.rl.byol_explore.BYOLExploreHooks`);
- ``"svd"``: the SVD pseudo-count bonus ``β / sqrt(n̂(s') + 1)`` (:class:`~foresight.rl.svd.SVDExplorer` through
  :class:`~foresight.rl.agents.SVDBonusHooks`).

:func:`run_exploration_arm` is the unit the exploration experiments (``byol-explore``, ``svd-representations``
part c) repeat over tasks, arms and seeds, on a home-made :class:`~foresight.rl.gridworlds.GridVectorEnv`
(:data:`GRID_TASK`) or a MiniGrid task (:func:`make_exploration_env`, which wraps every MiniGrid env in
:class:`MiniGridCoverage`); :func:`exploration_sweep` runs those cells as one resumable
:meth:`~foresight.core.run.Run.sweep`; :func:`exploration_verdict` is their shared verdict rule (paired bootstrap
intervals over seeds against the no-bonus control and against RND, :func:`ci_beats`) and :func:`plot_arms` their
shared figures. Every arm reports the same :class:`ArmResult`: success and return over all episodes and over the
last 20% of the steps, coverage (distinct agent cells visited over the run, as a count and as a fraction of the
grid's cells) at the end and on a curve, and the bonus's own diagnostics in ``extras`` (on MiniGrid also the
distinct cells and rooms reached per episode). The same ``seed`` gives the same environments, agent
initialisation and action samples in every arm, so arms can be compared seed by seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from foresight.core.config import Config
from foresight.core.report import plot_bars, plot_lines
from foresight.core.run import Run, derive_seed
from foresight.core.stats import Interval, mean_std, paired_ci
from foresight.rl import agents as AG
from foresight.rl import byol_explore as BE
from foresight.rl import rnd as RND
from foresight.rl import svd as V
from foresight.rl.gridworlds import CoverageTracker, GridVectorEnv

BONUSES = ("none", "count", "rnd", "byol", "svd")
FINAL_FRACTION = 0.2  # "final" success and return: episodes that ended in the last 20% of the env steps
GRID_TASK = "grid"  # the home-made four-room chain, gridworlds.MULTIROOM_LAYOUT, one-hot (row, col) observations


@dataclass(frozen=True)
class CountBonusConfig(Config):
    scale: float = 0.03  # β in β / sqrt(n + 1)

    def validate(self) -> None:
        if self.scale < 0:
            raise ValueError(f"scale must be >= 0, got {self.scale}")


@dataclass(frozen=True)
class SVDBonusConfig(Config):
    rank: int = 64  # k of the representation
    hidden: int = 128  # width of f's and g's MLPs
    scale: float = 0.03  # β in β / sqrt(n̂ + 1), as the count bonus's
    extra_steps: int = 16  # SVD steps on the representation alone after each PPO update
    lr: float = 1e-3  # Adam learning rate of those extra steps
    share_torso: bool = False  # f as a head on the agent's torso instead of its own network
    buffer_size: int = 0  # FIFO replay of transitions; 0: every transition of the run (ppo.total_steps)

    def validate(self) -> None:
        for name in ("rank", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("scale", "extra_steps", "buffer_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class ArmResult:
    """What one exploration run measured. Coverage counts distinct cells visited by any environment: free cells of
    a :class:`GridVectorEnv`; on MiniGrid, cells of the ``width x height`` grid (``num_states``)."""

    bonus: str
    env_steps: int
    success_rate: float  # over all episodes
    final_success: float  # over episodes that ended in the last 20% of the steps (0 if none did)
    mean_return: float  # extrinsic
    final_return: float
    found_goal: bool
    first_success_step: int  # env step at which the first successful episode ended; -1: never
    visited_states: int  # distinct free cells visited by the end
    num_states: int  # free cells of the grid
    coverage: float  # visited_states / num_states
    coverage_auc: float  # mean of curve_coverage
    steps_per_second: float  # env steps per wall-clock second, learning included
    curve_steps: list[float]  # env steps at which the curves are read
    curve_visited: list[int]  # distinct cells visited by then
    curve_coverage: list[float]  # curve_visited / num_states
    curve_success: list[float]  # success rate of the episodes that ended in the window before each point
    curve_return: list[float]  # mean return of the same episodes
    extras: dict[str, float] = field(default_factory=dict)  # the bonus's own diagnostics

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_means(values: np.ndarray, end_steps: np.ndarray, points: np.ndarray) -> list[float]:
    """Mean of ``values`` over the episodes that ended in ``(p - w, p]`` for each point p, ``w = points[0]``
    (evenly spaced points); 0.0 for a window in which no episode ended."""
    width = points[0]
    out = []
    for p in points:
        sel = (end_steps <= p) & (end_steps > p - width)
        out.append(float(values[sel].mean()) if sel.any() else 0.0)
    return out


# ------------------------------------------------------------------------------------------------
# MiniGrid: coverage read from the simulator (the agent sees only its egocentric 7x7 view)
# ------------------------------------------------------------------------------------------------
def _room_of(env: Any, pos: tuple[int, int]) -> Any:
    """The room holding ``pos``: its index along MultiRoom's chain, a RoomGrid room's top-left corner, or None
    (on a wall or door between rooms, or an env without rooms)."""
    x, y = pos
    if isinstance(getattr(env, "rooms", None), list) and env.rooms and hasattr(env.rooms[0], "top"):  # MultiRoom
        for i, room in enumerate(env.rooms):
            (tx, ty), (sx, sy) = room.top, room.size
            if tx < x < tx + sx - 1 and ty < y < ty + sy - 1:  # interior: walls are the room's border
                return i
        return None
    if hasattr(env, "room_from_pos"):  # RoomGrid (KeyCorridor, ObstructedMaze, ...)
        return tuple(env.room_from_pos(x, y).top)
    return None


class MiniGridCoverage(gym.Wrapper):
    """Records where the agent goes in a MiniGrid env: the distinct cells and rooms of the current episode and,
    when an episode ends, one ``(cells, rooms)`` record in :attr:`finished` (drained by
    :class:`MiniGridCoverageTracker`). ``rooms`` is the number of MultiRoom rooms reached along the chain (the
    highest room index entered + 1: the agent starts in room 0, the goal is in the last), or the number of
    distinct rooms of a RoomGrid env (KeyCorridor, ...), 0 for envs without rooms. Positions are
    ``env.unwrapped.agent_pos``, read after every step (so an episode's last cell counts, even under autoreset).
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.cells: set[tuple[int, int]] = set()  # distinct cells of the current episode
        self.rooms: set[Any] = set()
        self.all_cells: set[tuple[int, int]] = set()  # distinct cells over every episode (absolute coordinates)
        self.finished: list[tuple[int, int]] = []  # (cells, rooms) of the episodes ended since the last drain

    def _visit(self) -> None:
        core = self.env.unwrapped
        pos = (int(core.agent_pos[0]), int(core.agent_pos[1]))
        self.cells.add(pos)
        self.all_cells.add(pos)
        room = _room_of(core, pos)
        if room is not None:
            self.rooms.add(room)

    def rooms_reached(self) -> int:
        if not self.rooms:
            return 0
        return max(self.rooms) + 1 if all(isinstance(r, int) for r in self.rooms) else len(self.rooms)

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        self.cells, self.rooms = set(), set()
        self._visit()
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._visit()
        if terminated or truncated:
            self.finished.append((len(self.cells), self.rooms_reached()))
        return obs, reward, terminated, truncated, info


class MiniGridCoverageTracker:
    """:class:`~foresight.rl.gridworlds.CoverageTracker`'s interface for a ``SyncVectorEnv`` of
    :class:`MiniGridCoverage`-wrapped MiniGrid envs: distinct agent cells over the run (all envs, absolute
    coordinates; procedurally generated layouts differ between episodes, so this counts where on the grid the
    agent has been) at the checkpoints, and per episode the distinct cells and rooms reached."""

    def __init__(self, envs: gym.vector.VectorEnv, checkpoints) -> None:
        wrappers = [_coverage_wrapper(e) for e in getattr(envs, "envs", [])]
        if not wrappers or any(w is None for w in wrappers):
            raise ValueError(
                f"MiniGridCoverageTracker needs a SyncVectorEnv of MiniGridCoverage-wrapped envs "
                f"(make_exploration_env), got {type(envs).__name__}"
            )
        self.wrappers: list[MiniGridCoverage] = wrappers
        core = wrappers[0].env.unwrapped
        self.num_cells = int(core.width * core.height)
        self.checkpoints = np.asarray(checkpoints, dtype=float)
        self.coverage: list[int] = []
        self.steps = 0
        self.episode_cells: list[int] = []
        self.episode_rooms: list[int] = []
        self.episode_end_steps: list[int] = []

    def __call__(self, step) -> None:  # step: foresight.rl.agents.StepBatch
        self.steps += step.obs.shape[0]
        for w in self.wrappers:
            for cells, rooms in w.finished:
                self.episode_cells.append(cells)
                self.episode_rooms.append(rooms)
                self.episode_end_steps.append(self.steps)
            w.finished.clear()
        while len(self.coverage) < len(self.checkpoints) and self.steps >= self.checkpoints[len(self.coverage)]:
            self.coverage.append(self.visited)

    @property
    def visited(self) -> int:
        return len(set().union(*(w.all_cells for w in self.wrappers)))

    def curve(self) -> list[int]:
        return self.coverage + [self.visited] * (len(self.checkpoints) - len(self.coverage))

    def extras(self, final_after: float) -> dict[str, float]:
        """Per-episode cells and rooms: means over all episodes, over those that ended after ``final_after`` env
        steps (``final_*``, 0 if none did) and the most rooms any episode reached."""
        cells, rooms = np.asarray(self.episode_cells, float), np.asarray(self.episode_rooms, float)
        final = np.asarray(self.episode_end_steps) > final_after
        out = {
            "episode_cells": float(cells.mean()) if cells.size else 0.0,
            "episode_rooms": float(rooms.mean()) if rooms.size else 0.0,
            "final_episode_cells": float(cells[final].mean()) if final.any() else 0.0,
            "final_episode_rooms": float(rooms[final].mean()) if final.any() else 0.0,
            "max_rooms": float(rooms.max()) if rooms.size else 0.0,
        }
        return out


def _coverage_wrapper(env: gym.Env) -> MiniGridCoverage | None:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, MiniGridCoverage):
            return env
        env = env.env
    return None


def make_exploration_env(task: str, num_envs: int, *, max_steps: int | None = None) -> gym.vector.VectorEnv:
    """The vector env of an exploration task: :data:`GRID_TASK` (a :class:`GridVectorEnv`, episodes of
    ``max_steps`` or 200 steps) or a gymnasium MiniGrid id (``"MiniGrid-MultiRoom-N4-S5-v1"``, ...), as a
    same-step-autoreset ``SyncVectorEnv`` of :class:`MiniGridCoverage`-wrapped envs (``max_steps`` None: the
    env's own limit)."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if task == GRID_TASK:
        return GridVectorEnv(num_envs, max_steps=max_steps or 200)
    if not task.startswith("MiniGrid-"):
        raise ValueError(f"task {task!r} is neither {GRID_TASK!r} nor a MiniGrid id ('MiniGrid-...')")
    import minigrid  # noqa: F401  (registers the MiniGrid ids)

    kwargs = {} if max_steps is None else {"max_steps": max_steps}
    return gym.vector.SyncVectorEnv(
        [lambda: MiniGridCoverage(gym.make(task, **kwargs)) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


def make_bonus_hooks(
    bonus: str,
    env: gym.vector.VectorEnv,
    ppo: AG.PPOConfig,
    *,
    count: CountBonusConfig | None = None,
    rnd: RND.RNDConfig | None = None,
    byol: BE.BYOLExploreConfig | None = None,
    svd: SVDBonusConfig | None = None,
) -> AG.ExplorationHooks:
    """The :class:`~foresight.rl.agents.ExplorationHooks` of ``bonus`` (its settings from the matching config,
    defaults where None) for ``env``, any vector env. Builds networks: seed torch first."""
    obs_dim, _ = AG.space_encoder(env.single_observation_space)
    if bonus == "none":
        return AG.ExplorationHooks()
    if bonus == "count":
        count = count or CountBonusConfig()
        if isinstance(env, GridVectorEnv):
            return AG.TabularCountBonus(env.cell_index, env.free.size, scale=count.scale)
        return AG.ObservationCountBonus(scale=count.scale)
    if bonus == "rnd":
        return RND.RNDHooks(obs_dim, ppo.num_envs, rnd)
    if bonus == "byol":
        return BE.BYOLExploreHooks(
            obs_dim, int(env.single_action_space.n), ppo.num_envs, byol or BE.BYOLExploreConfig()
        )
    if bonus == "svd":
        svd = svd or SVDBonusConfig()
        explorer = V.SVDExplorer(
            obs_dim,
            svd.rank,
            torso_dim=ppo.hidden if svd.share_torso else None,
            hidden=svd.hidden,
            buffer_size=svd.buffer_size or ppo.total_steps,
            bonus_scale=svd.scale,
        )
        return AG.SVDBonusHooks(explorer, share_torso=svd.share_torso, extra_steps=svd.extra_steps, lr=svd.lr)
    raise ValueError(f"bonus {bonus!r} is not one of {BONUSES}")


def run_exploration_arm(
    env: gym.vector.VectorEnv,
    ppo: AG.PPOConfig,
    bonus: str,
    *,
    seed: int,
    curve_points: int = 10,
    count: CountBonusConfig | None = None,
    rnd: RND.RNDConfig | None = None,
    byol: BE.BYOLExploreConfig | None = None,
    svd: SVDBonusConfig | None = None,
) -> ArmResult:
    """Train PPO on ``env`` (a :class:`GridVectorEnv` or a :func:`make_exploration_env` MiniGrid env) for
    ``ppo.total_steps`` env steps with ``bonus`` and measure it.

    ``seed`` seeds the environments, the agent and its action samples (the same in every arm: arms pair up
    by seed) and, through the stage ``"bonus=<name>"``, the bonus's own networks. Curves are read at
    ``curve_points`` evenly spaced step counts.
    """
    if bonus not in BONUSES:
        raise ValueError(f"bonus {bonus!r} is not one of {BONUSES}")
    if curve_points < 1:
        raise ValueError(f"curve_points must be >= 1, got {curve_points}")
    torch.manual_seed(derive_seed(seed, f"bonus={bonus}"))  # the bonus's networks; train_ppo reseeds for the agent
    hooks = make_bonus_hooks(bonus, env, ppo, count=count, rnd=rnd, byol=byol, svd=svd)
    points = np.linspace(0, ppo.total_steps, curve_points + 1)[1:]
    grid = isinstance(env, GridVectorEnv)
    tracker: CoverageTracker | MiniGridCoverageTracker = (
        CoverageTracker(env, points) if grid else MiniGridCoverageTracker(env, points)
    )
    agent, res = AG.train_ppo(env, ppo, hooks=hooks, seed=seed, on_step=tracker)

    succ = np.asarray(res.episode_successes, dtype=float)
    rets = np.asarray(res.episode_returns, dtype=float)
    ends = np.asarray(res.episode_end_steps)
    final = ends > (1.0 - FINAL_FRACTION) * res.env_steps
    visited = tracker.curve()
    num_states = env.num_free_cells if grid else tracker.num_cells
    curve_coverage = [v / num_states for v in visited]
    extras: dict[str, float] = {} if grid else tracker.extras((1.0 - FINAL_FRACTION) * res.env_steps)
    if isinstance(hooks, BE.BYOLExploreHooks) and hooks.history:
        extras["wm_loss_first"] = hooks.history[0]["wm_loss"]
        extras["wm_loss_last"] = hooks.history[-1]["wm_loss"]
        extras["bonus_nonzero_last"] = hooks.history[-1]["bonus_nonzero"]
    if isinstance(hooks, RND.RNDHooks) and hooks.history:
        extras["predictor_loss_first"] = hooks.history[0]["predictor_loss"]
        extras["predictor_loss_last"] = hooks.history[-1]["predictor_loss"]
    if isinstance(hooks, AG.SVDBonusHooks) and grid:
        extras["pseudo_count_spearman"] = _pseudo_count_spearman(env, hooks, agent, tracker)
    return ArmResult(
        bonus=bonus,
        env_steps=res.env_steps,
        success_rate=float(succ.mean()) if len(succ) else 0.0,
        final_success=float(succ[final].mean()) if final.any() else 0.0,
        mean_return=float(rets.mean()) if len(rets) else 0.0,
        final_return=float(rets[final].mean()) if final.any() else 0.0,
        found_goal=bool(succ.any()),
        first_success_step=int(ends[succ > 0][0]) if succ.any() else -1,
        visited_states=tracker.visited,
        num_states=num_states,
        coverage=tracker.visited / num_states,
        coverage_auc=float(np.mean(curve_coverage)),
        steps_per_second=res.steps_per_second,
        curve_steps=points.tolist(),
        curve_visited=visited,
        curve_coverage=curve_coverage,
        curve_success=window_means(succ, ends, points),
        curve_return=window_means(rets, ends, points),
        extras=extras,
    )


SUMMARY_KEYS = ("success_rate", "final_success", "mean_return", "final_return", "coverage", "coverage_auc")


def summarize_arm(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """One arm over seeds, from its :meth:`ArmResult.to_dict` rows: ``<key>`` and ``<key>_std`` (mean and sample
    std) of each of :data:`SUMMARY_KEYS` and of ``visited_states``, ``found_goal_seeds`` (seeds that reached the
    goal at least once) and the mean ``steps_per_second``."""
    out: dict[str, float] = {}
    for key in (*SUMMARY_KEYS, "visited_states"):
        out[key], out[f"{key}_std"] = mean_std([r[key] for r in rows])
    out["found_goal_seeds"] = int(sum(r["found_goal"] for r in rows))
    out["steps_per_second"] = float(np.mean([r["steps_per_second"] for r in rows]))
    return out


def mean_curve(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """``(curve_steps, mean over seeds of the curve <key>)``, e.g. ``key="curve_coverage"``."""
    return list(rows[0]["curve_steps"]), np.mean([r[key] for r in rows], 0).tolist()


# ------------------------------------------------------------------------------------------------
# the sweep over (task, arm, seed) and the verdict rule the exploration experiments share
# ------------------------------------------------------------------------------------------------
def exploration_sweep(
    run: Run,
    name: str,
    tasks: Sequence[str],
    arms: Sequence[str],
    seeds: Sequence[int],
    run_cell: Callable[[str, str, int], dict[str, Any]],
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{task: {arm: [row of each seed, in the order of seeds]}}``: one resumable :meth:`Run.sweep` cell per
    ``task=<t>/arm=<a>/seed=<s>``, each ``run_cell(task, arm, env_seed)`` (an :meth:`ArmResult.to_dict`)
    plus ``seconds`` (wall) and ``cpu_seconds`` (this process's CPU time). ``env_seed`` is
    ``run.seed_for("seed=<s>")``: it leaves the task and arm out, so arms pair up by seed."""
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"seeds must be distinct and non-empty, got {list(seeds)}")
    cells = {f"task={t}/arm={a}/seed={s}": (t, a, s) for t in tasks for a in arms for s in seeds}

    def cell(key: str) -> dict[str, Any]:
        task, arm, s = cells[key]
        wall, cpu = time.time(), time.process_time()
        res = run_cell(task, arm, run.seed_for(f"seed={s}"))
        res["seconds"], res["cpu_seconds"] = time.time() - wall, time.process_time() - cpu
        run.log(cell=key, **{k: v for k, v in res.items() if isinstance(v, int | float)})
        return res

    results = run.sweep(name, list(cells), cell)
    return {t: {a: [results[f"task={t}/arm={a}/seed={s}"] for s in seeds] for a in arms} for t in tasks}


def ci_beats(
    a: Sequence[float], b: Sequence[float], margin: float, *, level: float = 0.95, seed: int = 0
) -> tuple[bool, Interval]:
    """Does ``a`` beat ``b`` by more than ``margin``, paired by seed? True iff the lower end of the paired
    percentile-bootstrap interval (10,000 resamples, seeded) on ``mean(a_i − b_i)`` is above ``margin``. All
    ties (both 0) give the interval [0, 0]: no evidence, even at margin 0."""
    ci = paired_ci(a, b, level, method="bootstrap", seed=seed)
    return bool(ci.low > margin), ci


@dataclass(frozen=True)
class ExplorationMargins:
    """The margins of :func:`exploration_verdict` (stated before the evaluation seeds are run)."""

    success: float = 0.1  # last-20% success: bonus − no bonus must exceed this (the lower CI end)
    rival: float = 0.0  # last-20% success: bonus − RND must exceed this
    coverage: float = 0.0  # coverage (coverage_measure): bonus − no bonus must exceed this

    def __post_init__(self) -> None:
        for name in ("success", "rival", "coverage"):
            if getattr(self, name) < 0:
                raise ValueError(f"margin {name} must be >= 0, got {getattr(self, name)}")


def exploration_rule_text(bonus: str, margins: ExplorationMargins, control: str = "none", rival: str = "rnd") -> str:
    return (
        f"paired by seed, on every task, 95% paired percentile-bootstrap intervals over the evaluation seeds: "
        f"(1) control: the last-20% success of {bonus} minus that of the no-bonus arm '{control}' has its lower "
        f"end above {margins.success}; (2) rival: {bonus} minus {rival} (last-20% success) has its lower end "
        f"above {margins.rival}; (3) coverage: {bonus} minus '{control}' in coverage (MiniGrid: distinct cells per "
        f"episode in the last 20%; grid: coverage AUC of distinct cells over the run) has its lower end above "
        f"{margins.coverage}. Reproduced if (1) and (2) hold on every task; partial if (1) or (3) holds on at "
        f"least one task (the bonus explores better than no bonus, not shown better than {rival} everywhere); "
        f"not reproduced otherwise"
    )


def exploration_verdict(
    per_task: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
    bonus: str,
    margins: ExplorationMargins = ExplorationMargins(),
    *,
    control: str = "none",
    rival: str = "rnd",
) -> tuple[str, dict[str, dict[str, Any]]]:
    """:func:`exploration_rule_text`'s rule. ``per_task[task][arm]`` maps ``"final_success"`` and
    ``"coverage"`` (:func:`coverage_measure`) to per-seed values (index i is the same seed in every arm). A missing ``rival`` arm
    fails criterion (2). Returns ``(verdict, {task: {criterion: bool, <criterion>_ci: Interval dict}})``."""
    if not per_task:
        raise ValueError("per_task is empty; need at least one task")
    details: dict[str, dict[str, Any]] = {}
    for task, arms in per_task.items():
        for arm in (bonus, control):
            if arm not in arms:
                raise ValueError(f"task {task!r} has no {arm!r} arm, got arms {sorted(arms)}")
        b, c = arms[bonus], arms[control]
        d: dict[str, Any] = {}
        ok, ci = ci_beats(b["final_success"], c["final_success"], margins.success)
        d["control"], d["control_ci"] = ok, ci.to_dict()
        if rival in arms:
            ok, ci = ci_beats(b["final_success"], arms[rival]["final_success"], margins.rival)
            d["rival"], d["rival_ci"] = ok, ci.to_dict()
        else:
            d["rival"], d["rival_ci"] = False, None
        ok, ci = ci_beats(b["coverage"], c["coverage"], margins.coverage)
        d["coverage"], d["coverage_ci"] = ok, ci.to_dict()
        details[task] = d
    if all(d["control"] and d["rival"] for d in details.values()):
        return "reproduced", details
    if any(d["control"] or d["coverage"] for d in details.values()):
        return "partial", details
    return "not reproduced", details


def coverage_measure(row: Mapping[str, Any]) -> float:
    """The coverage the rule compares: on MiniGrid the distinct cells per episode in the last 20% of the frames
    (``extras["final_episode_cells"]``: layouts change every episode, so cells over the run in absolute coordinates
    saturate for every arm), on a :class:`GridVectorEnv` the coverage AUC of distinct cells over the run."""
    return float(row["extras"].get("final_episode_cells", row["coverage_auc"]))


def per_task_numbers(
    by_task: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """:func:`exploration_sweep`'s rows reduced to what :func:`exploration_verdict` reads: ``final_success`` and
    ``coverage`` (:func:`coverage_measure`) per seed."""
    return {
        t: {
            a: {"final_success": [r["final_success"] for r in rows], "coverage": [coverage_measure(r) for r in rows]}
            for a, rows in arms.items()
        }
        for t, arms in by_task.items()
    }


CURVES = {  # name -> (ArmResult curve key, title, y label)
    "coverage": ("curve_coverage", "distinct cells visited (all envs, cumulative)", "fraction of the free cells"),
    "success": ("curve_success", "episode success rate per window", "success rate"),
    "return": ("curve_return", "extrinsic episode return per window", "mean return"),
}
BAR_LABELS = {"final_success": "success (last 20%)", "success_rate": "success (all)", "coverage_auc": "coverage AUC"}


def plot_arms(
    figure: Callable[[str], Path],
    by_arm: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    prefix: str = "",
    curves: Sequence[str] = ("coverage", "success", "return"),
    bars: Sequence[str] = ("final_success", "success_rate", "coverage_auc"),
    title: str = "equal env steps and seeds",
) -> list[str]:
    """The exploration figures of arms over seeds (``by_arm``: arm -> its :meth:`ArmResult.to_dict` rows):
    one line plot per name in ``curves`` (:data:`CURVES`, the mean over seeds) and a summary bar chart of the
    ``bars`` keys (mean ± std over seeds). ``figure(name)`` gives the path to write (``Run.figure``); files are
    ``<prefix><curve>.png`` and ``<prefix>summary.png``, returned in that order."""
    names = []
    for name in curves:
        if name not in CURVES:
            raise ValueError(f"curve {name!r} is not one of {list(CURVES)}")
        key, curve_title, ylabel = CURVES[name]
        lines = {f"{arm} (mean of {len(rows)} seeds)": mean_curve(rows, key) for arm, rows in by_arm.items()}
        plot_lines(figure(f"{prefix}{name}.png"), lines, title=curve_title, xlabel="environment steps", ylabel=ylabel)
        names.append(f"{prefix}{name}.png")
    summaries = {arm: summarize_arm(rows) for arm, rows in by_arm.items()}
    plot_bars(
        figure(f"{prefix}summary.png"),
        [BAR_LABELS.get(k, k) for k in bars],
        {arm: [s[k] for k in bars] for arm, s in summaries.items()},
        errors={arm: [s[f"{k}_std"] for k in bars] for arm, s in summaries.items()},
        title=title,
        ylabel="fraction",
    )
    return [*names, f"{prefix}summary.png"]


def _pseudo_count_spearman(
    env: GridVectorEnv, hooks: AG.SVDBonusHooks, agent: AG.ActorCritic, tracker: CoverageTracker
) -> float:
    """Spearman(n̂, n) over the visited cells: do the agent's pseudo-counts at the end rank the true counts?"""
    cells = np.argwhere(env.free)  # [S, 2] (row, col) of the free cells
    n = tracker.counts[env.cell_index(cells)]
    seen = n > 0
    if seen.sum() < 2:
        return float("nan")
    _, encode = AG.space_encoder(env.single_observation_space)
    n_hat = hooks.explorer.counts(encode(cells), agent.torso if hooks.share_torso else None)
    return V.spearman(n_hat[torch.as_tensor(seen)], n[seen])


__all__ = [
    "BONUSES",
    "GRID_TASK",
    "ExplorationMargins",
    "MiniGridCoverage",
    "MiniGridCoverageTracker",
    "ci_beats",
    "coverage_measure",
    "exploration_rule_text",
    "exploration_sweep",
    "exploration_verdict",
    "make_exploration_env",
    "per_task_numbers",
    "SUMMARY_KEYS",
    "ArmResult",
    "CountBonusConfig",
    "SVDBonusConfig",
    "make_bonus_hooks",
    "mean_curve",
    "plot_arms",
    "run_exploration_arm",
    "summarize_arm",
    "window_means",
]
