import json

import pytest
import torch

from foresight.cli import main
from foresight.core import fs
from foresight.core.checkpoint import load_checkpoint, save_checkpoint
from foresight.core.registry import VERDICTS
from foresight.experiments.gemini15_moe import RECALL_BAR, Gemini15MoEConfig, verdict

torch.set_num_threads(1)


def _log(out):
    """metrics.jsonl without the wall-clock field."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in x.items() if k != "tokens_per_s"} for x in lines]


def _unfinish(out):
    """Make ``out`` look like a run killed before it wrote its results."""
    fs.set_state(out, "running")
    (out / "results.json").unlink()


def test_tiny_scale_reports_both_claims_a_rule_based_verdict_and_resumes(tmp_path):
    out = tmp_path / "r"
    args = ["run", "gemini15-moe", "--scale", "tiny", "--out", str(out), "--no-progress", "--threads", "1"]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["verdict"] in VERDICTS and res["system"] == "Gemini 1.5"
    m = res["metrics"]
    cfg = res["config"]
    T = cfg["seq_len"]
    # the verdict follows the stated rule from the reported numbers
    a = m["moe_val_nll"] < m["dense_val_nll"]
    b = m["moe_niah_min_cell_in_range"] >= 0.99
    assert (m["claim_a_lower_nll"], m["claim_b_niah"]) == (a, b)
    assert res["verdict"] == ("reproduced" if a and b else "partial" if a or b else "not reproduced")
    # compute matching: k experts of width F / k per token = the dense twin + one router per block
    assert m["moe_active_params"] == m["dense_params"] + cfg["layers"] * cfg["hidden"] * cfg["num_experts"]
    assert m["moe_params"] > m["moe_active_params"]
    # the NIAH grid covers lengths up to 4x the trained context, the longer ones reported as extrapolation
    lengths = Gemini15MoEConfig.from_dict(cfg).grid_lengths()
    assert max(lengths) == 4 * T and any(L <= T for L in lengths)
    for L in lengths:
        assert 0.0 <= m[f"moe_niah_recall_{L}"] <= 1.0 and f"dense_niah_recall_{L}" in m
    for fig in res["figures"]:
        assert (out / "figures" / fig).stat().st_size > 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    moe_steps = [x for x in lines if x.get("phase") == "moe" and "loss" in x]
    assert len(moe_steps) == cfg["steps"]  # one line per step with the router diagnostics
    for x in moe_steps:
        assert {"aux_loss", "z_loss", "expert_fraction_min", "expert_fraction_max", "dropped_fraction"} <= set(x)
        assert x["expert_fraction_min"] <= 1 / cfg["num_experts"] <= x["expert_fraction_max"]
        # both terms of the training loss are logged; loss = ce + w * answer_ce + moe_loss
        assert x["loss"] == pytest.approx(x["ce"] + cfg["answer_weight"] * x["answer_ce"] + x["moe_loss"], rel=1e-5)
    dense_steps = [x for x in lines if x.get("phase") == "dense" and "loss" in x]
    assert len(dense_steps) == cfg["steps"] and all("answer_ce" in x and "aux_loss" not in x for x in dense_steps)
    assert {x["length"] for x in lines if x.get("phase") == "niah"} == set(lengths)

    # killed in the NIAH sweep after the MoE's grid: both trainings are read back, not rerun (their lines, the
    # wall-clock field included, stay byte for byte); the dense grid and the expert load are measured, no line
    # is doubled and the numbers are those of the uninterrupted run
    text = (out / "metrics.jsonl").read_text().splitlines()
    niah = [i for i, x in enumerate(text) if json.loads(x).get("phase") == "niah"]
    dense_grid = next(i for i in niah if json.loads(text[i])["model"] == "dense")
    path = out / "checkpoints" / "niah.safetensors"
    full = load_checkpoint(path)
    assert list(full["state"]["cells"]) == ["moe", "dense"]
    full["state"]["cells"].pop("dense")
    full["done"], full["metrics_lines"] = False, dense_grid  # what the sweep saved after its first cell
    save_checkpoint(path, full)
    (out / "checkpoints" / "expert-load.safetensors").unlink()
    _unfinish(out)
    log = _log(out)
    resume = ["run", "gemini15-moe", "--resume", str(out), "--no-progress", "--threads", "1"]
    assert main(resume) == 0
    assert json.loads((out / "results.json").read_text())["metrics"] == m
    assert _log(out) == log
    assert (out / "metrics.jsonl").read_text().splitlines()[: niah[0]] == text[: niah[0]]

    # killed before the MoE's first checkpoint: it is retrained, the NIAH grid re-measured, no line doubled
    for name in ("moe", "niah", "expert-load"):
        (out / "checkpoints" / f"{name}.safetensors").unlink()
    _unfinish(out)
    log = _log(out)
    assert main(resume) == 0
    assert json.loads((out / "results.json").read_text())["metrics"] == m
    assert _log(out) == log


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="num_experts must be >= 2 for a sparse model, got 1"):
        Gemini15MoEConfig(num_experts=1)
    with pytest.raises(ValueError, match="niah_lengths entry 40 is shorter than a probe's 77 fixed characters"):
        Gemini15MoEConfig(niah_lengths=(40, 256))
    with pytest.raises(ValueError, match=r"gating='switch' is not allowed"):
        Gemini15MoEConfig(gating="switch")
    with pytest.raises(ValueError, match="intermediate=100 must be a multiple of top_k=3"):
        Gemini15MoEConfig(intermediate=100, top_k=3)
    with pytest.raises(ValueError, match="answer_weight must be >= 0, got -0.5"):
        Gemini15MoEConfig(answer_weight=-0.5)
    assert Gemini15MoEConfig(seq_len=256).grid_lengths() == (128, 256, 512, 1024)  # 64 cannot hold a probe


def test_verdict_rule_passes_and_fails_on_each_claim():
    cells = [1.0, 1.0, 0.99]
    assert verdict(2.0, 2.1, cells) == ("reproduced", True, True)
    assert verdict(2.1, 2.0, cells) == ("partial", False, True)  # (a) fails: the MoE's NLL is higher
    assert verdict(2.0, 2.0, cells) == ("partial", False, True)  # equal NLL is not lower
    assert verdict(2.0, 2.1, [1.0, 0.9, 1.0]) == ("partial", True, False)  # one cell misses one probe in ten
    assert verdict(2.1, 2.0, [1.0, 0.9]) == ("not reproduced", False, False)
    assert verdict(2.0, 2.1, []) == ("partial", True, False)  # no cell within the trained context: (b) fails
    assert RECALL_BAR == 0.99
