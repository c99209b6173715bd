import json

import pytest
import torch

from foresight.cli import main
from foresight.core import fs
from foresight.core.checkpoint import load_checkpoint, save_checkpoint
from foresight.core.registry import VERDICTS
from foresight.core.stats import paired_ci
from foresight.experiments.gemini15_moe import CONTROL_MAX, RECALL_BAR, Gemini15MoEConfig, verdict

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
    T, seeds = cfg["seq_len"], cfg["seeds"]
    # the verdict follows the stated rule from the reported numbers
    ci = paired_ci(m["dense_val_nll_by_seed"], m["moe_val_nll_by_seed"])
    assert m["dense_minus_moe_nll_ci95"] == pytest.approx([ci.low, ci.high])
    a = ci.low > 0
    b = m["moe_niah_min_cell_in_range"] >= 0.99 and m["control_niah_recall_in_range"] <= CONTROL_MAX
    assert (m["claim_a_lower_nll"], m["claim_b_niah"]) == (a, b)
    assert res["verdict"] == ("reproduced" if a and b else "partial" if a or b else "not reproduced")
    assert len(m["moe_val_nll_by_seed"]) == len(seeds) >= 2
    # compute matching: k experts of width F / k per token = the dense twin + one router per block
    assert m["moe_active_params"] == m["dense_params"] + cfg["layers"] * cfg["hidden"] * cfg["num_experts"]
    assert m["moe_params"] > m["moe_active_params"]
    # equal tokens: both stages of the schedule, the same for both models
    c = Gemini15MoEConfig.from_dict(cfg)
    assert m["train_tokens"] == sum(st.steps * st.batch_size * st.seq_len for st in c.stages())
    # the NIAH grid: powers of two up to niah_max_length, the longer ones reported as extrapolation
    lengths = c.grid_lengths()
    assert max(lengths) == cfg["niah_max_length"] and any(L <= T for L in lengths)
    for L in lengths:
        assert 0.0 <= m[f"moe_niah_recall_{L}"] <= 1.0 and f"dense_niah_recall_{L}" in m
    assert m["moe_longest_context_at_bar"] in (0, *lengths)
    assert f"moe_cum_nll_at_{max(lengths)}" in m and f"dense_cum_nll_at_{T}" in m
    assert "nll_by_position.png" in res["figures"]
    for fig in res["figures"]:
        assert (out / "figures" / fig).stat().st_size > 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for seed in seeds:
        for i, stage in enumerate(c.stages()):
            moe_steps = [x for x in lines if x.get("phase") == f"moe-seed{seed}-stage{i}" and "loss" in x]
            assert len(moe_steps) == stage.steps  # one line per step with the router diagnostics
            for x in moe_steps:
                assert {"aux_loss", "z_loss", "expert_fraction_min", "expert_fraction_max"} <= set(x)
                assert x["expert_fraction_min"] <= 1 / cfg["num_experts"] <= x["expert_fraction_max"]
                # loss = ce + w * answer_ce + moe_loss
                want = x["ce"] + cfg["answer_weight"] * x["answer_ce"] + x["moe_loss"]
                assert x["loss"] == pytest.approx(want, rel=1e-5)
            dense_steps = [x for x in lines if x.get("phase") == f"dense-seed{seed}-stage{i}" and "loss" in x]
            assert len(dense_steps) == stage.steps and all("aux_loss" not in x for x in dense_steps)
    niah_lines = [x for x in lines if x.get("phase") == "niah"]
    assert {x["length"] for x in niah_lines if x["model"] != "control"} == set(lengths)
    assert {x["length"] for x in niah_lines if x["model"] == "control"} == {L for L in lengths if L <= T}

    # killed in the NIAH sweep after its first grid: every training is read back, not rerun (their lines, the
    # wall-clock field included, stay byte for byte); the other grids, curves and expert load are measured
    # again, no line is doubled and the numbers are those of the uninterrupted run
    text = (out / "metrics.jsonl").read_text().splitlines()
    niah = [i for i, x in enumerate(text) if json.loads(x).get("phase") == "niah"]
    path = out / "checkpoints" / "niah.safetensors"
    full = load_checkpoint(path)
    cells = list(full["state"]["cells"])
    assert cells == [f"{m}/seed={s}" for s in seeds for m in ("dense", "moe")] + ["control"]
    second = next(i for i in niah if json.loads(text[i])["model"] == cells[1])
    full["state"]["cells"] = {cells[0]: full["state"]["cells"][cells[0]]}
    full["done"], full["metrics_lines"] = False, second  # what the sweep saved after its first cell
    save_checkpoint(path, full)
    for name in ("nll-by-position", "expert-load"):
        (out / "checkpoints" / f"{name}.safetensors").unlink()
    _unfinish(out)
    log = _log(out)
    resume = ["run", "gemini15-moe", "--resume", str(out), "--no-progress", "--threads", "1"]
    assert main(resume) == 0
    assert json.loads((out / "results.json").read_text())["metrics"] == m
    assert _log(out) == log
    assert (out / "metrics.jsonl").read_text().splitlines()[: niah[0]] == text[: niah[0]]

    # killed before the last training's (the last seed's MoE, stage 2) first checkpoint: it is retrained from
    # the stage-1 model, the grids re-measured, no line doubled, the same numbers
    last = f"moe-seed{seeds[-1]}-stage1"
    for name in (last, "niah", "nll-by-position", "expert-load"):
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
    with pytest.raises(ValueError, match=r"seeds must be >= 2 distinct values .*got \(0,\)"):
        Gemini15MoEConfig(seeds=(0,))
    with pytest.raises(ValueError, match=r"seeds must be >= 2 distinct values .*got \(1, 1\)"):
        Gemini15MoEConfig(seeds=(1, 1))
    with pytest.raises(ValueError, match=r"short_seq_len=2048 must be in \[1, seq_len=1024\]"):
        Gemini15MoEConfig(short_seq_len=2048)
    with pytest.raises(ValueError, match="need 0 < short_rope_theta <= rope_theta, got 100000.0, 10000.0"):
        Gemini15MoEConfig(short_rope_theta=1e5, rope_theta=1e4)
    # a log grid: powers of two from the shortest that holds a probe (85 characters) to niah_max_length
    assert Gemini15MoEConfig(seq_len=256, niah_max_length=1024).grid_lengths() == (128, 256, 512, 1024)
    assert Gemini15MoEConfig(seq_len=256, niah_max_length=0).grid_lengths() == (128, 256, 512, 1024)
    assert Gemini15MoEConfig().grid_lengths() == tuple(2**i for i in range(7, 16))  # 128 ... 32768
    s = Gemini15MoEConfig().stages()
    assert [st.seq_len for st in s] == [256, 1024] and s[1].rope_base > s[0].rope_base


def test_seed_lists_pilot_disjoint_from_evaluation():
    quick, full = Gemini15MoEConfig.preset("quick").seeds, Gemini15MoEConfig.preset("full").seeds
    assert len(quick) >= 3 and len(full) >= 3 and not set(quick) & set(full)


def test_verdict_rule_passes_and_fails_on_each_claim():
    dense, moe = [2.10, 2.12, 2.11], [2.00, 2.03, 2.01]  # the MoE lower at every seed by ~0.1
    cells, control = [1.0, 1.0, 0.99], [0.0, 0.0, 0.02]
    v, a, b, ci = verdict(dense, moe, cells, control)
    assert (v, a, b) == ("reproduced", True, True) and ci.low > 0 and ci.mean == pytest.approx(0.0967, abs=1e-3)
    assert verdict(moe, dense, cells, control)[:3] == ("partial", False, True)  # (a) fails: the MoE is higher
    assert verdict(dense, dense, cells, control)[:3] == ("partial", False, True)  # equal NLL is not lower
    # (a) fails on a positive mean whose interval reaches below 0 (the edge flips sign with the seed)
    noisy = verdict([2.10, 2.00, 2.15], [2.00, 2.05, 2.05], cells, control)
    assert noisy[3].mean > 0 and noisy[3].low < 0 and noisy[:3] == ("partial", False, True)
    assert verdict(dense, moe, [1.0, 0.9, 1.0], control)[:3] == ("partial", True, False)  # one cell misses
    assert verdict(moe, dense, [1.0, 0.9], control)[:3] == ("not reproduced", False, False)
    assert verdict(dense, moe, [], control)[:3] == ("partial", True, False)  # no cell in range: (b) fails
    # the no-learning control: a control that retrieves means the probe cannot fail, so (b) does not hold
    assert verdict(dense, moe, cells, [0.2, 0.0, 0.0])[:3] == ("partial", True, False)
    assert verdict(dense, moe, cells, [])[:3] == ("partial", True, False)
    assert RECALL_BAR == 0.99 and CONTROL_MAX == 0.05
