"""Finite MDPs in torch: constructors, exact policy evaluation, spectra, subspace metrics, samplers.

The shared tabular toolkit for the self-predictive (BYOL-Π), SVD-representation and GHM systems.
Every function is pure; randomness only comes from an explicit ``generator: torch.Generator | None``
(``None`` uses torch's global RNG). Tensors are float64 unless a ``dtype`` says otherwise, because
the derivation checks built on this module compare numbers to 1e-10.

Axis legend: A actions, S states (S' next states), k subspace dimension, n samples.
Conventions:

- ``P[a, s, s']`` = Pr(s' | s, a); ``R[s, a]`` = expected reward for taking a in s.
- A policy is a row-stochastic ``pi [S, A]``; ``T = policy_transition(mdp, pi)`` is ``[S, S']``.
- Value functions: ``V = r_pi + γ T V`` (rewards are collected on the step taken from s).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

DTYPE = torch.float64

# Row-sum tolerance used by validation: generous enough for float32 inputs, tight enough to catch bugs.
_ROW_ATOL = {torch.float64: 1e-8, torch.float32: 1e-4}

# The four gridworld actions as (d_row, d_col): up, down, left, right.
GRID_ACTIONS: tuple[tuple[int, int], ...] = ((-1, 0), (1, 0), (0, -1), (0, 1))
GRID_ACTION_NAMES: tuple[str, ...] = ("up", "down", "left", "right")
# The characters of gridworld ASCII art (:func:`parse_grid`): wall, free, start, goal.
GRID_CHARS = "#.SG"

# Sutton, Precup & Singh (1999), "Between MDPs and semi-MDPs", Fig. 2: 11x11 interior, 104 cells.
FOUR_ROOMS_LAYOUT = """\
#############
#.....#.....#
#.....#.....#
#...........#
#.....#.....#
#.....#.....#
##.####.....#
#.....###.###
#.....#.....#
#.....#.....#
#...........#
#.....#.....#
#############"""


# ------------------------------------------------------------------------------------------------
# validation helpers
# ------------------------------------------------------------------------------------------------
def _check_stochastic(name: str, M: Tensor) -> None:
    """Raise ValueError unless the last axis of ``M`` is a probability vector everywhere."""
    if not torch.is_floating_point(M):
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {M.dtype}")
    if not torch.isfinite(M).all():
        raise ValueError(f"{name} has non-finite entries")
    if (M < 0).any():
        raise ValueError(f"{name} has negative entries (min {M.min().item():.3g})")
    atol = _ROW_ATOL.get(M.dtype, 1e-2)
    err = (M.sum(-1) - 1).abs().max().item()
    if err > atol:
        raise ValueError(f"{name} rows must sum to 1; worst row is off by {err:.3g}")


def _check_square(name: str, T: Tensor) -> None:
    if T.dim() != 2 or T.shape[0] != T.shape[1]:
        raise ValueError(f"{name} must be a square matrix [S, S], got shape {tuple(T.shape)}")


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_discount(gamma: float, name: str = "gamma", *, allow_one: bool = False) -> float:
    """``float(gamma)`` if ``0 <= gamma < 1`` (``<= 1`` with ``allow_one``), else a ValueError naming the value.

    The one discount check of ``foresight.rl``. ``gamma < 1`` is what discounted sums need: exact
    evaluation (``I - γT`` invertible), GHMs and geometric horizons. ``allow_one=True`` is for
    quantities that stay finite at ``gamma = 1`` on finite episodes: an MDP's own ``gamma`` field,
    PPO's GAE. ``name`` is the argument's name in the message.
    """
    g = float(gamma)
    if allow_one:
        if not 0.0 <= g <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {gamma}")
    elif not 0.0 <= g < 1.0:
        why = f"; at {name}={gamma} discounted sums diverge" if g >= 1.0 else ""
        raise ValueError(f"{name} must be in [0, 1), got {gamma}{why}")
    return g


def parse_grid(layout: str) -> np.ndarray:
    """``[H, W]`` array of single characters from gridworld ASCII art, validated.

    The one layout parser of ``foresight.rl`` (:func:`gridworld` here, ``gridworlds.parse_layout``
    for the vectorised environments). Characters: ``#`` wall, ``.`` free, ``S`` start, ``G`` goal.
    Blank lines at either end are dropped; rows must be non-empty and of equal length.
    """
    rows = layout.strip("\n").splitlines()
    if not rows or any(len(r) != len(rows[0]) for r in rows):
        raise ValueError(f"layout rows must be non-empty and of equal length, got lengths {[len(r) for r in rows]}")
    bad = sorted({c for r in rows for c in r} - set(GRID_CHARS))
    if bad:
        raise ValueError(f"layout has unknown characters {bad}; use {', '.join(repr(c) for c in GRID_CHARS)}")
    return np.array([list(r) for r in rows])


# ------------------------------------------------------------------------------------------------
# the MDP
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class FiniteMDP:
    """A finite MDP. Validated on construction; bad inputs raise ValueError naming the value.

    Shapes: P [A, S, S'] (rows sum to 1), R [S, A], initial [S] (sums to 1); ``0 <= gamma <= 1``.
    """

    P: Tensor
    R: Tensor
    gamma: float
    initial: Tensor

    def __post_init__(self) -> None:
        if self.P.dim() != 3 or self.P.shape[1] != self.P.shape[2]:
            raise ValueError(f"P must have shape [A, S, S], got {tuple(self.P.shape)}")
        A, S = self.P.shape[0], self.P.shape[1]
        if A < 1 or S < 1:
            raise ValueError(f"P must have at least one action and one state, got shape {tuple(self.P.shape)}")
        _check_stochastic("P", self.P)
        if tuple(self.R.shape) != (S, A):
            raise ValueError(f"R must have shape [S, A] = [{S}, {A}], got {tuple(self.R.shape)}")
        if not torch.isfinite(self.R).all():
            raise ValueError("R has non-finite entries")
        check_discount(self.gamma, allow_one=True)
        if tuple(self.initial.shape) != (S,):
            raise ValueError(f"initial must have shape [S] = [{S}], got {tuple(self.initial.shape)}")
        _check_stochastic("initial", self.initial)

    @property
    def num_states(self) -> int:
        return self.P.shape[1]

    @property
    def num_actions(self) -> int:
        return self.P.shape[0]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_states={self.num_states}, num_actions={self.num_actions}, gamma={self.gamma})"
        )


@dataclass(frozen=True, eq=False, repr=False)
class GridWorld(FiniteMDP):
    """A FiniteMDP built from an ASCII layout; states are the free cells in row-major order.

    Extra fields: ``coords [S, 2]`` (row, col) of each state, ``layout`` (the ASCII text),
    ``goals [G]`` state indices of goal cells, ``height`` / ``width`` of the layout.
    """

    coords: Tensor = None  # type: ignore[assignment]  # [S, 2] long
    layout: str = ""
    goals: Tensor = None  # type: ignore[assignment]  # [G] long
    height: int = 0
    width: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.coords is None or tuple(self.coords.shape) != (self.num_states, 2):
            got = None if self.coords is None else tuple(self.coords.shape)
            raise ValueError(f"coords must have shape [S, 2] = [{self.num_states}, 2], got {got}")

    def to_grid(self, values: Tensor) -> Tensor:
        """Scatter per-state ``values [S]`` onto the layout ``[H, W]`` (NaN on walls), for plotting."""
        if tuple(values.shape) != (self.num_states,):
            raise ValueError(f"values must have shape [S] = [{self.num_states}], got {tuple(values.shape)}")
        grid = torch.full((self.height, self.width), float("nan"), dtype=values.dtype)
        grid[self.coords[:, 0], self.coords[:, 1]] = values
        return grid

    def pixel_observations(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """One image per state, ``[S, 2, H, W]``: channel 0 the walls, channel 1 the agent's cell."""
        walls = torch.from_numpy(parse_grid(self.layout) == "#").to(dtype)  # [H, W]
        obs = torch.zeros(self.num_states, 2, self.height, self.width, dtype=dtype)
        obs[:, 0] = walls
        obs[torch.arange(self.num_states), 1, self.coords[:, 0], self.coords[:, 1]] = 1.0
        return obs


# ------------------------------------------------------------------------------------------------
# random matrices
# ------------------------------------------------------------------------------------------------
def _standard_gamma(
    concentration: float, shape: tuple[int, ...], generator: torch.Generator | None, dtype: torch.dtype
) -> Tensor:
    """Gamma(concentration, 1) samples drawn with ``generator`` (torch's own sampler takes none).

    Marsaglia & Tsang (2000) rejection sampler, vectorised; for concentration < 1 the boost
    ``Gamma(a) = Gamma(a + 1) * U^(1/a)`` is used.
    """
    a = float(concentration)
    boost = a < 1.0
    a_eff = a + 1.0 if boost else a
    d = a_eff - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    n = int(np.prod(shape)) if shape else 1
    out = torch.empty(n, dtype=dtype)
    todo = torch.arange(n)
    while todo.numel():
        m = todo.numel()
        x = torch.randn(m, generator=generator, dtype=dtype)
        u = torch.rand(m, generator=generator, dtype=dtype)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        out[todo[ok]] = (d * v)[ok]
        todo = todo[~ok]
    if boost:
        u = torch.rand(n, generator=generator, dtype=dtype)
        out = out * u ** (1.0 / a)
    return out.reshape(shape)


def random_dirichlet(
    shape: tuple[int, ...],
    concentration: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = DTYPE,
) -> Tensor:
    """Symmetric Dirichlet(concentration) vectors along the last axis of ``shape``."""
    if not concentration > 0:
        raise ValueError(f"concentration must be > 0, got {concentration}")
    g = _standard_gamma(concentration, shape, generator, dtype)
    # tiny concentrations can underflow every coordinate of a row; keep such rows valid
    g = g.clamp_min(torch.finfo(dtype).tiny)
    return g / g.sum(-1, keepdim=True)


def random_transition_matrix(
    num_states: int, generator: torch.Generator | None = None, concentration: float = 1.0, dtype: torch.dtype = DTYPE
) -> Tensor:
    """``T [S, S]`` with i.i.d. Dirichlet(concentration) rows."""
    _check_positive_int("num_states", num_states)
    return random_dirichlet((num_states, num_states), concentration, generator, dtype)


def _sinkhorn(W: Tensor, *, symmetric: bool, tol: float = 1e-13, max_iters: int = 100_000) -> Tensor:
    """Scale a positive matrix to doubly stochastic (Sinkhorn-Knopp; the symmetric variant keeps W = Wᵀ)."""
    if symmetric:
        # x <- sqrt(x / (W x)) converges to x with x_i (W x)_i = 1, so diag(x) W diag(x) is symmetric
        # and doubly stochastic (Knight 2008).
        x = torch.ones(W.shape[0], dtype=W.dtype)
        for _ in range(max_iters):
            x = torch.sqrt(x / (W @ x))
            T = x[:, None] * W * x[None, :]
            if (T.sum(1) - 1).abs().max() < tol:
                break
        return 0.5 * (T + T.T)  # exactly symmetric; rows within tol of 1
    else:
        T = W.clone()
        for _ in range(max_iters):
            T = T / T.sum(1, keepdim=True)
            T = T / T.sum(0, keepdim=True)
            if (T.sum(1) - 1).abs().max() < tol:
                break
    return T / T.sum(1, keepdim=True)  # last row renormalisation: rows exact, columns within tol


def random_doubly_stochastic(
    num_states: int, generator: torch.Generator | None = None, concentration: float = 1.0, dtype: torch.dtype = DTYPE
) -> Tensor:
    """``T [S, S]`` with rows and columns summing to 1: Sinkhorn scaling of a Dirichlet-rowed matrix.

    The uniform distribution is stationary for such T, and the reverse kernel is ``Tᵀ``.
    """
    W = random_transition_matrix(num_states, generator, concentration, dtype)
    return _sinkhorn(W, symmetric=False)


def random_symmetric_transition(
    num_states: int, generator: torch.Generator | None = None, concentration: float = 1.0, dtype: torch.dtype = DTYPE
) -> Tensor:
    """Symmetric doubly-stochastic ``T [S, S]`` (a reversible chain with uniform stationary d).

    Built by symmetric Sinkhorn scaling of ``W + Wᵀ`` with W Dirichlet-rowed. Smaller
    ``concentration`` gives sparser rows and a more spread-out spectrum.
    """
    W = random_transition_matrix(num_states, generator, concentration, dtype)
    return _sinkhorn(W + W.T, symmetric=True)


def random_mdp(
    num_states: int,
    num_actions: int,
    *,
    concentration: float = 1.0,
    reward_std: float = 1.0,
    gamma: float = 0.9,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = DTYPE,
) -> FiniteMDP:
    """Dirichlet(concentration) transition rows, Gaussian(0, reward_std²) rewards, uniform start."""
    _check_positive_int("num_states", num_states)
    _check_positive_int("num_actions", num_actions)
    if reward_std < 0:
        raise ValueError(f"reward_std must be >= 0, got {reward_std}")
    P = random_dirichlet((num_actions, num_states, num_states), concentration, generator, dtype)
    R = reward_std * torch.randn(num_states, num_actions, generator=generator, dtype=dtype)
    initial = torch.full((num_states,), 1.0 / num_states, dtype=dtype)
    return FiniteMDP(P=P, R=R, gamma=gamma, initial=initial)


def chain_mdp(
    num_states: int, *, slip: float = 0.0, gamma: float = 0.9, reward: float = 1.0, dtype: torch.dtype = DTYPE
) -> FiniteMDP:
    """A chain 0 - 1 - ... - (S-1) with actions 0 = left, 1 = right.

    The move goes the other way with probability ``slip``; moves off either end stay put. Arriving
    at (or staying in) the right end pays ``reward``: ``R[s, a] = reward · P[a, s, S-1]``. Start: state 0.
    """
    _check_positive_int("num_states", num_states)
    if not 0.0 <= slip <= 1.0:
        raise ValueError(f"slip must be in [0, 1], got {slip}")
    S = num_states
    P = torch.zeros(2, S, S, dtype=dtype)
    for s in range(S):
        left, right = max(s - 1, 0), min(s + 1, S - 1)
        P[0, s, left] += 1 - slip
        P[0, s, right] += slip
        P[1, s, right] += 1 - slip
        P[1, s, left] += slip
    R = reward * P[:, :, S - 1].T.clone()
    initial = torch.zeros(S, dtype=dtype)
    initial[0] = 1.0
    return FiniteMDP(P=P, R=R, gamma=gamma, initial=initial)


def gridworld(
    layout: str,
    *,
    slip: float = 0.0,
    gamma: float = 0.99,
    goal_reward: float = 1.0,
    step_reward: float = 0.0,
    goal: str = "reward",
    dtype: torch.dtype = DTYPE,
) -> GridWorld:
    """A 4-action gridworld from ASCII art.

    Characters: ``#`` wall, ``.`` free, ``G`` goal (a free cell paying ``goal_reward`` on arrival),
    ``S`` start (a free cell; if none is given the start is uniform over free non-goal cells).
    Rows must be equal length. Actions (``GRID_ACTION_NAMES``): up, down, left, right; bumping into a
    wall or the border stays put. With probability ``slip`` a uniformly random action replaces the
    chosen one. Every step pays ``step_reward``.

    ``goal`` says what a goal cell does next:
      - ``"reward"``: nothing special - the agent moves on (an ergodic chain, good for spectra);
      - ``"absorb"``: the goal is absorbing and pays nothing more (episodic tasks);
      - ``"reset"``: every action from the goal jumps to the start distribution.
    """
    if goal not in ("reward", "absorb", "reset"):
        raise ValueError(f"goal must be 'reward', 'absorb' or 'reset', got {goal!r}")
    if not 0.0 <= slip <= 1.0:
        raise ValueError(f"slip must be in [0, 1], got {slip}")
    grid = parse_grid(layout)  # [H, W]
    H, W = grid.shape
    cells = [(i, j) for i in range(H) for j in range(W) if grid[i, j] != "#"]
    if not cells:
        raise ValueError("layout has no free cells")
    index = {c: s for s, c in enumerate(cells)}
    S, A = len(cells), len(GRID_ACTIONS)
    goal_states = [index[c] for c in cells if grid[c] == "G"]
    starts = [index[c] for c in cells if grid[c] == "S"]
    initial = torch.zeros(S, dtype=dtype)
    if starts:
        initial[starts] = 1.0 / len(starts)
    else:
        non_goal = [s for s in range(S) if s not in goal_states] or list(range(S))
        initial[non_goal] = 1.0 / len(non_goal)

    # deterministic moves first, then mix in the slip
    move = torch.zeros(A, S, S, dtype=dtype)
    for s, (i, j) in enumerate(cells):
        for a, (di, dj) in enumerate(GRID_ACTIONS):
            ni, nj = i + di, j + dj
            inside = 0 <= ni < H and 0 <= nj < W and grid[ni, nj] != "#"
            move[a, s, index[(ni, nj)] if inside else s] = 1.0
    P = (1 - slip) * move + slip * move.mean(0, keepdim=True)
    is_goal = torch.zeros(S, dtype=dtype)
    is_goal[goal_states] = 1.0
    if goal == "absorb":
        P[:, goal_states, :] = 0.0
        P[:, goal_states, goal_states] = 1.0
    elif goal == "reset":
        P[:, goal_states, :] = initial
    R = step_reward + goal_reward * torch.einsum("ast,t->sa", P, is_goal)
    if goal == "absorb":
        R[goal_states, :] = 0.0
    return GridWorld(
        P=P,
        R=R,
        gamma=gamma,
        initial=initial,
        coords=torch.tensor(cells, dtype=torch.long),
        layout="\n".join("".join(row) for row in grid),
        goals=torch.tensor(goal_states, dtype=torch.long),
        height=H,
        width=W,
    )


def four_rooms(
    *,
    goal_cell: tuple[int, int] | None = (7, 9),
    start_cell: tuple[int, int] | None = None,
    slip: float = 0.0,
    gamma: float = 0.99,
    goal: str = "reward",
    goal_reward: float = 1.0,
    step_reward: float = 0.0,
    dtype: torch.dtype = DTYPE,
) -> GridWorld:
    """Sutton's four-rooms (11x11 interior, 104 states) with an optional goal and start cell.

    Cells are (row, col) in the 13x13 layout including the outer wall; the default goal (7, 9) is the
    east hallway ("G1" in Sutton, Precup & Singh 1999). The other arguments are :func:`gridworld`'s.
    """
    grid = parse_grid(FOUR_ROOMS_LAYOUT)  # [13, 13]
    for name, cell, ch in (("goal_cell", goal_cell, "G"), ("start_cell", start_cell, "S")):
        if cell is None:
            continue
        i, j = cell
        if not (0 <= i < grid.shape[0] and 0 <= j < grid.shape[1]) or grid[i, j] != ".":
            raise ValueError(f"{name}={cell} is not a free cell of the four-rooms layout")
        grid[i, j] = ch
    return gridworld(
        "\n".join("".join(row) for row in grid),
        slip=slip,
        gamma=gamma,
        goal_reward=goal_reward,
        step_reward=step_reward,
        goal=goal,
        dtype=dtype,
    )


# ------------------------------------------------------------------------------------------------
# policies and exact evaluation
# ------------------------------------------------------------------------------------------------
def _check_policy(mdp: FiniteMDP, pi: Tensor) -> None:
    if tuple(pi.shape) != (mdp.num_states, mdp.num_actions):
        raise ValueError(f"pi must have shape [S, A] = [{mdp.num_states}, {mdp.num_actions}], got {tuple(pi.shape)}")
    _check_stochastic("pi", pi)


def uniform_policy(mdp: FiniteMDP) -> Tensor:
    """``pi [S, A]`` = 1/A everywhere."""
    return torch.full((mdp.num_states, mdp.num_actions), 1.0 / mdp.num_actions, dtype=mdp.P.dtype)


def greedy_policy(Q: Tensor, tol: float = 1e-9) -> Tensor:
    """``pi [S, A]`` uniform over the actions within ``tol`` of max_a Q[s, a] (ties split evenly)."""
    if Q.dim() != 2:
        raise ValueError(f"Q must have shape [S, A], got {tuple(Q.shape)}")
    best = (Q >= Q.max(1, keepdim=True).values - tol).to(Q.dtype)
    return best / best.sum(1, keepdim=True)


def policy_transition(mdp: FiniteMDP, pi: Tensor) -> Tensor:
    """``T[s, s'] = Σ_a pi[s, a] P[a, s, s']`` - [S, S]."""
    _check_policy(mdp, pi)
    return torch.einsum("sa,ast->st", pi.to(mdp.P.dtype), mdp.P)


def policy_reward(mdp: FiniteMDP, pi: Tensor) -> Tensor:
    """``r[s] = Σ_a pi[s, a] R[s, a]`` - [S]."""
    _check_policy(mdp, pi)
    return (pi.to(mdp.R.dtype) * mdp.R).sum(1)


def policy_evaluation(mdp: FiniteMDP, pi: Tensor) -> Tensor:
    """``V [S]`` solving ``(I - γ T_pi) V = r_pi`` exactly."""
    check_discount(mdp.gamma)
    T = policy_transition(mdp, pi)
    r = policy_reward(mdp, pi)
    eye = torch.eye(mdp.num_states, dtype=T.dtype)
    return torch.linalg.solve(eye - mdp.gamma * T, r)


def q_values(mdp: FiniteMDP, pi: Tensor) -> Tensor:
    """``Q [S, A] = R + γ Σ_s' P[a, s, s'] V_pi(s')``."""
    V = policy_evaluation(mdp, pi)
    return mdp.R + mdp.gamma * torch.einsum("ast,t->sa", mdp.P, V)


class ValueIterationResult(NamedTuple):
    values: Tensor  # V* [S]
    q: Tensor  # Q* [S, A]
    policy: Tensor  # greedy w.r.t. Q* [S, A]
    iterations: int


def value_iteration(mdp: FiniteMDP, *, tol: float = 1e-10, max_iters: int = 100_000) -> ValueIterationResult:
    """Optimal values by value iteration, stopped when the sup-norm change is below ``tol``."""
    check_discount(mdp.gamma)
    V = torch.zeros(mdp.num_states, dtype=mdp.P.dtype)
    iterations = 0
    for iterations in range(1, max_iters + 1):  # noqa: B007 - reported in the result
        Q = mdp.R + mdp.gamma * torch.einsum("ast,t->sa", mdp.P, V)
        V_new = Q.max(1).values
        delta = (V_new - V).abs().max().item()
        V = V_new
        if delta < tol:
            break
    Q = mdp.R + mdp.gamma * torch.einsum("ast,t->sa", mdp.P, V)
    return ValueIterationResult(V, Q, greedy_policy(Q), iterations)


# ------------------------------------------------------------------------------------------------
# Markov-chain quantities
# ------------------------------------------------------------------------------------------------
def stationary_distribution(T: Tensor) -> Tensor:
    """``d [S]`` with ``dᵀ T = dᵀ``, ``Σ d = 1`` (least squares; for reducible T one valid mixture)."""
    _check_square("T", T)
    _check_stochastic("T", T)
    S = T.shape[0]
    A = torch.cat([T.T - torch.eye(S, dtype=T.dtype), torch.ones(1, S, dtype=T.dtype)], 0)  # [S+1, S]
    b = torch.zeros(S + 1, dtype=T.dtype)
    b[-1] = 1.0
    d = torch.linalg.lstsq(A, b[:, None], driver="gelsd" if T.device.type == "cpu" else None).solution[:, 0]
    d = d.clamp_min(0.0)  # round-off can leave -1e-17 on unreachable states
    return d / d.sum()


def successor_representation(T: Tensor, gamma: float) -> Tensor:
    """``(I - γ T)⁻¹`` - [S, S]; row s is the expected discounted visit count from s."""
    _check_square("T", T)
    check_discount(gamma)
    eye = torch.eye(T.shape[0], dtype=T.dtype)
    return torch.linalg.solve(eye - gamma * T, eye)


def reverse_transition(T: Tensor, d: Tensor) -> Tensor:
    """The time reversal ``T̃[y, x] = d(x) T[x, y] / d'(y)`` with ``d' = dᵀ T`` (the law of x given y).

    Rows of y that ``d'`` never reaches are set uniform so the result stays stochastic.
    """
    _check_square("T", T)
    d_next = d @ T  # [S']
    joint = d[:, None] * T  # [S, S'] = Pr(x, y)
    rev = joint.T / d_next.clamp_min(torch.finfo(T.dtype).tiny)[:, None]
    unreached = d_next <= 0
    rev[unreached] = 1.0 / T.shape[0]
    return rev


# ------------------------------------------------------------------------------------------------
# spectra
# ------------------------------------------------------------------------------------------------
def eig_sorted(T: Tensor, by: str = "abs") -> tuple[Tensor, Tensor]:
    """Eigenvalues ``[S]`` and eigenvectors ``[S, S]`` (columns) of T, sorted descending.

    ``by="abs"`` sorts by |λ|, ``by="real"`` by Re λ. Symmetric T uses ``eigh`` (real, orthonormal
    eigenvectors). Otherwise ``eig`` is used and the result is real when every eigenvalue is real
    (|Im λ| < 1e-10), complex otherwise. Ties keep the solver's order.
    """
    _check_square("T", T)
    if by not in ("abs", "real"):
        raise ValueError(f"by must be 'abs' or 'real', got {by!r}")
    if torch.allclose(T, T.T, atol=1e-12, rtol=0):
        lam, vec = torch.linalg.eigh(0.5 * (T + T.T))
    else:
        lam, vec = torch.linalg.eig(T)
        if lam.imag.abs().max() < 1e-10:
            lam, vec = lam.real, vec.real
    key = lam.abs() if by == "abs" else lam.real
    order = torch.argsort(key, descending=True, stable=True)
    return lam[order], vec[:, order]


def top_eigvecs(T: Tensor, k: int, by: str = "abs") -> Tensor:
    """The first k eigenvectors of :func:`eig_sorted` - [S, k] (complex when those eigenvalues are)."""
    _check_positive_int("k", k)
    if k > T.shape[0]:
        raise ValueError(f"k={k} exceeds the number of states {T.shape[0]}")
    return eig_sorted(T, by)[1][:, :k]


def top_singular_vectors(M: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k singular triplets: ``U_k [m, k]``, ``s_k [k]`` (descending), ``V_k [n, k]`` with M ≈ U diag(s) Vᵀ."""
    _check_positive_int("k", k)
    if M.dim() != 2 or k > min(M.shape):
        raise ValueError(f"k={k} must be <= min(M.shape)={min(M.shape) if M.dim() == 2 else None}")
    U, s, Vh = torch.linalg.svd(M, full_matrices=False)
    return U[:, :k], s[:k], Vh[:k].mH


# ------------------------------------------------------------------------------------------------
# subspace metrics
# ------------------------------------------------------------------------------------------------
def orthonormal_basis(Phi: Tensor, rtol: float = 1e-10) -> Tensor:
    """An orthonormal basis ``Q [S, r]`` of span(Phi), r = numerical rank (singular values > rtol·max)."""
    if Phi.dim() != 2:
        raise ValueError(f"Phi must have shape [S, k], got {tuple(Phi.shape)}")
    U, s, _ = torch.linalg.svd(Phi, full_matrices=False)
    if s.numel() == 0 or s[0] == 0:
        return U[:, :0]
    return U[:, s > rtol * s[0]]


def principal_angles(A: Tensor, B: Tensor) -> Tensor:
    """Principal angles (radians, ascending) between span(A) and span(B); min(rank A, rank B) of them."""
    if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[0]:
        raise ValueError(f"A and B must be [S, k1] and [S, k2] with the same S, got {tuple(A.shape)}, {tuple(B.shape)}")
    Qa, Qb = orthonormal_basis(A), orthonormal_basis(B)
    cos = torch.linalg.svdvals(Qa.mH @ Qb).clamp(0.0, 1.0)  # descending cosines -> ascending angles
    return torch.arccos(cos)


def alignment(U_k: Tensor, Phi: Tensor) -> Tensor:
    """``‖U_kᵀ Q‖²_F / k`` with Q an orthonormal basis of span(Phi): the mean squared cosine of the
    principal angles between span(U_k) and span(Phi).

    1 iff span(U_k) ⊆ span(Phi); invariant to the basis chosen for either. U_k is orthonormalised
    first (a no-op for singular/eigh vectors; needed for the non-orthogonal eigenvectors of a
    non-symmetric T), and k is its rank.
    """
    if U_k.dim() != 2 or Phi.dim() != 2 or U_k.shape[0] != Phi.shape[0]:
        raise ValueError(
            f"U_k and Phi must be [S, k] and [S, m] with the same S, got {tuple(U_k.shape)}, {tuple(Phi.shape)}"
        )
    Qu, Q = orthonormal_basis(U_k), orthonormal_basis(Phi.to(U_k.dtype))
    if Qu.shape[1] == 0:
        raise ValueError("U_k has rank 0")
    return (Qu.mH @ Q).abs().pow(2).sum() / Qu.shape[1]


# ------------------------------------------------------------------------------------------------
# samplers
# ------------------------------------------------------------------------------------------------
def sample_transitions(
    T: Tensor,
    d: Tensor,
    n: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """``x [n] ~ d`` and ``y [n] ~ T(·|x)`` as long state indices."""
    _check_square("T", T)
    _check_positive_int("n", n)
    if tuple(d.shape) != (T.shape[0],):
        raise ValueError(f"d must have shape [S] = [{T.shape[0]}], got {tuple(d.shape)}")
    x = torch.multinomial(d, n, replacement=True, generator=generator)
    y = torch.multinomial(T[x], 1, generator=generator)[:, 0]
    return x, y


def sample_mdp_transitions(
    mdp: FiniteMDP, pi: Tensor, d: Tensor, n: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``s ~ d``, ``a ~ pi(·|s)``, ``r = R[s, a]`` (expected reward), ``s2 ~ P[a, s, ·]`` - each [n]."""
    _check_policy(mdp, pi)
    _check_positive_int("n", n)
    if tuple(d.shape) != (mdp.num_states,):
        raise ValueError(f"d must have shape [S] = [{mdp.num_states}], got {tuple(d.shape)}")
    s = torch.multinomial(d, n, replacement=True, generator=generator)
    a = torch.multinomial(pi[s], 1, generator=generator)[:, 0]
    s2 = torch.multinomial(mdp.P[a, s], 1, generator=generator)[:, 0]
    return s, a, mdp.R[s, a], s2


# ------------------------------------------------------------------------------------------------
# gymnasium wrapper
# ------------------------------------------------------------------------------------------------
class FiniteMDPEnv(gym.Env):
    """A gymnasium environment that samples a :class:`FiniteMDP`.

    ``obs="index"`` gives ``Discrete(S)`` observations, ``"onehot"`` a float32 ``Box(0, 1, (S,))``.
    The reward is ``R[s, a]`` unless ``reward_fn(s, a, s2) -> float`` is given. Episodes truncate after
    ``max_steps``; they terminate on entering one of ``terminal_states``. ``info["state"]`` is the index.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        mdp: FiniteMDP,
        max_steps: int = 100,
        obs: str = "index",
        reward_fn: Callable[[int, int, int], float] | None = None,
        terminal_states: tuple[int, ...] = (),
    ) -> None:
        if obs not in ("index", "onehot"):
            raise ValueError(f"obs must be 'index' or 'onehot', got {obs!r}")
        _check_positive_int("max_steps", max_steps)
        bad = [s for s in terminal_states if not 0 <= s < mdp.num_states]
        if bad:
            raise ValueError(f"terminal_states {bad} are not states of an MDP with {mdp.num_states} states")
        self.mdp, self.max_steps, self.obs_kind, self.reward_fn = mdp, max_steps, obs, reward_fn
        self.terminal = frozenset(int(s) for s in terminal_states)
        S = mdp.num_states
        self.action_space = gym.spaces.Discrete(mdp.num_actions)
        self.observation_space = (
            gym.spaces.Discrete(S) if obs == "index" else gym.spaces.Box(0.0, 1.0, (S,), dtype=np.float32)
        )
        self._P = mdp.P.detach().cpu().double().numpy()
        self._R = mdp.R.detach().cpu().double().numpy()
        self._init = mdp.initial.detach().cpu().double().numpy()
        self.state, self.steps = 0, 0

    def _obs(self) -> Any:
        if self.obs_kind == "index":
            return int(self.state)
        o = np.zeros(self.mdp.num_states, dtype=np.float32)
        o[self.state] = 1.0
        return o

    def _draw(self, p: np.ndarray) -> int:
        return int(self.np_random.choice(len(p), p=p / p.sum()))

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.state, self.steps = self._draw(self._init), 0
        return self._obs(), {"state": self.state}

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict]:
        a = int(action)
        if not 0 <= a < self.mdp.num_actions:
            raise ValueError(f"action {action} is not in [0, {self.mdp.num_actions})")
        s = self.state
        s2 = self._draw(self._P[a, s])
        r = float(self.reward_fn(s, a, s2)) if self.reward_fn is not None else float(self._R[s, a])
        self.state, self.steps = s2, self.steps + 1
        terminated = s2 in self.terminal
        truncated = self.steps >= self.max_steps and not terminated
        return self._obs(), r, terminated, truncated, {"state": s2}


__all__ = [
    "DTYPE",
    "FOUR_ROOMS_LAYOUT",
    "GRID_ACTIONS",
    "GRID_ACTION_NAMES",
    "GRID_CHARS",
    "FiniteMDP",
    "FiniteMDPEnv",
    "GridWorld",
    "ValueIterationResult",
    "alignment",
    "chain_mdp",
    "check_discount",
    "eig_sorted",
    "four_rooms",
    "greedy_policy",
    "gridworld",
    "orthonormal_basis",
    "parse_grid",
    "policy_evaluation",
    "policy_reward",
    "policy_transition",
    "principal_angles",
    "q_values",
    "random_dirichlet",
    "random_doubly_stochastic",
    "random_mdp",
    "random_symmetric_transition",
    "random_transition_matrix",
    "reverse_transition",
    "sample_mdp_transitions",
    "sample_transitions",
    "stationary_distribution",
    "successor_representation",
    "top_eigvecs",
    "top_singular_vectors",
    "uniform_policy",
    "value_iteration",
]
