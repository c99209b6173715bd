"""Tests for the finite-MDP toolkit: constructors, exact evaluation, spectra, metrics, samplers, env."""

import math

import numpy as np
import pytest
import torch

from foresight.rl import gridworlds as GW
from foresight.rl import mdp as M


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# construction and validation
# ---------------------------------------------------------------------------------------------
def test_finite_mdp_validates_inputs():
    P = torch.full((2, 3, 3), 1 / 3, dtype=torch.float64)
    R = torch.zeros(3, 2, dtype=torch.float64)
    init = torch.full((3,), 1 / 3, dtype=torch.float64)
    mdp = M.FiniteMDP(P, R, 0.9, init)
    assert (mdp.num_states, mdp.num_actions) == (3, 2)
    assert "num_states=3" in repr(mdp)
    with pytest.raises(ValueError, match=r"P must have shape \[A, S, S\]"):
        M.FiniteMDP(P[:, :2], R, 0.9, init)
    bad = P.clone()
    bad[0, 0] = torch.tensor([0.5, 0.6, -0.1])
    with pytest.raises(ValueError, match="negative entries"):
        M.FiniteMDP(bad, R, 0.9, init)
    with pytest.raises(ValueError, match="rows must sum to 1"):
        M.FiniteMDP(P * 0.9, R, 0.9, init)
    with pytest.raises(ValueError, match=r"R must have shape \[S, A\] = \[3, 2\]"):
        M.FiniteMDP(P, R.T, 0.9, init)
    with pytest.raises(ValueError, match="gamma must be in"):
        M.FiniteMDP(P, R, 1.5, init)
    with pytest.raises(ValueError, match="initial"):
        M.FiniteMDP(P, R, 0.9, init * 2)


def test_dirichlet_rows_are_stochastic_reproducible_and_mean_correct():
    T1 = M.random_transition_matrix(6, gen(1), concentration=0.5)
    T2 = M.random_transition_matrix(6, gen(1), concentration=0.5)
    assert T1.dtype == torch.float64 and torch.equal(T1, T2)
    assert torch.allclose(T1.sum(1), torch.ones(6, dtype=torch.float64))
    # Gamma sampler: the mean of Gamma(a) is a and the variance a, for a < 1 and a >= 1
    for a in (0.3, 2.5):
        g = M._standard_gamma(a, (200_000,), gen(2), torch.float64)
        assert abs(g.mean().item() - a) < 0.02 and abs(g.var().item() - a) < 0.05
    with pytest.raises(ValueError, match="concentration must be > 0, got 0"):
        M.random_transition_matrix(4, gen(0), concentration=0.0)
    with pytest.raises(ValueError, match="num_states must be a positive int, got 0"):
        M.random_transition_matrix(0, gen(0))


def test_doubly_stochastic_and_symmetric_constructors():
    D = M.random_doubly_stochastic(9, gen(3))
    ones = torch.ones(9, dtype=torch.float64)
    assert torch.allclose(D.sum(1), ones, atol=1e-12) and torch.allclose(D.sum(0), ones, atol=1e-12)
    assert not torch.allclose(D, D.T)
    S = M.random_symmetric_transition(9, gen(3), concentration=0.3)
    assert torch.equal(S, S.T)
    assert torch.allclose(S.sum(1), ones, atol=1e-12) and (S >= 0).all()
    # uniform is stationary for both
    assert torch.allclose(M.stationary_distribution(D), ones / 9, atol=1e-10)
    assert torch.allclose(M.stationary_distribution(S), ones / 9, atol=1e-10)


def test_random_mdp_shapes_and_seed():
    mdp = M.random_mdp(5, 3, gamma=0.8, generator=gen(4))
    assert mdp.P.shape == (3, 5, 5) and mdp.R.shape == (5, 3) and mdp.gamma == 0.8
    assert torch.equal(mdp.P, M.random_mdp(5, 3, gamma=0.8, generator=gen(4)).P)
    with pytest.raises(ValueError, match="num_actions must be a positive int, got -1"):
        M.random_mdp(5, -1)


def test_chain_mdp_hand_built():
    mdp = M.chain_mdp(3, slip=0.1)
    right = torch.tensor([[0.1, 0.9, 0.0], [0.1, 0.0, 0.9], [0.0, 0.1, 0.9]], dtype=torch.float64)
    assert torch.allclose(mdp.P[1], right)
    assert torch.allclose(mdp.R[:, 1], torch.tensor([0.0, 0.9, 0.9], dtype=torch.float64))
    assert mdp.initial.tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="slip must be in"):
        M.chain_mdp(3, slip=1.5)


def test_gridworld_moves_walls_goal_and_slip():
    layout = "#####\n#S.G#\n#.#.#\n#####"
    g = M.gridworld(layout, gamma=0.9)
    # free cells in row-major order: (1,1) S, (1,2), (1,3) G, (2,1), (2,3)
    assert g.coords.tolist() == [[1, 1], [1, 2], [1, 3], [2, 1], [2, 3]]
    assert g.goals.tolist() == [2] and g.initial.tolist() == [1.0, 0, 0, 0, 0]
    up, down, left, right = range(4)
    assert g.P[right, 0].argmax().item() == 1 and g.P[right, 1].argmax().item() == 2
    assert g.P[up, 0, 0] == 1.0  # wall: stay
    assert g.P[down, 0].argmax().item() == 3
    assert g.R[1, right] == 1.0 and g.R[0, right] == 0.0  # reward on arrival at G
    slippy = M.gridworld(layout, slip=0.4)
    assert torch.isclose(slippy.P[right, 0, 1], torch.tensor(0.6 + 0.1, dtype=torch.float64))
    absorb = M.gridworld(layout, goal="absorb")
    assert (absorb.P[:, 2, 2] == 1).all() and (absorb.R[2] == 0).all()
    reset = M.gridworld(layout, goal="reset")
    assert (reset.P[:, 2, 0] == 1).all()
    grid = g.to_grid(torch.arange(5, dtype=torch.float64))
    assert grid.shape == (4, 5) and grid[2, 3] == 4 and math.isnan(grid[0, 0].item())
    obs = g.pixel_observations()
    assert obs.shape == (5, 2, 4, 5) and obs[4, 1, 2, 3] == 1 and obs[:, 1].sum() == 5
    with pytest.raises(ValueError, match=r"unknown characters \['x'\]"):
        M.gridworld("#x#")
    with pytest.raises(ValueError, match="goal must be"):
        M.gridworld(layout, goal="teleport")


def test_check_discount_is_the_one_discount_check():
    assert M.check_discount(0.0) == 0.0 and M.check_discount(torch.tensor(0.5)) == 0.5
    assert M.check_discount(1.0, allow_one=True) == 1.0
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\), got 1.0; at gamma=1.0 discounted sums diverge"):
        M.check_discount(1.0)
    with pytest.raises(ValueError, match=r"head discount must be in \[0, 1\), got -0.1$"):
        M.check_discount(-0.1, "head discount")
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\], got 1.5"):
        M.check_discount(1.5, allow_one=True)
    with pytest.raises(ValueError, match="got nan"):
        M.check_discount(float("nan"), allow_one=True)
    # the sites that solve (I - γT) share it; an MDP's own field and PPO's GAE allow γ = 1
    chain = M.chain_mdp(3, gamma=1.0)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\), got 1.0"):
        M.value_iteration(chain)


def test_parse_grid_is_the_one_layout_parser():
    grid = M.parse_grid("\n#S.#\n#.G#\n")
    assert grid.shape == (2, 4) and grid[0, 1] == "S" and grid[1, 2] == "G"
    assert "\n".join("".join(r) for r in grid) == "#S.#\n#.G#"
    with pytest.raises(ValueError, match=r"equal length, got lengths \[3, 2\]"):
        M.parse_grid("#.#\n#.")
    with pytest.raises(ValueError, match=r"equal length, got lengths \[\]"):
        M.parse_grid("\n\n")
    with pytest.raises(ValueError, match=r"unknown characters \['x'\]; use '#', '.', 'S', 'G'"):
        M.parse_grid("#x#")
    # gridworld() and the vectorised environments read layouts through it
    layout = "#####\n#S.G#\n#####"
    free, starts, goals = GW.parse_layout(layout)
    assert np.array_equal(free, M.parse_grid(layout) != "#")
    assert M.gridworld(layout).layout == layout and starts.tolist() == [[1, 1]] and goals.tolist() == [[1, 3]]


def test_four_rooms_has_104_states_and_hallways():
    fr = M.four_rooms()
    assert fr.num_states == 104 and fr.num_actions == 4
    assert fr.coords[fr.goals[0]].tolist() == [7, 9]
    # the four hallway cells are free
    cells = {tuple(c) for c in fr.coords.tolist()}
    assert {(3, 6), (6, 2), (7, 9), (10, 6)} <= cells
    with pytest.raises(ValueError, match=r"goal_cell=\(0, 0\) is not a free cell"):
        M.four_rooms(goal_cell=(0, 0))


# ---------------------------------------------------------------------------------------------
# policies and exact evaluation
# ---------------------------------------------------------------------------------------------
def test_policy_evaluation_matches_bellman_and_monte_carlo_free_checks():
    mdp = M.random_mdp(6, 3, gamma=0.9, generator=gen(5))
    pi = M.random_dirichlet((6, 3), 1.0, gen(6))
    T, r = M.policy_transition(mdp, pi), M.policy_reward(mdp, pi)
    assert torch.allclose(T.sum(1), torch.ones(6, dtype=torch.float64))
    V = M.policy_evaluation(mdp, pi)
    assert torch.allclose(V, r + 0.9 * T @ V, atol=1e-12)
    Q = M.q_values(mdp, pi)
    assert torch.allclose((pi * Q).sum(1), V, atol=1e-12)
    # SR identity: V = (I - γT)^-1 r
    assert torch.allclose(M.successor_representation(T, 0.9) @ r, V, atol=1e-12)
    with pytest.raises(ValueError, match=r"pi must have shape \[S, A\] = \[6, 3\]"):
        M.policy_transition(mdp, pi.T)
    with pytest.raises(ValueError, match="gamma=1.0"):
        M.successor_representation(T, 1.0)


def test_value_iteration_is_optimal_on_chain():
    mdp = M.chain_mdp(5, gamma=0.9)
    res = M.value_iteration(mdp)
    assert (res.policy[:, 1] == 1).all()  # always go right
    # the greedy policy's exact value equals V*
    assert torch.allclose(M.policy_evaluation(mdp, res.policy), res.values, atol=1e-8)
    # V*(4) = 1 / (1 - γ) (stay at the right end forever)
    assert res.values[4].item() == pytest.approx(10.0, abs=1e-8)


def test_greedy_policy_splits_ties():
    pi = M.greedy_policy(torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]]))
    assert pi.tolist() == [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]


def test_stationary_distribution_and_reverse_kernel():
    T = M.random_transition_matrix(7, gen(7))
    d = M.stationary_distribution(T)
    assert torch.allclose(d @ T, d, atol=1e-12) and d.sum().item() == pytest.approx(1.0)
    rev = M.reverse_transition(T, d)
    assert torch.allclose(rev.sum(1), torch.ones(7, dtype=torch.float64))
    # detailed balance of the pair: d(x) T(x, y) = d(y) T̃(y, x) (d' = d when d is stationary)
    assert torch.allclose(d[:, None] * T, (d[:, None] * rev).T, atol=1e-14)
    D = M.random_doubly_stochastic(7, gen(8))
    assert torch.allclose(M.reverse_transition(D, torch.full((7,), 1 / 7, dtype=torch.float64)), D.T, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# spectra and subspace metrics
# ---------------------------------------------------------------------------------------------
def test_eig_sorted_orders_and_reconstructs():
    S = M.random_symmetric_transition(8, gen(9), concentration=0.3)
    lam, V = M.eig_sorted(S, by="abs")
    assert not torch.is_complex(lam)
    assert torch.all(lam.abs()[:-1] >= lam.abs()[1:] - 1e-15) and lam[0].item() == pytest.approx(1.0)
    assert torch.allclose(S @ V, V * lam, atol=1e-12)
    lam_r, _ = M.eig_sorted(S, by="real")
    assert torch.all(lam_r[:-1] >= lam_r[1:])
    T = M.random_transition_matrix(6, gen(10))
    lam_c, V_c = M.eig_sorted(T)
    assert torch.allclose(T.to(V_c.dtype) @ V_c, V_c * lam_c, atol=1e-10)
    with pytest.raises(ValueError, match="by must be 'abs' or 'real', got 'imag'"):
        M.eig_sorted(S, by="imag")


def test_top_singular_vectors_reconstruct():
    A = torch.randn(7, 5, generator=gen(11), dtype=torch.float64)
    U, s, V = M.top_singular_vectors(A, 5)
    assert torch.allclose(U @ torch.diag(s) @ V.T, A, atol=1e-12)
    U2, s2, _ = M.top_singular_vectors(A, 2)
    assert torch.equal(s2, s[:2]) and U2.shape == (7, 2)
    with pytest.raises(ValueError, match="k=6"):
        M.top_singular_vectors(A, 6)


def test_alignment_is_one_on_exact_subspace_and_basis_invariant():
    U, _, _ = M.top_singular_vectors(torch.randn(10, 10, generator=gen(12), dtype=torch.float64), 3)
    mix = torch.randn(3, 3, generator=gen(13), dtype=torch.float64)  # invertible a.s.
    assert M.alignment(U, U).item() == pytest.approx(1.0, abs=1e-12)
    assert M.alignment(U, U @ mix).item() == pytest.approx(1.0, abs=1e-12)
    other = torch.randn(10, 3, generator=gen(14), dtype=torch.float64)
    a = M.alignment(U, other).item()
    assert 0.0 < a < 1.0
    assert M.alignment(U, other @ mix).item() == pytest.approx(a, abs=1e-12)
    # orthogonal complement: alignment 0; it equals the mean squared cosine of principal angles
    Q = M.orthonormal_basis(torch.randn(10, 10, generator=gen(15), dtype=torch.float64))
    assert M.alignment(Q[:, :3], Q[:, 3:6]).item() == pytest.approx(0.0, abs=1e-12)
    ang = M.principal_angles(U, other)
    assert ang.shape == (3,) and torch.all(ang[:-1] <= ang[1:])
    assert torch.cos(ang).pow(2).mean().item() == pytest.approx(a, abs=1e-12)
    assert M.principal_angles(U, U @ mix).abs().max().item() < 1e-6
    with pytest.raises(ValueError, match="same S"):
        M.alignment(U, other[:5])


def test_orthonormal_basis_drops_rank():
    A = torch.randn(6, 2, generator=gen(16), dtype=torch.float64)
    Q = M.orthonormal_basis(torch.cat([A, A.sum(1, keepdim=True)], 1))
    assert Q.shape == (6, 2) and torch.allclose(Q.T @ Q, torch.eye(2, dtype=torch.float64), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# samplers and the gymnasium env
# ---------------------------------------------------------------------------------------------
def test_sample_transitions_matches_joint():
    T = M.random_transition_matrix(4, gen(17))
    d = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    x, y = M.sample_transitions(T, d, 200_000, gen(18))
    assert x.shape == y.shape == (200_000,) and x.dtype == torch.long
    counts = torch.zeros(4, 4, dtype=torch.float64).index_put_(
        (x, y), torch.ones(200_000, dtype=torch.float64), accumulate=True
    )
    assert (counts / 200_000 - d[:, None] * T).abs().max().item() < 5e-3
    a1, b1 = M.sample_transitions(T, d, 10, gen(21))
    a2, b2 = M.sample_transitions(T, d, 10, gen(21))
    assert torch.equal(a1, a2) and torch.equal(b1, b2)  # the generator alone fixes the draw
    with pytest.raises(ValueError, match=r"d must have shape \[S\] = \[4\]"):
        M.sample_transitions(T, d[:3], 10)


def test_sample_mdp_transitions_rewards_and_actions():
    mdp = M.random_mdp(5, 2, generator=gen(19))
    pi = torch.tensor([[1.0, 0.0]] * 5, dtype=torch.float64)
    s, a, r, s2 = M.sample_mdp_transitions(mdp, pi, mdp.initial, 1000, gen(20))
    assert (a == 0).all() and torch.equal(r, mdp.R[s, a])
    assert (mdp.P[a, s, s2] > 0).all()
    with pytest.raises(ValueError, match="n must be a positive int"):
        M.sample_mdp_transitions(mdp, pi, mdp.initial, 0)


def test_finite_mdp_env_follows_the_mdp():
    g = M.gridworld("#####\n#S.G#\n#####", goal="absorb")
    env = M.FiniteMDPEnv(g, max_steps=5, obs="onehot", terminal_states=tuple(g.goals.tolist()))
    obs, info = env.reset(seed=0)
    assert obs.shape == (3,) and obs[0] == 1 and info["state"] == 0
    assert env.observation_space.contains(obs)
    obs, r, term, trunc, info = env.step(3)  # right
    assert info["state"] == 1 and r == 0.0 and not term
    obs, r, term, trunc, info = env.step(3)
    assert info["state"] == 2 and r == 1.0 and term and not trunc
    env2 = M.FiniteMDPEnv(g, max_steps=2, obs="index", reward_fn=lambda s, a, s2: -1.0)
    env2.reset(seed=1)
    _, r, _, _, _ = env2.step(0)
    _, _, _, trunc, _ = env2.step(0)
    assert r == -1.0 and trunc
    with pytest.raises(ValueError, match="obs must be 'index' or 'onehot', got 'rgb'"):
        M.FiniteMDPEnv(g, obs="rgb")
    with pytest.raises(ValueError, match="action 7"):
        env2.step(7)
    assert isinstance(env2.observation_space.sample(), int | np.integer)
