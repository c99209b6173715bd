"""foresight.lm.cpu_decode: the opt-in row-product transformation leaves the reference model plain,
swaps only measured-faster weights, keeps the state dict, and times each key once per machine."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from gemma2_testing import random_gemma2
from torch import nn

from foresight.lm import Gemma2Config, generate
from foresight.lm import cpu_decode as cd

# Few distinct weight shapes (q, o, gate, up, down: [32, 32]; k, v: [16, 32]; head [256, 32]), so
# few reductions to compile.
CONFIG = Gemma2Config.tiny(num_layers=2, hidden_size=32, intermediate_size=32, num_heads=2, num_kv_heads=1, head_dim=16)


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test: its own on-disk cache and an empty in-process memory (a 'new process')."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(cd, "_MEASURED", {})


def _fake_timer(monkeypatch, reduce_wins=lambda weight: True):
    """Replace the timing with a counter: (BLAS 2 s, reduction 1 s) where `reduce_wins`, else reversed."""
    calls = []

    def measure(weight, rows, repeats):
        calls.append((tuple(weight.shape), rows))
        return (2.0, 1.0) if reduce_wins(weight) else (1.0, 2.0)

    monkeypatch.setattr(cd, "_measure", measure)
    return calls


def test_the_reference_model_is_plain():
    model = random_gemma2(CONFIG)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is nn.Linear for m in linears)
    assert not any(hasattr(m, "rows") or hasattr(m, "row_products") for m in model.modules())
    assert not hasattr(model, "head_row_products") and not hasattr(model, "tune_decode")
    assert "lm_head_product" not in model.__dict__


def test_enable_swaps_only_the_faster_weights_and_keeps_the_state_dict(monkeypatch):
    model = random_gemma2(CONFIG)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    calls = _fake_timer(monkeypatch, reduce_wins=lambda w: w.shape[0] != 16)  # k/v [16, 32] stay BLAS
    choices = cd.enable_row_products(model, rows=2, min_numel=1)
    assert choices["layers.0.attn.q_proj"] is True and choices["layers.0.attn.k_proj"] is False
    assert choices[cd.TIED_HEAD] is True
    assert len(calls) == len({c for c in calls})  # each (shape, rows) timed once, however many layers share it
    attn = model.layers[0].attn
    assert isinstance(attn.q_proj, cd.RowProductLinear) and attn.q_proj.rows == (2,)
    assert type(attn.k_proj) is nn.Linear
    assert model.state_dict().keys() == state.keys()
    assert all(model.state_dict()[k] is not None and torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert attn.q_proj.weight is dict(model.named_parameters())["layers.0.attn.q_proj.weight"]

    cd.enable_row_products(model, rows=1, min_numel=1)  # a second row count adds to the first
    assert attn.q_proj.rows == (1, 2)
    ids = torch.tensor([[2, 5, 9], [2, 7, 11]])
    with torch.inference_mode():
        fast = model(ids[:, -1:]).logits  # 2 rows: the reduction everywhere it was chosen
        cd.disable_row_products(model)
        plain = model(ids[:, -1:]).logits
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    assert "lm_head_product" not in model.__dict__
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert not torch.equal(fast, plain)  # the reduction really ran


def test_timing_is_cached_on_disk_for_the_next_process(monkeypatch, tmp_path):
    calls = _fake_timer(monkeypatch)
    model = random_gemma2(CONFIG)
    cd.enable_row_products(model, rows=1, min_numel=1)
    measured = len(calls)
    assert measured > 0
    stored = json.loads(cd.cache_file().read_text())
    assert cd.cache_file() == tmp_path / "xdg" / "foresight" / "cpu_decode.json"
    key = next(iter(stored["choices"]))
    assert torch.__version__ in key and cd.cpu_model() in key and "threads" in key
    assert all(v["row_product"] is True for v in stored["choices"].values())

    monkeypatch.setattr(cd, "_MEASURED", {})  # a new process: nothing in memory, the file remains
    other = random_gemma2(CONFIG, seed=1)
    cd.enable_row_products(other, rows=1, min_numel=1)
    assert len(calls) == measured  # no timing at all
    assert isinstance(other.layers[0].mlp.up_proj, cd.RowProductLinear)

    cd.enable_row_products(other, rows=3, min_numel=1)  # a new row count is a new key: timed
    assert len(calls) > measured


def test_a_corrupt_cache_file_is_remeasured(monkeypatch):
    calls = _fake_timer(monkeypatch)
    cd.cache_file().parent.mkdir(parents=True)
    cd.cache_file().write_text("[not, json")
    assert cd.row_products_faster([torch.randn(8, 8)], rows=1) == [True]
    assert len(calls) == 1 and json.loads(cd.cache_file().read_text())["format"] == cd.CACHE_FORMAT
    assert cd.row_products_faster([torch.empty(4, 4, device="meta")], rows=1) == [False]  # not CPU: no timing
    assert len(calls) == 1
    with pytest.raises(ValueError, match="rows must be >= 1, got 0"):
        cd.row_products_faster([torch.randn(8, 8)], rows=0)


def test_generate_applies_it_on_cpu_and_row_products_false_turns_it_off(monkeypatch):
    calls = _fake_timer(monkeypatch)
    monkeypatch.setattr(cd, "MIN_NUMEL", 1)  # the tiny weights count as big
    model = random_gemma2(CONFIG)
    prompt = torch.tensor([[2, 17, 99]])
    fast = generate(model, prompt, max_new_tokens=4)
    assert calls and isinstance(model.layers[0].attn.q_proj, cd.RowProductLinear)
    plain = generate(model, prompt, max_new_tokens=4, row_products=False)
    assert type(model.layers[0].attn.q_proj) is nn.Linear and "lm_head_product" not in model.__dict__
    assert torch.equal(fast, plain)


def test_row_product_linear_falls_back_to_f_linear_for_other_rows_and_autograd():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(50, 40, generator=g)
    x = torch.randn(3, 40, generator=g)
    assert torch.equal(cd.row_product_linear(x, w, rows=(1, 2)), F.linear(x, w))  # 3 rows: not listed
    wg = w.clone().requires_grad_()
    x1 = torch.randn(1, 40, generator=g)
    y = cd.row_product_linear(x1, wg, rows=(1,))
    assert torch.equal(y, F.linear(x1, w))  # autograd: BLAS path, bitwise equal
    y.sum().backward()
    torch.testing.assert_close(wg.grad, x1.expand(50, 40))
