"""The byol-explore experiment: a tiny end-to-end run, a killed-and-resumed run, presets/validation, the rule."""

import json

import pytest

from foresight import cli
from foresight.core.registry import VERDICTS, get
from foresight.experiments import byol_explore as X

NAME = "byol-explore"


def test_tiny_run_writes_a_verdict_table_and_figures(tmp_path):
    out = tmp_path / "r"
    assert cli.main(["run", NAME, "--scale", "tiny", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["verdict"] in VERDICTS
    assert res["system"] == "BYOL-Explore"
    m = res["metrics"]
    for arm in ("none", "byol", "count"):
        for key in (
            "success_rate",
            "final_success",
            "final_return",
            "coverage",
            "coverage_auc",
            "visited_states",
            "found_goal_seeds",
            "steps_per_second",
        ):
            assert f"{arm}_{key}" in m, (arm, key)
        assert 0.0 < m[f"{arm}_coverage_auc"] <= 1.0 and m[f"{arm}_steps_per_second"] > 0
        assert m[f"{arm}_coverage"] <= 1.0 and 1 <= m[f"{arm}_visited_states"] <= 103
    assert m["byol_wm_loss_last"] > 0
    assert [row["arm"] for row in res["table"]] == ["none", "byol", "count"]
    assert all(row["seeds"] == 3 for row in res["table"])
    # the verdict follows from the two criteria by the stated rule
    goal, cover = m["goal_criterion"], m["coverage_criterion"]
    assert res["verdict"] == ("reproduced" if goal and cover else "partial" if goal or cover else "not reproduced")
    # the paired intervals (reported, not part of the rule) are over the 3 seeds
    ci = m["paired_final_success_diff_ci95"]
    assert ci["n"] == 3 and ci["low"] <= ci["mean"] <= ci["high"]
    assert sum(m["paired_coverage_auc_wins_ties_losses"]) == 3
    for fig in res["figures"]:
        assert (out / "figures" / fig).stat().st_size > 1000
    assert "byol" in (out / "REPORT.md").read_text()


def test_killed_and_resumed_ends_like_an_uninterrupted_run(tmp_path, monkeypatch):
    full, killed = tmp_path / "full", tmp_path / "killed"
    args = ["--scale", "tiny", "--no-progress", "--set", "seeds=2", "--set", "arms=none,byol"]
    assert cli.main(["run", NAME, "--out", str(full), *args]) == 0
    run_arm, calls = X.run_arm, []

    def killed_at_the_third_cell(cfg, arm, seed):
        calls.append((arm, seed))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return run_arm(cfg, arm, seed)

    monkeypatch.setattr(X, "run_arm", killed_at_the_third_cell)
    assert cli.main(["run", NAME, "--out", str(killed), *args]) == 130
    assert not (killed / "results.json").exists()
    assert cli.main(["run", NAME, "--resume", str(killed), "--no-progress"]) == 0
    assert len(calls) == 5  # the two finished cells were not run again
    assert calls[0][1] == calls[1][1] != calls[2][1]  # the arms of one seed share it (paired by seed)
    a, b = (json.loads((d / "results.json").read_text()) for d in (full, killed))
    timing = ("steps_per_second", "seconds")
    untimed = [{k: v for k, v in r["metrics"].items() if not k.endswith(timing)} for r in (a, b)]
    assert untimed[0] == untimed[1] and a["verdict"] == b["verdict"]

    def logged(d):  # one line per finished cell, none doubled by the resume
        return [
            {k: v for k, v in json.loads(line).items() if not k.endswith(timing)} for line in open(d / "metrics.jsonl")
        ]

    assert logged(killed) == logged(full) and len(logged(full)) == 4


def test_presets_and_validation():
    tiny, quick, full = (X.BYOLExploreExperimentConfig.preset(s) for s in ("tiny", "quick", "full"))
    assert tiny.seeds >= 3 and quick.seeds >= 3 and full.seeds >= quick.seeds
    assert full.total_steps > quick.total_steps > tiny.total_steps
    assert quick.byol_config().reward_indexing == "targeting_t1"
    assert get(NAME).make_config("quick", ["int_coef=0.05"]).byol_config().int_coef == 0.05
    with pytest.raises(ValueError, match="arms must include 'none' and 'byol'"):
        X.BYOLExploreExperimentConfig(arms=("none", "count"))
    with pytest.raises(ValueError, match="arms=\\('ppo', 'byol'\\) is not allowed"):  # the baseline is "none"
        X.BYOLExploreExperimentConfig(arms=("ppo", "byol"))
    with pytest.raises(ValueError, match="arms=\\('rnd',\\) is not allowed"):
        X.BYOLExploreExperimentConfig(arms=("rnd",))
    with pytest.raises(ValueError, match="total_steps=100 is less than one rollout"):
        X.BYOLExploreExperimentConfig(total_steps=100)
    with pytest.raises(ValueError, match="horizon must be >= 1, got 0"):
        X.BYOLExploreExperimentConfig(horizon=0)
    with pytest.raises(ValueError, match="reward_indexing='x' is not allowed"):
        X.BYOLExploreExperimentConfig(reward_indexing="x")


def test_verdict_rule_on_hand_made_numbers():
    none_success, none_cover = [0.0, 0.0, 1.0, 0.0, 0.0], [0.6] * 5

    def verdict(success, cover, base_success=none_success, base_cover=none_cover):
        return X.verdict(success, base_success, cover, base_cover)

    assert verdict([1.0, 1.0, 1.0, 0.0, 0.5], [0.7] * 5) == ("reproduced", True, True)
    # better coverage, same goal rate: partial
    assert verdict([0.0, 0.0, 1.0, 0.0, 0.0], [0.7] * 5) == ("partial", False, True)
    # better goal rate, same coverage: partial
    assert verdict([1.0, 1.0, 1.0, 0.0, 0.5], [0.6] * 5) == ("partial", True, False)
    # higher mean success carried by two seeds only: the paired criterion fails
    assert verdict([1.0, 1.0, 0.0, 0.0, 0.0], [0.5] * 5, [0.0, 0.0, 0.2, 0.2, 0.2], [0.6] * 5) == (
        "not reproduced",
        False,
        False,
    )
    assert verdict([0.0] * 5, [0.5] * 5) == ("not reproduced", False, False)
    # ties are not wins: one seed better, four tied (mean +0.2) fails the paired criterion
    assert verdict([1.0, 0.0, 1.0, 0.0, 0.0], [0.6] * 5) == ("not reproduced", False, False)
