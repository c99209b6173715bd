"""Tests for foresight.rl.gridworlds: the four-room chain and the cued T-maze, vectorised and single."""

from collections import deque

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from foresight.rl import gridworlds as GW

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3


def _shortest_path(free: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> int:
    dist = {start: 0}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            nxt = (r + dr, c + dc)
            if free[nxt] and nxt not in dist:
                dist[nxt] = dist[(r, c)] + 1
                queue.append(nxt)
    return dist.get(goal, -1)


def test_multiroom_layout_forces_the_long_way_round():
    free, starts, goals = GW.parse_layout(GW.MULTIROOM_LAYOUT)
    assert free.sum() == 103
    # 20 steps through all four rooms, twice the Manhattan distance (10) from S to G
    assert _shortest_path(free, tuple(starts[0]), tuple(goals[0])) == 20
    # the goal room is directly below the start room, but the wall between them has no door
    assert not free[6, 1:6].any()


def test_walls_block_and_goal_pays_and_terminates():
    layout = "#####\n#S.G#\n#####"
    env = GW.GridVectorEnv(2, layout, max_steps=10)
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [[1, 1], [1, 1]]
    obs, r, term, trunc, info = env.step([UP, RIGHT])  # env 0 bumps the wall, env 1 moves
    assert obs.tolist() == [[1, 1], [1, 2]] and not term.any() and not trunc.any()
    obs, r, term, trunc, info = env.step([LEFT, RIGHT])  # env 1 reaches G at t = 2
    assert term.tolist() == [False, True]
    assert r[1] == pytest.approx(1 - 0.9 * 2 / 10) and r[0] == 0
    # same-step autoreset: env 1 is back at the start and its last observation is in info
    assert obs[1].tolist() == [1, 1]
    assert info["_final_obs"].tolist() == [False, True] and info["final_obs"][1].tolist() == [1, 3]
    assert info["success"].tolist() == [False, True]


def test_truncation_at_max_steps():
    env = GW.GridVectorEnv(1, "####\n#SG#\n#..#\n####", max_steps=3)
    env.reset(seed=0)
    outs = [env.step([DOWN]) for _ in range(3)]
    assert [o[3][0] for o in outs] == [False, False, True]
    assert outs[-1][4]["final_obs"][0].tolist() == [2, 1]


def test_vector_env_is_deterministic_given_the_seed_and_fast():
    def rollout(seed):
        env = GW.GridVectorEnv(8)
        env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        return np.stack([env.step(rng.integers(4, size=8))[0] for _ in range(50)])

    np.testing.assert_array_equal(rollout(3), rollout(3))
    env = GW.GridVectorEnv(64)
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(4, size=(200, 64))
    import time

    t0 = time.perf_counter()
    for a in actions:
        env.step(a)
    assert 200 * 64 / (time.perf_counter() - t0) > 50_000  # env steps/s: never the agent's bottleneck


def test_single_envs_pass_the_gymnasium_checker():
    check_env(GW.GridEnv(), skip_render_check=True)
    check_env(GW.TMazeEnv(), skip_render_check=True)


def test_tmaze_last_observation_hides_the_cue():
    pos = np.array([0, 0, 2, 2, 4, 4])
    cue = np.array([0, 1, 0, 1, 0, 1])
    obs = GW.tmaze_observation(pos, cue, length=4)
    assert obs.tolist() == [GW.CUE_UP, GW.CUE_DOWN, GW.CORRIDOR, GW.CORRIDOR, GW.JUNCTION, GW.JUNCTION]


def test_tmaze_rewards_the_cued_arm_once_and_absorbs():
    length = 2
    pos = np.array([2, 2, 2, 2])
    cue = np.array([0, 0, 1, 1])
    new, r = GW.tmaze_step(pos, cue, np.array([UP, DOWN, UP, DOWN]), length)
    assert new.tolist() == [3, 4, 3, 4] and r.tolist() == [1.0, -1.0, -1.0, 1.0]
    assert GW.tmaze_observation(new, cue, length).tolist() == [GW.GOAL, GW.WRONG, GW.WRONG, GW.GOAL]
    again, r2 = GW.tmaze_step(new, cue, np.array([LEFT, RIGHT, DOWN, UP]), length)
    assert again.tolist() == new.tolist() and (r2 == 0).all()
    # corridor: up/down bump the walls, left stops at the start
    c, _ = GW.tmaze_step(np.array([0, 1]), np.array([0, 0]), np.array([LEFT, UP]), length)
    assert c.tolist() == [0, 1]


def test_tmaze_vector_env_terminates_and_resets_with_a_new_cue():
    env = GW.TMazeVectorEnv(4, length=1, max_steps=5)
    obs, info = env.reset(seed=1)
    assert set(obs.tolist()) <= {GW.CUE_UP, GW.CUE_DOWN}
    cues = info["cue"].copy()
    env.step([RIGHT] * 4)
    obs, r, term, trunc, info = env.step([UP] * 4)
    assert term.all()
    np.testing.assert_array_equal(r, np.where(cues == 0, 1.0, -1.0))
    np.testing.assert_array_equal(info["final_obs"], np.where(cues == 0, GW.GOAL, GW.WRONG))
    assert (info["pos"] == 0).all()


def test_tmaze_trajectories_shapes_and_consistency():
    tr = GW.tmaze_trajectories(50, 12, 3, rng=np.random.default_rng(0))
    assert tr["obs"].shape == (50, 13) and tr["actions"].shape == (50, 12) and tr["cue"].shape == (50,)
    np.testing.assert_array_equal(
        tr["obs"], np.stack([GW.tmaze_observation(tr["pos"][:, t], tr["cue"], 3) for t in range(13)], 1)
    )
    assert (tr["alive"] == (tr["pos"] <= 3)).all()
    assert (np.diff(tr["alive"].astype(int), axis=1) <= 0).all()  # once in an arm, always in it


def test_bad_inputs_raise_value_errors_naming_the_value():
    with pytest.raises(ValueError, match="unknown characters \\['x'\\]"):
        GW.parse_layout("#S.x#")
    with pytest.raises(ValueError, match="at least one goal"):
        GW.parse_layout("#S..#")
    with pytest.raises(ValueError, match="num_envs must be >= 1, got 0"):
        GW.GridVectorEnv(0)
    env = GW.GridVectorEnv(2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="actions must be in \\[0, 4\\), got \\[7\\]"):
        env.step([0, 7])
    with pytest.raises(ValueError, match="expected 2 actions"):
        env.step([0])
    with pytest.raises(ValueError, match="action_probs must be 4 probabilities"):
        GW.tmaze_trajectories(2, 3, 2, action_probs=(0.5, 0.5))


def test_coverage_tracker_counts_cells_and_reads_coverage_at_checkpoints():
    from types import SimpleNamespace

    env = GW.GridVectorEnv(2)
    W = env.free.shape[1]
    tracker = GW.CoverageTracker(env, checkpoints=[2, 4, 6, 100])
    for cells in ([[1, 1], [1, 2]], [[1, 1], [2, 1]], [[1, 1], [1, 1]]):  # (row, col) of 2 envs per step
        nxt = np.array(cells)
        tracker(SimpleNamespace(raw_next_obs=nxt, obs=np.zeros((2, 2))))
    assert tracker.counts[1 * W + 1] == 4 and tracker.counts[1 * W + 2] == 1 and tracker.counts[2 * W + 1] == 1
    assert tracker.counts.sum() == 6 and tracker.visited == 3
    assert tracker.coverage == [2, 3, 3]  # after 2, 4 and 6 env steps
    assert tracker.curve() == [2, 3, 3, 3]  # the checkpoint past the budget gets the final count
