import json

import pytest
import torch

from digits_data import digits_data_root
from foresight.cli import main
from foresight.core import fs
from foresight.core.registry import VERDICTS
from foresight.experiments.gemini1_multimodal import SPECIALISTS, Gemini1MultimodalConfig, rule, verdict
from foresight.lm.mm_data import CHANCE, TASKS

torch.set_num_threads(1)


_data_root = digits_data_root


def _unfinish(out):
    """Make ``out`` look like a run killed before it wrote its results."""
    fs.set_state(out, "running")
    (out / "results.json").unlink()


def _log(out):
    """metrics.jsonl without the wall-clock field."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in x.items() if k != "tokens_per_s"} for x in lines]


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="tolerance and composite_min must be in"):
        Gemini1MultimodalConfig(tolerance=1.5).validate()
    with pytest.raises(ValueError, match="patch_size 3 must divide image_size 8"):
        Gemini1MultimodalConfig(patch_size=3).validate()
    with pytest.raises(ValueError, match=r"audio_takes must be in \(5, 50\] .*, got 5"):
        Gemini1MultimodalConfig(audio_takes=5).validate()
    with pytest.raises(ValueError, match="steps must be >= 1"):
        Gemini1MultimodalConfig(steps=0).validate()
    for scale in ("tiny", "quick", "full"):
        Gemini1MultimodalConfig.preset(scale).validate()
    assert Gemini1MultimodalConfig.preset("tiny").model_config().tokens_per_image == 16


def test_verdict_rule():
    spec = {t: {u: 0.0 for u in TASKS} for t in SPECIALISTS}
    for t in SPECIALISTS:
        spec[t][t] = 0.9
    good = {"joint": {"image": 0.86, "audio": 0.9, "text": 0.95, "composite": 0.6}, **spec}
    assert verdict(good, 0.05, 0.5) == ("reproduced", dict.fromkeys(
        ("joint_within_image", "joint_within_audio", "joint_within_text", "composite_above_bar"), True
    ))  # fmt: skip
    worse = {**good, "joint": {**good["joint"], "image": 0.84}}  # trails the image specialist by 0.06 > 0.05
    v, checks = verdict(worse, 0.05, 0.5)
    assert v == "partial" and not checks["joint_within_image"] and checks["composite_above_bar"]
    assert verdict(worse, 0.1, 0.5)[0] == "reproduced"  # a wider tolerance admits it
    low = {**good, "joint": {**good["joint"], "composite": 0.45}}  # below composite_min = 0.5
    assert verdict(low, 0.05, 0.5)[1]["composite_above_bar"] is False
    # the bar is at least 5 x chance: with chance 0.15 it is 0.75, above composite_min, and 0.6 falls short
    assert not verdict(good, 0.05, 0.5, chance=0.15)[1]["composite_above_bar"]
    none = {"joint": {t: 0.1 for t in TASKS}, **spec}
    assert verdict(none, 0.05, 0.5)[0] == "not reproduced"
    assert "5 x chance 0.1" in rule(0.05, 0.5, CHANCE["composite"]) and "- 0.05" in rule(0.05, 0.5)


def test_tiny_run_reports_a_rule_based_verdict_and_resumes(tmp_path):
    out = tmp_path / "r"
    args = [
        "run",
        "gemini1-multimodal",
        "--scale",
        "tiny",
        "--out",
        str(out),
        "--no-progress",
        "--threads",
        "1",
        "--data-dir",
        str(_data_root()),
    ]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["verdict"] in VERDICTS and res["system"] == "Gemini 1.0"
    m = res["metrics"]
    cfg = Gemini1MultimodalConfig.from_dict(res["config"])
    acc = {k: {t: m[f"{k}_acc_{t}"] for t in TASKS} for k in ("joint", *SPECIALISTS)}
    want, checks = verdict(acc, cfg.tolerance, cfg.composite_min, CHANCE["composite"])
    assert res["verdict"] == want and all(m[k] == v for k, v in checks.items())
    assert res["rule"] == rule(cfg.tolerance, cfg.composite_min, CHANCE["composite"])
    assert all(0.0 <= v <= 1.0 for a in acc.values() for v in a.values())
    for fig in res["figures"]:
        assert (out / "figures" / fig).stat().st_size > 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for phase in ("joint", *SPECIALISTS):
        steps = [x for x in lines if x.get("phase") == phase and "loss" in x]
        assert len(steps) == cfg.steps and all("answer_acc" in x for x in steps)
    assert {x["model"] for x in lines if x.get("phase") == "eval"} == {"joint", *SPECIALISTS}

    # killed before the last training's first checkpoint (the eval phase lost too): the finished trainings are
    # read back, not rerun (their lines, wall-clock field included, stay byte for byte); the lost one is
    # retrained to the same numbers, eval re-measured, no line doubled
    text = (out / "metrics.jsonl").read_text().splitlines()
    kept = text[: next(i for i, x in enumerate(text) if json.loads(x).get("phase") == "text")]
    assert {json.loads(x)["phase"] for x in kept} == {"joint", "image", "audio"}
    (out / "checkpoints" / "eval.safetensors").unlink()
    (out / "checkpoints" / "text.safetensors").unlink()
    _unfinish(out)
    log = _log(out)
    resume = ["run", "gemini1-multimodal", "--resume", str(out), "--no-progress", "--threads", "1"]
    assert main([*resume, "--data-dir", str(_data_root())]) == 0
    assert json.loads((out / "results.json").read_text())["metrics"] == m
    assert _log(out) == log
    assert (out / "metrics.jsonl").read_text().splitlines()[: len(kept)] == kept
