"""Opt-in CPU decode speed-up: few-row products as compiled streaming reductions.

Decoding a batch of R sequences multiplies R rows by every weight, which is bound by how fast the
weights stream from memory; for big weights `foresight.nn.linear.row_product` streams faster than
BLAS (the numbers are in its docstring). But inductor's loop is not faster for every shape (some
power-of-two shapes vectorise the wrong axis and are 10x slower), so the choice is measured, per
weight shape, dtype, row count and thread count, on the real tensor, and then only the layers where
the reduction won are switched over:

    enable_row_products(model, rows=B)   # in place; what `generate` does on CPU (row_products=True)
    disable_row_products(model)          # back to plain nn.Linear / F.linear

The transformation swaps each chosen `nn.Linear` for a `RowProductLinear` holding the very same
parameters (same names, so the state dict is unchanged) and, for a tied Gemma 2 LM head (no module),
overrides `lm_head_product` on the instance. Only CPU inputs of exactly those row counts without
autograd take the reduction; everything else still calls `F.linear`.

Measurements are kept on disk, in `cache_root()/cpu_decode.json` (`$XDG_CACHE_HOME/foresight`, else
`~/.cache/foresight`), keyed by torch version, CPU model, shape, dtype, rows and threads, so a new
process does not pay the timing (and inductor compilation for it) again.
"""

from __future__ import annotations

import functools
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from foresight.core.checkpoint import atomic_write_text
from foresight.core.data import cache_root
from foresight.lm.gemma2 import Gemma2
from foresight.nn.linear import row_product

CACHE_NAME = "cpu_decode.json"
CACHE_FORMAT = 1
# Smaller weights sit in cache, where per-call overhead, not bandwidth, decides: they keep F.linear.
MIN_NUMEL = 1 << 20
TIED_HEAD = "lm_head (tied embedding)"  # the name the tied head's choice is reported under

_MEASURED: dict[str, bool] = {}  # this process's choices, by the same key as the disk cache


def row_product_linear(
    x: torch.Tensor,  # [..., D_in]
    weight: torch.Tensor,  # [D_out, D_in]
    bias: torch.Tensor | None = None,  # [D_out]
    rows: tuple[int, ...] = (),
) -> torch.Tensor:  # [..., D_out]
    """`F.linear`, or the compiled reduction when x has R rows with R in `rows`, on CPU, without
    autograd (the reduction has no backward). The two agree up to float summation order."""
    if (
        rows
        and x.numel() // max(x.shape[-1], 1) in rows
        and x.device.type == "cpu"
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    ):
        y = torch.ops.foresight.row_product(x, weight)
        return y if bias is None else y + bias
    return F.linear(x, weight, bias)


class RowProductLinear(nn.Linear):
    """An `nn.Linear` sharing another's parameters whose products with `rows` rows use the reduction."""

    def __init__(self, linear: nn.Linear, rows: tuple[int, ...]):
        nn.Module.__init__(self)  # not nn.Linear.__init__: share the parameters, allocate nothing
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_parameter("weight", linear.weight)
        self.register_parameter("bias", linear.bias)
        self.rows = rows
        self.train(linear.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return row_product_linear(x, self.weight, self.bias, self.rows)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rows={self.rows}"


def _plain_linear(module: RowProductLinear) -> nn.Linear:
    linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
    linear.weight, linear.bias = module.weight, module.bias  # the same parameters again
    return linear.train(module.training)


# ---------------------------------------------------------------------------------------------
# Measuring, with an on-disk cache
# ---------------------------------------------------------------------------------------------


def cache_file() -> Path:
    return cache_root() / CACHE_NAME


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX (Linux /proc/cpuinfo flags): the CPU multiplies bf16 natively, so bf16
    weights decode at bf16 speed rather than through a conversion fallback."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def _key(weight: torch.Tensor, rows: int) -> str:
    out_features, in_features = weight.shape
    dtype = str(weight.dtype).removeprefix("torch.")
    return (
        f"torch {torch.__version__} | {cpu_model()} | {out_features}x{in_features} {dtype} | "
        f"rows {rows} | threads {torch.get_num_threads()}"
    )


def _read_cache(file: Path) -> dict[str, bool]:
    """The stored choices; an unreadable or foreign file counts as empty (it is re-measured)."""
    try:
        stored = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(stored, dict) or stored.get("format") != CACHE_FORMAT:
        return {}
    entries = stored.get("choices")
    if not isinstance(entries, dict):
        return {}
    return {
        k: v["row_product"] for k, v in entries.items() if isinstance(v, dict) and type(v.get("row_product")) is bool
    }


def _write_cache(file: Path, new: dict[str, dict]) -> None:
    """Add entries, keeping what is there (another process may have written since we read)."""
    stored = _read_cache(file)
    choices = {k: {"row_product": v} for k, v in stored.items()} | new
    text = json.dumps({"format": CACHE_FORMAT, "choices": choices}, indent=1, sort_keys=True) + "\n"
    try:
        atomic_write_text(file, text)
    except OSError:  # a read-only home: keep the choices for this process only
        pass


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _measure(weight: torch.Tensor, rows: int, repeats: int) -> tuple[float, float]:
    """Best seconds of (F.linear, the reduction) for `rows` rows times `weight`, on the tensor itself
    (no copy of a possibly multi-GB weight)."""
    x = torch.randn(rows, weight.shape[1], dtype=weight.dtype)
    with torch.inference_mode():
        t_blas = _best_time(lambda: F.linear(x, weight), repeats)
        try:
            t_reduce = _best_time(lambda: row_product(x, weight), repeats)
        except Exception:  # e.g. no C++ compiler for inductor: keep BLAS
            t_reduce = float("inf")
    return t_blas, t_reduce


def row_products_faster(weights: list[torch.Tensor], rows: int, repeats: int = 3, margin: float = 1.1) -> list[bool]:
    """For each weight [D_out, D_in]: is the reduction at least `margin` times faster than
    `F.linear` for `rows` rows? Always False off CPU. Timed once per key, then read back from this
    process's memory or the disk cache."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    file, stored, new = cache_file(), None, {}
    choices = []
    for weight in weights:
        if weight.device.type != "cpu" or weight.dim() != 2:
            choices.append(False)
            continue
        key = _key(weight, rows)
        if key not in _MEASURED:
            stored = _read_cache(file) if stored is None else stored
            if key in stored:
                _MEASURED[key] = stored[key]
            else:
                t_blas, t_reduce = _measure(weight.detach(), rows, repeats)
                _MEASURED[key] = t_blas > margin * t_reduce
                new[key] = {"row_product": _MEASURED[key], "blas_s": t_blas, "reduce_s": t_reduce}
        choices.append(_MEASURED[key])
    if new:
        _write_cache(file, new)
    return choices


# ---------------------------------------------------------------------------------------------
# The transformation
# ---------------------------------------------------------------------------------------------


def _with_rows(rows: tuple[int, ...], r: int, use: bool) -> tuple[int, ...]:
    return tuple(sorted(set(rows) | {r} if use else set(rows) - {r}))


def enable_row_products(model: nn.Module, rows: int = 1, min_numel: int | None = None) -> dict[str, bool]:
    """Switch products with `rows` rows to the reduction wherever it measures faster, in place.

    Considers every plain `nn.Linear` (and `RowProductLinear`) with >= `min_numel` weight entries
    (default `MIN_NUMEL`) and, for a tied `Gemma2`, its LM head. Calling it again with another row
    count adds that count; a weight where the reduction lost keeps (or goes back to) `F.linear` for
    it. Modules whose choice is unchanged are left alone, so a compiled decode step that captured
    them stays valid. Returns {module name: reduction chosen} for the weights considered.
    """
    min_numel = MIN_NUMEL if min_numel is None else min_numel
    linears = [
        (name, m)
        for name, m in model.named_modules()
        if name  # a bare nn.Linear cannot be swapped in place
        and (type(m) is nn.Linear or isinstance(m, RowProductLinear))
        and m.weight.numel() >= min_numel
    ]
    tied = isinstance(model, Gemma2) and model.lm_head is None and model.embed.weight.numel() >= min_numel
    weights = [m.weight.detach() for _, m in linears] + ([model.embed.weight.detach()] if tied else [])
    faster = row_products_faster(weights, rows)
    choices = {}
    for (name, module), use in zip(linears, faster[: len(linears)], strict=True):
        choices[name] = use
        current = module.rows if isinstance(module, RowProductLinear) else ()
        chosen = _with_rows(current, rows, use)
        if chosen == current:
            continue
        if isinstance(module, RowProductLinear) and chosen:
            module.rows = chosen
        else:
            _set_submodule(model, name, RowProductLinear(module, chosen) if chosen else _plain_linear(module))
    if tied:
        choices[TIED_HEAD] = use = faster[-1]
        head = model.__dict__.get("lm_head_product")
        current = head.keywords["rows"] if head is not None else ()
        chosen = _with_rows(current, rows, use)
        if chosen and chosen != current:
            # An instance attribute shadows the method; the weight is the embedding, so nothing new
            # enters the state dict.
            model.lm_head_product = functools.partial(row_product_linear, weight=model.embed.weight, rows=chosen)
        elif not chosen:
            model.__dict__.pop("lm_head_product", None)
    return choices


def disable_row_products(model: nn.Module) -> None:
    """Undo `enable_row_products`: plain `nn.Linear`s (same parameters) and the model's own LM head."""
    for name, module in list(model.named_modules()):
        if isinstance(module, RowProductLinear):
            _set_submodule(model, name, _plain_linear(module))
    model.__dict__.pop("lm_head_product", None)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


__all__ = [
    "RowProductLinear",
    "cache_file",
    "cpu_has_native_bf16",
    "disable_row_products",
    "enable_row_products",
    "row_product_linear",
    "row_products_faster",
]
