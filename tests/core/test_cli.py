import json
from dataclasses import dataclass

import pytest

from foresight import cli
from foresight.core.config import Config, check_scale
from foresight.core.registry import Result, experiment


@dataclass(frozen=True)
class EchoConfig(Config):
    steps: int = 4
    value: float = 1.0

    @classmethod
    def preset(cls, scale):
        return {"tiny": cls(steps=2), "quick": cls(), "full": cls(steps=8)}[check_scale(scale)]


@experiment(name="test-echo", system="Test", paper="none", claim="value is positive", config=EchoConfig)
def _echo(cfg: EchoConfig, run) -> Result:
    start = 0
    state = run.load_checkpoint("loop")
    if state is not None:
        start = state["step"]
    for step in range(start, cfg.steps):
        run.log(step=step, value=cfg.value * step)
        run.save_checkpoint("loop", {"step": step + 1})
    ok = cfg.value > 0
    return Result(
        verdict="reproduced" if ok else "not reproduced",
        rule="value > 0",
        metrics={"value": cfg.value, "steps": cfg.steps},
        table=[{"value": cfg.value}],
    )


for _n in (1, 2):  # two more, for the parallel reproduce test
    experiment(name=f"test-echo-{_n}", system="Test", paper="none", claim="value is positive", config=EchoConfig)(_echo)


def test_run_writes_results_and_report(tmp_path, capsys):
    out = tmp_path / "r"
    assert (
        cli.main(["run", "test-echo", "--scale", "tiny", "--out", str(out), "--set", "value=2.5", "--no-progress"]) == 0
    )
    res = json.loads((out / "results.json").read_text())
    for key in ("experiment", "system", "claim", "scale", "seed", "verdict", "metrics", "wall_seconds"):
        assert key in res
    assert res["metrics"] == {"value": 2.5, "steps": 2} and res["scale"] == "tiny"
    assert json.loads((out / "config.json").read_text())["config"]["value"] == 2.5
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert "value > 0" in (out / "REPORT.md").read_text()


def test_bad_override_is_a_clear_cli_error(tmp_path, capsys):
    assert cli.main(["run", "test-echo", "--out", str(tmp_path / "r"), "--set", "stepz=3"]) == 2
    assert "unknown config key 'stepz'" in capsys.readouterr().err
    assert cli.main(["run", "no-such-exp"]) == 2
    assert "unknown experiment 'no-such-exp'" in capsys.readouterr().err


def test_resume_truncates_metrics_after_checkpoint(tmp_path):
    out = tmp_path / "r"
    assert cli.main(["run", "test-echo", "--out", str(out), "--no-progress"]) == 0
    # pretend the run was killed after logging a line past its last checkpoint (and before finishing)
    from foresight.core import fs

    fs.set_state(out, "running")
    (out / "results.json").unlink()
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 99}) + "\n")
    assert cli.main(["run", "test-echo", "--resume", str(out), "--no-progress"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]


def test_refuses_to_overwrite_a_run(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(["run", "test-echo", "--out", str(out), "--no-progress"]) == 0
    assert cli.main(["run", "test-echo", "--out", str(out), "--no-progress"]) == 2
    assert "holds a finished test-echo run (its results are kept)" in capsys.readouterr().err


def test_reproduce_writes_combined_report(tmp_path):
    out = tmp_path / "rep"
    assert cli.main(["reproduce", "--scale", "tiny", "--out", str(out), "--only", "test-echo", "--no-progress"]) == 0
    text = (out / "REPORT.md").read_text()
    assert "test-echo" in text and "reproduced" in text


def test_device_flag_rejects_missing_cuda(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert cli.main(["run", "test-echo", "--out", str(tmp_path / "r"), "--device", "cuda"]) == 2
    assert "asked for CUDA, but this machine has none" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before the folder was claimed


def test_list_and_data_commands(capsys):
    assert cli.main(["list"]) == 0
    assert "test-echo" in capsys.readouterr().out
    assert cli.main(["data"]) == 0
    assert "search order" in capsys.readouterr().out


def test_reproduce_runs_experiments_in_parallel_processes_with_the_same_results(tmp_path, capsys):
    # registered in-process (by this module): the spawned workers find them by importing it
    names = ["test-echo", "test-echo-1", "test-echo-2"]
    seq, par = tmp_path / "seq", tmp_path / "par"
    assert cli.main(["reproduce", "--scale", "tiny", "--out", str(seq), "--only", *names, "--no-progress"]) == 0
    args = ["reproduce", "--scale", "tiny", "--out", str(par), "--only", *names, "--no-progress", "--jobs", "2"]
    assert cli.main(args) == 0
    for name in names:
        a, b = (json.loads((d / name / "results.json").read_text()) for d in (seq, par))
        assert a["metrics"] == b["metrics"] and a["verdict"] == b["verdict"]
    assert "test-echo-2" in (par / "REPORT.md").read_text()
    assert cli.main(args) == 0  # a rerun keeps all three
    assert capsys.readouterr().out.count("finished earlier, kept") == 3
    assert cli.main([*args[:-1], "0"]) == 2
    assert "--jobs must be >= 1 (experiments run at once), got 0" in capsys.readouterr().err


def test_an_experiment_whose_module_fails_to_import_is_one_failure_not_the_end_of_reproduce(tmp_path, capsys):
    options = {"scale": "tiny", "seed": 0, "device": None, "data_dir": None, "progress": False, "threads": None}
    assert cli._reproduce_one("broken", "no_such_module_for_this_test", str(tmp_path / "b"), False, options) is False
    assert "No module named 'no_such_module_for_this_test'" in capsys.readouterr().err
    assert cli._reproduce_one("test-echo", __name__, str(tmp_path / "e"), False, options) is True
