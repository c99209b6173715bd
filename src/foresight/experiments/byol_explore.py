"""BYOL-Explore (Guo et al., NeurIPS 2022) at toy scale: does its intrinsic reward make PPO explore?

Claim tested: on a sparse-reward hard-exploration gridworld, PPO with BYOL-Explore's intrinsic reward
reaches the goal and covers the state space where plain PPO, with the same environment-step budget
and the same seeds, does not. The gridworld is :data:`foresight.rl.gridworlds.MULTIROOM_LAYOUT`
(four 5x5 rooms in a chain, 103 free cells, goal in the last room, episodes of at most 200 steps;
reward ``1 − 0.9·t/200`` on reaching the goal, else 0), observed as one-hot (row, col).

Arms (same PPO, same seeds, same budget; :func:`foresight.rl.exploration.run_exploration_arm`): ``none``
(plain PPO), ``byol`` (PPO + BYOL-Explore, :class:`foresight.rl.byol_explore.BYOLExploreHooks`) and, as a
reference, ``count`` (the exact visit-count bonus β/sqrt(n+1) of the svd-representations experiment). Each
(arm, seed) cell of the sweep is checkpointed as soon as it finishes; ``--resume`` skips finished cells.

Scales (one torch thread, units run one after another): ``tiny`` 3 seeds x 2,048 steps (CI, ~3 s);
``quick`` 5 seeds x 100k steps (measured 3.4 min wall on the shared 2-core dev box: ~30 s per
BYOL-Explore run, ~3 s per PPO / count run); ``full`` 10 seeds x 300k steps (estimated ~17 min at
the same speeds). The verdict rule is :data:`RULE` (:func:`verdict`), fixed before the evaluation seeds were run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from foresight.core.config import Config, check_scale
from foresight.core.registry import Result, experiment
from foresight.core.run import Run
from foresight.core.stats import paired_ci, wins_ties_losses
from foresight.rl import agents as AG
from foresight.rl import byol_explore as BE
from foresight.rl import gridworlds as GW
from foresight.rl.exploration import (
    CountBonusConfig,
    paired_improvement,
    plot_arms,
    run_exploration_arm,
    summarize_arm,
)

ARMS = ("none", "byol", "count")  # "none": plain PPO, the baseline


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
        for name in ("seeds", "total_steps", "num_envs", "num_steps", "max_episode_steps", "curve_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if "none" not in self.arms or "byol" not in self.arms:
            raise ValueError(f"arms must include 'none' and 'byol' (the claim compares them), got {self.arms}")
        if self.total_steps < self.num_envs * self.num_steps:
            raise ValueError(
                f"total_steps={self.total_steps} is less than one rollout "
                f"(num_envs*num_steps={self.num_envs * self.num_steps})"
            )
        CountBonusConfig(scale=self.count_scale)  # validates count_scale
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
# one (arm, seed) cell
# ------------------------------------------------------------------------------------------------
def run_arm(cfg: BYOLExploreExperimentConfig, arm: str, seed: int) -> dict[str, Any]:
    """One PPO run with the given arm (``seed`` is shared by the arms): coverage, success and return."""
    env = GW.GridVectorEnv(cfg.num_envs, max_steps=cfg.max_episode_steps)
    ppo = AG.PPOConfig(num_envs=cfg.num_envs, num_steps=cfg.num_steps, total_steps=cfg.total_steps)
    count = CountBonusConfig(scale=cfg.count_scale)
    res = run_exploration_arm(
        env, ppo, arm, seed=seed, curve_points=cfg.curve_points, count=count, byol=cfg.byol_config()
    )
    return res.to_dict()


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


def verdict(
    byol_final_success: Sequence[float],
    none_final_success: Sequence[float],
    byol_coverage_auc: Sequence[float],
    none_coverage_auc: Sequence[float],
) -> tuple[str, bool, bool]:
    """``(verdict, goal_holds, coverage_holds)`` by :data:`RULE` from per-seed numbers (index i: seed i)."""
    goal = paired_improvement(byol_final_success, none_final_success, min_gain=0.1, win_frac=0.6)
    cover = paired_improvement(byol_coverage_auc, none_coverage_auc, min_gain=0.0, win_frac=0.6)
    v = "reproduced" if goal and cover else "partial" if goal or cover else "not reproduced"
    return v, goal, cover


def _ci_text(metrics: dict[str, Any], key: str) -> str:
    ci, (w, t, loss) = metrics[f"paired_{key}_diff_ci95"], metrics[f"paired_{key}_wins_ties_losses"]
    return f"{ci['mean']:+.2f} [{ci['low']:+.2f}, {ci['high']:+.2f}] ({w} wins, {t} ties, {loss} losses)"


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
    threads=1,
)
def run(cfg: BYOLExploreExperimentConfig, run: Run) -> Result:
    cells = {f"arm={arm}/seed={i}": (arm, i) for i in range(cfg.seeds) for arm in cfg.arms}

    def cell(name: str) -> dict[str, Any]:
        arm, i = cells[name]
        t0 = time.time()
        res = run_arm(cfg, arm, run.seed_for(f"seed={i}"))  # the seed leaves the arm out: arms pair up by seed
        res["seconds"] = time.time() - t0
        run.log(cell=name, **{k: v for k, v in res.items() if isinstance(v, int | float)})
        return res

    results = run.sweep("arms", list(cells), cell)
    by_arm = {arm: [results[f"arm={arm}/seed={i}"] for i in range(cfg.seeds)] for arm in cfg.arms}
    return _report(cfg, run, by_arm)


def _report(cfg: BYOLExploreExperimentConfig, run: Run, by_arm: dict[str, list[dict[str, Any]]]) -> Result:
    n = cfg.seeds
    metrics: dict[str, Any] = {}
    table: list[dict[str, Any]] = []
    for arm, rows in by_arm.items():
        metrics.update({f"{arm}_{key}": v for key, v in summarize_arm(rows).items()})
        metrics[f"{arm}_seconds"] = float(np.sum([r["seconds"] for r in rows]))
        m = {key[len(arm) + 1 :]: v for key, v in metrics.items() if key.startswith(f"{arm}_")}
        table.append(
            {
                "arm": arm,
                "seeds": len(rows),
                "success (last 20%)": f"{m['final_success']:.2f}±{m['final_success_std']:.2f}",
                "success (all)": f"{m['success_rate']:.2f}±{m['success_rate_std']:.2f}",
                "return (last 20%)": f"{m['final_return']:.3f}",
                "goal found": f"{m['found_goal_seeds']}/{len(rows)}",
                "final coverage": f"{m['coverage']:.2f}",
                "coverage AUC": f"{m['coverage_auc']:.2f}±{m['coverage_auc_std']:.2f}",
                "env steps/s": f"{m['steps_per_second']:.0f}",
                "per-seed success (last 20%)": " ".join(f"{r['final_success']:.2f}" for r in rows),
            }
        )
    byol, none = by_arm["byol"], by_arm["none"]
    for key in ("wm_loss_first", "wm_loss_last", "bonus_nonzero_last"):
        metrics[f"byol_{key}"] = float(np.mean([r["extras"][key] for r in byol]))
    per_seed = {key: ([r[key] for r in byol], [r[key] for r in none]) for key in ("final_success", "coverage_auc")}
    v, goal, cover = verdict(*per_seed["final_success"], *per_seed["coverage_auc"])
    metrics["goal_criterion"], metrics["coverage_criterion"] = goal, cover
    # Not part of the rule (fixed before the evaluation seeds): how sure the paired comparison is
    for key, (b, p) in per_seed.items():
        metrics[f"paired_{key}_diff_ci95"] = paired_ci(b, p).to_dict()
        metrics[f"paired_{key}_wins_ties_losses"] = list(wins_ties_losses(b, p))

    figures = plot_arms(run.figure, by_arm, title="four-room chain, equal env steps and seeds")

    protocol = (
        f"{n} seeds (seed i derived from the run seed and 'seed=i', the same in every arm) x arms "
        f"{', '.join(cfg.arms)} ('none' = plain PPO); PPO with {cfg.num_envs} "
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
        "the evaluation seeds are derived from the run seed by hash, so they are disjoint from the pilots'): "
        "(1) wm_updates=1, sizes 128/128/64 (mlp/GRU/latent): success 0.01/0.00/0.00, world-model loss stayed "
        "near 2; (2) wm_updates=4, 128/128/64: 0.89/0.05/0.22; (3) same with lambda=0.03: 0.29/0.03/0.00; "
        "(4) wm_updates=8, 64/64/32: 0.87/0.13/0.33 (last-20% success 1.00/0.68/1.00) - chosen; "
        "(5) wm_updates=4, 64/64/32: 0.81/0.01/0.00. Plain PPO on the same pilot seeds: 0.00/0.63/0.00; "
        "count bonus: 0.96/0.96/0.94. The verdict rule was fixed before the evaluation seeds were run, then "
        "tightened once after the first evaluation run (paired goal wins strict > instead of >=: a 0 vs 0 tie "
        "is no evidence); the verdict did not change (3 of 5 seeds strictly better). "
        "The normaliser's mu is an EMA started at 0 without bias correction (as in the reference code), so "
        "early in training most steps get a positive bonus. Not part of the rule: the paired 95% t-interval of "
        f"byol - none is {_ci_text(metrics, 'final_success')} for the last-20% success and "
        f"{_ci_text(metrics, 'coverage_auc')} for the coverage AUC."
    )
    return Result(verdict=v, rule=RULE, metrics=metrics, table=table, figures=figures, protocol=protocol, notes=notes)
