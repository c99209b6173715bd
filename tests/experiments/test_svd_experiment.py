"""The svd-representations experiment: a tiny end-to-end run, its config, and resuming from a checkpoint."""

import json

import pytest

from foresight import cli
from foresight.core.registry import VERDICTS, get
from foresight.experiments import svd_representations as X

NAME = "svd-representations"


def test_tiny_run_writes_a_verdict_table_and_figures(tmp_path):
    out = tmp_path / "r"
    assert cli.main(["run", NAME, "--scale", "tiny", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["verdict"] in VERDICTS
    assert res["system"] == "SVD representations"
    m = res["metrics"]
    keys = (
        "a_tabular_alignment",
        "a_neural_alignment",
        "a_tabular_max_angle_deg",
        "b_spearman_elliptical",
        "b_spearman_density_ratio",
        "b_spearman_norm_shortcut",
        "c_grid_svd_success_rate",
        "c_grid_none_success_rate",
        "c_grid_rnd_success_rate",
        "c_grid_count_success_rate",
        "c_grid_svd_coverage_auc",
        "c_grid_svd_cpu_seconds_per_cell",
        "c_env_steps_per_second",
        "c_grid_svd_pseudo_count_spearman",
        "c_grid_svd_visited_states",
        "c_grid_control_ci95",
        "c_grid_rival_ci95",
        "d_history_hidden_acc",
        "d_last_obs_hidden_acc",
        # the untrained-network controls
        "b_untrained_spearman_elliptical",
        "d_untrained_history_hidden_acc",
        "d_untrained_last_obs_hidden_acc",
        # the rules' paired intervals against them
        "b_trained_minus_untrained_ci95",
        "d_trained_minus_untrained_ci95",
        "d_history_minus_last_obs_ci95",
    )
    for key in keys:
        assert key in m, key
    assert m["c_env_steps_per_second"] > 0
    assert 0.0 <= m["a_tabular_alignment"] <= 1.0 + 1e-9
    assert m["c_grid_svd_coverage"] == pytest.approx(m["c_grid_svd_visited_states"] / 103)  # fraction of free cells
    assert (
        m["b_trained_minus_untrained_ci95"]["method"] == "bootstrap" and m["b_trained_minus_untrained_ci95"]["n"] == 2
    )
    assert set(m["sub_verdicts"]) == {"a", "b", "c", "d"}
    assert [row["sub-claim"][:3] for row in res["table"]] == ["(a)", "(b)", "(c)", "(d)"]
    assert all(row["sub-verdict"] in VERDICTS for row in res["table"])
    # the overall verdict follows from the sub-verdicts by the stated rule
    subs = set(m["sub_verdicts"].values())
    expected = "reproduced" if subs == {"reproduced"} else "not reproduced" if subs == {"not reproduced"} else "partial"
    assert res["verdict"] == expected
    for fig in res["figures"]:
        assert (out / "figures" / fig).stat().st_size > 1000
    assert "(a)" in (out / "REPORT.md").read_text()


def test_killed_and_resumed_ends_like_an_uninterrupted_run(tmp_path, monkeypatch):
    full, killed = tmp_path / "full", tmp_path / "killed"
    args = ["--scale", "tiny", "--no-progress", "--set", "parts=b,d", "--set", "b_samples=2000", "--set", "b_steps=20"]
    assert cli.main(["run", NAME, "--out", str(full), *args]) == 0
    part_d, calls = X.part_d, []

    def killed_at_the_second_seed(cfg, seed):
        calls.append(seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return part_d(cfg, seed)

    monkeypatch.setattr(X, "part_d", killed_at_the_second_seed)
    assert cli.main(["run", NAME, "--out", str(killed), *args]) == 130  # killed inside sweep (d)
    assert not (killed / "results.json").exists()
    monkeypatch.setattr(X, "part_d", part_d)
    monkeypatch.setattr(X, "part_b", lambda *a, **k: pytest.fail("a finished cell was run again"))
    assert cli.main(["run", NAME, "--resume", str(killed), "--no-progress"]) == 0
    assert len(calls) == 2  # the resume ran only the unfinished cell of (d)
    a, b = (json.loads((d / "results.json").read_text()) for d in (full, killed))
    assert a["metrics"] == b["metrics"] and a["verdict"] == b["verdict"] and a["table"] == b["table"]

    def logged(d):  # one line per finished cell, none doubled by the resume; timings differ between runs
        return [
            {k: v for k, v in json.loads(line).items() if not k.endswith("seconds")}
            for line in open(d / "metrics.jsonl")
        ]

    assert logged(killed) == logged(full) and len(logged(full)) == 4


def test_killed_and_resumed_exploration_sweep_ends_like_an_uninterrupted_run(tmp_path, monkeypatch):
    full, killed = tmp_path / "full", tmp_path / "killed"
    args = [
        "--scale",
        "tiny",
        "--no-progress",
        "--set",
        "parts=c",
        "--set",
        "c_arms=none,svd",
        "--set",
        "c_total_steps=1024",
    ]
    assert cli.main(["run", NAME, "--out", str(full), *args]) == 0
    part_c, calls = X.part_c, []

    def killed_at_the_third_cell(cfg, task, arm, seed):
        calls.append((task, arm, seed))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return part_c(cfg, task, arm, seed)

    monkeypatch.setattr(X, "part_c", killed_at_the_third_cell)
    assert cli.main(["run", NAME, "--out", str(killed), *args]) == 130
    assert cli.main(["run", NAME, "--resume", str(killed), "--no-progress"]) == 0
    assert len(calls) == 5  # the two finished cells were not run again
    a, b = (json.loads((d / "results.json").read_text()) for d in (full, killed))
    timing = ("steps_per_second", "seconds", "seconds_per_cell")
    untimed = [{k: v for k, v in r["metrics"].items() if not k.endswith(timing)} for r in (a, b)]
    assert untimed[0] == untimed[1] and a["verdict"] == b["verdict"]


def test_presets_and_validation():
    exp = get(NAME)
    tiny, quick, full = (X.SVDRepresentationsConfig.preset(s) for s in ("tiny", "quick", "full"))
    assert quick.seeds >= 5 and full.seeds >= 10 and quick.seeds > tiny.seeds
    assert full.c_total_steps > quick.c_total_steps > tiny.c_total_steps
    # pilot (quick, 100+) and evaluation (full, 0..N-1) seeds are disjoint, for every sub-claim
    assert not set(quick.seed_list) & set(full.seed_list) and min(quick.seed_list) >= 100
    assert full.seed_list == tuple(range(full.seeds))
    assert full.c_tasks == ("MiniGrid-MultiRoom-N4-S5-v1", "MiniGrid-KeyCorridorS3R2-v0")
    assert full.c_arms == ("none", "svd", "rnd") and quick.c_tasks == ("grid",) and "count" in quick.c_arms
    assert exp.make_config("quick", ["c_bonus_scale=0.1"]).c_bonus_scale == 0.1
    with pytest.raises(ValueError, match="unknown scale 'huge'"):
        X.SVDRepresentationsConfig.preset("huge")
    with pytest.raises(ValueError, match="b_bias must be in \\(0, 0.5\\), got 0.7"):
        X.SVDRepresentationsConfig(b_bias=0.7)
    with pytest.raises(ValueError, match="seed_list must hold distinct seeds, got \\(\\)"):
        X.SVDRepresentationsConfig(seed_list=())
    with pytest.raises(ValueError, match="c_arms must include 'none' and 'svd'"):
        X.SVDRepresentationsConfig(c_arms=("svd", "rnd"))
    with pytest.raises(ValueError, match="task 'Pong' is neither 'grid' nor a MiniGrid id"):
        X.SVDRepresentationsConfig(c_tasks=("Pong",))
    with pytest.raises(ValueError, match="parts=\\('e',\\) is not allowed"):
        X.SVDRepresentationsConfig(parts=("e",))
    with pytest.raises(ValueError, match="d_future=20 must be < d_episode_steps=20"):
        X.SVDRepresentationsConfig(d_future=20)


def test_rule_a_needs_both_factor_kinds_aligned():
    assert X.rule_a([0.995, 0.999], [0.96, 0.97]) == "pass"
    assert X.rule_a([0.995, 0.999], [0.90, 0.97]) == "partial"  # neural mean 0.935 < 0.95
    assert X.rule_a([0.98, 0.99], [0.99, 0.99]) == "fail"  # tabular mean 0.985 < 0.99


def test_rule_b_needs_the_trained_count_to_beat_the_untrained_network_by_the_margin():
    trained = [0.99, 0.98, 0.99, 0.985, 0.99]
    assert X.rule_b(trained, [0.90, 0.91, 0.92, 0.90, 0.91]) == "pass"
    # the untrained network is as good (the finding: 0.95 after one Adam step): not a pass
    assert X.rule_b(trained, [0.975, 0.97, 0.98, 0.97, 0.98]) == "partial"  # above it, by less than the margin
    assert X.rule_b(trained, trained) == "fail"
    assert X.rule_b([0.9] * 5, [0.95] * 5) == "fail"  # the control wins
    assert X.rule_b([0.8, 0.75, 0.8, 0.78, 0.8], [0.5] * 5) == "partial"  # well above control, mean < 0.9
    assert X.rule_b([0.6] * 5, [0.2] * 5) == "fail"  # mean < 0.7


def _c_arms(svd, none, rnd, svd_cover=(0.5,) * 6):
    def arm(success, cover=(0.5,) * 6):
        return {"final_success": list(success), "coverage": list(cover)}

    return {"svd": arm(svd, svd_cover), "none": arm(none), "rnd": arm(rnd)}


def test_rule_c_is_the_shared_exploration_rule_with_the_svd_bonus():
    solved, failed = [1.0, 0.9, 1.0, 0.8, 1.0, 0.9], [0.0] * 6
    assert X.rule_c({"t": _c_arms(solved, failed, failed)}) == "pass"
    assert X.rule_c({"t": _c_arms(solved, failed, solved)}) == "partial"  # RND does as well
    assert X.rule_c({"t": _c_arms(failed, failed, failed, svd_cover=[0.7] * 6)}) == "partial"  # coverage only
    assert X.rule_c({"t": _c_arms(failed, solved, failed)}) == "fail"  # the no-bonus control wins
    assert X.rule_c({"t": _c_arms([1.0] + [0.0] * 5, failed, failed)}) == "fail"  # one lucky seed


def test_rule_d_needs_the_history_gap_and_the_gain_over_the_untrained_gru():
    hist, last = [0.9, 0.85, 0.9, 0.88], [0.3, 0.3, 0.32, 0.3]
    assert X.rule_d(hist, last, [0.5, 0.5, 0.52, 0.5]) == "pass"
    # the untrained GRU already separates the hidden states (the finding): partial
    assert X.rule_d(hist, last, [0.88, 0.85, 0.86, 0.87]) == "partial"
    assert X.rule_d([0.35] * 4, [0.3] * 4, [0.3] * 4) == "fail"
    assert X.rule_d([0.3] * 4, [0.6] * 4, [0.6] * 4) == "fail"  # the last observation wins


def test_overall_verdict_from_the_sub_verdicts():
    assert X.overall_verdict({"a": "pass", "b": "pass"}) == "reproduced"
    assert X.overall_verdict({"a": "fail", "b": "fail"}) == "not reproduced"
    assert X.overall_verdict({"a": "pass", "b": "fail"}) == "partial"
    assert X.overall_verdict({"a": "partial"}) == "partial"
