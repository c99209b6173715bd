"""foresight.nn.linear: the one-row CPU reduction must be F.linear up to summation order, and only
ever replace it for a single row without autograd."""

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from foresight.nn.linear import Linear, linear, row_product_is_faster, tune_row_products, with_rows

lin = importlib.import_module("foresight.nn.linear")  # the module (foresight.nn.linear is also the function)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_row_product_matches_f_linear_for_the_listed_row_counts():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 200, generator=g)
    b = torch.randn(300, generator=g)
    for shape in [(200,), (1, 200), (1, 1, 200), (3, 200), (3, 1, 200), (1, 3, 200)]:
        x = torch.randn(*shape, generator=g)
        y = linear(x, w, b, row_products=(1, 3))
        assert y.shape == (*shape[:-1], 300)
        torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
        assert not torch.equal(y, F.linear(x, w, b))  # the reduction ran (different summation order)


def test_row_product_op_registration():
    w = torch.randn(96, 64)
    for x in (torch.randn(1, 1, 64), torch.randn(2, 1, 64)):
        torch.library.opcheck(lin.row_product, (x, w))


def test_several_rows_or_autograd_use_f_linear_exactly():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(50, 40, generator=g)
    x = torch.randn(3, 40, generator=g)
    assert torch.equal(linear(x, w, row_products=(1, 2)), F.linear(x, w))  # 3 rows: not listed
    wg = w.clone().requires_grad_()
    x1 = torch.randn(1, 40, generator=g)
    y = linear(x1, wg, row_products=(1,))
    assert torch.equal(y, F.linear(x1, w))  # BLAS path: bitwise equal
    y.sum().backward()
    torch.testing.assert_close(wg.grad, x1.expand(50, 40))


def test_linear_module_is_nn_linear_and_compiles_with_the_reduction():
    torch.manual_seed(0)
    ref = nn.Linear(64, 128)
    layer = Linear(64, 128)
    layer.load_state_dict(ref.state_dict())
    assert isinstance(layer, nn.Linear) and layer.state_dict().keys() == ref.state_dict().keys()
    layer.row_products = (1,)
    assert "row_products=(1,)" in repr(layer)
    x = torch.randn(1, 1, 64)

    def f(x):  # a producer of x that inductor would otherwise fuse into the reduction
        return layer(torch.tanh(x) * 2)

    compiled = torch.compile(f, fullgraph=True, dynamic=False)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), ref(torch.tanh(x) * 2), rtol=1e-5, atol=1e-5)


def test_tuning_only_measures_large_weights_and_remembers(monkeypatch):
    small, large = Linear(8, 8, bias=False), Linear(64, 32, bias=False)
    choices = tune_row_products([nn.Sequential(), small, large], rows=2, min_numel=1000)
    assert list(choices) == ["Linear(32, 64)"] and small.row_products == ()
    assert large.row_products == ((2,) if choices["Linear(32, 64)"] else ())
    calls = []
    monkeypatch.setattr(lin, "_best_time", lambda fn, repeats: calls.append(fn) or 1.0)
    row_product_is_faster(large.weight.detach(), rows=2)  # same shape, dtype, rows, threads: not measured again
    assert calls == []
    assert row_product_is_faster(torch.empty(4, 4, device="meta")) is False
    with pytest.raises(ValueError, match="rows must be >= 1, got 0"):
        row_product_is_faster(large.weight.detach(), rows=0)


def test_tuning_picks_the_faster_path(monkeypatch):
    times = iter([2.0, 1.0, 1.0, 2.0, 2.0, 1.0])  # (BLAS, reduction) per measurement
    monkeypatch.setattr(lin, "_best_time", lambda fn, repeats: next(times))
    monkeypatch.setattr(lin, "_MEASURED", {})
    layer = Linear(7, 5, bias=False)
    assert row_product_is_faster(torch.empty(5, 7)) is True
    assert row_product_is_faster(torch.empty(7, 5)) is False
    assert tune_row_products([layer], rows=4, min_numel=1) == {"Linear(5, 7)": True}
    assert layer.row_products == (4,)
    assert with_rows((1, 4), 4, False) == (1,) and with_rows((4,), 1, True) == (1, 4)
