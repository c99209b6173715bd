"""The two Half-Hop experiments at tiny scale: valid verdicts from their rules, and kill -9 / resume.

Needs the graph data (``$FORESIGHT_DATA`` holding geom-gcn/, heterophilous-graphs/ and planetoid/, or the
repository's sibling ``../shared/data``); skipped with the reason otherwise.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from foresight.cli import main
from foresight.core import fs
from foresight.core.checkpoint import load_checkpoint, save_checkpoint
from foresight.core.registry import VERDICTS
from foresight.experiments import halfhop_heterophily as hh
from foresight.experiments import halfhop_ssl as ssl
from graph_data import ROOT, needs_data


# -- verdict rules and configs (no data) ----------------------------------------------------------
def test_heterophily_verdict_rule_thresholds():
    assert hh.verdict_rule([0.1, 0.2, -0.1])[0] == "reproduced"  # 2/3
    assert hh.verdict_rule([0.1, -0.2, -0.1])[0] == "partial"  # 1/3
    assert hh.verdict_rule([0.0, -0.2, -0.1])[0] == "not reproduced"  # a tie is not an improvement
    assert "2/3" in hh.verdict_rule([1.0])[1]


def test_ssl_verdict_rule_thresholds():
    assert ssl.verdict_rule({"a": 0.01, "b": 0.02, "c": -0.01})[0] == "reproduced"
    assert ssl.verdict_rule({"a": 0.01, "b": -0.02, "c": -0.01, "d": -0.1})[0] == "not reproduced"  # 1/4
    assert ssl.verdict_rule({"a": 0.01, "b": -0.02})[0] == "partial"
    assert ssl.verdict_rule({"a": 0.0, "b": -0.02})[0] == "not reproduced"  # a tie is not an improvement


def test_ssl_deltas_compare_half_hop_with_drop_only():
    means = {
        "cora": {"fd+ed": 0.70, "fd+ed+hh": 0.72, "hh": 0.90},  # fd+ed+hh is the claim's arm when it ran
        "texas": {"none": 0.5, "fd+ed": 0.60, "hh": 0.55},  # else the best Half-Hop arm
    }
    deltas = ssl.hh_deltas(means)
    assert deltas["cora"] == pytest.approx(0.02) and deltas["texas"] == pytest.approx(-0.05)


def test_config_validation_names_the_value():
    with pytest.raises(ValueError, match=r"splits must be distinct ids in 0..9, got \(10,\)"):
        hh.HeterophilyConfig(splits=(10,))
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        hh.HeterophilyConfig(p=1.5)
    with pytest.raises(ValueError, match=r"not divisible by heads=8"):
        hh.HeterophilyConfig(hidden=20)
    with pytest.raises(ValueError, match="backbones=.*not allowed"):
        hh.HeterophilyConfig(backbones=("gin",))
    with pytest.raises(ValueError, match="must include 'fd\\+ed' and a Half-Hop one"):
        ssl.SSLConfig(augmentations=("none", "fd+ed"))
    with pytest.raises(ValueError, match=r"edge_drop_1 must be in \[0, 1\), got 1.0"):
        ssl.SSLConfig(edge_drop_1=1.0)
    for scale in ("tiny", "quick", "full"):
        hh.HeterophilyConfig.preset(scale)
        ssl.SSLConfig.preset(scale)


def test_view_augmentations_compose_drop_and_half_hop():
    cfg = ssl.SSLConfig()
    a1, a2 = ssl.view_augmentations(cfg, "fd+ed+hh")
    assert (a1.feature_mask, a1.edge_drop, a1.half_hop_p) == (0.2, 0.2, 0.75)
    assert (a2.feature_mask, a2.edge_drop, a2.half_hop_p) == (0.1, 0.3, 0.75)
    a1, _ = ssl.view_augmentations(cfg, "hh")
    assert (a1.feature_mask, a1.edge_drop, a1.half_hop_p) == (0.0, 0.0, 0.75)
    a1, _ = ssl.view_augmentations(cfg, "none")
    assert (a1.feature_mask, a1.edge_drop, a1.half_hop_p) == (0.0, 0.0, None)


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


def _ssl_args(*args: str) -> list[str]:
    # tiny, and shorter still: the kill/resume check needs a few checkpoints per cell, not tiny's 30 epochs
    small = ("--set", "epochs=6", "--set", "checkpoint_every=2", "--set", "probe_steps=20")
    return ["run", "halfhop-ssl", *args, *small, "--no-progress", "--threads", "1", "--data-dir", str(ROOT)]


@needs_data
def test_ssl_killed_and_resumed_ends_like_an_uninterrupted_run(tmp_path):
    """kill -9 in the middle of the second cell's training, resume: the same results and metrics log.

    Only the victim is a separate process (one import of torch + PyG is most of this test's time): the
    uninterrupted reference and the resume run in this one, and the resume reads nothing but the folder.
    """
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    victim = subprocess.Popen(
        [sys.executable, "-m", "foresight.cli", *_ssl_args("--scale", "tiny", "--out", str(killed_dir))],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sweep, partial = (
        killed_dir / "checkpoints" / "bgrl.safetensors",
        killed_dir / "checkpoints" / "bgrl-partial.safetensors",
    )

    def second_cell_started() -> bool:  # the first cell is in the sweep checkpoint, the second one has a partial
        try:
            return partial.stat().st_mtime_ns > sweep.stat().st_mtime_ns
        except FileNotFoundError:
            return False

    def kill_mid_second_cell() -> None:
        deadline = time.time() + 240
        while not second_cell_started() and victim.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        victim.send_signal(signal.SIGKILL)

    # the uninterrupted reference runs in this process while the victim trains
    watcher = threading.Thread(target=kill_mid_second_cell, daemon=True)
    watcher.start()
    assert main(_ssl_args("--scale", "tiny", "--out", str(full_dir))) == 0
    watcher.join()
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run ended before the second cell's first checkpoint"
    assert not (killed_dir / "results.json").exists()  # killed mid-training
    assert list(load_checkpoint(sweep)["state"]["cells"]) == ["cora/fd+ed/init=0"]
    unfinished = load_checkpoint(partial)["state"]
    assert unfinished["cell"] == "cora/fd+ed+hh/init=0" and 0 < unfinished["epoch"] < 6

    assert main(["run", "halfhop-ssl", "--resume", str(killed_dir), "--no-progress", "--threads", "1"]) == 0
    a = json.loads((full_dir / "results.json").read_text())
    b = json.loads((killed_dir / "results.json").read_text())
    assert a["metrics"] == b["metrics"]
    assert a["verdict"] == b["verdict"] and a["table"] == b["table"]
    # the metrics log was cut back to the checkpoint and continued: identical line for line
    assert (full_dir / "metrics.jsonl").read_text() == (killed_dir / "metrics.jsonl").read_text()

    # and the result itself is well formed
    assert a["verdict"] in VERDICTS
    assert a["verdict"] == ssl.verdict_rule(a["metrics"]["delta_hh_vs_fd_ed"])[0]
    assert set(a["metrics"]["delta_hh_vs_fd_ed"]) == {"cora", "texas"}
    assert {"cora/fd+ed", "cora/fd+ed+hh", "texas/fd+ed", "texas/fd+ed+hh"} <= set(a["metrics"])
    log = [json.loads(line) for line in (full_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in log if x["dataset"] == "cora" and x["augmentation"] == "fd+ed"] == [2, 4, 6]
    for fig in a["figures"]:
        assert (full_dir / "figures" / fig).stat().st_size > 1000
