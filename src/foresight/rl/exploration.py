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

:func:`run_exploration_arm` (gridworlds) is the unit the exploration experiments (``byol-explore``,
``svd-representations`` part c) repeat over arms and seeds; :func:`paired_improvement` is their shared
verdict rule and :func:`plot_arms` their shared figures. Every arm reports the same :class:`ArmResult`: success and return over all episodes and over the last 20% of
the steps, coverage (distinct cells visited, as a count and as a fraction of the free cells) at the end and
on a curve, and the bonus's own diagnostics in ``extras``. The same ``seed`` gives the same environments,
agent initialisation and action samples in every arm, so arms can be compared seed by seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from foresight.core.config import Config
from foresight.core.report import plot_bars, plot_lines
from foresight.core.run import derive_seed
from foresight.core.stats import mean_std
from foresight.rl import agents as AG
from foresight.rl import byol_explore as BE
from foresight.rl import rnd as RND
from foresight.rl import svd as V
from foresight.rl.gridworlds import CoverageTracker, GridVectorEnv

BONUSES = ("none", "count", "rnd", "byol", "svd")
FINAL_FRACTION = 0.2  # "final" success and return: episodes that ended in the last 20% of the env steps


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
    """What one exploration run measured. Coverage counts distinct free cells visited by any environment."""

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
    env: GridVectorEnv,
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
    """Train PPO on ``env`` for ``ppo.total_steps`` env steps with ``bonus`` and measure it.

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
    tracker = CoverageTracker(env, points)
    agent, res = AG.train_ppo(env, ppo, hooks=hooks, seed=seed, on_step=tracker)

    succ = np.asarray(res.episode_successes, dtype=float)
    rets = np.asarray(res.episode_returns, dtype=float)
    ends = np.asarray(res.episode_end_steps)
    final = ends > (1.0 - FINAL_FRACTION) * res.env_steps
    visited = tracker.curve()
    num_states = env.num_free_cells
    curve_coverage = [v / num_states for v in visited]
    extras: dict[str, float] = {}
    if isinstance(hooks, BE.BYOLExploreHooks) and hooks.history:
        extras["wm_loss_first"] = hooks.history[0]["wm_loss"]
        extras["wm_loss_last"] = hooks.history[-1]["wm_loss"]
        extras["bonus_nonzero_last"] = hooks.history[-1]["bonus_nonzero"]
    if isinstance(hooks, RND.RNDHooks) and hooks.history:
        extras["predictor_loss_first"] = hooks.history[0]["predictor_loss"]
        extras["predictor_loss_last"] = hooks.history[-1]["predictor_loss"]
    if isinstance(hooks, AG.SVDBonusHooks):
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


def paired_improvement(a: Sequence[float], b: Sequence[float], min_gain: float, win_frac: float) -> bool:
    """Does arm ``a`` improve on arm ``b``, paired by seed (index i is seed i in both)? True iff the mean gain
    ``mean(a) − mean(b)`` is positive and at least ``min_gain``, and ``a`` beats ``b`` strictly (ties, e.g.
    both 0, are no evidence) in at least a ``win_frac`` share of the seeds."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"a and b must be paired non-empty 1-d sequences, got shapes {a.shape} and {b.shape}")
    if not 0.0 <= win_frac <= 1.0:
        raise ValueError(f"win_frac must be in [0, 1], got {win_frac}")
    gain = a.mean() - b.mean()
    return bool(gain > 0 and gain >= min_gain and np.mean(a > b) >= win_frac)


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
    "SUMMARY_KEYS",
    "ArmResult",
    "CountBonusConfig",
    "SVDBonusConfig",
    "make_bonus_hooks",
    "mean_curve",
    "paired_improvement",
    "plot_arms",
    "run_exploration_arm",
    "summarize_arm",
    "window_means",
]
