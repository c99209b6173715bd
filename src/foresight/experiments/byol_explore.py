"""BYOL-Explore (Guo et al., NeurIPS 2022) at toy scale: does its intrinsic reward make PPO explore?

Claim tested: on a sparse-reward hard-exploration gridworld, PPO with BYOL-Explore's intrinsic reward
reaches the goal and covers the state space where plain PPO, with the same environment-step budget
and the same seeds, does not. The gridworld is :data:`foresight.rl.gridworlds.MULTIROOM_LAYOUT`
(four 5x5 rooms in a chain, 103 free cells, goal in the last room, episodes of at most 200 steps;
reward ``1 − 0.9·t/200`` on reaching the goal, else 0), observed as one-hot (row, col).

Arms (same PPO, same seeds, same budget): ``ppo`` (no bonus), ``byol`` (PPO + BYOL-Explore,
:class:`foresight.rl.byol_explore.BYOLExploreHooks`) and, as a reference, ``count`` (the exact
visit-count bonus β/sqrt(n+1) of the svd-representations experiment). Each (arm, seed) unit is
checkpointed as soon as it finishes; ``--resume`` skips finished units.

Scales (one torch thread, units run one after another): ``tiny`` 3 seeds x 2,048 steps (CI, ~3 s);
``quick`` 5 seeds x 100k steps (measured 3.4 min wall on the shared 2-core dev box: ~30 s per
BYOL-Explore run, ~3 s per PPO / count run); ``full`` 10 seeds x 300k steps (estimated ~17 min at
the same speeds). The verdict rule is :data:`RULE`, fixed before the evaluation seeds were run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from foresight.core.config import Config, check_scale
from foresight.core.registry import Result, experiment
from foresight.core.report import plot_bars, plot_lines
from foresight.core.run import Run, torch_threads
from foresight.rl import agents as AG
from foresight.rl import byol_explore as BE
from foresight.rl import gridworlds as GW

ARMS = ("ppo", "byol", "count")
SEED_OFFSET = 100  # evaluation seeds 100, 101, ...: the pilots that chose the settings used seeds 0-2


@dataclass(frozen=True)
class BYOLExploreExperimentConfig(Config):
    """Defaults are the ``full`` protocol. BYOL-Explore's own settings (V-MPO, DM-HARD-8 / Atari) are
    out of reach on a CPU, so the world model and λ are this reproduction's (see ``notes``)."""

    seeds: int = 10
    arms: tuple[str, ...] = ARMS
    total_steps: int = 300_000  # environment steps per run (all environments together)
    num_envs: int = 16
    num_steps: int = 64  # PPO rollout length = the world model's training sequence length
    max_episode_steps: int = 200
    count_scale: float = 0.03  # β of the count reference arm (as in svd-representations)
    # BYOL-Explore (foresight.rl.byol_explore.BYOLExploreConfig)
    horizon: int = 8
    ema_decay: float = 0.99
    latent_dim: int = 32
    state_dim: int = 64
    mlp_hidden: int = 64
    wm_lr: float = 1e-3
    wm_updates: int = 8
    reward_indexing: str = "targeting_t1"
    int_coef: float = 0.01  # λ
    norm_decay: float = 0.99
    curve_points: int = 10  # coverage / success / return are read at this many evenly spaced step counts
    threads: int = 1  # torch threads: the nets are small and 1 thread is fastest

    choices: ClassVar[dict[str, tuple]] = {"arms": ARMS, "reward_indexing": BE.REWARD_INDEXINGS}

    @classmethod
    def preset(cls, scale: str) -> BYOLExploreExperimentConfig:
        scale = check_scale(scale)
        if scale == "tiny":
            return cls(seeds=3, total_steps=2048, num_envs=8, num_steps=32, wm_updates=2, curve_points=4)
        if scale == "quick":
            return cls(seeds=5, total_steps=100_000)
        return cls()

    def validate(self) -> None:
        for name in ("seeds", "total_steps", "num_envs", "num_steps", "max_episode_steps", "curve_points", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if "ppo" not in self.arms or "byol" not in self.arms:
            raise ValueError(f"arms must include 'ppo' and 'byol' (the claim compares them), got {self.arms}")
        if self.total_steps < self.num_envs * self.num_steps:
            raise ValueError(
                f"total_steps={self.total_steps} is less than one rollout "
                f"(num_envs*num_steps={self.num_envs * self.num_steps})"
            )
        if self.count_scale < 0:
            raise ValueError(f"count_scale must be >= 0, got {self.count_scale}")
        self.byol_config()  # validates the BYOL-Explore fields

    def byol_config(self) -> BE.BYOLExploreConfig:
        return BE.BYOLExploreConfig(
            horizon=self.horizon,
            ema_decay=self.ema_decay,
            latent_dim=self.latent_dim,
            state_dim=self.state_dim,
            mlp_hidden=self.mlp_hidden,
            lr=self.wm_lr,
            wm_updates=self.wm_updates,
            reward_indexing=self.reward_indexing,
            int_coef=self.int_coef,
            norm_decay=self.norm_decay,
        )


# ------------------------------------------------------------------------------------------------
# one (arm, seed) unit
# ------------------------------------------------------------------------------------------------
def run_arm(cfg: BYOLExploreExperimentConfig, arm: str, seed: int) -> dict[str, Any]:
    """One PPO run with the given arm; coverage, success and return curves and summaries."""
    env = GW.GridVectorEnv(cfg.num_envs, max_steps=cfg.max_episode_steps)
    H, W = env.free.shape
    ppo = AG.PPOConfig(num_envs=cfg.num_envs, num_steps=cfg.num_steps, total_steps=cfg.total_steps)
    obs_dim, _ = AG.space_encoder(env.single_observation_space)
    byol = None
    if arm == "ppo":
        hooks: AG.ExplorationHooks = AG.ExplorationHooks()
    elif arm == "count":
        hooks = AG.TabularCountBonus(env.cell_index, H * W, scale=cfg.count_scale)
    else:
        torch.manual_seed(seed + 1)  # the world model's init; train_ppo reseeds for the agent
        byol = BE.BYOLExploreHooks(obs_dim, int(env.single_action_space.n), cfg.num_envs, cfg.byol_config())
        hooks = byol
    checkpoints = np.linspace(0, cfg.total_steps, cfg.curve_points + 1)[1:]
    tracker = GW.CoverageTracker(env, checkpoints)
    _, res = AG.train_ppo(env, ppo, hooks=hooks, seed=seed, on_step=tracker)
    coverage = tracker.curve()
    succ = np.asarray(res.episode_successes, dtype=float)
    rets = np.asarray(res.episode_returns, dtype=float)
    ends = np.asarray(res.episode_end_steps)
    tail = ends > 0.8 * res.env_steps  # episodes that ended in the last 20% of the steps
    width = checkpoints[0]

    def window_mean(x: np.ndarray, b: float) -> float:
        sel = (ends <= b) & (ends > b - width)
        return float(x[sel].mean()) if sel.any() else 0.0

    free = env.num_free_cells
    out: dict[str, Any] = {
        "success_rate": float(succ.mean()) if len(succ) else 0.0,
        "final_success": float(succ[tail].mean()) if tail.any() else 0.0,
        "mean_return": float(rets.mean()) if len(rets) else 0.0,
        "final_return": float(rets[tail].mean()) if tail.any() else 0.0,
        "found_goal": bool(succ.any()),
        "first_success_step": int(ends[succ > 0][0]) if succ.any() else -1,
        "coverage": coverage[-1] / free,
        "coverage_auc": float(np.mean(coverage)) / free,
        "steps_per_second": res.steps_per_second,
        "env_steps": res.env_steps,
        "free_cells": free,
        "curve_steps": checkpoints.tolist(),
        "curve_coverage": [c / free for c in coverage],
        "curve_success": [window_mean(succ, b) for b in checkpoints],
        "curve_return": [window_mean(rets, b) for b in checkpoints],
    }
    if byol is not None:
        hist = byol.history
        out["wm_loss_first"], out["wm_loss_last"] = hist[0]["wm_loss"], hist[-1]["wm_loss"]
        out["bonus_nonzero_last"] = hist[-1]["bonus_nonzero"]
    return out


# ------------------------------------------------------------------------------------------------
# verdict
# ------------------------------------------------------------------------------------------------
RULE = (
    "paired by seed, BYOL-Explore vs plain PPO. Goal: the success rate of episodes in the last 20% of "
    "the steps rises by >= 0.1 on the mean and beats PPO's (strictly: ties, e.g. both 0, are no evidence) in "
    ">= 60% of seeds. Coverage: the coverage "
    "AUC (distinct cells visited, averaged over the curve points) is higher on the mean and in >= 60% of "
    "seeds. Reproduced if both hold, partial if one does, not reproduced if neither."
)


def verdict(byol: list[dict[str, Any]], ppo: list[dict[str, Any]]) -> tuple[str, bool, bool]:
    """``(verdict, goal_holds, coverage_holds)`` by :data:`RULE` from per-seed rows in seed order."""
    bs, ps = np.array([r["final_success"] for r in byol]), np.array([r["final_success"] for r in ppo])
    bc, pc = np.array([r["coverage_auc"] for r in byol]), np.array([r["coverage_auc"] for r in ppo])
    goal = bool(bs.mean() - ps.mean() >= 0.1 and np.mean(bs > ps) >= 0.6)
    cover = bool(bc.mean() > pc.mean() and np.mean(bc > pc) >= 0.6)
    v = "reproduced" if goal and cover else "partial" if goal or cover else "not reproduced"
    return v, goal, cover


def _mean_std(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


# ------------------------------------------------------------------------------------------------
# the experiment
# ------------------------------------------------------------------------------------------------
@experiment(
    name="byol-explore",
    system="BYOL-Explore",
    paper="Guo et al., BYOL-Explore: Exploration by Bootstrapped Prediction, NeurIPS 2022",
    claim="On a sparse-reward hard-exploration gridworld, PPO with BYOL-Explore's intrinsic reward reaches "
    "the goal and covers the state space where plain PPO with the same budget and seeds does not",
    config=BYOLExploreExperimentConfig,
)
def run(cfg: BYOLExploreExperimentConfig, run: Run) -> Result:
    with torch_threads(cfg.threads):
        return _run(cfg, run)


def _run(cfg: BYOLExploreExperimentConfig, run: Run) -> Result:
    state = run.load_checkpoint("progress") or {}
    results: dict[str, Any] = state.get("results", {})
    seeds = [run.seed * 1000 + SEED_OFFSET + i for i in range(cfg.seeds)]
    units = [
        (f"{arm}/{i}", arm, seeds[i]) for i in range(cfg.seeds) for arm in cfg.arms if f"{arm}/{i}" not in results
    ]  # units finished before a resume are kept
    for key, arm, seed in run.progress(units, desc="byol-explore", total=len(units)):
        t0 = time.time()
        res = run_arm(cfg, arm, seed)
        res["seconds"] = time.time() - t0
        results[key] = res
        run.log(unit=key, **{k: v for k, v in res.items() if isinstance(v, int | float)})
        run.save_checkpoint("progress", {"results": results})
    return _report(cfg, run, results)


def _report(cfg: BYOLExploreExperimentConfig, run: Run, results: dict[str, Any]) -> Result:
    n = cfg.seeds
    by_arm = {arm: [results[f"{arm}/{i}"] for i in range(n)] for arm in cfg.arms}
    metrics: dict[str, Any] = {}
    table: list[dict[str, Any]] = []
    cover_curves, success_curves, return_curves, bars, errs = {}, {}, {}, {}, {}
    shown = ("final_success", "success_rate", "coverage_auc")
    for arm, rows in by_arm.items():
        for what in ("success_rate", "final_success", "mean_return", "final_return", "coverage", "coverage_auc"):
            metrics[f"{arm}_{what}"], metrics[f"{arm}_{what}_std"] = _mean_std([r[what] for r in rows])
        metrics[f"{arm}_found_goal_seeds"] = int(sum(r["found_goal"] for r in rows))
        metrics[f"{arm}_steps_per_second"] = float(np.mean([r["steps_per_second"] for r in rows]))
        metrics[f"{arm}_seconds"] = float(np.sum([r["seconds"] for r in rows]))
        steps = rows[0]["curve_steps"]
        label = f"{arm} (mean of {len(rows)} seeds)"
        cover_curves[label] = (steps, np.mean([r["curve_coverage"] for r in rows], 0).tolist())
        success_curves[label] = (steps, np.mean([r["curve_success"] for r in rows], 0).tolist())
        return_curves[label] = (steps, np.mean([r["curve_return"] for r in rows], 0).tolist())
        bars[arm] = [metrics[f"{arm}_{w}"] for w in shown]
        errs[arm] = [metrics[f"{arm}_{w}_std"] for w in shown]
        table.append(
            {
                "arm": arm,
                "seeds": len(rows),
                "success (last 20%)": f"{metrics[f'{arm}_final_success']:.2f}±{metrics[f'{arm}_final_success_std']:.2f}",
                "success (all)": f"{metrics[f'{arm}_success_rate']:.2f}±{metrics[f'{arm}_success_rate_std']:.2f}",
                "return (last 20%)": f"{metrics[f'{arm}_final_return']:.3f}",
                "goal found": f"{metrics[f'{arm}_found_goal_seeds']}/{len(rows)}",
                "final coverage": f"{metrics[f'{arm}_coverage']:.2f}",
                "coverage AUC": f"{metrics[f'{arm}_coverage_auc']:.2f}±{metrics[f'{arm}_coverage_auc_std']:.2f}",
                "env steps/s": f"{metrics[f'{arm}_steps_per_second']:.0f}",
                "per-seed success (last 20%)": " ".join(f"{r['final_success']:.2f}" for r in rows),
            }
        )
    byol = by_arm["byol"]
    metrics["byol_wm_loss_first"] = float(np.mean([r["wm_loss_first"] for r in byol]))
    metrics["byol_wm_loss_last"] = float(np.mean([r["wm_loss_last"] for r in byol]))
    metrics["byol_bonus_nonzero_last"] = float(np.mean([r["bonus_nonzero_last"] for r in byol]))
    v, goal, cover = verdict(byol, by_arm["ppo"])
    metrics["goal_criterion"], metrics["coverage_criterion"] = goal, cover

    plot_lines(
        run.figure("coverage.png"),
        cover_curves,
        title="distinct cells visited (all envs, cumulative)",
        xlabel="environment steps",
        ylabel="fraction of the free cells",
    )
    plot_lines(
        run.figure("success.png"),
        success_curves,
        title="episode success rate per window",
        xlabel="environment steps",
        ylabel="success rate",
    )
    plot_lines(
        run.figure("return.png"),
        return_curves,
        title="extrinsic episode return per window",
        xlabel="environment steps",
        ylabel="mean return",
    )
    plot_bars(
        run.figure("summary.png"),
        ["success (last 20%)", "success (all)", "coverage AUC"],
        bars,
        errors=errs,
        title="four-room chain, equal env steps and seeds",
        ylabel="fraction",
    )
    figures = ["coverage.png", "success.png", "return.png", "summary.png"]

    protocol = (
        f"{n} seeds ({SEED_OFFSET}..{SEED_OFFSET + n - 1}) x arms {', '.join(cfg.arms)}; PPO with {cfg.num_envs} "
        f"envs x {cfg.num_steps} steps per update, {cfg.total_steps} env steps per run, on the four-room chain "
        f"gridworld (103 free cells, episodes of at most {cfg.max_episode_steps} steps, one-hot row/col "
        f"observations). BYOL-Explore: MLP encoder {cfg.mlp_hidden}->{cfg.latent_dim}, closed- and open-loop "
        f"GRU cells of {cfg.state_dim}, horizon K={cfg.horizon}, EMA target alpha={cfg.ema_decay}, "
        f"{cfg.wm_updates} Adam steps (lr {cfg.wm_lr}) per rollout on the rollout, reward indexing "
        f"'{cfg.reward_indexing}', normaliser beta={cfg.norm_decay}, lambda={cfg.int_coef}. Count reference: "
        f"beta/sqrt(n+1), beta={cfg.count_scale}."
    )
    notes = (
        "DM-HARD-8 / Atari with V-MPO are replaced by a small gridworld and PPO (CPU budget); the world model "
        "has its own parameters and optimiser (no sharing with the agent). Our sources leave K, the EMA rate, the "
        "sizes and the reward indexing unverified ([S]/[R]); the defaults are documented in docs/byol_explore.md and "
        "foresight.rl.byol_explore. Variants run in pilots (seeds 0-2, 100k steps, lambda=0.01 unless said; "
        "the evaluation seeds start at 100 so that they are disjoint from the pilots'): "
        "(1) wm_updates=1, sizes 128/128/64 (mlp/GRU/latent): success 0.01/0.00/0.00, world-model loss stayed "
        "near 2; (2) wm_updates=4, 128/128/64: 0.89/0.05/0.22; (3) same with lambda=0.03: 0.29/0.03/0.00; "
        "(4) wm_updates=8, 64/64/32: 0.87/0.13/0.33 (last-20% success 1.00/0.68/1.00) - chosen; "
        "(5) wm_updates=4, 64/64/32: 0.81/0.01/0.00. Plain PPO on the same pilot seeds: 0.00/0.63/0.00; "
        "count bonus: 0.96/0.96/0.94. The verdict rule was fixed before the evaluation seeds were run, then "
        "tightened once after the first evaluation run (paired goal wins strict > instead of >=: a 0 vs 0 tie "
        "is no evidence); the verdict did not change (3 of 5 seeds strictly better). "
        "The normaliser's mu is an EMA started at 0 without bias correction (as in the reference code), so "
        "early in training most steps get a positive bonus."
    )
    return Result(verdict=v, rule=RULE, metrics=metrics, table=table, figures=figures, protocol=protocol, notes=notes)
