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
from graph_data import ROOT, needs_data


# -- verdict rules and configs (no data) ----------------------------------------------------------
def test_heterophily_verdict_rule_thresholds():
    assert hh.verdict_rule([0.1, 0.2, -0.1])[0] == "reproduced"  # 2/3
    assert hh.verdict_rule([0.1, -0.2, -0.1])[0] == "partial"  # 1/3
    assert hh.verdict_rule([0.0, -0.2, -0.1])[0] == "not reproduced"  # a tie is not an improvement
    assert "2/3" in hh.verdict_rule([1.0])[1] and "directed" in hh.verdict_rule([1.0])[1]
    with pytest.raises(ValueError, match="needs at least one"):
        hh.verdict_rule([])


def test_heterophily_variants_round_trip_and_protocol_settings():
    assert hh.parse_variant(hh.hh_variant(0.1, 0.5)) == (0.1, 0.5)
    assert hh.parse_variant("base") == (None, 1.0)
    with pytest.raises(ValueError, match="variant must be 'base' or 'hh\\(alpha=A,p=P\\)', got 'hh'"):
        hh.parse_variant("hh")
    full = hh.HeterophilyConfig.preset("full")
    # the Geom-GCN settings of the notes (halfhop.md 9.2)
    assert (full.lr, full.lr_decay_factor, full.lr_decay_patience, full.epochs, full.patience) == (
        0.05,
        0.8,
        50,
        5000,
        100,
    )
    assert full.splits == tuple(range(10)) and full.heads == 8 and full.arms[0] == "directed"
    assert [full.hidden_for(d) for d in ("texas", "film", "chameleon", "squirrel")] == [32, 32, 48, 48]
    assert [full.weight_decay_for(d) for d in ("cornell", "film", "squirrel")] == [5e-5, 5e-6, 5e-6]
    assert min(full.alpha_grid) <= 0.1 and max(full.alpha_grid) >= 0.9 and min(full.p_grid) < 1
    assert hh.edges_of("cornell", "directed") == "symmetrised" and hh.edges_of("texas", "directed") == "directed"


def test_config_validation_names_the_value():
    with pytest.raises(ValueError, match=r"splits must be distinct ids in 0..9, got \(10,\)"):
        hh.HeterophilyConfig(splits=(10,))
    with pytest.raises(ValueError, match=r"alpha_grid/p_grid values must be in \[0, 1\], got \(0.5,\), \(1.5,\)"):
        hh.HeterophilyConfig(alpha_grid=(0.5,), p_grid=(1.5,))
    with pytest.raises(ValueError, match=r"arms=.*not allowed"):
        hh.HeterophilyConfig(arms=("both",))
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        hh.HeterophilyConfig(workers=0)
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
    deltas = [m[f"directed/{d}/gcn"]["delta"] for d in ("texas", "cornell")]
    assert res["verdict"] == hh.verdict_rule(deltas)[0]
    assert m["pairs_total"] == 2 and len(res["table"]) == 2
    texas = m["directed/texas/gcn"]
    assert len(texas["base_test"]) == 2 and 0 <= texas["hh_test_mean"] <= 1
    assert sum(texas["wins_ties_losses"]) == 2 and texas["delta_ci95"]["n"] == 2
    # alpha, p chosen on validation over the 2 x 2 grid
    assert set(texas["grid_val_mean"]) == {hh.hh_variant(a, p) for a in (0.1, 0.9) for p in (0.5, 1.0)}
    chosen = hh.hh_variant(texas["alpha"], texas["p"])
    assert texas["grid_val_mean"][chosen] == max(texas["grid_val_mean"].values())
    # the secondary arm: texas only (Cornell exists only symmetrised), at the main arm's alpha and p
    assert "symmetrised/texas/gcn" in m and "symmetrised/cornell/gcn" not in m
    assert (m["symmetrised/texas/gcn"]["alpha"], m["symmetrised/texas/gcn"]["p"]) == (texas["alpha"], texas["p"])
    assert m["datasets"]["cornell"]["source"].startswith("yandex-research")
    assert m["datasets"]["texas"]["undirected"] is False and len(m["datasets"]["texas"]["checksum"]) == 64
    # cornell's row says what it ran on and where it came from
    assert [r["edges"] for r in res["table"]] == ["directed", "symmetrised (source: Yandex cornell.npz)"]
    for arm in ("directed", "symmetrised"):
        assert (out / "figures" / f"accuracy_{arm}.png").stat().st_size > 1000
    report = (out / "REPORT.md").read_text()
    assert "Cornell is the Yandex cornell.npz" in report and "W/T/L" in report


@needs_data
def test_heterophily_resume_reuses_finished_cells(hh_tiny):
    before = json.loads((hh_tiny / "results.json").read_text())["metrics"]
    log = (hh_tiny / "metrics.jsonl").read_text()
    fs.set_state(hh_tiny, "running")  # as if killed after the last cell's checkpoint
    (hh_tiny / "results.json").unlink()
    assert main(["run", "halfhop-heterophily", "--resume", str(hh_tiny), "--no-progress"]) == 0
    assert json.loads((hh_tiny / "results.json").read_text())["metrics"] == before
    assert (hh_tiny / "metrics.jsonl").read_text() == log  # no cell was trained again

    # killed before the last main-arm cell was checkpointed: that one run (and the secondary arm) is redone
    path = hh_tiny / "checkpoints" / "directed.safetensors"
    full = load_checkpoint(path)
    last = "directed/cornell/gcn/hh(alpha=0.9,p=1.0)/split=1"
    assert list(full["state"]["cells"])[-1] == last
    del full["state"]["cells"][last]
    # one metrics line per cell, main arm first: the lines of the cells still in the checkpoint
    full["done"], full["metrics_lines"] = False, len(full["state"]["cells"])
    save_checkpoint(path, full)  # what the run had saved before its last main-arm cell (RNG states aside)
    (hh_tiny / "checkpoints" / "symmetrised.safetensors").unlink()
    fs.set_state(hh_tiny, "running")
    (hh_tiny / "results.json").unlink()
    assert main(["run", "halfhop-heterophily", "--resume", str(hh_tiny), "--no-progress"]) == 0
    assert json.loads((hh_tiny / "results.json").read_text())["metrics"] == before
    assert (hh_tiny / "metrics.jsonl").read_text() == log


def _hh_args(*args: str) -> list[str]:
    # tiny on texas alone, long enough per cell (no early stopping) for a kill to land mid-sweep
    small = ("--set", "datasets=texas", "--set", "epochs=150")
    return ["run", "halfhop-heterophily", *args, *small, "--no-progress", "--threads", "1", "--data-dir", str(ROOT)]


@needs_data
def test_heterophily_killed_mid_sweep_resumes_to_the_same_numbers(tmp_path):
    """kill -9 while the main arm's sweep is half done, resume: the same results and metrics log as a run
    that was never interrupted (and, with workers=2, as one that trained its cells in 2 processes)."""
    full_dir, killed_dir, pool_dir = tmp_path / "full", tmp_path / "killed", tmp_path / "pool"
    victim = subprocess.Popen(
        [sys.executable, "-m", "foresight.cli", *_hh_args("--scale", "tiny", "--out", str(killed_dir))],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sweep = killed_dir / "checkpoints" / "directed.safetensors"

    def kill_after_some_cells() -> None:
        deadline = time.time() + 240
        while victim.poll() is None and time.time() < deadline:
            try:
                if len(load_checkpoint(sweep)["state"]["cells"]) >= 3:
                    break
            except Exception:  # not written yet (or being renamed into place)
                pass
            time.sleep(0.005)
        victim.send_signal(signal.SIGKILL)

    watcher = threading.Thread(target=kill_after_some_cells, daemon=True)
    watcher.start()
    assert main(_hh_args("--scale", "tiny", "--out", str(full_dir))) == 0
    watcher.join()
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed_dir / "results.json").exists()
    done = len(load_checkpoint(sweep)["state"]["cells"])
    assert 3 <= done < 10  # 10 main-arm cells: texas/gcn x (base + 4 grid points) x 2 splits

    assert main(["run", "halfhop-heterophily", "--resume", str(killed_dir), "--no-progress", "--threads", "1"]) == 0
    a = json.loads((full_dir / "results.json").read_text())
    b = json.loads((killed_dir / "results.json").read_text())
    assert a["metrics"] == b["metrics"] and a["table"] == b["table"] and a["verdict"] == b["verdict"]
    assert (full_dir / "metrics.jsonl").read_text() == (killed_dir / "metrics.jsonl").read_text()

    assert main([*_hh_args("--scale", "tiny", "--out", str(pool_dir)), "--set", "workers=2"]) == 0
    c = json.loads((pool_dir / "results.json").read_text())
    assert a["metrics"] == c["metrics"]
    assert (full_dir / "metrics.jsonl").read_text() == (pool_dir / "metrics.jsonl").read_text()


def test_select_best_breaks_ties_towards_the_earlier_grid_point():
    cands = [{"val_mean": 0.5, "id": 0}, {"val_mean": 0.7, "id": 1}, {"val_mean": 0.7, "id": 2}]
    assert hh.select_best(cands)["id"] == 1
    assert hh.select_best(cands[:1])["id"] == 0
