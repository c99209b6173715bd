import json

import pytest

from foresight.cli import main
from foresight.core import fs
from foresight.core.registry import VERDICTS
from foresight.core.stats import paired_ci
from foresight.experiments.gemma2_ablations import (
    RULE,
    Gemma2AblationsConfig,
    depth_rule,
    distillation_rule,
    gqa_rule,
    overall,
    window_rule,
)


def test_tiny_scale_runs_every_ablation_follows_its_rules_and_resumes_without_retraining(tmp_path):
    out = tmp_path / "r"
    args = ["run", "gemma2-ablations", "--scale", "tiny", "--out", str(out), "--no-progress", "--threads", "1"]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    m, cfg = res["metrics"], res["config"]
    assert res["verdict"] in VERDICTS and res["rule"] == RULE
    seeds = cfg["seeds"]
    # every per-seed number is there, and the verdicts follow from them by the stated rules
    ntp = {k[len("ntp_val_nll_") :]: v for k, v in m.items() if k.startswith("ntp_val_nll_")}
    kd = {k[len("kd_val_nll_") :]: v for k, v in m.items() if k.startswith("kd_val_nll_")}
    assert len(ntp) == len(cfg["student_widths"]) and all(len(v) == len(seeds) for v in ntp.values())
    assert m["verdict_distillation"] == distillation_rule(ntp, kd)[0]
    ppl = {k: m[f"window_ppl_{k}"] for k in ("W", "W/2", "W/4", "1", "global")}
    changes = {k: [a / b - 1 for a, b in zip(ppl[k], ppl["W"], strict=True)] for k in ("W/2", "W/4", "1")}
    assert m["verdict_window"] == window_rule(changes, cfg["window_margin"])[0]
    assert m["verdict_gqa"] == gqa_rule(m["val_nll_deep_gqa"], m["val_nll_deep_mha"], cfg["gqa_margin"])[0]
    assert m["verdict_depth"] == depth_rule(m["val_nll_wide_gqa"], m["val_nll_deep_gqa"])[0]
    verdicts = [m[f"verdict_{k}"] for k in ("distillation", "window", "gqa", "depth")]
    assert res["verdict"] == overall(verdicts)
    # the twins are what the paper compares: MHA has more parameters, wide matches deep within tolerance
    assert m["params_deep_mha"] > m["params_deep_gqa"]
    assert abs(m["params_wide_gqa"] - m["params_deep_gqa"]) <= cfg["param_tolerance"] * m["params_deep_gqa"]
    # the deep model at its trained window is the deep model's own validation number
    assert m["window_ppl_W"] == pytest.approx([2.718281828459045**x for x in m["val_nll_deep_gqa"]], rel=1e-9)
    assert len(res["tables"]) == 4 and all(rows for rows in res["tables"].values())
    report = (out / "REPORT.md").read_text()
    assert all(f"Table {t} " in report for t in (7, 8, 9, 10)) and "23 → 21" in report  # the paper's numbers
    for fig in res["figures"]:
        assert (out / "figures" / fig).stat().st_size > 0
    log = (out / "metrics.jsonl").read_text()
    phases = {json.loads(x).get("phase") for x in log.splitlines()}
    expected = {f"{arm}-d{w}-s{s}" for arm in ("ntp", "kd") for w in cfg["student_widths"] for s in seeds}
    expected |= {f"{arm}-s{s}" for arm in ("deep", "deep-mha", "wide") for s in seeds} | {"teacher"}
    assert phases == expected

    # killed after every training but before the results: nothing is retrained, the numbers are identical
    fs.set_state(out, "running")
    (out / "results.json").unlink()
    assert main(["run", "gemma2-ablations", "--resume", str(out), "--no-progress", "--threads", "1"]) == 0
    assert json.loads((out / "results.json").read_text())["metrics"] == m
    assert (out / "metrics.jsonl").read_text() == log


def test_distillation_rule_needs_the_interval_above_zero_at_every_size():
    ntp = {"60k": [4.0, 4.1, 4.05], "190k": [3.8, 3.9, 3.85]}
    better = {"60k": [3.9, 4.0, 3.96], "190k": [3.7, 3.8, 3.74]}
    assert distillation_rule(ntp, better)[0] == "reproduced"
    mixed = {"60k": [3.9, 4.0, 3.96], "190k": [3.7, 4.0, 3.9]}  # one size's gain is within noise
    verdict, cis = distillation_rule(ntp, mixed)
    assert verdict == "partial" and cis["190k"].low <= 0 < cis["60k"].low
    assert distillation_rule(ntp, ntp)[0] == "not reproduced"  # a zero difference is no gain


def test_window_rule_needs_small_changes_and_a_control_that_moves():
    small, control = [0.001, 0.002, 0.0015], [0.2, 0.25, 0.22]
    assert window_rule({"W/2": small, "W/4": small, "1": control}, 0.01)[0] == "reproduced"
    big = [0.05, 0.06, 0.055]
    assert window_rule({"W/2": small, "W/4": big, "1": control}, 0.01)[0] == "partial"
    assert window_rule({"W/2": big, "W/4": big, "1": control}, 0.01)[0] == "not reproduced"
    # models that ignore context pass any "small change" test: the control makes the rule fail instead
    assert window_rule({"W/2": small, "W/4": small, "1": small}, 0.01)[0] == "not reproduced"


def test_gqa_rule_is_a_one_sided_bound_relative_to_the_mha_loss():
    mha = [4.00, 4.10, 4.05]
    assert gqa_rule([4.01, 4.11, 4.06], mha, 0.01)[0] == "reproduced"  # 0.01 worse, bound 0.0405
    assert gqa_rule([3.90, 4.00, 3.95], mha, 0.01)[0] == "reproduced"  # better is no worse
    assert gqa_rule([3.98, 4.18, 4.08], mha, 0.01)[0] == "partial"  # mean 0.03 worse, interval past 0.0405
    assert gqa_rule([4.10, 4.20, 4.15], mha, 0.01)[0] == "not reproduced"  # 0.1 worse


def test_depth_rule_and_the_overall_combination():
    deep = [4.0, 4.1, 4.05]
    verdict, ci = depth_rule([4.05, 4.16, 4.1], deep)
    assert verdict == "reproduced" and ci.mean == pytest.approx(paired_ci([4.05, 4.16, 4.1], deep).mean)
    assert depth_rule([4.0, 4.2, 4.07], deep)[0] == "partial"
    assert depth_rule([3.9, 4.0, 3.95], deep)[0] == "not reproduced"
    assert overall(["reproduced"] * 4) == "reproduced"
    assert overall(["not reproduced"] * 4) == "not reproduced"
    assert overall(["reproduced", "not reproduced", "not reproduced", "not reproduced"]) == "partial"
    assert overall(["partial", "not reproduced", "not reproduced", "not reproduced"]) == "partial"


def test_config_rejects_what_cannot_be_run_and_keeps_pilot_and_evaluation_seeds_apart():
    assert set(Gemma2AblationsConfig.preset("quick").seeds).isdisjoint(Gemma2AblationsConfig.preset("full").seeds)
    assert len(Gemma2AblationsConfig.preset("full").seeds) >= 3
    with pytest.raises(ValueError, match=r"seeds must be >= 2 distinct values .* got \(1, 1\)"):
        Gemma2AblationsConfig(seeds=(1, 1)).validate()
    with pytest.raises(ValueError, match="width 40 is not a multiple of head_dim=16"):
        Gemma2AblationsConfig(student_widths=(32, 40)).validate()
    with pytest.raises(ValueError, match="window_margin must be in"):
        Gemma2AblationsConfig(window_margin=0.0).validate()
