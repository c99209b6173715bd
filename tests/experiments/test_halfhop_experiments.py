"""The two Half-Hop experiments at tiny scale: valid verdicts from their rules, and kill -9 / resume.

Needs the graph data (``$FORESIGHT_DATA`` holding geom-gcn/, heterophilous-graphs/ and planetoid/, or the
repository's sibling ``../shared/data``); skipped with the reason otherwise.
"""

import json

import pytest

from foresight.cli import main
from foresight.core import fs
from foresight.core.checkpoint import load_checkpoint, save_checkpoint
from foresight.core.registry import VERDICTS
from foresight.experiments import halfhop_heterophily as hh
from graph_data import ROOT, needs_data


# -- verdict rules and configs (no data) ----------------------------------------------------------
def test_heterophily_verdict_rule_thresholds():
    assert hh.verdict_rule([0.1, 0.2, -0.1])[0] == "reproduced"  # 2/3
    assert hh.verdict_rule([0.1, -0.2, -0.1])[0] == "partial"  # 1/3
    assert hh.verdict_rule([0.0, -0.2, -0.1])[0] == "not reproduced"  # a tie is not an improvement
    assert "2/3" in hh.verdict_rule([1.0])[1]


def test_config_validation_names_the_value():
    with pytest.raises(ValueError, match=r"splits must be distinct ids in 0..9, got \(10,\)"):
        hh.HeterophilyConfig(splits=(10,))
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        hh.HeterophilyConfig(p=1.5)
    with pytest.raises(ValueError, match=r"not divisible by heads=8"):
        hh.HeterophilyConfig(hidden=20)
    with pytest.raises(ValueError, match="backbones=.*not allowed"):
        hh.HeterophilyConfig(backbones=("gin",))
    for scale in ("tiny", "quick", "full"):
        hh.HeterophilyConfig.preset(scale)


# -- tiny runs ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hh_tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("hh") / "r"
    assert (
        main(
            [
                "run",
                "halfhop-heterophily",
                "--scale",
                "tiny",
                "--out",
                str(out),
                "--no-progress",
                "--data-dir",
                str(ROOT),
            ]
        )
        == 0
    )
    return out


@needs_data
def test_heterophily_tiny_run(hh_tiny):
    out = hh_tiny
    res = json.loads((out / "results.json").read_text())
    assert res["verdict"] in VERDICTS and res["system"] == "Half-Hop"
    m = res["metrics"]
    deltas = [m[f"{d}/gcn"]["delta"] for d in ("texas", "cornell")]
    assert res["verdict"] == hh.verdict_rule(deltas)[0]
    assert m["pairs_total"] == 2 and len(res["table"]) == 2
    assert len(m["texas/gcn"]["base_test"]) == 2 and 0 <= m["texas/gcn"]["hh_test_mean"] <= 1
    assert m["datasets"]["cornell"]["source"].startswith("yandex-research")
    assert m["datasets"]["texas"]["undirected"] is True and len(m["datasets"]["texas"]["checksum"]) == 64
    assert (out / "figures" / "accuracy.png").stat().st_size > 1000
    assert "Cornell is the Yandex cornell.npz" in (out / "REPORT.md").read_text()


@needs_data
def test_heterophily_resume_reuses_finished_pairs(hh_tiny):
    before = json.loads((hh_tiny / "results.json").read_text())["metrics"]
    log = (hh_tiny / "metrics.jsonl").read_text()
    fs.set_state(hh_tiny, "running")  # as if killed after the last cell's checkpoint
    (hh_tiny / "results.json").unlink()
    assert main(["run", "halfhop-heterophily", "--resume", str(hh_tiny), "--no-progress"]) == 0
    assert json.loads((hh_tiny / "results.json").read_text())["metrics"] == before
    assert (hh_tiny / "metrics.jsonl").read_text() == log  # no pair was trained again

    # killed before the last Half-Hop cell was checkpointed: that one run is redone, to the same numbers
    path = hh_tiny / "checkpoints" / "hh.safetensors"
    full = load_checkpoint(path)
    last = "cornell/gcn/hh/lr=0.01,hidden=16,dropout=0.5,alpha=0.5,p=1.0/split=1"
    assert list(full["state"]["cells"])[-1] == last
    del full["state"]["cells"][last]
    full["done"], full["metrics_lines"] = False, len(log.splitlines()) - 1
    save_checkpoint(path, full)  # what the run had saved before its last cell (RNG states aside)
    fs.set_state(hh_tiny, "running")
    (hh_tiny / "results.json").unlink()
    assert main(["run", "halfhop-heterophily", "--resume", str(hh_tiny), "--no-progress"]) == 0
    assert json.loads((hh_tiny / "results.json").read_text())["metrics"] == before
    assert (hh_tiny / "metrics.jsonl").read_text() == log


def test_select_best_breaks_ties_towards_the_earlier_grid_point():
    cands = [{"val_mean": 0.5, "id": 0}, {"val_mean": 0.7, "id": 1}, {"val_mean": 0.7, "id": 2}]
    assert hh.select_best(cands)["id"] == 1
    assert hh.select_best(cands[:1])["id"] == 0
