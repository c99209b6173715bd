"""KV cache: incremental decoding equals the full forward, ring buffers stay O(W), batching with padding."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gemma2_testing import random_gemma2

from foresight.lm import Gemma2, Gemma2Cache, Gemma2Config
from foresight.lm.cache import PREFILL_CHUNK, prefill


def _ids(B, T, seed=0, vocab=256):
    return torch.randint(3, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def test_token_by_token_decode_equals_full_forward_past_the_window(tiny_model):
    ids = _ids(2, 40)
    full = tiny_model(ids).logits
    cache = tiny_model.make_cache(2, 40)
    steps = [tiny_model(ids[:, :13], cache=cache).logits]  # prefill longer than W = 8
    for t in range(13, 40):
        steps.append(tiny_model(ids[:, t : t + 1], cache=cache).logits)
    assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-4
    assert cache.length == 40
    # Sliding layers hold only W slots however long the stream; global layers hold everything.
    for layer_type, k in zip(cache.layer_types, cache.keys):
        assert k.shape[2] == (8 if layer_type == "sliding_attention" else 40)


@torch.inference_mode()
@pytest.mark.parametrize("chunks", [(3, 5, 1, 12, 1, 18), (20, 20), (1,) * 10 + (30,)])
def test_chunked_prefill_equals_full_forward(tiny_model, chunks):
    ids = _ids(2, 40, seed=1)
    full = tiny_model(ids).logits
    cache = tiny_model.make_cache(2, 16)  # smaller than needed: the global buffers must grow
    out, t = [], 0
    for n in chunks:
        out.append(tiny_model(ids[:, t : t + n], cache=cache).logits)
        t += n
    assert (torch.cat(out, dim=1) - full).abs().max() <= 1e-4
    assert cache.capacity >= 40 and cache.ring_size == 8


@torch.inference_mode()
def test_left_padded_batch_equals_each_row_alone(tiny_model):
    lengths, T = [19, 6, 12], 19
    ids = _ids(3, T, seed=2)
    mask = torch.zeros(3, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, T - n :] = 1
    ids = ids.masked_fill(mask == 0, 0)
    batched_cache = tiny_model.make_cache(3, T + 12)
    batched = [tiny_model(ids, attention_mask=mask, cache=batched_cache, logits_to_keep=1).logits]
    nxt = _ids(3, 12, seed=3)
    for t in range(12):
        batched.append(tiny_model(nxt[:, t : t + 1], cache=batched_cache).logits)
    batched = torch.cat(batched, dim=1)  # [3, 13, V]
    for b, n in enumerate(lengths):
        row = torch.cat([ids[b : b + 1, T - n :], nxt[b : b + 1]], dim=1)
        alone = tiny_model(row).logits[:, n - 1 :]  # last prompt position, then the 12 decode steps
        assert (batched[b : b + 1] - alone).abs().max() <= 1e-4, f"row {b}"


@torch.inference_mode()
def test_flex_backend_equals_eager_in_the_model(tiny_model):
    ids = _ids(2, 16, seed=4)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, :5] = 0
    eager_full = tiny_model(ids, attention_mask=mask).logits
    cache = tiny_model.make_cache(2, 16)
    eager_steps = [tiny_model(ids[:, :14], attention_mask=mask[:, :14], cache=cache).logits]
    eager_steps += [tiny_model(ids[:, t : t + 1], cache=cache).logits for t in range(14, 16)]
    previous = tiny_model.attn_backend
    try:
        tiny_model.set_attn_backend("flex")
        flex_full = tiny_model(ids, attention_mask=mask).logits
        cache = tiny_model.make_cache(2, 16)
        flex_steps = [tiny_model(ids[:, :14], attention_mask=mask[:, :14], cache=cache).logits]
        flex_steps += [tiny_model(ids[:, t : t + 1], cache=cache).logits for t in range(14, 16)]
    finally:
        tiny_model.set_attn_backend(previous)
    real = mask.bool()
    assert (flex_full[real] - eager_full[real]).abs().max() <= 1e-4
    assert (torch.cat(flex_steps, 1)[real] - torch.cat(eager_steps, 1)[real]).abs().max() <= 1e-4


def test_kv_cache_memory_at_16k_with_2b_dimensions():
    config = Gemma2Config.gemma2_2b()
    cache = Gemma2Cache(config, batch_size=1, capacity=16_384, dtype=torch.bfloat16, device="meta")
    per_token_per_layer = 2 * config.num_kv_heads * config.head_dim * 2  # K and V, bf16 bytes
    full_cache = config.num_layers * 16_384 * per_token_per_layer  # every layer keeps 16k keys
    sliding = [b for t, b in zip(cache.layer_types, cache.keys) if t == "sliding_attention"]
    assert len(sliding) == 13 and all(k.shape[2] == 4096 for k in sliding)  # capped at W
    ratio = cache.nbytes() / full_cache
    # 13 layers x 4096 + 13 layers x 16384 over 26 x 16384 = 0.625: the local half shrinks 4x, the
    # global half cannot. It tends to 0.5 as the context grows.
    assert ratio == pytest.approx((4096 + 16_384) / (2 * 16_384))
    assert cache.nbytes() == 13 * (4096 + 16_384) * per_token_per_layer  # = 1.02 GiB vs 1.62 GiB
    assert config.num_layers * per_token_per_layer == 104 * 1024  # KV per token, all layers (docs/gemma2.md)


@torch.inference_mode()
def test_outputs_logits_to_keep_hidden_states_and_length_limit(tiny_model):
    ids = _ids(1, 12, seed=5)
    out = tiny_model(ids, output_hidden_states=True)
    assert out.logits.shape == (1, 12, 256) and out.logits.dtype == torch.float32 and out.cache is None
    assert len(out.hidden_states) == tiny_model.config.num_layers + 1
    last = tiny_model(ids, logits_to_keep=3).logits
    torch.testing.assert_close(last, out.logits[:, -3:])
    with pytest.raises(ValueError, match="sequence length 513 exceeds max_position_embeddings=512"):
        tiny_model(_ids(1, 513))
    cache = tiny_model.make_cache(1, 8)
    tiny_model(_ids(1, 510), cache=cache)
    with pytest.raises(ValueError, match=r"sequence length 513 \(cached 510 \+ new 3\)"):
        tiny_model(_ids(1, 3), cache=cache)


def test_untied_head_and_query_scalar_matter():
    # query_pre_attn_scalar is read from config: changing it changes the output.
    config = Gemma2Config.tiny()
    a = random_gemma2(config)
    b = random_gemma2(config.replace(query_pre_attn_scalar=24.0))
    ids = _ids(1, 10, seed=6)
    with torch.inference_mode():
        assert not torch.allclose(a(ids).logits, b(ids).logits)
    untied = Gemma2(config.replace(tie_word_embeddings=False))
    assert untied.lm_head is not None and untied.lm_head_weight is untied.lm_head.weight


@torch.inference_mode()
def test_frozen_static_cache_decodes_like_the_dynamic_one(tiny_model):
    # The static mode is what torch.compile / CUDA graphs capture; here it runs eagerly on CPU.
    ids = _ids(2, 30, seed=7)
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, :4] = 0
    full = tiny_model(ids, attention_mask=mask).logits
    cache = tiny_model.make_cache(2, 32)
    steps = [tiny_model(ids[:, :12], attention_mask=mask[:, :12], cache=cache).logits]
    cache.freeze()
    steps += [tiny_model(ids[:, t : t + 1], cache=cache).logits for t in range(12, 30)]
    real = mask.bool()
    assert (torch.cat(steps, dim=1)[real] - full[real]).abs().max() <= 1e-4
    assert cache.static and cache.length == 30  # read back from the device-side clock
    assert all(k.shape[2] in (8, 32) for k in cache.keys)  # fixed shapes: ring W, capacity C
    with pytest.raises(ValueError, match="a frozen \\(static\\) cache takes one token per row"):
        tiny_model(ids[:, :2], cache=cache)
    cache.reset()
    assert cache.length == 0 and not cache.static and not cache.full_valid.any()
    again = tiny_model(ids[:, :12], attention_mask=mask[:, :12], cache=cache).logits
    torch.testing.assert_close(again, steps[0])


# Two layers (sliding, global) with a window of 300 keys: long enough that chunks, tiles and the ring
# all cut through windows, small enough for a one-shot eager reference at 3000 tokens.
LONG = Gemma2Config.tiny(num_layers=2, sliding_window=300, max_position_embeddings=32_768)


@torch.inference_mode()
def test_blockwise_backend_equals_eager_in_the_model():
    model = random_gemma2(LONG)
    ids = _ids(2, 700, seed=8)
    mask = torch.ones(2, 700, dtype=torch.long)
    mask[1, :45] = 0
    real = mask.bool()
    model.set_attn_backend("eager")
    eager = model(ids, attention_mask=mask).logits
    model.set_attn_backend("blockwise")
    blockwise = model(ids, attention_mask=mask).logits
    assert (blockwise - eager).abs().max() <= 1e-4  # every row: padding queries match eager too
    cache = model.make_cache(2, 700)
    steps = [model(ids[:, :650], attention_mask=mask[:, :650], cache=cache).logits]
    steps += [model(ids[:, t : t + 1], cache=cache).logits for t in range(650, 700)]
    assert (torch.cat(steps, 1)[real] - eager[real]).abs().max() <= 1e-4


@torch.inference_mode()
@pytest.mark.parametrize("chunk", [1000, 777, PREFILL_CHUNK])
def test_chunked_prefill_equals_the_one_shot_eager_forward_at_3000_tokens(chunk):
    model = random_gemma2(LONG)
    T = 3000
    ids = _ids(2, T, seed=9)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[0, :123] = 0  # a left-padded row
    model.set_attn_backend("eager")
    one_shot = model(ids, attention_mask=mask).logits  # [2, T, V]: the reference, T x T scores
    model.set_attn_backend("auto")  # the default: blockwise tiles inside each chunk
    every = prefill(model, ids, mask, chunk_size=chunk, logits_to_keep=0)
    real = mask.bool()
    diff = (every[real] - one_shot[real]).abs().max().item()
    assert diff <= 1e-4, diff
    # The last n logits may span chunks; a given cache is filled for decoding.
    cache = model.make_cache(2, T + 1)
    last = prefill(model, ids, mask, cache, chunk_size=chunk, logits_to_keep=chunk + 5)
    torch.testing.assert_close(last, every[:, -(chunk + 5) :], rtol=0, atol=1e-5)
    assert cache.length == T
    nxt = model(_ids(2, 1, seed=10), cache=cache).logits[:, -1]
    ref = model(torch.cat([ids, _ids(2, 1, seed=10)], 1), torch.cat([mask, torch.ones(2, 1).long()], 1))
    assert (nxt - ref.logits[:, -1]).abs().max() <= 1e-4


def test_prefill_arguments_are_checked(tiny_model):
    cache = tiny_model.make_cache(1, 8)
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        prefill(tiny_model, _ids(1, 8), cache=cache, chunk_size=0)
    with pytest.raises(ValueError, match="logits_to_keep must be >= 0, got -1"):
        prefill(tiny_model, _ids(1, 8), cache=cache, chunk_size=4, logits_to_keep=-1)


# Peak RSS of the fresh interpreter: VmHWM (the high-water mark of this process's own memory map).
# Not ru_maxrss: Linux carries the parent's high-water mark over fork + exec into the child's
# ru_maxrss, so under pytest it reports the test runner's size, not the child's.
PEAK_RSS_SCRIPT = """
import re, sys, time, torch
sys.path.insert(0, {tests!r})
from gemma2_testing import random_gemma2
from foresight.lm import Gemma2Config
from foresight.lm.cache import prefill
torch.set_num_threads(1)
config = Gemma2Config.tiny(num_layers=2, hidden_size=128, intermediate_size=512, num_heads=4, num_kv_heads=2,
                           head_dim=32, query_pre_attn_scalar=32.0, sliding_window=4096, max_position_embeddings=16384)
model = random_gemma2(config, std=0.1)
ids = torch.randint(3, 256, (1, 16384), generator=torch.Generator().manual_seed(0))
def peak_kib():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
before = peak_kib()
t = time.perf_counter()
with torch.inference_mode():
    logits = prefill(model, ids, cache=model.make_cache(1, 16384))
seconds = time.perf_counter() - t
assert torch.isfinite(logits).all()
print(before, peak_kib(), seconds)  # KiB, KiB, s
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_peak_memory_of_a_16k_prefill_stays_under_1_5_gib():
    """The whole process (interpreter, torch, model, cache, activations) peaks below 1.5 GiB (~9 s).

    One-shot eager attention would need 2 x 4 heads x 16k x 16k fp32 scores (8 GiB) for the global layer.
    """
    tests = str(Path(__file__).resolve().parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT.format(tests=tests)], capture_output=True, text=True, env=env, check=True
    )
    before_kib, peak_kib, seconds = out.stdout.split()
    peak_gib = int(peak_kib) / 2**20
    print(f"16k prefill: peak RSS {peak_gib:.3f} GiB (before the prefill {int(before_kib) / 2**20:.3f}), {seconds} s")
    assert peak_gib < 1.5
