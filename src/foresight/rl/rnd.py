"""Random Network Distillation (Burda et al., ICLR 2019, arXiv 1810.12894): the standard exploration baseline.

A fixed, randomly initialised target network ``f`` and a trained predictor ``f̂`` read the normalised next
observation ``x = clip((o − μ_o) / σ_o, −5, 5)``; the bonus is the predictor's error, scaled by a running
standard deviation of the discounted intrinsic return (cleanrl ``ppo_rnd_envpool.py``, ``RewardForwardFilter``)::

    i_t   = ½ ‖f̂(x_{t+1}) − f(x_{t+1})‖²
    R_t   = γ_I R_{t−1} + i_t                    per environment, never reset (non-episodic)
    r^I_t = i_t / σ(R)                           σ from all R seen so far (parallel-variance running moments)

The bonus gets its own value head and a non-episodic return (``intrinsic_value_head = True``): PPO's
advantage is ``ext_coef · A_E + int_coef · A_I`` with ``ext_coef = 2``, ``int_coef = 1`` (the paper's).
After each PPO update the observation statistics absorb the rollout, then the predictor takes
``epochs × minibatches`` Adam steps on it with the loss ``mean_d (f̂ − f)²`` kept for a random
``update_proportion`` of the samples (the paper's 0.25).

Deviations from cleanrl (documented choices): the observation statistics start from the first rollout of
the learning agent rather than from 50 rollouts of a random policy; the predictor has its own Adam
optimiser (cleanrl steps it with the agent's, whose update order is the same); the MLP network (``"mlp"``,
for vector and grid observations) is ours — ``"atari"`` is the paper's CNN on the last 84x84 frame.

Axis legend: T rollout steps, E environments, O observation features, D output features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from foresight.core.config import Config
from foresight.rl.agents import ActorCritic, ExplorationHooks, Rollout
from foresight.rl.encoders import ATARI_SHAPE, layer_init
from foresight.rl.mdp import check_discount

RND_NETWORKS = ("mlp", "atari")


@dataclass(frozen=True)
class RNDConfig(Config):
    network: str = "mlp"  # "atari": the paper's CNN on the last of 4 stacked 84x84 frames
    hidden: int = 128  # MLP width
    out_dim: int = 64  # D of f and f̂ (the paper's CNN: 512)
    lr: float = 1e-4  # Adam (cleanrl)
    epochs: int = 4  # predictor passes over each rollout (cleanrl: PPO's update_epochs)
    minibatches: int = 4
    update_proportion: float = 0.25  # share of each minibatch the predictor trains on
    int_gamma: float = 0.99  # γ_I of the non-episodic intrinsic return
    ext_coef: float = 2.0  # weight of A_E (PPOConfig.int_coef weighs A_I; the paper's 1)
    obs_clip: float = 5.0
    max_grad_norm: float = 0.5

    choices: ClassVar[dict[str, tuple]] = {"network": RND_NETWORKS}

    def validate(self) -> None:
        for name in ("hidden", "out_dim", "epochs", "minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.update_proportion <= 1:
            raise ValueError(f"update_proportion must be in (0, 1], got {self.update_proportion}")
        check_discount(self.int_gamma)
        for name in ("lr", "obs_clip", "max_grad_norm"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.ext_coef < 0:
            raise ValueError(f"ext_coef must be >= 0, got {self.ext_coef}")


class RunningMeanStd:
    """Running mean and (population) variance over batches, by Chan et al.'s parallel update (cleanrl's
    ``RunningMeanStd``; the initial count 1e-4 makes the first batch's moments win)."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.mean = torch.zeros(shape, dtype=torch.float64)
        self.var = torch.ones(shape, dtype=torch.float64)
        self.count = 1e-4

    def update(self, x: Tensor) -> None:
        """``x [B, *shape]``."""
        x = x.to(torch.float64)
        b_mean, b_var, b_count = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, total = b_mean - self.mean, self.count + b_count
        m2 = self.var * self.count + b_var * b_count + delta.pow(2) * self.count * b_count / total
        self.mean, self.var, self.count = self.mean + delta * b_count / total, m2 / total, total


def _mlp(d_in: int, hidden: int, d_out: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [layer_init(nn.Linear(d_in if i == 0 else hidden, hidden)), nn.LeakyReLU()]
    return nn.Sequential(*layers, layer_init(nn.Linear(hidden, d_out)))


def _atari_net(d_out: int, predictor: bool) -> nn.Sequential:
    """The RND paper's CNN on one 84x84 frame; the predictor adds two 512-wide ReLU layers."""
    convs = [
        layer_init(nn.Conv2d(1, 32, 8, stride=4)),
        nn.LeakyReLU(),
        layer_init(nn.Conv2d(32, 64, 4, stride=2)),
        nn.LeakyReLU(),
        layer_init(nn.Conv2d(64, 64, 3, stride=1)),
        nn.LeakyReLU(),
        nn.Flatten(),
    ]
    if not predictor:
        return nn.Sequential(*convs, layer_init(nn.Linear(64 * 7 * 7, d_out)))
    head = [layer_init(nn.Linear(64 * 7 * 7, 512)), nn.ReLU(), layer_init(nn.Linear(512, 512)), nn.ReLU()]
    return nn.Sequential(*convs, *head, layer_init(nn.Linear(512, d_out)))


class RNDHooks(ExplorationHooks):
    """RND for :func:`foresight.rl.agents.train_ppo`: a rollout-wide bonus with its own value head."""

    intrinsic_value_head = True

    def __init__(self, obs_dim: int, num_envs: int, cfg: RNDConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else RNDConfig()
        self.int_gamma, self.ext_coef = cfg.int_gamma, cfg.ext_coef
        if cfg.network == "atari":
            if obs_dim != ATARI_SHAPE[0] * ATARI_SHAPE[1] * ATARI_SHAPE[2]:
                raise ValueError(f"RND network 'atari' needs obs_dim {ATARI_SHAPE} flattened, got {obs_dim}")
            self.in_dim = ATARI_SHAPE[1] * ATARI_SHAPE[2]
            self.target, self.predictor = _atari_net(cfg.out_dim, False), _atari_net(cfg.out_dim, True)
        else:
            self.in_dim = obs_dim
            self.target = _mlp(obs_dim, cfg.hidden, cfg.out_dim, depth=2)
            self.predictor = _mlp(obs_dim, cfg.hidden, cfg.out_dim, depth=3)
        self.target.requires_grad_(False)
        self.opt = torch.optim.Adam(self.predictor.parameters(), lr=cfg.lr)
        self.obs_rms = RunningMeanStd((self.in_dim,))
        self.ret_rms = RunningMeanStd()
        self.register_buffer("int_return", torch.zeros(num_envs))  # R_t per environment
        self._next_obs: Tensor | None = None  # [T·E, in_dim] the last rollout, for after_update
        self.history: list[dict[str, float]] = []  # per rollout: raw and normalised bonus, predictor loss

    def _inputs(self, obs: Tensor) -> Tensor:
        """``[N, O]`` features -> the networks' ``[N, in_dim]`` input (Atari: the last frame), not normalised."""
        return obs[:, -self.in_dim :]

    def _normalise(self, x: Tensor) -> Tensor:
        mean, std = self.obs_rms.mean.float(), (self.obs_rms.var.float() + 1e-8).sqrt()
        return ((x - mean) / std).clamp(-self.cfg.obs_clip, self.cfg.obs_clip)

    def _net_in(self, x: Tensor) -> Tensor:
        return x.reshape(-1, 1, *ATARI_SHAPE[1:]) if self.cfg.network == "atari" else x

    def prediction_error(self, obs: Tensor) -> Tensor:
        """``[N]`` ½‖f̂(x) − f(x)‖² of ``obs [N, O]`` under the current statistics (no gradient)."""
        with torch.no_grad():
            x = self._net_in(self._normalise(self._inputs(obs)))
            return 0.5 * (self.predictor(x) - self.target(x)).pow(2).sum(-1)

    def rollout_reward(self, rollout: Rollout, agent: ActorCritic) -> Tensor:
        T, E, O = rollout.next_obs.shape
        x = self._inputs(rollout.next_obs.reshape(T * E, O))
        if self._next_obs is None:  # first rollout: initialise the observation statistics from it
            self.obs_rms.update(x)
        raw = self.prediction_error(rollout.next_obs.reshape(T * E, O)).reshape(T, E)
        returns = []
        for t in range(T):  # non-episodic discounted intrinsic return, carried across rollouts
            self.int_return = self.int_return * self.cfg.int_gamma + raw[t]
            returns.append(self.int_return)
        self.ret_rms.update(torch.stack(returns).reshape(-1))
        bonus = raw / float(self.ret_rms.var.sqrt().clamp_min(1e-8))
        self._next_obs = x.clone()
        self.history.append({"raw_bonus": float(raw.mean()), "bonus": float(bonus.mean())})
        return bonus

    def after_update(self, agent: ActorCritic) -> None:
        if self._next_obs is None:
            return
        self.obs_rms.update(self._next_obs)
        x = self._net_in(self._normalise(self._next_obs))
        n = x.shape[0]
        mb = max(1, n // self.cfg.minibatches)
        losses = []
        for _ in range(self.cfg.epochs):
            perm = torch.randperm(n)
            for start in range(0, n, mb):
                xb = x[perm[start : start + mb]]
                err = (self.predictor(xb) - self.target(xb)).pow(2).mean(-1)  # [mb]
                keep = (torch.rand(err.shape[0]) < self.cfg.update_proportion).float()
                loss = (err * keep).sum() / keep.sum().clamp_min(1.0)
                self.opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.predictor.parameters(), self.cfg.max_grad_norm)
                self.opt.step()
                losses.append(loss.item())
        self.history[-1]["predictor_loss"] = float(sum(losses) / len(losses))


__all__ = ["RND_NETWORKS", "RNDConfig", "RNDHooks", "RunningMeanStd"]
