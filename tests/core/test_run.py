"""foresight.core.run: threads, seeds, phases and sweeps (resume exactness of each)."""

import json

import pytest
import torch

from foresight.core.config import Config
from foresight.core.run import Run, derive_seed, select_device, torch_threads


def test_torch_threads_sets_and_restores_the_count_and_checks_it():
    before = torch.get_num_threads()
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"):  # restored on errors too
        with torch_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    for bad in (0, -3, True, 1.5):
        with pytest.raises(ValueError, match="--threads must be an int >= 1, got"):
            with torch_threads(bad):
                pass
    with torch_threads(None):  # None: leave torch's count alone
        assert torch.get_num_threads() == before


def test_stage_seeds_are_stable_distinct_and_independent_of_order():
    assert derive_seed(0, "a") == derive_seed(0, "a")
    assert len({derive_seed(s, st) for s in range(3) for st in ("a", "b", "arm=x/seed=1")}) == 9
    assert 0 <= derive_seed(2**40, "z") < 2**63


def test_bad_devices_are_one_line_value_errors():
    with pytest.raises(ValueError, match="'gpu7' is not a device; expected cpu, cuda"):
        select_device("gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="asked for CUDA, but this machine has none"):
            select_device("cuda")


def _run(tmp_path, resume=False):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Cfg(Config):
        n: int = 3

    if resume:
        return Run.resume(tmp_path, Cfg, progress=False)
    return Run.create("unit", Cfg(), out=tmp_path, progress=False)


def test_phases_run_once_and_sweeps_continue_at_the_next_cell(tmp_path):
    calls = []

    def cell(c):
        calls.append(c)
        run.log(cell=c)
        if c == "c" and len(calls) == 3:
            raise KeyboardInterrupt  # killed while computing cell c
        return {"value": torch.rand(()).item(), "cell": c}

    run = _run(tmp_path)
    first = run.phase("p", lambda: {"x": torch.rand(()).item()})
    with pytest.raises(KeyboardInterrupt):
        run.sweep("s", ["a", "b", "c", "d"], cell)
    run.close()

    ref_dir = tmp_path.parent / (tmp_path.name + "-ref")
    ref = Run.create("unit", run.config, out=ref_dir, progress=False)
    ref_first = ref.phase("p", lambda: {"x": torch.rand(()).item()})
    calls_ref = []
    ref_cells = ref.sweep(
        "s",
        ["a", "b", "c", "d"],
        lambda c: (calls_ref.append(c), ref.log(cell=c), {"value": torch.rand(()).item(), "cell": c})[-1],
    )
    ref.close()

    run = _run(tmp_path, resume=True)
    again = run.phase("p", lambda: pytest.fail("a finished phase must not rerun"))
    cells = run.sweep("s", ["a", "b", "c", "d"], cell)
    run.close()
    assert again == first == ref_first
    assert calls == ["a", "b", "c", "c", "d"]  # a and b were not recomputed
    assert cells == ref_cells  # RNG restored at the checkpoint: the same numbers as an uninterrupted run
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["cell"] for x in lines] == ["a", "b", "c", "d"]  # the interrupted cell's line was dropped


def test_a_cell_checkpoint_inside_a_sweep_keeps_the_lines_logged_before_it(tmp_path):
    """Nested resume: the sweep's checkpoint says 2 lines, the cell's own partial checkpoint says 4."""

    def cell(c, die_at=None):
        state = run.load_checkpoint(f"inner/{c}") or {"i": 0}
        for i in range(state["i"], 3):
            if (c, i) == die_at:
                raise KeyboardInterrupt
            run.log(cell=c, i=i)
            run.save_checkpoint(f"inner/{c}", {"i": i + 1})
        return c

    run = _run(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run.sweep("s", ["a", "b"], lambda c: cell(c, die_at=("b", 2)))
    run.close()
    run = _run(tmp_path, resume=True)
    assert run.sweep("s", ["a", "b"], cell) == {"a": "a", "b": "b"}
    run.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(x["cell"], x["i"]) for x in lines] == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
