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
        "c_svd_success_rate",
        "c_none_success_rate",
        "c_count_success_rate",
        "c_svd_coverage_auc",
        "c_env_steps_per_second",
        "c_svd_pseudo_count_spearman",
        "c_svd_visited_states",
        "d_history_hidden_acc",
        "d_last_obs_hidden_acc",
        # the untrained-network controls
        "b_untrained_spearman_elliptical",
        "d_untrained_history_hidden_acc",
        "d_untrained_last_obs_hidden_acc",
    )
    for key in keys:
        assert key in m, key
    assert m["c_env_steps_per_second"] > 0
    assert 0.0 <= m["a_tabular_alignment"] <= 1.0 + 1e-9
    assert m["c_svd_coverage"] == pytest.approx(m["c_svd_visited_states"] / 103)  # a fraction of the free cells
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
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in open(d / "metrics.jsonl")]

    assert logged(killed) == logged(full) and len(logged(full)) == 4


def test_presets_and_validation():
    exp = get(NAME)
    tiny, quick, full = (X.SVDRepresentationsConfig.preset(s) for s in ("tiny", "quick", "full"))
    assert quick.seeds >= 5 and full.seeds >= quick.seeds > tiny.seeds
    assert full.c_total_steps > quick.c_total_steps > tiny.c_total_steps
    assert exp.make_config("quick", ["c_bonus_scale=0.1"]).c_bonus_scale == 0.1
    with pytest.raises(ValueError, match="unknown scale 'huge'"):
        X.SVDRepresentationsConfig.preset("huge")
    with pytest.raises(ValueError, match="b_bias must be in \\(0, 0.5\\), got 0.7"):
        X.SVDRepresentationsConfig(b_bias=0.7)
    with pytest.raises(ValueError, match="seeds must be >= 1, got 0"):
        X.SVDRepresentationsConfig(seeds=0)
    with pytest.raises(ValueError, match="parts=\\('e',\\) is not allowed"):
        X.SVDRepresentationsConfig(parts=("e",))
    with pytest.raises(ValueError, match="d_future=20 must be < d_episode_steps=20"):
        X.SVDRepresentationsConfig(d_future=20)


def test_rule_a_needs_both_factor_kinds_aligned():
    assert X.rule_a([0.995, 0.999], [0.96, 0.97]) == "pass"
    assert X.rule_a([0.995, 0.999], [0.90, 0.97]) == "partial"  # neural mean 0.935 < 0.95
    assert X.rule_a([0.98, 0.99], [0.99, 0.99]) == "fail"  # tabular mean 0.985 < 0.99


def test_rule_b_needs_a_high_mean_and_no_bad_seed():
    assert X.rule_b([0.96, 0.86]) == "pass"
    assert X.rule_b([0.95, 0.5]) == "partial"  # mean 0.725 >= 0.7, but one seed < 0.8
    assert X.rule_b([0.99, 0.79]) == "partial"  # mean 0.89 < 0.9
    assert X.rule_b([0.6, 0.7]) == "fail"


def test_rule_c_pairs_the_seeds_of_the_svd_and_no_bonus_arms():
    none_s, none_c = [0.0] * 5, [0.8] * 5
    assert X.rule_c([0.5] * 5, none_s, [0.9] * 5, none_c) == "pass"
    assert X.rule_c([0.0] * 5, none_s, [0.9] * 5, none_c) == "partial"  # coverage only
    assert X.rule_c([0.5] * 5, none_s, [0.7] * 5, none_c) == "partial"  # success only
    assert X.rule_c([0.0] * 5, none_s, [0.7] * 5, none_c) == "fail"
    # a mean gain carried by 2 of 5 seeds is not >= 60% of the pairs
    assert X.rule_c([1.0, 1.0, 0.0, 0.0, 0.0], none_s, [0.7] * 5, none_c) == "fail"


def test_rule_d_needs_the_history_gap_in_every_seed():
    assert X.rule_d([0.9, 0.45], [0.3, 0.3]) == "pass"
    assert X.rule_d([0.9, 0.35], [0.3, 0.3]) == "partial"  # the second seed's gap is 0.05
    assert X.rule_d([0.35, 0.35], [0.3, 0.3]) == "fail"


def test_overall_verdict_from_the_sub_verdicts():
    assert X.overall_verdict({"a": "pass", "b": "pass"}) == "reproduced"
    assert X.overall_verdict({"a": "fail", "b": "fail"}) == "not reproduced"
    assert X.overall_verdict({"a": "pass", "b": "fail"}) == "partial"
    assert X.overall_verdict({"a": "partial"}) == "partial"
