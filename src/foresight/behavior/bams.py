"""BAMS: a multi-task, multi-timescale self-supervised behaviour model (Azabou et al., NeurIPS 2023).

"Relax, it doesn't matter how you get there: A new self-supervised approach for multi-timescale behavior
analysis" (arXiv 2303.08811); the public code (nerdslab/bams @ ecbdc68) still calls it BAMS. Docs:
docs/bams.md (the encoders and bootstrap objectives) and docs/multitask_behavior.md (the HoA head).

Two causal dilated TCNs with different receptive fields (61 and 1365 frames by default) embed each animal's
sequence into a short-term and a long-term latent space. Three objectives train them:

* a "histogram of actions" (HoA) head predicts, per frame and action channel, the distribution over 32 bins of
  that channel in the next ``hoa_window`` frames, trained with the squared-CDF earth mover's distance;
* one bootstrap objective per latent space: a predictor maps z_t to a target embedding z_t' of a positive frame
  (short space: t' within 5 frames of t; long space: any frame t' of the same sequence), loss 1 - cos.

Departures from the public code (its likely bugs: docs/multitask_behavior.md, "Public-code bugs we avoid"),
all deliberate:
  1. the HoA target is the histogram of the bins of frames t+1 .. t+window (the code counts frame t's bin);
  2. the HoA weight of a frame is the fraction of its future window that is valid (the code uses 1 - that,
     and tiles it in the wrong axis order);
  3. targets and weights are computed without mutating the data (the code writes into ``ignore_frames``);
  4. the bootstrap targets come from an EMA target encoder (``foresight.nn.ema``); ``ema_decay = 0`` makes it
     a detached copy of the online encoder, as in the public code (SimSiam-style), which is the default.
The mouse feature typos (§2.8.4) do not arise: features here are the generic state + action ones (§2.2).

Shape legend: B batch of sequences, T frames, F input channels, C action (target) channels, K histogram bins,
D latent width.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from foresight.core.config import Config
from foresight.nn.losses import byol_loss


def receptive_field(kernel_size: int, dilations: tuple[int, ...]) -> int:
    """Frames seen by the last output of a TCN whose levels each hold two causal convs.

    Each conv of kernel k and dilation d looks (k - 1) d frames further back: RF = 1 + Σ_i 2 (k - 1) d_i.
    """
    return 1 + sum(2 * (kernel_size - 1) * d for d in dilations)


@dataclass(frozen=True)
class TCNConfig(Config):
    channels: tuple[int, ...] = (64, 64, 32, 32)  # output width of each level; the last is the embedding
    kernel_size: int = 3
    dilation_base: int = 2  # level i has dilation base^i
    dropout: float = 0.2

    def validate(self) -> None:
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be a non-empty tuple of positive widths, got {self.channels}")
        if self.kernel_size < 2:
            raise ValueError(f"kernel_size must be >= 2, got {self.kernel_size}")
        if self.dilation_base < 1:
            raise ValueError(f"dilation_base must be >= 1, got {self.dilation_base}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def dilations(self) -> tuple[int, ...]:
        return tuple(self.dilation_base**i for i in range(len(self.channels)))

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.kernel_size, self.dilations)


# the public code's mouse encoders (docs/bams.md, "Two causal dilated TCNs")
SHORT_TERM = TCNConfig(channels=(64, 64, 32, 32), dilation_base=2)  # RF 61 frames (2 s at 30 Hz)
LONG_TERM = TCNConfig(channels=(64, 64, 64, 32, 32), dilation_base=4)  # RF 1365 frames (45.5 s at 30 Hz)


class CausalConv1d(nn.Conv1d):
    """Conv1d over [B, F, T] padded on the left only, so output t depends on inputs <= t.

    Same result as the reference's symmetric padding followed by chomping the right end, without the waste.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = (self.kernel_size[0] - 1) * self.dilation[0]
        return super().forward(F.pad(x, (left, 0)))


class TemporalBlock(nn.Module):
    """Two dilated causal convs (the second weight-normalised), PReLU(0.1) + dropout after each, a residual."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = CausalConv1d(c_in, c_out, kernel_size, dilation=dilation)
        self.conv2 = CausalConv1d(c_out, c_out, kernel_size, dilation=dilation)
        # locuslab/TCN init (kept by BAMS): conv weights N(0, 0.01), set before weight_norm splits them
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, 0.0, 0.01)
        self.conv2 = weight_norm(self.conv2)
        self.act1, self.act2, self.act_out = nn.PReLU(init=0.1), nn.PReLU(init=0.1), nn.PReLU(init=0.1)
        self.drop = nn.Dropout(dropout)
        self.downsample = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else None
        if self.downsample is not None:
            nn.init.normal_(self.downsample.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, F, T] -> [B, C, T]
        h = self.drop(self.act1(self.conv1(x)))
        h = self.drop(self.act2(self.conv2(h)))
        res = x if self.downsample is None else self.downsample(x)
        return self.act_out(h + res)


class TCN(nn.Module):
    """Causal dilated temporal convolutional network: [B, T, F] -> [B, T, channels[-1]]."""

    def __init__(self, in_dim: int, config: TCNConfig) -> None:
        super().__init__()
        self.config = config
        widths = (in_dim, *config.channels)
        self.levels = nn.Sequential(
            *[
                TemporalBlock(widths[i], widths[i + 1], config.kernel_size, d, config.dropout)
                for i, d in enumerate(config.dilations)
            ]
        )

    @property
    def receptive_field(self) -> int:
        return self.config.receptive_field

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.levels(x.transpose(1, 2)).transpose(1, 2)  # [B, T, D]


@dataclass(frozen=True)
class BAMSConfig(Config):
    input_dim: int = 67  # mouse features: 66 kinematics + an "ignore" flag
    action_dim: int = 9  # C, the HoA target channels
    short: TCNConfig = field(default_factory=lambda: SHORT_TERM)
    long: TCNConfig = field(default_factory=lambda: LONG_TERM)
    hoa_bins: int = 32  # K
    hoa_window: int = 30  # future frames per histogram (1 s at 30 Hz)
    hoa_hidden: tuple[int, ...] = (256, 512, 512)  # the HoA predictor MLP
    short_positive_window: int = 5  # short-space positives: t' = t + U{0..5}
    short_skip: int = 60  # earliest anchor frame in the short space (and first frame with a HoA loss)
    long_skip: int = 100  # earliest frame of either long-space pair member
    hoa_weight: float = 500.0  # L = 500 L_HoA + 0.5 L_short + 0.5 L_long
    short_weight: float = 0.5
    long_weight: float = 0.5
    ema_decay: float = 0.0  # 0: the target is the detached online encoder, as in the public code

    def validate(self) -> None:
        for name in ("input_dim", "action_dim", "hoa_window", "short_positive_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hoa_bins < 2:
            raise ValueError(f"hoa_bins must be >= 2, got {self.hoa_bins}")
        if any(h < 1 for h in self.hoa_hidden):
            raise ValueError(f"hoa_hidden widths must be >= 1, got {self.hoa_hidden}")
        for name in ("short_skip", "long_skip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("hoa_weight", "short_weight", "long_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {self.ema_decay}")

    @property
    def embedding_dim(self) -> int:
        return self.short.channels[-1] + self.long.channels[-1]

    def min_length(self) -> int:
        """Shortest sequence on which every objective has at least one frame to sample."""
        return max(self.short_skip + self.short_positive_window + 1, self.long_skip + 1)


class MultiScaleEncoder(nn.Module):
    """The two TCNs; kept apart from the heads so that an EMA copy of it can serve as the target."""

    def __init__(self, config: BAMSConfig) -> None:
        super().__init__()
        self.short = TCN(config.input_dim, config.short)
        self.long = TCN(config.input_dim, config.long)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # [B, T, F] -> [B, T, Ds], [B, T, Dl]
        return self.short(x), self.long(x)


def _bootstrap_predictor(d: int) -> nn.Module:
    # public code: Linear(d, 4d, no bias) -> BatchNorm1d -> ReLU -> Linear(4d, d)
    return nn.Sequential(nn.Linear(d, 4 * d, bias=False), nn.BatchNorm1d(4 * d), nn.ReLU(), nn.Linear(4 * d, d))


@dataclass
class BAMSOutput:
    short: torch.Tensor  # [B, T, Ds]
    long: torch.Tensor  # [B, T, Dl]
    hoa_logits: torch.Tensor  # [B, T, C, K]

    @property
    def embedding(self) -> torch.Tensor:  # [B, T, Ds + Dl], the representation that is probed
        return torch.cat([self.short, self.long], dim=-1)


class BAMS(nn.Module):
    def __init__(self, config: BAMSConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = MultiScaleEncoder(config)
        # the HoA predictor sees [z_short ; z_long ; x]; PReLU between layers, none after the last
        # (docs/multitask_behavior.md, "The action-distribution ("histogram of actions", HoA) head")
        widths = (config.embedding_dim + config.input_dim, *config.hoa_hidden)
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.PReLU()]
        layers.append(nn.Linear(widths[-1], config.action_dim * config.hoa_bins))
        self.hoa_head = nn.Sequential(*layers)
        self.short_predictor = _bootstrap_predictor(config.short.channels[-1])
        self.long_predictor = _bootstrap_predictor(config.long.channels[-1])

    def forward(self, x: torch.Tensor) -> BAMSOutput:  # x: [B, T, F]
        if x.dim() != 3 or x.shape[-1] != self.config.input_dim:
            raise ValueError(f"expected input [B, T, {self.config.input_dim}], got {tuple(x.shape)}")
        z_short, z_long = self.encoder(x)
        logits = self.hoa_head(torch.cat([z_short, z_long, x], dim=-1))  # [B, T, C * K]
        logits = logits.unflatten(-1, (self.config.action_dim, self.config.hoa_bins))  # [B, T, C, K]
        return BAMSOutput(z_short, z_long, logits)

    def bootstrap_params(self) -> list[nn.Parameter]:
        """The bootstrap predictors' parameters (the public code trains them with 10x the learning rate)."""
        return [*self.short_predictor.parameters(), *self.long_predictor.parameters()]


# ---------------------------------------------------------------------------------------------
# HoA targets and the EMD loss (pure functions)
# ---------------------------------------------------------------------------------------------
def hoa_bin_edges(
    values: torch.Tensor, bins: int = 32, min_abs: float = 0.1, quantiles: tuple[float, float] = (0.005, 0.995)
) -> torch.Tensor:
    """[C, bins - 1] edges per action channel, linspaced between quantiles of the values with |v| > min_abs.

    ``values``: [N, C] (all frames of the training set). A channel with no value above ``min_abs`` uses all.
    """
    if values.dim() != 2:
        raise ValueError(f"values must be [N, C], got shape {tuple(values.shape)}")
    edges = []
    for v in values.T:
        big = v[v.abs() > min_abs]
        v = big if big.numel() else v
        lo, hi = torch.quantile(v.float(), torch.tensor(quantiles))
        edges.append(torch.linspace(float(lo), float(hi), bins - 1))
    return torch.stack(edges)  # [C, K - 1]


def quantize(actions: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin index in [0, K) of every action value: [..., C] with edges [C, K - 1] -> long [..., C].

    Same convention as ``np.digitize(v, edges)`` (right=False): bin i holds edges[i - 1] <= v < edges[i].
    """
    flat = actions.reshape(-1, actions.shape[-1])  # [N, C]
    idx = torch.stack(
        [torch.bucketize(flat[:, c].contiguous(), edges[c], right=True) for c in range(flat.shape[1])], dim=1
    )
    return idx.reshape(actions.shape)


def future_histograms(
    bins: torch.Tensor, valid: torch.Tensor, window: int, num_bins: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's "distribution of future actions": per frame t, the histogram of frames t+1 .. t+window.

    Args:
        bins: long [B, T, C] bin index per frame and action channel.
        valid: bool [B, T], False for missing frames (and their counts are left out).
        window: future frames per histogram.
    Returns:
        hist: [B, T, C, K], each row normalised to sum 1 (all zeros where no future frame is valid);
        weight: [B, T], the fraction of the window that is valid (frames near the end have shorter windows).
    """
    if bins.dim() != 3 or valid.shape != bins.shape[:2]:
        raise ValueError(f"expected bins [B, T, C] and valid [B, T], got {tuple(bins.shape)}, {tuple(valid.shape)}")
    B, T, C = bins.shape
    onehot = F.one_hot(bins, num_bins).to(torch.float32) * valid[..., None, None]  # [B, T, C, K]
    csum = torch.cat([torch.zeros_like(onehot[:, :1]), onehot.cumsum(1)], dim=1)  # [B, T + 1, C, K]
    n_valid = torch.cat([valid.new_zeros(B, 1, dtype=torch.float32), valid.float().cumsum(1)], dim=1)  # [B, T + 1]
    t = torch.arange(T, device=bins.device)
    lo, hi = t + 1, (t + window).clamp(max=T - 1) + 1  # window (t, t + window] as prefix sums [lo, hi)
    hi = torch.maximum(hi, lo.clamp(max=T))
    lo = lo.clamp(max=T)
    counts = csum[:, hi] - csum[:, lo]  # [B, T, C, K]
    n = n_valid[:, hi] - n_valid[:, lo]  # [B, T]
    hist = counts / n.clamp(min=1.0)[..., None, None]
    return hist, n / window


def earth_movers_distance(p: torch.Tensor, q: torch.Tensor, power: int = 1) -> torch.Tensor:
    """EMD between 1-D histograms on unit-spaced bins, over the last axis: [..., K] -> [...].

    power 1: Σ_k |CDF_p(k) - CDF_q(k)|, the exact EMD for 1-D distributions of equal mass.
    power 2: mean_k (CDF_p(k) - CDF_q(k))^2, the "EMD²" that BAMS minimises (``bams/hoa_loss.py``).
    """
    if p.shape != q.shape:
        raise ValueError(f"histograms differ in shape: {tuple(p.shape)} vs {tuple(q.shape)}")
    diff = p.cumsum(-1) - q.cumsum(-1)
    if power == 1:
        return diff.abs().sum(-1)
    if power == 2:
        return diff.square().mean(-1)
    raise ValueError(f"power must be 1 or 2, got {power}")


def hoa_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, skip_frames: int = 0) -> torch.Tensor:
    """Weighted mean over (B, T, C) of EMD²(softmax(logits), target), frames before ``skip_frames`` left out.

    logits, target: [B, T, C, K]; weight: [B, T] (the fraction of the future window that is valid).
    """
    emd2 = earth_movers_distance(logits.softmax(-1), target, power=2)[:, skip_frames:]  # [B, T', C]
    w = weight[:, skip_frames:, None].expand_as(emd2)
    return (emd2 * w).sum() / w.sum().clamp(min=1e-8)


def bootstrap_loss(prediction: torch.Tensor, target: torch.Tensor, stop_target_gradients: bool = True) -> torch.Tensor:
    """Mean over the batch of 1 - cos(prediction, target); [N, D] x [N, D] -> scalar.

    BAMS's scale is half of BYOL's :func:`foresight.nn.losses.byol_loss` (2 - 2 cos).
    """
    per_row = byol_loss(prediction, target, stop_target_gradients=stop_target_gradients, reduction="none")  # [N]
    # mean of the rows, then halved (exact in floating point): bit for bit mean(1 - cos); reduction="mean"
    # would give 1 - mean(cos), equal only up to rounding
    return 0.5 * per_row.mean()


def sample_positive_pairs(
    B: int, T: int, config: BAMSConfig, generator: torch.Generator | None = None
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """One (anchor, positive) frame pair per sequence and latent space, as in the public code.

    Short space: t ~ U[short_skip, T - w), t' = t + U{0..w}. Long space: t, t' ~ U[long_skip, T) independently.
    """
    w = config.short_positive_window
    if T < config.min_length():
        raise ValueError(f"sequences of {T} frames are too short: the objectives need >= {config.min_length()}")
    t_s = torch.randint(config.short_skip, T - w, (B,), generator=generator)
    t_s2 = t_s + torch.randint(0, w + 1, (B,), generator=generator)
    t_l = torch.randint(config.long_skip, T, (B,), generator=generator)
    t_l2 = torch.randint(config.long_skip, T, (B,), generator=generator)
    return (t_s, t_s2), (t_l, t_l2)


@dataclass
class BAMSLosses:
    total: torch.Tensor
    hoa: torch.Tensor
    short: torch.Tensor
    long: torch.Tensor


def bams_losses(
    model: BAMS,
    target_encoder: MultiScaleEncoder,
    x: torch.Tensor,
    hoa_target: torch.Tensor,
    hoa_weight: torch.Tensor,
    generator: torch.Generator | None = None,
) -> BAMSLosses:
    """L = w_hoa L_HoA + w_short L_short + w_long L_long on a batch x [B, T, F].

    The bootstrap targets are the target encoder's embeddings of the positive frames, without gradient.
    """
    cfg = model.config
    out = model(x)
    B, T = x.shape[:2]
    pairs = sample_positive_pairs(B, T, cfg, generator)
    (t_s, t_s2), (t_l, t_l2) = ((a.to(x.device), b.to(x.device)) for a, b in pairs)
    with torch.no_grad():
        tgt_short, tgt_long = target_encoder(x)  # [B, T, Ds], [B, T, Dl]
    rows = torch.arange(B, device=x.device)
    l_short = bootstrap_loss(model.short_predictor(out.short[rows, t_s]), tgt_short[rows, t_s2])
    l_long = bootstrap_loss(model.long_predictor(out.long[rows, t_l]), tgt_long[rows, t_l2])
    l_hoa = hoa_loss(out.hoa_logits, hoa_target, hoa_weight, skip_frames=cfg.short_skip)
    total = cfg.hoa_weight * l_hoa + cfg.short_weight * l_short + cfg.long_weight * l_long
    return BAMSLosses(total, l_hoa, l_short, l_long)
