"""Read and write Gemma 2 checkpoints in the Hugging Face layout (config.json + safetensors).

Layout (shared/papers/gemma2.md §4.1):
    config.json                          model_type "gemma2" and the hyperparameters
    model.safetensors                    one file, or
    model.safetensors.index.json         {"weight_map": {tensor name: shard file}} + shards

Loading is strict: every tensor goes through an explicit HF-name -> our-name key map with a
shape check, and a missing, unexpected, or wrongly shaped tensor is an error that names the key.
Only safetensors are read, never pickles (`pytorch_model.bin` is refused). Writing is atomic per
file (temp file + fsync + os.replace), and the result loads in `transformers.Gemma2ForCausalLM`.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from foresight.core.checkpoint import atomic_write_bytes
from foresight.lm.gemma2 import Gemma2, Gemma2Config

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
_GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new")  # spellings of tanh-approximate GELU
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------


def _pick(d: dict, *names: str, default=None):
    """The value of the first of `names` present in d (config keys have legacy spellings)."""
    for n in names:
        if n in d and d[n] is not None:
            return d[n]
    return default


def config_from_hf_dict(d: dict, source: str = "config.json") -> Gemma2Config:
    """Translate an HF Gemma 2 config dict; refuse anything our model would compute differently."""
    model_type = d.get("model_type")
    if model_type != "gemma2":
        raise ValueError(f"unknown model_type {model_type!r} in {source}: only 'gemma2' is supported")
    act = _pick(d, "hidden_activation", "hidden_act", default="gelu_pytorch_tanh")
    if act not in _GELU_TANH:
        raise ValueError(f"unsupported hidden_activation {act!r} in {source}: Gemma 2 uses tanh GELU")
    if d.get("attention_bias"):
        raise ValueError(f"attention_bias=true in {source} is not supported (Gemma 2 has no q/k/v bias)")
    if d.get("use_bidirectional_attention"):
        raise ValueError(f"use_bidirectional_attention=true in {source} is not supported (causal LM only)")

    rope = d.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"unsupported rope_type {rope.get('rope_type')!r} in {source}")
    if d.get("rope_scaling"):
        raise ValueError(f"rope_scaling {d['rope_scaling']!r} in {source} is not supported")
    rope_theta = _pick(rope, "rope_theta", default=None)
    if rope_theta is None:
        rope_theta = _pick(d, "rope_theta", default=10_000.0)

    eos = _pick(d, "eos_token_id", default=[])
    eos = tuple(eos) if isinstance(eos, list | tuple) else (eos,)
    num_layers = d["num_hidden_layers"]
    layer_types = d.get("layer_types")
    scalar = d.get("query_pre_attn_scalar", 256)
    try:
        return Gemma2Config(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_layers=num_layers,
            num_heads=d["num_attention_heads"],
            num_kv_heads=d.get("num_key_value_heads", d["num_attention_heads"]),
            head_dim=d.get("head_dim", 256),
            query_pre_attn_scalar=float(scalar),
            sliding_window=_pick(d, "sliding_window", "sliding_window_size", default=4096),
            layer_types=None if layer_types is None else tuple(layer_types),
            max_position_embeddings=d.get("max_position_embeddings", 8192),
            attn_logit_softcap=d.get("attn_logit_softcapping", 50.0),
            final_logit_softcap=d.get("final_logit_softcapping", 30.0),
            rope_theta=float(rope_theta),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=d.get("tie_word_embeddings", True),
            pad_token_id=d.get("pad_token_id"),
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos,
            initializer_range=d.get("initializer_range", 0.02),
        )
    except KeyError as e:
        raise ValueError(f"{source} lacks required key {e.args[0]!r}") from None


def config_to_hf_dict(config: Gemma2Config, dtype: torch.dtype = torch.float32) -> dict:
    """The config.json that transformers (v4.42+ and v5) reads as a Gemma2Config."""
    scalar = config.query_pre_attn_scalar
    eos = list(config.eos_token_ids)
    dtype_name = {v: k for k, v in _DTYPES.items()}[dtype]
    return {
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        # transformers types this as int; keep ints as ints so its strict config accepts it.
        "query_pre_attn_scalar": int(scalar) if float(scalar).is_integer() else scalar,
        "sliding_window": config.sliding_window,
        "layer_types": list(config.layer_types),
        "max_position_embeddings": config.max_position_embeddings,
        "attn_logit_softcapping": config.attn_logit_softcap,
        "final_logit_softcapping": config.final_logit_softcap,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_theta": config.rope_theta,  # older transformers only read this spelling
        "rms_norm_eps": config.rms_norm_eps,
        "hidden_activation": "gelu_pytorch_tanh",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": config.tie_word_embeddings,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "initializer_range": config.initializer_range,
        "use_cache": True,
        "dtype": dtype_name,
    }


def load_config(path: str | os.PathLike) -> tuple[Gemma2Config, torch.dtype | None]:
    """Read `path/config.json`; returns the config and the checkpoint dtype (None if unstated)."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {path}")
    try:
        d = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from None
    dtype_name = _pick(d, "dtype", "torch_dtype")
    if dtype_name is not None and dtype_name not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype_name!r} in {file}; expected one of {list(_DTYPES)}")
    return config_from_hf_dict(d, str(file)), _DTYPES.get(dtype_name)


# ---------------------------------------------------------------------------------------------
# Key map
# ---------------------------------------------------------------------------------------------

_LAYER_KEYS = {  # HF name under model.layers.{i}. -> ours under layers.{i}.
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn.q_proj.weight",
    "self_attn.k_proj.weight": "attn.k_proj.weight",
    "self_attn.v_proj.weight": "attn.v_proj.weight",
    "self_attn.o_proj.weight": "attn.o_proj.weight",
    "post_attention_layernorm.weight": "post_attn_norm.weight",
    "pre_feedforward_layernorm.weight": "mlp_norm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
    "post_feedforward_layernorm.weight": "post_mlp_norm.weight",
}


def hf_key_map(config: Gemma2Config) -> dict[str, str]:
    """HF tensor name -> our parameter name, for exactly the tensors a checkpoint must hold.

    11 tensors per layer + embedding + final norm (+ lm_head when untied): 288 for the 2B.
    """
    keys = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "final_norm.weight"}
    for i in range(config.num_layers):
        for hf, ours in _LAYER_KEYS.items():
            keys[f"model.layers.{i}.{hf}"] = f"layers.{i}.{ours}"
    if not config.tie_word_embeddings:
        keys["lm_head.weight"] = "lm_head.weight"
    return keys


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _weight_files(path: Path) -> dict[str, list[str]]:
    """Shard file -> tensor names it should hold (from the index, or the single file's header)."""
    index = path / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index} is not a valid safetensors index ({e!r})") from None
        files: dict[str, list[str]] = {}
        for name, file in weight_map.items():
            if os.path.basename(file) != file:
                raise ValueError(f"{index} maps {name!r} to {file!r}: shard names must be plain file names")
            files.setdefault(file, []).append(name)
        return files
    single = path / WEIGHTS_NAME
    if single.is_file():
        with _open_safetensors(single) as f:
            return {WEIGHTS_NAME: list(f.keys())}
    if any((path / n).exists() for n in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise ValueError(
            f"{path} holds only pickle weights (pytorch_model.bin); foresight never unpickles. "
            "Convert them to safetensors first."
        )
    raise FileNotFoundError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {path}")


class _open_safetensors:
    """safe_open with a clear error for truncated or corrupt files."""

    def __init__(self, file: Path):
        self.file = file

    def __enter__(self):
        if not self.file.is_file():
            raise FileNotFoundError(f"safetensors shard {self.file} is missing")
        try:
            self.handle = safe_open(str(self.file), framework="pt", device="cpu")
            return self.handle.__enter__()
        except SafetensorError as e:
            raise ValueError(f"cannot read {self.file}: truncated or corrupt safetensors file ({e})") from None

    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)


def load_pretrained(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    attn_backend: str = "eager",
) -> Gemma2:
    """Build a `Gemma2` from an HF-layout directory. dtype None = the checkpoint's (else float32)."""
    path = Path(path)
    config, ckpt_dtype = load_config(path)
    dtype = dtype or ckpt_dtype or torch.float32
    if dtype == torch.float16:  # R9 in the notes: the 27B is erratic in fp16
        warnings.warn("Gemma 2 in float16 is numerically fragile (27B erratic); prefer bfloat16", stacklevel=2)
    key_map = hf_key_map(config)
    files = _weight_files(path)

    # Check names before reading any data, so a bad checkpoint fails fast and names every key.
    found = {name for names in files.values() for name in names}
    tied_head = config.tie_word_embeddings and "lm_head.weight" in found  # tolerated duplicate
    missing = sorted(set(key_map) - found)
    unexpected = sorted(found - set(key_map) - ({"lm_head.weight"} if tied_head else set()))
    if missing:
        raise ValueError(f"checkpoint {path} is missing tensor(s): {_names(missing)}")
    if unexpected:
        raise ValueError(f"checkpoint {path} has unexpected tensor(s): {_names(unexpected)}")

    # Allocate on the meta device (no init cost), then give the parameters real, empty storage.
    with torch.device("meta"):
        model = Gemma2(config, attn_backend=attn_backend)
    model = model.to(dtype=dtype).to_empty(device=device)
    model.reset_buffers()
    params = dict(model.named_parameters())

    loaded = set()
    with torch.no_grad():
        for file, names in files.items():
            with _open_safetensors(path / file) as f:
                present = set(f.keys())
                for hf_name in names:
                    if hf_name not in present:
                        raise ValueError(f"checkpoint {path} is missing tensor {hf_name!r} (index says {file})")
                    got = tuple(f.get_slice(hf_name).get_shape())
                    if hf_name == "lm_head.weight" and tied_head:
                        expected = tuple(params["embed.weight"].shape)
                        _check_shape(hf_name, expected, got)
                        continue  # the embedding is the head; a stored copy is redundant
                    param = params[key_map[hf_name]]
                    _check_shape(hf_name, tuple(param.shape), got)
                    param.copy_(f.get_tensor(hf_name))
                    loaded.add(key_map[hf_name])
    assert loaded == set(params), "internal error: key map does not cover every parameter"
    return model.eval()


def _check_shape(name: str, expected: tuple, got: tuple) -> None:
    if expected != got:
        raise ValueError(f"wrong shape for tensor {name!r}: expected {list(expected)}, got {list(got)}")


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" ... ({len(names)} in total)" if len(names) > limit else "")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def hf_state_dict(model: Gemma2) -> dict[str, torch.Tensor]:
    """Our parameters under HF names (CPU, contiguous). Tied models store no lm_head.weight."""
    ours = dict(model.named_parameters())
    return {hf: ours[name].detach().to("cpu").contiguous() for hf, name in hf_key_map(model.config).items()}


def save_pretrained(model: Gemma2, path: str | os.PathLike, max_shard_bytes: int = 5 * 2**30) -> None:
    """Write `config.json` and safetensors weights (sharded past `max_shard_bytes`) into `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = hf_state_dict(model)
    dtype = model.embed.weight.dtype
    if dtype not in _DTYPES.values():
        raise ValueError(f"cannot save dtype {dtype}; use one of {list(_DTYPES)}")

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes

    def write_tensors(file: Path, shard: dict[str, torch.Tensor]) -> None:
        # metadata format=pt is what transformers checks for before trusting the file.
        atomic_write_bytes(file, lambda tmp: save_file(shard, tmp, metadata={"format": "pt"}))

    stale = {p.name for p in path.iterdir() if _SHARD_RE.match(p.name) or p.name in (WEIGHTS_NAME, INDEX_NAME)}
    if len(shards) == 1:
        write_tensors(path / WEIGHTS_NAME, shards[0])
        written = {WEIGHTS_NAME}
    else:
        n = len(shards)
        weight_map, written = {}, set()
        for i, shard in enumerate(shards, start=1):
            file = f"model-{i:05d}-of-{n:05d}.safetensors"
            write_tensors(path / file, shard)
            weight_map.update(dict.fromkeys(shard, file))
            written.add(file)
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _write_json(path / INDEX_NAME, index)
        written.add(INDEX_NAME)
    for name in stale - written:  # e.g. an old index that would shadow a new single file
        (path / name).unlink()
    _write_json(path / CONFIG_NAME, config_to_hf_dict(model.config, dtype))


def _write_json(file: Path, obj: dict) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write_bytes(file, write)


# ---------------------------------------------------------------------------------------------
# Tokenizer compatibility
# ---------------------------------------------------------------------------------------------


def check_tokenizer_compatible(tokenizer, config: Gemma2Config) -> None:
    """Raise ValueError if the tokenizer can produce ids the model has no embedding row for."""
    n = tokenizer.vocab_size
    if n > config.vocab_size:
        raise ValueError(
            f"tokenizer/vocab mismatch: the tokenizer has {n} tokens but the model's vocab_size is {config.vocab_size}"
        )
    for name in ("bos_id", "eos_id", "pad_id"):
        i = getattr(tokenizer, name)
        if i is not None and not 0 <= i < config.vocab_size:
            raise ValueError(f"tokenizer/vocab mismatch: {name}={i} is outside [0, {config.vocab_size})")


__all__ = [
    "CONFIG_NAME",
    "INDEX_NAME",
    "WEIGHTS_NAME",
    "check_tokenizer_compatible",
    "config_from_hf_dict",
    "config_to_hf_dict",
    "hf_key_map",
    "hf_state_dict",
    "load_config",
    "load_pretrained",
    "save_pretrained",
]
