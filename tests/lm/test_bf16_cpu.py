"""bf16 on CPU: checkpoints keep their dtype, `--dtype auto` picks bf16 where the CPU has it, the
row-product decode works on bf16 weights, and our bf16 logits sit no further from fp32 than
transformers' bf16 logits do (same random model, fp32 reference on each side)."""

from __future__ import annotations

import argparse
import importlib
import io
import json

import pytest
import torch
import torch.nn.functional as F
from gemma2_testing import hf_twin, make_json_tokenizer, random_gemma2

from foresight.lm import Gemma2Config, hf_io
from foresight.lm import cpu_decode as cd
from foresight.lm.hf_io import auto_dtype, checkpoint_dtype, load_pretrained, parse_dtype, save_pretrained
from foresight.nn.linear import row_product

lm_generate = importlib.import_module("foresight.lm.generate")  # the package re-exports a function of that name

SMALL = Gemma2Config.tiny(
    vocab_size=1024,
    hidden_size=256,
    intermediate_size=512,
    num_heads=4,
    num_kv_heads=2,
    head_dim=64,
    query_pre_attn_scalar=64.0,
    sliding_window=16,
)
# Few distinct weight shapes ([32, 32], [16, 32], [256, 32]): few reductions to compile.
NARROW = Gemma2Config.tiny(num_layers=2, hidden_size=32, intermediate_size=32, num_heads=2, num_kv_heads=1, head_dim=16)
SLACK = 1.05  # ours may exceed transformers' bf16 error by at most 5%


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Row-product timings go to a private cache, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(cd, "_MEASURED", {})


def _errors(bf16: torch.Tensor, fp32: torch.Tensor) -> tuple[float, float]:
    d = (bf16.float() - fp32).abs()
    return d.max().item(), d.mean().item()


def _assert_no_worse(ours, ref, what: str) -> None:
    (om, oa), (rm, ra) = ours, ref
    assert ra > 1e-3, f"{what}: bf16 rounding should be visible at all"
    assert om <= SLACK * rm, f"{what}: max-abs error ours {om:.4g} > {SLACK} x transformers {rm:.4g}"
    assert oa <= SLACK * ra, f"{what}: mean-abs error ours {oa:.4g} > {SLACK} x transformers {ra:.4g}"


# ---------------------------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "std"), [(Gemma2Config.tiny(), 0.3), (SMALL, 0.15)], ids=["tiny", "small"])
@torch.inference_mode()
def test_bf16_prefill_error_is_no_larger_than_transformers(config, std):
    pytest.importorskip("transformers")
    fp32 = random_gemma2(config, std=std, seed=1)
    bf16 = random_gemma2(config, std=std, seed=1).to(torch.bfloat16)
    ours32, hf32, hf16 = fp32, hf_twin(fp32), hf_twin(bf16)
    ids = torch.randint(0, config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(4))  # 40 > W
    ref32 = hf32(ids).logits
    assert (ours32(ids).logits - ref32).abs().max() <= 1e-4  # the two fp32 references agree
    ours = _errors(bf16(ids).logits, ours32(ids).logits)
    ref = _errors(hf16(ids).logits, ref32)
    _assert_no_worse(ours, ref, "prefill logits")


@torch.inference_mode()
def test_bf16_decode_with_row_products_error_is_no_larger_than_transformers(monkeypatch):
    """Step-by-step decode through the caches (teacher-forced, so both sides see the same tokens),
    ours with every weight on the bf16 row-product reduction."""
    transformers = pytest.importorskip("transformers")
    monkeypatch.setattr(cd, "_measure", lambda weight, rows, repeats: (2.0, 1.0))  # the reduction always wins
    fp32 = random_gemma2(NARROW, std=0.4, seed=2)
    bf16 = random_gemma2(NARROW, std=0.4, seed=2).to(torch.bfloat16)
    choices = cd.enable_row_products(bf16, rows=1, min_numel=1)
    assert all(choices.values()) and isinstance(bf16.layers[0].mlp.up_proj, cd.RowProductLinear)
    hf32, hf16 = hf_twin(fp32), hf_twin(bf16)
    ids = torch.randint(0, NARROW.vocab_size, (1, 24), generator=torch.Generator().manual_seed(5))
    prompt = 4

    def ours_steps(model):
        cache = model.make_cache(1, ids.shape[1])
        out = [model(ids[:, :prompt], cache=cache, logits_to_keep=1).logits]
        out += [model(ids[:, t : t + 1], cache=cache).logits for t in range(prompt, ids.shape[1])]
        return torch.cat(out, dim=1)

    def hf_steps(hf):
        cache = transformers.DynamicCache(config=hf.config)
        logits = [hf(ids[:, :prompt], cache=cache, use_cache=True, logits_to_keep=1).logits]
        logits += [hf(ids[:, t : t + 1], cache=cache, use_cache=True).logits for t in range(prompt, ids.shape[1])]
        return torch.cat(logits, dim=1).float()

    exact, ref32 = ours_steps(fp32), hf_steps(hf32)
    assert (exact - ref32).abs().max() <= 1e-4
    _assert_no_worse(_errors(ours_steps(bf16), exact), _errors(hf_steps(hf16), ref32), "decode logits")


@torch.inference_mode()
def test_row_product_on_bf16_weights_matches_linear():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(256, 96, generator=g).to(torch.bfloat16)
    for rows in (1, 3):
        x = torch.randn(rows, 96, generator=g).to(torch.bfloat16)
        y = row_product(x, weight)
        assert y.dtype == torch.bfloat16 and y.shape == (rows, 256)
        # Both accumulate in fp32 and round once: within one bf16 rounding of the exact product.
        exact = F.linear(x.float(), weight.float())
        torch.testing.assert_close(y.float(), exact, rtol=2**-8, atol=1e-2)
        torch.testing.assert_close(y, F.linear(x, weight), rtol=2**-7, atol=2e-2)


# ---------------------------------------------------------------------------------------------
# Dtype choice
# ---------------------------------------------------------------------------------------------


def test_the_trainer_uses_the_same_native_bf16_check(monkeypatch):
    from foresight.lm import train

    for native, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(train, "cpu_has_native_bf16", lambda native=native: native)
        assert train.autocast_dtype("auto", torch.device("cpu")) == expected


def test_auto_dtype_picks_bf16_on_cpu_only_for_bf16_checkpoints_on_native_cpus(monkeypatch):
    for native in (True, False):
        monkeypatch.setattr(hf_io, "cpu_has_native_bf16", lambda native=native: native)
        assert auto_dtype(torch.bfloat16, "cpu") == (torch.bfloat16 if native else torch.float32)
        assert auto_dtype(torch.float32, "cpu") == torch.float32  # never rounded down
        assert auto_dtype(torch.float16, "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert auto_dtype(torch.float32, "cuda") == torch.bfloat16


def test_parse_dtype_names_the_value():
    assert parse_dtype("auto") is None and parse_dtype(None) is None
    assert parse_dtype("bfloat16") is torch.bfloat16 and parse_dtype(torch.float32) is torch.float32
    for bad in ("bf16", "float64", torch.int8):
        with pytest.raises(ValueError, match=r"unsupported dtype .*expected auto or one of"):
            parse_dtype(bad)


def test_load_pretrained_keeps_the_checkpoint_dtype(tmp_path):
    model = random_gemma2(Gemma2Config.tiny()).to(torch.bfloat16)
    save_pretrained(model, tmp_path)
    for dtype in (None, "auto"):
        assert load_pretrained(tmp_path, dtype=dtype).embed.weight.dtype == torch.bfloat16
    assert load_pretrained(tmp_path, dtype="float32").embed.weight.dtype == torch.float32
    # A config.json without a dtype: the stored tensors decide (as transformers' dtype="auto" does).
    config = json.loads((tmp_path / "config.json").read_text())
    del config["dtype"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert checkpoint_dtype(tmp_path) == torch.bfloat16
    reloaded = load_pretrained(tmp_path)
    assert reloaded.embed.weight.dtype == torch.bfloat16
    assert torch.equal(reloaded.embed.weight, model.embed.weight)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    pytest.importorskip("tokenizers")
    path = tmp_path_factory.mktemp("gemma2-bf16")
    save_pretrained(random_gemma2(Gemma2Config.tiny()).to(torch.bfloat16), path)
    make_json_tokenizer(path)
    return path


def _args(*argv):
    return lm_generate.add_generate_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_cli_auto_dtype_decodes_a_bf16_checkpoint_in_bf16_on_native_cpus(bf16_checkpoint, monkeypatch):
    loaded = []

    def spy(*args, **kwargs):
        loaded.append(kwargs["dtype"])
        return load_pretrained(*args, **kwargs)

    monkeypatch.setattr(lm_generate, "load_pretrained", spy)
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(hf_io, "cpu_has_native_bf16", lambda native=native: native)
        args = _args("--model", str(bf16_checkpoint), "--prompt", "the fox", "--max-new-tokens", "3")
        assert lm_generate.run_generate(args, stdout=io.StringIO()) == 0
        assert loaded[-1] == expected
    args = _args("--model", str(bf16_checkpoint), "--prompt", "the fox", "--max-new-tokens", "3", "--dtype", "float32")
    assert lm_generate.run_generate(args, stdout=io.StringIO()) == 0
    assert loaded[-1] == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cli_cuda_without_cuda_is_a_one_line_error(bf16_checkpoint, capsys):
    args = _args("--model", str(bf16_checkpoint), "--prompt", "hi", "--device", "cuda")
    assert lm_generate.run_generate(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'cuda' asked for CUDA, but this machine has none" in err


def test_cli_bad_device_or_dtype_is_a_one_line_error(bf16_checkpoint, capsys):
    args = _args("--model", str(bf16_checkpoint), "--prompt", "hi", "--device", "tpu")
    assert lm_generate.run_generate(args) == 2
    assert capsys.readouterr().err.count("\n") == 1
    args = _args("--model", str(bf16_checkpoint), "--prompt", "hi")
    args.dtype = "float8"  # argparse's choices stop this on the command line; a caller's Namespace may not
    assert lm_generate.run_generate(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unsupported dtype 'float8'" in err
