import json

from foresight.cli import main
from foresight.core import fs
from foresight.core.registry import VERDICTS
from foresight.experiments.gemma2_distillation import RULE, verdict


def _log(out):
    """metrics.jsonl without the wall-clock field."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in x.items() if k != "tokens_per_s"} for x in lines]


def _unfinish(out):
    """Make ``out`` look like a run killed before it wrote its results."""
    fs.set_state(out, "running")
    (out / "results.json").unlink()


def test_tiny_scale_reports_both_curves_a_rule_based_verdict_and_resumes(tmp_path):
    out = tmp_path / "r"
    args = [
        "run",
        "gemma2-distillation",
        "--scale",
        "tiny",
        "--out",
        str(out),
        "--no-progress",
        "--threads",
        "1",
    ]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["verdict"] in VERDICTS
    m = res["metrics"]
    budgets = res["config"]["student_budgets"]
    for b in budgets:
        assert f"ntp_val_nll_{b}" in m and f"kd_val_nll_{b}" in m
    # the verdict follows the stated rule from the reported numbers
    wins = sum(m[f"kd_val_nll_{b}"] < m[f"ntp_val_nll_{b}"] for b in budgets)
    assert m["kd_wins"] == wins
    assert res["verdict"] == ("reproduced" if wins == len(budgets) else "partial" if wins else "not reproduced")
    assert res["rule"] == RULE
    assert m["teacher_params"] > m["student_params"]
    assert m["teacher_val_nll"] < min(m[f"ntp_val_nll_{b}"] for b in budgets)  # the teacher is the better model
    assert (out / "figures" / "val_nll_curves.png").stat().st_size > 0
    assert "teacher run online" in res["protocol"] and not (out / "teacher_topk").exists()
    metrics_text = (out / "metrics.jsonl").read_text()
    phases = {json.loads(x).get("phase") for x in metrics_text.splitlines()}
    assert phases == {"teacher", *(f"{k}-{b}" for k in ("ntp", "kd") for b in budgets)}

    # killed after every phase but before the results: each phase is read back, nothing retrained or re-logged
    _unfinish(out)
    resume = ["run", "gemma2-distillation", "--resume", str(out), "--no-progress", "--threads", "1"]
    assert main(resume) == 0
    assert json.loads((out / "results.json").read_text())["metrics"] == m
    assert (out / "metrics.jsonl").read_text() == metrics_text  # nothing retrained

    # killed before the last student's first checkpoint: it is retrained, its log lines are not doubled
    (out / "checkpoints" / f"kd-{budgets[-1]}.safetensors").unlink()
    _unfinish(out)
    log = _log(out)
    assert main(resume) == 0
    assert json.loads((out / "results.json").read_text())["metrics"] == m
    assert _log(out) == log


def test_verdict_rule_counts_strict_wins_per_budget():
    assert verdict([4.0, 3.9, 3.8], [4.1, 4.0, 3.9]) == ("reproduced", 3)
    assert verdict([4.0, 4.1, 3.8], [4.1, 4.0, 3.9]) == ("partial", 2)  # distillation loses at one budget
    assert verdict([4.1, 4.0], [4.1, 4.0]) == ("not reproduced", 0)  # ties are not wins
    assert verdict([4.2], [4.1]) == ("not reproduced", 0)
