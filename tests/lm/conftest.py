"""Fixtures for the LM tests (helpers live in gemma2_testing.py)."""

from __future__ import annotations

import pytest
import torch
from gemma2_testing import random_gemma2

from foresight.lm import Gemma2, Gemma2Config
from foresight.lm.text_data import train_tokenizer

# Two shared cores: one intra-op thread per test process keeps timings predictable.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_model() -> Gemma2:
    return random_gemma2(Gemma2Config.tiny())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small text file and a 300-token BPE trained on it, for the train-lm CLI tests."""
    d = tmp_path_factory.mktemp("corpus")
    text = "".join(f"line {i}: the cat sat on the mat and the dog sat on the log.\n" for i in range(600))
    (d / "corpus.txt").write_text(text)
    train_tokenizer([text], 300, d / "tokenizer.json")
    return d
