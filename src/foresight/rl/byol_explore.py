"""BYOL-Explore (Guo et al., NeurIPS 2022, arXiv 2206.08332): curiosity from a latent world model.

An online network θ — encoder ``f_θ``, closed-loop GRU cell ``h^c``, open-loop GRU cell ``h^o``,
predictor ``g_θ`` — predicts the representation that an EMA target encoder ``f_φ`` gives of future
observations; the prediction losses are the intrinsic reward (docs/byol_explore.md, "The maths we implement")::

    b_t     = h^c(b_{t-1}, f_θ(o_t), a_{t-1})                       closed loop (history)
    b_{t,0} = b_t,   b_{t,k} = h^o(b_{t,k-1}, a_{t+k-1})            open loop, the actions taken
    ℓ(t, k) = ‖ g_θ(b_{t,k})/‖g_θ(b_{t,k})‖ − sg(y)/‖sg(y)‖ ‖²,  y = f_φ(o_{t+k})   (= 2 − 2·cos, nn.byol_loss)
    L(θ)    = 1/(B(T_o−1)) Σ_j Σ_{t=0}^{T_o−2} Σ_{k=1}^{K(t)} ℓ_j(t, k),   K(t) = min(K, T_o−1−t)
    φ      ← α·φ + (1 − α)·θ_f                                      (after every optimiser step)

over sequences of ``T_o`` observations; here one PPO rollout of T steps gives ``T_o = T + 1``
observations (o_0 … o_{T−1} and the observation after the last step), so the loss table is
``[T, K, B]`` with row t the predictions made from b_t, and row t's ``K(t) = min(K, T − t)``.
Predictions never cross an episode end: ℓ(t, k) is masked unless steps t … t+k−2 are all inside the
episode (o_{t+k} may be its true last observation), and the closed loop restarts at each episode.

Intrinsic reward of the transition (o_t, a_t, o_{t+1}) — :func:`transition_uncertainty`:

- ``"targeting_t1"`` (default): ``Σ_{p+q=t+1, 1≤q≤K} ℓ(p, q)``, every prediction whose target is
  o_{t+1}. [R] This is our recollection of the paper's "world model uncertainties" paragraph
  (ℓ_t = Σ_{p+q=t+1} ℓ(p, q)); the paper PDF was not reachable to confirm it. It is also the reading
  that matches "the uncertainty of the transition": each term measures how surprising o_{t+1} is,
  from histories ending before it, so the bonus of a transition depends only on data up to o_{t+1}
  and not on how the episode continues afterwards.
- ``"from_t"``: ``Σ_{k=1}^{K(t)} ℓ(t, k)``, every prediction made from b_t [S] (an unofficial
  restatement). It also charges transition t for surprises K−1 steps later.

Both sums have edge effects where the table is truncated (the first K−1 steps of a rollout or an
episode for ``targeting_t1``, the last K−1 for ``from_t``), as in any fixed-length sequence learner.

Reward normalisation and prioritisation (:class:`RewardNormaliser`) follow the reference code
[V] ``Ziksby/MetaLearnCuriosity`` ``byol_normalize_prior_int_rewards``: bias-corrected EMAs of the
batch mean and mean square (β = 0.99) give σ, ``r̃ = r/σ``; μ is an EMA (not bias-corrected,
starting at 0) of the batch mean of r̃, updated before use; the bonus is ``max(r̃ − μ, 0)``.
The agent's reward is ``r_e + λ·r_i`` with one value head.

Choices with no paper value we could read (all in :class:`BYOLExploreConfig`; docs/byol_explore.md,
"Deviations from the paper"):

- [R] horizon K = 8 and EMA rate α = 0.99 (α [S] from the reference's EMA_PARAMETER; K from our
  recollection of the paper, unverified). [S] lr 1e-3, action embedding 16 (reference's MiniGrid
  config). Sizes (MLP encoder/predictor 64 wide, latent 32, GRU 64) and ``wm_updates = 8`` are
  this reproduction's, from gridworld pilots (experiment ``byol-explore``), not the paper's
  ResNet/1024-wide models; with 1 world-model step per rollout the model barely learned
  (loss stuck near 2 of at most 4·K) and the bonus did not separate novel from familiar cells.
- [S] The paper may share the encoder and closed loop with the agent; here the world model has its
  own parameters and Adam optimiser (``wm_updates`` full-rollout steps per PPO rollout, the first
  on the same forward pass that gives the bonus) and the agent is PPO, not V-MPO.
- The closed-loop state is carried (detached) from one rollout to the next (truncated BPTT over a
  rollout), and reset at episode starts with a "no previous action" token.

Axis legend: T rollout steps, K open-loop horizon, B (= E) sequences, O observation features,
D latent size, M GRU state size, A actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from foresight.core.config import Config
from foresight.nn.ema import ema_update, make_target
from foresight.nn.losses import byol_loss
from foresight.rl.agents import ActorCritic, ExplorationHooks, Rollout

REWARD_INDEXINGS = ("targeting_t1", "from_t")


@dataclass(frozen=True)
class BYOLExploreConfig(Config):
    horizon: int = 8  # K, open-loop prediction steps [R]
    ema_decay: float = 0.99  # α of the target encoder φ ← αφ + (1−α)θ [S]
    latent_dim: int = 32  # N, output of f_θ, f_φ and g_θ
    state_dim: int = 64  # M, GRU state b_t
    mlp_hidden: int = 64  # width of the encoder and predictor MLPs
    action_embed_dim: int = 16  # [S]
    lr: float = 1e-3  # Adam, world model [S]
    wm_updates: int = 8  # world-model optimiser steps per PPO rollout
    max_grad_norm: float = 1.0  # world-model gradient clipping
    reward_indexing: str = "targeting_t1"  # see module docstring
    int_coef: float = 0.01  # λ in r_e + λ·r_i
    norm_decay: float = 0.99  # β of the reward normaliser [V]

    choices: ClassVar[dict[str, tuple]] = {"reward_indexing": REWARD_INDEXINGS}

    def validate(self) -> None:
        for name in ("horizon", "latent_dim", "state_dim", "mlp_hidden", "action_embed_dim", "wm_updates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("ema_decay", "norm_decay"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.lr <= 0 or self.max_grad_norm <= 0:
            raise ValueError(f"lr and max_grad_norm must be > 0, got lr={self.lr}, max_grad_norm={self.max_grad_norm}")
        if self.int_coef < 0:
            raise ValueError(f"int_coef must be >= 0, got {self.int_coef}")


# ------------------------------------------------------------------------------------------------
# loss and reward (pure functions)
# ------------------------------------------------------------------------------------------------
@dataclass
class BYOLExploreLoss:
    loss: Tensor  # [] Σ ℓ over valid (t, k) / (B·T)
    per_step: Tensor  # [T, K, B] ℓ(t, k), 0 where masked
    mask: Tensor  # [T, K, B] bool, k ≤ K(t) and inside one episode


def horizon_mask(T: int, K: int, dones: Tensor | None = None) -> Tensor:
    """``[T, K, B]`` bool (``[T, K, 1]`` without ``dones``): prediction (t, k = index + 1) is valid iff
    ``k <= K(t) = min(K, T − t)`` and no episode ended at steps t … t+k−2 (``dones [T, B]``)."""
    t = torch.arange(T)[:, None]
    k = torch.arange(1, K + 1)[None, :]
    mask = (t + k <= T)[:, :, None]  # [T, K, 1]
    if dones is None:
        return mask
    # ends[s] = number of episode ends at steps < s; dones in [t, t+k−2] = ends[t+k−1] − ends[t]
    ends = torch.cat([torch.zeros(1, dones.shape[1], dtype=torch.long), dones.long().cumsum(0)], 0)  # [T+1, B]
    last = (t + k - 1).clamp(max=T)  # [T, K]
    crossed = ends[last] - ends[t.expand(T, K)]  # [T, K, B]
    return mask & (crossed == 0)


def byol_explore_loss(
    pred: Tensor, target: Tensor, mask: Tensor | None = None, stop_target_gradients: bool = True
) -> BYOLExploreLoss:
    """The BYOL-Explore loss of one sequence batch.

    ``pred [T, K, B, D]``: ``g_θ(b_{t,k})`` for k = 1..K; ``target [T, B, D]``: ``target[s] = f_φ(o_{s+1})``,
    the embedding of the observation *after* step s (so ℓ(t, k) compares ``pred[t, k−1]`` with
    ``target[t+k−1]``). ``mask [T, K, B]`` (default: :func:`horizon_mask` without episode ends) is
    combined with the K(t) truncation. Returns the mean loss ``Σ ℓ / (B·T)`` (summed over k, not
    averaged, as in docs/byol_explore.md, "The maths we implement") and the per-(t, k) table.
    """
    if pred.dim() != 4 or target.dim() != 3 or pred.shape[0] != target.shape[0] or pred.shape[2:] != target.shape[1:]:
        raise ValueError(
            f"expected pred [T, K, B, D] and target [T, B, D], got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    T, K, B, _ = pred.shape
    valid = horizon_mask(T, K)
    if mask is not None:
        if mask.shape != (T, K, B):
            raise ValueError(f"mask must have shape {(T, K, B)}, got {tuple(mask.shape)}")
        valid = valid & mask
    valid = valid.expand(T, K, B)
    y = torch.cat([target, target.new_zeros(K - 1, B, target.shape[-1])], 0)  # [T+K−1, B, D], padding is masked
    y_tk = y.unfold(0, K, 1).permute(0, 3, 1, 2)  # [T, K, B, D]: y_tk[t, k−1] = target[t+k−1]
    err = byol_loss(pred, y_tk, stop_target_gradients=stop_target_gradients, reduction="none")  # [T, K, B]
    per_step = err * valid
    return BYOLExploreLoss(per_step.sum() / (B * T), per_step, valid)


def transition_uncertainty(per_step: Tensor, indexing: str = "targeting_t1") -> Tensor:
    """``[T, B]`` uncertainty of each transition (o_t, a_t, o_{t+1}) from the loss table ``[T, K, B]``.

    ``"targeting_t1"``: ``Σ_{q=1}^{K} ℓ(t+1−q, q)`` over rows ``t+1−q >= 0`` (all predictions of o_{t+1});
    ``"from_t"``: ``Σ_{k=1}^{K} ℓ(t, k)`` (all predictions from b_t). Masked entries must be 0.
    """
    if indexing not in REWARD_INDEXINGS:
        raise ValueError(f"indexing={indexing!r} is not allowed; expected one of {list(REWARD_INDEXINGS)}")
    if per_step.dim() != 3:
        raise ValueError(f"per_step must be [T, K, B], got shape {tuple(per_step.shape)}")
    if indexing == "from_t":
        return per_step.sum(1)
    T, K, _ = per_step.shape
    out = torch.zeros_like(per_step[:, 0])
    for j in range(min(K, T)):  # j = q − 1: the prediction of o_{t+1} made from b_{t−j}
        out[j:] += per_step[: T - j, j]
    return out


class RewardNormaliser:
    """BYOL-Explore's reward normalisation and prioritisation, one call per batch of raw rewards.

    ``m ← βm + (1−β)·mean(r)``, ``m₂ ← βm₂ + (1−β)·mean(r²)``, ``c ← c + 1``; ``σ = sqrt(max(0,
    m₂/(1−β^c) − (m/(1−β^c))²) + 1e-8)``; ``r̃ = r/σ``; ``μ ← βμ + (1−β)·mean(r̃)``; returns ``max(r̃ − μ, 0)``.
    """

    def __init__(self, decay: float = 0.99) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.mean, self.mean_sq, self.count, self.mu = 0.0, 0.0, 0, 0.0

    def __call__(self, r: Tensor) -> Tensor:
        b = self.decay
        self.mean = b * self.mean + (1 - b) * float(r.mean())
        self.mean_sq = b * self.mean_sq + (1 - b) * float(r.pow(2).mean())
        self.count += 1
        correction = 1.0 - b**self.count
        m, m2 = self.mean / correction, self.mean_sq / correction
        sigma = (max(0.0, m2 - m * m) + 1e-8) ** 0.5
        r_norm = r / sigma
        self.mu = b * self.mu + (1 - b) * float(r_norm.mean())
        return (r_norm - self.mu).clamp_min(0.0)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "mean": self.mean, "mean_sq": self.mean_sq, "count": self.count, "mu": self.mu}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay, self.mean, self.mean_sq = float(state["decay"]), float(state["mean"]), float(state["mean_sq"])
        self.count, self.mu = int(state["count"]), float(state["mu"])


# ------------------------------------------------------------------------------------------------
# world model
# ------------------------------------------------------------------------------------------------
def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


@dataclass
class WorldModelOutput:
    pred: Tensor  # [T, K, B, D] g_θ(b_{t,k})
    target: Tensor  # [T, B, D] f_φ(o_{t+1}) (no gradient)
    mask: Tensor  # [T, K, B] valid predictions
    state: Tensor  # [B, M] b_{T−1}, to carry into the next rollout


class BYOLWorldModel(nn.Module):
    """Online encoder, closed- and open-loop GRU cells, predictor, and the EMA target encoder."""

    def __init__(self, obs_dim: int, num_actions: int, cfg: BYOLExploreConfig) -> None:
        super().__init__()
        self.cfg, self.num_actions = cfg, num_actions
        self.encoder = _mlp(obs_dim, cfg.mlp_hidden, cfg.latent_dim)  # f_θ
        # index num_actions = "no previous action", at episode starts
        self.action_embed = nn.Embedding(num_actions + 1, cfg.action_embed_dim)
        self.closed_loop = nn.GRUCell(cfg.latent_dim + cfg.action_embed_dim, cfg.state_dim)  # h^c
        self.open_loop = nn.GRUCell(cfg.action_embed_dim, cfg.state_dim)  # h^o
        self.predictor = _mlp(cfg.state_dim, cfg.mlp_hidden, cfg.latent_dim)  # g_θ
        self.target_encoder = make_target(self.encoder)  # f_φ

    @torch.no_grad()
    def update_target(self) -> None:
        ema_update(self.target_encoder, self.encoder, self.cfg.ema_decay)

    def forward(
        self, obs: Tensor, actions: Tensor, next_obs: Tensor, dones: Tensor, state: Tensor, prev_action: Tensor
    ) -> WorldModelOutput:
        """``obs, next_obs [T, B, O]``, ``actions [T, B]``, ``dones [T, B]``; ``state [B, M]`` and
        ``prev_action [B]`` (``num_actions`` = none) are b_{−1} and a_{−1}, already reset where o_0 starts
        an episode."""
        T, B, _ = obs.shape
        K = self.cfg.horizon
        z = self.encoder(obs)  # [T, B, D]
        a_emb = self.action_embed(actions)  # [T, B, Ae]
        h, a_prev = state, self.action_embed(prev_action)  # [B, M], [B, Ae]
        bs = []
        for t in range(T):
            h = self.closed_loop(torch.cat([z[t], a_prev], -1), h)
            bs.append(h)
            if t + 1 < T:  # the next step starts an episode where this one ended
                keep = (~dones[t]).float()[:, None]
                h = h * keep
                a_prev = a_emb[t] * keep + self.action_embed.weight[self.num_actions] * (1 - keep)
        b = torch.stack(bs)  # [T, B, M]
        # open loop, vectorised over t: b_{t,k} = h^o(b_{t,k−1}, a_{t+k−1}); actions past the end are masked
        a_pad = torch.cat([a_emb, a_emb.new_zeros(K - 1, B, a_emb.shape[-1])], 0)  # [T+K−1, B, Ae]
        bk = b.reshape(T * B, -1)
        preds = []
        for k in range(K):
            bk = self.open_loop(a_pad[k : k + T].reshape(T * B, -1), bk)
            preds.append(self.predictor(bk).reshape(T, B, -1))
        pred = torch.stack(preds, 1)  # [T, K, B, D]
        with torch.no_grad():
            target = self.target_encoder(next_obs)  # [T, B, D]
        return WorldModelOutput(pred, target, horizon_mask(T, K, dones), b[-1])


# ------------------------------------------------------------------------------------------------
# PPO hooks
# ------------------------------------------------------------------------------------------------
class BYOLExploreHooks(ExplorationHooks):
    """BYOL-Explore's bonus for :func:`foresight.rl.agents.train_ppo`: after each rollout the world
    model's losses on it give ``λ · max(r̃ − μ, 0)`` per step (added to the extrinsic reward before GAE),
    then the world model takes ``wm_updates`` Adam steps on the rollout, each followed by the EMA
    update of the target encoder. Keep ``PPOConfig.int_coef = 1``: λ is ``cfg.int_coef``.

    The world model has its own optimiser; ``aux_loss`` is None, so the PPO optimiser never sees a
    gradient for its parameters.
    """

    def __init__(
        self,
        obs_dim: int,
        num_actions: int,
        num_envs: int,
        cfg: BYOLExploreConfig | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg if cfg is not None else BYOLExploreConfig()
        self.model = BYOLWorldModel(obs_dim, num_actions, self.cfg)
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=self.cfg.lr)
        self.normaliser = RewardNormaliser(self.cfg.norm_decay)
        self.register_buffer("state", torch.zeros(num_envs, self.cfg.state_dim))  # b carried between rollouts
        self.register_buffer("prev_action", torch.full((num_envs,), num_actions, dtype=torch.long))
        self.history: list[dict[str, float]] = []  # per rollout: world-model loss, raw and final bonus

    def rollout_reward(self, rollout: Rollout, agent: ActorCritic) -> Tensor:
        args = (rollout.obs, rollout.actions, rollout.next_obs, rollout.dones)
        out = self.model(*args, self.state, self.prev_action)
        res = byol_explore_loss(out.pred, out.target, out.mask)
        raw = transition_uncertainty(res.per_step.detach(), self.cfg.reward_indexing)  # [T, E]
        bonus = self.normaliser(raw)
        for i in range(self.cfg.wm_updates):
            if i > 0:
                out_i = self.model(*args, self.state, self.prev_action)
                res = byol_explore_loss(out_i.pred, out_i.target, out_i.mask)
            self.opt.zero_grad()
            res.loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
            self.opt.step()
            self.model.update_target()
        # the next rollout continues these episodes: carry b and a_{T−1}, reset where an episode ended
        ended = rollout.dones[-1]
        self.state = torch.where(ended[:, None], torch.zeros_like(out.state), out.state.detach())
        self.prev_action = torch.where(
            ended, torch.full_like(self.prev_action, self.model.num_actions), rollout.actions[-1]
        )
        self.history.append(
            {
                "wm_loss": float(res.loss.detach()),
                "raw_uncertainty": float(raw.mean()),
                "bonus": float(bonus.mean()),
                "bonus_nonzero": float((bonus > 0).float().mean()),
            }
        )
        return self.cfg.int_coef * bonus


__all__ = [
    "BYOLExploreConfig",
    "BYOLExploreHooks",
    "BYOLExploreLoss",
    "BYOLWorldModel",
    "REWARD_INDEXINGS",
    "RewardNormaliser",
    "WorldModelOutput",
    "byol_explore_loss",
    "horizon_mask",
    "transition_uncertainty",
]
