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
        "d_history_hidden_acc",
        "d_last_obs_hidden_acc",
    )
    for key in keys:
        assert key in m, key
    assert m["c_env_steps_per_second"] > 0
    assert 0.0 <= m["a_tabular_alignment"] <= 1.0 + 1e-9
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


def test_resume_reuses_finished_units(tmp_path, monkeypatch):
    out = tmp_path / "r"
    args = ["run", NAME, "--scale", "tiny", "--out", str(out), "--no-progress", "--set", "parts=d"]
    assert cli.main(args) == 0
    first = json.loads((out / "results.json").read_text())
    (out / "results.json").unlink()  # as if killed after the last checkpoint

    def boom(*a, **k):
        raise AssertionError("a finished unit was run again")

    monkeypatch.setattr(X, "part_d", boom)
    assert cli.main(["run", NAME, "--resume", str(out), "--no-progress"]) == 0
    second = json.loads((out / "results.json").read_text())
    assert second["metrics"] == first["metrics"]
    assert second["verdict"] == first["verdict"]


def test_presets_and_validation():
    exp = get(NAME)
    tiny, quick, full = (X.SVDRepresentationsConfig.preset(s) for s in ("tiny", "quick", "full"))
    assert quick.seeds >= 5 and full.seeds >= quick.seeds and tiny.workers == 1
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


def test_verdict_rules_on_hand_made_numbers():
    def arm(success, cover):
        return [{"success_rate": s, "coverage_auc": c} for s, c in zip(success, cover)]

    none = arm([0.0] * 5, [0.8] * 5)
    assert X._verdict_c({"none": none, "svd": arm([0.5] * 5, [0.9] * 5)}) == "pass"
    assert X._verdict_c({"none": none, "svd": arm([0.0] * 5, [0.9] * 5)}) == "partial"
    assert X._verdict_c({"none": none, "svd": arm([0.0] * 5, [0.7] * 5)}) == "fail"
    rows = [
        {"history_hidden_acc": 0.9, "last_obs_hidden_acc": 0.3},
        {"history_hidden_acc": 0.35, "last_obs_hidden_acc": 0.3},
    ]
    assert X._verdict_d(rows) == "partial"
    assert X._verdict_b([{"spearman_elliptical": 0.96}, {"spearman_elliptical": 0.86}]) == "pass"
    assert X._verdict_b([{"spearman_elliptical": 0.95}, {"spearman_elliptical": 0.5}]) == "partial"
