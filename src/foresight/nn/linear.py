"""A linear layer whose few-row products can run as a compiled streaming reduction on CPU.

Why: decoding multiplies one row per sequence (R = batch size) by every weight matrix, so it is
bound by how fast the weights stream from memory. On x86 CPUs the BLAS matrix-vector product of
PyTorch's CPU wheel reads a row-major fp32 weight at ~21 GB/s on one core and does not use a second
thread, and its small-R matrix products are not much faster per row. The loop inductor generates for
`(W[:, None, :] * x[None]).sum(-1)` reads each weight row once, keeps it in L1 for all R rows of x,
streams at ~35 GB/s on one core and splits weight rows across threads (256000 x 2304 LM head, one
core: R=1 112 -> 66 ms, R=8 301 -> 215 ms). Inductor's schedule depends on the shape, though: for
some power-of-two shapes it vectorises the wrong axis and is 10x slower. So the choice is measured
per weight and row count (`row_product_is_faster`, on the real tensor, once per shape, dtype, R and
thread count) and switched on per layer (`Linear.row_products`, the row counts that use it).

The reduction is compiled on its own and called through the opaque op `foresight::row_product`,
so an enclosing `torch.compile` graph cannot fuse the producer of x into it (inductor would then
recompute, e.g., an RMSNorm once per output element: 1.6x slower on the LM head). Everything else
(other row counts, autograd, other devices) calls `F.linear`; the state dict is that of `nn.Linear`.
"""

from __future__ import annotations

import time
import types
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

# (out_features, in_features, dtype, rows, threads) -> whether the reduction was measured faster
_MEASURED: dict[tuple, bool] = {}
_REDUCE: dict[tuple, object] = {}  # (out_features, in_features, dtype, rows) -> compiled reduction


def _rows_dot(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # [R, D_in], [D_out, D_in] -> [R, D_out]
    # Weight rows outermost: each is loaded once and reused for all R rows of x.
    return (weight.unsqueeze(1) * x.unsqueeze(0)).sum(-1).t().contiguous()


def _compiled_reduce(rows: int, weight: torch.Tensor):
    key = (*weight.shape, weight.dtype, rows)
    if key not in _REDUCE:
        # dynamo keeps at most 8 compiled versions per code object and then silently runs it eagerly
        # (materialising [D_out, R, D_in]); a fresh code object per shape keeps every shape compiled.
        code = _rows_dot.__code__.replace(co_name=f"_rows_dot_{key[0]}x{key[1]}_r{rows}")
        fn = types.FunctionType(code, _rows_dot.__globals__, code.co_name)
        _REDUCE[key] = torch.compile(fn, dynamic=False, fullgraph=True)
    return _REDUCE[key]


@torch.library.custom_op("foresight::row_product", mutates_args=())
def row_product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T as a compiled streaming reduction: x [..., D_in] (few rows) -> [..., D_out]."""
    x2 = x.reshape(-1, x.shape[-1]).contiguous()  # [R, D_in]
    out = _compiled_reduce(x2.shape[0], weight)(x2, weight)  # [R, D_out]
    return out.reshape(*x.shape[:-1], weight.shape[0])


@row_product.register_fake
def _(x, weight):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def linear(
    x: torch.Tensor,  # [..., D_in]
    weight: torch.Tensor,  # [D_out, D_in]
    bias: torch.Tensor | None = None,  # [D_out]
    row_products: tuple[int, ...] = (),
) -> torch.Tensor:  # [..., D_out]
    """`F.linear`, or, when x has R rows with R in `row_products` (CPU, no autograd), the compiled
    reduction. The two agree up to float summation order (~1e-6 relative in fp32)."""
    if (
        row_products
        and x.numel() // max(x.shape[-1], 1) in row_products
        and x.device.type == "cpu"
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    ):
        y = torch.ops.foresight.row_product(x, weight)
        return y if bias is None else y + bias
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters and state dict); `row_products` lists the row counts whose CPU
    products run as the compiled reduction (set by `tune_row_products`)."""

    row_products: tuple[int, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.row_products)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", row_products={self.row_products}" if self.row_products else "")


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def row_product_is_faster(weight: torch.Tensor, rows: int = 1, repeats: int = 3, margin: float = 1.1) -> bool:
    """Time `F.linear` against the compiled reduction for `rows` rows times `weight` [D_out, D_in].

    True only on CPU and when the reduction is at least `margin` times faster. Measured on the given
    tensor (no copy of a possibly multi-GB weight) and remembered per shape, dtype, rows and threads.
    """
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if weight.device.type != "cpu" or weight.dim() != 2:
        return False
    key = (*weight.shape, weight.dtype, rows, torch.get_num_threads())
    if key not in _MEASURED:
        x = torch.randn(rows, weight.shape[1], dtype=weight.dtype)
        with torch.inference_mode():
            t_blas = _best_time(lambda: F.linear(x, weight), repeats)
            try:
                t_reduce = _best_time(lambda: row_product(x, weight), repeats)
            except Exception:  # e.g. no C++ compiler for inductor: keep BLAS
                t_reduce = float("inf")
        _MEASURED[key] = t_blas > margin * t_reduce
    return _MEASURED[key]


def with_rows(row_products: tuple[int, ...], rows: int, use: bool) -> tuple[int, ...]:
    """`row_products` with `rows` added (use=True) or removed, sorted."""
    chosen = set(row_products) | {rows} if use else set(row_products) - {rows}
    return tuple(sorted(chosen))


def tune_row_products(modules: Iterable[nn.Module], rows: int = 1, min_numel: int = 1 << 20) -> dict[str, bool]:
    """Decide, for every `Linear` among `modules` whose weight has >= `min_numel` entries, whether
    products with `rows` rows use the reduction (updates `row_products`).

    Smaller weights sit in cache, where per-call overhead, not bandwidth, decides, so they keep
    `F.linear`. Returns {"Linear(out, in)": choice} for the shapes measured.
    """
    choices = {}
    for module in modules:
        if isinstance(module, Linear) and module.weight.numel() >= min_numel:
            use = row_product_is_faster(module.weight.detach(), rows)
            module.row_products = with_rows(module.row_products, rows, use)
            choices[f"Linear({module.out_features}, {module.in_features})"] = use
    return choices
