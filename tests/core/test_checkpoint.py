import random

import numpy as np
import pytest
import torch

from foresight.core.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def test_round_trip_nested_state_with_optimizer(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 3, "hist": [1.5, None], "pair": (1, "a")}
    save_checkpoint(tmp_path / "c.safetensors", state)
    back = load_checkpoint(tmp_path / "c.safetensors")
    assert back["epoch"] == 3 and back["hist"] == [1.5, None] and back["pair"] == (1, "a")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(back["model"][k], v)
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1.0)
    opt2.load_state_dict(back["optim"])  # int-keyed optimizer state survives the trip
    assert opt2.state_dict()["param_groups"][0]["lr"] == 1e-2
    torch.testing.assert_close(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_write_is_atomic_no_temp_left_and_old_file_kept_on_failure(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.ones(2)})
    with pytest.raises(TypeError, match="cannot checkpoint value of type object at /bad"):
        save_checkpoint(path, {"w": torch.zeros(2), "bad": object()})
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(2))  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_truncated_and_foreign_files_are_clear_errors(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.arange(1000.0)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    from safetensors.torch import save_file

    save_file({"w": torch.ones(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not a foresight checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_rng_state_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    save_checkpoint(tmp_path / "r.safetensors", {"rng": rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "r.safetensors")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def _flip_one_bit(path, offset_from_end):
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_bit_anywhere_in_the_tensors_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.arange(1000.0), "step": 7})
    _flip_one_bit(path, 100)  # inside the tensor bytes: still a valid safetensors file
    with pytest.raises(CheckpointError, match="does not match its recorded sha256"):
        load_checkpoint(path)


def test_a_non_finite_checkpoint_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.tensor([1.0, float("nan")]), "ok": torch.tensor([1, 2])})
    with pytest.raises(CheckpointError, match="non-finite values in 'w'"):
        load_checkpoint(path)


def test_checkpoint_files_get_normal_permissions(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(2)})
    finally:
        os.umask(old)
    assert (tmp_path / "c.safetensors").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
