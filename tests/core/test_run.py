"""foresight.core.run thread helpers shared by the experiments."""

import pytest
import torch

from foresight.core.run import torch_threads


def test_torch_threads_sets_and_restores_the_count_and_checks_it():
    before = torch.get_num_threads()
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"):  # restored on errors too
        with torch_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="thread count must be an int >= 1, got"):
            with torch_threads(bad):
                pass
    assert torch.get_num_threads() == before
