"""Fixtures for the LM tests (helpers live in gemma2_testing.py)."""

from __future__ import annotations

import pytest
import torch
from gemma2_testing import random_gemma2

from foresight.lm import Gemma2, Gemma2Config

# Two shared cores: one intra-op thread per test process keeps timings predictable.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_model() -> Gemma2:
    return random_gemma2(Gemma2Config.tiny())
