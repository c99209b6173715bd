"""SparseMoE against HF Mixtral, hand-computed losses, a per-token Switch loop, a dense FFN and capacity rules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from foresight.nn import MoEConfig, SparseMoE, load_balancing_loss, router_z_loss

torch.set_num_threads(1)


def make_moe(D=16, F_=32, seed=0, **cfg) -> SparseMoE:
    torch.manual_seed(seed)
    moe = SparseMoE(D, F_, MoEConfig(**cfg))
    moe.reset_parameters(std=0.3)  # larger than 0.02 so routing is decisive and outputs are O(1)
    return moe.eval()


def identity_router(moe: SparseMoE) -> SparseMoE:
    """D == E and W_r = I, so a token's router logits are its first E features: routing is hand-built via x."""
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(moe.config.num_experts, moe.hidden_size))
    return moe


def dense_ffn(x, w_gate_up, w_down, act):  # [n, D], [2F, D], [D, F] -> [n, D]
    gate, up = (x @ w_gate_up.T).chunk(2, dim=-1)
    return (act(gate) * up) @ w_down.T


# --- 1. parity with transformers ------------------------------------------------------------------


def test_parity_with_hf_mixtral_sparse_moe_block():
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    from transformers import MixtralConfig

    D, F_, E, k = 16, 24, 6, 2
    moe = make_moe(D, F_, num_experts=E, top_k=k, gating="topk_softmax", activation="silu")
    hf_cfg = MixtralConfig(
        hidden_size=D, intermediate_size=F_, num_local_experts=E, num_experts_per_tok=k, hidden_act="silu"
    )
    hf_cfg._experts_implementation = "eager"
    hf = mixtral.MixtralSparseMoeBlock(hf_cfg).eval()
    # HF 5.x layout: gate.weight [E, D]; experts.gate_up_proj [E, 2F, D] (gate rows first); down_proj [E, D, F].
    assert hf.gate.weight.shape == moe.router.weight.shape
    assert hf.experts.gate_up_proj.shape == moe.gate_up_proj.shape
    assert hf.experts.down_proj.shape == moe.down_proj.shape
    with torch.no_grad():
        hf.gate.weight.copy_(moe.router.weight)
        hf.experts.gate_up_proj.copy_(moe.gate_up_proj)
        hf.experts.down_proj.copy_(moe.down_proj)

    x = torch.randn(3, 7, D)
    with torch.no_grad():
        ours = moe(x)
        theirs = hf(x.clone())
        hf_logits, hf_weights, hf_index = hf.gate(x.reshape(-1, D))
    assert torch.equal(ours.router_logits, hf_logits)
    assert torch.equal(ours.expert_index, hf_index)
    assert (ours.hidden - theirs).abs().max().item() <= 1e-5
    assert ours.dropped_fraction.item() == 0.0
    # the aux loss of the block is HF's one-layer value divided by k (normalised: f sums to 1, not k)
    hf_aux = mixtral.load_balancing_loss_func((hf_logits,), E, k)
    torch.testing.assert_close(ours.aux_loss, hf_aux / k, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("with_mask", [False, True])
def test_load_balancing_loss_matches_hf_load_balancing_loss_func(with_mask):
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    torch.manual_seed(1)
    B, T, E, k = 3, 10, 5, 2
    logits = torch.randn(B * T, E) * 2
    mask = (torch.rand(B, T) > 0.3) if with_mask else None
    probs = logits.softmax(-1)
    index = probs.topk(k, dim=-1).indices
    valid = None if mask is None else mask.reshape(-1)
    theirs = mixtral.load_balancing_loss_func((logits,), E, k, attention_mask=None if mask is None else mask.long())
    ours = load_balancing_loss(probs, index, valid, normalise_top_k=False)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(load_balancing_loss(probs, index, valid), theirs / k, rtol=1e-6, atol=1e-7)


# --- 2. loss values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
def test_load_balancing_loss_is_one_or_k_under_uniform_routing(k):
    E, N = 6, 12
    probs = torch.full((N, E), 1.0 / E)
    index = (torch.arange(N)[:, None] + torch.arange(k)[None, :]) % E  # every expert gets N*k/E slots
    assert torch.equal(torch.bincount(index.reshape(-1), minlength=E), torch.full((E,), N * k // E))
    torch.testing.assert_close(load_balancing_loss(probs, index), torch.tensor(1.0))
    torch.testing.assert_close(load_balancing_loss(probs, index, normalise_top_k=False), torch.tensor(float(k)))


def test_load_balancing_loss_golden_value_and_padding_excluded():
    # Switch form (k=1): f = [1, 0], P = [(0.9 + 0.6) / 2, (0.1 + 0.4) / 2] -> 2 * 0.75 = 1.5
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
    index = torch.tensor([[0], [0]])
    torch.testing.assert_close(load_balancing_loss(probs, index), torch.tensor(1.5))
    # padding rows with a wild distribution and routing change nothing
    padded_probs = torch.cat([probs, torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])])
    padded_index = torch.cat([index, torch.tensor([[1], [1], [1]])])
    valid = torch.tensor([True, True, False, False, False])
    torch.testing.assert_close(load_balancing_loss(padded_probs, padded_index, valid), torch.tensor(1.5))
    assert load_balancing_loss(padded_probs, padded_index).item() != pytest.approx(1.5)
    assert load_balancing_loss(probs, index, torch.zeros(2, dtype=torch.bool)).item() == 0.0  # no NaN


def test_router_z_loss_hand_computed_and_padding_excluded():
    logits = torch.tensor([[0.0, 0.0], [1.0, 2.0], [50.0, -3.0]])
    lse = [math.log(2.0), 2.0 + math.log(1.0 + math.exp(-1.0))]
    torch.testing.assert_close(router_z_loss(logits[:2]), torch.tensor((lse[0] ** 2 + lse[1] ** 2) / 2))
    valid = torch.tensor([True, True, False])
    torch.testing.assert_close(router_z_loss(logits, valid), torch.tensor((lse[0] ** 2 + lse[1] ** 2) / 2))
    assert router_z_loss(logits).item() > 800  # the large row dominates when it is not masked


def test_block_losses_diagnostics_and_weighted_loss():
    moe = make_moe(num_experts=4, top_k=2, aux_loss_coef=0.1, z_loss_coef=0.01)
    x = torch.randn(2, 9, 16)
    out = moe(x)
    probs = out.router_logits.softmax(-1)
    torch.testing.assert_close(out.aux_loss, load_balancing_loss(probs, out.expert_index))
    torch.testing.assert_close(out.z_loss, router_z_loss(out.router_logits))
    counts = torch.bincount(out.expert_index.reshape(-1), minlength=4).float()
    torch.testing.assert_close(out.expert_fraction, counts / counts.sum())
    torch.testing.assert_close(moe.loss(out), 0.1 * out.aux_loss + 0.01 * out.z_loss)


@pytest.mark.parametrize("capacity_factor", [0.0, 1.0])
def test_padding_is_not_routed_and_leaves_valid_tokens_unchanged(capacity_factor):
    moe = make_moe(num_experts=4, top_k=2, capacity_factor=capacity_factor)
    x = torch.randn(2, 6, 16)
    valid = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    out = moe(x, valid)
    assert torch.count_nonzero(out.hidden[1, 3:]) == 0
    # the same valid tokens alone (in the same order) give the same outputs, losses and statistics
    alone = moe(x[valid][None])
    torch.testing.assert_close(out.hidden[valid], alone.hidden[0])
    torch.testing.assert_close(out.aux_loss, alone.aux_loss)
    torch.testing.assert_close(out.z_loss, alone.z_loss)
    torch.testing.assert_close(out.expert_fraction, alone.expert_fraction)
    torch.testing.assert_close(out.dropped_fraction, alone.dropped_fraction)


# --- 3. references: a per-token Switch loop and a dense FFN -----------------------------------------


def test_switch_top1_softmax_gating_equals_per_token_loop_with_gradients():
    moe = make_moe(num_experts=4, top_k=1, gating="softmax", activation="gelu_tanh")
    x = torch.randn(2, 5, 16, requires_grad=True)
    out = moe(x)

    rows = []
    for token in x.reshape(-1, 16):  # Switch eq. 2: y = p_i(x) FFN_i(x), i = argmax p(x)
        p = (moe.router.weight @ token).softmax(-1)
        i = int(p.argmax())
        rows.append(p[i] * dense_ffn(token[None], moe.gate_up_proj[i], moe.down_proj[i], moe._act)[0])
    ref = torch.stack(rows).reshape(2, 5, 16)
    torch.testing.assert_close(out.hidden, ref, rtol=1e-5, atol=1e-6)

    g = torch.randn_like(ref)
    grads = torch.autograd.grad((out.hidden * g).sum(), [x, moe.router.weight, moe.gate_up_proj, moe.down_proj])
    ref_grads = torch.autograd.grad((ref * g).sum(), [x, moe.router.weight, moe.gate_up_proj, moe.down_proj])
    for got, want in zip(grads, ref_grads, strict=True):
        # relative to the tensor's scale: a router-weight gradient is a sum over tokens whose terms cancel,
        # so a small element carries the fp32 rounding of large terms (seen: 3.5e-6 on an element of 0.065,
        # 4e-7 of the largest, ~9, on this CPU; below 1e-6 on the CI machine of an earlier session)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("gating", ["topk_softmax", "softmax"])
def test_single_expert_equals_gemma2_geglu_mlp(gating):
    from foresight.lm.gemma2 import Gemma2Config, Gemma2MLP

    D, F_ = 16, 40
    moe = make_moe(D, F_, num_experts=1, top_k=1, gating=gating, activation="gelu_tanh")
    mlp = Gemma2MLP(Gemma2Config(hidden_size=D, intermediate_size=F_))
    with torch.no_grad():
        mlp.gate_proj.weight.copy_(moe.gate_up_proj[0, :F_])
        mlp.up_proj.weight.copy_(moe.gate_up_proj[0, F_:])
        mlp.down_proj.weight.copy_(moe.down_proj[0])
    x = torch.randn(2, 7, D)
    with torch.no_grad():
        torch.testing.assert_close(moe(x).hidden, mlp(x), rtol=1e-5, atol=1e-6)


def test_single_expert_equals_dense_swiglu():
    moe = make_moe(num_experts=1, top_k=1, activation="silu")
    x = torch.randn(3, 4, 16)
    with torch.no_grad():
        ref = dense_ffn(x.reshape(-1, 16), moe.gate_up_proj[0], moe.down_proj[0], F.silu).reshape(3, 4, 16)
        torch.testing.assert_close(moe(x).hidden, ref, rtol=1e-5, atol=1e-6)


# --- 4. capacity ---------------------------------------------------------------------------------------


def test_capacity_keeps_the_first_tokens_of_an_oversubscribed_expert():
    E, k, N = 4, 2, 8
    moe = identity_router(make_moe(D=E, F_=8, num_experts=E, top_k=k, capacity_factor=1.0))
    capacity = math.ceil(1.0 * k * N / E)  # 4
    second = 1 + torch.arange(N) % 3  # experts 1, 2, 3 share the second choices: 3, 3, 2 slots (<= capacity)
    logits = torch.zeros(N, E)
    logits[:, 0] = 3.0  # everyone's first choice
    logits[torch.arange(N), second] = 2.0
    x = logits[None]  # [1, N, E]: with W_r = I the logits are x itself
    with torch.no_grad():
        out = moe(x)
        assert torch.equal(out.expert_index, torch.stack([torch.zeros(N, dtype=torch.long), second], 1))
        gate = torch.tensor([math.exp(1.0), 1.0]) / (math.exp(1.0) + 1.0)  # renormalised top-2
        ref = torch.stack(
            [
                (gate[0] * moe.expert(0, x[0, t : t + 1])[0] if t < capacity else torch.zeros(E))
                + gate[1] * moe.expert(int(second[t]), x[0, t : t + 1])[0]
                for t in range(N)
            ]
        )
    torch.testing.assert_close(out.hidden[0], ref, rtol=1e-5, atol=1e-6)
    assert out.dropped_fraction.item() == pytest.approx((N - capacity) / (k * N))
    torch.testing.assert_close(out.expert_fraction, torch.tensor([8, 3, 3, 2]) / 16.0)

    # capacity_factor = 0 is dropless: no slot dropped, every token gets both experts
    dropless = identity_router(make_moe(D=E, F_=8, num_experts=E, top_k=k, capacity_factor=0.0))
    dropless.load_state_dict(moe.state_dict())
    with torch.no_grad():
        full = dropless(x)
        ref_full = torch.stack(
            [
                gate[0] * moe.expert(0, x[0, t : t + 1])[0] + gate[1] * moe.expert(int(second[t]), x[0, t : t + 1])[0]
                for t in range(N)
            ]
        )
    assert full.dropped_fraction.item() == 0.0
    torch.testing.assert_close(full.hidden[0], ref_full, rtol=1e-5, atol=1e-6)


def test_capacity_priority_is_slot_major():
    # capacity = ceil(0.5 * 2 * 3 / 3) = 1. Token-major priority would give expert 1 to token 0's second
    # choice; slot-major gives it to token 1's first choice, and every second choice is dropped.
    E = 3
    moe = identity_router(make_moe(D=E, F_=8, num_experts=E, top_k=2, capacity_factor=0.5))
    logits = torch.tensor([[3.0, 2.0, 0.0], [2.0, 3.0, 0.0], [0.0, 2.0, 3.0]])  # first: 0, 1, 2; second: 1, 0, 1
    with torch.no_grad():
        out = moe(logits[None])
        g_first = math.exp(1.0) / (math.exp(1.0) + 1.0)
        ref = torch.stack([g_first * moe.expert(t, logits[t : t + 1])[0] for t in range(3)])
    torch.testing.assert_close(out.hidden[0], ref, rtol=1e-5, atol=1e-6)
    assert out.dropped_fraction.item() == pytest.approx(0.5)


def test_large_capacity_factor_equals_dropless():
    x = torch.randn(2, 8, 16)
    with torch.no_grad():
        dropless = make_moe(num_experts=4, top_k=2)(x)
        roomy = make_moe(num_experts=4, top_k=2, capacity_factor=2.0)(x)  # capacity = k*N: nothing can overflow
    assert roomy.dropped_fraction.item() == 0.0
    torch.testing.assert_close(roomy.hidden, dropless.hidden)


# --- 5. gradients, dtypes, jitter -------------------------------------------------------------------


def test_gradients_reach_router_and_experts():
    moe = make_moe(num_experts=4, top_k=2).train()
    out = moe(torch.randn(2, 8, 16))
    out.hidden.square().sum().backward()
    assert moe.router.weight.grad.abs().sum() > 0  # through the gates
    used = torch.unique(out.expert_index)
    assert (moe.gate_up_proj.grad[used].abs().sum((1, 2)) > 0).all()
    assert (moe.down_proj.grad[used].abs().sum((1, 2)) > 0).all()

    moe.zero_grad(set_to_none=True)
    out = moe(torch.randn(2, 8, 16))
    moe.loss(out).backward()  # the auxiliary terms alone train the router, not the experts
    assert moe.router.weight.grad.abs().sum() > 0
    assert moe.gate_up_proj.grad is None and moe.down_proj.grad is None


@pytest.mark.parametrize("module_dtype", [torch.float32, torch.bfloat16])
def test_bf16_input_runs_experts_in_bf16_and_router_in_fp32(module_dtype):
    moe = make_moe(num_experts=4, top_k=2)
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        ref = moe(x)
    moe = moe.to(module_dtype)
    xb = x.bfloat16()
    out = moe(xb)
    assert out.hidden.dtype == torch.bfloat16
    assert out.router_logits.dtype == torch.float32
    expected_logits = xb.float().reshape(-1, 16) @ moe.router.weight.float().T
    torch.testing.assert_close(out.router_logits, expected_logits, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.hidden.float(), ref.hidden, rtol=0.05, atol=0.05)
    out.hidden.float().sum().backward()
    assert moe.router.weight.grad.abs().sum() > 0 and moe.gate_up_proj.grad.abs().sum() > 0


def test_router_jitter_scales_router_input_in_training_only():
    E, eps = 4, 0.2
    moe = identity_router(make_moe(D=E, F_=8, num_experts=E, top_k=1, router_jitter=eps))
    x = torch.randn(1, 64, E)
    with torch.no_grad():
        assert torch.equal(moe.eval()(x).router_logits, x[0])
        jittered = moe.train()(x).router_logits
    ratio = jittered / x[0]  # [N, E]: each feature scaled by its own uniform(1 - eps, 1 + eps)
    assert not torch.allclose(ratio, torch.ones_like(ratio))
    assert ratio.min() >= 1 - eps - 1e-6 and ratio.max() <= 1 + eps + 1e-6


# --- 6. validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_experts": 0}, r"num_experts must be an int >= 1, got 0"),
        ({"num_experts": 2.0}, r"num_experts must be an int >= 1, got 2.0"),
        ({"num_experts": 4, "top_k": 5}, r"top_k must be an int in \[1, num_experts=4\], got 5"),
        ({"top_k": 0}, r"top_k must be an int in \[1, num_experts=8\], got 0"),
        ({"gating": "sigmoid"}, r"gating='sigmoid' is not allowed; expected one of \['topk_softmax', 'softmax'\]"),
        ({"activation": "relu"}, r"activation='relu' is not allowed; expected one of \['gelu_tanh', 'silu'\]"),
        ({"capacity_factor": -1.0}, r"capacity_factor must be >= 0 \(0 = dropless\), got -1.0"),
        ({"capacity_factor": float("nan")}, r"capacity_factor must be >= 0 \(0 = dropless\), got nan"),
        ({"router_jitter": 1.0}, r"router_jitter must be in \[0, 1\), got 1.0"),
        ({"router_jitter": -0.1}, r"router_jitter must be in \[0, 1\), got -0.1"),
        ({"aux_loss_coef": -1e-2}, r"aux_loss_coef must be >= 0, got -0.01"),
        ({"z_loss_coef": -1e-3}, r"z_loss_coef must be >= 0, got -0.001"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MoEConfig(**kwargs)


def test_module_and_function_validation():
    cfg = MoEConfig(num_experts=4, top_k=2)
    with pytest.raises(ValueError, match=r"hidden_size must be a positive int, got 0"):
        SparseMoE(0, 8, cfg)
    with pytest.raises(ValueError, match=r"intermediate_size must be a positive int, got -3"):
        SparseMoE(8, -3, cfg)
    with pytest.raises(ValueError, match=r"config must be a MoEConfig, got dict"):
        SparseMoE(8, 8, {"num_experts": 4})
    moe = SparseMoE(8, 16, cfg)
    with pytest.raises(ValueError, match=r"x must be \[B, T, D=8\], got \[2, 5, 6\]"):
        moe(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match=r"x must be \[B, T, D=8\], got \[10, 8\]"):
        moe(torch.randn(10, 8))
    with pytest.raises(ValueError, match=r"valid must be a bool tensor of shape \[2, 5\].*got torch.int64"):
        moe(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"valid must be a bool tensor of shape \[2, 5\].*of shape \[10\]"):
        moe(torch.randn(2, 5, 8), torch.ones(10, dtype=torch.bool))
    with pytest.raises(
        ValueError, match=r"expected probs \[N, E\] and expert_index \[N, k\], got \[6, 4\] and \[5, 2\]"
    ):
        load_balancing_loss(torch.rand(6, 4), torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"valid must be a bool tensor of shape \[6\]"):
        load_balancing_loss(torch.rand(6, 4), torch.zeros(6, 2, dtype=torch.long), torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"expected logits \[N, E\], got \[2, 3, 4\]"):
        router_z_loss(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"valid must be a bool tensor of shape \[3\]"):
        router_z_loss(torch.randn(3, 4), torch.ones(3))


def test_repr_shows_hyperparameters():
    text = repr(SparseMoE(8, 16, MoEConfig(num_experts=4, top_k=1, gating="softmax", capacity_factor=1.25)))
    expected = "hidden_size=8, intermediate_size=16, num_experts=4, top_k=1, gating=softmax, activation=gelu_tanh"
    assert expected in text and "capacity_factor=1.25" in text


# --- untrusted input: non-finite values and zero tokens ---------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_is_refused_even_in_a_padding_token(bad):
    moe = make_moe(num_experts=4, top_k=2)
    x = torch.randn(2, 5, 16)
    x[1, 4, 3] = bad  # a padding position: routing would ignore it, but a NaN anywhere means a broken upstream
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[1, 4] = False
    with pytest.raises(ValueError, match=r"x must be finite, got NaN or Inf in the \[B=2, T=5, D=16\] input"):
        moe(x, valid)


@pytest.mark.parametrize("capacity_factor", [0.0, 1.0])
@pytest.mark.parametrize("shape", [(0, 5, 16), (2, 0, 16)])
def test_zero_tokens_give_empty_hidden_and_finite_zero_losses(shape, capacity_factor):
    moe = make_moe(num_experts=4, top_k=2, capacity_factor=capacity_factor).train()
    x = torch.randn(shape, requires_grad=True)
    out = moe(x)
    assert out.hidden.shape == shape and out.router_logits.shape == (0, 4) and out.expert_index.shape == (0, 2)
    for name in ("aux_loss", "z_loss", "dropped_fraction"):
        assert getattr(out, name).item() == 0.0, name  # == 0 also fails for NaN
    assert out.expert_fraction.tolist() == [0.0] * 4
    (moe.loss(out) + out.hidden.sum()).backward()  # a step on an empty batch must not poison the weights
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in moe.parameters())
    assert x.grad is not None and x.grad.shape == shape


def test_loss_functions_on_zero_tokens_are_zero_not_nan():
    probs, index, logits = torch.zeros(0, 4), torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 4)
    empty = torch.zeros(0, dtype=torch.bool)
    for normalise in (True, False):
        assert load_balancing_loss(probs, index, normalise_top_k=normalise).item() == 0.0
        assert load_balancing_loss(probs, index, empty, normalise_top_k=normalise).item() == 0.0
    assert router_z_loss(logits).item() == 0.0  # the mean over zero tokens was NaN
    assert router_z_loss(logits, empty).item() == 0.0
