"""A natively multimodal decoder at toy scale (Gemini 1.0: Gemini Team 2023, arXiv 2312.11805).

Gemini "build[s] on top of Transformer decoders" that take "textual input interleaved with ... audio and
visual inputs" and ingests audio "at 16kHz" (docs/gemini1_multimodal.md). The report
gives no encoder details, so this module follows the open models' interleaving pattern (described there):

    1. text with placeholder tokens: ``tokens_per_image`` <image> ids per image, ``audio_tokens`` <audio>
       ids per clip, in sequence order;
    2. images -> Fuyu-style linear patch embedding (no vision tower), audio log-mel frames -> one strided
       Conv1d (frame pooling) + GELU + Linear; both give D-wide vectors;
    3. those vectors replace the placeholder embeddings in order (HF ``masked_scatter``) and ONE Gemma 2
       decoder runs over the mixed sequence.

Only the delta to `foresight.lm.gemma2.Gemma2` is written here (embedding, RoPE, blocks, final norm,
tied head and soft-cap are Gemma2's). Requirements (R1-R6 on that page), each tested in tests/lm/test_multimodal.py:

    R1  placeholder count != encoded-vector count -> ValueError naming both numbers;
    R2  RoPE positions count every token, placeholders included (Gemma2's ``default_positions``);
    R3  left padding: no NaN and a padded batch equals the rows run alone;
    R4  Gemma multiplies every input embedding by its normalizer sqrt(D) (rounded to the activation
        dtype). Encoded features are divided by that same rounded value before they are scattered
        (PaliGemma's ``/ sqrt(hidden_size)``), so after the multiplication they enter the residual
        stream at exactly the encoder's scale;
    R5  `multimodal_targets` sets placeholder (and padding) targets to the ignore index;
    R6  the audio sample rate is a config field (16000 Hz); resampling happens once, in the dataset.

Prefix attention: "causal" (every token causal, as the text) or "bidirectional" (PaliGemma-style: the
tokens of one image or one audio clip also see each other, in every layer; text stays causal). The
bidirectional mask is built densely (`MediaSpanMask`), so it needs the "eager" attention backend.

Axis legend (as in gemma2.py): B batch, T tokens, D hidden, V vocab; N_i images, N_a audio clips,
P patches per image (tokens_per_image), C patch pixels, A audio tokens per clip, F_m mel frames per
clip, M mel bins.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import Linear

from foresight.lm.distill import IGNORE_INDEX
from foresight.lm.gemma2 import Gemma2, Gemma2Config
from foresight.nn.attention import AttentionMask

MEL_FRAMES_PER_SECOND = 100  # log-mel hop of 10 ms (160 samples at 16 kHz), as USM/Whisper-style front ends


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultimodalConfig:
    """A Gemma 2 decoder (``text``) plus image/audio encoders and the placeholder ids in its vocabulary."""

    text: Gemma2Config  # the decoder; its vocab holds the placeholder ids below
    image_token_id: int  # <image>
    audio_token_id: int  # <audio>
    image_size: int = 8  # square, one channel (sklearn digits: 8x8)
    patch_size: int = 2  # Fuyu-style: each patch_size^2 pixel patch is one token -> (8/2)^2 = 16 tokens
    n_mels: int = 40  # M: log-mel bins per frame
    sample_rate: int = 16000  # Hz of the waveforms the log-mel features are computed from (Gemini: 16 kHz)
    clip_seconds: float = 1.0  # every clip is padded/trimmed to this length before the log-mel
    audio_frames_per_second: int = 20  # audio tokens per second (mel frames pooled 100/20 = 5 to 1)
    audio_hidden: int = 64  # width of the audio encoder's conv
    prefix_attention: str = "causal"  # "causal" | "bidirectional" (within one image / one clip)

    choices: ClassVar[dict[str, tuple]] = {"prefix_attention": ("causal", "bidirectional")}

    def __post_init__(self) -> None:
        if not isinstance(self.text, Gemma2Config):
            raise ValueError(f"text must be a Gemma2Config, got {type(self.text).__name__}")
        V = self.text.vocab_size
        for name in ("image_token_id", "audio_token_id"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < V:
                raise ValueError(f"{name} {v!r} is outside the vocabulary [0, {V})")
        if self.image_token_id == self.audio_token_id:
            raise ValueError(f"image_token_id and audio_token_id must differ, both are {self.image_token_id}")
        specials = {self.text.pad_token_id, self.text.bos_token_id, *self.text.eos_token_ids} - {None}
        if {self.image_token_id, self.audio_token_id} & specials:
            raise ValueError(f"placeholder ids {self.image_token_id}, {self.audio_token_id} clash with {specials}")
        for name in ("image_size", "patch_size", "n_mels", "sample_rate", "audio_frames_per_second", "audio_hidden"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} must divide image_size {self.image_size}")
        if MEL_FRAMES_PER_SECOND % self.audio_frames_per_second:
            raise ValueError(
                f"audio_frames_per_second {self.audio_frames_per_second} must divide the "
                f"{MEL_FRAMES_PER_SECOND} mel frames per second"
            )
        if not self.clip_seconds > 0 or (self.clip_seconds * self.audio_frames_per_second) % 1:
            raise ValueError(
                f"clip_seconds {self.clip_seconds!r} must be > 0 and give a whole number of audio tokens "
                f"at {self.audio_frames_per_second}/s"
            )
        if self.prefix_attention not in self.choices["prefix_attention"]:
            raise ValueError(
                f"prefix_attention {self.prefix_attention!r}; expected one of {self.choices['prefix_attention']}"
            )

    def replace(self, **changes) -> MultimodalConfig:
        return replace(self, **changes)

    @property
    def tokens_per_image(self) -> int:  # P
        return (self.image_size // self.patch_size) ** 2

    @property
    def pool(self) -> int:
        """Mel frames pooled into one audio token."""
        return MEL_FRAMES_PER_SECOND // self.audio_frames_per_second

    @property
    def mel_frames(self) -> int:  # F_m per clip
        return round(self.clip_seconds * MEL_FRAMES_PER_SECOND)

    @property
    def audio_tokens(self) -> int:  # A per clip
        return round(self.clip_seconds * self.audio_frames_per_second)


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------


def media_spans(input_ids: torch.Tensor, config: MultimodalConfig) -> torch.Tensor:
    """[B, T] long: one id per image / audio clip (counted in sequence order within a row), -1 for text.

    Consecutive placeholders of one kind are cut into items of P (image) or A (audio) tokens, so two
    images side by side are two spans.
    """
    spans = torch.full_like(input_ids, -1)
    for kind, (tok, size) in enumerate(
        ((config.image_token_id, config.tokens_per_image), (config.audio_token_id, config.audio_tokens))
    ):
        is_tok = input_ids == tok
        item = (is_tok.long().cumsum(-1) - 1) // size  # [B, T]: index of the item each token belongs to
        spans = torch.where(is_tok, 2 * item + kind, spans)
    return spans


@dataclass(frozen=True)
class MediaSpanMask(AttentionMask):
    """`AttentionMask` plus bidirectional visibility inside each media span (no KV cache: keys = queries).

    Key j is visible to query i iff AttentionMask allows it, or both belong to the same span
    (``span[b, i] == span[b, j] >= 0``) and key j is real.
    """

    span: torch.Tensor | None = field(default=None)  # [B, T] long, -1 = text

    def _build_dense(self) -> torch.Tensor:
        visible = super()._build_dense()  # [B|1, T, S]
        if self.span is None:
            return visible
        s = self.span
        same = (s[:, :, None] == s[:, None, :]) & (s[:, :, None] >= 0)  # [B, T, T]
        if self.k_valid is not None:
            same = same & self.k_valid[:, None, :]
        return visible | same


# ---------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """[N, H, W] -> [N, (H/p)*(W/p), p*p], patches in row-major order (Fuyu's raster order, no row breaks)."""
    N, H, W = images.shape
    x = images.reshape(N, H // patch, patch, W // patch, patch).permute(0, 1, 3, 2, 4)
    return x.reshape(N, (H // patch) * (W // patch), patch * patch)


class ImageEncoder(nn.Module):
    """Fuyu: one Linear from raw patch pixels to D (no vision tower)."""

    def __init__(self, config: MultimodalConfig):
        super().__init__()
        self.patch = config.patch_size
        self.proj = Linear(config.patch_size**2, config.text.hidden_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # [N_i, H, W] -> [N_i, P, D]
        return self.proj(patchify(images, self.patch))


class AudioEncoder(nn.Module):
    """Log-mel frames -> Conv1d(kernel = stride = pool) -> GELU -> Linear: ``pool`` frames per token."""

    def __init__(self, config: MultimodalConfig):
        super().__init__()
        self.conv = nn.Conv1d(config.n_mels, config.audio_hidden, kernel_size=config.pool, stride=config.pool)
        self.proj = Linear(config.audio_hidden, config.text.hidden_size)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:  # [N_a, F_m, M] -> [N_a, A, D]
        h = F.gelu(self.conv(mels.transpose(1, 2)))  # [N_a, audio_hidden, A]
        return self.proj(h.transpose(1, 2))


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


@dataclass
class MultimodalOutput:
    """What `MultimodalDecoder.forward` returns."""

    logits: torch.Tensor  # [B, T, V] float32, soft-capped
    # With output_hidden_states: L + 1 tensors [B, T, D], the first the scaled embeddings with the features in.
    hidden_states: tuple[torch.Tensor, ...] | None = None


class MultimodalDecoder(Gemma2):
    """Gemma 2 over interleaved text, image and audio tokens; see the module docstring.

    ``self.config`` stays the decoder's Gemma2Config; ``self.mm_config`` is the full MultimodalConfig.
    """

    def __init__(self, config: MultimodalConfig, attn_backend: str = "eager"):
        if not isinstance(config, MultimodalConfig):
            raise ValueError(f"config must be a MultimodalConfig, got {type(config).__name__}")
        self.mm_config = config  # set first: set_attn_backend (called by Gemma2.__init__) reads it
        super().__init__(config.text, attn_backend)
        self.image_encoder = ImageEncoder(config)
        self.audio_encoder = AudioEncoder(config)
        self.reset_parameters()

    def reset_parameters(self, std: float | None = None) -> None:
        """Gemma2's init for the decoder; LeCun-normal weights and zero biases for the encoders' layers.

        Gemma2's Normal(0, 0.02) would leave a 2x2-pixel patch's features ~20x below nn.Linear's default
        bias, i.e. every image token nearly the same vector (measured: image accuracy stayed at chance);
        1/sqrt(fan_in) keeps each encoder's output at O(1) per unit input.
        """
        super().reset_parameters(std)
        if self.embed.weight.is_meta or not hasattr(self, "audio_encoder"):
            return
        for enc in (self.image_encoder, self.audio_encoder):
            for layer in enc.modules():
                if isinstance(layer, nn.Linear | nn.Conv1d):
                    fan_in = layer.weight[0].numel()
                    nn.init.normal_(layer.weight, std=fan_in**-0.5)
                    nn.init.zeros_(layer.bias)

    def set_attn_backend(self, backend: str) -> None:
        if getattr(self, "mm_config", None) is not None and self.mm_config.prefix_attention == "bidirectional":
            if backend != "eager":
                raise ValueError(f"prefix_attention='bidirectional' needs the 'eager' backend, got {backend!r}")
        super().set_attn_backend(backend)

    def embed_inputs(
        self,
        input_ids: torch.Tensor,  # [B, T]
        images: torch.Tensor | None = None,  # [N_i, H, W], in sequence order (row 0's first)
        audio: torch.Tensor | None = None,  # [N_a, F_m, M] log-mel frames, in sequence order
    ) -> torch.Tensor:  # [B, T, D], already multiplied by the normalizer
        cfg = self.mm_config
        x = self.embed(input_ids)  # [B, T, D]
        norm = self.normalizer(x.dtype)
        for name, tok, encoder, media in (
            ("image", cfg.image_token_id, self.image_encoder, images),
            ("audio", cfg.audio_token_id, self.audio_encoder, audio),
        ):
            slots = input_ids == tok  # [B, T]
            n_slots = int(slots.sum())
            feats = None if media is None or len(media) == 0 else encoder(media.to(x.dtype))  # [N, P|A, D]
            n_feats = 0 if feats is None else feats.shape[0] * feats.shape[1]
            if n_slots != n_feats:  # R1
                raise ValueError(
                    f"{n_slots} <{name}> placeholder tokens but {n_feats} encoded {name} vectors "
                    f"({0 if feats is None else feats.shape[0]} inputs x "
                    f"{0 if feats is None else feats.shape[1]} tokens each)"
                )
            if feats is not None:
                # R4: divide by the same (dtype-rounded) normalizer the model multiplies by below, so the
                # features reach the residual stream at the encoder's own scale (PaliGemma's / sqrt(D)).
                x = x.masked_scatter(slots[..., None], (feats / norm).reshape(-1, x.shape[-1]))
        return x * norm

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T] long, placeholders included
        images: torch.Tensor | None = None,  # [N_i, H, W]
        audio: torch.Tensor | None = None,  # [N_a, F_m, M]
        attention_mask: torch.Tensor | None = None,  # [B, T]; 1 = real, 0 = pad (left padding)
        output_hidden_states: bool = False,
    ) -> MultimodalOutput:
        valid, masks, positions = self._inputs(input_ids, attention_mask, None, None)  # R2, R3: Gemma2's
        if self.mm_config.prefix_attention == "bidirectional":
            span = media_spans(input_ids, self.mm_config)
            masks = {kind: MediaSpanMask(m.q_time, m.k_time, m.k_valid, m.window, span) for kind, m in masks.items()}
        x = self.embed_inputs(input_ids, images, audio)
        cos, sin = self.rope(positions)  # [B, T, E] each
        hidden = [x] if output_hidden_states else None
        for block in self.layers:
            x = block(x, cos, sin, masks[block.layer_type], None, self.attn_backend)
            if hidden is not None:
                hidden.append(x)
        return MultimodalOutput(self._logits(x, 0), None if hidden is None else tuple(hidden))


def multimodal_targets(
    input_ids: torch.Tensor,  # [B, T + 1]
    config: MultimodalConfig,
    attention_mask: torch.Tensor | None = None,  # [B, T + 1]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs [B, T], targets [B, T]) for next-token training, R5: a target that is a placeholder, padding or
    read from a padding input is IGNORE_INDEX (the model is asked to predict text only, from real tokens)."""
    targets = input_ids[:, 1:].clone()
    drop = (targets == config.image_token_id) | (targets == config.audio_token_id)
    if attention_mask is not None:
        real = attention_mask.bool()
        drop |= ~real[:, 1:] | ~real[:, :-1]
    return input_ids[:, :-1], targets.masked_fill(drop, IGNORE_INDEX)


__all__ = [
    "AudioEncoder",
    "ImageEncoder",
    "MediaSpanMask",
    "MultimodalConfig",
    "MultimodalDecoder",
    "MultimodalOutput",
    "media_spans",
    "multimodal_targets",
    "patchify",
]
