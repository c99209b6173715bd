"""GGPI: composing geometric horizon models evaluates switching policies; GGPI improves over GPI.

Thakoor et al., "Generalised Policy Improvement with Geometric Policy Composition", ICML 2022. Four
sub-claims, each with its own verdict, and an overall verdict computed from them:

(a) Composing base-policy GHMs evaluates a geometric switching policy exactly: the composition equals
    the exact evaluation through the augmented (state, phase) chain, on random MDPs. The GGPI
    inequality ``Q^{π'} ≥ max_ν Q^ν`` is checked on random MDPs for tail-closed sets (and, to show the
    assumption matters, for sets that are not).
(b) TD-learned GHMs converge to the exact ones (tabular and neural categorical models, with and without
    a target network); the expected-TD fixed point is the closed form.
(c) On a gridworld with several reward locations and four "move in one direction" base policies, GGPI
    (over switching policies of length <= 2) beats GPI over many reward tasks, with exact and with
    TD-learned GHMs (all policies scored by exact evaluation).
(d) On a continuous 2-D navigation task, GGPI with learned mixture-density GHMs (Monte-Carlo
    composition) beats GPI with the same models, in returns from environment rollouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from foresight.core.config import Config, check_scale
from foresight.core.registry import Result, experiment
from foresight.core.report import plot_bars, plot_lines
from foresight.core.run import Run, torch_threads
from foresight.rl import ghm as G
from foresight.rl.envs import BumpReward, compass_directions, point_nav_step
from foresight.rl.mdp import (
    GRID_ACTION_NAMES,
    FiniteMDP,
    gridworld,
    q_values,
    random_dirichlet,
    random_mdp,
    value_iteration,
)

# Two-sided 95% normal quantile for the paired confidence intervals of the GGPI - GPI differences.
Z95 = 1.959964


@dataclass(frozen=True)
class GGPIConfig(Config):
    # (a) composition vs the augmented chain, and the GGPI inequality, on random MDPs
    exact_mdps: int = 20  # random MDPs per sequence length
    exact_states: int = 12
    exact_actions: int = 3
    exact_lengths: tuple[int, ...] = (2, 3, 4)  # lengths of the switching sequences composed
    theorem_mdps: int = 300  # random MDPs for the GGPI inequality
    # the gridworld: an open n x n room, 4 actions, a uniformly random action with probability slip
    grid_size: int = 10
    grid_slip: float = 0.1
    gamma: float = 0.95
    continue_prob: float = 0.8  # α: continue the current base policy with this probability each step
    max_len: int = 2  # switching sequences of length <= max_len (tail-closed set)
    grid_goals: int = 3  # reward locations per task, weights ~ U(0, 1)
    grid_tasks: int = 100
    # (b) TD learning of the 'always right' policy's GHMs at the two horizons GGPI needs (β = γα and γ)
    td_steps: int = 3000
    td_batch: int = 256
    td_lr: float = 0.5
    td_lr_decay: float = 0.01
    td_target_period: int = 10
    neural_steps: int = 3000
    neural_batch: int = 128
    neural_hidden: int = 256
    neural_lr: float = 3e-3
    neural_tau: float = 0.1
    # (c) TD-learned GHMs for GGPI: seeds of the learning run
    learned_seeds: int = 3
    learned_steps: int = 2000
    # (d) continuous navigation
    nav_gamma: float = 0.9
    nav_continue_prob: float = 0.8
    nav_step_size: float = 0.1
    nav_noise: float = 0.02
    nav_goals: int = 3
    nav_goal_width: float = 0.1
    nav_seeds: int = 3  # independently trained density GHMs
    nav_train_steps: int = 5000
    nav_batch: int = 256
    nav_hidden: int = 128
    nav_components: int = 8
    nav_lr: float = 1e-3
    nav_tau: float = 0.01
    nav_tasks: int = 20  # reward tasks per trained model
    nav_episodes: int = 64
    nav_horizon: int = 40
    nav_mc_samples: int = 8
    nav_value_checks: int = 8  # (s, a, ν) triples whose Monte-Carlo value is checked against rollouts

    @classmethod
    def preset(cls, scale: str) -> GGPIConfig:
        return {
            "tiny": cls(
                exact_mdps=2,
                exact_states=5,
                exact_lengths=(2, 3),
                theorem_mdps=20,
                grid_size=5,
                grid_tasks=6,
                td_steps=100,
                td_batch=64,
                neural_steps=30,
                neural_batch=32,
                neural_hidden=32,
                learned_seeds=1,
                learned_steps=100,
                nav_seeds=1,
                nav_train_steps=20,
                nav_batch=32,
                nav_hidden=16,
                nav_components=2,
                nav_tasks=2,
                nav_episodes=4,
                nav_horizon=5,
                nav_mc_samples=2,
                nav_value_checks=2,
            ),
            "quick": cls(
                exact_mdps=10,
                theorem_mdps=200,
                grid_tasks=60,
                td_steps=1500,
                neural_steps=1200,
                learned_seeds=2,
                learned_steps=800,
                nav_seeds=2,
                nav_train_steps=1200,
                nav_batch=128,
                nav_tasks=6,
                nav_episodes=32,
                nav_horizon=30,
                nav_mc_samples=4,
                nav_value_checks=6,
            ),
            "full": cls(),
        }[check_scale(scale)]

    def validate(self) -> None:
        for name in ("gamma", "nav_gamma"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        for name in ("continue_prob", "nav_continue_prob", "grid_slip"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if any(L < 1 for L in self.exact_lengths) or not self.exact_lengths:
            raise ValueError(f"exact_lengths must be non-empty and >= 1, got {self.exact_lengths}")
        if self.grid_goals > self.grid_size**2:
            raise ValueError(f"grid_goals={self.grid_goals} exceeds the {self.grid_size**2} cells")
        for name in (
            "exact_mdps",
            "exact_states",
            "exact_actions",
            "theorem_mdps",
            "grid_size",
            "max_len",
            "grid_goals",
            "grid_tasks",
            "td_steps",
            "td_batch",
            "neural_steps",
            "neural_batch",
            "neural_hidden",
            "learned_seeds",
            "learned_steps",
            "nav_goals",
            "nav_seeds",
            "nav_train_steps",
            "nav_batch",
            "nav_hidden",
            "nav_components",
            "nav_tasks",
            "nav_episodes",
            "nav_horizon",
            "nav_mc_samples",
            "nav_value_checks",
            "td_target_period",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _gen(seed: int, stage: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 7919 + stage)


def _paired(diff: list[float]) -> dict[str, float]:
    """Mean, 95% normal CI half-width and win/loss fractions of paired differences."""
    d = torch.tensor(diff, dtype=torch.float64)
    sd = d.std().item() if d.numel() > 1 else 0.0
    half = Z95 * sd / math.sqrt(d.numel())
    return {
        "mean": d.mean().item(),
        "ci95": half,
        "win": (d > 1e-9).double().mean().item(),
        "loss": (d < -1e-9).double().mean().item(),
        "n": d.numel(),
    }


def _fmt_paired(stats: dict[str, float]) -> str:
    """``+mean ± ci95 (win/loss fractions)``."""
    return f"{stats['mean']:+.3f} ± {stats['ci95']:.3f} ({stats['win']:.2f}/{stats['loss']:.2f})"


def _improvement_verdict(stats: dict[str, float]) -> str:
    if stats["mean"] - stats["ci95"] > 0:
        return "reproduced"
    return "partial" if stats["mean"] > 0 else "not reproduced"


def _policy_value(mdp: FiniteMDP, pi: torch.Tensor) -> float:
    """Exact ``Σ_s d_0(s) V^π(s)`` (``mdp`` carries the arrival reward)."""
    return ((q_values(mdp, pi) * pi).sum(1) @ mdp.initial).item()


def _direction_policies(num_states: int, num_actions: int = 4) -> list[torch.Tensor]:
    """Base policy k always takes action k (up, down, left, right in the gridworld)."""
    return [F.one_hot(torch.full((num_states,), k), num_actions).double() for k in range(num_actions)]


def _open_grid(cfg: GGPIConfig) -> FiniteMDP:
    return gridworld("\n".join(["." * cfg.grid_size] * cfg.grid_size), slip=cfg.grid_slip, gamma=cfg.gamma)


# ------------------------------------------------------------------------------------------------
# (a) composition exactness and the GGPI inequality
# ------------------------------------------------------------------------------------------------


def stage_composition(cfg: GGPIConfig, run: Run) -> dict[str, Any]:
    gen = _gen(run.seed, 1)
    errors: dict[str, list[float]] = {}
    q_err = 0.0
    for L in cfg.exact_lengths:
        errs = []
        for _ in run.progress(range(cfg.exact_mdps), desc=f"(a) composition L={L}"):
            mdp = random_mdp(cfg.exact_states, cfg.exact_actions, gamma=cfg.gamma, generator=gen)
            pis = [random_dirichlet((cfg.exact_states, cfg.exact_actions), 1.0, gen) for _ in range(L)]
            alphas = tuple(torch.rand(L - 1, generator=gen, dtype=torch.float64).tolist())
            nu = G.SwitchingPolicy(tuple(range(L)), alphas)
            betas = nu.betas(cfg.gamma)
            ghms = [G.ghm(mdp, p, b) for p, b in zip(pis, betas)]
            mu = G.compose_ghms(ghms, pis, betas, cfg.gamma)
            mu_aug = G.augmented_chain_ghm(mdp, pis, alphas, cfg.gamma)
            errs.append((mu - mu_aug).abs().max().item())
            # values, against the toolkit's linear solve on the augmented MDP (no GHM code at all)
            r = torch.randn(cfg.exact_states, generator=gen, dtype=torch.float64)
            aug, pi_aug = G.augmented_chain(mdp, pis, alphas)
            q_aug = q_values(G.with_arrival_reward(aug, r.repeat(L)), pi_aug)[: cfg.exact_states]
            q_err = max(q_err, (G.composed_q_values(ghms, pis, betas, cfg.gamma, r) - q_aug).abs().max().item())
        errors[str(L)] = errs
        run.log(stage="a", length=L, max_abs_error=max(errs))
    # the GGPI inequality on random MDPs: tail-closed sets, and the length-2 members alone (not closed)
    viol_closed = viol_open = 0
    worst_closed = worst_open = math.inf
    for _ in run.progress(range(cfg.theorem_mdps), desc="(a) GGPI inequality"):
        mdp = random_mdp(6, 2, gamma=cfg.gamma, concentration=0.3, generator=gen)
        pis = [F.one_hot(torch.randint(2, (6,), generator=gen), 2).double() for _ in range(3)]
        r = torch.randn(6, generator=gen, dtype=torch.float64)
        closed = G.switching_set(3, 3, (0.5, 0.9))
        open_set = [nu for nu in closed if len(nu) == 2]
        models = {k: G.ghm(mdp, pis[k[0]], k[1]) for k in G.required_models(closed, cfg.gamma)}
        m_r = G.with_arrival_reward(mdp, r)
        for N, name in ((closed, "closed"), (open_set, "open")):
            Qs = G.switching_q_values(models, pis, N, cfg.gamma, r)
            margin = (q_values(m_r, G.ggpi_policy(Qs)) - Qs.max(0).values).min().item()
            if name == "closed":
                worst_closed = min(worst_closed, margin)
                viol_closed += margin < -1e-9
            else:
                worst_open = min(worst_open, margin)
                viol_open += margin < -1e-9
    out = {
        "errors": errors,
        "q_error": q_err,
        "viol_closed": viol_closed,
        "viol_open": viol_open,
        "worst_closed": worst_closed,
        "worst_open": worst_open,
    }
    run.log(stage="a", **{k: v for k, v in out.items() if k != "errors"})
    return out


# ------------------------------------------------------------------------------------------------
# (b) TD convergence
# ------------------------------------------------------------------------------------------------


def stage_td(cfg: GGPIConfig, run: Run) -> dict[str, Any]:
    mdp = _open_grid(cfg)
    S = mdp.num_states
    pi = _direction_policies(S)[3]  # "right"
    gammas = [cfg.gamma * cfg.continue_prob, cfg.gamma]  # the two horizons GGPI needs
    policies = torch.stack([pi, pi])
    exact = torch.stack([G.ghm(mdp, pi, g) for g in gammas])  # [2, S, A, S⁺]
    fixed_point_err = max(
        (G.ghm_td_fixed_point(mdp, pi, g)[0] - exact[i]).abs().max().item() for i, g in enumerate(gammas)
    )
    curves: dict[str, tuple[list[int], list[float]]] = {}
    log_every = max(1, cfg.td_steps // 30)
    for name, period in (
        ("tabular, no target net", 0),
        (f"tabular, target net (every {cfg.td_target_period})", cfg.td_target_period),
    ):
        _, trace = G.tabular_td_ghm(
            mdp,
            policies,
            gammas,
            steps=cfg.td_steps,
            batch_size=cfg.td_batch,
            lr=cfg.td_lr,
            lr_decay=cfg.td_lr_decay,
            target_period=period,
            generator=_gen(run.seed, 2),
            reference=exact,
            log_every=log_every,
        )
        curves[name] = (trace.steps, trace.errors)
        run.log(stage="b", learner=name, final_tv=trace.errors[-1])
    # neural categorical GHM: MLP over (normalised coordinates, one-hot) -> softmax over states
    n = cfg.grid_size
    feats = torch.cat([mdp.coords.float() / max(n - 1, 1), torch.eye(S)], 1)
    log_every = max(1, cfg.neural_steps // 30)
    for name, target in (("neural, Polyak target net", "polyak"), ("neural, no target net", "none")):
        torch.manual_seed(run.seed)
        net = G.CategoricalGHM(
            feats.shape[1], mdp.num_actions, S, num_heads=2, hidden=(cfg.neural_hidden, cfg.neural_hidden)
        )
        trace = G.train_categorical_ghm(
            net,
            feats,
            mdp,
            policies,
            gammas,
            steps=cfg.neural_steps,
            batch_size=cfg.neural_batch,
            lr=cfg.neural_lr,
            target=target,
            tau=cfg.neural_tau,
            generator=_gen(run.seed, 3),
            reference=exact,
            log_every=log_every,
        )
        curves[name] = (trace.steps, trace.errors)
        run.log(stage="b", learner=name, final_tv=trace.errors[-1])
    return {
        "curves": {k: [list(v[0]), list(v[1])] for k, v in curves.items()},
        "fixed_point_error": fixed_point_err,
    }


# ------------------------------------------------------------------------------------------------
# (c) GGPI vs GPI on the gridworld, exact and learned GHMs
# ------------------------------------------------------------------------------------------------


def _grid_tasks(cfg: GGPIConfig, S: int, gen: torch.Generator) -> list[torch.Tensor]:
    tasks = []
    for _ in range(cfg.grid_tasks):
        where = torch.randperm(S, generator=gen)[: cfg.grid_goals]
        r = torch.zeros(S, dtype=torch.float64)
        r[where] = torch.rand(cfg.grid_goals, generator=gen, dtype=torch.float64)
        tasks.append(r)
    return tasks


def _score_tasks(
    cfg: GGPIConfig,
    mdp: FiniteMDP,
    pis: list[torch.Tensor],
    N: list[G.SwitchingPolicy],
    models: dict,
    tasks: list[torch.Tensor],
    exact_models: dict | None,
    run: Run,
    desc: str,
    optimal: list[float] | None = None,
) -> dict[str, list[float]]:
    """Exact values of the base policies, GPI, GGPI (and the optimum) per task; theorem margins when
    the models are exact."""
    base_idx = [i for i, nu in enumerate(N) if len(nu) == 1]
    out: dict[str, list[float]] = {f"base {k}": [] for k in range(len(pis))}
    out.update({"GPI": [], "GGPI": [], "optimal": [], "ggpi_margin": [], "gpi_margin": []})
    for t, r in enumerate(run.progress(tasks, desc=desc)):
        m_r = G.with_arrival_reward(mdp, r)
        Qs = G.switching_q_values(models, pis, N, cfg.gamma, r)  # [N, S, A]
        pi_gpi, pi_ggpi = G.gpi_policy(Qs[base_idx]), G.ggpi_policy(Qs)
        for k, p in enumerate(pis):
            out[f"base {k}"].append(_policy_value(m_r, p))
        out["GPI"].append(_policy_value(m_r, pi_gpi))
        out["GGPI"].append(_policy_value(m_r, pi_ggpi))
        out["optimal"].append((value_iteration(m_r).values @ mdp.initial).item() if optimal is None else optimal[t])
        if exact_models is not None:
            # the theorem: Q^{π'} >= max over the set, pointwise (exact models only)
            out["ggpi_margin"].append((q_values(m_r, pi_ggpi) - Qs.max(0).values).min().item())
            out["gpi_margin"].append((q_values(m_r, pi_gpi) - Qs[base_idx].max(0).values).min().item())
    return out


def stage_grid(cfg: GGPIConfig, run: Run) -> dict[str, Any]:
    mdp = _open_grid(cfg)
    S = mdp.num_states
    pis = _direction_policies(S)
    N = G.switching_set(len(pis), cfg.max_len, (cfg.continue_prob,))
    keys = G.required_models(N, cfg.gamma)
    exact = {k: G.ghm(mdp, pis[k[0]], k[1]) for k in keys}
    tasks = _grid_tasks(cfg, S, _gen(run.seed, 4))
    res = {
        "exact": _score_tasks(cfg, mdp, pis, N, exact, tasks, exact, run, "(c) exact GHMs"),
        "learned": {},
        "learned_tv": [],
        "num_switching": len(N),
        "num_models": len(keys),
    }
    reference = torch.stack([exact[k] for k in keys])
    for seed in range(cfg.learned_seeds):
        M, trace = G.tabular_td_ghm(
            mdp,
            torch.stack([pis[k] for k, _ in keys]),
            [b for _, b in keys],
            steps=cfg.learned_steps,
            batch_size=cfg.td_batch,
            lr=cfg.td_lr,
            lr_decay=cfg.td_lr_decay,
            generator=_gen(run.seed + 1000 * seed, 5),
            reference=reference,
            log_every=cfg.learned_steps,
        )
        learned = {k: M[i] for i, k in enumerate(keys)}
        scores = _score_tasks(
            cfg,
            mdp,
            pis,
            N,
            learned,
            tasks,
            None,
            run,
            f"(c) learned GHMs, seed {seed}",
            optimal=res["exact"]["optimal"],
        )
        for k, v in scores.items():
            res["learned"].setdefault(k, []).extend(v)
        res["learned_tv"].append(trace.errors[-1])
        run.log(
            stage="c",
            learned_seed=seed,
            tv=trace.errors[-1],
            ggpi_minus_gpi=sum(scores["GGPI"]) / len(tasks) - sum(scores["GPI"]) / len(tasks),
        )
    return res


# ------------------------------------------------------------------------------------------------
# (d) continuous navigation with a learned density GHM
# ------------------------------------------------------------------------------------------------


def _nav_rollouts(cfg: GGPIConfig, choose, reward: BumpReward, starts: torch.Tensor, seed: int) -> torch.Tensor:
    """Discounted returns [E] of ``choose(s [E, 2]) -> a [E]`` from ``starts``; the env noise is seeded
    by ``seed`` so that every policy sees the same noise (paired comparisons)."""
    g = torch.Generator().manual_seed(seed)
    dirs = compass_directions(4)
    s, ret, disc = starts.clone(), torch.zeros(starts.shape[0], dtype=torch.float64), 1.0
    for _ in range(cfg.nav_horizon):
        s = point_nav_step(
            s, choose(s), step_size=cfg.nav_step_size, noise_std=cfg.nav_noise, directions=dirs, generator=g
        )
        ret += disc * reward(s)
        disc *= cfg.nav_gamma
    return ret


def _switching_rollout_value(
    cfg: GGPIConfig,
    nu: G.SwitchingPolicy,
    reward: BumpReward,
    s: torch.Tensor,
    a: int,
    n: int,
    gen: torch.Generator,
) -> float:
    """Ground truth for a Monte-Carlo composed value: roll the switching policy itself out."""
    dirs = compass_directions(4)
    x = s[None].repeat(n, 1)
    act = torch.full((n,), a)
    phase = torch.zeros(n, dtype=torch.long)
    seq = torch.tensor(nu.sequence)
    stay = torch.tensor(nu.continue_probs + (1.0,), dtype=torch.float64)
    ret, disc = torch.zeros(n, dtype=torch.float64), 1.0
    for _ in range(cfg.nav_horizon * 2):
        x = point_nav_step(x, act, step_size=cfg.nav_step_size, noise_std=cfg.nav_noise, directions=dirs, generator=gen)
        ret += disc * reward(x)
        disc *= cfg.nav_gamma
        switch = torch.rand(n, generator=gen, dtype=torch.float64) >= stay[phase]
        phase = (phase + switch.long()).clamp_max(len(nu) - 1)
        act = seq[phase]
    return ret.mean().item()


def stage_nav(cfg: GGPIConfig, run: Run, seed: int) -> dict[str, Any]:
    gen = _gen(run.seed + 1000 * seed, 6)
    dirs = compass_directions(4)
    A = 4
    N = G.switching_set(A, cfg.max_len, (cfg.nav_continue_prob,))
    heads = G.required_models(N, cfg.nav_gamma)
    head_of = {h: i for i, h in enumerate(heads)}

    def base_policy(k: int, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), k, dtype=torch.long)  # base policy k: always move in direction k

    def sample_transitions(B: int, g: torch.Generator | None):
        s = torch.rand(B, 2, generator=g, dtype=torch.float64)
        a = torch.randint(A, (B,), generator=g)
        s2 = point_nav_step(s, a, step_size=cfg.nav_step_size, noise_std=cfg.nav_noise, directions=dirs, generator=g)
        return s.float(), a, s2.float()

    torch.manual_seed(run.seed + 1000 * seed)
    model = G.MixtureDensityGHM(2, A, len(heads), cfg.nav_components, (cfg.nav_hidden, cfg.nav_hidden))
    log_every = max(1, cfg.nav_train_steps // 20)
    bar = run.progress(range(cfg.nav_train_steps), desc=f"(d) density GHM, seed {seed}")

    def on_step(t: int, loss: float) -> None:
        next(bar, None)
        if t % log_every == 0:
            run.log(stage="d", seed=seed, step=t, td_loss=loss)

    losses = G.train_mixture_ghm(
        model,
        heads,
        sample_transitions,
        base_policy,
        steps=cfg.nav_train_steps,
        batch_size=cfg.nav_batch,
        lr=cfg.nav_lr,
        tau=cfg.nav_tau,
        generator=gen,
        on_step=on_step,
    )
    base_idx = [i for i, nu in enumerate(N) if len(nu) == 1]
    out: dict[str, Any] = {f"base {k}": [] for k in range(A)}
    out.update({"GPI": [], "GGPI": [], "value_abs_err": [], "value_scale": [], "final_loss": losses[-1]})
    for task in run.progress(range(cfg.nav_tasks), desc=f"(d) tasks, seed {seed}"):
        centers = 0.1 + 0.8 * torch.rand(cfg.nav_goals, 2, generator=gen, dtype=torch.float64)
        weights = torch.rand(cfg.nav_goals, generator=gen, dtype=torch.float64)
        reward = BumpReward(centers, weights, cfg.nav_goal_width)

        def expected(p: G.MixtureParams, reward: BumpReward = reward) -> torch.Tensor:
            return reward.expected(p.logits.double(), p.means.double(), p.log_stds.double())

        def q_all(
            s: torch.Tensor, subset: list[G.SwitchingPolicy], reward: BumpReward = reward, expected=expected
        ) -> torch.Tensor:
            with torch.no_grad():
                return G.switching_q_monte_carlo(
                    model,
                    head_of,
                    base_policy,
                    subset,
                    cfg.nav_gamma,
                    reward,
                    s.float(),
                    cfg.nav_mc_samples,
                    gen,
                    expected_reward=expected,
                )

        starts = torch.rand(cfg.nav_episodes, 2, generator=gen, dtype=torch.float64)
        noise_seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
        for k in range(A):
            ret = _nav_rollouts(cfg, lambda s, k=k: torch.full((s.shape[0],), k), reward, starts, noise_seed)
            out[f"base {k}"].append(ret.mean().item())
        gpi_set = [N[i] for i in base_idx]
        out["GPI"].append(
            _nav_rollouts(
                cfg,
                lambda s, q=q_all, ns=gpi_set: q(s, ns).max(0).values.argmax(-1),
                reward,
                starts,
                noise_seed,
            )
            .mean()
            .item()
        )
        out["GGPI"].append(
            _nav_rollouts(cfg, lambda s, q=q_all: q(s, N).max(0).values.argmax(-1), reward, starts, noise_seed)
            .mean()
            .item()
        )
        # how good is the learned model's composed value? compare with rollouts of the switching policy
        if task < cfg.nav_value_checks:
            i = int(torch.randint(len(N), (1,), generator=gen))
            s0 = torch.rand(1, 2, generator=gen, dtype=torch.float64)
            a0 = int(torch.randint(A, (1,), generator=gen))
            q_hat = q_all(s0, [N[i]])[0, 0, a0].item()
            q_true = _switching_rollout_value(cfg, N[i], reward, s0[0], a0, 2000, gen)
            out["value_abs_err"].append(abs(q_hat - q_true))
            out["value_scale"].append(abs(q_true))
        run.log(stage="d", seed=seed, task=task, gpi=out["GPI"][-1], ggpi=out["GGPI"][-1])
    return out


# ------------------------------------------------------------------------------------------------
# the experiment
# ------------------------------------------------------------------------------------------------


@experiment(
    name="ggpi",
    system="Geometric policy composition",
    paper="Thakoor et al., Generalised Policy Improvement with Geometric Policy Composition, ICML 2022",
    claim="Composing geometric horizon models evaluates geometric switching policies without further "
    "learning, and GGPI improves over GPI",
    config=GGPIConfig,
)
def run(cfg: GGPIConfig, run: Run) -> Result:
    with torch_threads(1):  # tiny matrices and nets: one thread is faster, and the CPU is shared
        return _run(cfg, run)


def _run(cfg: GGPIConfig, run: Run) -> Result:
    state = run.load_checkpoint("stages") or {}

    def stage(name: str, fn) -> Any:
        if name not in state:
            state[name] = fn()
            run.save_checkpoint("stages", state)
        return state[name]

    a = stage("a", lambda: stage_composition(cfg, run))
    b = stage("b", lambda: stage_td(cfg, run))
    c = stage("c", lambda: stage_grid(cfg, run))
    nav = [stage(f"d{seed}", lambda seed=seed: stage_nav(cfg, run, seed)) for seed in range(cfg.nav_seeds)]

    # ---- (a)
    comp_err = max(max(v) for v in a["errors"].values())
    verdict_a = "reproduced" if max(comp_err, a["q_error"]) < 1e-10 else "not reproduced"
    verdict_thm = "reproduced" if a["viol_closed"] == 0 else "not reproduced"
    # ---- (b)
    final = {k: v[1][-1] for k, v in b["curves"].items()}
    start = {k: v[1][0] for k, v in b["curves"].items()}
    must = [k for k in final if "no target" not in k or k.startswith("tabular")]
    ok = [k for k in must if final[k] <= 0.15 and final[k] <= start[k] / 5]
    tabular_ok = all(k in ok for k in must if k.startswith("tabular"))
    fp_ok = b["fixed_point_error"] < 1e-10
    verdict_b = (
        "reproduced" if fp_ok and len(ok) == len(must) else "partial" if fp_ok and tabular_ok else "not reproduced"
    )
    # ---- (c)
    ce, cl = c["exact"], c["learned"]
    stats_ce = _paired([x - y for x, y in zip(ce["GGPI"], ce["GPI"])])
    stats_cl = _paired([x - y for x, y in zip(cl["GGPI"], cl["GPI"])])
    verdict_ce, verdict_cl = _improvement_verdict(stats_ce), _improvement_verdict(stats_cl)
    grid_margin = min(ce["ggpi_margin"])
    if grid_margin < -1e-9:
        verdict_thm = "not reproduced"
    # ---- (d)
    d_gpi = [x for r in nav for x in r["GPI"]]
    d_ggpi = [x for r in nav for x in r["GGPI"]]
    stats_d = _paired([x - y for x, y in zip(d_ggpi, d_gpi)])
    verdict_d = _improvement_verdict(stats_d)
    val_err = [e for r in nav for e in r["value_abs_err"]]
    val_scale = [e for r in nav for e in r["value_scale"]]
    rel_val_err = sum(val_err) / max(sum(val_scale), 1e-12) if val_err else float("nan")

    subs = {
        "a": verdict_a,
        "theorem": verdict_thm,
        "b": verdict_b,
        "c_exact": verdict_ce,
        "c_learned": verdict_cl,
        "d": verdict_d,
    }
    if all(v == "reproduced" for v in subs.values()):
        verdict = "reproduced"
    elif "not reproduced" in (verdict_a, verdict_thm, verdict_ce):
        verdict = "not reproduced"
    else:
        verdict = "partial"
    rule = (
        "overall = reproduced if every sub-claim is; not reproduced if (a) composition, the GGPI inequality "
        "or (c) GGPI > GPI with exact models fails; partial otherwise. Sub-rules: (a) max |composition - "
        "augmented chain| < 1e-10; inequality: no violation > 1e-9 for tail-closed sets; (b) expected-TD "
        "fixed point within 1e-10 of the closed form, and every tabular learner and the neural learner "
        "with a target net ends with mean TV <= 0.15 and <= 1/5 of its initial TV (partial: tabular "
        "only); (c), (d) paired GGPI - GPI return difference over tasks (x seeds): reproduced if the 95% "
        "CI lies above 0, partial if only the mean is > 0"
    )

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    table = [
        {
            "sub-claim": "(a) composition = augmented-chain evaluation",
            "measured": "max |μ_comp − μ_aug|, max |Q_comp − Q_aug| over random MDPs",
            "value": f"{comp_err:.1e}, {a['q_error']:.1e}",
            "verdict": verdict_a,
        },
        {
            "sub-claim": "GGPI inequality Q^π' ≥ max_ν Q^ν (tail-closed sets)",
            "measured": "violations / random MDPs; worst margin; gridworld worst margin",
            "value": f"{a['viol_closed']}/{cfg.theorem_mdps}; {a['worst_closed']:.2e}; {grid_margin:.2e}",
            "verdict": verdict_thm,
        },
        {
            "sub-claim": "  (same, sets NOT closed under tails — assumption check)",
            "measured": "violations / random MDPs; worst margin",
            "value": f"{a['viol_open']}/{cfg.theorem_mdps}; {a['worst_open']:.2e}",
            "verdict": "info",
        },
        {
            "sub-claim": "(b) TD-learned GHMs converge to the exact GHM",
            "measured": "final mean TV per learner (initial TV); TD fixed-point error",
            "value": "; ".join(f"{k}: {final[k]:.3f} ({start[k]:.2f})" for k in final)
            + f"; fixed point {b['fixed_point_error']:.1e}",
            "verdict": verdict_b,
        },
        {
            "sub-claim": "(c) GGPI > GPI, gridworld, exact GHMs",
            "measured": f"GGPI − GPI return, mean ± 95% CI over {stats_ce['n']} tasks (win/loss frac)",
            "value": f"{_fmt_paired(stats_ce)}; "
            f"GPI {mean(ce['GPI']):.3f}, GGPI {mean(ce['GGPI']):.3f}, opt {mean(ce['optimal']):.3f}",
            "verdict": verdict_ce,
        },
        {
            "sub-claim": "(c) GGPI > GPI, gridworld, TD-learned GHMs",
            "measured": f"GGPI − GPI, {stats_cl['n']} task×seed pairs ({cfg.learned_seeds} seeds; model TV "
            f"{mean(c['learned_tv']):.3f})",
            "value": f"{_fmt_paired(stats_cl)}; GPI {mean(cl['GPI']):.3f}, GGPI {mean(cl['GGPI']):.3f}",
            "verdict": verdict_cl,
        },
        {
            "sub-claim": "(d) GGPI > GPI, continuous nav, learned density GHMs",
            "measured": f"GGPI − GPI return, {stats_d['n']} task×seed pairs ({cfg.nav_seeds} seeds); "
            f"composed-value rel. error",
            "value": f"{_fmt_paired(stats_d)}; "
            f"GPI {mean(d_gpi):.3f}, GGPI {mean(d_ggpi):.3f}; rel err {rel_val_err:.3f}",
            "verdict": verdict_d,
        },
    ]

    # ---- figures
    series_a = {f"L={L}": (list(range(len(v))), [max(e, 1e-18) for e in v]) for L, v in a["errors"].items()}
    n_a = max(len(v) for v in a["errors"].values())
    series_a["float64 machine epsilon"] = ([0, n_a - 1], [2.220446e-16] * 2)
    plot_lines(
        run.figure("a_composition_error.png"),
        series_a,
        title="(a) composition vs augmented chain",
        xlabel="random MDP",
        ylabel="max |μ_comp − μ_aug|",
        logy=True,
    )
    plot_lines(
        run.figure("b_td_convergence.png"),
        {k: (v[0], v[1]) for k, v in b["curves"].items()},
        title="(b) TD-learned GHM → exact GHM (gridworld, 'right', β and γ)",
        xlabel="TD step",
        ylabel="mean total variation",
        logy=True,
    )
    groups = [f"base {k}" for k in range(4)] + ["GPI", "GGPI", "optimal"]
    grid_labels = [f"always {a}" for a in GRID_ACTION_NAMES] + ["GPI", "GGPI", "optimal"]

    def sem(xs: list[float]) -> float:
        t = torch.tensor(xs, dtype=torch.float64)
        return (t.std() / math.sqrt(len(xs))).item() if len(xs) > 1 else 0.0

    plot_bars(
        run.figure("c_grid_returns.png"),
        grid_labels,
        {"exact GHMs": [mean(ce[g]) for g in groups], "TD-learned GHMs": [mean(cl[g]) for g in groups]},
        errors={"exact GHMs": [sem(ce[g]) for g in groups], "TD-learned GHMs": [sem(cl[g]) for g in groups]},
        title="(c) gridworld: value from the start distribution (mean ± s.e. over tasks)",
        ylabel="return",
    )
    diffs = {
        "exact GHMs": [x - y for x, y in zip(ce["GGPI"], ce["GPI"])],
        "TD-learned GHMs": [x - y for x, y in zip(cl["GGPI"], cl["GPI"])],
    }
    plot_lines(
        run.figure("c_grid_paired_differences.png"),
        {k: ([i / max(len(v) - 1, 1) for i in range(len(v))], sorted(v)) for k, v in diffs.items()},
        title="(c) gridworld: GGPI − GPI per task, sorted",
        xlabel="fraction of tasks",
        ylabel="GGPI − GPI value",
    )
    d_groups = [f"base {k}" for k in range(4)] + ["GPI", "GGPI"]
    d_labels = ["always right", "always up", "always left", "always down", "GPI", "GGPI"]
    d_vals = {g: [x for r in nav for x in r[g]] for g in d_groups}
    plot_bars(
        run.figure("d_nav_returns.png"),
        d_labels,
        {"learned density GHMs": [mean(d_vals[g]) for g in d_groups]},
        errors={"learned density GHMs": [sem(d_vals[g]) for g in d_groups]},
        title="(d) continuous navigation: discounted return (mean ± s.e.)",
        ylabel="return",
    )

    metrics = {
        "composition_max_error": comp_err,
        "composition_q_error": a["q_error"],
        "theorem_violations_closed": a["viol_closed"],
        "theorem_violations_open": a["viol_open"],
        "theorem_worst_margin_open": a["worst_open"],
        "grid_theorem_worst_margin": grid_margin,
        "td_fixed_point_error": b["fixed_point_error"],
        "td_final_tv": final,
        "grid_exact_ggpi_minus_gpi": stats_ce,
        "grid_learned_ggpi_minus_gpi": stats_cl,
        "grid_learned_tv": c["learned_tv"],
        "nav_ggpi_minus_gpi": stats_d,
        "nav_value_rel_error": rel_val_err,
        "nav_final_td_loss": [r["final_loss"] for r in nav],
        "sub_verdicts": subs,
        "grid_mean_returns": {g: mean(ce[g]) for g in groups},
        "grid_learned_mean_returns": {g: mean(cl[g]) for g in groups},
        "nav_mean_returns": {g: mean(d_vals[g]) for g in d_groups},
    }
    num_nav_heads = len(G.required_models(G.switching_set(4, cfg.max_len, (cfg.nav_continue_prob,)), cfg.nav_gamma))
    protocol = (
        f"(a) {cfg.exact_mdps} random MDPs (S={cfg.exact_states}, A={cfg.exact_actions}, Dirichlet rows) "
        f"per length {list(cfg.exact_lengths)}, random stochastic base policies and continue probabilities, "
        f"γ={cfg.gamma}; GGPI inequality on {cfg.theorem_mdps} random MDPs (S=6, A=2, 3 deterministic "
        f"base policies, sequences of length ≤ 3 with α ∈ {{0.5, 0.9}}). (b)-(c) open "
        f"{cfg.grid_size}×{cfg.grid_size} gridworld, slip {cfg.grid_slip}, γ={cfg.gamma}, base policies = "
        f"always up/down/left/right, switching set = all sequences of length ≤ {cfg.max_len} with "
        f"α={cfg.continue_prob} ({c['num_switching']} policies, {c['num_models']} GHMs at β=γα and γ); "
        f"{cfg.grid_tasks} tasks with {cfg.grid_goals} reward cells of weight U(0,1); policies scored by "
        f"exact evaluation from the uniform start. Learned GHMs: tabular TD, {cfg.learned_steps} steps × "
        f"{cfg.td_batch} transitions, {cfg.learned_seeds} seeds. (d) point in [0,1]², 4 compass actions of "
        f"{cfg.nav_step_size} with noise {cfg.nav_noise}, γ={cfg.nav_gamma}, α={cfg.nav_continue_prob}, "
        f"{cfg.nav_goals} Gaussian reward bumps (width {cfg.nav_goal_width}, weights U(0,1)) per task; one "
        f"{cfg.nav_components}-component mixture-density GHM with {num_nav_heads} heads trained by TD "
        f"({cfg.nav_train_steps} steps, batch {cfg.nav_batch}, Polyak τ={cfg.nav_tau}) per seed × "
        f"{cfg.nav_seeds} seeds; {cfg.nav_tasks} tasks per seed, {cfg.nav_episodes} episodes of "
        f"{cfg.nav_horizon} steps, Q̂ by Monte-Carlo composition with {cfg.nav_mc_samples} samples and "
        f"the reward averaged analytically over each mixture."
    )
    notes = (
        "Deviations: the paper's tabular and deep-RL domains, base policies and numbers were not "
        "available (docs/ggpi.md); these are stand-ins. The paper's continuous-control task (a deep RL task "
        "with a β-VAE-style GHM, per TD-Flow) is replaced by a 2-D point navigation task with a "
        "Gaussian-mixture GHM. Base policies are 'always move in one direction': with goal-reaching base "
        "policies GPI is already near-optimal on such gridworlds and GGPI's gain is small. α is used as the "
        "probability of CONTINUING the current policy (β = γα); the paper's α may be the switch probability "
        "(docs/ggpi.md). GGPI is not guaranteed to beat GPI task by task (only every member of its set), and "
        f"it loses to GPI on {stats_ce['loss']:.0%} of the gridworld tasks with exact models. The GGPI "
        "inequality as proved here needs the set to contain the tails of its members (GGPI's Bellman step "
        f"bounds Q^ν by the value of ν's tail); with only the length-2 sequences it failed on "
        f"{a['viol_open']}/{cfg.theorem_mdps} random MDPs (worst margin {a['worst_open']:.3g}; a fixed "
        f"counterexample is in tests/rl/test_ghm.py), and no violation was found for tail-closed sets "
        f"({a['viol_closed']}/{cfg.theorem_mdps}). The paper's exact theorem statement could not be checked "
        "(docs/ggpi.md, GGPI). The neural GHM without a target network is shown for contrast and is not required "
        "to converge. Everything runs on the CPU (float64 linear algebra; nets too small to gain from a GPU)."
    )
    return Result(
        verdict=verdict,
        rule=rule,
        metrics=metrics,
        table=table,
        figures=[
            "a_composition_error.png",
            "b_td_convergence.png",
            "c_grid_returns.png",
            "c_grid_paired_differences.png",
            "d_nav_returns.png",
        ],
        protocol=protocol,
        notes=notes,
    )
