"""Architecture twins of a Gemma 2 config, for the Gemma 2 report's ablations (docs/gemma2.md, "Ablations").

An ablation changes one thing and holds the rest: the same weights evaluated at another sliding window
(Table 10), multi-head vs grouped-query attention at equal width and depth (Table 8), a deep vs a wide
network at equal parameter count (Table 9). Everything here is exact arithmetic on configs, so the
twins can be checked before anything is trained:

- `count_parameters(cfg)` builds the model on the meta device (no memory, no init) and counts.
- `mha_twin(cfg)` gives every query head its own key/value head (K = H); width and depth are unchanged,
  so MHA has more parameters, which is half of Gemma's reason to pick GQA.
- `match_parameters(cfg, num_layers, target)` re-widths `cfg` to another depth with the parameter count
  within a relative tolerance of `target` (the feed-forward width absorbs the remainder).
- `at_window(model, W)` is the same trained model with its local layers' window set to W.
- `kv_cache_bytes(cfg, tokens)` is what the KV cache holds after `tokens` tokens (ring buffers cap the
  local layers at W).
"""

from __future__ import annotations

import torch

from foresight.lm.cache import SLIDING
from foresight.lm.gemma2 import Gemma2, Gemma2Config


def count_parameters(cfg: Gemma2Config) -> int:
    """Trainable parameters of `Gemma2(cfg)` (tied embeddings counted once)."""
    with torch.device("meta"):
        model = Gemma2(cfg)
    return sum(p.numel() for p in model.parameters())


def mha_twin(cfg: Gemma2Config) -> Gemma2Config:
    """The multi-head twin of a GQA config: one key/value head per query head, all else equal."""
    return cfg.replace(num_kv_heads=cfg.num_heads)


def match_parameters(
    cfg: Gemma2Config,
    num_layers: int,
    target: int,
    tolerance: float = 0.02,
    width_multiple: int = 8,
) -> Gemma2Config:
    """`cfg` at depth `num_layers`, re-widthed so that its parameter count is within `tolerance` of `target`.

    Heads, head_dim and the feed-forward ratio F/D of `cfg` are kept; the residual width D is the
    multiple of `width_multiple` whose count (at that ratio) comes closest to `target`, then F is moved
    in steps of `width_multiple` to land inside the tolerance. Raises ValueError if no such config exists.
    """
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
    if not isinstance(target, int) or target < 1:
        raise ValueError(f"target must be a positive parameter count, got {target!r}")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    ratio = cfg.intermediate_size / cfg.hidden_size

    def at(width: int, inter: int | None = None) -> Gemma2Config:
        inter = max(width_multiple, round(ratio * width / width_multiple) * width_multiple) if inter is None else inter
        return cfg.replace(num_layers=num_layers, hidden_size=width, intermediate_size=inter)

    # The count grows monotonically with D: walk up until it passes the target, keep the closer neighbour.
    width, best = width_multiple, None
    while True:
        n = count_parameters(at(width))
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (width, n)
        if n >= target or width > 64 * max(cfg.hidden_size, width_multiple):
            break
        width += width_multiple
    width = best[0]
    twin = at(width)
    # Fine-tune F: each step of `width_multiple` in F moves 3 * D * multiple * L parameters.
    step = 3 * width * width_multiple * num_layers
    inter = twin.intermediate_size + round((target - count_parameters(twin)) / step) * width_multiple
    twin = at(width, max(width_multiple, inter))
    n = count_parameters(twin)
    if abs(n - target) > tolerance * target:
        raise ValueError(
            f"no {num_layers}-layer twin of this config has {target} parameters within {tolerance:.0%} "
            f"(closest: D={width}, F={twin.intermediate_size}, {n} parameters)"
        )
    return twin


def at_window(model: Gemma2, window: int) -> Gemma2:
    """The same weights with local layers attending over `window` keys (the current one included).

    The window lives only in the config (masks and cache are built from it), so a new model that loads
    the old state dict is exactly the trained model at another window. A window at least the sequence
    length makes every layer global.
    """
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    p = next(model.parameters())
    twin = Gemma2(model.config.replace(sliding_window=window), attn_backend=model.attn_backend)
    twin.load_state_dict(model.state_dict())
    return twin.to(device=p.device).train(model.training)


def kv_cache_bytes(cfg: Gemma2Config, tokens: int, batch_size: int = 1, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes of keys and values held after `tokens` tokens: global layers keep all, local ones the last W."""
    if tokens < 0 or batch_size < 1:
        raise ValueError(f"need tokens >= 0 and batch_size >= 1, got {tokens} and {batch_size}")
    per_token = 2 * batch_size * cfg.num_kv_heads * cfg.head_dim * torch.empty((), dtype=dtype).element_size()
    kept = sum(min(tokens, cfg.sliding_window) if t == SLIDING else tokens for t in cfg.layer_types)
    return per_token * kept
