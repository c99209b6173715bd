"""The byol-explore experiment: a tiny end-to-end run, a killed-and-resumed run, presets/validation, the rule."""

import json

import pytest

from foresight import cli
from foresight.core.registry import VERDICTS, get
from foresight.experiments import byol_explore as X
from foresight.rl.exploration import GRID_TASK, ExplorationMargins

NAME = "byol-explore"


def test_tiny_run_writes_a_verdict_table_and_figures(tmp_path):
    out = tmp_path / "r"
    assert cli.main(["run", NAME, "--scale", "tiny", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["verdict"] in VERDICTS
    assert res["system"] == "BYOL-Explore"
    m = res["metrics"]
    for arm in ("none", "rnd", "byol", "count"):
        for key in (
            "success_rate",
            "final_success",
            "final_return",
            "coverage",
            "coverage_auc",
            "visited_states",
            "found_goal_seeds",
            "steps_per_second",
            "cpu_seconds_per_cell",
        ):
            assert f"grid_{arm}_{key}" in m, (arm, key)
        assert 0.0 < m[f"grid_{arm}_coverage_auc"] <= 1.0 and m[f"grid_{arm}_steps_per_second"] > 0
        assert m[f"grid_{arm}_coverage"] <= 1.0 and 1 <= m[f"grid_{arm}_visited_states"] <= 103
        assert m[f"grid_{arm}_cpu_seconds_per_cell"] > 0
    assert m["grid_byol_wm_loss_last"] > 0
    assert [row["arm"] for row in res["table"]] == ["none", "rnd", "byol", "count"]
    assert all(row["seeds"] == 3 and row["frames"] == 2048 for row in res["table"])
    # the verdict follows from the criteria by the stated rule (one task)
    control, rival, cover = (m[f"grid_{c}_criterion"] for c in ("control", "rival", "coverage"))
    expected = "reproduced" if control and rival else "partial" if control or cover else "not reproduced"
    assert res["verdict"] == expected
    # the paired bootstrap intervals of the rule are over the 3 seeds
    ci = m["grid_control_ci95"]
    assert ci["n"] == 3 and ci["method"] == "bootstrap" and ci["low"] <= ci["mean"] <= ci["high"]
    for fig in res["figures"]:
        assert (out / "figures" / fig).stat().st_size > 1000
    assert "byol" in (out / "REPORT.md").read_text()


def test_killed_and_resumed_ends_like_an_uninterrupted_run(tmp_path, monkeypatch):
    full, killed = tmp_path / "full", tmp_path / "killed"
    args = ["--scale", "tiny", "--no-progress", "--set", "seed_list=200,201", "--set", "arms=none,byol"]
    assert cli.main(["run", NAME, "--out", str(full), *args]) == 0
    run_arm, calls = X.run_arm, []

    def killed_at_the_third_cell(cfg, task, arm, seed):
        calls.append((arm, seed))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return run_arm(cfg, task, arm, seed)

    monkeypatch.setattr(X, "run_arm", killed_at_the_third_cell)
    assert cli.main(["run", NAME, "--out", str(killed), *args]) == 130
    assert not (killed / "results.json").exists()
    assert cli.main(["run", NAME, "--resume", str(killed), "--no-progress"]) == 0
    assert len(calls) == 5  # the two finished cells were not run again
    assert calls[0][1] != calls[1][1] and calls[0][1] == calls[2][1]  # seeds differ, arms of one seed share it
    a, b = (json.loads((d / "results.json").read_text()) for d in (full, killed))
    timing = ("steps_per_second", "seconds", "seconds_per_cell")
    untimed = [{k: v for k, v in r["metrics"].items() if not k.endswith(timing)} for r in (a, b)]
    assert untimed[0] == untimed[1] and a["verdict"] == b["verdict"]

    def logged(d):  # one line per finished cell, none doubled by the resume
        return [
            {k: v for k, v in json.loads(line).items() if not k.endswith(timing)} for line in open(d / "metrics.jsonl")
        ]

    assert logged(killed) == logged(full) and len(logged(full)) == 4


def test_presets_and_validation():
    tiny, quick, full = (X.BYOLExploreExperimentConfig.preset(s) for s in ("tiny", "quick", "full"))
    assert tiny.seeds >= 3 and quick.seeds >= 3 and full.seeds >= 10
    assert full.total_steps > quick.total_steps > tiny.total_steps
    # pilot (quick) and evaluation (full) seeds are disjoint; pilots are 100+
    assert not set(quick.seed_list) & set(full.seed_list) and min(quick.seed_list) >= 100
    assert full.seed_list == tuple(range(full.seeds))
    assert tiny.tasks == quick.tasks == (GRID_TASK,)
    assert full.tasks == ("MiniGrid-MultiRoom-N4-S5-v1", "MiniGrid-KeyCorridorS3R2-v0")
    assert {"none", "rnd", "byol"} <= set(full.arms)
    assert full.ppo_config(full.tasks[0]).encoder == "minigrid" and full.ppo_config(GRID_TASK).encoder == "auto"
    assert quick.byol_config().reward_indexing == "targeting_t1"
    assert get(NAME).make_config("quick", ["int_coef=0.05"]).byol_config().int_coef == 0.05
    with pytest.raises(ValueError, match="arms must include 'none' and 'byol'"):
        X.BYOLExploreExperimentConfig(arms=("none", "count"))
    with pytest.raises(ValueError, match="arms=\\('ppo', 'byol'\\) is not allowed"):  # the baseline is "none"
        X.BYOLExploreExperimentConfig(arms=("ppo", "byol"))
    with pytest.raises(ValueError, match="arms must include 'none' and 'byol'"):
        X.BYOLExploreExperimentConfig(arms=("rnd",))
    with pytest.raises(ValueError, match="total_steps=100 is less than one rollout \\(1024\\) of grid"):
        X.BYOLExploreExperimentConfig(tasks=(GRID_TASK,), total_steps=100)
    with pytest.raises(ValueError, match="horizon must be >= 1, got 0"):
        X.BYOLExploreExperimentConfig(horizon=0)
    with pytest.raises(ValueError, match="reward_indexing='x' is not allowed"):
        X.BYOLExploreExperimentConfig(reward_indexing="x")
    with pytest.raises(ValueError, match="seed_list must hold distinct seeds, got \\(1, 1\\)"):
        X.BYOLExploreExperimentConfig(seed_list=(1, 1))
    with pytest.raises(ValueError, match="task 'Breakout' is neither 'grid' nor a MiniGrid id"):
        X.BYOLExploreExperimentConfig(tasks=("Breakout",))
    with pytest.raises(ValueError, match="margin success must be >= 0, got -1.0"):
        X.BYOLExploreExperimentConfig(success_margin=-1.0)


def test_verdict_rule_on_hand_made_numbers():
    margins = ExplorationMargins(success=0.1, rival=0.0, coverage=0.0)
    seeds = 10
    solved, failed = [1.0, 0.9] * (seeds // 2), [0.0, 0.1] * (seeds // 2)
    cover_hi, cover_lo = [0.8, 0.7] * (seeds // 2), [0.5] * seeds

    def arms(byol, none, rnd, byol_cover=cover_lo):
        return {
            "byol": {"final_success": byol, "coverage": byol_cover},
            "none": {"final_success": none, "coverage": cover_lo},
            "rnd": {"final_success": rnd, "coverage": cover_lo},
        }

    def verdict(*tasks):
        return X.verdict({f"t{i}": t for i, t in enumerate(tasks)}, margins)[0]

    assert verdict(arms(solved, failed, failed), arms(solved, failed, failed)) == "reproduced"
    # RND solves it too: BYOL-Explore beats the control, not RND
    assert verdict(arms(solved, failed, solved)) == "partial"
    # the no-bonus control wins
    assert verdict(arms(failed, solved, failed)) == "not reproduced"
    # only coverage rises: partial
    assert verdict(arms(failed, failed, failed, byol_cover=cover_hi)) == "partial"
    # one lucky seed of ten: the bootstrap interval reaches 0
    lucky = [1.0] + [0.0] * (seeds - 1)
    assert verdict(arms(lucky, [0.0] * seeds, [0.0] * seeds)) == "not reproduced"
    # solved on one task, not on the other
    assert verdict(arms(solved, failed, failed), arms(failed, failed, failed)) == "partial"
