"""Architecture twins for the Gemma 2 ablations: exact parameter counts, matched depth/width, windows."""

import numpy as np
import pytest
import torch
from gemma2_testing import random_gemma2

from foresight.lm import Gemma2, Gemma2Config
from foresight.lm.cache import FULL, SLIDING
from foresight.lm.text_data import PackedSequences
from foresight.lm.train import validation_nll
from foresight.lm.twins import at_window, count_parameters, kv_cache_bytes, match_parameters, mha_twin


def _cfg(**kw):
    base = dict(vocab_size=97, hidden_size=32, intermediate_size=128, num_layers=4, num_heads=4, num_kv_heads=2)
    return Gemma2Config.tiny(**{**base, "head_dim": 8, "sliding_window": 6, "max_position_embeddings": 64, **kw})


def test_count_parameters_equals_the_built_model_and_ties_the_embedding():
    cfg = _cfg()
    assert count_parameters(cfg) == sum(p.numel() for p in Gemma2(cfg).parameters())
    untied = cfg.replace(tie_word_embeddings=False)
    assert count_parameters(untied) - count_parameters(cfg) == 97 * 32


def test_mha_twin_has_one_kv_head_per_query_head_and_exactly_the_extra_kv_projections():
    cfg = _cfg()
    mha = mha_twin(cfg)
    assert (mha.num_heads, mha.num_kv_heads, mha.num_layers, mha.hidden_size) == (4, 4, 4, 32)
    # k_proj and v_proj grow from K*E to H*E outputs in every layer; nothing else changes
    assert count_parameters(mha) - count_parameters(cfg) == 4 * 2 * 32 * (4 - 2) * 8


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_match_parameters_lands_within_tolerance_at_another_depth(layers):
    deep = _cfg(num_layers=8)
    target = count_parameters(deep)
    wide = match_parameters(deep, layers, target, tolerance=0.02)
    assert wide.num_layers == layers and len(wide.layer_types) == layers
    assert wide.hidden_size > deep.hidden_size  # fewer layers, so wider
    assert (wide.num_heads, wide.num_kv_heads, wide.head_dim) == (4, 2, 8)
    assert abs(count_parameters(wide) - target) <= 0.02 * target


def test_match_parameters_refuses_what_it_cannot_match_naming_the_values():
    with pytest.raises(ValueError, match="num_layers must be a positive int, got 0"):
        match_parameters(_cfg(), 0, 1000)
    with pytest.raises(ValueError, match="target must be a positive parameter count"):
        match_parameters(_cfg(), 2, -5)
    # the smallest 1-layer twin (D = 8) already has more parameters than 100: no twin within 1%
    with pytest.raises(ValueError, match="no 1-layer twin of this config has 100 parameters within 1%"):
        match_parameters(_cfg(), 1, 100, tolerance=0.01)


def test_at_window_keeps_the_weights_and_only_changes_what_local_layers_see():
    cfg = _cfg()
    model = random_gemma2(cfg)
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(0))
    same = at_window(model, cfg.sliding_window)
    torch.testing.assert_close(same(ids).logits, model(ids).logits, rtol=0, atol=0)
    # every layer global: equals a model configured with only full attention layers
    wide = at_window(model, 40)
    ref = Gemma2(cfg.replace(layer_types=(FULL,) * 4))
    ref.load_state_dict(model.state_dict())
    torch.testing.assert_close(wide(ids).logits, ref(ids).logits, rtol=0, atol=0)
    # a shorter window changes positions past it, never the ones before it
    short = at_window(model, 3)(ids).logits
    torch.testing.assert_close(short[:, :3], model(ids).logits[:, :3], rtol=1e-6, atol=1e-6)
    assert (short[:, 10:] - model(ids).logits[:, 10:]).abs().max() > 1e-4
    assert short.shape == model(ids).logits.shape and not model.config.sliding_window == 3
    with pytest.raises(ValueError, match="window must be a positive int, got 0"):
        at_window(model, 0)


def test_kv_cache_bytes_caps_local_layers_at_the_window_and_matches_the_cache():
    cfg = _cfg()  # layers alternate (sliding, full): 2 of each, K=2, E=8, W=6
    assert cfg.layer_types == (SLIDING, FULL, SLIDING, FULL)
    per_token = 2 * 2 * 8 * 2  # keys and values, K heads, E dims, bf16 bytes
    assert kv_cache_bytes(cfg, 4) == per_token * 4 * 4
    assert kv_cache_bytes(cfg, 50) == per_token * (6 + 50 + 6 + 50)
    assert kv_cache_bytes(mha_twin(cfg), 50) == 2 * kv_cache_bytes(cfg, 50)  # G = 2: half the cache
    model = Gemma2(cfg).to(torch.bfloat16)
    cache = model.make_cache(batch_size=3, max_length=50)
    assert cache.nbytes() == kv_cache_bytes(cfg, 50, batch_size=3)


def test_validation_nll_is_the_mean_token_cross_entropy_over_the_chosen_windows():
    cfg = _cfg()
    model = random_gemma2(cfg)
    tokens = np.random.default_rng(0).integers(0, 97, size=5 * 16 + 1).astype(np.uint16)
    data = PackedSequences(tokens, 16)
    x, y = data.batch(np.arange(3))
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(model(x).logits.reshape(-1, 97), y.reshape(-1)).item()
    assert validation_nll(model, data, windows=3, batch_size=2) == pytest.approx(ref, rel=1e-6)
    assert validation_nll(model, data, windows=0, batch_size=4) != pytest.approx(ref, rel=1e-6)  # all 5
    with pytest.raises(ValueError, match="need windows >= 0 and batch_size >= 1, got -1 and 2"):
        validation_nll(model, data, windows=-1, batch_size=2)
