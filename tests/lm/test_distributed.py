"""DDP and FSDP2 under torchrun (2 CPU processes, gloo) against one process with the same global batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from foresight.lm import train_cli

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _args(corpus, out, *extra):
    # global batch 8 = 2 ranks x 2 micro-batches of 2 (accumulation exercised) vs 1 process x 8
    return [
        "train-lm",
        "--corpus",
        str(corpus / "corpus.txt"),
        "--tokenizer",
        str(corpus / "tokenizer.json"),
        "--out",
        str(out),
        "--seq-len",
        "16",
        "--batch-size",
        "8",
        "--steps",
        "5",
        "--lr",
        "5e-3",
        "--warmup-steps",
        "1",
        "--eval-every",
        "5",
        "--eval-batches",
        "1",
        "--log-every",
        "1",
        "--checkpoint-every",
        "5",
        "--precision",
        "fp32",
        "--model-set",
        "num_layers=2",
        "--model-set",
        "hidden_size=32",
        "--no-progress",
        "--threads",
        "1",
        *extra,
    ]


def _metrics(out):
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "loss" in x], [x["val_loss"] for x in lines if "val_loss" in x]


@pytest.fixture(scope="module")
def single(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    before = torch.get_num_threads()
    try:
        assert train_cli.main(_args(corpus, out, "--distributed", "none")) == 0
    finally:
        torch.set_num_threads(before)
    return _metrics(out)


@pytest.mark.skipif(not TORCHRUN.exists() or not torch.distributed.is_available(), reason="no torchrun")
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(mode, corpus, single, tmp_path):
    out = tmp_path / mode
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        str(TORCHRUN),
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "foresight.lm.train_cli",
        *_args(corpus, out, "--distributed", mode, "--micro-batch-size", "2"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses, vals = _metrics(out)
    ref_losses, ref_vals = single
    assert len(losses) == len(ref_losses) == 5
    assert losses == pytest.approx(ref_losses, abs=2e-5)
    assert vals == pytest.approx(ref_vals, abs=2e-5)
    # the checkpoint is a full, unsharded state that a single process can load
    from foresight.lm.hf_io import load_pretrained

    assert load_pretrained(out / "model").config.hidden_size == 32
    shutil.rmtree(out)
