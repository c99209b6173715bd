"""HF-layout checkpoint I/O: round trips, transformers interop, sharding, legacy keys, clear errors."""

from __future__ import annotations

import json
import time

import pytest
import torch
from gemma2_testing import random_gemma2
from safetensors.torch import load_file, save_file

from foresight.lm import Gemma2Config
from foresight.lm.hf_io import (
    INDEX_NAME,
    config_from_hf_dict,
    hf_key_map,
    load_config,
    load_pretrained,
    save_pretrained,
)

IDS = torch.randint(3, 256, (2, 20), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("gemma2-tiny")
    save_pretrained(tiny_model, path)
    return path


def _copy_checkpoint(src, dst):
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@torch.inference_mode()
def test_save_then_load_gives_identical_logits(saved, tiny_model):
    files = sorted(p.name for p in saved.iterdir())
    assert files == ["config.json", "model.safetensors"]
    tensors = load_file(saved / "model.safetensors")
    assert set(tensors) == set(hf_key_map(tiny_model.config))  # tied: no lm_head.weight stored
    reloaded = load_pretrained(saved)
    assert torch.equal(reloaded(IDS).logits, tiny_model(IDS).logits)
    assert reloaded.config == tiny_model.config


@torch.inference_mode()
def test_bf16_untied_and_sharded_round_trip(tmp_path):
    config = Gemma2Config.tiny(tie_word_embeddings=False)
    model = random_gemma2(config).to(torch.bfloat16)
    save_pretrained(model, tmp_path, max_shard_bytes=40_000)  # forces several shards + index
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and "lm_head.weight" in index["weight_map"]
    assert not (tmp_path / "model.safetensors").exists()
    reloaded = load_pretrained(tmp_path)  # dtype from config.json
    assert reloaded.embed.weight.dtype == torch.bfloat16
    assert torch.equal(reloaded(IDS).logits, model(IDS).logits)
    # Saving again unsharded removes the index that would otherwise shadow the new file.
    save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parity
@torch.inference_mode()
def test_transformers_loads_what_we_save_and_we_load_what_it_saves(saved, tiny_model, tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.Gemma2ForCausalLM.from_pretrained(saved, attn_implementation="eager").eval()
    assert hf.config.layer_types == list(tiny_model.config.layer_types)
    assert (hf(IDS).logits - tiny_model(IDS).logits).abs().max() <= 1e-5
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    assert ours.config == tiny_model.config
    assert torch.equal(ours(IDS).logits, tiny_model(IDS).logits)


def test_legacy_config_spellings_are_accepted():
    legacy = {
        "model_type": "gemma2",
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 24,
        "query_pre_attn_scalar": 32,
        "sliding_window_size": 8,  # old duplicate spelling
        "rope_theta": 10000.0,  # top-level instead of rope_parameters
        "hidden_act": "gelu_pytorch_tanh",
        "max_position_embeddings": 512,
        "eos_token_id": [1, 107 % 256],
    }
    config = config_from_hf_dict(legacy)
    assert config.sliding_window == 8 and config.rope_theta == 10000.0 and config.eos_token_ids == (1, 107)
    assert config.layer_types == Gemma2Config.tiny().layer_types
    modern = dict(legacy, rope_parameters={"rope_type": "default", "rope_theta": 500.0}, sliding_window=16)
    config = config_from_hf_dict(modern)
    assert config.rope_theta == 500.0 and config.sliding_window == 16


def test_dtype_spellings(tmp_path, saved):
    _copy_checkpoint(saved, tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    d.pop("dtype")
    d["torch_dtype"] = "bfloat16"
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert load_config(tmp_path)[1] == torch.bfloat16


# --- clear errors -----------------------------------------------------------------------------


def test_truncated_safetensors(tmp_path, saved):
    _copy_checkpoint(saved, tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors: truncated or corrupt safetensors file"):
        load_pretrained(tmp_path)


def test_corrupt_safetensors(tmp_path, saved):
    _copy_checkpoint(saved, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="truncated or corrupt safetensors file"):
        load_pretrained(tmp_path)


def _rewrite_tensors(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor(tmp_path, saved):
    _copy_checkpoint(saved, tmp_path)
    _rewrite_tensors(tmp_path, lambda t: t.pop("model.layers.2.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing tensor\(s\): 'model.layers.2.mlp.up_proj.weight'"):
        load_pretrained(tmp_path)


def test_unexpected_tensor(tmp_path, saved):
    _copy_checkpoint(saved, tmp_path)
    _rewrite_tensors(tmp_path, lambda t: t.update({"model.layers.9.self_attn.q_proj.weight": torch.zeros(1)}))
    with pytest.raises(ValueError, match=r"unexpected tensor\(s\): 'model.layers.9.self_attn.q_proj.weight'"):
        load_pretrained(tmp_path)


def test_wrong_shape(tmp_path, saved):
    _copy_checkpoint(saved, tmp_path)
    _rewrite_tensors(tmp_path, lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": torch.zeros(96, 64)}))
    with pytest.raises(
        ValueError,
        match=r"wrong shape for tensor 'model.layers.0.self_attn.k_proj.weight': expected \[48, 64\], got \[96, 64\]",
    ):
        load_pretrained(tmp_path)


def test_unknown_model_type(tmp_path, saved):
    _copy_checkpoint(saved, tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    d["model_type"] = "llama"
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="unknown model_type 'llama'.*only 'gemma2'"):
        load_pretrained(tmp_path)


def test_pickle_only_and_empty_directories(tmp_path, saved):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_bytes((saved / "config.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="no model.safetensors or model.safetensors.index.json"):
        load_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ValueError, match="never unpickles"):
        load_pretrained(tmp_path)


def test_unsupported_architecture_switches(tmp_path, saved):
    _copy_checkpoint(saved, tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(d, hidden_activation="gelu")))
    with pytest.raises(ValueError, match="unsupported hidden_activation 'gelu'"):
        load_pretrained(tmp_path)


# --- untrusted checkpoints: refused before anything is allocated -------------------------------


def _edit_config(path, edit):
    d = json.loads((path / "config.json").read_text())
    d = edit(d)
    (path / "config.json").write_text(json.dumps(d))


def test_config_json_that_is_not_an_object(tmp_path, saved):
    _copy_checkpoint(saved, tmp_path)
    for value in ([1, 2], "gemma2", 3):
        (tmp_path / "config.json").write_text(json.dumps(value))
        with pytest.raises(ValueError, match=r"config.json must hold a JSON object, got a (list|str|int)"):
            load_pretrained(tmp_path)
    (tmp_path / "config.json").write_bytes(b" " * (16 * 2**20 + 1))
    with pytest.raises(ValueError, match="config.json is 16777217 bytes"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("vocab_size", 10**12, r"vocab_size in .*config.json must be an int in \[1, 10000000\], got 1000000000000"),
        ("num_hidden_layers", 10**6, r"num_hidden_layers in .* must be an int in \[1, 1024\], got 1000000"),
        ("hidden_size", 0, r"hidden_size in .* must be an int in \[1, 65536\], got 0"),
        ("num_attention_heads", True, r"num_attention_heads in .* must be an int in \[1, 1024\], got True"),
        ("head_dim", "24", r"head_dim in .* must be an int in \[1, 8192\], got '24'"),
        ("intermediate_size", 128.0, r"intermediate_size in .* must be an int in \[1, 1048576\], got 128.0"),
        ("max_position_embeddings", -1, r"max_position_embeddings in .* must be an int"),
        ("num_key_value_heads", 3, r"num_attention_heads \(4\) in .* must be divisible by num_key_value_heads \(3\)"),
        ("rms_norm_eps", float("nan"), "rms_norm_eps in .* must be a positive finite number, got nan"),
        ("rope_theta", float("inf"), "rope_theta in .* must be a positive finite number, got inf"),
        ("final_logit_softcapping", -30.0, "final_logit_softcapping in .* must be a positive finite number or null"),
        ("query_pre_attn_scalar", "256", "query_pre_attn_scalar in .* must be a positive finite number, got '256'"),
        ("rope_parameters", [10000.0], "rope_parameters in .* must be a JSON object"),
        ("dtype", ["float32"], r"unsupported dtype \['float32'\]"),
        ("tie_word_embeddings", "yes", "config.json: tie_word_embeddings must be a bool, got 'yes'"),
        ("eos_token_id", [1, 1000], r"config.json: eos_token_ids 1000 is outside the vocabulary \[0, 256\)"),
    ],
)
def test_hostile_config_values_fail_fast_naming_the_field(tmp_path, saved, field, value, message):
    _copy_checkpoint(saved, tmp_path)
    _edit_config(tmp_path, lambda d: dict(d, **{field: value}))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        load_pretrained(tmp_path)
    assert time.perf_counter() - start < 1.0


def test_parameter_count_bound(tmp_path, saved):
    _copy_checkpoint(saved, tmp_path)
    huge = dict(hidden_size=65536, intermediate_size=1 << 20, num_hidden_layers=1024, head_dim=8192)
    _edit_config(tmp_path, lambda d: dict(d, **huge))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"describes ~2.\d+e\+14 parameters; this loader accepts at most 1e\+12"):
        load_pretrained(tmp_path)
    assert time.perf_counter() - start < 1.0


def test_missing_required_config_key(tmp_path, saved):
    _copy_checkpoint(saved, tmp_path)
    _edit_config(tmp_path, lambda d: {k: v for k, v in d.items() if k != "num_hidden_layers"})
    with pytest.raises(ValueError, match="config.json lacks required key 'num_hidden_layers'"):
        load_pretrained(tmp_path)


def test_integer_tensor_where_a_float_weight_belongs(tmp_path, saved):
    _copy_checkpoint(saved, tmp_path)
    key = "model.layers.1.mlp.up_proj.weight"
    _rewrite_tensors(tmp_path, lambda t: t.update({key: torch.zeros_like(t[key], dtype=torch.int64)}))
    with pytest.raises(
        ValueError, match=rf"wrong dtype for tensor '{key}': expected a floating dtype F32/BF16/F16, got I64"
    ):
        load_pretrained(tmp_path)


def test_extra_layers_and_non_canonical_layer_names_are_refused(tmp_path, saved):
    _copy_checkpoint(saved, tmp_path)

    def add_layer_4(t):  # a whole, well-shaped fifth layer: the config says 4
        t.update({k.replace("layers.3.", "layers.4."): v.clone() for k, v in t.items() if "layers.3." in k})

    _rewrite_tensors(tmp_path, add_layer_4)
    with pytest.raises(
        ValueError,
        match=r"unexpected tensor\(s\): 'model.layers.4.input_layernorm.weight'.*num_hidden_layers=4",
    ):
        load_pretrained(tmp_path)
    _copy_checkpoint(saved, tmp_path)
    _rewrite_tensors(
        tmp_path,
        lambda t: t.update({"model.layers.01.mlp.up_proj.weight": t["model.layers.1.mlp.up_proj.weight"].clone()}),
    )
    with pytest.raises(ValueError, match=r"unexpected tensor\(s\): 'model.layers.01.mlp.up_proj.weight'"):
        load_pretrained(tmp_path)


def test_shard_holding_a_tensor_its_index_does_not_list(tmp_path):
    model = random_gemma2(Gemma2Config.tiny())
    save_pretrained(model, tmp_path, max_shard_bytes=40_000)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    files = list(index["weight_map"].values())
    name, file = next((n, f) for n, f in index["weight_map"].items() if files.count(f) > 1)  # a shard of several
    del index["weight_map"][name]
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(ValueError, match=rf"unexpected tensor\(s\): '{name}' \(in {file} but not in its index\)"):
        load_pretrained(tmp_path)
    (tmp_path / INDEX_NAME).write_text(json.dumps({"weight_map": ["not", "a", "map"]}))
    with pytest.raises(ValueError, match="is not a valid safetensors index"):
        load_pretrained(tmp_path)
