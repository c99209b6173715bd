"""foresight.nn.linear.row_product: the few-row CPU reduction is x @ W.T up to summation order, is a
well-formed custom op, and stays one opaque call inside a compiled graph."""

import pytest
import torch
import torch.nn.functional as F

from foresight.nn.linear import row_product


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_row_product_matches_f_linear_for_any_leading_shape():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 200, generator=g)
    for shape in [(200,), (1, 200), (1, 1, 200), (3, 200), (3, 1, 200), (1, 3, 200)]:
        x = torch.randn(*shape, generator=g)
        y = row_product(x, w)
        assert y.shape == (*shape[:-1], 300)
        torch.testing.assert_close(y, F.linear(x, w), rtol=1e-5, atol=1e-5)
        assert not torch.equal(y, F.linear(x, w))  # the reduction ran (different summation order)


def test_row_product_op_registration():
    w = torch.randn(96, 64)
    for x in (torch.randn(1, 1, 64), torch.randn(2, 1, 64)):
        torch.library.opcheck(row_product, (x, w))


def test_row_product_inside_a_compiled_graph():
    w = torch.randn(128, 64)
    x = torch.randn(1, 1, 64)

    def f(x):  # a producer of x that inductor would otherwise fuse into the reduction
        return torch.ops.foresight.row_product(torch.tanh(x) * 2, w)

    compiled = torch.compile(f, fullgraph=True, dynamic=False)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), F.linear(torch.tanh(x) * 2, w), rtol=1e-5, atol=1e-5)
