"""Tests for foresight.rl.svd: the loss identity, its minimiser, gauge fixing, pseudo-counts, PSR pieces."""

import numpy as np
import pytest
import torch

from foresight.rl import mdp as M
from foresight.rl import svd as V

torch.set_num_threads(1)


def _chain(S: int = 8, seed: int = 0, concentration: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    T = M.random_transition_matrix(S, g, concentration)
    d = M.stationary_distribution(T)
    return T, d, g


# ------------------------------------------------------------------------------------------------
# the loss and its identity (docs/svd_representations.md)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reference", ["buffer", "uniform_mu", "uniform_rho"])
def test_loss_equals_frobenius_error_minus_constant(reference):
    """L(f, g) = ‖A - F Gᵀ‖²_F - ‖A‖²_F with A = M^-½ D T R^-½, F = M^½[f], G = R^½[g]."""
    T, d, g = _chain()
    S = T.shape[0]
    rho, mu = d @ T, d
    if reference == "uniform_mu":
        mu = torch.full((S,), 1.0 / S, dtype=torch.float64)
    if reference == "uniform_rho":
        rho = torch.full((S,), 1.0 / S, dtype=torch.float64)
    f = torch.randn(S, 3, generator=g, dtype=torch.float64)
    gg = torch.randn(S, 3, generator=g, dtype=torch.float64)
    A = V.svd_target(T, d, rho, mu)
    F, G = V.to_factors(f, gg, rho, mu)
    lhs = V.svd_loss_matrix(f, gg, T, d, rho, mu)
    rhs = ((A - F @ G.T) ** 2).sum() - (A**2).sum()
    torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-12)


def test_minibatch_loss_is_unbiased_for_the_matrix_loss():
    """The off-diagonal mini-batch estimator averages to the exact expectation (ρ = next-state marginal)."""
    T, d, g = _chain()
    f = torch.randn(8, 3, generator=g, dtype=torch.float64)
    gg = torch.randn(8, 3, generator=g, dtype=torch.float64)
    x, y = M.sample_transitions(T, d, 400 * 256, g)
    vals = torch.stack([V.svd_loss(f[x[i : i + 256]], gg[y[i : i + 256]]).loss for i in range(0, len(x), 256)])
    exact = V.svd_loss_matrix(f, gg, T, d)
    se = vals.std() / len(vals) ** 0.5
    assert abs(vals.mean() - exact) < 5 * se


def test_negative_term_matches_explicit_double_sum():
    g = torch.Generator().manual_seed(1)
    f_x, g_y = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
    f_ref = torch.randn(7, 2, generator=g)
    out = V.svd_loss(f_x, g_y)
    prods = (f_x @ g_y.T) ** 2  # [5, 5]
    off_diag = (prods.sum() - prods.diagonal().sum()) / (5 * 4)
    torch.testing.assert_close(out.negative, off_diag)
    torch.testing.assert_close(out.positive, (f_x * g_y).sum(1).mean())
    torch.testing.assert_close(out.loss, -2 * out.positive + out.negative)
    with_ref = V.svd_loss(f_x, g_y, f_ref=f_ref)
    torch.testing.assert_close(with_ref.negative, ((f_ref @ g_y.T) ** 2).mean())


def test_minimiser_of_the_loss_is_the_exact_rank_k_svd():
    """Minimising the tabular loss (no sampling) gives F Gᵀ = U_k Σ_k V_kᵀ and L = -Σ s_i² (Eckart-Young)."""
    T, d, g = _chain(S=6, seed=3)
    k = 2
    exact = V.exact_svd(T, d, k)
    # the exact factors attain the minimum, for any gauge
    torch.testing.assert_close(V.svd_loss_matrix(exact.f, exact.g, T, d), exact.min_loss, rtol=0, atol=1e-12)
    Mg = torch.randn(k, k, generator=g, dtype=torch.float64) + 2 * torch.eye(k, dtype=torch.float64)
    torch.testing.assert_close(
        V.svd_loss_matrix(exact.f @ Mg, exact.g @ torch.linalg.inv(Mg).T, T, d), exact.min_loss, rtol=0, atol=1e-12
    )
    # and gradient-based minimisation from a random start finds them
    model = V.TabularFactors(6, k, generator=g, dtype=torch.float64)
    opt = torch.optim.LBFGS(
        model.parameters(),
        lr=1,
        max_iter=300,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = V.svd_loss_matrix(model.f_table, model.g_table, T, d)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        F, G = V.to_factors(model.f_table, model.g_table, d @ T, d)
        A_k = exact.U @ torch.diag(exact.s) @ exact.V.T
        torch.testing.assert_close(F @ G.T, A_k, rtol=0, atol=1e-5)
        _, _, s = V.gauge_fix(F, G)
        torch.testing.assert_close(s, exact.s, rtol=0, atol=1e-5)
        assert V.svd_loss_matrix(model.f_table, model.g_table, T, d) - exact.min_loss < 1e-9


def test_minibatch_training_recovers_the_top_k_subspace_from_samples():
    T, d, g = _chain(S=8, seed=0)
    exact = V.exact_svd(T, d, 3)
    torch.manual_seed(0)
    model = V.TabularFactors(8, 3, generator=g, dtype=torch.float64)
    steps, batch = 800, 512
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    x, y = M.sample_transitions(T, d, steps * batch, g)
    for i in range(steps):
        out = model(x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch])
        loss = V.svd_loss(out.f, out.g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        F, G = V.to_factors(model.f_table, model.g_table, d @ T, d)
        A_k = exact.U @ torch.diag(exact.s) @ exact.V.T
        assert M.alignment(exact.U, F) > 0.99
        assert V.subspace_angles_deg(F, exact.U).max() < 8.0
        assert torch.linalg.norm(F @ G.T - A_k) / torch.linalg.norm(A_k) < 0.05


# ------------------------------------------------------------------------------------------------
# gauge fixing
# ------------------------------------------------------------------------------------------------
def test_gauge_fix_is_invariant_to_the_gauge_and_keeps_the_product():
    g = torch.Generator().manual_seed(0)
    F = torch.randn(9, 3, generator=g, dtype=torch.float64)
    G = torch.randn(7, 3, generator=g, dtype=torch.float64)
    Mg = torch.randn(3, 3, generator=g, dtype=torch.float64)
    F1, G1, s1 = V.gauge_fix(F, G)
    F2, G2, s2 = V.gauge_fix(F @ Mg, G @ torch.linalg.inv(Mg).T)
    torch.testing.assert_close(F1, F2)
    torch.testing.assert_close(G1, G2)
    torch.testing.assert_close(s1, s2)
    torch.testing.assert_close(F1 @ G1.T, F @ G.T)
    torch.testing.assert_close(F1.T @ F1, torch.diag(s1))  # balanced: U Σ^½ has Gram Σ


def test_gauge_fix_recovers_exact_factors():
    T, d, _ = _chain()
    ex = V.exact_svd(T, d, 3)
    F, G = V.to_factors(ex.f, ex.g, d @ T, d)
    Fb, Gb, s = V.gauge_fix(F, G)
    torch.testing.assert_close(s, ex.s)
    # the same up to the sign convention of each singular pair
    sign = torch.sign((Fb * (ex.U * ex.s.sqrt())).sum(0))
    torch.testing.assert_close(Fb, ex.U * ex.s.sqrt() * sign)


# ------------------------------------------------------------------------------------------------
# pseudo-counts (docs/svd_representations.md)
# ------------------------------------------------------------------------------------------------
def _weighted_samples(f, d):
    """Rows whose mean outer product is exactly Σ_s d(s) f(s) f(s)ᵀ."""
    return f * (d * f.shape[0]).sqrt()[:, None]


def test_elliptical_and_density_ratio_counts_are_exact_at_full_rank():
    T, d, _ = _chain(S=6, seed=2, concentration=1.0)
    S, N = 6, 1000.0
    ex = V.exact_svd(T, d, S)  # μ = d: the buffer-only loss
    cov = V.feature_covariance(_weighted_samples(ex.f, d), N, ridge=0.0)
    torch.testing.assert_close(V.elliptical_counts(ex.f, cov), N * d)
    mu = torch.full((S,), 1.0 / S, dtype=torch.float64)
    exu = V.exact_svd(T, d, S, mu=mu)  # fixed uniform reference over states
    g_mean = (d @ T) @ exu.g
    torch.testing.assert_close(V.pseudo_counts(exu.f, g_mean, N, 1.0 / S), N * d)


def test_density_ratio_with_buffer_reference_carries_no_counts():
    """The caveat: with μ = d the read-out f(s)ᵀE_ρ[g] is 1 for every state, whatever d(s) is."""
    T, d, _ = _chain(S=8, seed=4, concentration=0.5)
    ex = V.exact_svd(T, d, 4)
    ratio = V.density_ratio(ex.f, (d @ T) @ ex.g)
    torch.testing.assert_close(ratio, torch.ones_like(ratio))
    assert d.max() / d.min() > 3  # while d itself is far from uniform


def test_elliptical_counts_are_monotone_in_visitation_on_a_gridworld():
    gw = M.four_rooms(goal_cell=None)
    S = gw.num_states
    pi = torch.tensor([0.2, 0.3, 0.2, 0.3], dtype=torch.float64).expand(S, 4).contiguous()
    T = M.policy_transition(gw, pi)
    d = M.stationary_distribution(T)
    ex = V.exact_svd(T, d, 16)
    cov = V.feature_covariance(_weighted_samples(ex.f, d), 1e5, ridge=0.0)
    assert V.spearman(V.elliptical_counts(ex.f, cov), d) > 0.95


def test_count_bonus_and_gauge_free_counts():
    counts = torch.tensor([-3.0, 0.0, 3.0, 99.0])
    torch.testing.assert_close(V.count_bonus(counts, 0.5), torch.tensor([0.5, 0.5, 0.25, 0.05]))
    g = torch.Generator().manual_seed(0)
    f = torch.randn(20, 3, generator=g, dtype=torch.float64)
    Mg = torch.randn(3, 3, generator=g, dtype=torch.float64)
    c1 = V.elliptical_counts(f, V.feature_covariance(f, 20.0))
    c2 = V.elliptical_counts(f @ Mg, V.feature_covariance(f @ Mg, 20.0, ridge=0.0))
    c1_noridge = V.elliptical_counts(f, V.feature_covariance(f, 20.0, ridge=0.0))
    torch.testing.assert_close(c1_noridge, c2)
    assert (c1 > c1_noridge).all()  # the ridge acts as a prior pseudo-visit: it can only raise the count


def test_svd_explorer_counts_track_a_skewed_replay():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    S = 12  # a lazy ring (stay w.p. 0.3, else step on); visitation decays geometrically along it
    d = 0.7 ** torch.arange(S, dtype=torch.float32)
    d = d / d.sum()
    x = torch.multinomial(d, 20_000, replacement=True, generator=gen)
    y = torch.where(torch.rand(20_000, generator=gen) < 0.3, x, (x + 1) % S)
    eye = torch.eye(S)
    ex = V.SVDExplorer(S, 12, hidden=32, buffer_size=20_000, batch_size=256, bonus_scale=0.2)
    assert ex.intrinsic_reward(eye[:3]).tolist() == pytest.approx([0.2] * 3)  # before any refresh
    ex.observe(eye[x], eye[y])
    opt = torch.optim.Adam(ex.parameters(), lr=3e-3)
    for _ in range(400):
        loss = ex.aux_loss(generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ex.refresh(generator=gen)
    n_hat = ex.counts(eye)
    true = torch.bincount(x, minlength=S).float()
    assert V.spearman(n_hat, true) > 0.85
    assert ((n_hat[:6] - true[:6]).abs() / true[:6]).max() < 0.15  # frequent states: close to the true count
    bonus = ex.intrinsic_reward(eye)
    assert bonus[-1] > bonus[0]  # the rarest state pays more than the commonest


# ------------------------------------------------------------------------------------------------
# partial observability
# ------------------------------------------------------------------------------------------------
def test_future_windows_by_hand():
    obs = torch.arange(4, dtype=torch.float32).reshape(1, 4, 1)  # o_0..o_3
    actions = 10 + torch.arange(3, dtype=torch.float32).reshape(1, 3, 1)  # a_0..a_2
    w = V.future_windows(obs, actions, 2)
    assert w.shape == (1, 2, 4)
    torch.testing.assert_close(w[0], torch.tensor([[10.0, 1.0, 11.0, 2.0], [11.0, 2.0, 12.0, 3.0]]))


def test_history_encoder_is_causal():
    torch.manual_seed(0)
    enc = V.HistoryEncoder(obs_dim=3, num_actions=2, k=4, hidden=8)
    obs, prev = torch.randn(2, 6, 3), torch.randn(2, 6, 2)
    out = enc(obs, prev)
    assert out.shape == (2, 6, 4)
    obs2 = obs.clone()
    obs2[:, 4:] += 1.0  # change the future only
    out2 = enc(obs2, prev)
    torch.testing.assert_close(out[:, :4], out2[:, :4])
    assert not torch.allclose(out[:, 4:], out2[:, 4:])


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_value_errors_naming_the_value():
    with pytest.raises(ValueError, match="k=3 features, expected k=2"):
        V.svd_loss(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="batches 4 and 5"):
        V.svd_loss(torch.zeros(4, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="at least 2, got 1"):
        V.svd_loss(torch.zeros(1, 2), torch.zeros(1, 2))
    T, d, _ = _chain()
    with pytest.raises(ValueError, match="rho must be a probability vector"):
        V.svd_loss_matrix(torch.zeros(8, 2), torch.zeros(8, 2), T, d, rho=torch.ones(8))
    with pytest.raises(ValueError, match="counts must be 'elliptical' or 'ratio', got 'norm'"):
        V.SVDExplorer(4, 2, counts="norm")
    with pytest.raises(ValueError, match="mu=None"):
        V.SVDExplorer(4, 2, counts="ratio")
    with pytest.raises(ValueError, match="future length must be in \\[1, 3\\], got 4"):
        V.future_windows(torch.zeros(1, 4, 2), torch.zeros(1, 3, 2), 4)
    with pytest.raises(ValueError, match="num_states and k must be >= 1, got num_states=0"):
        V.TabularFactors(0, 2)


# ------------------------------------------------------------------------------------------------
# training and measuring a representation
# ------------------------------------------------------------------------------------------------
def test_train_factors_is_the_hand_written_adam_loop():
    """train_factors = the cleanrl-style loop (Adam, linear decay, consecutive mini-batches), to the bit."""
    T, d, g = _chain(S=8, seed=0)
    steps, batch = 40, 64
    x, y = M.sample_transitions(T, d, steps * batch, g)
    init = V.TabularFactors(8, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = V.TabularFactors(8, 3, dtype=torch.float64)
    ref.load_state_dict(init.state_dict())
    opt = torch.optim.Adam(ref.parameters(), lr=0.03)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: max(0.0, 1 - i / steps))
    losses = []
    for i in range(steps):
        out = ref(x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch])
        loss = V.svd_loss(out.f, out.g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    fit = V.train_factors(init, x, y, batch_size=batch, lr=0.03)
    assert fit.losses == losses
    torch.testing.assert_close(init.f_table, ref.f_table, rtol=0, atol=0)
    torch.testing.assert_close(init.g_table, ref.g_table, rtol=0, atol=0)


def test_train_factors_on_features_recovers_the_subspace_and_evaluates_on_schedule():
    T, d, g = _chain(S=8, seed=0)
    exact = V.exact_svd(T, d, 3)
    x, y = M.sample_transitions(T, d, 600 * 256, g)
    torch.manual_seed(0)
    model = V.NeuralFactors(8, 3, hidden=32)
    eye = torch.eye(8)

    def recovery():
        return dict(zip(("angle", "alignment"), V.subspace_recovery(V.factor_tables(model, eye)[0], d, exact.U)))

    fit = V.train_factors(model, x, y, batch_size=256, lr=1e-2, inputs=eye, eval_every=250, evaluate=recovery)
    assert [e["step"] for e in fit.evals] == [0, 250, 500, 600]  # at init, every 250 steps, at the end
    assert len(fit.losses) == 600 and fit.losses[-1] < fit.losses[0]
    assert fit.evals[0]["alignment"] < 0.7 and fit.evals[-1]["alignment"] > 0.99
    assert fit.evals[-1]["angle"] < fit.evals[0]["angle"]


def test_train_svd_representation_evaluates_the_untrained_network_first():
    w = torch.nn.Parameter(torch.tensor([3.0]))
    seen = []
    fit = V.train_svd_representation(
        [w], lambda step: (w - 1.0).pow(2).sum(), steps=3, lr=0.5, evaluate=lambda: seen.append(w.item()) or {}
    )
    assert seen[0] == 3.0 and len(seen) == 2  # before the first step, then after the last
    assert [e["step"] for e in fit.evals] == [0, 3]
    assert len(fit.losses) == 3 and fit.losses[0] == 4.0
    assert V.train_svd_representation([w], lambda _: w.sum(), steps=0, lr=1.0).losses == []


def test_history_svd_loss_pairs_each_history_with_its_test():
    g = torch.Generator().manual_seed(0)
    f_h, g_t = torch.randn(3, 6, 2, generator=g), torch.randn(3, 4, 2, generator=g)
    out = V.history_svd_loss(f_h, g_t)
    ref = V.svd_loss(f_h[:, :4].reshape(-1, 2), g_t.reshape(-1, 2))
    torch.testing.assert_close(out.loss, ref.loss)
    with pytest.raises(ValueError, match="g_t has 7 tests but f_h only 6 histories"):
        V.history_svd_loss(f_h, torch.zeros(3, 7, 2))
    with pytest.raises(ValueError, match="f_h must be \\[B, T, k\\]"):
        V.history_svd_loss(f_h, torch.zeros(3, 4, 5))


def test_subspace_recovery_and_pseudo_count_agreement_at_the_exact_answer():
    T, d, _ = _chain(S=8, seed=2)
    exact = V.exact_svd(T, d, 3)
    angle, align = V.subspace_recovery(exact.f, d, exact.U)  # exact.f = D^-½ U Σ^½ spans U in F's geometry
    assert angle < 1e-4 and align == pytest.approx(1.0, abs=1e-10)
    _, align = V.subspace_recovery(exact.f[:, [0, 1, 1]], d, exact.U)  # one of the 3 directions lost
    assert align == pytest.approx(2 / 3, abs=1e-10)
    counts = torch.tensor([0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
    perfect = V.pseudo_count_agreement(counts.clone(), counts)
    assert perfect == {"spearman": pytest.approx(1.0), "spearman_low": pytest.approx(1.0), "median_abs_log_ratio": 0.0}
    backwards = V.pseudo_count_agreement(counts.flip(0), counts)
    assert backwards["spearman"] == pytest.approx(-1.0)


def test_tmaze_probe_reads_the_hidden_state_from_features_that_hold_it():
    from foresight.rl.gridworlds import tmaze_trajectories

    rng = np.random.default_rng(0)
    train, test = tmaze_trajectories(300, 10, 3, rng=rng), tmaze_trajectories(100, 10, 3, rng=rng)
    obs, actions, prev = V.tmaze_inputs(train)
    assert obs.shape == (300, 11, 6) and actions.shape == (300, 10, 4) and prev.shape == (300, 11, 4)
    torch.testing.assert_close(prev[:, 1:], actions)
    assert (prev[:, 0] == 0).all()
    by_size = {300: train, 100: test}  # which episodes the probe is encoding, by their number

    def oracle(o, p):  # one-hot of (cue, position) - the hidden state, exact before the arm end (position <= 3)
        tr = by_size[o.shape[0]]
        hidden = torch.as_tensor(tr["cue"])[:, None] * 4 + torch.as_tensor(tr["pos"]).clamp_max(3)
        return torch.nn.functional.one_hot(hidden, 8).float()

    assert V.tmaze_probe(oracle, train, test, 3) == {"cue_acc": 1.0, "hidden_acc": 1.0}
    last_obs = V.tmaze_probe(lambda o, p: o, train, test, 3)  # the observation alone hides the cue
    assert last_obs["cue_acc"] < 0.75 and last_obs["hidden_acc"] < 0.6


def test_factor_tables_needs_the_features_of_neural_factors():
    with pytest.raises(ValueError, match="needs the states' features"):
        V.factor_tables(V.NeuralFactors(4, 2))
    tab = V.TabularFactors(5, 2)
    assert V.factor_tables(tab)[0] is tab.f_table
    with pytest.raises(ValueError, match="x and y must be \\[n\\] state ids of one length"):
        V.train_factors(tab, torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long), batch_size=2, lr=0.1)
