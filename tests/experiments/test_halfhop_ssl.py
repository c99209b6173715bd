"""halfhop-ssl: the verdict rule, the per-dataset BGRL settings, the cells, a tiny run and kill/resume."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from foresight.cli import main
from foresight.core.checkpoint import load_checkpoint
from foresight.experiments import halfhop_ssl as ssl


def _acc(hh, drop, control):
    return {"fd+ed+hh": hh, "fd+ed": drop, ssl.CONTROL: control}


def test_verdict_rule_gates_on_the_untrained_control_and_reads_the_paired_effect():
    good = _acc([0.90, 0.91, 0.92], [0.89, 0.90, 0.915], [0.70, 0.71, 0.72])
    assert ssl.verdict_rule({"a": good, "b": good, "c": good})[0] == "reproduced"
    worse = _acc([0.90, 0.91, 0.92], [0.905, 0.915, 0.925], [0.70, 0.71, 0.72])  # -0.5 pp on every seed
    verdict, _, details = ssl.verdict_rule({"a": good, "b": good, "c": worse})
    assert verdict == "partial" and details["c"]["effect"]["high"] < 0  # significantly worse on one
    assert ssl.verdict_rule({"a": good, "b": good, "c": _acc([0.9, 0.91, 0.92], [0.91, 0.9, 0.93], [0.7] * 3)})[0] == (
        "reproduced"
    )
    # not better than an untrained encoder by the margin: the training has not shown anything
    untrained = _acc([0.90, 0.91, 0.92], [0.89, 0.90, 0.91], [0.895, 0.905, 0.915])
    verdict, rule, details = ssl.verdict_rule({"a": untrained}, margin=0.01)
    assert verdict == "not reproduced" and not details["a"]["gated"] and "> 1 pp" in rule
    assert ssl.verdict_rule({"a": worse})[0] == "not reproduced"


def test_presets_keep_bgrl_settings_and_validation_names_the_value():
    assert ssl.BGRL_PRESETS["amazon-computers"] == ssl.BGRLPreset((256, 128), 5e-4, 0.2, 0.5, 0.1, 0.4)
    assert ssl.BGRL_PRESETS["coauthor-cs"].encoder == (512, 256) and ssl.BGRL_PRESETS["coauthor-physics"].lr == 1e-5
    a1, a2 = ssl.view_augmentations(ssl.SSLConfig(), "amazon-photos", "fd+ed+hh")
    assert (a1.feature_mask, a1.edge_drop, a2.feature_mask, a2.edge_drop) == (0.1, 0.4, 0.2, 0.1)
    assert a1.half_hop_p == a2.half_hop_p == 0.75 and a1.alpha == 0.5
    a1, _ = ssl.view_augmentations(ssl.SSLConfig(), "amazon-photos", "hh")
    assert (a1.feature_mask, a1.edge_drop, a1.half_hop_p) == (0.0, 0.0, 0.75)
    full = ssl.SSLConfig.preset("full")
    assert set(full.datasets) == {"amazon-computers", "amazon-photos", "coauthor-cs", "coauthor-physics"}
    assert full.seeds >= 5 and full.augmentations == ssl.AUGMENTATIONS
    assert sorted({*full.curve_epochs, full.epochs}) == [500, 1000, 2000]
    with pytest.raises(ValueError, match=r"must include 'fd\+ed' and 'fd\+ed\+hh', got \('none', 'fd\+ed'\)"):
        ssl.SSLConfig(augmentations=("none", "fd+ed"))
    with pytest.raises(
        ValueError, match=r"curve_epochs must be distinct budgets >= 1 other than epochs, got \(1000,\)"
    ):
        ssl.SSLConfig(curve_epochs=(1000,))
    with pytest.raises(ValueError, match="need >= 1 dataset, >= 2 seeds"):
        ssl.SSLConfig(seeds=1)


def test_cells_pair_augmentations_and_controls_by_seed():
    cfg = ssl.SSLConfig(datasets=("amazon-photos",), seeds=2, epochs=100, curve_epochs=(50,), curve_seeds=1)
    cells = ssl.cells(cfg)
    assert cells[:2] == ["amazon-photos/fd+ed/epochs=100/seed=0", "amazon-photos/fd+ed/epochs=100/seed=1"]
    assert "amazon-photos/random-encoder/epochs=0/seed=1" in cells
    assert cells[-2:] == ["amazon-photos/fd+ed/epochs=50/seed=0", "amazon-photos/fd+ed+hh/epochs=50/seed=0"]
    assert len(cells) == len(set(cells)) == 2 * 2 + 2 + 2


def _args(*args: str) -> list[str]:
    return ["run", "halfhop-ssl", *args, "--no-progress", "--threads", "1"]


def test_tiny_run_killed_mid_cell_and_resumed_gives_the_same_numbers(tmp_path):
    """kill -9 while a cell is training (after its first epoch checkpoint), resume: the same results and
    metrics log as a run that was never interrupted."""
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    victim = subprocess.Popen(
        [sys.executable, "-m", "foresight.cli", *_args("--scale", "tiny", "--out", str(killed_dir))],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sweep, partial = (
        killed_dir / "checkpoints" / "bgrl.safetensors",
        killed_dir / "checkpoints" / f"{ssl.PARTIAL}.safetensors",
    )
    state = {}

    def kill_mid_cell() -> None:
        deadline = time.time() + 240
        while victim.poll() is None and time.time() < deadline:
            try:
                done = len(load_checkpoint(sweep)["state"]["cells"]) if sweep.exists() else 0
                if (
                    done >= 1
                    and partial.exists()
                    and load_checkpoint(partial)["state"]["cell"] not in (load_checkpoint(sweep)["state"]["cells"])
                ):
                    state["cells_done"] = done
                    break
            except Exception:  # not written yet (or being renamed into place)
                pass
            time.sleep(0.005)
        victim.send_signal(signal.SIGKILL)

    watcher = threading.Thread(target=kill_mid_cell, daemon=True)
    watcher.start()
    assert main(_args("--scale", "tiny", "--out", str(full_dir))) == 0
    watcher.join()
    victim.wait()
    assert victim.returncode == -signal.SIGKILL and state.get("cells_done", 0) >= 1  # killed inside the sweep
    assert not (killed_dir / "results.json").exists()
    assert main(["run", "halfhop-ssl", "--resume", str(killed_dir), "--no-progress", "--threads", "1"]) == 0
    a = json.loads((full_dir / "results.json").read_text())
    b = json.loads((killed_dir / "results.json").read_text())
    assert a["metrics"] == b["metrics"] and a["verdict"] == b["verdict"]
    assert (full_dir / "metrics.jsonl").read_text() == (killed_dir / "metrics.jsonl").read_text()
    assert (
        a["verdict"]
        == ssl.verdict_rule(
            {"synthetic": {k.split("/")[1]: v["test"] for k, v in a["metrics"].items() if k.startswith("synthetic/")}}
        )[0]
    )
    report = (full_dir / "REPORT.md").read_text()
    assert "FeatDrop+EdgeDrop+Half-Hop" in report and "untrained encoder (control)" in report
