"""The ggpi experiment: a tiny run end to end, a killed-and-resumed run, the config and the verdict rules."""

import json

import pytest

from foresight import cli
from foresight.core.registry import VERDICTS
from foresight.experiments import ggpi as X
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


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ggpi") / "r"
    assert cli.main(["run", "ggpi", "--scale", "tiny", "--out", str(out), "--no-progress"]) == 0
    return out


def test_ggpi_tiny_run(tiny_run):
    out = tiny_run
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
    # the overall verdict is the rule applied to the sub-verdicts
    assert res["verdict"] == X.overall_verdict(m["sub_verdicts"])
    # one table row per sub-claim, with the same columns
    assert len(res["table"]) == 7
    assert all(set(row) == {"sub-claim", "measured", "value", "verdict"} for row in res["table"])
    for fig in res["figures"]:
        assert (out / "figures" / fig).stat().st_size > 0
    assert "GGPI" in (out / "REPORT.md").read_text()


def test_ggpi_killed_and_resumed_ends_like_an_uninterrupted_run(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    real = X.nav_cell

    def killed(*a, **k):
        raise KeyboardInterrupt  # Ctrl-C after (a)-(c) were checkpointed, before (d) finished

    monkeypatch.setattr(X, "nav_cell", killed)
    assert cli.main(["run", "ggpi", "--scale", "tiny", "--out", str(out), "--no-progress"]) == 130
    assert not (out / "results.json").exists()
    monkeypatch.setattr(X, "grid_learned_cell", lambda *a, **k: pytest.fail("a finished unit was run again"))
    monkeypatch.setattr(X, "nav_cell", real)
    assert cli.main(["run", "ggpi", "--resume", str(out), "--no-progress"]) == 0
    full, resumed = (json.loads((d / "results.json").read_text()) for d in (tiny_run, out))
    assert resumed["metrics"] == full["metrics"] and resumed["verdict"] == full["verdict"]
    assert resumed["table"] == full["table"]
    # nothing was logged twice, nothing lost
    assert (out / "metrics.jsonl").read_text() == (tiny_run / "metrics.jsonl").read_text()


def test_ggpi_config_validation_names_the_value():
    with pytest.raises(ValueError, match="gamma must be in \\(0, 1\\), got 1.0"):
        GGPIConfig(gamma=1.0)
    with pytest.raises(ValueError, match="continue_prob must be in \\[0, 1\\], got 1.5"):
        GGPIConfig(continue_prob=1.5)
    with pytest.raises(ValueError, match="grid_goals=30 exceeds the 25 cells"):
        GGPIConfig(grid_size=5, grid_goals=30)
    with pytest.raises(ValueError, match="nav_tasks must be >= 1, got 0"):
        GGPIConfig(nav_tasks=0)
    with pytest.raises(ValueError, match="td_target_period must be >= 1, got 0"):
        GGPIConfig(td_target_period=0)
    for scale in ("tiny", "quick", "full"):
        assert isinstance(GGPIConfig.preset(scale), GGPIConfig)


# ------------------------------------------------------------------------------------------------
# the verdict rules, on hand-made numbers: each can pass and fail
# ------------------------------------------------------------------------------------------------


def test_composition_and_inequality_rules():
    assert X.composition_verdict(3e-16, 8e-15) == "reproduced"
    assert X.composition_verdict(3e-16, 2e-10) == "not reproduced"  # values off: not exact
    assert X.composition_verdict(1e-3, 0.0) == "not reproduced"
    assert X.inequality_verdict(0, -1e-12) == "reproduced"  # round-off is not a violation
    assert X.inequality_verdict(1, 0.0) == "not reproduced"
    assert X.inequality_verdict(0, -1e-6) == "not reproduced"  # a gridworld task violates it


def test_td_rule_requires_convergence_of_tabular_and_target_net_learners():
    good = {"tabular, no target net": (0.9, 0.05), "tabular, target net": (0.9, 0.1), "neural, Polyak": (0.8, 0.12)}
    free = {X.NEURAL_FREE: (0.8, 0.7)}  # the contrast learner may fail
    assert X.td_verdict({**good, **free}, 1e-14) == "reproduced"
    assert X.td_verdict({**good, **free}, 1e-8) == "not reproduced"  # the fixed point is not the closed form
    # the neural learner with a target net misses: tabular-only evidence is partial
    assert X.td_verdict({**good, "neural, Polyak": (0.8, 0.3)}, 1e-14) == "partial"
    # small but not 5x below its start: not converged
    assert X.td_verdict({**good, "neural, Polyak": (0.12, 0.1)}, 1e-14) == "partial"
    assert X.td_verdict({**good, "tabular, no target net": (0.9, 0.5)}, 1e-14) == "not reproduced"


def test_improvement_rule_needs_the_confidence_interval_above_zero():
    gpi = [0.5, 0.6, 0.7, 0.4, 0.5, 0.6]
    verdict, ci = X.improvement_verdict([g + d for g, d in zip(gpi, [0.10, 0.12, 0.08, 0.11, 0.09, 0.10])], gpi)
    assert verdict == "reproduced" and ci.low > 0 and ci.n == 6
    # positive on the mean but noisy: partial
    assert X.improvement_verdict([g + d for g, d in zip(gpi, [0.5, -0.3, 0.4, -0.35, 0.1, -0.2])], gpi)[0] == "partial"
    assert X.improvement_verdict(gpi, [g + 0.1 for g in gpi])[0] == "not reproduced"
    # two pairs: the Student-t interval (t₀.₉₇₅,₁ = 12.7) is far wider than a normal one
    assert X.improvement_verdict([1.1, 1.3], [1.0, 1.0])[0] == "partial"


def test_overall_rule():
    subs = dict.fromkeys(("a", "theorem", "b", "c_exact", "c_learned", "d"), "reproduced")
    assert X.overall_verdict(subs) == "reproduced"
    assert X.overall_verdict({**subs, "d": "not reproduced", "b": "partial"}) == "partial"
    for core in ("a", "theorem", "c_exact"):
        assert X.overall_verdict({**subs, core: "not reproduced"}) == "not reproduced"
