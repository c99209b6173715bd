"""Tests for foresight.rl.ghm: exact GHMs, composition, the augmented chain, GGPI, TD learning."""

import math

import pytest
import torch
import torch.nn.functional as F

from foresight.rl import ghm as G
from foresight.rl.envs import BumpReward, PointNavEnv, compass_directions, point_nav_step
from foresight.rl.mdp import (
    FiniteMDP,
    chain_mdp,
    gridworld,
    q_values,
    random_dirichlet,
    random_mdp,
)

torch.set_num_threads(1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _setup(seed: int, S: int = 6, A: int = 3, L: int = 3):
    g = _gen(seed)
    mdp = random_mdp(S, A, gamma=0.9, generator=g)
    pis = [random_dirichlet((S, A), 1.0, g) for _ in range(L)]
    r = torch.randn(S, generator=g, dtype=torch.float64)
    return mdp, pis, r, g


# ------------------------------------------------------------------------------------------------
# exact GHMs
# ------------------------------------------------------------------------------------------------


def test_ghm_rows_sum_to_one_and_match_mdp_q_values():
    mdp, pis, r, _ = _setup(0)
    M = G.ghm(mdp, pis[0], 0.9)
    assert M.shape == (6, 3, 6)
    torch.testing.assert_close(M.sum(-1), torch.ones(6, 3, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (M >= -1e-15).all()
    # the GHM value with arrival rewards equals the toolkit's exact Q on R[s, a] = P[a, s] · r
    Q_ghm = G.ghm_q_values(M, r, 0.9)
    Q_ref = q_values(G.with_arrival_reward(mdp, r), pis[0])
    torch.testing.assert_close(Q_ghm, Q_ref, rtol=0, atol=1e-12)


def test_ghm_starts_at_the_next_state_hand_computed_chain():
    # 2-state deterministic chain, right action: 0 -> 1 -> 1 -> ... The GHM from (0, right) puts no
    # mass on s⁺ = 0 (the model starts at S_1), and all of it on state 1.
    mdp = chain_mdp(2, gamma=0.5)
    right = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    M = G.ghm(mdp, right, 0.5)
    torch.testing.assert_close(M[0, 1], torch.tensor([0.0, 1.0], dtype=torch.float64))
    # from (1, left): S_1 = 0 (weight 1 − γ), then right forever to 1 (weight γ)
    torch.testing.assert_close(M[1, 0], torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_ghm_with_zero_discount_is_the_transition_kernel():
    mdp, pis, _, _ = _setup(1)
    torch.testing.assert_close(G.ghm(mdp, pis[0], 0.0), mdp.P.permute(1, 0, 2))


def test_ghm_matches_monte_carlo_geometric_rollouts():
    mdp, pis, _, g = _setup(2)
    M = G.ghm(mdp, pis[1], 0.8)
    n = 40_000
    x = G.sample_ghm(mdp, pis[1], 0.8, s=3, a=2, n=n, generator=g)
    empirical = torch.bincount(x, minlength=6).double() / n
    # 5 standard errors of a Bernoulli proportion at worst
    assert (empirical - M[3, 2]).abs().max().item() < 5 * math.sqrt(0.25 / n)


def test_geometric_horizon_distribution():
    H = G.sample_geometric_horizon(0.75, 100_000, _gen(3))
    assert H.min().item() == 1
    assert abs(H.double().mean().item() - 4.0) < 0.05  # E[H] = 1 / (1 − γ)


# ------------------------------------------------------------------------------------------------
# composition = augmented chain
# ------------------------------------------------------------------------------------------------


def test_composition_matches_notes_numpy_check():
    # docs/ggpi.md: 6 states, 3 phases, γ = 0.9, α = (0.7, 0.5, 1): composition = augmented chain to ~1e-16
    mdp, pis, r, _ = _setup(4)
    alphas = (0.7, 0.5)
    nu = G.SwitchingPolicy((0, 1, 2), alphas)
    betas = nu.betas(0.9)
    assert betas == pytest.approx((0.63, 0.45, 0.9))
    ghms = [G.ghm(mdp, p, b) for p, b in zip(pis, betas)]
    mu = G.compose_ghms(ghms, pis, betas, 0.9)
    mu_aug = G.augmented_chain_ghm(mdp, pis, alphas, 0.9)
    assert (mu - mu_aug).abs().max().item() < 1e-14
    torch.testing.assert_close(mu.sum(-1), torch.ones(6, 3, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("L", [1, 2, 4])
def test_composed_values_equal_augmented_mdp_q_values(seed, L):
    """Q^ν by composition vs the toolkit's linear solve on the (state, phase) MDP: no shared GHM code."""
    mdp, pis, r, g = _setup(10 + seed, S=7, A=2, L=L)
    alphas = tuple(torch.rand(L - 1, generator=g, dtype=torch.float64).tolist())
    nu = G.SwitchingPolicy(tuple(range(L)), alphas)
    betas = nu.betas(mdp.gamma)
    ghms = [G.ghm(mdp, p, b) for p, b in zip(pis, betas)]
    aug, pi_aug = G.augmented_chain(mdp, pis, alphas)
    q_aug = q_values(G.with_arrival_reward(aug, r.repeat(L)), pi_aug)[:7]
    q_comp = G.composed_q_values(ghms, pis, betas, mdp.gamma, r)
    assert (q_comp - q_aug).abs().max().item() < 1e-11
    # the distribution-level composition gives the same values
    mu = G.compose_ghms(ghms, pis, betas, mdp.gamma)
    torch.testing.assert_close(mu @ r / (1 - mdp.gamma), q_comp, rtol=0, atol=1e-11)


def test_composition_weights_telescope_and_validate():
    w, c = G.composition_weights((0.3, 0.6, 0.9), 0.9)
    torch.testing.assert_close(w + c, torch.ones(3, dtype=torch.float64))
    expansion = torch.stack([torch.prod(c[:k]) * w[k] for k in range(3)])
    assert expansion.sum().item() == pytest.approx(1.0, abs=1e-15)
    assert w[-1].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="betas\\[-1\\] must equal gamma=0.9"):
        G.composition_weights((0.3, 0.5), 0.9)
    with pytest.raises(ValueError, match="every beta must be in \\[0, gamma=0.9\\], got \\[0.95\\]"):
        G.composition_weights((0.95, 0.9), 0.9)


def test_switching_policy_continuing_forever_is_the_first_policy():
    mdp, pis, r, _ = _setup(5, L=2)
    nu = G.SwitchingPolicy((0, 1), (1.0,))  # α = 1: never switches
    betas = nu.betas(mdp.gamma)
    q = G.composed_q_values([G.ghm(mdp, p, b) for p, b in zip(pis, betas)], pis, betas, mdp.gamma, r)
    torch.testing.assert_close(q, q_values(G.with_arrival_reward(mdp, r), pis[0]), rtol=0, atol=1e-12)


def test_unbiased_single_sample_estimator_by_monte_carlo():
    """docs/ggpi.md: Q̂ = (1−γ)⁻¹ Σ_k c_1⋯c_{k−1} w_k r(S_k⁺), with S_k⁺ drawn through the chained GHMs,
    is unbiased."""
    mdp, pis, r, g = _setup(6, S=5, A=2, L=2)
    nu = G.SwitchingPolicy((0, 1), (0.6,))
    gamma = mdp.gamma
    betas = nu.betas(gamma)
    ghms = [G.ghm(mdp, p, b) for p, b in zip(pis, betas)]
    w, c = G.composition_weights(betas, gamma)
    n, s, a = 200_000, 2, 1
    s1 = torch.multinomial(ghms[0][s, a], n, replacement=True, generator=g)
    a1 = torch.multinomial(pis[1][s1], 1, generator=g)[:, 0]
    s2 = torch.multinomial(ghms[1][s1, a1], 1, generator=g)[:, 0]
    q_hat = (w[0] * r[s1] + c[0] * w[1] * r[s2]) / (1 - gamma)
    q_exact = G.composed_q_values(ghms, pis, betas, gamma, r)[s, a]
    assert abs(q_hat.mean().item() - q_exact.item()) < 5 * q_hat.std().item() / math.sqrt(n)


# ------------------------------------------------------------------------------------------------
# GPI / GGPI
# ------------------------------------------------------------------------------------------------


def test_switching_set_is_tail_closed_and_counts():
    N = G.switching_set(3, 3, (0.5, 0.9))
    # length 1: 3; length 2: 3·2 sequences × 2 α; length 3: 3·2·2 × 4
    assert len(N) == 3 + 12 + 48
    assert G.is_suffix_closed(N)
    assert not G.is_suffix_closed([nu for nu in N if len(nu) == 2])
    assert G.required_models(G.switching_set(2, 2, (0.5,)), 0.9) == [(0, 0.45), (0, 0.9), (1, 0.45), (1, 0.9)]


@pytest.mark.parametrize("seed", range(40))
def test_ggpi_is_at_least_as_good_as_every_policy_in_a_tail_closed_set(seed):
    g = _gen(100 + seed)
    S, A = 6, 2
    mdp = random_mdp(S, A, gamma=0.9, concentration=0.3, generator=g)
    # a mix of deterministic and stochastic base policies
    pis = [
        F.one_hot(torch.randint(A, (S,), generator=g), A).double(),
        random_dirichlet((S, A), 1.0, g),
        F.one_hot(torch.randint(A, (S,), generator=g), A).double(),
    ]
    r = torch.randn(S, generator=g, dtype=torch.float64)
    N = G.switching_set(3, 3, (0.5, 0.9))
    models = {k: G.ghm(mdp, pis[k[0]], k[1]) for k in G.required_models(N, mdp.gamma)}
    Qs = G.switching_q_values(models, pis, N, mdp.gamma, r)
    pi_new = G.ggpi_policy(Qs)
    Q_new = q_values(G.with_arrival_reward(mdp, r), pi_new)
    assert (Q_new - Qs.max(0).values).min().item() >= -1e-9
    # GPI (the length-1 members) is the special case and obeys the same inequality
    base = torch.stack([Qs[i] for i, nu in enumerate(N) if len(nu) == 1])
    Q_gpi = q_values(G.with_arrival_reward(mdp, r), G.gpi_policy(base))
    assert (Q_gpi - base.max(0).values).min().item() >= -1e-9


def test_ggpi_inequality_can_fail_without_tails():
    """A counterexample: with only the length-2 sequences (their tails missing) ``Q^{π'} ≥ max_ν Q^ν``
    breaks; adding the tails restores it. Seed 123 was found by scanning seeds 0-299 of this generator
    (7 of 300 violate); it is kept so that the documented assumption (tail-closed sets) stays justified.
    """
    g = _gen(123)
    mdp = random_mdp(5, 2, gamma=0.9, concentration=0.3, generator=g)
    pis = [F.one_hot(torch.randint(2, (5,), generator=g), 2).double() for _ in range(2)]
    r = torch.randn(5, generator=g, dtype=torch.float64)
    closed = G.switching_set(2, 2, (0.5, 0.9))
    models = {k: G.ghm(mdp, pis[k[0]], k[1]) for k in G.required_models(closed, mdp.gamma)}
    margins = {}
    for name, N in (("open", [nu for nu in closed if len(nu) == 2]), ("closed", closed)):
        Qs = G.switching_q_values(models, pis, N, mdp.gamma, r)
        Q_new = q_values(G.with_arrival_reward(mdp, r), G.ggpi_policy(Qs))
        margins[name] = (Q_new - Qs.max(0).values).min().item()
    assert margins["open"] < -0.2
    assert margins["closed"] >= -1e-9


def test_switching_q_values_matches_per_policy_composition():
    mdp, pis, r, _ = _setup(7, L=3)
    N = G.switching_set(3, 3, (0.7,))
    models = {k: G.ghm(mdp, pis[k[0]], k[1]) for k in G.required_models(N, mdp.gamma)}
    Qs = G.switching_q_values(models, pis, N, mdp.gamma, r)
    for i in (0, 5, len(N) - 1):
        nu = N[i]
        betas = nu.betas(mdp.gamma)
        q = G.composed_q_values(
            [G.ghm(mdp, pis[k], b) for k, b in zip(nu.sequence, betas)],
            [pis[k] for k in nu.sequence],
            betas,
            mdp.gamma,
            r,
        )
        torch.testing.assert_close(Qs[i], q, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="no GHM for base policy 0 at discount 0.9"):
        G.switching_q_values({}, pis, N[:1], mdp.gamma, r)


def test_gpi_policy_picks_the_best_action_of_the_best_policy():
    Q = torch.tensor([[[1.0, 0.0], [0.0, 0.5]], [[0.0, 2.0], [0.2, 0.1]]], dtype=torch.float64)  # [N, S, A]
    torch.testing.assert_close(G.gpi_policy(Q), torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="must have shape \\[N, S, A\\]"):
        G.gpi_policy(Q[0])


# ------------------------------------------------------------------------------------------------
# TD learning
# ------------------------------------------------------------------------------------------------


def test_td_fixed_point_equals_exact_ghm():
    mdp, pis, _, _ = _setup(8)
    for gamma in (0.0, 0.5, 0.9):
        M_fp, iters = G.ghm_td_fixed_point(mdp, pis[0], gamma)
        assert (M_fp - G.ghm(mdp, pis[0], gamma)).abs().max().item() < 1e-11
        assert iters >= 1
    # the exact GHM is a fixed point of the expected TD operator
    M = G.ghm(mdp, pis[1], 0.8)
    torch.testing.assert_close(G.ghm_bellman_operator(M, mdp, pis[1], 0.8), M, rtol=0, atol=1e-13)


def test_ghm_td_target_hand_computed():
    m_next = torch.tensor([[0.5, 0.5, 0.0]])
    y = G.ghm_td_target(m_next, torch.tensor([2]), 0.8)
    torch.testing.assert_close(y, torch.tensor([[0.4, 0.4, 0.2]]))
    with pytest.raises(ValueError, match="m_next must be \\[B, S\\]"):
        G.ghm_td_target(m_next[0], torch.tensor([2]), 0.8)


def test_tabular_td_converges_to_exact_ghm_with_and_without_target_network():
    mdp = gridworld("....\n....\n....", slip=0.2, gamma=0.9)
    S = mdp.num_states
    pi = random_dirichlet((S, 4), 1.0, _gen(9))
    gammas = [0.5, 0.9]
    exact = torch.stack([G.ghm(mdp, pi, g) for g in gammas])
    for period in (0, 5):
        M, trace = G.tabular_td_ghm(
            mdp,
            torch.stack([pi, pi]),
            gammas,
            steps=600,
            batch_size=256,
            lr=0.5,
            lr_decay=0.02,
            target_period=period,
            generator=_gen(10),
            reference=exact,
            log_every=100,
        )
        assert trace.errors[0] > 0.4
        assert trace.errors[-1] < 0.05, (period, trace.errors)
        torch.testing.assert_close(M.sum(-1), torch.ones(2, S, 4, dtype=torch.float64), rtol=0, atol=1e-10)


def test_categorical_ghm_learns_towards_exact_ghm():
    mdp = gridworld("...\n...", slip=0.1, gamma=0.8)
    S = mdp.num_states
    pi = F.one_hot(torch.full((S,), 3), 4).double()
    exact = G.ghm(mdp, pi, 0.8)[None]
    torch.manual_seed(0)
    net = G.CategoricalGHM(S, 4, S, num_heads=1, hidden=(64,))
    assert net(torch.eye(S)).logits.shape == (S, 1, 4, S)
    trace = G.train_categorical_ghm(
        net,
        torch.eye(S),
        mdp,
        pi[None],
        [0.8],
        steps=400,
        batch_size=64,
        lr=1e-2,
        target="hard",
        target_period=5,
        generator=_gen(11),
        reference=exact,
        log_every=100,
    )
    assert trace.errors[-1] < 0.1 * trace.errors[0] + 0.05, trace.errors
    with pytest.raises(ValueError, match="target must be 'none', 'hard' or 'polyak', got 'soft'"):
        G.train_categorical_ghm(net, torch.eye(S), mdp, pi[None], [0.8], steps=1, target="soft")


def test_categorical_td_loss_is_minimised_at_the_target():
    target = torch.tensor([[0.2, 0.3, 0.5]])
    at_target = G.categorical_td_loss(target.log(), target)
    elsewhere = G.categorical_td_loss(torch.zeros(1, 3), target)
    assert at_target < elsewhere
    assert at_target.item() == pytest.approx(-(target * target.log()).sum().item(), abs=1e-6)


# ------------------------------------------------------------------------------------------------
# mixture-density GHMs and Monte-Carlo composition
# ------------------------------------------------------------------------------------------------


def test_mixture_log_prob_and_sampling_agree():
    params = G.MixtureParams(
        logits=torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64),
        means=torch.tensor([[[0.0, 0.0], [1.0, 1.0]]], dtype=torch.float64),
        log_stds=torch.full((1, 2, 2), math.log(0.1), dtype=torch.float64),
    )
    x = G.mixture_sample(params, 20_000, _gen(12))  # [1, n, 2]
    assert x.shape == (1, 20_000, 2)
    frac_second = (x[0, :, 0] > 0.5).double().mean().item()
    assert frac_second == pytest.approx(0.75, abs=0.02)
    # density at the second mean: 0.75 · N(0; 0, 0.01 I) = 0.75 / (2π · 0.01)
    lp = G.mixture_log_prob(params, torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    assert lp.item() == pytest.approx(math.log(0.75 / (2 * math.pi * 0.01)), abs=1e-6)


def test_mixture_head_action_slice_equals_full_forward():
    torch.manual_seed(0)
    model = G.MixtureDensityGHM(2, 4, num_heads=3, num_components=5, hidden=(16, 16))
    s = torch.rand(7, 2)
    full, part = model(s), model.head_action(model.features(s), s, 2, 1)
    torch.testing.assert_close(part.means, full.means[:, 2, 1])
    torch.testing.assert_close(part.log_stds, full.log_stds[:, 2, 1])
    torch.testing.assert_close(part.logits, full.logits[:, 2, 1])


def test_monte_carlo_composition_with_an_exact_density_model():
    """A hand-made 'density GHM' whose heads are exact (a point mass after one move), so the Monte-Carlo
    composition must reproduce the closed form for a deterministic 1-step world."""

    class OneStep(G.MixtureDensityGHM):
        # m(·|s, a) = δ(s + d_a) for every head: exact for γ = 0, used here with tiny stds
        def forward(self, s):
            H, A, K, D = self.dims
            means = s[:, None, None, None, :] + 0.1 * compass_directions(A, s.dtype)[None, None, :, None, :]
            means = means.expand(s.shape[0], H, A, K, D)
            return G.MixtureParams(
                torch.zeros(s.shape[0], H, A, K, dtype=s.dtype), means, torch.full_like(means, -20.0)
            )

        def features(self, s):
            return s

        def head_action(self, features, s, head, action):
            return self.forward(s).index(lambda t: t[:, head, action])

    model = OneStep(2, 4, num_heads=2, num_components=1, hidden=(4,))
    reward = BumpReward(torch.tensor([[0.6, 0.5]], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))
    gamma = 0.5
    nu = G.SwitchingPolicy((0, 1), (0.0,))  # β_1 = 0: exactly one step of π_0, then π_1 forever (γ-model)
    head_of = {(0, 0.0): 0, (1, 0.5): 1}
    s = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    Q = G.switching_q_monte_carlo(
        model,
        head_of,
        lambda k, x: torch.full((x.shape[0],), k),
        [nu],
        gamma,
        reward,
        s,
        n=3,
        generator=_gen(13),
    )
    # action a from s, then one draw of head 1 (a "γ-model" that here moves once along direction 1)
    for a in range(4):
        s1 = s[0] + 0.1 * compass_directions(4)[a]
        s2 = s1 + 0.1 * compass_directions(4)[1]
        w, c = G.composition_weights((0.0, gamma), gamma)
        expected = (w[0] * reward(s1) + c[0] * w[1] * reward(s2)) / (1 - gamma)
        assert Q[0, 0, a].item() == pytest.approx(expected.item(), abs=1e-6)


def test_mixture_ghm_training_reduces_loss_and_validates():
    torch.manual_seed(0)
    dirs = compass_directions(4)

    def sample(B, g):
        s = torch.rand(B, 2, generator=g, dtype=torch.float64)
        a = torch.randint(4, (B,), generator=g)
        return (
            s.float(),
            a,
            point_nav_step(s, a, step_size=0.1, noise_std=0.02, directions=dirs, generator=g).float(),
        )

    model = G.MixtureDensityGHM(2, 4, num_heads=2, num_components=3, hidden=(32, 32))
    heads = [(0, 0.0), (0, 0.5)]
    losses = G.train_mixture_ghm(
        model,
        heads,
        sample,
        lambda k, x: torch.full((x.shape[0],), k),
        steps=150,
        batch_size=64,
        lr=3e-3,
        generator=_gen(14),
    )
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 1.0
    with pytest.raises(ValueError, match="model has 2 heads but 1"):
        G.train_mixture_ghm(model, heads[:1], sample, lambda k, x: x, steps=1)


# ------------------------------------------------------------------------------------------------
# validation and the navigation environment
# ------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_value_errors_naming_the_value():
    with pytest.raises(ValueError, match="gamma must be in \\[0, 1\\), got 1.0"):
        G.state_ghm(torch.eye(2, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="continue_probs must be in \\[0, 1\\], got \\[1.5\\]"):
        G.SwitchingPolicy((0, 1), (1.5,))
    with pytest.raises(ValueError, match="needs one value per policy but the last \\(1\\), got \\(\\)"):
        G.SwitchingPolicy((0, 1))
    with pytest.raises(ValueError, match="has no tail"):
        G.SwitchingPolicy((0,)).tail()
    mdp, pis, _, _ = _setup(15)
    with pytest.raises(ValueError, match="r must be a per-state arrival reward of shape \\[S\\] = \\[6\\]"):
        G.with_arrival_reward(mdp, torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="policies must be \\[H, S, A\\] = \\[2, 6, 3\\]"):
        G.tabular_td_ghm(mdp, pis[0], [0.5, 0.9], steps=1)
    with pytest.raises(ValueError, match="log_every=0"):
        G.tabular_td_ghm(mdp, pis[0][None], [0.5], steps=1, log_every=0)
    with pytest.raises(ValueError, match="num_heads must be >= 1, got 0"):
        G.CategoricalGHM(3, 2, 3, num_heads=0)


def test_bump_reward_expectation_matches_sampling():
    reward = BumpReward(
        torch.tensor([[0.3, 0.4], [0.7, 0.7]], dtype=torch.float64),
        torch.tensor([1.0, -0.5], dtype=torch.float64),
        width=0.15,
    )
    params = G.MixtureParams(
        torch.tensor([[0.3, -0.2]], dtype=torch.float64),
        torch.tensor([[[0.35, 0.45], [0.6, 0.8]]], dtype=torch.float64),
        torch.tensor([[[-2.5, -2.0], [-3.0, -2.2]]], dtype=torch.float64),
    )
    x = G.mixture_sample(params, 200_000, _gen(16))
    mc = reward(x).mean().item()
    closed = reward.expected(params.logits, params.means, params.log_stds).item()
    assert closed == pytest.approx(mc, abs=3e-3)
    with pytest.raises(ValueError, match="weights must have shape \\[G\\] = \\[2\\]"):
        BumpReward(reward.centers, torch.zeros(3))


def test_point_nav_env_follows_gymnasium_api_and_clips():
    reward = BumpReward(torch.tensor([[0.9, 0.5]], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))
    env = PointNavEnv(reward, step_size=0.1, noise_std=0.0, max_steps=3)
    obs, info = env.reset(seed=0, options={"state": (0.75, 0.5)})
    assert env.observation_space.contains(obs)
    obs, r, terminated, truncated, _ = env.step(0)  # right: 0.85
    assert obs[0] == pytest.approx(0.85, abs=1e-6) and r == pytest.approx(math.exp(-0.5 * 0.05**2 / 0.01))
    env.step(0)
    obs, _, terminated, truncated, _ = env.step(0)  # clipped at the wall
    assert obs[0] == pytest.approx(1.0) and not terminated and truncated
    with pytest.raises(ValueError, match="action 7 is not in \\[0, 4\\)"):
        env.step(7)
    # seeded resets are reproducible
    a, _ = PointNavEnv(reward).reset(seed=3)
    b, _ = PointNavEnv(reward).reset(seed=3)
    assert (a == b).all()


# ------------------------------------------------------------------------------------------------
# GGPI evaluation helpers and the switching-policy simulator
# ------------------------------------------------------------------------------------------------


def _two_state_flip(gamma: float = 0.5) -> FiniteMDP:
    """Action 0 stays, action 1 flips to the other state; start in state 0."""
    stay, flip = torch.eye(2, dtype=torch.float64), torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    zeros = torch.zeros(2, 2, dtype=torch.float64)
    return FiniteMDP(P=torch.stack([stay, flip]), R=zeros, gamma=gamma, initial=torch.tensor([1.0, 0.0]).double())


def test_constant_action_policies_and_start_value_hand_computed():
    mdp = G.with_arrival_reward(_two_state_flip(0.5), torch.tensor([0.0, 1.0], dtype=torch.float64))
    stay, flip = G.constant_action_policies(2, 2)
    assert stay.tolist() == [[1.0, 0.0], [1.0, 0.0]] and flip.tolist() == [[0.0, 1.0], [0.0, 1.0]]
    assert G.start_value(mdp, stay) == 0.0  # never leaves state 0, which pays nothing
    # flipping arrives in state 1 at t = 0, 2, 4, ...: 1 + γ² + γ⁴ + ... = 1 / (1 − γ²)
    assert G.start_value(mdp, flip) == pytest.approx(1 / (1 - 0.25), abs=1e-12)
    with pytest.raises(ValueError, match="num_states and num_actions must be >= 1, got 0, 2"):
        G.constant_action_policies(0, 2)


def test_random_goal_rewards_place_distinct_goals_and_are_seeded():
    tasks = G.random_goal_rewards(10, 3, 5, _gen(0))
    assert len(tasks) == 5
    for r in tasks:
        assert r.shape == (10,) and r.dtype == torch.float64
        assert int((r > 0).sum()) == 3 and r.max() < 1
    again = G.random_goal_rewards(10, 3, 5, _gen(0))
    assert all(torch.equal(a, b) for a, b in zip(tasks, again))
    with pytest.raises(ValueError, match="num_goals must be in \\[1, num_states=4\\], got 5"):
        G.random_goal_rewards(4, 5, 1)


@pytest.mark.parametrize("L", [1, 2, 3])
def test_composition_errors_are_round_off_for_exact_models(L):
    mdp, pis, r, g = _setup(40 + L, L=L)
    alphas = torch.rand(L - 1, generator=g, dtype=torch.float64).tolist()
    mu_err, q_err = G.composition_errors(mdp, pis, alphas, mdp.gamma, r)
    assert 0.0 <= mu_err < 1e-12 and 0.0 <= q_err < 1e-10
    # the discount is the argument's, not the MDP's field (the augmented solve uses it too)
    assert max(G.composition_errors(mdp, pis, alphas, 0.5, r)) < 1e-10


def test_improvement_margin_flags_the_counterexample_without_tails():
    # the same counterexample as test_ggpi_inequality_can_fail_without_tails, through the helper
    g = _gen(123)
    mdp = random_mdp(5, 2, gamma=0.9, concentration=0.3, generator=g)
    pis = [F.one_hot(torch.randint(2, (5,), generator=g), 2).double() for _ in range(2)]
    r = torch.randn(5, generator=g, dtype=torch.float64)
    closed = G.switching_set(2, 2, (0.5, 0.9))
    models = {k: G.ghm(mdp, pis[k[0]], k[1]) for k in G.required_models(closed, mdp.gamma)}
    mdp_r = G.with_arrival_reward(mdp, r)
    open_set = [nu for nu in closed if len(nu) == 2]
    assert G.improvement_margin(mdp_r, G.switching_q_values(models, pis, open_set, mdp.gamma, r)) < -0.2
    assert G.improvement_margin(mdp_r, G.switching_q_values(models, pis, closed, mdp.gamma, r)) >= -1e-9


def test_score_gpi_ggpi_with_exact_models_on_a_gridworld():
    mdp = gridworld("\n".join(["....."] * 4), slip=0.1, gamma=0.9)
    pis = G.constant_action_policies(mdp.num_states, mdp.num_actions)
    N = G.switching_set(len(pis), 2, (0.8,))
    models = {k: G.ghm(mdp, pis[k[0]], k[1]) for k in G.required_models(N, mdp.gamma)}
    tasks = G.random_goal_rewards(mdp.num_states, 2, 4, _gen(5))
    out = G.score_gpi_ggpi(mdp, pis, N, models, tasks, mdp.gamma, margins=True)
    assert set(out) == {"base 0", "base 1", "base 2", "base 3", "GPI", "GGPI", "optimal", "ggpi_margin", "gpi_margin"}
    assert all(len(v) == 4 for v in out.values())
    for t, r in enumerate(tasks):
        best_base = max(out[f"base {k}"][t] for k in range(4))
        # both improve on every base policy (they are in both sets), the optimum bounds both
        assert out["GPI"][t] >= best_base - 1e-9 and out["GGPI"][t] >= best_base - 1e-9
        assert out["optimal"][t] >= max(out["GPI"][t], out["GGPI"][t]) - 1e-9
        assert out["ggpi_margin"][t] >= -1e-9 and out["gpi_margin"][t] >= -1e-9
        # GPI by hand: greedy over the exact base Q's, scored exactly
        mdp_r = G.with_arrival_reward(mdp, r)
        base_q = torch.stack([q_values(mdp_r, p) for p in pis])
        assert out["GPI"][t] == pytest.approx(G.start_value(mdp_r, G.gpi_policy(base_q)), abs=1e-9)
    given = G.score_gpi_ggpi(mdp, pis, N, models, tasks[:2], mdp.gamma, optimal=[7.0, 8.0])
    assert given["optimal"] == [7.0, 8.0] and "ggpi_margin" not in given


def test_rollout_returns_are_geometric_sums_and_paired_by_the_generator():
    dirs = compass_directions(4)

    def step(s, a, g, noise=0.0):
        return point_nav_step(s, a, step_size=0.1, noise_std=noise, directions=dirs, generator=g)

    starts = torch.full((3, 2), 0.5, dtype=torch.float64)
    ones = G.rollout_returns(
        step, lambda s: G.constant_action(0, s), lambda x: torch.ones(x.shape[0]), starts, horizon=4, gamma=0.5
    )
    torch.testing.assert_close(ones, torch.full((3,), 1 + 0.5 + 0.25 + 0.125, dtype=torch.float64))
    # reward on arrival: moving right from x = 0.5 arrives at 0.6, 0.7, 0.8 (then clipped at 1)
    x_reward = G.rollout_returns(step, lambda s: G.constant_action(0, s), lambda x: x[:, 0], starts, horizon=3, gamma=1)
    torch.testing.assert_close(x_reward, torch.full((3,), 0.6 + 0.7 + 0.8, dtype=torch.float64))

    def noisy(s, a, g):
        return step(s, a, g, noise=0.05)

    a, b = (
        G.rollout_returns(
            noisy, lambda s: G.constant_action(1, s), lambda x: x[:, 1], starts, horizon=5, gamma=0.9, generator=_gen(3)
        )
        for _ in range(2)
    )
    assert torch.equal(a, b) and a.std() > 0  # the same noise for the same seed, different per episode


def test_simulated_switching_policy_matches_the_exact_composed_value():
    # a finite MDP as a "continuous" task: the state is a [1] long tensor, the step samples P
    mdp, _, r, g = _setup(11, S=5, A=2, L=2)
    gamma = 0.6
    pis = G.constant_action_policies(5, 2)
    nu = G.SwitchingPolicy((0, 1), (0.7,))
    betas = nu.betas(gamma)
    Q = G.composed_q_values([G.ghm(mdp, pis[k], b) for k, b in zip(nu.sequence, betas)], pis, betas, gamma, r)

    def step(x, a, gen):
        return torch.multinomial(mdp.P[a, x[:, 0]], 1, generator=gen)

    for s, a in ((0, 0), (3, 1)):
        ret = G.simulate_switching_policy(
            step,
            G.constant_action,
            nu,
            lambda x: r[x[:, 0]],
            torch.tensor([s]),
            a,
            n=20_000,
            horizon=60,
            gamma=gamma,
            generator=_gen(20 + s),
        )
        se = ret.std().item() / math.sqrt(ret.numel())
        assert ret.mean().item() == pytest.approx(Q[s, a].item(), abs=4 * se + 1e-9)
    with pytest.raises(ValueError, match="n and horizon must be >= 1, got 0, 5"):
        G.simulate_switching_policy(
            step, G.constant_action, nu, r.__getitem__, torch.tensor([0]), 0, n=0, horizon=5, gamma=gamma
        )


def test_uniform_transitions_sample_the_state_space_and_step():
    dirs = compass_directions(4)

    def step(s, a, g):
        return point_nav_step(s, a, step_size=0.1, noise_std=0.0, directions=dirs, generator=g)

    s, a, s2 = G.uniform_transitions(step, 2, 4)(64, _gen(0))
    assert s.shape == (64, 2) and a.shape == (64,) and s2.shape == (64, 2)
    assert ((s >= 0) & (s <= 1)).all() and set(a.tolist()) <= {0, 1, 2, 3}
    torch.testing.assert_close(s2, step(s, a, None))


def test_rollout_gpi_ggpi_acts_on_the_base_set_and_the_whole_set():
    dirs = compass_directions(4)

    def step(s, a, g):
        return point_nav_step(s, a, step_size=0.1, noise_std=0.01, directions=dirs, generator=g)

    N = G.switching_set(4, 2, (0.8,))

    def q_fn(s, subset):
        # base policies rate action 0 (right) best; any length-2 member rates action 1 (up) best
        q = torch.zeros(len(subset), s.shape[0], 4)
        for i, nu in enumerate(subset):
            q[i, :, 0 if len(nu) == 1 else 1] = 1.0 + len(nu)
        return q

    starts = torch.full((8, 2), 0.3, dtype=torch.float64)
    kw = dict(horizon=5, gamma=0.9, noise_seed=7)
    out = G.rollout_gpi_ggpi(step, q_fn, G.constant_action, 4, N, lambda x: x[:, 0], starts, **kw)
    assert set(out) == {"base 0", "base 1", "base 2", "base 3", "GPI", "GGPI"}
    assert out["GPI"] == out["base 0"] and out["GGPI"] == out["base 1"]  # same noise: equal returns
    assert out["base 0"] > out["base 2"]  # moving right earns the x-coordinate reward
