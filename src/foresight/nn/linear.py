"""`row_product`: x @ W.T for a few rows of x, as a compiled streaming reduction (an opaque op).

Why: decoding multiplies one row per sequence (R = batch size) by every weight matrix, so it is
bound by how fast the weights stream from memory. On x86 CPUs the BLAS matrix-vector product of
PyTorch's CPU wheel reads a row-major fp32 weight at ~21 GB/s on one core and does not use a second
thread, and its small-R matrix products are not much faster per row. The loop inductor generates for
`(W[:, None, :] * x[None]).sum(-1)` reads each weight row once, keeps it in L1 for all R rows of x,
streams at ~35 GB/s on one core and splits weight rows across threads (256000 x 2304 LM head, one
core: R=1 112 -> 66 ms, R=8 301 -> 215 ms). Inductor's schedule depends on the shape, though: for
some power-of-two shapes it vectorises the wrong axis and is 10x slower, so whether to use it is
measured per weight and row count; that choice, and switching a model's layers over, is the opt-in
CPU decode transformation in `foresight.lm.cpu_decode`. Nothing in the reference models calls this.

The reduction is compiled on its own and called through the opaque op `foresight::row_product`,
so an enclosing `torch.compile` graph cannot fuse the producer of x into it (inductor would then
recompute, e.g., an RMSNorm once per output element: 1.6x slower on the LM head). It agrees with
`F.linear` up to float summation order (~1e-6 relative in fp32) and has no autograd formula.
"""

from __future__ import annotations

import types

import torch

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
