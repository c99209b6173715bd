import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from foresight.core.run import Run
from foresight.lm import train_cli
from foresight.lm.gemma2 import Gemma2, Gemma2Config
from foresight.lm.text_data import PackedSequences, train_tokenizer
from foresight.lm.train import RESUME_MAY_CHANGE, TrainConfig, Trainer, WarmupCosine

V, T = 64, 8


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(n_windows=40, seed=0):
    rng = np.random.default_rng(seed)
    # a learnable stream: mostly token i+1 after token i
    toks = np.cumsum(rng.integers(1, 3, size=n_windows * T + 1)) % V
    return PackedSequences(toks.astype(np.uint16), T)


def _model(seed=0):
    torch.manual_seed(seed)
    return Gemma2(Gemma2Config.tiny(vocab_size=V, num_layers=2, max_position_embeddings=T))


def _cfg(**kw):
    base = dict(
        steps=12,
        batch_size=4,
        lr=1e-2,
        warmup_steps=2,
        eval_every=6,
        eval_batches=2,
        checkpoint_every=5,
        log_every=1,
        distributed="none",
        precision="fp32",
    )
    base.update(kw)
    return TrainConfig(**base)


def test_warmup_cosine_golden_values():
    f = WarmupCosine(warmup=4, total=13, min_ratio=0.1)  # f(s) scales the lr of step s = 0 .. 12
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0  # cosine starts at the peak ...
    assert f(8) == pytest.approx(0.55)  # ... is halfway at (1 + 0.1) / 2 ...
    assert f(12) == pytest.approx(0.1)  # ... and ends at min_ratio on the last step
    assert f(100) == pytest.approx(0.1)


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="precision='fp16' is not allowed"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="lr must be > 0, got 0.0"):
        TrainConfig(lr=0.0)
    with pytest.raises(ValueError, match="min_lr_ratio must be in"):
        TrainConfig(min_lr_ratio=2.0)
    with pytest.raises(ValueError, match="batch_size=6 must be a multiple of micro_batch_size"):
        Trainer(_model(), _cfg(batch_size=6, micro_batch_size=4), _data())
    with pytest.raises(ValueError, match="needs a torchrun launch"):
        Trainer(_model(), _cfg(distributed="ddp"), _data())


def test_training_reduces_validation_loss_and_logs():
    trainer = Trainer(_model(), _cfg(steps=30, eval_every=10, lr=3e-2), _data(), _data(seed=1))
    result = trainer.fit()
    vals = [h["val_loss"] for h in result.history]
    assert len(vals) == 3 and vals[-1] < vals[0] - 1.0
    assert vals[0] < np.log(V) + 0.5
    steps = [line["step"] for line in trainer.logged if "loss" in line]
    assert steps == list(range(1, 31))
    assert result.tokens == 30 * 4 * T


def test_gradient_accumulation_matches_one_big_batch():
    a = Trainer(_model(), _cfg(micro_batch_size=4), _data()).fit()
    b = Trainer(_model(), _cfg(micro_batch_size=1), _data()).fit()  # 4 micro-batches of 1
    assert b.final_loss == pytest.approx(a.final_loss, abs=1e-5)
    assert b.val_loss == pytest.approx(a.val_loss, abs=1e-5)


def test_any_module_with_the_logits_contract_trains():
    @dataclass
    class Out:
        logits: torch.Tensor

    class Bigram(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(V, V)

        def forward(self, input_ids):
            return Out(self.table(input_ids))

    torch.manual_seed(0)
    result = Trainer(Bigram(), _cfg(steps=20, lr=0.1, eval_every=10), _data(), _data(seed=1)).fit()
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]


def test_objective_extras_are_averaged_over_micro_batches_and_logged():
    from foresight.lm.distill import LMLoss, next_token_loss

    class WithExtras:  # an objective reporting two extra scalars per micro-batch
        def __init__(self):
            self.seen = []

        def __call__(self, model, input_ids, targets, window_ids):
            ce = next_token_loss(model(input_ids).logits, targets)
            marker = float(window_ids[0])
            self.seen.append(marker)
            return LMLoss(loss=ce, ce=ce.detach(), extra={"marker": torch.tensor(marker), "const": 2.5})

    objective = WithExtras()
    trainer = Trainer(_model(), _cfg(steps=3, micro_batch_size=2, eval_every=0), _data(), objective=objective)
    trainer.fit()
    lines = [line for line in trainer.logged if "loss" in line]
    assert len(lines) == 3 and len(objective.seen) == 6  # 2 micro-batches per step
    for step, line in enumerate(lines):
        assert line["const"] == pytest.approx(2.5)
        assert line["marker"] == pytest.approx(sum(objective.seen[2 * step : 2 * step + 2]) / 2)


def test_bf16_autocast_trains_on_cpu():
    tr = Trainer(_model(), _cfg(steps=3, precision="bf16"), _data(), _data(seed=1))
    assert tr.autocast_dtype == torch.bfloat16
    result = tr.fit()
    assert np.isfinite(result.final_loss) and np.isfinite(result.val_loss)
    assert next(tr.module.parameters()).dtype == torch.float32  # master weights stay fp32


def _new_run(path, cfg):
    return Run.create("train-lm", cfg, out=path, progress=False)


def _resumed_run(path, cfg):
    return Run.resume(
        path, TrainConfig, experiment="train-lm", config=cfg, may_change=RESUME_MAY_CHANGE, progress=False
    )


def _fit(path, cfg, resume=False, model_seed=0):
    run = (_resumed_run if resume else _new_run)(path, cfg)
    try:
        return Trainer(_model(seed=model_seed), cfg, _data(), _data(seed=1), run=run).fit()
    finally:
        run.close()


def _killed_at(path, cfg, step, resume=False):
    """Train up to ``step`` with a checkpoint there, log past it, and stop without a clean exit."""
    run = (_resumed_run if resume else _new_run)(path, cfg)
    first = Trainer(_model(), cfg, _data(), _data(seed=1), run=run)
    first.resume()
    while first.step < step + 2:
        metrics = first.train_step()
        run.log(**metrics)
        if first.step == step:
            first.save()
    run.close()


def test_in_process_resume_is_exact_and_truncates_metrics(tmp_path):
    cfg = _cfg(checkpoint_every=5)
    ref = _fit(tmp_path / "ref", cfg)
    _killed_at(tmp_path / "run", cfg, step=5)
    resumed = _fit(tmp_path / "run", cfg, resume=True, model_seed=123)
    assert resumed.final_loss == pytest.approx(ref.final_loss, abs=1e-6)
    assert resumed.val_loss == pytest.approx(ref.val_loss, abs=1e-6)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == list(range(1, 13))  # steps 6, 7 not duplicated


def test_resume_refuses_a_different_schedule_naming_the_field(tmp_path):
    _fit(tmp_path, _cfg(steps=5))
    with pytest.raises(ValueError, match=r"different config \(lr: 0.01 -> 0.5\)"):
        _fit(tmp_path, _cfg(steps=8, lr=0.5), resume=True)


def test_more_steps_on_resume_extend_the_run_exactly(tmp_path):
    """--steps 8 on a finished 5-step run continues at the final LR; killed midway, it ends the same."""
    short, long = _cfg(steps=5, checkpoint_every=1), _cfg(steps=8, checkpoint_every=1)
    _fit(tmp_path / "a", short)
    extended = _fit(tmp_path / "a", long, resume=True)
    _fit(tmp_path / "b", short)
    _killed_at(tmp_path / "b", long, step=6, resume=True)
    again = _fit(tmp_path / "b", long, resume=True)
    assert extended.steps == again.steps == 8
    assert again.final_loss == extended.final_loss and again.val_loss == extended.val_loss  # bit-identical
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines() if "lr" in x]
    assert lrs[5:] == [lrs[4]] * 3  # the extension runs at the schedule's final learning rate
    with pytest.raises(ValueError, match="past steps=6"):
        _fit(tmp_path / "a", _cfg(steps=6, checkpoint_every=1), resume=True)


# -- the CLI and the SIGKILL test --------------------------------------------------------------


def _cli_args(corpus, out, *extra):
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
        "4",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "3",
        "--eval-every",
        "0",
        "--eval-batches",
        "2",
        "--log-every",
        "1",
        "--precision",
        "fp32",
        "--model-set",
        "num_layers=2",
        "--model-set",
        "hidden_size=32",
        "--no-progress",
        "--threads",
        "1",
        "--distributed",
        "none",
        *extra,
    ]


def _run(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "foresight.lm.train_cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


def _losses(out):
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(x["step"], x["loss"]) for x in lines if "loss" in x]


def test_sigkill_at_a_random_step_then_resume_ends_like_an_uninterrupted_run(corpus, tmp_path):
    steps = 40
    common = ["--steps", str(steps), "--checkpoint-every", "3"]
    ref = _run(_cli_args(corpus, tmp_path / "ref", *common))
    kill_at = random.Random(os.getpid()).randint(5, 30)  # a different step on different runs

    victim = _run(_cli_args(corpus, tmp_path / "victim", *common))
    metrics = tmp_path / "victim" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:
        if metrics.exists() and sum(1 for _ in open(metrics)) >= kill_at:
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, f"run ended before the kill at step {kill_at}"
    assert not (tmp_path / "victim" / "results.json").exists()

    resumed = _run(_cli_args(corpus, tmp_path / "victim", *common, "--resume"))
    assert resumed.wait(timeout=180) == 0, resumed.stderr.read().decode()[-2000:]
    assert ref.wait(timeout=180) == 0, ref.stderr.read().decode()[-2000:]
    got = json.loads((tmp_path / "victim" / "results.json").read_text())
    want = json.loads((tmp_path / "ref" / "results.json").read_text())
    assert got["steps"] == want["steps"] == steps
    assert abs(got["final_loss"] - want["final_loss"]) <= 1e-6, (
        kill_at,
        got["final_loss"],
        want["final_loss"],
    )
    assert abs(got["val_loss"] - want["val_loss"]) <= 1e-6
    # the metrics log is the uninterrupted one: lines after the last checkpoint were dropped, then replayed
    assert [s for s, _ in _losses(tmp_path / "victim")] == list(range(1, steps + 1))
    np.testing.assert_allclose(
        [v for _, v in _losses(tmp_path / "victim")],
        [v for _, v in _losses(tmp_path / "ref")],
        rtol=0,
        atol=1e-6,
    )


def test_cli_writes_hf_model_and_refuses_to_overwrite(corpus, tmp_path):
    from foresight.lm.hf_io import load_pretrained
    from foresight.lm.text_data import tokenizer_sha256

    out = tmp_path / "lm"
    assert train_cli.main(_cli_args(corpus, out, "--steps", "3")) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["steps"] == 3 and summary["tokens"] == 3 * 4 * 16 and np.isfinite(summary["val_loss"])
    model = load_pretrained(out / "model")
    assert model.config.vocab_size == 300 and model.config.hidden_size == 32
    assert tokenizer_sha256(out / "model" / "tokenizer.json") == tokenizer_sha256(corpus / "tokenizer.json")
    with pytest.raises(ValueError, match="holds a finished train-lm run"):
        train_cli.main(_cli_args(corpus, out, "--steps", "3"))
    with pytest.raises(ValueError, match="already trained to step 3; pass --steps larger"):
        train_cli.main(_cli_args(corpus, out, "--steps", "3", "--resume"))
    with pytest.raises(ValueError, match="unknown Gemma2Config field 'width'"):
        train_cli.main(_cli_args(corpus, tmp_path / "x", "--model-set", "width=3"))
    assert not (tmp_path / "x").exists()  # a bad flag is refused before the folder is claimed


def test_distill_cli_online_and_cached_and_tokenizer_mismatch(corpus, tmp_path):
    teacher = tmp_path / "teacher"
    assert train_cli.main(_cli_args(corpus, teacher, "--steps", "3")) == 0
    base = _cli_args(corpus, tmp_path / "s1", "--steps", "2")
    base[0] = "distill"
    i = base.index("--tokenizer")
    del base[i : i + 2]  # the student takes the teacher's tokenizer
    assert train_cli.main([*base, "--teacher", str(teacher)]) == 0
    online = json.loads((tmp_path / "s1" / "results.json").read_text())
    cached_args = [a if a != str(tmp_path / "s1") else str(tmp_path / "s2") for a in base]
    assert train_cli.main([*cached_args, "--teacher", str(teacher / "model"), "--topk", "300"]) == 0
    cached = json.loads((tmp_path / "s2" / "results.json").read_text())
    assert (tmp_path / "s2" / "teacher_topk" / "meta.json").is_file()
    assert cached["final_loss"] == pytest.approx(online["final_loss"], abs=1e-4)  # k = V: same loss

    other = tmp_path / "other_tok.json"
    from foresight.lm.text_data import builtin_corpus

    train_tokenizer(builtin_corpus(max_chars=20_000), 300, other)  # same size, other merges
    bad = [a if a != str(tmp_path / "s1") else str(tmp_path / "s3") for a in base]
    with pytest.raises(ValueError, match="tokenizer mismatch: teacher tokenizer.json sha256"):
        train_cli.main([*bad, "--teacher", str(teacher), "--tokenizer", str(other)])


def test_cli_arguments_coexist_with_foresight_cli_common_flags():
    import argparse

    parser = argparse.ArgumentParser()
    for flag in ("--device", "--data-dir", "--threads"):  # what foresight.cli adds to every command
        parser.add_argument(flag)
    parser.add_argument("--no-progress", action="store_true")
    train_cli.add_train_arguments(parser)
    args = parser.parse_args(["--corpus", "builtin", "--out", "o", "--compile", "true", "--lr", "3e-4"])
    assert args.compile is True and args.lr == 3e-4 and args.precision == "auto"
    distill = train_cli.add_distill_arguments(argparse.ArgumentParser())
    args = distill.parse_args(["--corpus", "c", "--out", "o", "--teacher", "t", "--topk", "64"])
    assert args.topk == 64 and args.temperature == 1.0 and args.alpha == 1.0


def test_train_lm_and_distill_never_write_into_a_folder_they_do_not_own(corpus, tmp_path, capsys):
    from foresight import cli

    hf = tmp_path / "gemma-2-2b"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "gemma2"}')
    (hf / "model.safetensors").write_bytes(b"\0" * 32)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in hf.iterdir()}
    assert cli.main(_cli_args(corpus, hf, "--steps", "1", "--no-progress")) == 2
    assert "is not empty and is not a foresight run folder" in capsys.readouterr().err
    distill = _cli_args(corpus, hf, "--steps", "1", "--no-progress", "--teacher", str(hf))
    distill[0] = "distill"
    assert cli.main(distill) == 2
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in hf.iterdir()} == before
    assert cli.main(_cli_args(corpus, "", "--steps", "1")) == 2
    assert "--out '' is not a folder" in capsys.readouterr().err
