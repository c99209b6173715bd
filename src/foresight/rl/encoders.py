"""Observation encoders: flat float features for a gymnasium space, and the network bodies that read them.

Every observation is first turned into one flat float vector per environment by :func:`space_encoder`
(rollout buffers, exploration bonuses and replay buffers then hold one tensor ``[..., O]`` whatever the
environment). A body (:func:`make_body`) maps those features to a ``[N, out_dim]`` representation:

- ``"mlp"``: two tanh layers (cleanrl ``ppo.py``), for vectors, one-hots and small grids;
- ``"minigrid"``: MiniGrid's egocentric ``image [7, 7, 3]`` through the small CNN of
  ``lcswillems/rl-starter-files`` (``model.py``: conv 2x2 16 → max-pool 2x2 → conv 2x2 32 → conv 2x2 64,
  ReLU), concatenated with the one-hot ``direction``, then one tanh layer;
- ``"atari"``: the Nature DQN CNN (Mnih et al. 2015; cleanrl ``ppo_atari.py``) on 4 stacked 84x84 grey
  frames scaled by 1/255, ending in a 512-wide ReLU layer.

``"auto"`` picks ``"minigrid"`` for a ``Dict`` space with ``image`` and ``direction``, ``"atari"`` for a uint8
``Box`` of shape ``[4, 84, 84]`` and ``"mlp"`` otherwise.

Axis legend: E (or N) batch, O flat features, C channels, H, W image rows and columns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

ENCODERS = ("auto", "mlp", "minigrid", "atari")
ATARI_SHAPE = (4, 84, 84)


def layer_init(layer: nn.Module, std: float = 2**0.5, bias: float = 0.0) -> nn.Module:
    """Orthogonal weights (cleanrl ``layer_init``): std √2 for ReLU/tanh layers, 0.01 policy, 1 value."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def is_minigrid_space(space: gym.Space) -> bool:
    """A MiniGrid observation: ``Dict`` with an ``image`` Box ``[H, W, C]`` and a ``direction`` Discrete."""
    return (
        isinstance(space, gym.spaces.Dict)
        and isinstance(space.spaces.get("image"), gym.spaces.Box)
        and len(space["image"].shape) == 3
        and isinstance(space.spaces.get("direction"), gym.spaces.Discrete)
    )


def is_atari_space(space: gym.Space) -> bool:
    """4 stacked 84x84 grey frames as uint8 (gymnasium ``AtariPreprocessing`` + ``FrameStackObservation``)."""
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and tuple(space.shape) == ATARI_SHAPE


# ------------------------------------------------------------------------------------------------
# flat features
# ------------------------------------------------------------------------------------------------
def space_encoder(space: gym.Space) -> tuple[int, Callable[[Any], Tensor]]:
    """``(feature_dim, encode)`` for a single-env observation space; ``encode`` maps a batch ``[E, ...]``.

    ``Discrete(n)``: one-hot ``[E, n]``; ``MultiDiscrete(nvec)``: concatenated one-hots ``[E, Σ nvec]``;
    ``Box``: flattened float32 (raw values; bodies scale them). MiniGrid ``Dict``: the flattened image then
    the one-hot direction ``[E, H·W·C + 4]`` (the text ``mission`` is dropped). Other ``Dict`` spaces:
    their numeric entries' encodings in key order.
    """
    if isinstance(space, gym.spaces.Discrete):
        n = int(space.n)
        start = int(space.start)
        return n, lambda o: nn.functional.one_hot(torch.as_tensor(np.asarray(o) - start).long(), n).float()
    if isinstance(space, gym.spaces.MultiDiscrete):
        nvec = [int(v) for v in np.asarray(space.nvec).reshape(-1)]

        def encode_md(o: np.ndarray) -> Tensor:
            o = torch.as_tensor(np.asarray(o)).long().reshape(-1, len(nvec))
            return torch.cat([nn.functional.one_hot(o[:, i], n) for i, n in enumerate(nvec)], -1).float()

        return sum(nvec), encode_md
    if isinstance(space, gym.spaces.Box):
        dim = int(np.prod(space.shape))
        return dim, lambda o: torch.as_tensor(np.asarray(o), dtype=torch.float32).reshape(-1, dim)
    if isinstance(space, gym.spaces.Dict):
        keys = ["image", "direction"] if is_minigrid_space(space) else list(space.spaces)
        parts = {k: space_encoder(space[k]) for k in keys if _numeric(space[k])}
        if not parts:
            raise ValueError(f"Dict space {space!r} has no Discrete, MultiDiscrete or Box entry to encode")

        def encode_dict(o: dict[str, Any]) -> Tensor:
            return torch.cat([enc(o[k]) for k, (_, enc) in parts.items()], -1)

        return sum(d for d, _ in parts.values()), encode_dict
    raise ValueError(f"unsupported observation space {space!r}; expected Discrete, MultiDiscrete, Box or Dict")


def _numeric(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Discrete | gym.spaces.MultiDiscrete | gym.spaces.Box | gym.spaces.Dict)


# ------------------------------------------------------------------------------------------------
# bodies
# ------------------------------------------------------------------------------------------------
class MLPBody(nn.Module):
    """``tanh(W₂ tanh(W₁ x))`` (cleanrl ``ppo.py``'s actor and critic bodies)."""

    def __init__(self, obs_dim: int, hidden: int) -> None:
        super().__init__()
        self.out_dim = hidden
        self.net = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden)), nn.Tanh(), layer_init(nn.Linear(hidden, hidden)), nn.Tanh()
        )

    def forward(self, x: Tensor) -> Tensor:  # [N, O] -> [N, hidden]
        return self.net(x)


class MiniGridBody(nn.Module):
    """rl-starter-files' image CNN on MiniGrid's ``[H, W, C]`` view, plus the one-hot direction, then tanh."""

    def __init__(self, image_shape: tuple[int, int, int], num_directions: int, hidden: int) -> None:
        super().__init__()
        H, W, C = image_shape
        if H < 7 or W < 7:
            raise ValueError(f"MiniGridBody needs an image of at least 7x7, got {image_shape}")
        self.image_shape, self.num_directions, self.out_dim = (H, W, C), num_directions, hidden
        self.conv = nn.Sequential(
            nn.Conv2d(C, 16, (2, 2)),
            nn.ReLU(),
            nn.MaxPool2d((2, 2)),
            nn.Conv2d(16, 32, (2, 2)),
            nn.ReLU(),
            nn.Conv2d(32, 64, (2, 2)),
            nn.ReLU(),
            nn.Flatten(),
        )
        conv_out = ((H - 1) // 2 - 2) * ((W - 1) // 2 - 2) * 64  # 64 for the default 7x7 view
        self.fc = nn.Sequential(layer_init(nn.Linear(conv_out + num_directions, hidden)), nn.Tanh())

    def forward(self, x: Tensor) -> Tensor:  # [N, H·W·C + num_directions] -> [N, hidden]
        H, W, C = self.image_shape
        image = x[:, : H * W * C].reshape(-1, H, W, C).permute(0, 3, 1, 2)  # [N, C, H, W]
        return self.fc(torch.cat([self.conv(image), x[:, H * W * C :]], -1))


class NatureCNN(nn.Module):
    """The Nature DQN torso on ``[4, 84, 84]`` uint8 frames (given flat): /255, three convs, 512 ReLU."""

    def __init__(self, hidden: int = 512) -> None:
        super().__init__()
        self.out_dim = hidden
        self.net = nn.Sequential(
            layer_init(nn.Conv2d(4, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
            layer_init(nn.Linear(64 * 7 * 7, hidden)),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:  # [N, 4·84·84] -> [N, hidden]
        return self.net(x.reshape(-1, *ATARI_SHAPE) / 255.0)


def resolve_encoder(space: gym.Space, kind: str = "auto") -> str:
    """The body kind ``kind`` stands for on ``space`` (``"auto"`` resolved), checked against the space."""
    if kind not in ENCODERS:
        raise ValueError(f"encoder {kind!r} is not one of {ENCODERS}")
    if kind == "auto":
        return "minigrid" if is_minigrid_space(space) else "atari" if is_atari_space(space) else "mlp"
    if kind == "minigrid" and not is_minigrid_space(space):
        raise ValueError(f"encoder 'minigrid' needs a Dict space with 'image' and 'direction', got {space!r}")
    if kind == "atari" and not is_atari_space(space):
        raise ValueError(f"encoder 'atari' needs a uint8 Box of shape {ATARI_SHAPE}, got {space!r}")
    return kind


def make_body(space: gym.Space, kind: str = "auto", hidden: int = 64) -> nn.Module:
    """The body for ``space`` (see the module docstring); it has an ``out_dim`` attribute.
    ``hidden`` is the MLP / MiniGrid width; the Atari body is 512 wide, as in the Nature paper."""
    kind = resolve_encoder(space, kind)
    if kind == "minigrid":
        return MiniGridBody(space["image"].shape, int(space["direction"].n), hidden)
    if kind == "atari":
        return NatureCNN()
    return MLPBody(space_encoder(space)[0], hidden)


__all__ = [
    "ATARI_SHAPE",
    "ENCODERS",
    "MLPBody",
    "MiniGridBody",
    "NatureCNN",
    "is_atari_space",
    "is_minigrid_space",
    "layer_init",
    "make_body",
    "resolve_encoder",
    "space_encoder",
]
