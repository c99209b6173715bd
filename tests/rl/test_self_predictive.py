"""Numerical checks of the BYOL-Π / bidirectional derivations (docs/self_predictive.md)."""

import pytest
import torch

from foresight.rl import mdp as M
from foresight.rl import self_predictive as SP

torch.set_num_threads(1)
F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def problem(seed: int = 0, S: int = 7, k: int = 3, uniform: bool = False):
    g = gen(seed)
    T = M.random_transition_matrix(S, g)
    d = torch.full((S,), 1 / S, dtype=F64) if uniform else M.random_dirichlet((S,), 1.0, g)
    Phi = torch.randn(S, k, generator=g, dtype=F64)
    P = torch.randn(k, k, generator=g, dtype=F64)
    return T, d, Phi, P


# ---------------------------------------------------------------------------------------------
# losses and gradients
# ---------------------------------------------------------------------------------------------
def test_expected_loss_equals_double_sum():
    T, d, Phi, P = problem(1)
    brute = sum(d[x] * T[x, y] * (Phi[x] @ P - Phi[y]).pow(2).sum() for x in range(7) for y in range(7))
    assert SP.expected_byol_pi_loss(Phi, P, T, d).item() == pytest.approx(brute.item(), rel=1e-12)
    Psi, Pb = torch.randn(7, 3, generator=gen(2), dtype=F64), torch.randn(3, 3, generator=gen(3), dtype=F64)
    out = SP.expected_bidirectional_loss(Phi, Psi, P, Pb, T, d)
    fwd = sum(d[x] * T[x, y] * (Phi[x] @ P - Psi[y]).pow(2).sum() for x in range(7) for y in range(7))
    bwd = sum(d[x] * T[x, y] * (Psi[y] @ Pb - Phi[x]).pow(2).sum() for x in range(7) for y in range(7))
    assert out.forward.item() == pytest.approx(fwd.item(), rel=1e-12)
    assert out.backward.item() == pytest.approx(bwd.item(), rel=1e-12)
    assert out.total.item() == pytest.approx((fwd + bwd).item(), rel=1e-12)


@pytest.mark.parametrize("uniform", [True, False])
def test_analytic_semi_gradient_equals_autograd_with_detached_target(uniform):
    T, d, Phi, P = problem(4, uniform=uniform)
    Phi_, P_ = Phi.clone().requires_grad_(True), P.clone().requires_grad_(True)
    g_phi, g_P = torch.autograd.grad(SP.expected_byol_pi_loss(Phi_, P_, T, d, stop_target_gradients=True), [Phi_, P_])
    ana = SP.byol_pi_gradients(Phi, P, T, d, "semi")
    assert torch.allclose(ana.phi, g_phi, atol=1e-13) and torch.allclose(ana.P, g_P, atol=1e-13)
    # the stated closed form 2 D (ΦP − TΦ) Pᵀ, written out
    closed = 2 * torch.diag(d) @ (Phi @ P - T @ Phi) @ P.T
    assert torch.allclose(ana.phi, closed, atol=1e-13)


def test_analytic_full_gradient_equals_autograd_through_target():
    T, d, Phi, P = problem(5)
    Phi_ = Phi.clone().requires_grad_(True)
    (g_full,) = torch.autograd.grad(SP.expected_byol_pi_loss(Phi_, P, T, d, stop_target_gradients=False), [Phi_])
    ana = SP.byol_pi_gradients(Phi, P, T, d, "full")
    assert torch.allclose(ana.phi, g_full, atol=1e-13)
    semi = SP.byol_pi_gradients(Phi, P, T, d, "semi").phi
    # target path = −2 (Tᵀ D Φ P − D' Φ); −2 Tᵀ D (ΦP − TΦ) (docs/self_predictive.md) drops the target-variance term
    D, Dn = torch.diag(d), torch.diag(d @ T)
    assert torch.allclose(g_full - semi, -2 * (T.T @ D @ Phi @ P - Dn @ Phi), atol=1e-13)
    assert not torch.allclose(g_full - semi, -2 * T.T @ D @ (Phi @ P - T @ Phi), atol=1e-3)


def test_bidirectional_gradients_equal_autograd():
    T, d, Phi, Pf = problem(6)
    g = gen(7)
    Psi, Pb = torch.randn(7, 3, generator=g, dtype=F64), torch.randn(3, 3, generator=g, dtype=F64)
    leaves = [x.clone().requires_grad_(True) for x in (Phi, Psi, Pf, Pb)]
    auto = torch.autograd.grad(SP.expected_bidirectional_loss(*leaves, T, d).total, leaves)
    ana = SP.bidirectional_gradients(Phi, Psi, Pf, Pb, T, d)
    for a, b in zip(ana, auto):
        assert b.abs().max() > 1e-3 and torch.allclose(a, b, atol=1e-13)


def test_sampled_loss_gradient_matches_matrix_gradient_in_expectation():
    T, d, Phi, P = problem(8)
    x, y = M.sample_transitions(T, d, 400_000, gen(9))
    Phi_ = Phi.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(SP.byol_pi_loss(Phi_[x], Phi_[y], P), [Phi_])
    ana = SP.byol_pi_gradients(Phi, P, T, d, "semi").phi
    assert (g - ana).abs().max().item() < 0.03 * ana.abs().max().item()
    Phi_ = Phi.clone().requires_grad_(True)
    (g_full,) = torch.autograd.grad(SP.byol_pi_loss(Phi_[x], Phi_[y], P, stop_target_gradients=False), [Phi_])
    ana_full = SP.byol_pi_gradients(Phi, P, T, d, "full").phi
    assert (g_full - ana_full).abs().max().item() < 0.03 * ana_full.abs().max().item()


def test_sample_loss_validates_shapes_and_batches():
    with pytest.raises(ValueError, match=r"phi_x and phi_y must both be \[..., n, k\]"):
        SP.byol_pi_loss(torch.zeros(4, 3), torch.zeros(4, 2), torch.eye(3))
    with pytest.raises(ValueError, match="P must be"):
        SP.byol_pi_loss(torch.zeros(4, 3), torch.zeros(4, 3), torch.eye(2))
    a, b, P = torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.randn(2, 3, 3)
    batched = SP.byol_pi_loss(a, b, P)
    assert batched.shape == (2,) and torch.allclose(batched[1], SP.byol_pi_loss(a[1], b[1], P[1]))
    out = SP.bidirectional_loss(a[0], b[0], P[0], P[1])
    assert torch.allclose(out.total, SP.byol_pi_loss(a[0], b[0], P[0]) + SP.byol_pi_loss(b[0], a[0], P[1]))


# ---------------------------------------------------------------------------------------------
# the optimal predictor
# ---------------------------------------------------------------------------------------------
def test_optimal_predictor_minimises_loss_and_equals_inner_gradient_loop():
    T, d, Phi, _ = problem(10)
    P_star = SP.optimal_predictor(Phi, T, d)
    assert SP.byol_pi_gradients(Phi, P_star, T, d).P.abs().max().item() < 1e-12
    L_star = SP.expected_byol_pi_loss(Phi, P_star, T, d)
    g = gen(11)
    for _ in range(20):
        E = 1e-2 * torch.randn(3, 3, generator=g, dtype=F64)
        assert SP.expected_byol_pi_loss(Phi, P_star + E, T, d) > L_star
    # the inner loop: gradient descent on P alone, to convergence
    P = torch.zeros(3, 3, dtype=F64)
    lr = 0.5 / torch.linalg.eigvalsh(Phi.T @ torch.diag(d) @ Phi).max().item()
    for _ in range(20_000):
        P = P - lr * SP.byol_pi_gradients(Phi, P, T, d).P
    assert torch.allclose(P, P_star, atol=1e-9)


def test_optimal_bidirectional_predictors_zero_the_predictor_gradients():
    T, d, Phi, _ = problem(12)
    Psi = torch.randn(7, 3, generator=gen(13), dtype=F64)
    Pf, Pb = SP.optimal_bidirectional_predictors(Phi, Psi, T, d)
    g = SP.bidirectional_gradients(Phi, Psi, Pf, Pb, T, d)
    assert g.P_f.abs().max().item() < 1e-12 and g.P_b.abs().max().item() < 1e-12


def test_optimal_predictor_survives_a_collapsed_representation():
    T, d, _, _ = problem(14)
    Phi = torch.ones(7, 1, dtype=F64) @ torch.randn(1, 3, generator=gen(15), dtype=F64)  # rank 1
    P = SP.optimal_predictor(Phi, T, d)
    assert torch.isfinite(P).all()
    assert SP.expected_byol_pi_loss(Phi, P, T, d).item() == pytest.approx(0.0, abs=1e-12)  # trivial solution


# ---------------------------------------------------------------------------------------------
# non-collapse and collapse
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("uniform", [True, False])
def test_gram_matrix_is_invariant_under_semi_gradient_with_optimal_predictor(uniform):
    T, d, _, _ = problem(16, S=8, uniform=uniform)
    Phi0 = SP.orthonormal_init(8, 3, generator=gen(17))
    P_star = SP.optimal_predictor(Phi0, T, d)
    # exactly: Φᵀ ∇_Φ L(Φ, P*) = 0
    assert (Phi0.T @ SP.byol_pi_gradients(Phi0, P_star, T, d).phi).abs().max().item() < 1e-15
    traj = SP.integrate(SP.byol_pi_field(T, d), (Phi0, P_star), dt=0.1, steps=2000, record_every=1000)
    Phi = traj.states[-1][0]
    assert (Phi - Phi0).abs().max() > 0.05  # it moved ...
    assert SP.gram_drift(Phi, Phi0).item() < 1e-8  # ... on the ΦᵀΦ = const manifold, to RK4 tolerance


def test_euler_drift_is_first_order_and_rk4_fourth_order():
    T, d, _, _ = problem(18, S=8)
    Phi0 = SP.orthonormal_init(8, 3, generator=gen(19))
    field = SP.byol_pi_field(T, d)

    def drift(method, dt):
        traj = SP.integrate(
            field, (Phi0, Phi0[:3]), dt=dt, steps=int(round(40 / dt)), method=method, record_every=10**6
        )
        return SP.gram_drift(traj.states[-1][0], Phi0).item()

    e1, e2 = drift("euler", 1.0), drift("euler", 0.5)
    r1, r2 = drift("rk4", 4.0), drift("rk4", 2.0)
    assert 1.6 < e1 / e2 < 2.5  # O(h)
    assert r1 / r2 > 10  # O(h^4) (16 asymptotically)
    assert r2 < e2


def test_full_gradient_and_slow_predictor_break_invariance():
    T, d, _, _ = problem(20, S=8)
    Phi0 = SP.orthonormal_init(8, 3, generator=gen(21))
    P0 = torch.eye(3, dtype=F64)
    full = SP.integrate(SP.byol_pi_field(T, d, gradient="full"), (Phi0, P0), dt=0.5, steps=600, record_every=600)
    Phi_full = full.states[-1][0]
    assert SP.gram_drift(Phi_full, Phi0).item() > 0.5
    assert SP.sigma_min(Phi_full).item() < 1e-3  # dimensional collapse
    slow = SP.integrate(
        SP.byol_pi_field(T, d, predictor="learned", predictor_rate=0.1), (Phi0, P0), dt=0.5, steps=600, record_every=600
    )
    assert SP.gram_drift(slow.states[-1][0], Phi0).item() > 0.1
    fast = SP.integrate(
        SP.byol_pi_field(T, d, predictor="learned", predictor_rate=10.0),
        (Phi0, P0),
        dt=0.1,
        steps=3000,
        record_every=3000,
    )
    assert SP.gram_drift(fast.states[-1][0], Phi0).item() < SP.gram_drift(slow.states[-1][0], Phi0).item()


def test_sgd_semi_gradient_keeps_rank_full_gradient_collapses():
    g = gen(22)
    T = torch.stack([M.random_transition_matrix(8, g) for _ in range(4)])
    d = torch.stack([M.stationary_distribution(t) for t in T])
    Phi0 = SP.orthonormal_init(8, 3, batch=(4,), generator=g)
    semi = SP.sgd_byol_pi(Phi0, T, d, steps=300, batch_size=64, lr=0.3, generator=g, record_every=300)
    full = SP.sgd_byol_pi(Phi0, T, d, steps=300, batch_size=64, lr=0.3, gradient="full", generator=g, record_every=300)
    assert semi.times.tolist() == [0.0, 300.0]
    assert (SP.sigma_min(semi.states[-1][0]) > 0.8).all()
    assert (SP.sigma_min(full.states[-1][0]) < 0.1).all()
    one = SP.sgd_byol_pi(
        Phi0[0],
        T[0],
        d[0],
        steps=5,
        batch_size=8,
        lr=0.1,
        predictor="learned",
        predictor_lr=1.0,
        generator=g,
        record_every=5,
    )
    assert one.states[-1][0].shape == (8, 3) and one.states[-1][1].shape == (3, 3)
    with pytest.raises(ValueError, match="predictor_lr > 0, got None"):
        SP.sgd_byol_pi(Phi0, T, d, steps=1, batch_size=1, lr=0.1, predictor="learned")


# ---------------------------------------------------------------------------------------------
# spectral behaviour
# ---------------------------------------------------------------------------------------------
def symmetric_with_spectrum(lams, seed):
    """Q diag(λ) Qᵀ with a random orthogonal Q whose first column is the constant vector."""
    S = len(lams)
    A = torch.randn(S, S, generator=gen(seed), dtype=F64)
    A[:, 0] = 1.0
    Q = torch.linalg.qr(A).Q
    return Q @ torch.diag(torch.tensor(lams, dtype=F64)) @ Q.T, Q


def test_symmetric_nonnegative_spectrum_gives_top_k_eigen_subspace():
    T = M.random_symmetric_transition(8, gen(23), concentration=0.5)
    T = 0.5 * (torch.eye(8, dtype=F64) + T)  # lazy: spectrum in [0, 1], so |λ| and λ orders agree
    d = torch.full((8,), 1 / 8, dtype=F64)
    Phi0 = SP.orthonormal_init(8, 3, generator=gen(24))
    traj = SP.integrate(SP.byol_pi_field(T, d), (Phi0, Phi0[:3]), dt=4.0, steps=3000, record_every=3000)
    Phi = traj.states[-1][0]
    assert M.alignment(M.top_eigvecs(T, 3), Phi).item() > 0.99
    assert M.alignment(M.top_eigvecs(T, 3), Phi0).item() < 0.9


def test_mixed_sign_spectrum_has_stable_non_top_abs_eigen_subspaces():
    # λ = 1, .6, .3, .1, 0, −.2, −.5, −.7; for k = 2 the top-|λ| pair is {1, −0.7}, but {1, 0.6} (top by
    # value) is also a local maximum of Σλ² - the flow started near it stays there.
    lams = [1.0, 0.6, 0.3, 0.1, 0.0, -0.2, -0.5, -0.7]
    T, Q = symmetric_with_spectrum(lams, 25)
    d = torch.full((8,), 1 / 8, dtype=F64)
    noise = 0.2 * torch.randn(8, 2, generator=gen(26), dtype=F64)
    field = SP.byol_pi_field(T, d)
    for start, expect in (([0, 1], [0, 1]), ([0, 7], [0, 7])):
        Phi0 = SP.orthonormal_init(8, 2, generator=gen(27))
        Phi0 = torch.linalg.qr(Q[:, start] + noise).Q
        Phi = SP.integrate(field, (Phi0, Phi0[:2]), dt=2.0, steps=1500, record_every=1500).states[-1][0]
        weights = SP.eigen_selection(Phi, Q)
        assert torch.topk(weights, 2).indices.sort().values.tolist() == expect
        assert weights[expect].min().item() > 0.999


def test_byol_pi_does_not_recover_svd_but_bidirectional_does():
    T = M.random_doubly_stochastic(8, gen(28))
    d = torch.full((8,), 1 / 8, dtype=F64)
    U, _, V = M.top_singular_vectors(T, 2)
    Phi0, Psi0 = SP.orthonormal_init(8, 2, generator=gen(29)), SP.orthonormal_init(8, 2, generator=gen(30))
    Z = torch.zeros(2, 2, dtype=F64)
    bi = SP.integrate(SP.bidirectional_field(T, d), (Phi0, Psi0, Z, Z), dt=2.0, steps=600, record_every=600)
    Phi, Psi = bi.states[-1][:2]
    assert M.alignment(U, Phi).item() > 0.99 and M.alignment(V, Psi).item() > 0.99
    assert SP.gram_drift(Phi, Phi0).item() < 1e-4 and SP.gram_drift(Psi, Psi0).item() < 1e-4
    one = SP.integrate(SP.byol_pi_field(T, d), (Phi0, Z), dt=2.0, steps=600, record_every=600)
    Phi1 = one.states[-1][0]
    assert max(M.alignment(U, Phi1).item(), M.alignment(V, Phi1).item()) < 0.95


def test_bidirectional_with_nonuniform_d_recovers_whitened_singular_subspaces():
    # docs/self_predictive.md (open question): Φ → D^{-1/2} U_k and Ψ → D'^{-1/2} V_k for A = D^{1/2} T D'^{-1/2}
    T = M.random_transition_matrix(7, gen(31))
    d = M.random_dirichlet((7,), 2.0, gen(32))  # not stationary: d' = dᵀT differs from d
    dn = d @ T
    A = d.sqrt()[:, None] * T / dn.sqrt()[None, :]
    U, _, V = M.top_singular_vectors(A, 2)
    Phi0, Psi0 = SP.orthonormal_init(7, 2, generator=gen(33)), SP.orthonormal_init(7, 2, generator=gen(34))
    Z = torch.zeros(2, 2, dtype=F64)
    Phi, Psi = SP.integrate(
        SP.bidirectional_field(T, d), (Phi0, Psi0, Z, Z), dt=2.0, steps=400, record_every=400
    ).states[-1][:2]
    assert M.alignment(U / d.sqrt()[:, None], Phi).item() > 0.99
    assert M.alignment(V / dn.sqrt()[:, None], Psi).item() > 0.99


# ---------------------------------------------------------------------------------------------
# deep version and helpers
# ---------------------------------------------------------------------------------------------
def test_deep_encoder_aligns_with_top_eigenvectors_from_samples():
    grid = M.gridworld("######\n#....#\n#....#\n#....#\n######")  # 12 open cells
    T0 = M.policy_transition(grid, M.uniform_policy(grid))
    T = 0.5 * (torch.eye(12, dtype=F64) + T0)
    d = torch.full((12,), 1 / 12, dtype=F64)
    V = M.top_eigvecs(T, 3)
    cfg = SP.DeepSelfPredictiveConfig(k=3, hidden=32, steps=400, batch_size=128, lr=3.0)
    res = SP.train_deep_self_predictive(
        torch.eye(12), T, d, cfg, generator=gen(35), metric=lambda phi, psi: M.alignment(V, phi).item(), log_every=100
    )
    assert [h.step for h in res.history] == [0, 100, 200, 300, 400]
    assert res.history[0].alignment < 0.9  # it learned the alignment, it was not there at init
    assert res.phi.shape == (12, 3) and res.psi is None
    assert res.history[-1].alignment > 0.95 and res.history[-1].sigma_min > 1e-3
    bi = SP.train_deep_self_predictive(
        grid.pixel_observations(),
        T,
        d,
        SP.DeepSelfPredictiveConfig(k=3, hidden=16, steps=20, bidirectional=True, target="ema", predictor="learned"),
        generator=gen(36),
    )
    assert bi.psi is not None and bi.psi.shape == (12, 3) and torch.isfinite(bi.phi).all()


def test_ema_update_and_least_squares_predictor():
    torch.manual_seed(0)  # the Linear inits: the check must not depend on the RNG state other tests leave
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    expected = [(p + q) / 2 for p, q in zip(a.parameters(), b.parameters())]
    SP.ema_update(a, b, decay=0.5)  # re-exported from foresight.nn.ema
    for p, e in zip(a.parameters(), expected):
        # lerp and (p + q) / 2 round differently; an absolute tolerance covers entries where p ≈ -q
        torch.testing.assert_close(p, e, rtol=1e-6, atol=1e-6)
    X, Y = torch.randn(50, 3, generator=gen(37), dtype=F64), torch.randn(50, 3, generator=gen(38), dtype=F64)
    assert torch.allclose(SP.least_squares_predictor(X, Y, ridge=0.0), torch.linalg.lstsq(X, Y).solution)


def test_bad_arguments_raise_value_errors():
    T, d, _, _ = problem(39)
    with pytest.raises(ValueError, match="gradient must be one of \\['semi', 'full'\\], got 'partial'"):
        SP.byol_pi_field(T, d, gradient="partial")
    with pytest.raises(ValueError, match="predictor_rate must be > 0, got 0"):
        SP.byol_pi_field(T, d, predictor="learned", predictor_rate=0)
    with pytest.raises(ValueError, match="method must be one of"):
        SP.integrate(SP.byol_pi_field(T, d), (torch.zeros(7, 2), torch.eye(2)), dt=1.0, steps=1, method="rk45")
    with pytest.raises(ValueError, match="target must be one of .*got 'momentum'"):
        SP.DeepSelfPredictiveConfig(target="momentum")
    with pytest.raises(ValueError, match="ema_decay must be in"):
        SP.DeepSelfPredictiveConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match=r"Phi must have shape \[..., S, k\] with S = 7"):
        SP.optimal_predictor(torch.zeros(5, 2, dtype=F64), T, d)
    with pytest.raises(ValueError, match="k must be in"):
        SP.orthonormal_init(4, 5)


# ---------------------------------------------------------------------------------------------
# which subspace the dynamics select: classification, the whitened SVD target, step sizes
# ---------------------------------------------------------------------------------------------
def test_classify_eigen_selection_on_exact_and_mixed_subspaces():
    lams = [1.0, 0.6, 0.3, 0.1, 0.0, -0.2, -0.5, -0.7]  # sorted by value; top-2 by |λ| is {1, −0.7}
    _, Q = symmetric_with_spectrum(lams, 40)
    lam = torch.tensor(lams, dtype=F64)
    top_value = SP.classify_eigen_selection(Q[:, [0, 1]] @ torch.randn(2, 2, generator=gen(41), dtype=F64), lam, Q, 2)
    assert top_value.ranks == [0, 1] and top_value.clean and top_value.top_real and top_value.extremal
    assert not top_value.top_abs and top_value.purity == pytest.approx(1.0)
    assert top_value.align_top_abs == pytest.approx(0.5)  # shares λ = 1 with the top-|λ| pair, not −0.7
    top_abs = SP.classify_eigen_selection(Q[:, [0, 7]], lam, Q, 2)
    assert top_abs.top_abs and top_abs.extremal and not top_abs.top_real and top_abs.align_top_abs == pytest.approx(1)
    middle = SP.classify_eigen_selection(Q[:, [2, 3]], lam, Q, 2)  # an eigen-subspace, but not extremal
    assert middle.clean and not (middle.extremal or middle.top_abs or middle.top_real)
    mixed = SP.classify_eigen_selection(Q[:, [0]] + Q[:, [1]], lam, Q, 1)  # half of two eigenvectors
    assert not mixed.clean and mixed.purity == pytest.approx(0.5)
    with pytest.raises(ValueError, match="need 1 <= k <= S"):
        SP.classify_eigen_selection(Q[:, :2], lam, Q, 9)


def test_whitened_singular_subspaces_reduce_to_the_svd_and_are_a_fixed_point():
    # uniform d, doubly-stochastic T: the top-k singular subspaces of T itself
    T = M.random_doubly_stochastic(8, gen(42))
    Phi_star, Psi_star = SP.whitened_singular_subspaces(T, torch.full((8,), 1 / 8, dtype=F64), 2)
    U, _, V = M.top_singular_vectors(T, 2)
    assert M.alignment(U, Phi_star).item() == pytest.approx(1.0) and M.alignment(V, Psi_star).item() == pytest.approx(1)
    # non-uniform, non-stationary d: the formula, and the bidirectional flow does not move these spans
    T = M.random_transition_matrix(7, gen(43))
    d = M.random_dirichlet((7,), 2.0, gen(44))
    Phi_star, Psi_star = SP.whitened_singular_subspaces(T, d, 2)
    dn = d @ T
    U, _, V = M.top_singular_vectors(d.sqrt()[:, None] * T / dn.sqrt()[None, :], 2)
    torch.testing.assert_close(Phi_star, U / d.sqrt()[:, None])
    torch.testing.assert_close(Psi_star, V / dn.sqrt()[:, None])
    Z = torch.zeros(2, 2, dtype=F64)
    dPhi, dPsi, _, _ = SP.bidirectional_field(T, d)((Phi_star, Psi_star, Z, Z))
    for X, dX in ((Phi_star, dPhi), (Psi_star, dPsi)):
        Qx = M.orthonormal_basis(X)
        assert (dX - Qx @ (Qx.T @ dX)).abs().max().item() < 1e-12  # the velocity stays inside the span
    # ... and a random subspace is not a fixed point
    R = SP.orthonormal_init(7, 2, generator=gen(45))
    dR = SP.bidirectional_field(T, d)((R, Psi_star, Z, Z))[0]
    assert (dR - R @ (R.T @ dR)).abs().max().item() > 1e-4
    with pytest.raises(ValueError, match="d and dᵀT must be positive"):
        SP.whitened_singular_subspaces(T, torch.tensor([1.0] + [0.0] * 6, dtype=F64), 2)


def test_fast_predictor_dt_keeps_the_predictor_rate_times_step_bounded():
    d = torch.tensor([0.1, 0.5, 0.4], dtype=F64)
    dt = SP.fast_predictor_dt(10.0, d, dt_max=0.5)
    assert dt == pytest.approx(0.1) and 2 * 10.0 * 0.5 * dt <= 1.0 + 1e-12
    assert SP.fast_predictor_dt(0.01, d, dt_max=0.5) == 0.5  # a slow predictor: the cap
    with pytest.raises(ValueError, match="predictor_rate and dt_max must be > 0, got 0.0, 0.5"):
        SP.fast_predictor_dt(0.0, d, 0.5)
