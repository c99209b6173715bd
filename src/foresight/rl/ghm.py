"""Geometric horizon models (GHMs), geometric switching policies, their composition, and GGPI.

Thakoor, Rowland, Borsa, Dabney, Munos & Barreto, "Generalised Policy Improvement with Geometric
Policy Composition", ICML 2022 (arXiv 2206.08736). Derivations: docs/ggpi.md.

Conventions (used everywhere in this module):

- A GHM starts at the *next* state (docs/ggpi.md, "Definitions"):
  ``m^π_γ(s⁺ | s, a) = (1 − γ) Σ_{t≥0} γ^t Pr(S_{t+1} = s⁺ | S_0 = s, A_0 = a, π)``.
  Tabular: ``M_π = (1 − γ) P_π (I − γ P_π)⁻¹`` (state version), rows sum to 1.
- Rewards are paid on arrival, ``r(s⁺)``, so ``Q(s, a) = (1 − γ)⁻¹ Σ_{s⁺} m(s⁺|s, a) r(s⁺)``. This equals
  ``foresight.rl.mdp.q_values`` on the MDP whose ``R[s, a] = Σ_{s'} P[a, s, s'] r(s')``
  (:func:`with_arrival_reward`).
- A geometric switching policy ``ν = (π_{k_1}, …, π_{k_L})`` follows ``π_{k_i}``; after every step it
  *continues* with probability ``α_i`` and otherwise switches to ``π_{k_{i+1}}``; the last policy is
  followed forever. It is composed from GHMs at discounts ``β_i = γ α_i`` (``β_L = γ``). The composition
  functions take ``betas`` directly, so the continue-vs-switch convention cannot be confused (the
  paper's α may be the switch probability: docs/ggpi.md, "Geometric switching policies and their composition").

Axis legend: A actions, S states (S⁺ predicted states), B batch, H model heads (one per (policy,
discount) pair), K mixture components, D continuous state dimension, N switching policies, L length
of a switching sequence, n Monte-Carlo samples.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foresight.nn.ema import ema_update, make_target
from foresight.rl.mdp import FiniteMDP, check_discount, greedy_policy, policy_transition, q_values, value_iteration

# ------------------------------------------------------------------------------------------------
# validation helpers
# ------------------------------------------------------------------------------------------------


def _check_reward(mdp: FiniteMDP, r: Tensor) -> None:
    if tuple(r.shape) != (mdp.num_states,):
        raise ValueError(
            f"r must be a per-state arrival reward of shape [S] = [{mdp.num_states}], got {tuple(r.shape)}"
        )


def with_arrival_reward(mdp: FiniteMDP, r: Tensor, gamma: float | None = None) -> FiniteMDP:
    """The same dynamics with ``R[s, a] = Σ_{s'} P[a, s, s'] r(s')``: reward ``r`` paid on arrival.

    ``q_values(with_arrival_reward(mdp, r), pi)`` is then the Q-function that GHMs predict.
    """
    _check_reward(mdp, r)
    R = torch.einsum("ast,t->sa", mdp.P, r.to(mdp.P.dtype))
    return FiniteMDP(P=mdp.P, R=R, gamma=mdp.gamma if gamma is None else gamma, initial=mdp.initial)


# ------------------------------------------------------------------------------------------------
# exact tabular GHMs
# ------------------------------------------------------------------------------------------------


def state_ghm(T: Tensor, gamma: float) -> Tensor:
    """``M = (1 − γ) T (I − γ T)⁻¹`` - [S, S⁺]: the GHM of a Markov chain, starting at the next state."""
    if T.dim() != 2 or T.shape[0] != T.shape[1]:
        raise ValueError(f"T must be a square matrix [S, S], got shape {tuple(T.shape)}")
    check_discount(gamma)
    eye = torch.eye(T.shape[0], dtype=T.dtype)
    # T and (I − γT)⁻¹ commute, so solving (I − γT) M = (1 − γ) T is the same product.
    return torch.linalg.solve(eye - gamma * T, (1 - gamma) * T)


def ghm(mdp: FiniteMDP, pi: Tensor, gamma: float) -> Tensor:
    """Exact state-action GHM ``m^π_γ`` - [S, A, S⁺], from the Bellman equation (docs/ggpi.md, "Definitions"):

    ``m(·|s, a) = Σ_{s'} P(s'|s, a) [(1 − γ) e_{s'} + γ M_π(s', ·)]`` with ``M_π`` the state GHM.
    ``gamma`` is the model's own discount (it need not be ``mdp.gamma``).
    """
    check_discount(gamma)
    M_state = state_ghm(policy_transition(mdp, pi), gamma)  # [S', S⁺]
    eye = torch.eye(mdp.num_states, dtype=M_state.dtype)
    return torch.einsum("ast,tu->sau", mdp.P, (1 - gamma) * eye + gamma * M_state)


def ghm_q_values(M: Tensor, r: Tensor, gamma: float) -> Tensor:
    """``Q[s, a] = (1 − γ)⁻¹ Σ_{s⁺} M[s, a, s⁺] r(s⁺)`` - [S, A] (the GHM's discount is ``gamma``)."""
    check_discount(gamma)
    if M.dim() != 3 or M.shape[-1] != r.shape[-1]:
        raise ValueError(f"M must be [S, A, S⁺] with S⁺ = len(r) = {r.shape[-1]}, got {tuple(M.shape)}")
    return (M @ r.to(M.dtype)) / (1 - gamma)


def sample_geometric_horizon(gamma: float, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``H [n]`` on {1, 2, …} with ``P(H = h) = (1 − γ) γ^{h−1}`` (long)."""
    check_discount(gamma)
    if gamma == 0:
        return torch.ones(n, dtype=torch.long)
    u = torch.rand(n, generator=generator, dtype=torch.float64).clamp_min(1e-300)
    return 1 + torch.floor(torch.log(u) / math.log(gamma)).long()


def sample_ghm(
    mdp: FiniteMDP, pi: Tensor, gamma: float, s: int, a: int, n: int, generator: torch.Generator | None = None
) -> Tensor:
    """``n`` draws ``s⁺ ~ m^π_γ(·|s, a)`` by rolling out ``H ~ Geometric(1 − γ)`` steps (docs/ggpi.md, "Definitions").

    Independent of :func:`ghm` (no linear algebra), so tests can check the closed form against it.
    """
    H = sample_geometric_horizon(gamma, n, generator)  # [n]
    state = torch.full((n,), s, dtype=torch.long)
    action = torch.full((n,), a, dtype=torch.long)
    out = torch.empty(n, dtype=torch.long)
    for t in range(1, int(H.max()) + 1):
        state = torch.multinomial(mdp.P[action, state], 1, generator=generator)[:, 0]
        done = H == t
        out[done] = state[done]
        action = torch.multinomial(pi[state].to(torch.float64), 1, generator=generator)[:, 0]
    return out


# ------------------------------------------------------------------------------------------------
# geometric switching policies and their composition
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SwitchingPolicy:
    """``ν = (π_{sequence[0]}, …, π_{sequence[-1]})`` over a list of base policies.

    ``continue_probs[i]`` is α_i, the probability of *continuing* with ``sequence[i]`` after each
    step (one per policy but the last, which runs forever). ``betas(γ)`` gives ``β_i = γ α_i`` and
    ``β_L = γ``: the discounts of the GHMs the composition needs.
    """

    sequence: tuple[int, ...]
    continue_probs: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if len(self.sequence) == 0:
            raise ValueError("sequence must name at least one base policy, got ()")
        if any(k < 0 for k in self.sequence):
            raise ValueError(f"sequence holds base-policy indices >= 0, got {self.sequence}")
        if len(self.continue_probs) != len(self.sequence) - 1:
            raise ValueError(
                f"continue_probs needs one value per policy but the last "
                f"({len(self.sequence) - 1}), got {self.continue_probs}"
            )
        bad = [p for p in self.continue_probs if not 0.0 <= p <= 1.0]
        if bad:
            raise ValueError(f"continue_probs must be in [0, 1], got {bad}")

    def __len__(self) -> int:
        return len(self.sequence)

    def betas(self, gamma: float) -> tuple[float, ...]:
        return tuple(gamma * p for p in self.continue_probs) + (gamma,)

    def tail(self) -> SwitchingPolicy:
        """ν without its first policy (what runs after the first switch)."""
        if len(self) == 1:
            raise ValueError(f"{self} has no tail: it holds a single policy")
        return SwitchingPolicy(self.sequence[1:], self.continue_probs[1:])

    def __str__(self) -> str:
        parts = [f"π{self.sequence[0]}"]
        for k, p in zip(self.sequence[1:], self.continue_probs):
            parts.append(f"-({p:g})->π{k}")
        return "".join(parts)


def composition_weights(betas: Sequence[float], gamma: float) -> tuple[Tensor, Tensor]:
    """``w_i = (1 − γ)/(1 − β_i)`` and ``c_i = (γ − β_i)/(1 − β_i)`` - each [L]
    (docs/ggpi.md, "Geometric switching policies and their composition").

    ``w_i + c_i = 1``; the term of the expansion that ends in ``m_k`` has weight ``c_1 ⋯ c_{k−1} w_k``.
    """
    check_discount(gamma)
    if len(betas) == 0:
        raise ValueError("betas must hold at least one discount, got ()")
    bad = [b for b in betas if not 0.0 <= b <= gamma]
    if bad:
        raise ValueError(f"every beta must be in [0, gamma={gamma}], got {bad}")
    if not math.isclose(betas[-1], gamma, rel_tol=0, abs_tol=1e-12):
        raise ValueError(f"the last policy runs forever, so betas[-1] must equal gamma={gamma}, got {betas[-1]}")
    b = torch.tensor([float(x) for x in betas], dtype=torch.float64)
    return (1 - gamma) / (1 - b), (gamma - b) / (1 - b)


def _check_chain(ghms: Sequence[Tensor], policies: Sequence[Tensor], betas: Sequence[float]) -> None:
    if not (len(ghms) == len(policies) == len(betas)):
        raise ValueError(
            f"ghms, policies and betas must have one entry per policy of ν, got lengths "
            f"{len(ghms)}, {len(policies)}, {len(betas)}"
        )


def compose_ghms(ghms: Sequence[Tensor], policies: Sequence[Tensor], betas: Sequence[float], gamma: float) -> Tensor:
    """The occupancy ``μ_ν`` [S, A, S⁺] of a switching policy, by composing its base GHMs
    (docs/ggpi.md, "Geometric switching policies and their composition").

    ``μ_ν = w_1 m_1 + c_1 m_1 ∘ [w_2 m_2 + c_2 m_2 ∘ [… m_L]]``, where ``m_i = ghms[i]`` [S, A, S⁺] is
    the GHM of ``policies[i]`` [S, A] at discount ``betas[i]``, and ``m ∘ X`` draws s' ~ m, then
    a' ~ π_{i+1}(·|s'), then continues with X(·|s', a'). No further learning: only products.
    """
    _check_chain(ghms, policies, betas)
    w, c = composition_weights(betas, gamma)
    X = None  # [S', S⁺]: the occupancy of the remaining sequence, averaged over its first policy's action
    mu = None
    for i in reversed(range(len(ghms))):
        m = ghms[i]
        mu = w[i].to(m.dtype) * m if X is None else w[i].to(m.dtype) * m + c[i].to(m.dtype) * (m @ X)
        X = torch.einsum("sa,sau->su", policies[i].to(mu.dtype), mu)
    return mu


def composed_q_values(
    ghms: Sequence[Tensor], policies: Sequence[Tensor], betas: Sequence[float], gamma: float, r: Tensor
) -> Tensor:
    """``Q^ν [S, A] = (1 − γ)⁻¹ μ_ν r``, computed backwards on values (matrix-vector products only).

    ``Q_i = w_i (1 − γ)⁻¹ m_i r + c_i m_i V_{i+1}``, with
    ``V_{i+1}(s') = Σ_a' π_{i+1}(a'|s') Q_{i+1}(s', a')``.
    """
    _check_chain(ghms, policies, betas)
    w, c = composition_weights(betas, gamma)
    V = None  # [S']
    Q = None
    for i in reversed(range(len(ghms))):
        m = ghms[i]
        Q = w[i].to(m.dtype) * (m @ r.to(m.dtype)) / (1 - gamma)
        if V is not None:
            Q = Q + c[i].to(m.dtype) * (m @ V)
        V = (policies[i].to(Q.dtype) * Q).sum(1)
    return Q


def augmented_chain(
    mdp: FiniteMDP,
    policies: Sequence[Tensor],
    continue_probs: Sequence[float],
) -> tuple[FiniteMDP, Tensor]:
    """The switching policy as a Markov policy on the (state, phase) MDP - the brute-force reference.

    Augmented state ``(s, i)`` has index ``i·S + s``. ``P_aug[a, (s, i), (s', j)] = P[a, s, s'] φ(i → j)``
    with ``φ(i → i) = α_i``, ``φ(i → i+1) = 1 − α_i`` (the last phase absorbs), and the augmented
    policy is ``π_i`` in phase i. Returns the augmented MDP (reward 0, start in phase 0) and
    ``pi_aug [L·S, A]``. Nothing here uses the composition weights.
    """
    L, S, A = len(policies), mdp.num_states, mdp.num_actions
    if len(continue_probs) != L - 1:
        raise ValueError(f"continue_probs needs {L - 1} values, got {tuple(continue_probs)}")
    phase = torch.zeros(L, L, dtype=mdp.P.dtype)  # φ [phase, next phase]
    for i in range(L - 1):
        phase[i, i], phase[i, i + 1] = continue_probs[i], 1 - continue_probs[i]
    phase[L - 1, L - 1] = 1.0
    # [A, (i, s), (j, s')] = φ[i, j] P[a, s, s']
    P_aug = torch.einsum("ij,ast->aisjt", phase, mdp.P).reshape(A, L * S, L * S)
    initial = torch.cat([mdp.initial, torch.zeros((L - 1) * S, dtype=mdp.P.dtype)])
    aug = FiniteMDP(P=P_aug, R=torch.zeros(L * S, A, dtype=mdp.P.dtype), gamma=mdp.gamma, initial=initial)
    return aug, torch.cat([p.to(mdp.P.dtype) for p in policies], 0)


def augmented_chain_ghm(
    mdp: FiniteMDP, policies: Sequence[Tensor], continue_probs: Sequence[float], gamma: float
) -> Tensor:
    """``μ_ν`` [S, A, S⁺] from the exact GHM of the augmented (state, phase) chain, phases summed out."""
    aug, pi_aug = augmented_chain(mdp, policies, continue_probs)
    S = mdp.num_states
    M_aug = ghm(aug, pi_aug, gamma)  # [(i, s), A, (j, s⁺)]
    L = len(policies)
    return M_aug[:S].reshape(S, mdp.num_actions, L, S).sum(2)  # start in phase 0, marginalise the phase


# ------------------------------------------------------------------------------------------------
# sets of switching policies, their values, GPI and GGPI
# ------------------------------------------------------------------------------------------------


def switching_set(num_base: int, max_len: int, continue_probs: Sequence[float] = (0.9,)) -> list[SwitchingPolicy]:
    """Every switching policy of length ``<= max_len`` over ``num_base`` base policies, with no policy
    repeated back-to-back and every switch using one of ``continue_probs``.

    The set is closed under :meth:`SwitchingPolicy.tail` (it holds every suffix of its members), the
    condition under which the GGPI inequality ``Q^{π'} ≥ max_ν Q^ν`` is proved (see :func:`ggpi_policy`).
    Length-1 members are the base policies themselves, so GPI's set is included.
    """
    if num_base < 1 or max_len < 1:
        raise ValueError(f"num_base and max_len must be >= 1, got {num_base}, {max_len}")
    out = []
    for length in range(1, max_len + 1):
        for seq in itertools.product(range(num_base), repeat=length):
            if any(a == b for a, b in zip(seq, seq[1:])):
                continue
            for probs in itertools.product(continue_probs, repeat=length - 1):
                out.append(SwitchingPolicy(seq, tuple(probs)))
    return out


def is_suffix_closed(policies: Sequence[SwitchingPolicy]) -> bool:
    """True when the tail of every multi-policy member is also a member."""
    members = set(policies)
    return all(len(nu) == 1 or nu.tail() in members for nu in policies)


def required_models(policies: Sequence[SwitchingPolicy], gamma: float) -> list[tuple[int, float]]:
    """The (base policy, discount) pairs whose GHMs the set needs, sorted. For one continue probability
    α these are the "two horizons" γα and γ of each base policy
    (docs/ggpi.md, "Geometric switching policies and their composition")."""
    keys = {(k, round(b, 12)) for nu in policies for k, b in zip(nu.sequence, nu.betas(gamma))}
    return sorted(keys)


def switching_q_values(
    ghms: Mapping[tuple[int, float], Tensor],
    base_policies: Sequence[Tensor],
    policies: Sequence[SwitchingPolicy],
    gamma: float,
    r: Tensor,
) -> Tensor:
    """``Q^ν`` [N, S, A] for every ν in ``policies``, composed from ``ghms[(k, β)]`` [S, A, S⁺].

    The GHMs may be exact (:func:`ghm`) or learned; the values of shared suffixes are computed once.
    """
    cache: dict[SwitchingPolicy, Tensor] = {}

    def q_of(nu: SwitchingPolicy) -> Tensor:
        if nu in cache:
            return cache[nu]
        betas = nu.betas(gamma)
        key = (nu.sequence[0], round(betas[0], 12))
        if key not in ghms:
            raise ValueError(f"no GHM for base policy {key[0]} at discount {key[1]} (needed by {nu})")
        m = ghms[key]
        w, c = composition_weights(betas, gamma)
        Q = w[0].to(m.dtype) * (m @ r.to(m.dtype)) / (1 - gamma)
        if len(nu) > 1:
            tail = nu.tail()
            V = (base_policies[tail.sequence[0]].to(m.dtype) * q_of(tail)).sum(1)  # [S']
            Q = Q + c[0].to(m.dtype) * (m @ V)
        cache[nu] = Q
        return Q

    return torch.stack([q_of(nu) for nu in policies])


def gpi_policy(q_values: Tensor, tol: float = 1e-9) -> Tensor:
    """``π'(s) ∈ argmax_a max_n Q_n(s, a)`` - [S, A] from ``q_values`` [N, S, A] (ties split evenly).

    With one Q per base policy this is GPI; with one Q per switching policy it is GGPI. For a set of
    switching policies closed under tails, ``Q^{π'} ≥ max_ν Q^ν`` holds pointwise: the Bellman step
    ``Q^ν(s, a) = E[r + γ(α Q^ν(s', π_1) + (1 − α) Q^{tail ν}(s', π_2))]`` is bounded by
    ``E[r + γ max_{ν'} max_a' Q^{ν'}(s', a')]``, and monotonicity of ``T^{π'}`` does the rest. Without
    the tails the inequality can fail (see the tests and the experiment notes).
    """
    if q_values.dim() != 3:
        raise ValueError(f"q_values must have shape [N, S, A], got {tuple(q_values.shape)}")
    return greedy_policy(q_values.max(0).values, tol=tol)


ggpi_policy = gpi_policy


# ------------------------------------------------------------------------------------------------
# learned GHMs: the TD target, tabular TD, categorical neural GHMs
# ------------------------------------------------------------------------------------------------


def ghm_td_target(m_next: Tensor, s_next: Tensor, gamma: float | Tensor) -> Tensor:
    """The categorical TD target ``(1 − γ) e_{s'} + γ m̄(·|s', a')`` - [B, S⁺] (docs/ggpi.md, "Definitions").

    ``m_next`` [B, S⁺] is the (target) model at (s', a') - already averaged over a' ~ π(·|s') when the
    expected target is wanted; ``s_next`` [B] long; ``gamma`` a float or [B] tensor. No gradient flows
    into the target.
    """
    if m_next.dim() != 2 or s_next.shape != m_next.shape[:1]:
        raise ValueError(f"m_next must be [B, S] and s_next [B], got {tuple(m_next.shape)}, {tuple(s_next.shape)}")
    g = torch.as_tensor(gamma, dtype=m_next.dtype)
    g = g[:, None] if g.dim() == 1 else g
    onehot = F.one_hot(s_next, m_next.shape[1]).to(m_next.dtype)
    return ((1 - g) * onehot + g * m_next).detach()


def ghm_bellman_operator(M: Tensor, mdp: FiniteMDP, pi: Tensor, gamma: float) -> Tensor:
    """The expected TD update, ``(𝒯M)(·|s, a) =``
    ``Σ_{s'} P(s'|s, a)[(1 − γ) e_{s'} + γ Σ_a' π(a'|s') M(·|s', a')]``.

    A γ-contraction in the sup-norm over rows; its fixed point is :func:`ghm`.
    """
    check_discount(gamma)
    M_state = torch.einsum("sa,sau->su", pi.to(M.dtype), M)  # [S', S⁺]
    eye = torch.eye(mdp.num_states, dtype=M.dtype)
    return torch.einsum("ast,tu->sau", mdp.P.to(M.dtype), (1 - gamma) * eye + gamma * M_state)


def ghm_td_fixed_point(
    mdp: FiniteMDP, pi: Tensor, gamma: float, *, tol: float = 1e-13, max_iters: int = 100_000
) -> tuple[Tensor, int]:
    """Iterate :func:`ghm_bellman_operator` from the uniform model until the change is below ``tol``."""
    S, A = mdp.num_states, mdp.num_actions
    M = torch.full((S, A, S), 1.0 / S, dtype=mdp.P.dtype)
    for it in range(1, max_iters + 1):
        M_new = ghm_bellman_operator(M, mdp, pi, gamma)
        delta = (M_new - M).abs().max().item()
        M = M_new
        if delta < tol:
            return M, it
    return M, max_iters


def total_variation(M: Tensor, M_ref: Tensor) -> Tensor:
    """Mean over rows of ``½ Σ_{s⁺} |M − M_ref|`` - a scalar in [0, 1] (rows are distributions)."""
    return 0.5 * (M - M_ref).abs().sum(-1).mean()


@dataclass
class TDTrace:
    """Error of a learned GHM against the exact one, logged during training."""

    steps: list[int] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)  # mean total variation to the exact GHM


def _uniform_state_actions(S: int, A: int, n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    return (torch.randint(S, (n,), generator=generator), torch.randint(A, (n,), generator=generator))


def tabular_td_ghm(
    mdp: FiniteMDP,
    policies: Tensor,
    gammas: Sequence[float],
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 0.5,
    lr_decay: float = 0.0,
    target_period: int = 0,
    generator: torch.Generator | None = None,
    reference: Tensor | None = None,
    log_every: int = 50,
) -> tuple[Tensor, TDTrace]:
    """Tabular TD learning of H GHMs at once: ``M [H, S, A, S⁺]``, head h = ``m^{π_h}_{γ_h}``.

    ``policies`` [H, S, A]. Each step draws ``batch_size`` pairs (s, a) uniformly and s' ~ P(·|s, a)
    (shared by every head: GHM learning is off-policy) and moves each row towards
    :func:`ghm_td_target`, with the expectation over a' ~ π_h(·|s'). ``target_period = 0`` bootstraps
    from the current table (no target network); ``k > 0`` from a copy refreshed every k steps. The
    step size is ``lr / (1 + t·lr_decay)`` (Robbins–Monro when ``lr_decay > 0``); repeated pairs in a
    batch share one averaged update. The table starts uniform. ``reference`` [H, S, A, S⁺] (the exact
    GHMs) logs the mean total-variation error every ``log_every`` steps.
    """
    H = len(gammas)
    S, A = mdp.num_states, mdp.num_actions
    if tuple(policies.shape) != (H, S, A):
        raise ValueError(f"policies must be [H, S, A] = [{H}, {S}, {A}] (one per gamma), got {tuple(policies.shape)}")
    for g in gammas:
        check_discount(g)
    if steps < 0 or batch_size < 1 or target_period < 0 or log_every < 1 or not 0 < lr <= 1:
        raise ValueError(
            f"need steps >= 0, batch_size >= 1, target_period >= 0, log_every >= 1, 0 < lr <= 1; "
            f"got steps={steps}, batch_size={batch_size}, target_period={target_period}, "
            f"log_every={log_every}, lr={lr}"
        )
    dtype = mdp.P.dtype
    M = torch.full((H, S, A, S), 1.0 / S, dtype=dtype)
    M_target = M.clone()
    policies = policies.to(dtype)
    g = torch.tensor(list(gammas), dtype=dtype)[:, None, None]  # [H, 1, 1]
    trace = TDTrace()
    for t in range(steps + 1):
        if reference is not None and t % log_every == 0:
            trace.steps.append(t)
            trace.errors.append(total_variation(M, reference).item())
        if t == steps:
            break
        s, a = _uniform_state_actions(S, A, batch_size, generator)
        s2 = torch.multinomial(mdp.P[a, s], 1, generator=generator)[:, 0]  # [B]
        boot = M_target if target_period > 0 else M
        M_state = torch.einsum("hsa,hsau->hsu", policies, boot)  # [H, S', S⁺]: a' ~ π_h in expectation
        onehot = F.one_hot(s2, S).to(dtype)  # [B, S⁺]
        y = (1 - g) * onehot + g * M_state[:, s2]  # ghm_td_target for every head - [H, B, S⁺]
        delta = y - M[:, s, a]  # [H, B, S⁺]
        flat = s * A + a
        total = torch.zeros(H, S * A, S, dtype=dtype).index_add_(1, flat, delta)
        count = torch.zeros(S * A, dtype=dtype).index_add_(0, flat, torch.ones(batch_size, dtype=dtype))
        step = lr / (1 + t * lr_decay)
        M = M + step * (total / count.clamp_min(1)[:, None]).reshape(H, S, A, S)
        if target_period > 0 and (t + 1) % target_period == 0:
            M_target = M.clone()
    return M, trace


@dataclass
class CategoricalGHMOutput:
    logits: Tensor  # [B, H, A, S⁺]

    def probs(self) -> Tensor:
        return self.logits.softmax(-1)


class CategoricalGHM(nn.Module):
    """MLP from state features to a softmax over states, one distribution per (head, action).

    Each head is the GHM of one (policy, discount) pair; the heads share the torso because they are
    all trained from the same transitions. Shapes: x [B, F] -> logits [B, H, A, S⁺].
    """

    def __init__(
        self,
        in_features: int,
        num_actions: int,
        num_states: int,
        num_heads: int = 1,
        hidden: tuple[int, ...] = (256, 256),
    ) -> None:
        super().__init__()
        for name, v in (
            ("in_features", in_features),
            ("num_actions", num_actions),
            ("num_states", num_states),
            ("num_heads", num_heads),
        ):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.shape = (num_heads, num_actions, num_states)
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.torso = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_heads * num_actions * num_states)
        # A zero last layer starts every head at the uniform distribution (the tabular initialisation).
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> CategoricalGHMOutput:
        return CategoricalGHMOutput(self.head(self.torso(x)).view(x.shape[0], *self.shape))

    def extra_repr(self) -> str:
        H, A, S = self.shape
        return f"heads={H}, actions={A}, states={S}"


def categorical_td_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy ``−Σ_{s⁺} target(s⁺) log softmax(logits)(s⁺)``, averaged over every leading axis.

    Minimised (over the model) by ``softmax(logits) = target``: the TD fixed point when the target is
    :func:`ghm_td_target` of a frozen copy of the model.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits and target shapes differ: {tuple(logits.shape)} vs {tuple(target.shape)}")
    return -(target * logits.log_softmax(-1)).sum(-1).mean()


def train_categorical_ghm(
    net: CategoricalGHM,
    features: Tensor,
    mdp: FiniteMDP,
    policies: Tensor,
    gammas: Sequence[float],
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    lr_final_frac: float = 0.1,
    target: str = "polyak",
    tau: float = 0.1,
    target_period: int = 10,
    generator: torch.Generator | None = None,
    reference: Tensor | None = None,
    log_every: int = 100,
) -> TDTrace:
    """Train every head of ``net`` by TD with the categorical cross-entropy loss, in place.

    ``features`` [S, F] encodes each state (one-hot or coordinates); head h is the GHM of
    ``policies[h]`` [S, A] at ``gammas[h]``. Transitions (s, a) ~ uniform, s' ~ P(·|s, a) train all heads
    at once (GHM learning is off-policy; a' ~ π_h is taken in expectation). ``target``: ``"none"``
    bootstraps from the online net (no stop-gradient copy), ``"hard"`` copies every ``target_period``
    steps, ``"polyak"`` averages with rate ``tau``. Adam's learning rate decays linearly to
    ``lr_final_frac · lr``. ``reference`` [H, S, A, S⁺] logs the mean TV error.
    """
    if target not in ("none", "hard", "polyak"):
        raise ValueError(f"target must be 'none', 'hard' or 'polyak', got {target!r}")
    H, A, S = net.shape
    if tuple(policies.shape) != (H, S, A) or len(gammas) != H:
        raise ValueError(
            f"policies must be [H, S, A] = [{H}, {S}, {A}] with {H} gammas, got "
            f"{tuple(policies.shape)} and {len(gammas)} gammas"
        )
    for g in gammas:
        check_discount(g)
    dtype = next(net.parameters()).dtype
    features, policies = features.to(dtype), policies.to(dtype)
    g = torch.tensor(list(gammas), dtype=dtype)[None, :, None]  # [1, H, 1]
    target_net = make_target(net) if target != "none" else net
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    # linear decay to lr_final_frac·lr: Adam's step noise otherwise sets an error floor
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - (1 - lr_final_frac) * min(t / max(steps, 1), 1.0))
    trace = TDTrace()
    for t in range(steps + 1):
        if reference is not None and t % log_every == 0:
            with torch.no_grad():
                probs = net(features).probs().permute(1, 0, 2, 3)  # [H, S, A, S⁺]
            trace.steps.append(t)
            trace.errors.append(total_variation(probs.to(reference.dtype), reference).item())
        if t == steps:
            break
        s, a = _uniform_state_actions(S, A, batch_size, generator)
        s2 = torch.multinomial(mdp.P[a, s], 1, generator=generator)[:, 0]
        with torch.no_grad():
            next_probs = target_net(features[s2]).probs()  # [B, H, A, S⁺]
            m_next = torch.einsum("hba,bhau->bhu", policies[:, s2], next_probs)  # [B, H, S⁺]
            onehot = F.one_hot(s2, S).to(dtype)[:, None, :]  # [B, 1, S⁺]
            y = (1 - g) * onehot + g * m_next  # ghm_td_target, per head
        logits = net(features[s]).logits[torch.arange(batch_size), :, a]  # [B, H, S⁺]
        loss = categorical_td_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if target == "polyak":
            ema_update(target_net, net, 1.0 - tau)  # Polyak rate tau = EMA decay 1 - tau
        elif target == "hard" and (t + 1) % target_period == 0:
            ema_update(target_net, net, 0.0)  # decay 0 copies the online weights
    return trace


# ------------------------------------------------------------------------------------------------
# continuous states: a mixture-density GHM and Monte-Carlo composition
# ------------------------------------------------------------------------------------------------


@dataclass
class MixtureParams:
    """A diagonal Gaussian mixture per leading index: logits [..., K], means / log_stds [..., K, D]."""

    logits: Tensor
    means: Tensor
    log_stds: Tensor

    def index(self, fn: Callable[[Tensor], Tensor]) -> MixtureParams:
        return MixtureParams(fn(self.logits), fn(self.means), fn(self.log_stds))


def mixture_log_prob(params: MixtureParams, x: Tensor) -> Tensor:
    """``log Σ_k π_k N(x; μ_k, diag σ_k²)`` - [...] for x [..., D]."""
    z = (x[..., None, :] - params.means) * torch.exp(-params.log_stds)  # [..., K, D]
    comp = -0.5 * z.pow(2).sum(-1) - params.log_stds.sum(-1) - 0.5 * x.shape[-1] * math.log(2 * math.pi)
    return torch.logsumexp(params.logits.log_softmax(-1) + comp, -1)


def mixture_sample(params: MixtureParams, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` samples per leading index - [..., n, D]."""
    lead = params.logits.shape[:-1]
    K, D = params.means.shape[-2:]
    flat = params.index(lambda t: t.reshape(-1, *t.shape[len(lead) :]))
    # inverse-CDF draw of the component (much faster than torch.multinomial on many small rows)
    cdf = flat.logits.softmax(-1).cumsum(-1)  # [M, K]
    u = torch.rand(cdf.shape[0], n, generator=generator, dtype=cdf.dtype) * cdf[:, -1:]
    k = torch.searchsorted(cdf, u).clamp_max(K - 1)  # [M, n]
    rows = torch.arange(k.shape[0])[:, None]
    mu, log_std = flat.means[rows, k], flat.log_stds[rows, k]  # [M, n, D]
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
    return (mu + eps * log_std.exp()).reshape(*lead, n, D)


class MixtureDensityGHM(nn.Module):
    """A conditional Gaussian-mixture GHM for continuous states: ``m_h(s⁺ | s, a)`` for every head h.

    Means are predicted as offsets from s (a GHM's mass starts next to s and spreads with the
    horizon). Shapes: s [B, D] -> MixtureParams with logits [B, H, A, K], means/log_stds [B, H, A, K, D].
    """

    def __init__(
        self,
        state_dim: int,
        num_actions: int,
        num_heads: int = 1,
        num_components: int = 8,
        hidden: tuple[int, ...] = (256, 256),
        min_log_std: float = -5.0,
        max_log_std: float = 1.0,
    ) -> None:
        super().__init__()
        for name, v in (
            ("state_dim", state_dim),
            ("num_actions", num_actions),
            ("num_heads", num_heads),
            ("num_components", num_components),
        ):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if not min_log_std < max_log_std:
            raise ValueError(f"need min_log_std < max_log_std, got {min_log_std}, {max_log_std}")
        self.dims = (num_heads, num_actions, num_components, state_dim)
        self.min_log_std, self.max_log_std = min_log_std, max_log_std
        layers: list[nn.Module] = []
        width = state_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        self.torso = nn.Sequential(*layers)
        self.out = nn.Linear(width, num_heads * num_actions * num_components * (1 + 2 * state_dim))

    def _params(self, raw: Tensor, s: Tensor) -> MixtureParams:
        """raw [M, ..., K, 1 + 2D] and s [M, D] -> mixture parameters."""
        D = self.dims[3]
        # a soft clamp keeps the log-likelihood finite when a component collapses onto a sample
        log_std = self.min_log_std + (self.max_log_std - self.min_log_std) * torch.sigmoid(raw[..., 1 + D :])
        centre = s.view(s.shape[0], *([1] * (raw.dim() - 2)), s.shape[1])
        return MixtureParams(raw[..., 0], centre + raw[..., 1 : 1 + D], log_std)

    def forward(self, s: Tensor) -> MixtureParams:
        H, A, K, D = self.dims
        return self._params(self.out(self.torso(s)).view(s.shape[0], H, A, K, 1 + 2 * D), s)

    def features(self, s: Tensor) -> Tensor:
        """The torso's output [M, W], to be shared by several :meth:`head_action` calls."""
        return self.torso(s)

    def head_action(self, features: Tensor, s: Tensor, head: int, action: int) -> MixtureParams:
        """The mixture of one (head, action) only - [M, K, ...]: a slice of the output layer, which is
        most of the cost when a Monte-Carlo composition evaluates thousands of sampled states."""
        H, A, K, D = self.dims
        W = self.out.weight.view(H, A, K * (1 + 2 * D), -1)[head, action]  # [K·(1+2D), W]
        b = self.out.bias.view(H, A, K * (1 + 2 * D))[head, action]
        return self._params(F.linear(features, W, b).view(-1, K, 1 + 2 * D), s)

    def extra_repr(self) -> str:
        H, A, K, D = self.dims
        return f"heads={H}, actions={A}, components={K}, state_dim={D}"


def mdn_td_loss(pred: MixtureParams, s_next: Tensor, boot_samples: Tensor, gamma: Tensor) -> Tensor:
    """TD loss for a density GHM: ``(1 − γ) NLL(s') + γ mean_j NLL(x_j)`` with x_j ~ m̄(·|s', a').

    The expected negative log-likelihood of the mixture target ``(1 − γ) δ_{s'} + γ m̄`` (TD-Flow's
    template; the one-step term is fitted to s' itself instead of a narrow Gaussian around it).
    Shapes: pred [B, H] mixtures, s_next [B, D], boot_samples [B, H, n, D], gamma [H].
    """
    nll_one = -mixture_log_prob(pred, s_next[:, None, :])  # [B, H]
    wide = pred.index(lambda t: t[:, :, None])  # broadcast over the n bootstrap samples
    nll_boot = -mixture_log_prob(wide, boot_samples).mean(-1)  # [B, H]
    return ((1 - gamma) * nll_one + gamma * nll_boot).mean()


def switching_q_monte_carlo(
    model: MixtureDensityGHM,
    head_of: Mapping[tuple[int, float], int],
    base_policy: Callable[[int, Tensor], Tensor],
    policies: Sequence[SwitchingPolicy],
    gamma: float,
    reward: Callable[[Tensor], Tensor],
    s: Tensor,
    n: int,
    generator: torch.Generator | None = None,
    expected_reward: Callable[[MixtureParams], Tensor] | None = None,
) -> Tensor:
    """Monte-Carlo ``Q̂^ν(s, a)`` [N, B, A] for every ν in ``policies`` and every action, from a learned
    density GHM (docs/ggpi.md, "Monte-Carlo composition"): ``Q̂ = (1 − γ)⁻¹ Σ_k c_1 ⋯ c_{k−1} w_k r(S_k⁺)``,
    with S_1⁺ ~ m_1(·|s, a) and S_k⁺ ~ m_k(·|S_{k−1}⁺, π_k(S_{k−1}⁺)) - unbiased for the composed occupancy.

    ``head_of[(k, β)]`` is the head of base policy k at discount β; ``base_policy(k, x [M, D])`` returns
    that policy's (deterministic) actions [M]. Each first stage draws ``n`` samples per (s, a); later
    stages one per chain. Switching policies that share a prefix share its samples and network
    evaluations. With ``expected_reward(params) -> [B, A] or [B, A, n]`` each stage's reward is averaged
    analytically over the mixture (Rao–Blackwellised: same mean, less variance).
    """
    B, A = s.shape[0], model.dims[1]
    first_params = model(s)  # heads [B, H, A, ...]
    stages: dict[tuple, tuple[MixtureParams, Tensor, Tensor]] = {}  # prefix -> (params, samples, reward)
    features: dict[tuple, Tensor] = {}  # prefix -> torso features at its samples [B·A·n, W]

    def stage(prefix: tuple[tuple[int, float], ...]) -> tuple[MixtureParams, Tensor, Tensor]:
        if prefix in stages:
            return stages[prefix]
        k, beta = prefix[-1]
        head = head_of[(k, beta)]
        if len(prefix) == 1:
            p = first_params.index(lambda t: t[:, head])  # [B, A] mixtures
            x = mixture_sample(p, n, generator)  # [B, A, n, D]
        else:
            _, x_prev, _ = stage(prefix[:-1])
            x_flat = x_prev.reshape(-1, x_prev.shape[-1])  # [B·A·n, D]
            if prefix[:-1] not in features:
                features[prefix[:-1]] = model.features(x_flat)
            act = base_policy(k, x_flat)  # [B·A·n]
            parts = []
            for a_val in act.unique().tolist():  # one output slice per action the policy takes
                sel = act == a_val
                parts.append((sel, model.head_action(features[prefix[:-1]][sel], x_flat[sel], head, a_val)))
            if len(parts) == 1:
                flat = parts[0][1]
            else:
                flat = parts[0][1].index(lambda t: t.new_empty(x_flat.shape[0], *t.shape[1:]))
                for sel, q in parts:
                    flat.logits[sel], flat.means[sel], flat.log_stds[sel] = q.logits, q.means, q.log_stds
            p = flat.index(lambda t: t.reshape(B, A, n, *t.shape[1:]))  # [B, A, n, K, ...]
            x = mixture_sample(p, 1, generator)[..., 0, :]  # [B, A, n, D]
        r = expected_reward(p) if expected_reward is not None else reward(x)
        r = r.mean(-1) if r.dim() == 3 else r  # [B, A]
        stages[prefix] = (p, x, r)
        return stages[prefix]

    out = []
    for nu in policies:
        betas = nu.betas(gamma)
        w, c = composition_weights(betas, gamma)
        keys = tuple((k, round(b, 12)) for k, b in zip(nu.sequence, betas))
        missing = [key for key in keys if key not in head_of]
        if missing:
            raise ValueError(f"no GHM head for (base policy, discount) {missing} (needed by {nu})")
        total = torch.zeros(B, A, dtype=s.dtype)
        weight = 1.0
        for i in range(len(nu)):
            total = total + weight * float(w[i]) * stage(keys[: i + 1])[2]
            weight *= float(c[i])
        out.append(total / (1 - gamma))
    return torch.stack(out)


def train_mixture_ghm(
    model: MixtureDensityGHM,
    heads: Sequence[tuple[int, float]],
    sample_transitions: Callable[[int, torch.Generator | None], tuple[Tensor, Tensor, Tensor]],
    base_policy: Callable[[int, Tensor], Tensor],
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    tau: float = 0.01,
    n_boot: int = 4,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train every head of a density GHM by TD with :func:`mdn_td_loss`, in place; returns the losses.

    ``heads[h] = (k, γ_h)``: head h models base policy k at discount γ_h. ``sample_transitions(B, gen)``
    returns s [B, D], a [B] (long), s' [B, D]. The bootstrap samples come from a Polyak-averaged
    target copy (rate ``tau``) at (s', π_k(s')) - the target network is what keeps density TD stable.
    """
    H, A, K, D = model.dims
    if len(heads) != H:
        raise ValueError(f"model has {H} heads but {len(heads)} (policy, discount) pairs were given")
    for _, g in heads:
        check_discount(g, "head discount")
    dtype = next(model.parameters()).dtype
    gamma = torch.tensor([g for _, g in heads], dtype=dtype)  # [H]
    target = make_target(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rows, cols = torch.arange(batch_size)[:, None], torch.arange(H)[None, :]
    losses = []
    for t in range(steps):
        s, a, s2 = sample_transitions(batch_size, generator)
        s, s2 = s.to(dtype), s2.to(dtype)
        with torch.no_grad():
            nxt = target(s2)  # [B, H, A, ...]
            acts = torch.stack([base_policy(k, s2) for k, _ in heads], 1)  # [B, H]
            boot = mixture_sample(nxt.index(lambda x: x[rows, cols, acts]), n_boot, generator)  # noqa: B023
        pred = model(s).index(lambda x: x[rows[:, 0], :, a])  # noqa: B023 - [B, H, ...]
        loss = mdn_td_loss(pred, s2, boot, gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(target, model, 1.0 - tau)
        losses.append(loss.item())
        if on_step is not None:
            on_step(t, losses[-1])
    return losses


# ------------------------------------------------------------------------------------------------
# GGPI on finite MDPs: base policies, reward tasks, exact scores and the checks of the theory
# ------------------------------------------------------------------------------------------------


def constant_action_policies(num_states: int, num_actions: int) -> list[Tensor]:
    """Base policy k takes action k in every state - ``num_actions`` one-hot policies [S, A] (float64).

    In a gridworld these are "always move up / down / left / right": GPI over them is poor, so what
    switching between them adds (GGPI) is visible.
    """
    if num_states < 1 or num_actions < 1:
        raise ValueError(f"num_states and num_actions must be >= 1, got {num_states}, {num_actions}")
    return [F.one_hot(torch.full((num_states,), k), num_actions).double() for k in range(num_actions)]


def start_value(mdp: FiniteMDP, pi: Tensor) -> float:
    """Exact ``Σ_s d_0(s) V^π(s)`` of ``pi`` [S, A] with ``mdp``'s own reward (an arrival-reward task:
    pass :func:`with_arrival_reward`)."""
    return float((q_values(mdp, pi) * pi.to(mdp.P.dtype)).sum(1) @ mdp.initial)


def random_goal_rewards(
    num_states: int, num_goals: int, num_tasks: int, generator: torch.Generator | None = None
) -> list[Tensor]:
    """``num_tasks`` arrival rewards [S] (float64): ``num_goals`` distinct states, weights ~ U(0, 1), 0 elsewhere."""
    if not 1 <= num_goals <= num_states:
        raise ValueError(f"num_goals must be in [1, num_states={num_states}], got {num_goals}")
    tasks = []
    for _ in range(num_tasks):
        where = torch.randperm(num_states, generator=generator)[:num_goals]
        r = torch.zeros(num_states, dtype=torch.float64)
        r[where] = torch.rand(num_goals, generator=generator, dtype=torch.float64)
        tasks.append(r)
    return tasks


def composition_errors(
    mdp: FiniteMDP, policies: Sequence[Tensor], continue_probs: Sequence[float], gamma: float, r: Tensor
) -> tuple[float, float]:
    """``(max |μ_comp − μ_aug|, max |Q_comp − Q_aug|)`` for ν = (policies[0], …, policies[-1]) on one MDP.

    μ_comp composes the exact base GHMs (:func:`compose_ghms`); μ_aug is the GHM of the augmented
    (state, phase) chain (:func:`augmented_chain_ghm`). Q_aug is the toolkit's linear solve on the
    augmented MDP with the arrival reward ``r`` [S] - no GHM code at all. Both errors are round-off
    (~1e-15 in float64) when composition evaluates the switching policy exactly.
    """
    nu = SwitchingPolicy(tuple(range(len(policies))), tuple(continue_probs))
    betas = nu.betas(gamma)
    ghms = [ghm(mdp, p, b) for p, b in zip(policies, betas)]
    mu = compose_ghms(ghms, policies, betas, gamma)
    mu_err = (mu - augmented_chain_ghm(mdp, policies, continue_probs, gamma)).abs().max()
    aug, pi_aug = augmented_chain(mdp, policies, continue_probs)
    aug_r = with_arrival_reward(aug, r.repeat(len(policies)), gamma=gamma)  # phase i pays r too
    q_aug = q_values(aug_r, pi_aug)[: mdp.num_states]  # start in phase 0
    q_err = (composed_q_values(ghms, policies, betas, gamma, r) - q_aug).abs().max()
    return float(mu_err), float(q_err)


def improvement_margin(mdp: FiniteMDP, q_set: Tensor) -> float:
    """``min_{s,a} [Q^{π'}(s, a) − max_n Q_n(s, a)]`` with π' = :func:`gpi_policy` (q_set [N, S, A]).

    π' is scored exactly on ``mdp`` (carrying the task's reward, e.g. :func:`with_arrival_reward`).
    With exact Q's of the members of a tail-closed set, the GGPI inequality says this is ≥ 0 (up to
    round-off); negative values are violations.
    """
    pi = gpi_policy(q_set)
    return float((q_values(mdp, pi) - q_set.max(0).values).min())


def score_gpi_ggpi(
    mdp: FiniteMDP,
    base_policies: Sequence[Tensor],
    policies: Sequence[SwitchingPolicy],
    models: Mapping[tuple[int, float], Tensor],
    tasks: Sequence[Tensor],
    gamma: float,
    *,
    optimal: Sequence[float] | None = None,
    margins: bool = False,
    progress: Callable | None = None,
) -> dict[str, list[float]]:
    """Exact start values (:func:`start_value`) per task of each base policy, GPI and GGPI.

    Each task is an arrival reward [S]; its Q^ν come from composing ``models[(k, β)]`` (exact or learned
    GHMs, :func:`switching_q_values`). GPI is greedy over the length-1 members of ``policies`` (the base
    policies), GGPI over all of them; both are scored on the true MDP, so a learned model can only hurt
    through the policy it picks. Keys: ``"base k"``, ``"GPI"``, ``"GGPI"``, ``"optimal"`` (value
    iteration, or ``optimal`` if given) and, with ``margins`` (meaningful for exact models only),
    ``"ggpi_margin"`` / ``"gpi_margin"`` (:func:`improvement_margin`). ``progress`` wraps the task loop.
    """
    base_idx = [i for i, nu in enumerate(policies) if len(nu) == 1]
    out: dict[str, list[float]] = {f"base {k}": [] for k in range(len(base_policies))}
    out.update({"GPI": [], "GGPI": [], "optimal": []})
    if margins:
        out.update({"ggpi_margin": [], "gpi_margin": []})
    for t, r in enumerate(progress(tasks) if progress is not None else tasks):
        mdp_r = with_arrival_reward(mdp, r)
        Qs = switching_q_values(models, base_policies, policies, gamma, r)  # [N, S, A]
        for k, p in enumerate(base_policies):
            out[f"base {k}"].append(start_value(mdp_r, p))
        out["GPI"].append(start_value(mdp_r, gpi_policy(Qs[base_idx])))
        out["GGPI"].append(start_value(mdp_r, ggpi_policy(Qs)))
        best = float(value_iteration(mdp_r).values @ mdp.initial) if optimal is None else optimal[t]
        out["optimal"].append(best)
        if margins:
            out["ggpi_margin"].append(improvement_margin(mdp_r, Qs))
            out["gpi_margin"].append(improvement_margin(mdp_r, Qs[base_idx]))
    return out


# ------------------------------------------------------------------------------------------------
# continuous states: rollouts and the switching-policy simulator
# ------------------------------------------------------------------------------------------------

# One environment step on a batch: (s [B, D], a [B] long, generator) -> s' [B, D].
Step = Callable[[Tensor, Tensor, torch.Generator | None], Tensor]


def constant_action(k: int, s: Tensor) -> Tensor:
    """Base policy k of a continuous task: action k in every state - [B] (long) for s [B, D]."""
    return torch.full((s.shape[0],), k, dtype=torch.long)


def uniform_transitions(
    step: Step, state_dim: int, num_actions: int
) -> Callable[[int, torch.Generator | None], tuple[Tensor, Tensor, Tensor]]:
    """A ``sample_transitions`` for :func:`train_mixture_ghm`: s ~ U[0, 1]^D, a ~ U{0, …, A−1}, s' = step(s, a).

    Uniform (s, a) pairs cover the state space for every base policy at once (GHM learning is off-policy).
    """

    def sample(batch_size: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        s = torch.rand(batch_size, state_dim, generator=generator, dtype=torch.float64)
        a = torch.randint(num_actions, (batch_size,), generator=generator)
        return s, a, step(s, a, generator)

    return sample


def rollout_returns(
    step: Step,
    policy: Callable[[Tensor], Tensor],
    reward: Callable[[Tensor], Tensor],
    starts: Tensor,
    *,
    horizon: int,
    gamma: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Discounted returns ``Σ_{t<horizon} γ^t r(s_{t+1})`` [E] of ``policy(s [E, D]) -> a [E]`` from ``starts``.

    The reward is paid on arrival (the GHM convention). Give several policies equally seeded generators to
    let them see the same environment noise (paired comparisons).
    """
    check_discount(gamma, allow_one=True)  # a truncated sum stays finite at γ = 1
    s, ret, disc = starts.clone(), torch.zeros(starts.shape[0], dtype=torch.float64), 1.0
    for _ in range(horizon):
        s = step(s, policy(s), generator)
        ret += disc * reward(s).to(torch.float64)
        disc *= gamma
    return ret


def simulate_switching_policy(
    step: Step,
    base_policy: Callable[[int, Tensor], Tensor],
    nu: SwitchingPolicy,
    reward: Callable[[Tensor], Tensor],
    s: Tensor,
    a: int,
    *,
    n: int,
    horizon: int,
    gamma: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``n`` discounted returns [n] of the switching policy ν itself, started at (s [D], a).

    The brute-force ground truth for a composed value (:func:`switching_q_monte_carlo`,
    :func:`composed_q_values`): after every step ν keeps its current base policy with probability α_i
    and otherwise moves on to the next one (the last runs forever); the next action is
    ``base_policy(k, s')`` of the current policy k. Truncated after ``horizon`` steps (bias ≤ γ^horizon·max|r|/(1 − γ)).
    """
    check_discount(gamma, allow_one=True)
    if n < 1 or horizon < 1:
        raise ValueError(f"n and horizon must be >= 1, got {n}, {horizon}")
    x = s.expand(n, *s.shape).clone()
    act = torch.full((n,), a, dtype=torch.long)
    phase = torch.zeros(n, dtype=torch.long)
    stay = torch.tensor(nu.continue_probs + (1.0,), dtype=torch.float64)  # the last phase absorbs
    rows = torch.arange(n)
    ret, disc = torch.zeros(n, dtype=torch.float64), 1.0
    for _ in range(horizon):
        x = step(x, act, generator)
        ret += disc * reward(x).to(torch.float64)
        disc *= gamma
        switch = torch.rand(n, generator=generator, dtype=torch.float64) >= stay[phase]
        phase = (phase + switch.long()).clamp_max(len(nu) - 1)
        act = torch.stack([base_policy(k, x) for k in nu.sequence], 1)[rows, phase]
    return ret


def rollout_gpi_ggpi(
    step: Step,
    q_fn: Callable[[Tensor, Sequence[SwitchingPolicy]], Tensor],
    base_policy: Callable[[int, Tensor], Tensor],
    num_base: int,
    policies: Sequence[SwitchingPolicy],
    reward: Callable[[Tensor], Tensor],
    starts: Tensor,
    *,
    horizon: int,
    gamma: float,
    noise_seed: int,
) -> dict[str, float]:
    """Mean discounted returns from ``starts`` [E, D] of each base policy, GPI and GGPI on one task.

    ``q_fn(s [B, D], subset) -> Q̂ [len(subset), B, A]`` is any estimate of the members' values (e.g. a
    learned density GHM through :func:`switching_q_monte_carlo`). GPI acts greedily on the base policies
    (the length-1 members of ``policies``), GGPI on all of them. Every policy sees the same environment
    noise (a generator seeded with ``noise_seed`` each), so the differences are paired.
    Keys: ``"base k"`` for k < num_base, ``"GPI"``, ``"GGPI"``.
    """
    base_set = [nu for nu in policies if len(nu) == 1]

    def mean_return(policy: Callable[[Tensor], Tensor]) -> float:
        g = torch.Generator().manual_seed(noise_seed)
        return rollout_returns(step, policy, reward, starts, horizon=horizon, gamma=gamma, generator=g).mean().item()

    out = {f"base {k}": mean_return(lambda s, k=k: base_policy(k, s)) for k in range(num_base)}
    out["GPI"] = mean_return(lambda s: q_fn(s, base_set).max(0).values.argmax(-1))
    out["GGPI"] = mean_return(lambda s: q_fn(s, policies).max(0).values.argmax(-1))
    return out


__all__ = [
    "CategoricalGHM",
    "CategoricalGHMOutput",
    "MixtureDensityGHM",
    "MixtureParams",
    "Step",
    "SwitchingPolicy",
    "TDTrace",
    "augmented_chain",
    "augmented_chain_ghm",
    "categorical_td_loss",
    "compose_ghms",
    "composed_q_values",
    "composition_errors",
    "composition_weights",
    "constant_action",
    "constant_action_policies",
    "ggpi_policy",
    "ghm",
    "ghm_bellman_operator",
    "ghm_q_values",
    "ghm_td_fixed_point",
    "ghm_td_target",
    "gpi_policy",
    "improvement_margin",
    "is_suffix_closed",
    "mdn_td_loss",
    "mixture_log_prob",
    "mixture_sample",
    "random_goal_rewards",
    "required_models",
    "rollout_gpi_ggpi",
    "rollout_returns",
    "sample_geometric_horizon",
    "sample_ghm",
    "score_gpi_ggpi",
    "simulate_switching_policy",
    "start_value",
    "state_ghm",
    "switching_q_monte_carlo",
    "switching_q_values",
    "switching_set",
    "tabular_td_ghm",
    "total_variation",
    "train_categorical_ghm",
    "train_mixture_ghm",
    "uniform_transitions",
    "with_arrival_reward",
]
