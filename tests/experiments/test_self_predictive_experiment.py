"""The self-predictive experiment at tiny scale: a valid verdict from the rule, sub-claim rows, figures, resume."""

import json

import pytest

from foresight.cli import main
from foresight.core.registry import VERDICTS, get
from foresight.experiments import self_predictive as X
from foresight.experiments.self_predictive import SelfPredictiveConfig


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sp") / "r"
    assert main(["run", "self-predictive", "--scale", "tiny", "--out", str(out), "--no-progress"]) == 0
    return out


def test_tiny_run_writes_a_valid_result(tiny_run):
    res = json.loads((tiny_run / "results.json").read_text())
    assert res["verdict"] in VERDICTS
    assert res["system"] == "Self-predictive learning"
    subs = [row["sub-verdict"] for row in res["table"]]
    assert len(res["table"]) == 4 and all(v in VERDICTS for v in subs)
    # the overall verdict follows the stated rule from the sub-verdicts
    expected = (
        "reproduced"
        if subs.count("reproduced") == 4
        else "not reproduced"
        if subs.count("not reproduced") == 4
        else "partial"
    )
    assert res["verdict"] == expected
    m = res["metrics"]
    for key in (
        "a_semi_optimal_drift_max",
        "b_eigen_subspace_frac",
        "b_top_abs_frac",
        "b_extremal_frac",
        "c_bi_phi_U_mean",
        "c_bi_psi_V_mean",
        "c_byol_U_mean",
        "d_ode_alignment_mean",
        "d_alignment_mean[onehot]",
        "a_collapse_frac[full gradient + optimal P*]",
    ):
        assert key in m, key
    # the idealised claims are exact enough to hold even at tiny scale
    assert m["a_semi_optimal_drift_max"] < 1e-6
    assert m["a_collapse_frac[full gradient + optimal P*]"] == 1.0
    assert m["c_bi_phi_U_mean"] > 0.99 and m["c_bi_psi_V_mean"] > 0.99
    for fig in res["figures"]:
        assert (tiny_run / "figures" / fig).stat().st_size > 1000
    report = (tiny_run / "REPORT.md").read_text()
    assert "(a) non-collapse" in report and "Notes." in report


def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    real = X.deep_cell

    def killed(*a, **k):
        raise KeyboardInterrupt  # Ctrl-C after (a)-(c) and the ODE reference were checkpointed

    monkeypatch.setattr(X, "deep_cell", killed)
    assert main(["run", "self-predictive", "--scale", "tiny", "--out", str(out), "--no-progress"]) == 130
    assert not (out / "results.json").exists()
    for unit in ("non_collapse_unit", "spectral_unit", "bidirectional_unit", "deep_ode_unit"):
        monkeypatch.setattr(X, unit, lambda *a, **k: pytest.fail("a finished unit was run again"))
    monkeypatch.setattr(X, "deep_cell", real)
    assert main(["run", "self-predictive", "--resume", str(out), "--no-progress"]) == 0
    full, resumed = (json.loads((d / "results.json").read_text()) for d in (tiny_run, out))
    assert resumed["metrics"] == full["metrics"] and resumed["table"] == full["table"]
    # nothing was logged twice, nothing lost
    assert (out / "metrics.jsonl").read_text() == (tiny_run / "metrics.jsonl").read_text()


def test_config_validation_names_the_value():
    with pytest.raises(ValueError, match="k=6 must be < num_states=6"):
        SelfPredictiveConfig(num_states=6, k=6)
    with pytest.raises(ValueError, match="collapse_ratio must be in \\(0, 1\\), got 1.5"):
        SelfPredictiveConfig(collapse_ratio=1.5)
    with pytest.raises(ValueError, match="deep_obs=.*'rgb'.* is not allowed"):
        SelfPredictiveConfig(deep_obs=("rgb",))
    with pytest.raises(ValueError, match="slow_predictor_rate=10.0 must be <"):
        SelfPredictiveConfig(slow_predictor_rate=10.0, fast_predictor_rate=1.0)
    assert get("self-predictive").make_config("tiny", ["num_mdps=3"]).num_mdps == 3


def test_sub_verdict_rules_follow_the_numbers():
    cfg = SelfPredictiveConfig()
    # (a) the invariant is the heart of the claim; the collapse contrasts complete it
    collapsed = {"semi": 0.0, "full": 1.0, "slow": 0.6, "fast": 0.0, "sgd_semi": 0.0, "sgd_full": 0.95}
    assert X.non_collapse_verdict(1e-9, collapsed, 1e-6)[0] == "reproduced"
    assert X.non_collapse_verdict(1e-9, {**collapsed, "slow": 0.2}, 1e-6)[0] == "partial"
    assert X.non_collapse_verdict(1e-9, {**collapsed, "sgd_full": 0.5}, 1e-6)[0] == "partial"
    assert X.non_collapse_verdict(1e-3, collapsed, 1e-6)[0] == "not reproduced"  # ΦᵀΦ drifted
    assert X.non_collapse_verdict(1e-9, {**collapsed, "semi": 0.05}, 1e-6)[0] == "not reproduced"
    assert X.non_collapse_verdict(float("nan"), collapsed, 1e-6)[0] == "not reproduced"  # diverged
    # (b)
    assert X.spectral_verdict(0.95, cfg.clean_threshold)[0] == "reproduced"
    assert X.spectral_verdict(0.6, cfg.clean_threshold)[0] == "partial"
    assert X.spectral_verdict(0.2, cfg.clean_threshold)[0] == "not reproduced"
    # (c)
    assert X.bidirectional_verdict(0.995, 0.995, 0.6, 0.5, cfg.svd_threshold)[0] == "reproduced"
    # BYOL-Π as good as bidirectional: the contrast is missing, so only partial
    assert X.bidirectional_verdict(0.995, 0.995, 0.99, 0.5, cfg.svd_threshold)[0] == "partial"
    assert X.bidirectional_verdict(0.995, 0.995, 0.6, 0.5, 0.999)[0] == "partial"
    assert X.bidirectional_verdict(0.995, 0.7, 0.6, 0.5, cfg.svd_threshold)[0] == "not reproduced"
    # (d) against the ODE's alignment, never below 0.95
    assert X.deep_verdict({"onehot": 0.97, "pixels": 0.96}, 0.99, 0.05)[0] == "reproduced"
    assert X.deep_verdict({"onehot": 0.97, "pixels": 0.93}, 0.96, 0.05)[0] == "partial"  # 0.95 floor
    assert X.deep_verdict({"onehot": 0.97, "pixels": 0.5}, 0.99, 0.05)[0] == "not reproduced"
    # overall
    assert X.overall_verdict(["reproduced"] * 4) == "reproduced"
    assert X.overall_verdict(["reproduced", "partial", "not reproduced", "reproduced"]) == "partial"
    assert X.overall_verdict(["not reproduced"] * 4) == "not reproduced"
