"""SVD representations (Chandak et al., ICML 2023): a mini-batch low-rank loss, exact baseline, pseudo-counts.

Paper: "Representations and Exploration for Deep Reinforcement Learning using Singular Value
Decomposition", Chandak, Thakoor, Guo, Tang, Munos, Dabney, Borsa. ICML 2023 / arXiv 2305.00654.
Derivations: docs/svd_representations.md ("The loss and its identity", "Pseudo-counts", "Partial
observability"; the paper's exact weighting could not be checked against the PDF).

Axis legend: B batch, M reference batch, k rank, S states (S' next states), T time, O observation
features, A actions, L future length.

The loss over two networks ``f: state -> R^k`` and ``g: next state -> R^k`` is

    L(f, g) = -2 E_{(x, y) ~ d·P}[f(x)ᵀ g(y)] + E_{x̃ ~ μ, ỹ ~ ρ}[(f(x̃)ᵀ g(ỹ))²]

with the second term over *independent* draws x̃ ~ μ (the buffer's states, μ = d, by default) and
ỹ ~ ρ (the buffer's next states, ρ = dᵀP, by default). With ``F = M^½ [f]`` and ``G = R^½ [g]``
(``[f]`` the [S, k] table of outputs, M = diag μ, R = diag ρ) it equals

    L = ‖A - F Gᵀ‖²_F - ‖A‖²_F,      A = M^-½ D P R^-½,

so its minimiser is the best rank-k approximation of A (Eckart-Young), found from samples alone.

Pseudo-counts (docs/svd_representations.md, "Pseudo-counts"; resolved by derivation, not from the paper's PDF): with
μ = d the per-state minimiser ``f(x) = G_ρ⁻¹ E[g(y) | x]`` does not depend on d(x), so the "rare
states get larger norms" reading is not a theorem. Two gauge-free estimators that do carry counts:

- :func:`elliptical_counts` (default; buffer samples only): ``n̂(x) = 1/(f(x)ᵀ C⁻¹ f(x))`` with
  ``C = N E_d[f fᵀ]``. At the optimum this is ``N d(x) / lev_k(x)``: the exact count at full rank,
  and at rank k the count of the states the representation cannot tell apart from x.
- :func:`pseudo_counts` (needs a fixed state reference μ, e.g. uniform over the observation space,
  in the second term): ``n̂(x) = N μ(x) f(x)ᵀ E_ρ[g]``, the marginal of the rank-k approximation of
  the joint, i.e. N d(x) at full rank.

Training: :func:`train_svd_representation` (Adam on any mini-batch loss; it evaluates the untrained network
first, the control every claim about a trained representation needs), :func:`train_factors` (f, g on a
stream of sampled transitions) and :func:`train_history_representation` (histories against their futures).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from foresight.core.stats import ridge_probe_accuracy
from foresight.rl.gridworlds import TMAZE_SYMBOLS
from foresight.rl.mdp import alignment, principal_angles, top_singular_vectors


# ------------------------------------------------------------------------------------------------
# the loss
# ------------------------------------------------------------------------------------------------
@dataclass
class SVDLoss:
    """The mini-batch loss and its two named terms (each a scalar tensor)."""

    loss: Tensor  # -2 * positive + negative
    positive: Tensor  # mean over pairs of f(x_b)ᵀ g(y_b)
    negative: Tensor  # mean over independent pairs of (f(x̃)ᵀ g(ỹ))²


def _check_features(name: str, t: Tensor, k: int | None = None) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape [batch, k], got {tuple(t.shape)}")
    if k is not None and t.shape[1] != k:
        raise ValueError(f"{name} has k={t.shape[1]} features, expected k={k}")


def _sum_sq_products(a: Tensor, b: Tensor) -> Tensor:
    """``Σ_{i,j} (a_i · b_j)²`` in O((|a| + |b|) k²) via ``tr(aᵀa bᵀb)``, never forming [|a|, |b|]."""
    return ((a.T @ a) * (b.T @ b)).sum()


def svd_loss(f_x: Tensor, g_y: Tensor, *, f_ref: Tensor | None = None, g_ref: Tensor | None = None) -> SVDLoss:
    """Unbiased mini-batch estimate of the low-rank loss L(f, g).

    Args:
        f_x: ``[B, k]`` f of the states x_b of B sampled transitions.
        g_y: ``[B, k]`` g of their next states y_b (row b pairs with row b of ``f_x``).
        f_ref: ``[M, k]`` f of states drawn from a reference μ independent of the batch (e.g.
            uniform over the observation space, the pseudo-count variant). ``None``: μ = d, using
            ``f_x`` itself.
        g_ref: ``[M', k]`` g of next states drawn from a reference ρ. ``None``: ρ = the next-state
            marginal, using ``g_y`` itself.

    When both references are ``None`` the second term averages over the off-diagonal pairs b ≠ c
    only: ``f(x_b)`` and ``g(y_b)`` come from one transition and are dependent, and keeping the
    diagonal would add an O(1/B) bias (docs/svd_representations.md, "The mini-batch estimator"). Pairs
    with an independent reference are all used.
    """
    _check_features("f_x", f_x)
    k = f_x.shape[1]
    _check_features("g_y", g_y, k)
    if f_x.shape[0] != g_y.shape[0]:
        raise ValueError(f"f_x and g_y must pair up row by row, got batches {f_x.shape[0]} and {g_y.shape[0]}")
    for name, ref in (("f_ref", f_ref), ("g_ref", g_ref)):
        if ref is not None:
            _check_features(name, ref, k)
    positive = (f_x * g_y).sum(-1).mean()
    if f_ref is None and g_ref is None:
        B = f_x.shape[0]
        if B < 2:
            raise ValueError(f"the off-diagonal estimator needs a batch of at least 2, got {B}")
        diag = ((f_x * g_y).sum(-1) ** 2).sum()
        negative = (_sum_sq_products(f_x, g_y) - diag) / (B * (B - 1))
    else:
        a = f_x if f_ref is None else f_ref
        b = g_y if g_ref is None else g_ref
        negative = _sum_sq_products(a, b) / (a.shape[0] * b.shape[0])
    return SVDLoss(loss=-2.0 * positive + negative, positive=positive, negative=negative)


def _check_distribution(name: str, p: Tensor, n: int) -> None:
    if tuple(p.shape) != (n,):
        raise ValueError(f"{name} must have shape [{n}], got {tuple(p.shape)}")
    if (p < 0).any() or abs(float(p.sum()) - 1.0) > 1e-6:
        raise ValueError(f"{name} must be a probability vector (non-negative, sums to 1), sums to {float(p.sum()):.6g}")


def svd_loss_matrix(
    f_table: Tensor, g_table: Tensor, T: Tensor, d: Tensor, rho: Tensor | None = None, mu: Tensor | None = None
) -> Tensor:
    """The exact expectation of :func:`svd_loss` for tabular f, g (no sampling).

    ``f_table [S, k]``, ``g_table [S', k]``, transitions ``T [S, S']``, state distribution ``d [S]``,
    reference over next states ``rho [S']`` (default ``dᵀT``) and over states ``mu [S]`` (default d):
    ``-2 Σ d(x) T(x,y) f(x)ᵀg(y) + Σ μ(x) ρ(y) (f(x)ᵀg(y))²``.
    """
    rho, mu = _defaults(T, d, rho, mu)
    fg = f_table @ g_table.T  # [S, S']
    return -2.0 * (d[:, None] * T * fg).sum() + (mu[:, None] * rho[None, :] * fg**2).sum()


def _defaults(T: Tensor, d: Tensor, rho: Tensor | None, mu: Tensor | None) -> tuple[Tensor, Tensor]:
    if T.dim() != 2:
        raise ValueError(f"T must have shape [S, S'], got {tuple(T.shape)}")
    S, S2 = T.shape
    _check_distribution("d", d, S)
    rho = d @ T if rho is None else rho
    mu = d if mu is None else mu
    _check_distribution("rho", rho, S2)
    _check_distribution("mu", mu, S)
    return rho, mu


def svd_target(T: Tensor, d: Tensor, rho: Tensor | None = None, mu: Tensor | None = None) -> Tensor:
    """``A = M^-½ D T R^-½`` - [S, S'], the matrix whose rank-k approximation the loss finds.

    States with ρ(y) = 0 get a zero column (they never appear as references, so g there is free).
    """
    rho, mu = _defaults(T, d, rho, mu)
    if (mu <= 0).any():
        raise ValueError("mu must be positive on every state (the loss divides by it)")
    return (d / mu.sqrt())[:, None] * T * _inv_sqrt_or_zero(rho)[None, :]


def _inv_sqrt_or_zero(p: Tensor) -> Tensor:
    """``p^-½`` where p > 0, else 0 (states a reference never draws carry no weight)."""
    return torch.where(p > 0, p.clamp_min(torch.finfo(p.dtype).tiny).rsqrt(), torch.zeros_like(p))


def to_factors(f_table: Tensor, g_table: Tensor, rho: Tensor, mu: Tensor) -> tuple[Tensor, Tensor]:
    """``F = M^½ [f]``, ``G = R^½ [g]``: the tables in the geometry where L = ‖A - FGᵀ‖² - ‖A‖²."""
    return mu.sqrt()[:, None] * f_table, rho.sqrt()[:, None] * g_table


@dataclass
class ExactSVD:
    """The exact rank-k solution on a finite chain (the baseline the mini-batch loss should find)."""

    A: Tensor  # [S, S'] the decomposed matrix
    U: Tensor  # [S, k] left singular vectors
    s: Tensor  # [k] singular values, descending
    V: Tensor  # [S', k] right singular vectors
    f: Tensor  # [S, k] a minimising f table, balanced gauge: M^-½ U Σ^½
    g: Tensor  # [S', k] the matching g table: R^-½ V Σ^½
    min_loss: Tensor  # the minimum value of L: -Σ_{i<=k} s_i²


def exact_svd(T: Tensor, d: Tensor, k: int, rho: Tensor | None = None, mu: Tensor | None = None) -> ExactSVD:
    """Top-k SVD of :func:`svd_target` and the f, g tables that minimise :func:`svd_loss_matrix`."""
    rho, mu = _defaults(T, d, rho, mu)
    A = svd_target(T, d, rho, mu)
    U, s, V = top_singular_vectors(A, k)
    root = s.sqrt()
    f = mu.rsqrt()[:, None] * U * root
    g = _inv_sqrt_or_zero(rho)[:, None] * V * root
    return ExactSVD(A=A, U=U, s=s, V=V, f=f, g=g, min_loss=-(s**2).sum())


# ------------------------------------------------------------------------------------------------
# gauge fixing: F Gᵀ is identifiable, (F, G) only up to F M, G M^-T
# ------------------------------------------------------------------------------------------------
def gauge_fix(F: Tensor, G: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Canonical factors of ``F Gᵀ``: ``(U Σ^½, V Σ^½, σ)`` from its thin SVD, with signs fixed.

    Any pair (F M, G M^-T) gives the same output, so learned factors can be compared with
    :class:`ExactSVD` factors entry by entry (unique when the k singular values are distinct).
    Sign convention: the largest-magnitude entry of each column of U is positive. Runs in
    O((S + S') k²) through two QRs; the [S, S'] product is never formed.
    """
    if F.dim() != 2 or G.dim() != 2 or F.shape[1] != G.shape[1]:
        raise ValueError(f"F and G must be [S, k] and [S', k] with the same k, got {tuple(F.shape)}, {tuple(G.shape)}")
    Qf, Rf = torch.linalg.qr(F)
    Qg, Rg = torch.linalg.qr(G)
    u, s, vh = torch.linalg.svd(Rf @ Rg.T)  # [k, k] core
    U, V = Qf @ u, Qg @ vh.T
    idx = U.abs().argmax(0)
    sign = torch.sign(U[idx, torch.arange(U.shape[1])])
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    root = s.sqrt()
    return U * sign * root, V * sign * root, s


def subspace_angles_deg(learned: Tensor, reference: Tensor) -> Tensor:
    """Principal angles (degrees, ascending) between span(learned) and span(reference) - [k]."""
    return torch.rad2deg(principal_angles(learned, reference))


# ------------------------------------------------------------------------------------------------
# factor models
# ------------------------------------------------------------------------------------------------
@dataclass
class Factors:
    """Outputs of a factor model: f of the states, g of the next states."""

    f: Tensor  # [B, k]
    g: Tensor  # [B, k]


class TabularFactors(nn.Module):
    """f and g as free [S, k] tables (the tabular case of the loss).

    Init: N(0, init_std²); small so that f gᵀ starts near 0 and the loss near 0.
    """

    def __init__(
        self,
        num_states: int,
        k: int,
        *,
        num_next_states: int | None = None,
        init_std: float = 0.1,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if num_states < 1 or k < 1:
            raise ValueError(f"num_states and k must be >= 1, got num_states={num_states}, k={k}")
        S2 = num_states if num_next_states is None else num_next_states
        self.k = k
        self.f_table = nn.Parameter(init_std * torch.randn(num_states, k, generator=generator, dtype=dtype))
        self.g_table = nn.Parameter(init_std * torch.randn(S2, k, generator=generator, dtype=dtype))

    def f(self, x: Tensor) -> Tensor:
        return self.f_table[x]  # [B] long -> [B, k]

    def g(self, y: Tensor) -> Tensor:
        return self.g_table[y]

    def forward(self, x: Tensor, y: Tensor) -> Factors:
        return Factors(self.f(x), self.g(y))

    def __repr__(self) -> str:
        return f"TabularFactors(num_states={self.f_table.shape[0]}, k={self.k})"


def mlp(in_dim: int, hidden: int, out_dim: int, depth: int = 2) -> nn.Sequential:
    """``depth`` hidden ReLU layers of width ``hidden``, then a linear layer to ``out_dim``."""
    if min(in_dim, hidden, out_dim) < 1 or depth < 0:
        raise ValueError(
            f"mlp needs positive sizes, got in_dim={in_dim}, hidden={hidden}, out_dim={out_dim}, depth={depth}"
        )
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class NeuralFactors(nn.Module):
    """f and g as two MLPs on observation features (``[B, O]`` and ``[B, O']`` floats)."""

    def __init__(
        self, obs_dim: int, k: int, *, hidden: int = 64, depth: int = 2, next_obs_dim: int | None = None
    ) -> None:
        super().__init__()
        self.k = k
        self.f_net = mlp(obs_dim, hidden, k, depth)
        self.g_net = mlp(obs_dim if next_obs_dim is None else next_obs_dim, hidden, k, depth)

    def f(self, x: Tensor) -> Tensor:
        return self.f_net(x)

    def g(self, y: Tensor) -> Tensor:
        return self.g_net(y)

    def forward(self, x: Tensor, y: Tensor) -> Factors:
        return Factors(self.f(x), self.g(y))


# ------------------------------------------------------------------------------------------------
# pseudo-counts and the exploration bonus
# ------------------------------------------------------------------------------------------------
def density_ratio(f_x: Tensor, g_mean: Tensor) -> Tensor:
    """``f(x)ᵀ E_ρ[g(ỹ)]`` - [B]: estimates d(x)/μ(x) when the loss used a fixed state reference μ.

    Gauge-free: under (F M, G M^-T) it is unchanged. At the optimum it is
    ``Σ_y (F Gᵀ)[x, y] √ρ(y) / √μ(x)``, the marginal of the rank-k approximation of the joint.
    With μ = d it is ≈ 1 for every state and carries no count information (docs/svd_representations.md,
    "Pseudo-counts").
    """
    _check_features("f_x", f_x)
    if g_mean.shape != (f_x.shape[1],):
        raise ValueError(f"g_mean must have shape [k] = [{f_x.shape[1]}], got {tuple(g_mean.shape)}")
    return f_x @ g_mean


def pseudo_counts(f_x: Tensor, g_mean: Tensor, total: float, mu_x: Tensor | float) -> Tensor:
    """``n̂(x) = N · μ(x) · f(x)ᵀ ḡ`` - [B]: visit-count estimates from a representation trained
    with a fixed state reference μ (``mu_x`` = μ at each x, or one float for a uniform μ). Can be slightly
    negative where the low-rank fit undershoots zero; :func:`count_bonus` clamps."""
    if total < 0:
        raise ValueError(f"total must be >= 0 transitions, got {total}")
    return total * mu_x * density_ratio(f_x, g_mean)


def norm_counts(f_x: Tensor) -> Tensor:
    """The "shortcut" candidate ``1/‖f(x)‖²`` - [B] (docs/svd_representations.md, "Pseudo-counts"; reported for
    comparison; gauge-dependent)."""
    return 1.0 / f_x.pow(2).sum(-1).clamp_min(1e-12)


def count_bonus(counts: Tensor, scale: float = 1.0) -> Tensor:
    """The classic count bonus ``scale / sqrt(max(n, 0) + 1)`` (Strehl & Littman 2008 MBIE-EB form)."""
    return scale / (counts.clamp_min(0.0) + 1.0).sqrt()


def spearman(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """Spearman rank correlation of two 1-D arrays (average ranks for ties)."""
    from scipy.stats import spearmanr

    a_np = a.detach().cpu().double().numpy() if isinstance(a, Tensor) else np.asarray(a, dtype=float)
    b_np = b.detach().cpu().double().numpy() if isinstance(b, Tensor) else np.asarray(b, dtype=float)
    if a_np.shape != b_np.shape or a_np.ndim != 1:
        raise ValueError(f"spearman needs two 1-D arrays of equal length, got {a_np.shape} and {b_np.shape}")
    return float(spearmanr(a_np, b_np).statistic)


def feature_covariance(f_samples: Tensor, total: float, ridge: float = 1.0) -> Tensor:
    """``C = N · Ê_d[f fᵀ] + λ I`` - [k, k], the visit-weighted Gram matrix of the features.

    ``f_samples [n, k]`` are f at states drawn from the replay (d), ``total`` = N transitions. The
    ridge ``λ = ridge · tr(Ê[f fᵀ]) / k`` is ``ridge`` prior visits spread over the k directions, so it
    scales with the features (f is only defined up to a gauge).
    """
    _check_features("f_samples", f_samples)
    second = f_samples.T @ f_samples / f_samples.shape[0]  # [k, k]
    k = second.shape[0]
    lam = ridge * second.diagonal().sum() / k
    return total * second + lam * torch.eye(k, dtype=second.dtype)


def elliptical_counts(f_x: Tensor, cov: Tensor) -> Tensor:
    """``n̂(x) = 1 / (f(x)ᵀ C⁻¹ f(x))`` - [B], with C from :func:`feature_covariance`.

    Gauge-free. For the loss with μ = d (buffer samples only), at its optimum ``F = M^½[f] = U_k Σ^½ Q``
    and ``f(x)ᵀ(N E_d[f fᵀ])⁻¹ f(x) = lev_k(x) / (N d(x))``, with ``lev_k(x) = ‖U_k[x]‖²`` the
    leverage of x in the top-k left singular subspace (Σ_x lev_k = k). So ``n̂ = N d(x) / lev_k(x)``: the exact
    count at full rank (lev = 1), and at rank k the count of the ~1/lev_k(x) states that the
    representation cannot tell apart from x. This is the elliptical (LinUCB / E3B) pseudo-count
    applied to the SVD features.
    """
    _check_features("f_x", f_x)
    if cov.shape != (f_x.shape[1], f_x.shape[1]):
        k = f_x.shape[1]
        raise ValueError(f"cov must have shape [k, k] = [{k}, {k}], got {tuple(cov.shape)}")
    sol = torch.linalg.solve(cov, f_x.T)  # [k, B]
    return 1.0 / (f_x * sol.T).sum(-1).clamp_min(1e-12)


class SVDExplorer(nn.Module):
    """Exploration hooks for :func:`foresight.rl.agents.train_ppo`: SVD auxiliary loss + pseudo-count bonus.

    Keeps a FIFO replay of (obs, next_obs) features of every transition seen, so the data
    distribution d is the agent's visitation so far. :meth:`aux_loss` is :func:`svd_loss` on a
    replay batch. f is a linear head on the agent's torso features when a ``torso`` is passed
    (the representation as an auxiliary loss), or on this module's own MLP otherwise.

    ``counts="elliptical"`` (default): the loss uses buffer samples only (μ = d, ρ = dᵀP) and the
    pseudo-count is :func:`elliptical_counts`. ``counts="ratio"``: the second term's states come from
    ``sample_reference(n) -> [n, O]`` drawn from a fixed μ (probability ``mu`` per observation) and the
    pseudo-count is :func:`pseudo_counts`. :meth:`refresh` recomputes C (or ḡ) from the replay; call it
    after each update. The bonus of a transition is ``count_bonus(n̂(next_obs), bonus_scale)``.
    """

    def __init__(
        self,
        obs_dim: int,
        k: int,
        *,
        torso_dim: int | None = None,
        hidden: int = 64,
        buffer_size: int = 100_000,
        batch_size: int = 256,
        bonus_scale: float = 0.1,
        counts: str = "elliptical",
        sample_reference: Callable[[int], Tensor] | None = None,
        mu: float | None = None,
        ridge: float = 1.0,
        refresh_samples: int = 4096,
    ) -> None:
        super().__init__()
        if counts not in ("elliptical", "ratio"):
            raise ValueError(f"counts must be 'elliptical' or 'ratio', got {counts!r}")
        if counts == "ratio" and (sample_reference is None or mu is None or not 0 < mu <= 1):
            raise ValueError(f"counts='ratio' needs sample_reference and mu in (0, 1], got mu={mu}")
        if min(obs_dim, k, buffer_size, batch_size) < 1:
            raise ValueError(
                f"obs_dim, k, buffer_size, batch_size must be >= 1, got {obs_dim}, {k}, {buffer_size}, {batch_size}"
            )
        self.k, self.count_method, self.mu, self.ridge = k, counts, mu, ridge
        self.batch_size, self.bonus_scale, self.refresh_samples = batch_size, bonus_scale, refresh_samples
        self.sample_reference = sample_reference
        self.own_f = (
            None
            if torso_dim is not None
            else nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        )
        self.f_head = nn.Linear(torso_dim if torso_dim is not None else hidden, k)
        self.g_net = mlp(obs_dim, hidden, k, 2)
        self.register_buffer("g_mean", torch.zeros(k))
        self.register_buffer("cov", torch.eye(k))
        self.register_buffer("obs_buf", torch.zeros(buffer_size, obs_dim))
        self.register_buffer("next_buf", torch.zeros(buffer_size, obs_dim))
        self.size, self.ptr, self.total, self.refreshed = 0, 0, 0, False

    def features(self, obs: Tensor, torso: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """f(obs) - [B, k]."""
        h = torso(obs) if torso is not None else self.own_f(obs)  # type: ignore[misc]
        return self.f_head(h)

    def observe(self, obs: Tensor, next_obs: Tensor) -> None:
        """Append transitions ``[N, O]`` to the FIFO replay."""
        n = obs.shape[0]
        idx = (self.ptr + torch.arange(n)) % self.obs_buf.shape[0]
        self.obs_buf[idx] = obs
        self.next_buf[idx] = next_obs
        self.ptr = int((self.ptr + n) % self.obs_buf.shape[0])
        self.size = min(self.size + n, self.obs_buf.shape[0])
        self.total += n

    def aux_loss(
        self, torso: Callable[[Tensor], Tensor] | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """:func:`svd_loss` on one replay batch."""
        if self.size < 2:
            return torch.zeros(())
        idx = torch.randint(0, self.size, (self.batch_size,), generator=generator)
        f_x = self.features(self.obs_buf[idx], torso)
        g_y = self.g_net(self.next_buf[idx])
        f_ref = None
        if self.count_method == "ratio":
            f_ref = self.features(self.sample_reference(self.batch_size), torso)  # type: ignore[misc]
        return svd_loss(f_x, g_y, f_ref=f_ref).loss

    @torch.no_grad()
    def refresh(
        self, torso: Callable[[Tensor], Tensor] | None = None, generator: torch.Generator | None = None
    ) -> None:
        """Recompute C = N Ê[f fᵀ] + λI (elliptical) or ḡ = Ê_ρ[g] (ratio) on a replay sample."""
        if self.size == 0:
            return
        idx = torch.randint(0, self.size, (min(self.refresh_samples, self.size),), generator=generator)
        if self.count_method == "elliptical":
            f = self.features(self.obs_buf[idx], torso)
            self.cov.copy_(feature_covariance(f, float(self.total), self.ridge))
        else:
            self.g_mean.copy_(self.g_net(self.next_buf[idx]).mean(0))
        self.refreshed = True

    @torch.no_grad()
    def counts(self, obs: Tensor, torso: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Pseudo-counts n̂ of observations ``[B, O]`` - [B]."""
        f = self.features(obs, torso)
        if self.count_method == "elliptical":
            return elliptical_counts(f, self.cov)
        return pseudo_counts(f, self.g_mean, float(self.total), self.mu)  # type: ignore[arg-type]

    @torch.no_grad()
    def intrinsic_reward(self, next_obs: Tensor, torso: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """``[B]`` bonus for arriving at each next observation (``bonus_scale`` before the first refresh).

        With elliptical counts each arrival is then added to C at once (``C += f fᵀ``, as LinUCB / E3B
        do), so a new state's count rises between refreshes as a true count would.
        """
        if not self.refreshed:
            return torch.full((next_obs.shape[0],), self.bonus_scale)
        f = self.features(next_obs, torso)
        if self.count_method == "elliptical":
            bonus = count_bonus(elliptical_counts(f, self.cov), self.bonus_scale)
            self.cov.add_(f.T @ f)
            return bonus
        return count_bonus(pseudo_counts(f, self.g_mean, float(self.total), self.mu), self.bonus_scale)


# ------------------------------------------------------------------------------------------------
# partial observability: history encoder against a short future ("tests"; docs/svd_representations.md,
# "Partial observability")
# ------------------------------------------------------------------------------------------------
def future_windows(obs: Tensor, actions: Tensor, length: int) -> Tensor:
    """The "test" after each step: ``(a_t, o_{t+1}, ..., a_{t+L-1}, o_{t+L})`` flattened.

    ``obs [B, T+1, O]`` (o_0..o_T), ``actions [B, T, A]`` one-hot (a_t taken after o_t) ->
    ``[B, T-L+1, L·(A+O)]``; window t is the future of the history ending at o_t.
    """
    if obs.dim() != 3 or actions.dim() != 3 or obs.shape[:2] != (actions.shape[0], actions.shape[1] + 1):
        raise ValueError(
            f"obs must be [B, T+1, O] and actions [B, T, A], got {tuple(obs.shape)} and {tuple(actions.shape)}"
        )
    T = actions.shape[1]
    if not 1 <= length <= T:
        raise ValueError(f"future length must be in [1, {T}], got {length}")
    steps = torch.cat([actions, obs[:, 1:]], -1)  # [B, T, A+O]: (a_t, o_{t+1})
    windows = steps.unfold(1, length, 1)  # [B, T-L+1, A+O, L]
    return windows.transpose(2, 3).flatten(2)


class HistoryEncoder(nn.Module):
    """f for histories: a GRU over (o_t, a_{t-1}) inputs, then a linear head to k.

    ``forward(obs [B, T, O], prev_actions [B, T, A]) -> [B, T, k]``; step t summarises o_0..o_t.
    """

    def __init__(self, obs_dim: int, num_actions: int, k: int, hidden: int = 64) -> None:
        super().__init__()
        self.k = k
        self.inp = nn.Linear(obs_dim + num_actions, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, k)

    def forward(self, obs: Tensor, prev_actions: Tensor) -> Tensor:
        x = torch.relu(self.inp(torch.cat([obs, prev_actions], -1)))  # [B, T, H]
        h, _ = self.gru(x)  # [B, T, H]
        return self.head(h)


class ObservationEncoder(nn.Module):
    """f for the last observation only (the memoryless baseline): ``[B, T, O] -> [B, T, k]``."""

    def __init__(self, obs_dim: int, k: int, hidden: int = 64) -> None:
        super().__init__()
        self.k = k
        self.net = mlp(obs_dim, hidden, k, 2)

    def forward(self, obs: Tensor, prev_actions: Tensor | None = None) -> Tensor:
        return self.net(obs)


def tmaze_inputs(trajectories: dict[str, np.ndarray]) -> tuple[Tensor, Tensor, Tensor]:
    """``(obs [N, T+1, 6], actions [N, T, 4], prev_actions [N, T+1, 4])`` one-hot encodings of
    :func:`foresight.rl.gridworlds.tmaze_trajectories` episodes; ``prev_actions[:, t]`` is a_{t-1} (zeros at t = 0),
    what :class:`HistoryEncoder` reads beside o_t."""
    obs = nn.functional.one_hot(torch.as_tensor(trajectories["obs"]), len(TMAZE_SYMBOLS)).float()
    actions = nn.functional.one_hot(torch.as_tensor(trajectories["actions"]), 4).float()
    prev = torch.cat([torch.zeros(actions.shape[0], 1, 4), actions], 1)
    return obs, actions, prev


def tmaze_probe(
    features: Callable[[Tensor, Tensor], Tensor],
    train: dict[str, np.ndarray],
    test: dict[str, np.ndarray],
    length: int,
    ridge: float = 1e-3,
) -> dict[str, float]:
    """Held-out accuracy of linear probes of the T-maze's hidden variables from a history representation.

    ``features(obs, prev_actions) -> [N, T+1, k]`` (e.g. a :class:`HistoryEncoder`) on the :func:`tmaze_inputs` of
    the ``train`` and ``test`` episodes. Ridge probes (:func:`foresight.core.stats.ridge_probe_accuracy`) are fit
    on train and scored on test, over the steps t >= 1 before an arm end (at t = 0 the cue is in view, so any
    encoder sees it): ``cue_acc`` of the cue (2 classes) and ``hidden_acc`` of the hidden state cue x position
    (``2 (length + 1)`` classes), which the last observation alone cannot tell apart.
    """

    def probe_set(tr: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        obs, _, prev = tmaze_inputs(tr)
        alive = torch.as_tensor(tr["alive"]).clone()
        alive[:, 0] = False
        cue = torch.as_tensor(tr["cue"])[:, None].expand_as(alive)
        hidden = cue * (length + 1) + torch.as_tensor(tr["pos"])
        with torch.no_grad():
            Z = features(obs, prev)
        return Z[alive].numpy(), cue[alive].numpy(), hidden[alive].numpy()

    X, cue, hid = probe_set(train)
    Xt, cue_t, hid_t = probe_set(test)
    return {
        "cue_acc": ridge_probe_accuracy(X, cue, Xt, cue_t, 2, ridge),
        "hidden_acc": ridge_probe_accuracy(X, hid, Xt, hid_t, 2 * (length + 1), ridge),
    }


# ------------------------------------------------------------------------------------------------
# training and measuring a representation
# ------------------------------------------------------------------------------------------------
@dataclass
class SVDTraining:
    """What :func:`train_svd_representation` recorded."""

    losses: list[float]  # the loss of every step
    evals: list[dict[str, float]]  # ``{"step": i, **evaluate()}`` at step 0 (untrained), every eval_every, the end


def train_svd_representation(
    params: Iterable[nn.Parameter],
    batch_loss: Callable[[int], Tensor],
    *,
    steps: int,
    lr: float,
    anneal_lr: bool = False,
    eval_every: int = 0,
    evaluate: Callable[[], dict[str, float]] | None = None,
) -> SVDTraining:
    """Adam on ``batch_loss(step)`` (e.g. :func:`svd_loss` on mini-batch ``step``) for ``steps`` steps.

    ``anneal_lr`` decays the learning rate linearly to 0. ``evaluate()`` (run under ``no_grad``) is called
    before the first step, so ``evals[0]`` is the untrained network's control, then every ``eval_every``
    steps (0: never in between) and after the last step.
    """
    if steps < 0 or eval_every < 0:
        raise ValueError(f"steps and eval_every must be >= 0, got {steps}, {eval_every}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: max(0.0, 1.0 - i / steps)) if anneal_lr else None
    out = SVDTraining(losses=[], evals=[])
    for step in range(steps + 1):
        if evaluate is not None and (step == 0 or step == steps or (eval_every and step % eval_every == 0)):
            with torch.no_grad():
                out.evals.append({"step": step, **evaluate()})
        if step == steps:
            break
        loss = batch_loss(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        out.losses.append(loss.item())
    return out


def history_svd_loss(f_h: Tensor, g_t: Tensor) -> SVDLoss:
    """:func:`svd_loss` between histories and their futures (docs/svd_representations.md, "Partial observability").

    ``f_h [B, T, k]``: f of the histories ending at o_0 … o_{T-1}; ``g_t [B, W, k]``, ``W <= T``: g of the
    tests that follow the first W of them (:func:`future_windows`). Histories without a full future are
    dropped; every (history, test) pair of the batch is one sample.
    """
    if f_h.dim() != 3 or g_t.dim() != 3 or f_h.shape[0] != g_t.shape[0] or f_h.shape[2] != g_t.shape[2]:
        raise ValueError(f"f_h must be [B, T, k] and g_t [B, W, k], got {tuple(f_h.shape)} and {tuple(g_t.shape)}")
    W, k = g_t.shape[1], g_t.shape[2]
    if W > f_h.shape[1]:
        raise ValueError(f"g_t has {W} tests but f_h only {f_h.shape[1]} histories")
    return svd_loss(f_h[:, :W].reshape(-1, k), g_t.reshape(-1, k))


def factor_tables(model: TabularFactors | NeuralFactors, inputs: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(f, g)`` on every state - ``[S, k]`` each: a :class:`TabularFactors`' tables, or a
    :class:`NeuralFactors`' MLPs on the states' features ``inputs [S, O]``."""
    if isinstance(model, TabularFactors):
        return model.f_table, model.g_table
    if inputs is None:
        raise ValueError("factor_tables of NeuralFactors needs the states' features (inputs [S, O])")
    return model.f(inputs), model.g(inputs)


def train_factors(
    model: TabularFactors | NeuralFactors,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    lr: float,
    inputs: Tensor | None = None,
    anneal_lr: bool = True,
    eval_every: int = 0,
    evaluate: Callable[[], dict[str, float]] | None = None,
) -> SVDTraining:
    """:func:`svd_loss` on consecutive mini-batches of a stream of transitions ``x -> y`` (``[n]`` state ids,
    e.g. from :func:`foresight.rl.mdp.sample_transitions`): ``n // batch_size`` Adam steps, each on fresh
    samples. :class:`NeuralFactors` see the states' features ``inputs [S, O]``. See
    :func:`train_svd_representation` for ``anneal_lr``, ``eval_every`` and ``evaluate``.
    """
    if x.shape != y.shape or x.dim() != 1:
        raise ValueError(f"x and y must be [n] state ids of one length, got {tuple(x.shape)}, {tuple(y.shape)}")
    if isinstance(model, NeuralFactors) and inputs is None:
        raise ValueError("NeuralFactors need the states' features (inputs [S, O])")

    def batch_loss(step: int) -> Tensor:
        xb, yb = x[step * batch_size : (step + 1) * batch_size], y[step * batch_size : (step + 1) * batch_size]
        fac = model(xb, yb) if inputs is None else model(inputs[xb], inputs[yb])
        return svd_loss(fac.f, fac.g).loss

    steps = len(x) // batch_size
    return train_svd_representation(
        model.parameters(),
        batch_loss,
        steps=steps,
        lr=lr,
        anneal_lr=anneal_lr,
        eval_every=eval_every,
        evaluate=evaluate,
    )


def train_history_representation(
    f: nn.Module,
    g: nn.Module,
    obs: Tensor,
    prev_actions: Tensor,
    futures: Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator | None = None,
    evaluate: Callable[[], dict[str, float]] | None = None,
) -> SVDTraining:
    """:func:`history_svd_loss` with Adam on ``f`` (histories, e.g. :class:`HistoryEncoder`) and ``g`` (tests),
    each step on ``batch_size`` episodes drawn with replacement.

    ``obs [N, T+1, O]``, ``prev_actions [N, T+1, A]`` (a_{t-1}, zeros at t = 0) and ``futures [N, W, L·(A+O)]``
    from :func:`future_windows`. ``evaluate`` as in :func:`train_svd_representation`.
    """
    if not obs.shape[0] == prev_actions.shape[0] == futures.shape[0]:
        raise ValueError(
            f"obs, prev_actions and futures need one row per episode, got {obs.shape[0]}, "
            f"{prev_actions.shape[0]}, {futures.shape[0]}"
        )

    def batch_loss(_: int) -> Tensor:
        idx = torch.randint(0, obs.shape[0], (batch_size,), generator=generator)
        return history_svd_loss(f(obs[idx], prev_actions[idx]), g(futures[idx])).loss

    params = [*f.parameters(), *g.parameters()]
    return train_svd_representation(params, batch_loss, steps=steps, lr=lr, evaluate=evaluate)


def subspace_recovery(f_table: Tensor, d: Tensor, U: Tensor) -> tuple[float, float]:
    """``(largest principal angle in degrees, alignment ‖Uᵀ Q‖²/k)`` of ``F = D^½ [f]`` to the exact ``U [S, k]``.

    ``f_table [S, k]`` are f's outputs on every state; D^½ puts them in the loss's geometry. Both numbers are
    gauge-free (they depend on span F only).
    """
    F = (d.sqrt()[:, None] * f_table).double()
    return float(subspace_angles_deg(F, U).max()), float(alignment(U, F))


def pseudo_count_agreement(n_hat: Tensor, counts: Tensor) -> dict[str, float]:
    """How well pseudo-counts ``n_hat [S]`` track true visit counts ``counts [S]`` over the visited states:
    Spearman over all of them (``spearman``), over the rarest 25% (``spearman_low``), and the median
    ``|log(n̂ / n)|`` (``median_abs_log_ratio``, n̂ clamped at 0.5)."""
    if n_hat.shape != counts.shape or n_hat.dim() != 1:
        raise ValueError(f"n_hat and counts must be [S] of one length, got {tuple(n_hat.shape)}, {tuple(counts.shape)}")
    n_hat, counts = n_hat.double(), counts.double()
    visited = counts > 0
    low = visited & (counts <= counts[visited].quantile(0.25))
    return {
        "spearman": spearman(n_hat[visited], counts[visited]),
        "spearman_low": spearman(n_hat[low], counts[low]),
        "median_abs_log_ratio": float((n_hat[visited].clamp_min(0.5) / counts[visited]).log().abs().median()),
    }


__all__ = [
    "ExactSVD",
    "Factors",
    "HistoryEncoder",
    "NeuralFactors",
    "ObservationEncoder",
    "SVDExplorer",
    "SVDLoss",
    "SVDTraining",
    "TabularFactors",
    "count_bonus",
    "density_ratio",
    "elliptical_counts",
    "exact_svd",
    "factor_tables",
    "feature_covariance",
    "future_windows",
    "gauge_fix",
    "history_svd_loss",
    "mlp",
    "norm_counts",
    "pseudo_count_agreement",
    "pseudo_counts",
    "spearman",
    "subspace_angles_deg",
    "subspace_recovery",
    "svd_loss",
    "svd_loss_matrix",
    "svd_target",
    "tmaze_inputs",
    "tmaze_probe",
    "to_factors",
    "train_factors",
    "train_history_representation",
    "train_svd_representation",
]
