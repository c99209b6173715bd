"""A linear layer whose one-row products can run as a compiled streaming reduction on CPU.

Why: decoding one token multiplies a single row by every weight matrix, so it is bound by how fast
the weights stream from memory. On x86 CPUs the BLAS matrix-vector product of PyTorch's CPU wheel
reads a row-major fp32 weight at ~21 GB/s on one core and does not use a second thread, while the
loop inductor generates for `(x * W).sum(-1)` streams at ~35 GB/s and splits rows across threads
(256000 x 2304 LM head: 112 ms -> 66 ms on one core). Inductor's schedule depends on the shape,
though: for some power-of-two shapes it vectorises the wrong axis and is 10x slower. So the choice
is measured per weight (`row_product_is_faster`, on the real tensor, once per shape, dtype and
thread count) and switched on per layer (`Linear.row_product`).

The reduction is compiled on its own and called through the opaque op `foresight::row_product`,
so an enclosing `torch.compile` graph cannot fuse the producer of x into it (inductor would then
recompute, e.g., an RMSNorm once per output row: 1.6x slower on the LM head). Everything else (more
than one row, autograd, other devices) calls `F.linear`; the state dict is that of `nn.Linear`.
"""

from __future__ import annotations

import time
import types
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

# (out_features, in_features, dtype, threads) -> whether the reduction was measured faster
_MEASURED: dict[tuple, bool] = {}
_REDUCE: dict[tuple, object] = {}  # (out_features, in_features, dtype) -> compiled reduction


def _row_dot(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # [1, D_in], [D_out, D_in] -> [1, D_out]
    return (x.unsqueeze(-2) * weight).sum(-1)


def _compiled_reduce(weight: torch.Tensor):
    key = (*weight.shape, weight.dtype)
    if key not in _REDUCE:
        # dynamo keeps at most 8 compiled versions per code object and then silently runs it eagerly
        # (materialising [D_out, D_in]); a fresh code object per shape keeps every shape compiled.
        code = _row_dot.__code__.replace(co_name=f"_row_dot_{key[0]}x{key[1]}")
        fn = types.FunctionType(code, _row_dot.__globals__, code.co_name)
        _REDUCE[key] = torch.compile(fn, dynamic=False, fullgraph=True)
    return _REDUCE[key]


@torch.library.custom_op("foresight::row_product", mutates_args=())
def row_product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """One row times weight.T as a compiled streaming reduction: x [..., D_in] (one row) -> [..., D_out]."""
    out = _compiled_reduce(weight)(x.reshape(1, x.shape[-1]).contiguous(), weight)
    return out.reshape(*x.shape[:-1], weight.shape[0])


@row_product.register_fake
def _(x, weight):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def linear(
    x: torch.Tensor,  # [..., D_in]
    weight: torch.Tensor,  # [D_out, D_in]
    bias: torch.Tensor | None = None,  # [D_out]
    row_product: bool = False,
) -> torch.Tensor:  # [..., D_out]
    """`F.linear`, or, when `row_product` and x is a single row on CPU without autograd, the
    compiled reduction sum(x * W, -1). The two agree up to float summation order (~1e-6 relative)."""
    if (
        row_product
        and x.numel() == x.shape[-1]
        and x.device.type == "cpu"
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    ):
        y = torch.ops.foresight.row_product(x, weight)
        return y if bias is None else y + bias
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters and state dict) with a `row_product` switch for one-row CPU products."""

    row_product: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.row_product)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", row_product=True" if self.row_product else "")


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def row_product_is_faster(weight: torch.Tensor, repeats: int = 3, margin: float = 1.1) -> bool:
    """Time `F.linear` against the compiled reduction for one row times `weight` [D_out, D_in].

    True only on CPU and when the reduction is at least `margin` times faster. Measured on the given
    tensor (no copy of a possibly multi-GB weight) and remembered per shape, dtype and thread count.
    """
    if weight.device.type != "cpu" or weight.dim() != 2:
        return False
    key = (*weight.shape, weight.dtype, torch.get_num_threads())
    if key not in _MEASURED:
        x = torch.randn(1, weight.shape[1], dtype=weight.dtype)
        with torch.inference_mode():
            t_blas = _best_time(lambda: F.linear(x, weight), repeats)
            try:
                t_reduce = _best_time(lambda: row_product(x, weight), repeats)
            except Exception:  # e.g. no C++ compiler for inductor: keep BLAS
                t_reduce = float("inf")
        _MEASURED[key] = t_blas > margin * t_reduce
    return _MEASURED[key]


def tune_row_products(modules: Iterable[nn.Module], min_numel: int = 1 << 20) -> dict[str, bool]:
    """Set `row_product` on every `Linear` among `modules` whose weight has >= `min_numel` entries.

    Smaller weights sit in cache, where per-call overhead, not bandwidth, decides, so they keep
    `F.linear`. Returns {"Linear(out, in)": choice} for the shapes measured.
    """
    choices = {}
    for module in modules:
        if isinstance(module, Linear) and module.weight.numel() >= min_numel:
            module.row_product = row_product_is_faster(module.weight.detach())
            choices[f"Linear({module.out_features}, {module.in_features})"] = module.row_product
    return choices
