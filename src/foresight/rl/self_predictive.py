"""Self-predictive representation learning: BYOL-Π and bidirectional self-predictive learning.

Tang et al., "Understanding Self-Predictive Learning for Reinforcement Learning", ICML 2023
(arXiv 2212.03319). Derivations: docs/self_predictive.md.

Axis legend: ``...`` optional batch axes (e.g. many random MDPs integrated at once), S states,
k representation width, n sampled transitions.

Setting (uniform or not, d is the law of the current state x, ``T`` the policy's transition matrix):
x ~ d, y ~ T(·|x), representations ``Φ [S, k]`` (and ``Ψ [S, k]`` for the next state in the
bidirectional variant), linear predictors ``P [k, k]``. Row vectors are used throughout: the
prediction for state x is ``Φ[x] P`` (= ``Pᵀ Φᵀ x`` in the paper's column notation).

- BYOL-Π:         ``L(Φ, P) = E ‖Φ[x] P − sg(Φ[y])‖²``
- bidirectional:  ``L = E ‖Φ[x] P_f − sg(Ψ[y])‖² + E ‖Ψ[y] P_b − sg(Φ[x])‖²``

Matrix forms (D = diag(d), D' = diag(dᵀT), all checked against autograd in the tests):

- semi-gradient   ``∇_Φ L = 2 D (ΦP − TΦ) Pᵀ``,  ``∇_P L = 2 Φᵀ D (ΦP − TΦ)``
- full gradient   adds the target path ``−2 (Tᵀ D Φ P − D' Φ)``. (The naive ``−2 Tᵀ D (ΦP − TΦ)`` is the
  gradient of ``‖ΦP − TΦ‖²_D``, which drops the target-variance term ``E Var(Φ[y] | x)`` of the sampled loss.)
- optimal predictor ``P* = (Φᵀ D Φ)⁻¹ Φᵀ D T Φ`` (the normal equations of ∇_P L = 0), which gives
  ``Φᵀ ∇_Φ L(Φ, P*) = 0`` and hence ``d(ΦᵀΦ)/dt = 0``: the non-collapse mechanism.
- bidirectional: ``P_f* = (ΦᵀDΦ)⁻¹ ΦᵀD T Ψ``, ``P_b* = (ΨᵀD'Ψ)⁻¹ Ψᵀ Tᵀ D Φ``;
  ``∇_Φ = 2 (DΦP_f − DTΨ) P_fᵀ``, ``∇_Ψ = 2 (D'ΨP_b − TᵀDΦ) P_bᵀ``.

Continuous-time dynamics are integrated with fixed-step classical RK4 by default. Why RK4: ΦᵀΦ is
an exact invariant of the semi-gradient / optimal-predictor flow, and a 4th-order method keeps the
discretisation drift at O(h⁴) (≈1e-10 at the steps used), so a measured drift of 1e-2 can only be
the dynamics (full gradient, slow predictor), not the integrator. Euler (``method="euler"``) is the
gradient-descent discretisation and drifts at O(h), as an earlier check observed (1.7e-3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from foresight.nn.ema import ema_update, make_target
from foresight.rl.mdp import alignment, orthonormal_basis, top_singular_vectors

State = tuple[Tensor, ...]

GRADIENTS = ("semi", "full")
PREDICTORS = ("optimal", "learned")
METHODS = ("rk4", "euler")


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _check_rep(name: str, X: Tensor, T: Tensor) -> None:
    if X.dim() < 2 or X.shape[-2] != T.shape[-1]:
        raise ValueError(f"{name} must have shape [..., S, k] with S = {T.shape[-1]}, got {tuple(X.shape)}")


# ------------------------------------------------------------------------------------------------
# sample-based losses (pure; these are what a network is trained with)
# ------------------------------------------------------------------------------------------------
def byol_pi_loss(phi_x: Tensor, phi_y: Tensor, P: Tensor, stop_target_gradients: bool = True) -> Tensor:
    """``mean_n ‖phi_x[n] P − sg(phi_y[n])‖²`` - the BYOL-Π loss on a batch of transitions.

    Shapes: phi_x [..., n, k] (online features of x), phi_y [..., n, k] (target features of y),
    P [..., k, k] -> loss [...] (a scalar for unbatched input).
    ``stop_target_gradients=False`` differentiates through the target too (the full gradient).
    """
    if phi_x.dim() < 2 or phi_x.shape != phi_y.shape:
        raise ValueError(f"phi_x and phi_y must both be [..., n, k], got {tuple(phi_x.shape)} and {tuple(phi_y.shape)}")
    k = phi_x.shape[-1]
    if P.shape[-2:] != (k, k):
        raise ValueError(f"P must be [..., k, k] with k = {k}, got {tuple(P.shape)}")
    target = phi_y.detach() if stop_target_gradients else phi_y
    return (phi_x @ P - target).pow(2).sum(-1).mean(-1)


class BidirectionalLoss(NamedTuple):
    total: Tensor
    forward: Tensor  # E ‖Φ[x] P_f − sg(Ψ[y])‖²
    backward: Tensor  # E ‖Ψ[y] P_b − sg(Φ[x])‖²


def bidirectional_loss(
    phi_x: Tensor, psi_y: Tensor, P_f: Tensor, P_b: Tensor, stop_target_gradients: bool = True
) -> BidirectionalLoss:
    """Forward and backward self-prediction on a batch: phi_x [n, k], psi_y [n, k], P_f, P_b [k, k]."""
    forward = byol_pi_loss(phi_x, psi_y, P_f, stop_target_gradients)
    backward = byol_pi_loss(psi_y, phi_x, P_b, stop_target_gradients)
    return BidirectionalLoss(forward + backward, forward, backward)


# ------------------------------------------------------------------------------------------------
# exact expectations over x ~ d, y ~ T(·|x) (matrix form, batched over leading axes)
# ------------------------------------------------------------------------------------------------
def _D(d: Tensor, X: Tensor) -> Tensor:
    """diag(d) @ X for d [..., S], X [..., S, m]."""
    return d[..., :, None] * X


def _mT(X: Tensor) -> Tensor:
    return X.transpose(-1, -2)


def expected_byol_pi_loss(Phi: Tensor, P: Tensor, T: Tensor, d: Tensor, stop_target_gradients: bool = True) -> Tensor:
    """``E_{x~d, y~T(·|x)} ‖Φ[x] P − sg(Φ[y])‖²`` exactly - shape [...]. Differentiable for autograd checks."""
    _check_rep("Phi", Phi, T)
    target = Phi.detach() if stop_target_gradients else Phi
    # Σ_x d(x) Σ_y T(x, y) ‖ΦP[x] − Φ[y]‖² = Σ_x d(x) ‖ΦP[x]‖² − 2 Σ_x d(x) ⟨ΦP[x], (TΦ)[x]⟩ + Σ_y d'(y) ‖Φ[y]‖²
    pred = Phi @ P  # [..., S, k]
    d_next = (d[..., None, :] @ T)[..., 0, :]  # [..., S]
    return (
        (d * pred.pow(2).sum(-1)).sum(-1)
        - 2 * (d * (pred * (T @ target)).sum(-1)).sum(-1)
        + (d_next * target.pow(2).sum(-1)).sum(-1)
    )


def expected_bidirectional_loss(
    Phi: Tensor, Psi: Tensor, P_f: Tensor, P_b: Tensor, T: Tensor, d: Tensor, stop_target_gradients: bool = True
) -> BidirectionalLoss:
    """Exact expectation of :func:`bidirectional_loss` - each field shape [...]."""
    _check_rep("Phi", Phi, T)
    _check_rep("Psi", Psi, T)
    tPhi = Phi.detach() if stop_target_gradients else Phi
    tPsi = Psi.detach() if stop_target_gradients else Psi
    joint = d[..., :, None] * T  # [..., S, S'] = Pr(x, y)
    d_next = joint.sum(-2)  # [..., S']
    fpred, bpred = Phi @ P_f, Psi @ P_b
    forward = (
        (d * fpred.pow(2).sum(-1)).sum(-1)
        - 2 * (fpred * (joint @ tPsi)).sum((-1, -2))
        + (d_next * tPsi.pow(2).sum(-1)).sum(-1)
    )
    backward = (
        (d_next * bpred.pow(2).sum(-1)).sum(-1)
        - 2 * (bpred * (_mT(joint) @ tPhi)).sum((-1, -2))
        + (d * tPhi.pow(2).sum(-1)).sum(-1)
    )
    return BidirectionalLoss(forward + backward, forward, backward)


def _solve_gram(G: Tensor, B: Tensor) -> Tensor:
    """``G⁻¹ B`` for a PSD Gram matrix G [..., k, k]; the minimum-norm least-squares solution when G is
    singular (a collapsed Φ), so collapsing dynamics can be followed to the end instead of raising."""
    try:
        X, info = torch.linalg.solve_ex(G, B)
        if not bool((info != 0).any()) and bool(torch.isfinite(X).all()):
            return X
    except RuntimeError:
        pass
    if not bool(torch.isfinite(G).all()):  # diverged upstream: propagate NaN rather than raise
        return torch.full(G.shape[:-1] + B.shape[-1:], float("nan"), dtype=B.dtype)
    return torch.linalg.pinv(G, rtol=1e-12, hermitian=True) @ B


def optimal_predictor(Phi: Tensor, T: Tensor, d: Tensor, target: Tensor | None = None) -> Tensor:
    """``P* = (Φᵀ D Φ)⁻¹ Φᵀ D T Φ_target`` - [..., k, k]; ``target`` defaults to Φ (BYOL-Π)."""
    _check_rep("Phi", Phi, T)
    target = Phi if target is None else target
    DPhi = _D(d, Phi)
    return _solve_gram(_mT(DPhi) @ Phi, _mT(DPhi) @ (T @ target))


def optimal_bidirectional_predictors(Phi: Tensor, Psi: Tensor, T: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """``(P_f*, P_b*)``: least-squares forward (Φ[x] → Ψ[y]) and backward (Ψ[y] → Φ[x]) predictors."""
    P_f = optimal_predictor(Phi, T, d, target=Psi)
    joint = d[..., :, None] * T
    d_next = joint.sum(-2)
    DPsi = _D(d_next, Psi)
    P_b = _solve_gram(_mT(DPsi) @ Psi, _mT(Psi) @ (_mT(joint) @ Phi))
    return P_f, P_b


class ByolPiGradients(NamedTuple):
    phi: Tensor  # ∇_Φ L [..., S, k]
    P: Tensor  # ∇_P L [..., k, k]


def byol_pi_gradients(Phi: Tensor, P: Tensor, T: Tensor, d: Tensor, gradient: str = "semi") -> ByolPiGradients:
    """Analytic gradients of :func:`expected_byol_pi_loss` (semi: target treated as a constant)."""
    _check_choice("gradient", gradient, GRADIENTS)
    _check_rep("Phi", Phi, T)
    resid = Phi @ P - T @ Phi  # [..., S, k]: ΦP − TΦ (prediction minus expected target)
    Dres = _D(d, resid)
    g_phi = 2 * Dres @ _mT(P)
    if gradient == "full":
        d_next = (d[..., None, :] @ T)[..., 0, :]
        g_phi = g_phi - 2 * (_mT(T) @ _D(d, Phi @ P) - _D(d_next, Phi))
    return ByolPiGradients(g_phi, 2 * _mT(Phi) @ Dres)


class BidirectionalGradients(NamedTuple):
    phi: Tensor
    psi: Tensor
    P_f: Tensor
    P_b: Tensor


def bidirectional_gradients(
    Phi: Tensor,
    Psi: Tensor,
    P_f: Tensor,
    P_b: Tensor,
    T: Tensor,
    d: Tensor,
) -> BidirectionalGradients:
    """Analytic semi-gradients of :func:`expected_bidirectional_loss`."""
    _check_rep("Phi", Phi, T)
    _check_rep("Psi", Psi, T)
    joint = d[..., :, None] * T
    d_next = joint.sum(-2)
    f_res = _D(d, Phi @ P_f) - joint @ Psi  # D Φ P_f − D T Ψ
    b_res = _D(d_next, Psi @ P_b) - _mT(joint) @ Phi  # D' Ψ P_b − Tᵀ D Φ
    return BidirectionalGradients(
        2 * f_res @ _mT(P_f), 2 * b_res @ _mT(P_b), 2 * _mT(Phi) @ f_res, 2 * _mT(Psi) @ b_res
    )


# ------------------------------------------------------------------------------------------------
# continuous-time dynamics
# ------------------------------------------------------------------------------------------------
def byol_pi_field(
    T: Tensor, d: Tensor, *, gradient: str = "semi", predictor: str = "optimal", predictor_rate: float = 1.0
) -> Callable[[State], State]:
    """The BYOL-Π vector field on the state ``(Φ, P)``.

    ``predictor="optimal"``: P is replaced by P*(Φ) at every evaluation (the fast-predictor limit of
    two-timescale learning) and ``dP/dt = 0``. ``"learned"``: ``dP/dt = −predictor_rate · ∇_P L``;
    a small rate is the slow predictor, a large one approaches the optimal predictor.
    Always ``dΦ/dt = −∇_Φ L(Φ, P)`` with the chosen gradient.
    """
    _check_choice("gradient", gradient, GRADIENTS)
    _check_choice("predictor", predictor, PREDICTORS)
    if predictor_rate <= 0:
        raise ValueError(f"predictor_rate must be > 0, got {predictor_rate}")

    def field(state: State) -> State:
        Phi, P = state
        if predictor == "optimal":
            P = optimal_predictor(Phi, T, d)
        g = byol_pi_gradients(Phi, P, T, d, gradient)
        dP = torch.zeros_like(P) if predictor == "optimal" else -predictor_rate * g.P
        return -g.phi, dP

    return field


def bidirectional_field(
    T: Tensor, d: Tensor, *, predictor: str = "optimal", predictor_rate: float = 1.0
) -> Callable[[State], State]:
    """The bidirectional vector field on ``(Φ, Ψ, P_f, P_b)`` (semi-gradients)."""
    _check_choice("predictor", predictor, PREDICTORS)
    if predictor_rate <= 0:
        raise ValueError(f"predictor_rate must be > 0, got {predictor_rate}")

    def field(state: State) -> State:
        Phi, Psi, P_f, P_b = state
        if predictor == "optimal":
            P_f, P_b = optimal_bidirectional_predictors(Phi, Psi, T, d)
        g = bidirectional_gradients(Phi, Psi, P_f, P_b, T, d)
        if predictor == "optimal":
            return -g.phi, -g.psi, torch.zeros_like(P_f), torch.zeros_like(P_b)
        return -g.phi, -g.psi, -predictor_rate * g.P_f, -predictor_rate * g.P_b

    return field


def rk4_step(field: Callable[[State], State], state: State, h: float) -> State:
    """One classical Runge-Kutta step of size h."""
    k1 = field(state)
    k2 = field(tuple(s + 0.5 * h * k for s, k in zip(state, k1)))
    k3 = field(tuple(s + 0.5 * h * k for s, k in zip(state, k2)))
    k4 = field(tuple(s + h * k for s, k in zip(state, k3)))
    return tuple(s + (h / 6) * (a + 2 * b + 2 * c + e) for s, a, b, c, e in zip(state, k1, k2, k3, k4))


def euler_step(field: Callable[[State], State], state: State, h: float) -> State:
    """One explicit Euler step (= a full-batch gradient-descent step with learning rate h)."""
    return tuple(s + h * k for s, k in zip(state, field(state)))


class Trajectory(NamedTuple):
    times: Tensor  # [m]
    states: list[State]  # m recorded states (t = times[i])


def integrate(
    field: Callable[[State], State],
    state0: State,
    *,
    dt: float,
    steps: int,
    method: str = "rk4",
    record_every: int = 1,
    progress: Callable | None = None,
) -> Trajectory:
    """Integrate ``dstate/dt = field(state)`` for ``steps`` fixed steps of size ``dt``.

    Records the state at t = 0 and every ``record_every`` steps (and the last). ``progress`` wraps the
    step range (e.g. ``run.progress``).
    """
    _check_choice("method", method, METHODS)
    if dt <= 0 or steps < 0 or record_every < 1:
        raise ValueError(
            f"need dt > 0, steps >= 0, record_every >= 1; got dt={dt}, steps={steps}, record_every={record_every}"
        )
    step = rk4_step if method == "rk4" else euler_step
    state = tuple(state0)
    times, states = [0.0], [state]
    it = range(1, steps + 1)
    for i in progress(it) if progress is not None else it:
        state = step(field, state, dt)
        if i % record_every == 0 or i == steps:
            times.append(i * dt)
            states.append(state)
    return Trajectory(torch.tensor(times, dtype=torch.float64), states)


# ------------------------------------------------------------------------------------------------
# SGD on sampled transitions (tabular Φ)
# ------------------------------------------------------------------------------------------------
def sgd_byol_pi(
    Phi0: Tensor,
    T: Tensor,
    d: Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    predictor: str = "optimal",
    predictor_lr: float | None = None,
    gradient: str = "semi",
    P0: Tensor | None = None,
    generator: torch.Generator | None = None,
    record_every: int = 100,
) -> Trajectory:
    """Stochastic-gradient BYOL-Π on a tabular Φ from sampled (x, y) pairs.

    Shapes: Phi0 [S, k] or [B, S, k] (B independent problems trained at once, e.g. random MDPs),
    T [(B,) S, S], d [(B,) S], P0 [(B,) k, k] (default: identity).
    Each step samples ``batch_size`` pairs ``x ~ d, y ~ T(·|x)`` per problem and takes a plain SGD
    step of :func:`byol_pi_loss` on Φ. The predictor is the exact P*(Φ) (``"optimal"``) or learned
    by SGD on the same batch at ``predictor_lr`` (two-timescale when predictor_lr ≫ lr).
    Returns the states ``(Φ, P)`` at step 0 and every ``record_every`` steps; ``times`` are step counts.
    """
    _check_choice("gradient", gradient, GRADIENTS)
    _check_choice("predictor", predictor, PREDICTORS)
    if predictor == "learned" and (predictor_lr is None or predictor_lr <= 0):
        raise ValueError(f"a learned predictor needs predictor_lr > 0, got {predictor_lr}")
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0; got {steps}, {batch_size}, {lr}")
    batched = Phi0.dim() == 3
    Phi_b = Phi0 if batched else Phi0[None]
    T_b, d_b = (T, d) if batched else (T[None], d[None])
    B, S, k = Phi_b.shape
    P_b = torch.eye(k, dtype=Phi0.dtype).expand(B, k, k) if P0 is None else (P0 if batched else P0[None])
    Phi = Phi_b.clone().requires_grad_(True)
    P = P_b.clone().requires_grad_(predictor == "learned")
    # all samples up front: x [B, steps, n], y [B, steps, n]
    xs = torch.multinomial(d_b, steps * batch_size, replacement=True, generator=generator)  # [B, steps*n]
    rows = T_b[torch.arange(B)[:, None], xs]  # [B, steps*n, S]
    ys = torch.multinomial(rows.reshape(-1, S), 1, generator=generator).view(B, steps, batch_size)
    xs = xs.view(B, steps, batch_size)
    bidx = torch.arange(B)[:, None]

    def unbatch(X: Tensor) -> Tensor:
        return X if batched else X[0]

    times, states = [0.0], [(unbatch(Phi_b).clone(), unbatch(P.detach()).clone())]
    for i in range(1, steps + 1):
        x, y = xs[:, i - 1], ys[:, i - 1]
        if predictor == "optimal":
            with torch.no_grad():
                P.copy_(optimal_predictor(Phi, T_b, d_b))
        loss = byol_pi_loss(Phi[bidx, x], Phi[bidx, y], P, stop_target_gradients=gradient == "semi").sum()
        grads = torch.autograd.grad(loss, [Phi, P] if predictor == "learned" else [Phi])
        with torch.no_grad():
            Phi -= lr * grads[0]
            if predictor == "learned":
                P -= predictor_lr * grads[1]
        if i % record_every == 0 or i == steps:
            times.append(float(i))
            states.append((unbatch(Phi.detach()).clone(), unbatch(P.detach()).clone()))
    return Trajectory(torch.tensor(times, dtype=torch.float64), states)


# ------------------------------------------------------------------------------------------------
# diagnostics
# ------------------------------------------------------------------------------------------------
def gram_drift(Phi: Tensor, Phi0: Tensor) -> Tensor:
    """``‖ΦᵀΦ − Φ₀ᵀΦ₀‖_F / ‖Φ₀ᵀΦ₀‖_F`` - shape [...]; 0 while the invariant holds."""
    G, G0 = _mT(Phi) @ Phi, _mT(Phi0) @ Phi0
    return torch.linalg.matrix_norm(G - G0) / torch.linalg.matrix_norm(G0)


def sigma_min(Phi: Tensor) -> Tensor:
    """Smallest singular value of Φ - shape [...]; → 0 under (dimensional) collapse; NaN where Φ is not finite."""
    finite = torch.isfinite(Phi).flatten(-2).all(-1)
    s = torch.linalg.svdvals(torch.where(finite[..., None, None], Phi, torch.zeros_like(Phi)))[..., -1]
    return torch.where(finite, s, torch.full_like(s, float("nan")))


def eigen_selection(Phi: Tensor, eigvecs: Tensor) -> Tensor:
    """Weight of each eigenvector in span(Φ): ``‖Qᵀ u_i‖²`` for each column u_i of ``eigvecs`` - [S].

    With orthonormal eigenvectors (symmetric T) the weights lie in [0, 1] and sum to k; a clean
    eigen-subspace has k weights at 1 and the rest at 0.
    """
    Q = orthonormal_basis(Phi)
    U = eigvecs / torch.linalg.vector_norm(eigvecs, dim=0, keepdim=True)
    return (Q.mH @ U).abs().pow(2).sum(0)


def orthonormal_init(
    num_states: int,
    k: int,
    *,
    batch: tuple[int, ...] = (),
    scale: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Random ``Φ₀ [..., S, k]`` with orthonormal columns times ``scale`` (ΦᵀΦ = scale² I)."""
    if not 1 <= k <= num_states:
        raise ValueError(f"k must be in [1, num_states={num_states}], got {k}")
    G = torch.randn(*batch, num_states, k, generator=generator, dtype=dtype)
    return scale * torch.linalg.qr(G).Q


def fast_predictor_dt(predictor_rate: float, d: Tensor, dt_max: float) -> float:
    """An RK4 step for a learned predictor at rate β, capped at ``dt_max``.

    ``dP/dt = −β ∇_P L = −2β Φᵀ D (ΦP − TΦ)`` has rate ≤ 2β·max(d) for orthonormal Φ, so
    ``dt = 0.5 / (β·max d)`` keeps |rate·dt| ≤ 1, well inside RK4's stability region (2.78); halving it
    changed no reported number by more than 1e-4 in a pilot.
    """
    if predictor_rate <= 0 or dt_max <= 0:
        raise ValueError(f"predictor_rate and dt_max must be > 0, got {predictor_rate}, {dt_max}")
    return min(dt_max, 0.5 / (predictor_rate * float(d.max())))


# ------------------------------------------------------------------------------------------------
# which subspace the dynamics select
# ------------------------------------------------------------------------------------------------
class EigenSelection(NamedTuple):
    """Which eigenvectors of a symmetric T the span of Φ holds (ranks index the spectrum sorted by value)."""

    ranks: list[int]  # the k eigenvectors with the most weight in span(Φ), ascending
    clean: bool  # each of them lies ≥ threshold in span(Φ): span(Φ) is an eigen-subspace
    top_abs: bool  # they are the top-k by |λ|
    top_real: bool  # they are the top-k by value
    extremal: bool  # the m largest and the k − m most negative, for some m
    purity: float  # their mean weight in span(Φ) (1 for an eigen-subspace)
    align_top_abs: float  # alignment of span(Φ) with the top-k eigenvectors by |λ|


def classify_eigen_selection(Phi: Tensor, lam: Tensor, vecs: Tensor, k: int, threshold: float = 0.99) -> EigenSelection:
    """Classify span(Φ [S, k]) against the eigenvectors ``vecs`` [S, S] (columns) of a symmetric T whose
    eigenvalues ``lam`` [S] are sorted by value, descending (``mdp.eig_sorted(T, by="real")``).

    "Extremal" selections (the m largest and k − m most negative eigenvalues) are the local maxima of
    ``Σ_selected λ²`` - the objective ``Tr[(ΦᵀTΦ)²]`` - so a mixed-sign spectrum can stop the flow at a
    stable eigen-subspace that is not the top-k by |λ|.
    """
    S = Phi.shape[-2]
    if not 1 <= k <= S or tuple(lam.shape) != (S,) or tuple(vecs.shape) != (S, S):
        raise ValueError(
            f"need 1 <= k <= S and lam [S], vecs [S, S] for Phi [S, k] = {tuple(Phi.shape)}; got k={k}, "
            f"lam {tuple(lam.shape)}, vecs {tuple(vecs.shape)}"
        )
    w = eigen_selection(Phi, vecs)  # [S]
    idx = sorted(torch.topk(w, k).indices.tolist())
    abs_idx = sorted(torch.argsort(lam.abs(), descending=True, stable=True)[:k].tolist())
    m = sum(i < k for i in idx)  # how many of the k largest were selected
    return EigenSelection(
        ranks=idx,
        clean=bool(w[idx].min() >= threshold),
        top_abs=idx == abs_idx,
        top_real=idx == list(range(k)),
        extremal=idx == list(range(m)) + list(range(S - (k - m), S)),
        purity=float(w[idx].sum() / k),
        align_top_abs=float(alignment(vecs[:, abs_idx], Phi)),
    )


def whitened_singular_subspaces(T: Tensor, d: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The subspaces bidirectional learning converges to for a state law ``d`` [S] that need not be uniform.

    ``(D^{-1/2} U_k, D'^{-1/2} V_k)`` - each [S, k] - with U_k, V_k the top-k left/right singular vectors
    of ``A = D^{1/2} T D'^{-1/2}`` and ``D' = diag(dᵀT)`` (the law of the next state). For uniform d and a
    doubly-stochastic T this is the top-k singular subspaces of T itself. docs/self_predictive.md left the
    non-uniform case open; the tests show the flow converges here and that these spans are a fixed point of it.
    """
    d_next = d @ T
    if not (bool((d > 0).all()) and bool((d_next > 0).all())):
        raise ValueError("d and dᵀT must be positive on every state (D^{-1/2} and D'^{-1/2} are needed)")
    A = d.sqrt()[:, None] * T / d_next.sqrt()[None, :]
    U, _, V = top_singular_vectors(A, k)
    return U / d.sqrt()[:, None], V / d_next.sqrt()[:, None]


# ------------------------------------------------------------------------------------------------
# deep version: an MLP encoder trained from sampled transitions
# ------------------------------------------------------------------------------------------------
TARGETS = ("stopgrad", "ema", "none")
DEEP_PREDICTORS = ("learned", "least_squares")


@dataclass(frozen=True)
class DeepSelfPredictiveConfig:
    """Deep BYOL-Π / bidirectional training on observations of a finite chain.

    ``target``: "stopgrad" (online net, detached: the semi-gradient), "ema" (a Polyak-averaged copy,
    as in BYOL), "none" (differentiate through the target: the full gradient).
    ``predictor``: "learned" (linear, SGD at ``predictor_lr``: two-timescale when ≫ lr) or
    "least_squares" (the batch least-squares predictor, i.e. the optimal predictor estimated on the batch).
    """

    k: int = 4
    hidden: int = 128
    steps: int = 3000
    batch_size: int = 256
    lr: float = 10.0  # plain SGD on the encoder; large because the loss weights each state by d(x) ≈ 1/|X|
    predictor_lr: float = 0.5  # SGD on the predictor (ignored for least_squares)
    target: str = "stopgrad"
    ema_decay: float = 0.99
    predictor: str = "least_squares"
    ridge: float = 1e-6  # relative ridge for the batch least-squares predictor
    bidirectional: bool = False

    def __post_init__(self) -> None:
        _check_choice("target", self.target, TARGETS)
        _check_choice("predictor", self.predictor, DEEP_PREDICTORS)
        for name in ("k", "hidden", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.predictor_lr <= 0:
            raise ValueError(f"lr and predictor_lr must be > 0, got {self.lr}, {self.predictor_lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


class MLPEncoder(nn.Module):
    """``obs [n, *obs_shape] → features [n, k]``: flatten, Linear-ReLU-Linear (no output activation)."""

    def __init__(self, obs_dim: int, hidden: int, k: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, k))

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs)


def least_squares_predictor(inputs: Tensor, targets: Tensor, ridge: float = 1e-6) -> Tensor:
    """``argmin_P ‖inputs P − targets‖²`` on a batch (detached) - [k, k]; a relative ridge keeps it defined."""
    X, Y = inputs.detach(), targets.detach()
    G = X.T @ X
    eye = torch.eye(G.shape[0], dtype=G.dtype)
    return torch.linalg.solve(G + ridge * G.diagonal().mean().clamp_min(1e-12) * eye, X.T @ Y)


class DeepStep(NamedTuple):
    step: int
    loss: float
    sigma_min: float  # of the online features over all states
    alignment: float | None  # filled by the caller's metric, if given


class DeepResult(NamedTuple):
    phi: Tensor  # final online features of all states [S, k]
    psi: Tensor | None  # bidirectional: backward-encoder features [S, k]
    history: list[DeepStep]
    encoder: nn.Module


def train_deep_self_predictive(
    obs: Tensor,
    T: Tensor,
    d: Tensor,
    cfg: DeepSelfPredictiveConfig,
    *,
    generator: torch.Generator | None = None,
    metric: Callable[[Tensor, Tensor | None], float] | None = None,
    log_every: int = 100,
    progress: Callable | None = None,
) -> DeepResult:
    """Train an MLP encoder with BYOL-Π (or the bidirectional loss) on sampled transitions.

    ``obs [S, *obs_shape]`` is the observation of each state (one-hot rows, pixel images, ...); each
    step draws ``x ~ d``, ``y ~ T(·|x)`` and trains on ``obs[x]``, ``obs[y]`` with plain SGD (plain,
    because Adam's per-coordinate scaling is not a gradient flow and would blur the comparison with
    the ODE). ``metric(phi_all, psi_all)`` is evaluated on all states at step 0 and every
    ``log_every`` steps (the step-0 entry has loss NaN). A non-finite loss (divergence) is recorded
    with NaN loss, alignment and σ_min, and ends training early.
    The model is float32 (it is a network); ``T`` and ``d`` may be float64.
    """
    S = T.shape[0]
    if obs.shape[0] != S:
        raise ValueError(f"obs must have one row per state ({S}), got {obs.shape[0]}")
    obs = obs.float()
    obs_dim = int(obs[0].numel())
    # network init from the caller's stream, without touching the global RNG state
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = MLPEncoder(obs_dim, cfg.hidden, cfg.k)
        enc_b = MLPEncoder(obs_dim, cfg.hidden, cfg.k) if cfg.bidirectional else None
    pred = nn.Parameter(torch.eye(cfg.k))  # the forward predictor; identity start = "predict no change"
    pred_b = nn.Parameter(torch.eye(cfg.k)) if cfg.bidirectional else None
    tgt = make_target(enc) if cfg.target == "ema" else None
    tgt_b = make_target(enc_b) if (cfg.target == "ema" and enc_b is not None) else None
    enc_params = list(enc.parameters()) + (list(enc_b.parameters()) if enc_b is not None else [])
    opt = torch.optim.SGD(enc_params, lr=cfg.lr)
    pred_params = [pred] + ([pred_b] if pred_b is not None else [])
    opt_p = torch.optim.SGD(pred_params, lr=cfg.predictor_lr)
    stop = cfg.target != "none"
    history: list[DeepStep] = []

    def features(net: nn.Module, target_net: nn.Module | None, o: Tensor) -> Tensor:
        if target_net is None:
            return net(o)
        with torch.no_grad():
            return target_net(o)

    # all transitions up front: one sampler call instead of two per step
    xs = torch.multinomial(d, cfg.steps * cfg.batch_size, replacement=True, generator=generator)
    ys = torch.multinomial(T[xs], 1, generator=generator)[:, 0]
    xs, ys = xs.view(cfg.steps, cfg.batch_size), ys.view(cfg.steps, cfg.batch_size)

    def record(step: int, loss: float) -> None:
        with torch.no_grad():
            phi_all = enc(obs).double()
            psi_all = enc_b(obs).double() if enc_b is not None else None
        finite = bool(torch.isfinite(phi_all).all()) and (psi_all is None or bool(torch.isfinite(psi_all).all()))
        value = None
        if metric is not None:
            value = float(metric(phi_all, psi_all)) if finite else float("nan")
        history.append(DeepStep(step, loss, float(sigma_min(phi_all)), value))

    record(0, float("nan"))
    it = range(1, cfg.steps + 1)
    for step in progress(it) if progress is not None else it:
        ox, oy = obs[xs[step - 1]], obs[ys[step - 1]]
        if enc_b is None:
            phi_x = enc(ox)
            phi_y = features(enc, tgt, oy) if stop else enc(oy)
            P = least_squares_predictor(phi_x, phi_y, cfg.ridge) if cfg.predictor == "least_squares" else pred
            loss = byol_pi_loss(phi_x, phi_y, P, stop_target_gradients=stop)
        else:
            phi_x, psi_y = enc(ox), enc_b(oy)
            psi_t = features(enc_b, tgt_b, oy) if stop else psi_y
            phi_t = features(enc, tgt, ox) if stop else phi_x
            if cfg.predictor == "least_squares":
                P_f = least_squares_predictor(phi_x, psi_t, cfg.ridge)
                P_b = least_squares_predictor(psi_y, phi_t, cfg.ridge)
            else:
                P_f, P_b = pred, pred_b
            # online on one side, (target) on the other: the forward term trains Φ, the backward term Ψ
            loss = byol_pi_loss(phi_x, psi_t, P_f, stop) + byol_pi_loss(psi_y, phi_t, P_b, stop)
        opt.zero_grad()
        opt_p.zero_grad()
        loss.backward()
        opt.step()
        if cfg.predictor == "learned":
            opt_p.step()
        if tgt is not None:
            ema_update(tgt, enc, cfg.ema_decay)
            if tgt_b is not None:
                ema_update(tgt_b, enc_b, cfg.ema_decay)
        if not torch.isfinite(loss):  # diverged (too large a step): record it and stop
            record(step, float("nan"))
            break
        if step % log_every == 0 or step == cfg.steps:
            record(step, float(loss.detach()))
    with torch.no_grad():
        phi_all = enc(obs).double()
        psi_all = enc_b(obs).double() if enc_b is not None else None
    return DeepResult(phi_all, psi_all, history, enc)
