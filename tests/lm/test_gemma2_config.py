"""Gemma2Config presets, validation, layer types, parameter counts on the meta device."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from foresight.lm import Gemma2, Gemma2Config, alternating_layer_types
from foresight.lm.hf_io import hf_key_map


@pytest.mark.parametrize(
    "preset, params, hf_tensors",
    [
        (Gemma2Config.gemma2_2b, 2_614_341_888, 288),
        (Gemma2Config.gemma2_9b, 9_241_705_984, 464),
        (Gemma2Config.gemma2_27b, 27_227_128_320, 508),
    ],
)
def test_parameter_counts_on_meta_device(preset, params, hf_tensors):
    config = preset()
    with torch.device("meta"):
        model = Gemma2(config)
    assert next(model.parameters()).is_meta
    assert sum(p.numel() for p in model.parameters()) == params  # tied head counted once
    assert len(hf_key_map(config)) == hf_tensors == 11 * config.num_layers + 2
    # Non-embedding count = the paper's numbers (docs/gemma2.md, "Sizes").
    non_embedding = params - config.vocab_size * config.hidden_size
    assert non_embedding in (2_024_517_888, 8_324_201_984, 26_047_480_320)


def test_presets_match_the_reference_table():
    c2, c9, c27 = Gemma2Config.gemma2_2b(), Gemma2Config.gemma2_9b(), Gemma2Config.gemma2_27b()
    assert (c2.num_layers, c2.hidden_size, c2.num_heads, c2.num_kv_heads, c2.head_dim) == (26, 2304, 8, 4, 256)
    assert (c9.num_layers, c9.hidden_size, c9.num_heads, c9.num_kv_heads) == (42, 3584, 16, 8)
    assert (c27.num_layers, c27.hidden_size, c27.head_dim, c27.intermediate_size) == (46, 4608, 128, 36864)
    # The query scalar is read from config, never derived: 27B uses 144 = 4608 / 32, not head_dim.
    assert (c2.query_pre_attn_scalar, c9.query_pre_attn_scalar, c27.query_pre_attn_scalar) == (256, 256, 144)
    for c in (c2, c9, c27):
        assert c.sliding_window == 4096 and c.max_position_embeddings == 8192
        assert c.attn_logit_softcap == 50.0 and c.final_logit_softcap == 30.0
        assert c.layer_types[0] == "sliding_attention" and c.layer_types[1] == "full_attention"
        assert len(c.layer_types) == c.num_layers
    with pytest.raises(dataclasses.FrozenInstanceError):
        c2.hidden_size = 1


def test_layer_types_are_explicit_and_validated():
    assert alternating_layer_types(5) == (
        "sliding_attention",
        "full_attention",
        "sliding_attention",
        "full_attention",
        "sliding_attention",
    )
    model = Gemma2(Gemma2Config.tiny())
    assert [b.layer_type for b in model.layers] == list(Gemma2Config.tiny().layer_types)
    all_global = Gemma2Config.tiny(layer_types=("full_attention",) * 4)
    assert all_global.layer_types == ("full_attention",) * 4
    with pytest.raises(ValueError, match="layer_types has 3 entries but num_layers is 4"):
        Gemma2Config.tiny(layer_types=("full_attention",) * 3)
    with pytest.raises(ValueError, match=r"layer_types\[1\] = 'local'"):
        Gemma2Config.tiny(layer_types=("full_attention", "local", "full_attention", "full_attention"))
    assert Gemma2Config.tiny().replace(num_layers=6).layer_types == alternating_layer_types(6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_heads=4, num_kv_heads=3), r"num_heads \(4\) must be divisible by num_kv_heads \(3\)"),
        (dict(head_dim=25), "head_dim must be even for rotate-half RoPE, got 25"),
        (dict(hidden_size=0), "hidden_size must be a positive int, got 0"),
        (dict(sliding_window=-1), "sliding_window must be a positive int, got -1"),
        (dict(query_pre_attn_scalar=0.0), "query_pre_attn_scalar must be a positive finite number, got 0.0"),
        (dict(attn_logit_softcap=-5.0), "attn_logit_softcap must be a positive finite number or None, got -5.0"),
        (dict(eos_token_ids=(1, 999)), r"eos_token_ids 999 is outside the vocabulary \[0, 256\)"),
        (dict(num_heads=0), "num_heads must be a positive int, got 0"),
        (dict(num_kv_heads=0), "num_kv_heads must be a positive int, got 0"),
        (dict(num_layers=True), "num_layers must be a positive int, got True"),
        (dict(vocab_size=256.0), "vocab_size must be a positive int, got 256.0"),
        (dict(rms_norm_eps=float("nan")), "rms_norm_eps must be a positive finite number, got nan"),
        (dict(rope_theta=float("inf")), "rope_theta must be a positive finite number, got inf"),
        (dict(final_logit_softcap=True), "final_logit_softcap must be a positive finite number or None, got True"),
        (dict(tie_word_embeddings="false"), "tie_word_embeddings must be a bool, got 'false'"),
        (dict(pad_token_id=True), "pad_token_id must hold int token ids, got True"),
    ],
)
def test_invalid_configs_name_the_bad_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        Gemma2Config.tiny(**overrides)


def test_normalizer_is_rounded_to_the_activation_dtype():
    expected = {2304: (48.0, 48.0), 3584: (59.75, 59.875), 4608: (68.0, 67.875)}
    for d, (bf16, fp16) in expected.items():
        with torch.device("meta"):
            model = Gemma2(Gemma2Config.tiny(hidden_size=d, vocab_size=8, num_layers=1, intermediate_size=8))
        assert model.normalizer(torch.bfloat16) == bf16
        assert model.normalizer(torch.float16) == fp16
        assert model.normalizer(torch.float32) == pytest.approx(d**0.5, rel=1e-7)


def test_sdpa_backend_is_refused_when_softcap_is_configured():
    with pytest.raises(ValueError, match="'sdpa' cannot apply attn_logit_softcap=50.0"):
        Gemma2(Gemma2Config.tiny(), attn_backend="sdpa")
    Gemma2(Gemma2Config.tiny(attn_logit_softcap=None), attn_backend="sdpa")  # no cap: allowed
