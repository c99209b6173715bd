"""The bams-multiscale experiment at tiny scale: a rule-based verdict, all variants reported, resume."""

import json

import pytest
import torch

from foresight.cli import main
from foresight.core import fs
from foresight.core.checkpoint import load_checkpoint, save_checkpoint
from foresight.core.registry import VERDICTS, get
from foresight.experiments.bams_multiscale import VARIANTS, BAMSMultiscaleConfig, verdict_from_scores

torch.set_num_threads(1)


def test_tiny_run_reports_every_variant_a_rule_based_verdict_and_resumes(tmp_path):
    out = tmp_path / "r"
    args = ["run", "bams-multiscale", "--scale", "tiny", "--out", str(out), "--no-progress", "--threads", "1"]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["verdict"] in VERDICTS and res["system"] == "BAMS / multi-task behaviour model"
    m = res["metrics"]
    assert m["data"] == "SYNTHETIC" and "SYNTHETIC" in res["notes"] and "SYNTHETIC" in res["protocol"]
    keys = ("multiscale", "short_only", "long_only")
    for k in keys:
        for g in ("sequence", "frame"):
            assert 0.0 <= m[f"{k}_{g}_f1"] <= 1.0
    # same size: the twins differ only in dilations
    assert len({m[f"{k}_params"] for k in keys}) == 1
    group = {v: {"sequence": m[f"{k}_sequence_f1"], "frame": m[f"{k}_frame_f1"]} for v, k in zip(VARIANTS, keys)}
    assert res["verdict"] == verdict_from_scores(group)[0]
    assert [row["representation"].split(" ")[0] for row in res["table"]] == [*VARIANTS, "raw", "oracle", "oracle"]
    # the oracle references (moving averages over the short and long RF) report sequence-level tasks only
    for w in (m["receptive_field_short"], m["receptive_field_long"]):
        assert 0.0 <= m[f"oracle_{w}_strain_f1"] <= 1.0 and 0.0 <= m[f"oracle_{w}_lights_f1"] <= 1.0
    for fig in res["figures"]:
        assert (out / "figures" / fig).stat().st_size > 0
    cfg = res["config"]
    probes = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted(x["variant"] for x in probes if x["phase"] == "probe") == sorted(VARIANTS * cfg["model_seeds"])

    # killed after the last checkpoint: resumes to the same numbers without retraining
    log = (out / "metrics.jsonl").read_text()
    resume = ["run", "bams-multiscale", "--resume", str(out), "--no-progress", "--threads", "1"]
    fs.set_state(out, "running")
    (out / "results.json").unlink()
    assert main(resume) == 0
    assert json.loads((out / "results.json").read_text())["metrics"] == m
    assert (out / "metrics.jsonl").read_text() == log

    # killed before the last variant was checkpointed: it is retrained to the same numbers, no line doubled
    path = out / "checkpoints" / "variants.safetensors"
    full = load_checkpoint(path)
    assert list(full["state"]["cells"]) == [f"{v}/seed=0" for v in VARIANTS]
    del full["state"]["cells"]["long-only/seed=0"]
    full["done"] = False
    full["metrics_lines"] = next(i for i, line in enumerate(log.splitlines()) if '"long-only"' in line)
    save_checkpoint(path, full)  # what the run had saved after short-only (RNG states aside)
    fs.set_state(out, "running")
    (out / "results.json").unlink()
    assert main(resume) == 0
    assert json.loads((out / "results.json").read_text())["metrics"] == m
    assert (out / "metrics.jsonl").read_text() == log


def test_verdict_rule():
    def g(ms, mf, ss, sf, ls, lf):
        return {
            "multiscale": {"sequence": ms, "frame": mf},
            "short-only": {"sequence": ss, "frame": sf},
            "long-only": {"sequence": ls, "frame": lf},
        }

    assert verdict_from_scores(g(0.9, 0.9, 0.5, 0.8, 0.8, 0.5))[0] == "reproduced"
    # better than each twin where it lacks a timescale, but the short twin wins frame-level: partial
    verdict, wins = verdict_from_scores(g(0.9, 0.7, 0.5, 0.8, 0.8, 0.5))
    assert verdict == "partial" and wins == {
        "sequence > short-only": True,
        "frame > long-only": True,
        "sequence > long-only": True,
        "frame > short-only": False,
    }
    assert verdict_from_scores(g(0.6, 0.9, 0.7, 0.8, 0.8, 0.5))[0] == "not reproduced"


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="short_base=4 must be < long_base=4"):
        BAMSMultiscaleConfig(short_base=4, long_base=4)
    with pytest.raises(ValueError, match="batch_size must be >= 2 .*, got 1"):
        BAMSMultiscaleConfig(batch_size=1)
    with pytest.raises(ValueError, match="clips must be >= 8"):
        BAMSMultiscaleConfig(clips=5)
    with pytest.raises(ValueError, match="crop=2000 exceeds frames=1800"):
        BAMSMultiscaleConfig(crop=2000)
    with pytest.raises(ValueError, match="training sequences of 90 frames are too short: the objectives need >= 101"):
        BAMSMultiscaleConfig(frames=90)
    cfg = BAMSMultiscaleConfig()
    assert cfg.encoder(cfg.short_base).receptive_field == 61
    assert get("bams-multiscale").make_config("tiny", ["steps=2"]).steps == 2
