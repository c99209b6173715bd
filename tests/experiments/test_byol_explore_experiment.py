"""The byol-explore experiment: a tiny end-to-end run, resume, presets/validation and the verdict rule."""

import json

import pytest

from foresight import cli
from foresight.core.registry import VERDICTS, get
from foresight.experiments import byol_explore as X

NAME = "byol-explore"


def test_tiny_run_writes_a_verdict_table_and_figures_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "r"
    assert cli.main(["run", NAME, "--scale", "tiny", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["verdict"] in VERDICTS
    assert res["system"] == "BYOL-Explore"
    m = res["metrics"]
    for arm in ("ppo", "byol", "count"):
        for key in (
            "success_rate",
            "final_success",
            "final_return",
            "coverage",
            "coverage_auc",
            "found_goal_seeds",
            "steps_per_second",
        ):
            assert f"{arm}_{key}" in m, (arm, key)
        assert 0.0 < m[f"{arm}_coverage_auc"] <= 1.0 and m[f"{arm}_steps_per_second"] > 0
    assert m["byol_wm_loss_last"] > 0
    assert [row["arm"] for row in res["table"]] == ["ppo", "byol", "count"]
    assert all(row["seeds"] == 3 for row in res["table"])
    # the verdict follows from the two criteria by the stated rule
    goal, cover = m["goal_criterion"], m["coverage_criterion"]
    assert res["verdict"] == ("reproduced" if goal and cover else "partial" if goal or cover else "not reproduced")
    for fig in res["figures"]:
        assert (out / "figures" / fig).stat().st_size > 1000
    assert "byol" in (out / "REPORT.md").read_text()

    (out / "results.json").unlink()  # as if killed after the last checkpoint

    def boom(*a, **k):
        raise AssertionError("a finished unit was run again")

    monkeypatch.setattr(X, "run_arm", boom)
    assert cli.main(["run", NAME, "--resume", str(out), "--no-progress"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["metrics"] == res["metrics"] and again["verdict"] == res["verdict"]


def test_presets_and_validation():
    tiny, quick, full = (X.BYOLExploreExperimentConfig.preset(s) for s in ("tiny", "quick", "full"))
    assert tiny.seeds >= 3 and quick.seeds >= 3 and full.seeds >= quick.seeds
    assert full.total_steps > quick.total_steps > tiny.total_steps
    assert quick.byol_config().reward_indexing == "targeting_t1"
    assert get(NAME).make_config("quick", ["int_coef=0.05"]).byol_config().int_coef == 0.05
    with pytest.raises(ValueError, match="arms must include 'ppo' and 'byol'"):
        X.BYOLExploreExperimentConfig(arms=("ppo", "count"))
    with pytest.raises(ValueError, match="arms=\\('rnd',\\) is not allowed"):
        X.BYOLExploreExperimentConfig(arms=("rnd",))
    with pytest.raises(ValueError, match="total_steps=100 is less than one rollout"):
        X.BYOLExploreExperimentConfig(total_steps=100)
    with pytest.raises(ValueError, match="horizon must be >= 1, got 0"):
        X.BYOLExploreExperimentConfig(horizon=0)
    with pytest.raises(ValueError, match="reward_indexing='x' is not allowed"):
        X.BYOLExploreExperimentConfig(reward_indexing="x")


def test_verdict_rule_on_hand_made_numbers():
    def arm(success, cover):
        return [{"final_success": s, "coverage_auc": c} for s, c in zip(success, cover)]

    ppo = arm([0.0, 0.0, 1.0, 0.0, 0.0], [0.6] * 5)
    assert X.verdict(arm([1.0, 1.0, 1.0, 0.0, 0.5], [0.7] * 5), ppo) == ("reproduced", True, True)
    # better coverage, same goal rate: partial
    assert X.verdict(arm([0.0, 0.0, 1.0, 0.0, 0.0], [0.7] * 5), ppo) == ("partial", False, True)
    # higher mean success carried by one seed only: the paired criterion fails
    assert X.verdict(arm([1.0, 1.0, 0.0, 0.0, 0.0], [0.5] * 5), arm([0.0, 0.0, 0.2, 0.2, 0.2], [0.6] * 5)) == (
        "not reproduced",
        False,
        False,
    )
    assert X.verdict(arm([0.0] * 5, [0.5] * 5), ppo) == ("not reproduced", False, False)
    # ties are not wins: one seed better, four tied (mean +0.2) fails the paired criterion
    assert X.verdict(arm([1.0, 0.0, 1.0, 0.0, 0.0], [0.6] * 5), ppo) == ("not reproduced", False, False)
