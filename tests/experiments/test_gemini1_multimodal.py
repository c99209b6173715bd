import json

import pytest
import torch

from digits_data import digits_data_root
from foresight.cli import main
from foresight.core.registry import VERDICTS
from foresight.experiments.gemini1_multimodal import SPECIALISTS, Gemini1MultimodalConfig, _verdict
from foresight.lm.mm_data import TASKS

torch.set_num_threads(1)


_data_root = digits_data_root


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="tolerance and composite_min must be in"):
        Gemini1MultimodalConfig(tolerance=1.5).validate()
    with pytest.raises(ValueError, match="patch_size 3 must divide image_size 8"):
        Gemini1MultimodalConfig(patch_size=3).validate()
    with pytest.raises(ValueError, match="steps must be >= 1"):
        Gemini1MultimodalConfig(steps=0).validate()
    for scale in ("tiny", "quick", "full"):
        Gemini1MultimodalConfig.preset(scale).validate()
    assert Gemini1MultimodalConfig.preset("tiny").model_config().tokens_per_image == 16


def test_verdict_rule():
    cfg = Gemini1MultimodalConfig()
    spec = {t: {u: 0.0 for u in TASKS} for t in SPECIALISTS}
    for t in SPECIALISTS:
        spec[t][t] = 0.9
    good = {"joint": {"image": 0.86, "audio": 0.9, "text": 0.95, "composite": 0.6}, **spec}
    assert _verdict(good, cfg)[0] == "reproduced"
    worse = {**good, "joint": {**good["joint"], "image": 0.84}}  # trails the image specialist by 0.06 > 0.05
    v, checks = _verdict(worse, cfg)
    assert v == "partial" and not checks["joint_within_image"] and checks["composite_above_bar"]
    none = {"joint": {t: 0.1 for t in TASKS}, **spec}
    assert _verdict(none, cfg)[0] == "not reproduced"


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
    verdict, checks = _verdict(acc, cfg)
    assert res["verdict"] == verdict and all(m[k] == v for k, v in checks.items())
    assert all(0.0 <= v <= 1.0 for a in acc.values() for v in a.values())
    for fig in res["figures"]:
        assert (out / "figures" / fig).stat().st_size > 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for phase in ("joint", *SPECIALISTS):
        steps = [x for x in lines if x.get("phase") == phase and "loss" in x]
        assert len(steps) == cfg.steps and all("answer_acc" in x for x in steps)
    assert {x["model"] for x in lines if x.get("phase") == "eval"} == {"joint", *SPECIALISTS}

    # a finished run resumes to the same numbers without retraining or re-logging
    text = (out / "metrics.jsonl").read_text()
    assert (
        main(
            [
                "run",
                "gemini1-multimodal",
                "--resume",
                str(out),
                "--no-progress",
                "--threads",
                "1",
                "--data-dir",
                str(_data_root()),
            ]
        )
        == 0
    )
    assert json.loads((out / "results.json").read_text())["metrics"] == m
    assert (out / "metrics.jsonl").read_text() == text

    # an interrupted run (the eval phase and one training lost) resumes to the same numbers
    (out / "checkpoints" / "eval.safetensors").unlink()
    (out / "checkpoints" / "text.safetensors").unlink()
    assert (
        main(
            [
                "run",
                "gemini1-multimodal",
                "--resume",
                str(out),
                "--no-progress",
                "--threads",
                "1",
                "--data-dir",
                str(_data_root()),
            ]
        )
        == 0
    )
    assert json.loads((out / "results.json").read_text())["metrics"] == m
