"""Runs you can trust, written as the attacks: run folders are owned, resumes are checked, reproduce
continues, and every error is one line (issue "Runs you can trust")."""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from foresight import cli
from foresight.core import fs
from foresight.core.config import Config, check_scale
from foresight.core.registry import Result, experiment

FLAKY_FLAG = "FORESIGHT_TEST_FLAKY_FLAG"


@dataclass(frozen=True)
class LoopConfig(Config):
    steps: int = 4
    value: float = 1.0

    @classmethod
    def preset(cls, scale):
        return {"tiny": cls(steps=3), "quick": cls(), "full": cls(steps=8)}[check_scale(scale)]


def _loop(cfg: LoopConfig, run) -> Result:
    state = run.load_checkpoint("loop") or {"step": 0}
    for step in range(state["step"], cfg.steps):
        run.log(step=step)
        run.save_checkpoint("loop", {"step": step + 1})
    return Result(verdict="reproduced", rule="always", metrics={"steps": cfg.steps})


@experiment(name="test-loop", system="Test", paper="none", claim="loops", config=LoopConfig)
def _loop_exp(cfg: LoopConfig, run) -> Result:
    return _loop(cfg, run)


@experiment(name="test-flaky", system="Test", paper="none", claim="interrupted once", config=LoopConfig)
def _flaky(cfg: LoopConfig, run) -> Result:
    state = run.load_checkpoint("loop") or {"step": 0}
    for step in range(state["step"], cfg.steps):
        flag = os.environ.get(FLAKY_FLAG)
        if step == 1 and flag and os.path.exists(flag):
            os.unlink(flag)
            raise KeyboardInterrupt  # Ctrl-C in the middle of the second experiment
        run.log(step=step)
        run.save_checkpoint("loop", {"step": step + 1})
    return Result(verdict="reproduced", rule="always", metrics={"steps": cfg.steps})


def _snapshot(folder):
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def _unfinished(tmp_path, name="u"):
    """A run of test-loop that was killed before it finished."""
    out = tmp_path / name
    assert cli.main(["run", "test-loop", "--out", str(out), "--no-progress"]) == 0
    fs.set_state(out, "running")
    (out / "results.json").unlink()
    return out


# -- run folders are owned ----------------------------------------------------------------------


def test_run_into_an_hf_model_folder_changes_nothing(tmp_path, capsys):
    hf = tmp_path / "gemma-2-2b"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gemma2", "vocab_size": 256000}))
    (hf / "model.safetensors").write_bytes(b"\0" * 64)
    before = _snapshot(hf)
    assert cli.main(["run", "test-loop", "--out", str(hf), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty and is not a foresight run folder" in err
    assert "config.json" in err and "nothing was changed" in err
    assert _snapshot(hf) == before  # every file unchanged, nothing added (no marker, no lock)


def test_other_experiments_runs_finished_runs_and_bad_paths_are_refused(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(["run", "test-loop", "--out", str(out), "--no-progress"]) == 0
    results = (out / "results.json").read_bytes()
    cases = [
        (["run", "test-flaky", "--out", str(out)], "holds a run of 'test-loop', not 'test-flaky'"),
        (["run", "test-loop", "--out", str(out)], "holds a finished test-loop run (its results are kept)"),
        (["run", "test-loop", "--resume", str(out)], "holds a finished test-loop run; nothing to resume"),
        (["run", "test-flaky", "--resume", str(out)], "it is a run of 'test-loop', not 'test-flaky'"),
        (["run", "test-loop", "--out", ""], "--out '' is not a folder"),
        (["run", "test-loop", "--out", str(out / "results.json")], "exists and is not a folder"),
        (["run", "test-loop", "--resume", str(tmp_path / "nope")], "no such folder"),
        (["run", "test-loop", "--resume", str(tmp_path)], "not a foresight run folder"),
    ]
    for argv, message in cases:
        assert cli.main([*argv, "--no-progress"]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.startswith("foresight: error: ") and err.count("\n") == 1, (argv, err)
    assert (out / "results.json").read_bytes() == results


_HOLDER = """
import sys, time
from foresight.core import fs
lock = fs.claim(sys.argv[1], "test-loop", resume=True)
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_writer_of_one_folder_exits_2_at_once(tmp_path, capsys):
    out = _unfinished(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        assert cli.main(["run", "test-loop", "--resume", str(out), "--no-progress"]) == 2
        assert time.perf_counter() - t0 < 2.0
        assert f"is in use by another foresight process (pid {holder.pid})" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "results.json").exists()
    assert cli.main(["run", "test-loop", "--resume", str(out), "--no-progress"]) == 0  # the lock died with it


_KILLED_WRITER = """
import os, signal, sys
from foresight import cli
from foresight.core import checkpoint
sys.path.insert(0, sys.argv[1])
import test_run_folders  # registers test-loop

real_save, calls = checkpoint.save_file, [0]

def dying_save(tensors, tmp, metadata=None):
    calls[0] += 1
    if calls[0] == 3 and os.environ.get("DIE"):
        with open(tmp, "wb") as f:
            f.write(b"half a checkpoint")
        os.kill(os.getpid(), signal.SIGKILL)  # killed mid-write: the temp file stays behind
    real_save(tensors, tmp, metadata=metadata)

checkpoint.save_file = dying_save
sys.exit(cli.main(sys.argv[2:]))
"""


def test_sigkill_during_a_checkpoint_write_leaves_no_temp_file_after_resume(tmp_path):
    out = tmp_path / "k"
    here = os.path.dirname(__file__)
    argv = [sys.executable, "-c", _KILLED_WRITER, here]
    env = {**os.environ, "DIE": "1"}
    killed = subprocess.run([*argv, "run", "test-loop", "--out", str(out), "--no-progress"], env=env)
    assert killed.returncode == -9
    assert list((out / "checkpoints").glob(".*.tmp"))  # the debris a SIGKILL leaves
    env.pop("DIE")
    resumed = subprocess.run([*argv, "run", "test-loop", "--resume", str(out), "--no-progress"], env=env)
    assert resumed.returncode == 0
    assert not list(out.rglob("*.tmp"))
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]


def test_files_are_created_with_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "p"
        assert cli.main(["run", "test-loop", "--out", str(out), "--no-progress"]) == 0
    finally:
        os.umask(old)
    for p in out.rglob("*"):
        if p.is_file():
            assert p.stat().st_mode & 0o777 == 0o644, p


# -- resume is checked ---------------------------------------------------------------------------


def test_a_hand_edited_config_json_is_refused_naming_the_field(tmp_path, capsys):
    out = _unfinished(tmp_path)
    record = json.loads((out / "config.json").read_text())
    good = dict(record)
    record["config"]["steps"] = 40
    (out / "config.json").write_text(json.dumps(record))
    assert cli.main(["run", "test-loop", "--resume", str(out), "--no-progress"]) == 2
    assert "config.json differs from the config the run started with (steps: 4 -> 40)" in capsys.readouterr().err
    for bad, message in [
        ({**good, "config": {**good["config"], "steps": "4"}}, "steps='4' is not a valid int"),
        ({**good, "config": {**good["config"], "steps": True}}, "steps=True is not a valid int"),
        ({**good, "config": {"steps": 4}}, "missing keys ['value']"),
        ({**good, "config": {**good["config"], "extra": 1}}, "unknown keys ['extra']"),
        ([1, 2], "config.json must be a JSON object"),
    ]:
        (out / "config.json").write_text(json.dumps(bad))
        assert cli.main(["run", "test-loop", "--resume", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    (out / "config.json").write_text("{not json")
    assert cli.main(["run", "test-loop", "--resume", str(out), "--no-progress"]) == 2
    assert "config.json is unreadable" in capsys.readouterr().err


def test_a_bit_flipped_checkpoint_is_refused_not_trained_on(tmp_path, capsys):
    out = _unfinished(tmp_path)
    path = out / "checkpoints" / "loop.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x04
    path.write_bytes(bytes(data))
    assert cli.main(["run", "test-loop", "--resume", str(out), "--no-progress"]) == 2
    assert "does not match its recorded sha256" in capsys.readouterr().err
    assert not (out / "results.json").exists()


def test_set_duplicates_and_set_on_resume_are_errors(tmp_path, capsys):
    argv = ["run", "test-loop", "--out", str(tmp_path / "d"), "--set", "steps=2", "--set", "steps=3"]
    assert cli.main(argv) == 2
    assert "--set steps is given twice" in capsys.readouterr().err
    out = _unfinished(tmp_path)
    assert cli.main(["run", "test-loop", "--resume", str(out), "--set", "steps=9"]) == 2
    assert "--set cannot change a resumed run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--threads", "-2"], "--threads must be an int >= 1, got -2"),
        (["--threads", "0"], "--threads must be an int >= 1, got 0"),
        (["--device", "tpu9"], "--device 'tpu9' is not a device"),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    assert cli.main(["run", "test-loop", "--out", str(tmp_path / "f"), "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# -- reproduce continues -------------------------------------------------------------------------


def test_an_interrupted_reproduce_continues_and_keeps_finished_results(tmp_path, capsys, monkeypatch):
    out = tmp_path / "rep"
    flag = tmp_path / "interrupt-once"
    flag.write_text("")
    monkeypatch.setenv(FLAKY_FLAG, str(flag))
    argv = ["reproduce", "--scale", "tiny", "--out", str(out), "--only", "test-loop", "test-flaky", "--no-progress"]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert err == "foresight: interrupted; rerun the same command to continue\n"  # one line, no traceback
    finished = (out / "test-loop" / "results.json").read_bytes()
    assert not (out / "test-flaky" / "results.json").exists()

    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "test-loop: finished earlier, kept" in printed and "test-flaky (Test) at scale tiny (resuming)" in printed
    assert (out / "test-loop" / "results.json").read_bytes() == finished  # byte-identical
    assert json.loads((out / "test-flaky" / "results.json").read_text())["verdict"] == "reproduced"
    steps = [json.loads(x)["step"] for x in (out / "test-flaky" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]  # resumed from its checkpoint, exactly
    assert "test-flaky" in (out / "REPORT.md").read_text()

    assert cli.main(["reproduce", "--scale", "quick", "--out", str(out), "--only", "test-loop"]) == 2
    assert "reproduce run with other settings (scale 'tiny' -> 'quick')" in capsys.readouterr().err


def test_reproduce_refuses_a_folder_that_is_not_its_own(tmp_path, capsys):
    hf = tmp_path / "model"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert cli.main(["reproduce", "--scale", "tiny", "--out", str(hf), "--only", "test-loop"]) == 2
    assert "is not empty and is not a foresight run folder" in capsys.readouterr().err
    assert sorted(p.name for p in hf.iterdir()) == ["config.json"]


def test_run_interrupted_is_one_line_and_resumable(tmp_path, capsys, monkeypatch):
    flag = tmp_path / "interrupt-once"
    flag.write_text("")
    monkeypatch.setenv(FLAKY_FLAG, str(flag))
    out = tmp_path / "f"
    assert cli.main(["run", "test-flaky", "--scale", "tiny", "--out", str(out), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted; rerun" in err and "--resume" in err
    assert cli.main(["run", "test-flaky", "--resume", str(out), "--no-progress"]) == 0


def test_the_lock_names_the_holder_and_is_released(tmp_path):
    out = tmp_path / "l"
    lock = fs.claim(out, "x", resume=False)
    with pytest.raises(fs.RunFolderError, match=f"pid {os.getpid()}"):
        fs.claim(out, "x", resume=True)
    lock.release()
    fs.claim(out, "x", resume=True).release()


def test_os_errors_are_one_line_naming_the_path(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert cli.main(["run", "test-loop", "--out", str(blocker / "sub"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Not a directory" in err and str(blocker / "sub") in err
    if os.geteuid() != 0:  # root ignores permissions
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        assert cli.main(["run", "test-loop", "--out", str(locked / "r"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Permission denied" in err


def test_a_bad_model_size_is_one_line(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world. " * 200)
    argv = ["train-lm", "--corpus", str(corpus), "--out", str(tmp_path / "lm"), "--model-set", "num_attention_heads=0"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "num_attention_heads" in err and err.startswith("foresight: error: ")
    assert not (tmp_path / "lm").exists()
