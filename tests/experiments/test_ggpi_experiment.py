"""The ggpi experiment at tiny scale: runs end to end, writes a verdict, figures and the expected metrics."""

import json

import pytest

from foresight import cli
from foresight.core.registry import VERDICTS
from foresight.experiments.ggpi import GGPIConfig

METRIC_KEYS = (
    "composition_max_error",
    "composition_q_error",
    "theorem_violations_closed",
    "theorem_violations_open",
    "grid_theorem_worst_margin",
    "td_fixed_point_error",
    "td_final_tv",
    "grid_exact_ggpi_minus_gpi",
    "grid_learned_ggpi_minus_gpi",
    "nav_ggpi_minus_gpi",
    "nav_value_rel_error",
    "sub_verdicts",
)


def test_ggpi_tiny_run(tmp_path):
    out = tmp_path / "r"
    assert cli.main(["run", "ggpi", "--scale", "tiny", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["verdict"] in VERDICTS
    for key in METRIC_KEYS:
        assert key in res["metrics"], key
    m = res["metrics"]
    # exact parts hold at any scale: composition at machine precision, no theorem violation
    assert m["composition_max_error"] < 1e-10 and m["composition_q_error"] < 1e-10
    assert m["theorem_violations_closed"] == 0
    assert m["grid_theorem_worst_margin"] >= -1e-9
    assert m["td_fixed_point_error"] < 1e-10
    assert m["sub_verdicts"]["a"] == "reproduced"
    # one table row per sub-claim, with the same columns
    assert len(res["table"]) == 7
    assert all(set(row) == {"sub-claim", "measured", "value", "verdict"} for row in res["table"])
    for fig in res["figures"]:
        assert (out / "figures" / fig).stat().st_size > 0
    assert "GGPI" in (out / "REPORT.md").read_text()


def test_ggpi_resume_reuses_finished_stages(tmp_path):
    out = tmp_path / "r"
    assert cli.main(["run", "ggpi", "--scale", "tiny", "--out", str(out), "--no-progress"]) == 0
    first = json.loads((out / "results.json").read_text())
    log = (out / "metrics.jsonl").read_text()
    (out / "results.json").unlink()
    assert cli.main(["run", "ggpi", "--resume", str(out), "--no-progress"]) == 0
    second = json.loads((out / "results.json").read_text())
    # every stage came from the checkpoint: nothing was re-run, so nothing was logged again
    assert (out / "metrics.jsonl").read_text() == log
    assert second["metrics"]["grid_exact_ggpi_minus_gpi"] == first["metrics"]["grid_exact_ggpi_minus_gpi"]
    assert second["metrics"]["nav_ggpi_minus_gpi"] == first["metrics"]["nav_ggpi_minus_gpi"]


def test_ggpi_config_validation_names_the_value():
    with pytest.raises(ValueError, match="gamma must be in \\(0, 1\\), got 1.0"):
        GGPIConfig(gamma=1.0)
    with pytest.raises(ValueError, match="continue_prob must be in \\[0, 1\\], got 1.5"):
        GGPIConfig(continue_prob=1.5)
    with pytest.raises(ValueError, match="grid_goals=30 exceeds the 25 cells"):
        GGPIConfig(grid_size=5, grid_goals=30)
    with pytest.raises(ValueError, match="nav_tasks must be >= 1, got 0"):
        GGPIConfig(nav_tasks=0)
    for scale in ("tiny", "quick", "full"):
        assert isinstance(GGPIConfig.preset(scale), GGPIConfig)
