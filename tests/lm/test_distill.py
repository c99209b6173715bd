import numpy as np
import pytest
import torch
import torch.nn.functional as F

from foresight.lm.distill import (
    DistillationObjective,
    TopKCache,
    check_teacher_student,
    distillation_loss,
    kd_kl,
    load_teacher,
    sparse_kd_kl,
    windows_sha256,
)
from foresight.lm.gemma2 import Gemma2, Gemma2Config
from foresight.lm.text_data import PackedSequences, tokenizer_sha256, train_tokenizer

B, T, V = 2, 5, 11


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(B, T, V, generator=g) * 3
    t = torch.randn(B, T, V, generator=g) * 3
    y = torch.randint(0, V, (B, T), generator=g)
    return s, t, y


def test_one_hot_teacher_gives_next_token_cross_entropy(logits):
    s, _, y = logits
    one_hot = torch.full((B, T, V), float("-inf")).scatter(-1, y[..., None], 0.0)  # p = onehot(y) exactly
    out = distillation_loss(s, y, teacher_logits=one_hot, temperature=1.0, alpha=1.0)
    ce = F.cross_entropy(s.reshape(-1, V), y.reshape(-1))
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, ce, rtol=0, atol=1e-6)
    # a finite but overwhelming margin is numerically one-hot too
    peaked = F.one_hot(y, V).float() * 1e4
    torch.testing.assert_close(distillation_loss(s, y, teacher_logits=peaked).loss, ce, rtol=0, atol=1e-6)
    # and so is a top-1 cache holding the target
    top1 = (torch.zeros(B, T, 1), y[..., None])
    torch.testing.assert_close(distillation_loss(s, y, teacher_topk=top1).loss, ce, rtol=0, atol=1e-6)


def test_topk_with_k_equal_vocab_is_the_dense_loss_and_gradient(logits):
    s, t, y = logits
    for tau in (1.0, 2.0):
        s1 = s.clone().requires_grad_()
        dense = distillation_loss(s1, y, teacher_logits=t, temperature=tau, alpha=0.7)
        dense.loss.backward()
        top = t.topk(V, dim=-1)  # all V ids, sorted
        s2 = s.clone().requires_grad_()
        sparse = distillation_loss(s2, y, teacher_topk=(top.values, top.indices), temperature=tau, alpha=0.7)
        sparse.loss.backward()
        torch.testing.assert_close(sparse.loss, dense.loss, rtol=0, atol=1e-5)
        torch.testing.assert_close(s2.grad, s1.grad, rtol=0, atol=1e-6)


def test_tau_squared_convention_gradient_is_tau_times_q_minus_p(logits):
    s, t, y = logits
    tau = 3.0
    s1 = s.clone().requires_grad_()
    out = distillation_loss(s1, y, teacher_logits=t, temperature=tau, alpha=1.0)
    out.loss.backward()
    n = B * T
    expected = tau * (F.softmax(s / tau, -1) - F.softmax(t / tau, -1)) / n
    torch.testing.assert_close(s1.grad, expected, rtol=1e-4, atol=1e-7)
    # kd = τ² · mean KL, and KL(p ‖ p) = 0
    kl = kd_kl(s.reshape(-1, V), t.reshape(-1, V), tau)
    torch.testing.assert_close(out.kd, tau**2 * kl.mean())
    assert kd_kl(t.reshape(-1, V), t.reshape(-1, V), tau).abs().max() < 1e-5


def test_alpha_mixes_kd_and_ce_and_ignore_index_is_excluded(logits):
    s, t, y = logits
    mixed = distillation_loss(s, y, teacher_logits=t, alpha=0.3)
    torch.testing.assert_close(mixed.loss, 0.3 * mixed.kd + 0.7 * mixed.ce)
    ntp = distillation_loss(s, y, teacher_logits=t, alpha=0.0)
    torch.testing.assert_close(ntp.loss, F.cross_entropy(s.reshape(-1, V), y.reshape(-1)))
    y_ign = y.clone()
    y_ign[0] = -100  # the first row is ignored entirely
    part = distillation_loss(s, y_ign, teacher_logits=t, alpha=0.5)
    only = distillation_loss(s[1:], y[1:], teacher_logits=t[1:], alpha=0.5)
    torch.testing.assert_close(part.loss, only.loss)


def test_sparse_kl_is_nonnegative_and_renormalises_topk(logits):
    s, t, _ = logits
    top = t.reshape(-1, V).topk(3, dim=-1)
    kl = sparse_kd_kl(s.reshape(-1, V), top.values, top.indices)
    assert (kl >= -1e-6).all()
    # renormalisation: adding a constant to the kept logits changes nothing
    kl2 = sparse_kd_kl(s.reshape(-1, V), top.values + 5.0, top.indices)
    torch.testing.assert_close(kl, kl2)


def test_bad_arguments_raise_value_errors(logits):
    s, t, y = logits
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        distillation_loss(s, y, teacher_logits=t, temperature=0)
    with pytest.raises(ValueError, match="exactly one of teacher_logits and teacher_topk"):
        distillation_loss(s, y)
    with pytest.raises(ValueError, match="alpha must be in"):
        distillation_loss(s, y, teacher_logits=t, alpha=1.5)
    with pytest.raises(ValueError, match="same vocabulary"):
        distillation_loss(s, y, teacher_logits=t[..., :-1])
    with pytest.raises(ValueError, match="exactly one of teacher= and cache="):
        DistillationObjective()


def test_tokenizer_mismatch_is_a_clear_value_error():
    check_teacher_student(300, 300, "a" * 64, "a" * 64)
    with pytest.raises(ValueError, match="tokenizer mismatch: teacher vocab_size=512 but student vocab_size=300"):
        check_teacher_student(512, 300, "a" * 64, "a" * 64)
    with pytest.raises(ValueError, match="tokenizer mismatch: teacher tokenizer.json sha256 aaaa"):
        check_teacher_student(300, 300, "a" * 64, "b" * 64)
    with pytest.raises(ValueError, match="no tokenizer.json found beside the teacher"):
        check_teacher_student(300, 300, None, "b" * 64)


# -- top-k cache -------------------------------------------------------------------------------


def _tiny(vocab=64, seed=0):
    torch.manual_seed(seed)
    return Gemma2(Gemma2Config.tiny(vocab_size=vocab, num_layers=2, max_position_embeddings=16)).eval()


@pytest.fixture
def windows():
    rng = np.random.default_rng(0)
    return PackedSequences(rng.integers(0, 64, size=8 * 10 + 1).astype(np.uint16), seq_len=8)  # 10 windows


def test_topk_cache_stores_teacher_topk_and_resumes(tmp_path, windows):
    teacher = _tiny()
    cache = TopKCache.build(
        tmp_path / "c", teacher, windows, k=5, batch_size=3, shard_windows=4, tokenizer_sha256="f" * 64
    )
    assert sorted(p.name for p in (tmp_path / "c").glob("shard-*")) == [f"shard-0000{i}.safetensors" for i in range(3)]
    ids = [9, 0, 4]
    values, indices = cache.lookup(ids)  # [3, T, k]
    x, _ = windows.batch(ids)
    with torch.no_grad():
        ref = teacher(x).logits.topk(5, dim=-1)
    torch.testing.assert_close(values, ref.values)
    assert torch.equal(indices, ref.indices)
    # an interrupted build resumes: only the missing shard is recomputed
    (tmp_path / "c" / "shard-00001.safetensors").unlink()
    kept = (tmp_path / "c" / "shard-00000.safetensors").stat().st_mtime_ns
    meta = (tmp_path / "c" / "meta.json").read_text().replace('"complete": true', '"complete": false')
    (tmp_path / "c" / "meta.json").write_text(meta)
    again = TopKCache.build(
        tmp_path / "c", teacher, windows, k=5, batch_size=3, shard_windows=4, tokenizer_sha256="f" * 64
    )
    assert (tmp_path / "c" / "shard-00000.safetensors").stat().st_mtime_ns == kept
    torch.testing.assert_close(again.lookup(ids)[0], values)
    again.check(
        vocab_size=64,
        seq_len=8,
        tokenizer_sha256="f" * 64,
        windows_sha256=windows_sha256(windows.tokens, windows.seq_len),
    )
    with pytest.raises(ValueError, match="tokenizer mismatch: cache vocab_size=64 but student vocab_size=65"):
        again.check(vocab_size=65, seq_len=8)
    with pytest.raises(ValueError, match="tokenizer mismatch: cache tokenizer.json sha256"):
        again.check(vocab_size=64, seq_len=8, tokenizer_sha256="e" * 64)
    with pytest.raises(ValueError, match="seq_len=8 but the student trains on seq_len=16"):
        again.check(vocab_size=64, seq_len=16)
    with pytest.raises(ValueError, match="k must be in"):
        TopKCache.build(tmp_path / "d", teacher, windows, k=65)


def test_cached_objective_with_k_equal_vocab_matches_online_teacher(tmp_path, windows):
    teacher, student = _tiny(seed=0), _tiny(seed=1)
    cache = TopKCache.build(tmp_path / "c", teacher, windows, k=64, shard_windows=4)
    ids = np.array([3, 7])
    x, y = windows.batch(ids)
    online = DistillationObjective(teacher=teacher, temperature=2.0, alpha=0.5)(student, x, y, ids)
    cached = DistillationObjective(cache=cache, temperature=2.0, alpha=0.5)(student, x, y, ids)
    torch.testing.assert_close(cached.loss, online.loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(cached.kd, online.kd, rtol=0, atol=1e-5)


def test_load_teacher_from_hf_layout_and_trainer_checkpoint(tmp_path):
    from foresight.core.checkpoint import save_checkpoint
    from foresight.lm.hf_io import save_pretrained

    teacher = _tiny(vocab=300)
    tok_path = tmp_path / "hf" / "tokenizer.json"
    tok_path.parent.mkdir()
    train_tokenizer(["some text to learn merges from\n" * 20], 300, tok_path)
    save_pretrained(teacher, tmp_path / "hf")
    loaded = load_teacher(tmp_path / "hf")
    assert loaded.tokenizer_sha256 == tokenizer_sha256(tok_path) and loaded.vocab_size == 300
    assert not any(p.requires_grad for p in loaded.model.parameters())
    x = torch.randint(0, 300, (1, 6))
    torch.testing.assert_close(loaded.model(x).logits, teacher(x).logits)

    import dataclasses

    ckpt = tmp_path / "run" / "checkpoints" / "last.safetensors"
    state = {"model": teacher.state_dict(), "model_config": dataclasses.asdict(teacher.config)}
    save_checkpoint(ckpt, {"state": state, "rng": {}, "metrics_lines": 0})
    from_ckpt = load_teacher(ckpt)
    assert from_ckpt.tokenizer_sha256 is None  # no tokenizer.json beside it
    torch.testing.assert_close(from_ckpt.model(x).logits, teacher(x).logits)
    with pytest.raises(ValueError, match="is neither a checkpoint folder"):
        load_teacher(tmp_path / "missing.bin")


def test_perplexity_is_exp_of_the_mean_nll_capped_for_diverged_runs():
    from foresight.lm.distill import MAX_LOG_PPL, perplexity

    assert perplexity(0.0) == 1.0
    assert perplexity(np.log(90.0)) == pytest.approx(90.0)  # a uniform guess over 90 tokens
    assert perplexity(1e6) == perplexity(MAX_LOG_PPL) == pytest.approx(np.exp(50.0))
    with pytest.raises(ValueError, match="nll is NaN"):
        perplexity(float("nan"))
