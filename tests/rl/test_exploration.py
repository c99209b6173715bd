"""Tests for foresight.rl.exploration: one exploration arm on a tiny grid, for every bonus, measured one way."""

import math

import numpy as np
import pytest
import torch

from foresight.rl import agents as AG
from foresight.rl import byol_explore as BE
from foresight.rl import exploration as X
from foresight.rl import rnd as RND
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
        "rnd": {"predictor_loss_first", "predictor_loss_last"},
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
        for res in (
            _arm("none"),
            _arm("count", count=X.CountBonusConfig(scale=0.0)),
            _arm("count", count=X.CountBonusConfig(scale=1.0)),
        )
    )
    assert plain == zero
    assert paying != plain  # and the comparison is not vacuous: a bonus that pays changes what is learned


def test_make_bonus_hooks_builds_every_bonus_for_a_gymnasium_minigrid_env():
    """The same names give hooks for a non-grid env: the count bonus then counts exact observations."""
    import gymnasium as gym
    import minigrid  # noqa: F401  (registers the MiniGrid ids)

    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make("MiniGrid-Empty-5x5-v0")] * 2, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    ppo = AG.PPOConfig(num_envs=2, num_steps=8, total_steps=16, minibatches=2)
    kinds = {b: type(X.make_bonus_hooks(b, envs, ppo, byol=BYOL, svd=SVD)).__name__ for b in X.BONUSES}
    assert kinds == {
        "none": "ExplorationHooks",
        "count": "ObservationCountBonus",
        "rnd": "RNDHooks",
        "byol": "BYOLExploreHooks",
        "svd": "SVDBonusHooks",
    }
    for bonus in ("count", "rnd", "byol"):
        hooks = X.make_bonus_hooks(bonus, envs, ppo, byol=BYOL)
        _, res = AG.train_ppo(envs, ppo, hooks=hooks, seed=0)
        assert res.env_steps == 16 and res.updates[0]["mean_bonus"] > 0


def _numbers(byol_success, none_success, rnd_success=None, byol_cover=(0.5,) * 5, none_cover=(0.5,) * 5):
    arms = {
        "byol": {"final_success": list(byol_success), "coverage": list(byol_cover)},
        "none": {"final_success": list(none_success), "coverage": list(none_cover)},
    }
    if rnd_success is not None:
        arms["rnd"] = {"final_success": list(rnd_success), "coverage": [0.5] * len(rnd_success)}
    return arms


def test_ci_beats_reads_the_lower_end_of_the_paired_bootstrap_interval():
    ok, ci = X.ci_beats([1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], 0.5)
    assert ok and ci.method == "bootstrap" and ci.low == ci.high == ci.mean == 1.0
    # the control wins: the rule fails
    assert not X.ci_beats([0.0, 0.0, 0.1, 0.0], [1.0, 1.0, 1.0, 1.0], 0.0)[0]
    # all ties: the interval is [0, 0], no evidence even at margin 0
    ok, ci = X.ci_beats([0.0] * 5, [0.0] * 5, 0.0)
    assert not ok and ci.low == ci.high == 0.0
    # a mean gain carried by one seed of ten: the bootstrap interval reaches 0, the rule fails
    assert not X.ci_beats([1.0] + [0.0] * 9, [0.0] * 10, 0.0)[0]
    # a large, consistent gain that is below the margin fails; above it passes
    assert not X.ci_beats([0.55] * 6, [0.5] * 6, 0.1)[0] and X.ci_beats([0.7] * 6, [0.5] * 6, 0.1)[0]
    with pytest.raises(ValueError, match="paired values need equal lengths, got 2 and 1"):
        X.ci_beats([1.0, 2.0], [1.0], 0.0)


def test_exploration_verdict_needs_the_control_and_rnd_beaten_on_every_task():
    solved, failed = [1.0, 0.9, 1.0, 0.8, 1.0], [0.0, 0.1, 0.0, 0.0, 0.0]
    both = {"t1": _numbers(solved, failed, rnd_success=failed), "t2": _numbers(solved, failed, rnd_success=failed)}
    verdict, details = X.exploration_verdict(both, "byol")
    assert verdict == "reproduced" and details["t1"]["control"] and details["t2"]["rival"]
    assert details["t1"]["control_ci"]["n"] == 5 and details["t1"]["control_ci"]["method"] == "bootstrap"
    # RND does as well: the control is beaten, RND is not -> partial
    assert X.exploration_verdict({"t1": _numbers(solved, failed, rnd_success=solved)}, "byol")[0] == "partial"
    # no RND arm run: criterion (2) cannot hold
    verdict, details = X.exploration_verdict({"t1": _numbers(solved, failed)}, "byol")
    assert verdict == "partial" and details["t1"]["rival"] is False and details["t1"]["rival_ci"] is None
    # one task of two solved: partial
    mixed = {"t1": _numbers(solved, failed, rnd_success=failed), "t2": _numbers(failed, failed, rnd_success=failed)}
    assert X.exploration_verdict(mixed, "byol")[0] == "partial"
    # the no-bonus control wins: not reproduced
    assert X.exploration_verdict({"t1": _numbers(failed, solved, rnd_success=failed)}, "byol")[0] == "not reproduced"
    # ties everywhere (both 0): not reproduced
    assert X.exploration_verdict({"t1": _numbers(failed, failed, rnd_success=failed)}, "byol")[0] == "not reproduced"
    # better coverage only: partial (explores more, solves nothing more)
    cover = _numbers(failed, failed, rnd_success=failed, byol_cover=[0.8, 0.7, 0.9, 0.8, 0.75])
    verdict, details = X.exploration_verdict({"t1": cover}, "byol")
    assert verdict == "partial" and details["t1"]["coverage"] and not details["t1"]["control"]
    # a success gain below the margin does not count
    small = _numbers([0.15] * 5, [0.1] * 5, rnd_success=[0.0] * 5)
    assert X.exploration_verdict({"t1": small}, "byol")[0] == "not reproduced"
    assert X.exploration_verdict({"t1": small}, "byol", X.ExplorationMargins(success=0.0))[0] == "reproduced"
    with pytest.raises(ValueError, match="task 't1' has no 'byol' arm"):
        X.exploration_verdict({"t1": {"none": {}}}, "byol")
    with pytest.raises(ValueError, match="per_task is empty"):
        X.exploration_verdict({}, "byol")
    with pytest.raises(ValueError, match="margin success must be >= 0, got -0.1"):
        X.ExplorationMargins(success=-0.1)


def test_per_task_numbers_keeps_the_seed_order_and_reads_the_coverage_of_each_env_kind():
    grid = [{"final_success": float(i), "coverage_auc": i / 10, "extras": {}, "other": 1} for i in range(3)]
    minigrid = [
        {"final_success": 0.0, "coverage_auc": 0.8, "extras": {"final_episode_cells": 7.0 + i}} for i in range(3)
    ]
    assert X.per_task_numbers({"grid": {"none": grid}, "mg": {"none": minigrid}}) == {
        "grid": {"none": {"final_success": [0.0, 1.0, 2.0], "coverage": [0.0, 0.1, 0.2]}},
        "mg": {"none": {"final_success": [0.0, 0.0, 0.0], "coverage": [7.0, 8.0, 9.0]}},  # per-episode cells
    }


# ------------------------------------------------------------------------------------------------
# MiniGrid: coverage from the simulator
# ------------------------------------------------------------------------------------------------
def _minigrid(env_id: str, **kw):
    import gymnasium as gym
    import minigrid  # noqa: F401  (registers the MiniGrid ids)

    return X.MiniGridCoverage(gym.make(env_id, **kw))


def test_minigrid_coverage_counts_the_agent_cells_of_each_episode():
    env = _minigrid("MiniGrid-Empty-5x5-v0", max_steps=3)
    env.reset(seed=0)
    core = env.unwrapped
    start = tuple(int(v) for v in core.agent_pos)
    assert env.cells == {start} and env.rooms_reached() == 0  # Empty has no rooms
    trace = [start]
    for action in (core.actions.forward, core.actions.left, core.actions.forward):
        _, _, term, trunc, _ = env.step(action)
        trace.append(tuple(int(v) for v in core.agent_pos))
    assert trunc and not term  # max_steps=3
    assert env.finished == [(len(set(trace)), 0)]  # the episode's last cell counts
    assert env.all_cells == set(trace)
    env.reset(seed=1)
    assert len(env.cells) == 1 and env.all_cells >= set(trace)


def test_minigrid_coverage_counts_rooms_along_multiroom_and_in_a_room_grid():
    env = _minigrid("MiniGrid-MultiRoom-N4-S5-v1")
    env.reset(seed=0)
    core = env.unwrapped
    assert env.rooms_reached() == 1  # the agent starts in room 0
    last = core.rooms[-1]
    core.agent_pos = (last.top[0] + 1, last.top[1] + 1)  # an interior cell of the last room
    env._visit()
    assert env.rooms_reached() == len(core.rooms)  # the highest room index + 1
    door = core.rooms[1].entryDoorPos
    assert X._room_of(core, tuple(door)) is None  # a door is in no room's interior

    corridor = _minigrid("MiniGrid-KeyCorridorS3R2-v0")
    corridor.reset(seed=0)
    assert corridor.rooms_reached() == 1
    c = corridor.unwrapped
    c.agent_pos = (1, 1)  # the top-left room
    corridor._visit()
    assert corridor.rooms_reached() == 2  # the agent starts in the middle column, (1, 1) is a side room


def test_a_minigrid_exploration_arm_reports_coverage_and_rooms():
    """A short real MiniGrid run: coverage is a fraction of the width x height grid and rooms are reported."""
    env = X.make_exploration_env("MiniGrid-MultiRoom-N4-S5-v1", 4)
    ppo = AG.PPOConfig(num_envs=4, num_steps=32, total_steps=512, minibatches=2, hidden=16, encoder="minigrid")
    res = X.run_exploration_arm(env, ppo, "count", seed=0, curve_points=2)
    assert res.num_states == 25 * 25 and 0 < res.visited_states <= res.num_states
    assert res.coverage == res.visited_states / res.num_states and res.curve_visited[-1] == res.visited_states
    assert {"episode_cells", "episode_rooms", "final_episode_rooms", "max_rooms"} <= set(res.extras)
    # 128 steps per env, 80-step episodes: each env ended one
    assert res.extras["max_rooms"] >= 1 and res.extras["episode_cells"] >= 1
    again = X.run_exploration_arm(
        X.make_exploration_env("MiniGrid-MultiRoom-N4-S5-v1", 4), ppo, "count", seed=0, curve_points=2
    )
    assert _untimed(again) == _untimed(res)


def test_make_exploration_env_and_the_tracker_reject_what_they_cannot_measure():
    import gymnasium as gym

    assert isinstance(X.make_exploration_env(X.GRID_TASK, 2), GridVectorEnv)
    with pytest.raises(ValueError, match="task 'CartPole-v1' is neither 'grid' nor a MiniGrid id"):
        X.make_exploration_env("CartPole-v1", 2)
    with pytest.raises(ValueError, match="num_envs must be >= 1, got 0"):
        X.make_exploration_env(X.GRID_TASK, 0)
    plain = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2)
    with pytest.raises(ValueError, match="needs a SyncVectorEnv of MiniGridCoverage-wrapped envs"):
        X.MiniGridCoverageTracker(plain, [1.0])


def test_plot_arms_writes_the_curves_and_the_summary(tmp_path):
    rows = [_arm("none", seed=s).to_dict() for s in (0, 1)]
    names = X.plot_arms(lambda name: tmp_path / name, {"none": rows, "copy": rows}, prefix="c_", curves=("success",))
    assert names == ["c_success.png", "c_summary.png"]
    assert all((tmp_path / n).stat().st_size > 1000 for n in names)
    with pytest.raises(ValueError, match="curve 'reward' is not one of"):
        X.plot_arms(lambda name: tmp_path / name, {"none": rows}, curves=("reward",))


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
    with pytest.raises(ValueError, match="bonus 'icm' is not one of"):
        X.run_exploration_arm(env, PPO, "icm", seed=0)
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


def test_running_mean_std_matches_the_moments_of_all_batches():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 3, generator=g) * 2 + 1 for n in (5, 17, 1)]
    rms = RND.RunningMeanStd((3,))
    for b in batches:
        rms.update(b)
    x = torch.cat(batches).double()
    torch.testing.assert_close(rms.mean, x.mean(0), atol=1e-4, rtol=1e-4)  # the 1e-4 prior count
    torch.testing.assert_close(rms.var, x.var(0, unbiased=False), atol=1e-4, rtol=1e-4)


def test_rnd_bonus_falls_on_familiar_observations_and_gets_its_own_value_head():
    """PPO with RND on the tiny grid: a second (intrinsic) value head is trained, and after training the
    predictor's error is lower on the cells the agent visited than on unseen one-hot patterns."""
    env = GridVectorEnv(PPO.num_envs, layout=TINY, max_steps=12)
    torch.manual_seed(0)
    hooks = X.make_bonus_hooks("rnd", env, PPO, rnd=RND.RNDConfig(lr=1e-3, hidden=32, out_dim=16))
    tracker_cells = []
    agent, res = AG.train_ppo(env, PPO, hooks=hooks, seed=0, on_step=lambda s: tracker_cells.append(s.next_obs))
    assert agent.int_value is not None and all("int_value_loss" in u for u in res.updates)
    assert hooks.history[-1]["predictor_loss"] < hooks.history[0]["predictor_loss"]
    seen = torch.unique(torch.cat(tracker_cells), dim=0)
    unseen = torch.zeros(8, seen.shape[1])
    unseen[:, 0] = 1.0  # row 0 is a wall row: the agent never observes it
    unseen[torch.arange(8), 5 + torch.arange(8) % 7] = 1.0
    assert hooks.prediction_error(seen).mean() < hooks.prediction_error(unseen).mean()
    with pytest.raises(ValueError, match="update_proportion must be in"):
        RND.RNDConfig(update_proportion=0.0)
