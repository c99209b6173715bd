"""Tests for foresight.rl.exploration: one exploration arm on a tiny grid, for every bonus, measured one way."""

import math

import numpy as np
import pytest
import torch

from foresight.rl import agents as AG
from foresight.rl import byol_explore as BE
from foresight.rl import exploration as X
from foresight.rl.gridworlds import GridVectorEnv

torch.set_num_threads(1)

# 3 x 5 free cells (15 states), the goal in the far corner; a large PPO learning rate so that 4 updates change the
# policy enough for bonuses to matter
TINY = """\
#######
#S....#
#.....#
#....G#
#######"""
PPO = AG.PPOConfig(num_envs=4, num_steps=16, total_steps=256, lr=0.05, epochs=1, minibatches=2, hidden=16)
BYOL = BE.BYOLExploreConfig(latent_dim=8, state_dim=16, mlp_hidden=16, wm_updates=1, horizon=2)
SVD = X.SVDBonusConfig(rank=4, hidden=16, extra_steps=1)
TIMING = ("steps_per_second",)


def _arm(bonus: str, seed: int = 3, **kw) -> X.ArmResult:
    env = GridVectorEnv(PPO.num_envs, layout=TINY, max_steps=12)
    return X.run_exploration_arm(env, PPO, bonus, seed=seed, curve_points=4, byol=BYOL, svd=SVD, **kw)


def _untimed(res: X.ArmResult) -> dict:
    return {k: v for k, v in res.to_dict().items() if k not in TIMING}


@pytest.mark.parametrize("bonus", X.BONUSES)
def test_each_bonus_runs_and_reports_coverage_as_a_count_and_a_fraction(bonus):
    res = _arm(bonus)
    assert res.bonus == bonus and res.env_steps == PPO.total_steps and res.num_states == 15
    assert 0 < res.visited_states <= res.num_states
    assert res.coverage == res.visited_states / res.num_states
    assert res.curve_coverage == [v / 15 for v in res.curve_visited]
    assert res.coverage_auc == pytest.approx(np.mean(res.curve_coverage))
    assert res.curve_visited == sorted(res.curve_visited) and res.curve_visited[-1] == res.visited_states
    assert res.curve_steps == [64.0, 128.0, 192.0, 256.0]
    assert 0.0 <= res.final_success <= 1.0 and 0.0 <= res.success_rate <= 1.0
    assert res.found_goal == (res.first_success_step > 0)
    assert res.steps_per_second > 0
    expected_extras = {
        "none": set(),
        "count": set(),
        "byol": {"wm_loss_first", "wm_loss_last", "bonus_nonzero_last"},
        "svd": {"pseudo_count_spearman"},
    }[bonus]
    assert set(res.extras) == expected_extras
    assert all(math.isfinite(v) for v in res.extras.values())


def test_the_runner_is_deterministic_given_the_seed():
    first, again, other = _arm("svd", seed=5), _arm("svd", seed=5), _arm("svd", seed=6)
    assert _untimed(first) == _untimed(again)
    assert _untimed(first) != _untimed(other)


def test_arms_pair_up_by_seed_a_zero_count_bonus_is_plain_ppo():
    """The seed fixes the environments, the agent's init and its action samples in every arm, so a count bonus
    that pays nothing trains exactly the agent plain PPO trains."""
    plain, zero, paying = (
        {k: v for k, v in _untimed(res).items() if k != "bonus"}
        for res in (_arm("none"), _arm("count", count=X.CountBonusConfig(scale=0.0)), _arm("count"))
    )
    assert plain == zero
    assert paying != plain  # and the comparison is not vacuous: a bonus that pays changes what is learned


def test_window_means_by_hand():
    values = np.array([1.0, 0.0, 1.0, 1.0])
    ends = np.array([10, 20, 35, 40])
    # windows (0, 20], (20, 40], (40, 60]: the last has no episode
    assert X.window_means(values, ends, np.array([20.0, 40.0, 60.0])) == [0.5, 1.0, 0.0]


def test_summarize_arm_and_mean_curve_on_hand_made_rows():
    def row(success, coverage, found, curve):
        return {
            "success_rate": success,
            "final_success": success,
            "mean_return": success / 2,
            "final_return": success / 2,
            "coverage": coverage,
            "coverage_auc": coverage / 2,
            "visited_states": int(coverage * 10),
            "found_goal": found,
            "steps_per_second": 100.0,
            "curve_steps": [1.0, 2.0],
            "curve_coverage": curve,
        }

    rows = [row(0.2, 0.5, True, [0.1, 0.5]), row(0.4, 1.0, False, [0.3, 1.0])]
    s = X.summarize_arm(rows)
    assert s["success_rate"] == pytest.approx(0.3) and s["success_rate_std"] == pytest.approx(0.1 * 2**0.5)
    assert s["coverage"] == pytest.approx(0.75) and s["visited_states"] == pytest.approx(7.5)
    assert s["found_goal_seeds"] == 1 and s["steps_per_second"] == 100.0
    steps, mean = X.mean_curve(rows, "curve_coverage")
    assert steps == [1.0, 2.0] and mean == pytest.approx([0.2, 0.75])


def test_bad_inputs_raise_value_errors_naming_the_value():
    env = GridVectorEnv(PPO.num_envs, layout=TINY)
    with pytest.raises(ValueError, match="bonus 'rnd' is not one of"):
        X.run_exploration_arm(env, PPO, "rnd", seed=0)
    with pytest.raises(ValueError, match="bonus 'ppo' is not one of"):
        X.make_bonus_hooks("ppo", env, PPO)
    with pytest.raises(ValueError, match="curve_points must be >= 1, got 0"):
        X.run_exploration_arm(env, PPO, "none", seed=0, curve_points=0)
    with pytest.raises(ValueError, match="scale must be >= 0, got -1"):
        X.CountBonusConfig(scale=-1.0)
    with pytest.raises(ValueError, match="rank must be >= 1, got 0"):
        X.SVDBonusConfig(rank=0)
    with pytest.raises(ValueError, match="lr must be > 0, got 0.0"):
        X.SVDBonusConfig(lr=0.0)
