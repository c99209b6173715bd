"""Read and write Gemma 2 checkpoints in the Hugging Face layout (config.json + safetensors).

Layout (docs/gemma2.md, "Checkpoint layout"):
    config.json                          model_type "gemma2" and the hyperparameters
    model.safetensors                    one file, or
    model.safetensors.index.json         {"weight_map": {tensor name: shard file}} + shards

A checkpoint is untrusted input, so loading is strict and checks before it allocates:
- config.json must be a JSON object whose sizes are ints within generous bounds (and whose total
  parameter count is at most 1e12) and whose floats are finite, so a hostile `vocab_size` or
  `num_hidden_layers` fails in milliseconds, naming the field;
- the tensor names come from the safetensors headers themselves (checked against the index when
  sharded) and go through an explicit HF-name -> our-name translation; a missing, unexpected,
  wrongly shaped or non-floating tensor is an error naming the key, raised before any data is read.
Only safetensors are read, never pickles (`pytorch_model.bin` is refused). Writing is atomic per
file (temp file + fsync + os.replace), and the result loads in `transformers.Gemma2ForCausalLM`.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from foresight.core.checkpoint import atomic_write_bytes
from foresight.lm.cpu_decode import cpu_has_native_bf16
from foresight.lm.gemma2 import Gemma2, Gemma2Config

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
_GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new")  # spellings of tanh-approximate GELU
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_TENSOR_DTYPES = ("F32", "BF16", "F16")  # safetensors header spellings of the dtypes we load
_MAX_JSON_BYTES = 16 * 2**20  # a real config.json is ~1 KB and an index ~30 KB

# Bounds on the sizes in config.json (HF names), checked before anything is built. Generous: well
# above the 27B (V 256000, D 4608, F 36864, L 46, H 32, E 128) and every published Gemma 2 variant,
# yet low enough that building the model's Python structures stays instant.
_SIZE_BOUNDS = {
    "vocab_size": 10**7,
    "hidden_size": 1 << 16,
    "intermediate_size": 1 << 20,
    "num_hidden_layers": 1024,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "head_dim": 1 << 13,
    "max_position_embeddings": 1 << 24,
    "sliding_window": 1 << 24,
    "sliding_window_size": 1 << 24,
}
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_MAX_PARAMS = 10**12
_POSITIVE_FLOATS = ("rms_norm_eps", "rope_theta", "query_pre_attn_scalar", "initializer_range")
_OPTIONAL_POSITIVE_FLOATS = ("attn_logit_softcapping", "final_logit_softcapping")  # null = no cap


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------


def _pick(d: dict, *names: str, default=None):
    """The value of the first of `names` present in d (config keys have legacy spellings)."""
    for n in names:
        if n in d and d[n] is not None:
            return d[n]
    return default


def _check_hf_numbers(d: dict, source: str) -> None:
    """Types and bounds of every size and float in an HF config dict, before anything is built."""
    for name in _REQUIRED:
        if name not in d:
            raise ValueError(f"{source} lacks required key {name!r}")
    for name, bound in _SIZE_BOUNDS.items():
        value = d.get(name)
        if value is None and name not in _REQUIRED:
            continue  # absent or null: the Gemma 2 default is used
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= bound:
            raise ValueError(f"{name} in {source} must be an int in [1, {bound}], got {value!r}")
    heads, kv_heads = d["num_attention_heads"], d.get("num_key_value_heads") or d["num_attention_heads"]
    if heads % kv_heads:
        raise ValueError(
            f"num_attention_heads ({heads}) in {source} must be divisible by num_key_value_heads ({kv_heads})"
        )
    rope = d.get("rope_parameters")
    if rope is not None and not isinstance(rope, dict):
        raise ValueError(f"rope_parameters in {source} must be a JSON object, got {rope!r}")
    numbers = [(name, d.get(name), False) for name in _POSITIVE_FLOATS]
    numbers += [(name, d.get(name), True) for name in _OPTIONAL_POSITIVE_FLOATS]
    numbers.append(("rope_parameters.rope_theta", (rope or {}).get("rope_theta"), False))
    for name, value, nullable in numbers:
        if value is None:
            continue  # absent (or null = off, for the soft-caps): the default
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < math.inf:
            kind = "a positive finite number" + (" or null" if nullable else "")
            raise ValueError(f"{name} in {source} must be {kind}, got {value!r}")
    params = _estimate_params(d)
    if params > _MAX_PARAMS:
        raise ValueError(f"{source} describes ~{params:.3g} parameters; this loader accepts at most {_MAX_PARAMS:.0e}")


def _estimate_params(d: dict) -> int:
    """Parameter count of the model an HF config dict describes (sizes already checked)."""
    V, D, F, L = d["vocab_size"], d["hidden_size"], d["intermediate_size"], d["num_hidden_layers"]
    H = d["num_attention_heads"]
    K, E = d.get("num_key_value_heads") or H, d.get("head_dim") or 256
    per_layer = 2 * D * H * E + 2 * D * K * E + 3 * D * F + 4 * D  # q, o; k, v; gate, up, down; 4 norms
    heads = 1 if d.get("tie_word_embeddings", True) else 2
    return heads * V * D + L * per_layer + D


def config_from_hf_dict(d: dict, source: str = "config.json") -> Gemma2Config:
    """Translate an HF Gemma 2 config dict; refuse anything our model would compute differently."""
    if not isinstance(d, dict):
        raise ValueError(f"{source} must hold a JSON object, got a {type(d).__name__}")
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
    _check_hf_numbers(d, source)

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
    if layer_types is not None and not isinstance(layer_types, list | tuple):
        raise ValueError(f"layer_types in {source} must be a list, got {layer_types!r}")
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
    except ValueError as e:  # Gemma2Config's own check, in our field names
        raise ValueError(f"{source}: {e}") from None


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
    d = _read_json(file)
    if not isinstance(d, dict):
        raise ValueError(f"{file} must hold a JSON object, got a {type(d).__name__}")
    dtype_name = _pick(d, "dtype", "torch_dtype")
    if dtype_name is not None and (not isinstance(dtype_name, str) or dtype_name not in _DTYPES):
        raise ValueError(f"unsupported dtype {dtype_name!r} in {file}; expected one of {list(_DTYPES)}")
    return config_from_hf_dict(d, str(file)), _DTYPES.get(dtype_name)


def _read_json(file: Path):
    """Parse a small JSON file (config or index); a huge or malformed one is a one-line error."""
    size = file.stat().st_size
    if size > _MAX_JSON_BYTES:
        raise ValueError(f"{file} is {size} bytes; a Gemma 2 {file.name} is far below {_MAX_JSON_BYTES}")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from None


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


_TOP_KEYS = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "final_norm.weight"}
_LAYER_RE = re.compile(r"model\.layers\.(0|[1-9][0-9]*)\.(.+)")  # canonical indices only: "01" is not 1


def _our_name(hf_name: str, config: Gemma2Config) -> str | None:
    """Our parameter name for a tensor found in a checkpoint, or None if the model has no such tensor.

    Translated from the name itself (not looked up in a list built from num_layers), so a tensor of
    a layer past the config's count, or with an unknown suffix, is unexpected rather than ignored.
    """
    if hf_name in _TOP_KEYS:
        return _TOP_KEYS[hf_name]
    if hf_name == "lm_head.weight":
        return "embed.weight" if config.tie_word_embeddings else "lm_head.weight"
    m = _LAYER_RE.fullmatch(hf_name)
    if m is None or int(m[1]) >= config.num_layers or m[2] not in _LAYER_KEYS:
        return None
    return f"layers.{m[1]}.{_LAYER_KEYS[m[2]]}"


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _weight_files(path: Path) -> dict[str, list[str] | None]:
    """Shard file -> tensor names the index says it holds (None for a single unindexed file)."""
    index = path / INDEX_NAME
    if index.is_file():
        weight_map = _read_json(index)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} is not a valid safetensors index: it needs a 'weight_map' object")
        files: dict[str, list[str]] = {}
        for name, file in weight_map.items():
            if not isinstance(file, str) or os.path.basename(file) != file or file in ("", ".", ".."):
                raise ValueError(f"{index} maps {name!r} to {file!r}: shard names must be plain file names")
            files.setdefault(file, []).append(name)
        return files
    if (path / WEIGHTS_NAME).is_file():
        return {WEIGHTS_NAME: None}
    if any((path / n).exists() for n in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise ValueError(
            f"{path} holds only pickle weights (pytorch_model.bin); foresight never unpickles. "
            "Convert them to safetensors first."
        )
    raise FileNotFoundError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {path}")


def _read_headers(path: Path, files: dict[str, list[str] | None]) -> dict[str, tuple[str, str, tuple]]:
    """Tensor name -> (shard file, safetensors dtype, shape) for every tensor in the files, read from
    the headers only. With an index, each shard must hold exactly the tensors the index lists."""
    headers: dict[str, tuple[str, str, tuple]] = {}
    for file, listed in files.items():
        with _open_safetensors(path / file) as f:
            present = list(f.keys())
            for name in present:
                s = f.get_slice(name)
                headers[name] = (file, s.get_dtype(), tuple(s.get_shape()))
        if listed is not None:
            absent = sorted(set(listed) - set(present))
            if absent:
                raise ValueError(f"checkpoint {path} is missing tensor(s) {_names(absent)} (the index says {file})")
            unlisted = sorted(set(present) - set(listed))
            if unlisted:
                raise ValueError(
                    f"checkpoint {path} has unexpected tensor(s): {_names(unlisted)} (in {file} but not in its index)"
                )
    return headers


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


# ---------------------------------------------------------------------------------------------
# Dtypes
# ---------------------------------------------------------------------------------------------


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """A dtype from its name ("float32", "bfloat16", "float16"); None or "auto" -> None (decide later)."""
    if name is None or name == "auto":
        return None
    if isinstance(name, torch.dtype) and name in _DTYPES.values():
        return name
    if isinstance(name, str) and name in _DTYPES:
        return _DTYPES[name]
    raise ValueError(f"unsupported dtype {name!r}; expected auto or one of {list(_DTYPES)}")


def checkpoint_dtype(path: str | os.PathLike) -> torch.dtype:
    """The dtype a checkpoint is stored in: config.json's `dtype`/`torch_dtype`, else that of its
    embedding tensor (read from the safetensors header; what transformers' dtype="auto" falls back
    to), else float32."""
    path = Path(path)
    _, dtype = load_config(path)
    return dtype or _stored_dtype(_read_headers(path, _weight_files(path)))


def _stored_dtype(headers: dict[str, tuple[str, str, tuple]]) -> torch.dtype:
    # The embedding is the biggest tensor, so its dtype is the one that sets the bytes read.
    stored = headers.get("model.embed_tokens.weight", (None, "F32", None))[1]
    return {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}.get(stored, torch.float32)


def auto_dtype(stored: torch.dtype, device: torch.device | str) -> torch.dtype:
    """The dtype to run a checkpoint stored in `stored` on `device` (what `--dtype auto` picks).

    CUDA: bfloat16 where the GPU has it (half the bytes of fp32; fp16 is fragile for Gemma 2, R9).
    CPU: bfloat16 only if the checkpoint already is bf16 and the CPU multiplies bf16 natively
    (AVX512-BF16 / AMX): decoding is bound by the bytes of weights read per token, and bf16 halves
    them. Otherwise float32: without native bf16, PyTorch's bf16 products take a conversion
    fallback that is not reliably faster than fp32, and an fp32 checkpoint is never rounded down.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and stored == torch.bfloat16 and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def load_pretrained(
    path: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str = "cpu",
    attn_backend: str = "auto",
) -> Gemma2:
    """Build a `Gemma2` from an HF-layout directory.

    dtype None or "auto" keeps the checkpoint's dtype (`checkpoint_dtype`: config.json's, else the
    stored tensors'), as transformers' dtype="auto" does: a bf16 checkpoint is not upcast to fp32.
    A dtype or its name converts on load. `auto_dtype` is the device-aware choice of the CLI.
    """
    path = Path(path)
    config, ckpt_dtype = load_config(path)
    dtype = parse_dtype(dtype)
    headers = _read_headers(path, _weight_files(path))
    dtype = dtype or ckpt_dtype or _stored_dtype(headers)
    if dtype == torch.float16:  # R9 in docs/gemma2.md: the 27B is erratic in fp16
        warnings.warn("Gemma 2 in float16 is numerically fragile (27B erratic); prefer bfloat16", stacklevel=2)

    # Shapes only (the meta device holds no data): the expected shape of every parameter.
    with torch.device("meta"):
        model = Gemma2(config, attn_backend=attn_backend)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}

    # Check every name, dtype and shape from the headers before allocating or reading any data.
    ours = {hf_name: _our_name(hf_name, config) for hf_name in headers}
    unexpected = sorted(hf_name for hf_name, name in ours.items() if name is None)
    if unexpected:
        raise ValueError(
            f"checkpoint {path} has unexpected tensor(s): {_names(unexpected)} "
            f"(config.json: num_hidden_layers={config.num_layers}, tie_word_embeddings={config.tie_word_embeddings})"
        )
    missing = sorted(hf for hf, name in hf_key_map(config).items() if hf not in headers)
    if missing:
        raise ValueError(f"checkpoint {path} is missing tensor(s): {_names(missing)}")
    for hf_name, (_, got_dtype, got_shape) in headers.items():
        if got_dtype not in _TENSOR_DTYPES:
            raise ValueError(
                f"wrong dtype for tensor {hf_name!r}: expected a floating dtype {'/'.join(_TENSOR_DTYPES)}, "
                f"got {got_dtype}"
            )
        _check_shape(hf_name, shapes[ours[hf_name]], got_shape)

    model = model.to(dtype=dtype).to_empty(device=device)
    model.reset_buffers()
    params = dict(model.named_parameters())
    by_file: dict[str, list[str]] = {}
    for hf_name, (file, _, _) in headers.items():
        # A tied model's stored lm_head.weight duplicates the embedding (checked above, not read).
        if not (hf_name == "lm_head.weight" and config.tie_word_embeddings):
            by_file.setdefault(file, []).append(hf_name)
    with torch.no_grad():
        for file, names in by_file.items():
            with _open_safetensors(path / file) as f:
                for hf_name in names:
                    params[ours[hf_name]].copy_(f.get_tensor(hf_name))
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
    "auto_dtype",
    "check_tokenizer_compatible",
    "checkpoint_dtype",
    "config_from_hf_dict",
    "config_to_hf_dict",
    "hf_key_map",
    "hf_state_dict",
    "load_config",
    "load_pretrained",
    "parse_dtype",
    "save_pretrained",
]
