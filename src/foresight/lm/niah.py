"""Needle in a haystack (NIAH) at character level: probes, a training sampler and a recall-grid evaluator.

Protocol (gkamradt/LLMTest_NeedleInAHaystack, adapted as in docs/gemini15_moe.md, "Needle in a haystack"):

    probe of context length L (characters = tokens) =
        haystack[: cut] + NEEDLE + haystack[cut :]  +  QUESTION  +  ANSWER
        └──────── len(haystack) = L - len(NEEDLE) - len(QUESTION) - len(ANSWER) ────────┘

    NEEDLE   = " The secret word is {word}."      (word: random lowercase letters)
    QUESTION = "\\nWhat is the secret word? The secret word is "
    ANSWER   = "{word}."

- The haystack is a contiguous slice of the corpus starting at a random offset.
- Depth d%: the cut starts at ``int(len(haystack) * d / 100)`` and moves back to just after the previous
  '.' (gkamradt's ``insert_needle``; to the very start if there is none); at d = 100 the needle goes at
  the very end. So the needle always begins a sentence.
- The answer is scored by EXACT MATCH of the greedy continuation of ``context + QUESTION`` over
  ``len(ANSWER)`` characters (the word and its full stop). Greedy decoding reproduces the answer iff the
  argmax at every answer position is right under teacher forcing (by induction over the answer: while
  every earlier argmax is right, the greedy prefix IS the teacher-forced prefix), so one forward pass
  of the whole probe scores it; no generation loop is needed.

Training (`NeedleTrainingData`): each window holds one probe of random length L in
[min_context, seq_len + 1] and random depth, followed by the corpus text that continues the haystack
up to the window's ``seq_len + 1`` characters. Window ``i`` depends only on ``(seed, i)``, so the
Trainer's ``(seed, position)`` data order resumes exactly. The loss (`answer_weighted_loss`) is

    loss = CE(every character) + answer_weight * CE(the answer characters)

The first term keeps the model a language model of the corpus. The answer is 1 + word_len of the
~seq_len targets of a window (6 of 128 at quick scale), so on its own it is a few percent of the
gradient; the second term gives retrieval a weight of its own, as synthetic-retrieval training does
(loss on the answers). ``answer_weight = 0`` is plain next-character training. `NeedleObjective` is
that loss for the Trainer (dense or MoE model).

Evaluation (`evaluate_niah`): a grid of context lengths x depths; per length, ``needles`` haystacks,
each probed at every depth with a fresh word (`grid_probes`). The probes of one haystack are equal up to
their needle, so the haystack before the needles is prefilled once and its KV cache copied per depth
(`shared_prefix_logits`). `position_nll` / `cumulative_nll` / `plot_nll_by_position` give the NLL by
context position, `plot_recall_grids` the heatmap, `longest_recalled` the longest context at a recall
bar. Context extension (`ContextStage`, `train_context_schedule`): short windows first, then longer with
a raised RoPE base, each stage a resumable training phase.

The tinyshakespeare alphabet (65 characters) has one digit and no guarantee of every letter in every
context, so the vocabulary is the corpus characters plus the characters of the templates and
lowercase letters (`CharVocab.for_corpus`).
"""

from __future__ import annotations

import copy
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from foresight.lm.cache import PREFILL_CHUNK, prefill, prefill_chunks
from foresight.lm.distill import LMLoss
from foresight.lm.moe_lm import MoELMOutput, router_stats

NEEDLE = " The secret word is {word}."
QUESTION = "\nWhat is the secret word? The secret word is "
ANSWER = "{word}."
WORD_ALPHABET = string.ascii_lowercase
DEFAULT_DEPTHS = tuple(float(d) for d in range(0, 101, 10))  # 0, 10, ..., 100 (%)
GEMINI_DEPTHS = tuple(100.0 * i / 7 for i in range(8))  # 0, 14.3, ..., 100 (%): the report's Figure 8 rows


# ---------------------------------------------------------------------------------------------
# Characters
# ---------------------------------------------------------------------------------------------


class CharVocab:
    """Character-level tokenizer: id = index of the character in a sorted alphabet."""

    def __init__(self, chars: str):
        alphabet = sorted(set(chars))
        if not alphabet:
            raise ValueError("a CharVocab needs at least one character")
        self.chars = "".join(alphabet)
        self._index = {c: i for i, c in enumerate(alphabet)}
        # Fast path for encode: a lookup table over code points (the alphabet is small).
        self._table = np.full(max(map(ord, alphabet)) + 1, -1, dtype=np.int64)
        self._table[[ord(c) for c in alphabet]] = np.arange(len(alphabet))

    @classmethod
    def for_corpus(cls, text: str) -> CharVocab:
        """The corpus characters + lowercase letters + the characters of the needle/question templates."""
        return cls(text + WORD_ALPHABET + NEEDLE + QUESTION + ANSWER + ".")

    def __len__(self) -> int:
        return len(self.chars)

    def __repr__(self) -> str:
        return f"CharVocab(size={len(self)})"

    def encode(self, text: str) -> np.ndarray:  # [len(text)] int64
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ids = np.full(codes.shape, -1, dtype=np.int64)
        inside = codes < len(self._table)
        ids[inside] = self._table[codes[inside]]
        if (ids < 0).any():
            bad = sorted({text[i] for i in np.flatnonzero(ids < 0)[:20]})
            raise ValueError(f"characters {bad!r} are not in the vocabulary ({len(self)} characters)")
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> str:
        return "".join(self.chars[int(i)] for i in ids)


# ---------------------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------------------


def probe_overhead(word_len: int) -> int:
    """Characters a probe spends on needle, question and answer (context length minus haystack)."""
    word = "x" * word_len
    return len(NEEDLE.format(word=word)) + len(QUESTION) + len(ANSWER.format(word=word))


def insert_needle(haystack: str, needle: str, depth_percent: float) -> tuple[str, int]:
    """(haystack with the needle inserted, index where the needle starts); gkamradt's rule.

    The cut starts at ``int(len(haystack) * depth_percent / 100)`` and moves back until the text before
    it ends with '.', or to 0; at depth 100 the needle is appended.
    """
    if not 0.0 <= depth_percent <= 100.0:
        raise ValueError(f"depth_percent must be in [0, 100], got {depth_percent!r}")
    if depth_percent == 100.0:
        return haystack + needle, len(haystack)
    cut = int(len(haystack) * depth_percent / 100.0)
    cut = haystack.rfind(".", 0, cut) + 1  # just after the last '.' before the cut; 0 if none
    return haystack[:cut] + needle + haystack[cut:], cut


@dataclass(frozen=True)
class Probe:
    """One NIAH probe: ``text`` = context + QUESTION + answer, ``len(text)`` = the context length."""

    text: str
    word: str
    depth: float  # requested depth (%)
    needle_start: int  # index in `text` where NEEDLE begins
    answer_len: int  # the last answer_len characters of `text` are the answer

    @property
    def answer(self) -> str:
        return self.text[-self.answer_len :]


def make_probe(source: str, offset: int, length: int, depth: float, word: str) -> Probe:
    """A probe of exactly ``length`` characters whose haystack is ``source[offset : offset + H]``."""
    if not word or any(c not in WORD_ALPHABET for c in word):
        raise ValueError(f"word must be non-empty lowercase ascii letters, got {word!r}")
    H = length - probe_overhead(len(word))
    if H < 0:
        raise ValueError(
            f"context length {length} is shorter than the needle, question and answer "
            f"({probe_overhead(len(word))} characters for a {len(word)}-letter word)"
        )
    if not 0 <= offset <= len(source) - H:
        raise ValueError(f"offset {offset} leaves fewer than {H} haystack characters in a {len(source)}-char source")
    context, start = insert_needle(source[offset : offset + H], NEEDLE.format(word=word), depth)
    answer = ANSWER.format(word=word)
    return Probe(context + QUESTION + answer, word, float(depth), start, len(answer))


def random_word(rng: np.random.Generator, length: int) -> str:
    return "".join(WORD_ALPHABET[i] for i in rng.integers(0, len(WORD_ALPHABET), size=length))


def random_probe(rng: np.random.Generator, source: str, length: int, depth: float, word_len: int) -> Probe:
    """A probe with a random word and a random haystack offset in ``source``."""
    H = length - probe_overhead(word_len)
    if len(source) < H + 1:
        raise ValueError(f"source of {len(source)} characters is too short for a {length}-character probe")
    word = random_word(rng, word_len)
    offset = int(rng.integers(0, len(source) - H + 1))
    return make_probe(source, offset, length, depth, word)


# ---------------------------------------------------------------------------------------------
# Training windows
# ---------------------------------------------------------------------------------------------


class NeedleTrainingData:
    """Training windows with one NIAH probe each; duck-types `PackedSequences` for the Trainer.

    Window ``i`` (``seq_len + 1`` characters): a probe of length ``L ~ U[min_context, seq_len + 1]``,
    depth ``~ U[0, 100]``, random word and haystack offset in ``text``, then the text that follows the
    haystack. Everything is drawn from ``np.random.default_rng([seed, i])``. ``num_windows`` is the
    size of the (virtual) epoch the Trainer shuffles over.
    """

    def __init__(
        self,
        text: str,
        vocab: CharVocab,
        seq_len: int,
        *,
        min_context: int,
        word_len: int = 5,
        seed: int = 0,
        num_windows: int = 1 << 20,
    ):
        if not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
        if not isinstance(word_len, int) or word_len < 1:
            raise ValueError(f"word_len must be a positive int, got {word_len!r}")
        low = probe_overhead(word_len)
        if not low <= min_context <= seq_len + 1:
            raise ValueError(
                f"min_context={min_context} must be in [{low} (needle + question + answer), "
                f"seq_len + 1 = {seq_len + 1}]"
            )
        if len(text) < 2 * (seq_len + 1):
            raise ValueError(f"text of {len(text)} characters is too short for windows of {seq_len + 1}")
        if num_windows < 1:
            raise ValueError(f"num_windows must be >= 1, got {num_windows}")
        self.text, self.vocab, self.seq_len = text, vocab, seq_len
        self.min_context, self.word_len, self.seed, self._n = min_context, word_len, seed, num_windows

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return (
            f"NeedleTrainingData(n={self._n}, seq_len={self.seq_len}, min_context={self.min_context}, "
            f"word_len={self.word_len}, seed={self.seed})"
        )

    def probe(self, i: int) -> tuple[Probe, str]:
        """(the probe of window i, the text that fills the window after it)."""
        if not 0 <= i < self._n:
            raise IndexError(f"window {i} out of range [0, {self._n})")
        rng = np.random.default_rng([self.seed, i])
        W = self.seq_len + 1
        length = int(rng.integers(self.min_context, W + 1))
        depth = float(rng.uniform(0.0, 100.0))
        word = random_word(rng, self.word_len)
        H = length - probe_overhead(self.word_len)
        fill = W - length
        offset = int(rng.integers(0, len(self.text) - (H + fill) + 1))
        probe = make_probe(self.text, offset, length, depth, word)
        return probe, self.text[offset + H : offset + H + fill]

    def window(self, i: int) -> np.ndarray:  # [seq_len + 1] int64
        probe, rest = self.probe(i)
        return self.vocab.encode(probe.text + rest)

    def batch(self, ids: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, targets), both [B, seq_len] int64."""
        w = torch.from_numpy(np.stack([self.window(int(i)) for i in ids]))  # [B, seq_len + 1]
        return w[:, :-1], w[:, 1:]

    def answer_mask(self, ids: Sequence[int] | np.ndarray) -> torch.Tensor:  # [B, seq_len] bool
        """True at the targets that are answer characters (the word and its full stop) of each window.

        Target t is window character t + 1, so a probe of length L has its answer at targets
        [L - answer_len - 1, L - 1).
        """
        mask = torch.zeros(len(ids), self.seq_len, dtype=torch.bool)
        for b, i in enumerate(ids):
            probe, _ = self.probe(int(i))
            L = len(probe.text)
            mask[b, L - probe.answer_len - 1 : L - 1] = True
        return mask


def answer_weighted_loss(
    logits: torch.Tensor,  # [B, T, V]
    targets: torch.Tensor,  # [B, T] long
    answer_mask: torch.Tensor,  # [B, T] bool, True at answer targets
    answer_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, ce, answer_ce): ``loss = ce + answer_weight * answer_ce``.

    ce: mean next-token CE over every target; answer_ce: mean over the answer targets (0 if none).
    """
    if logits.shape[:-1] != targets.shape or answer_mask.shape != targets.shape:
        raise ValueError(
            f"logits {list(logits.shape)}, targets {list(targets.shape)} and answer_mask "
            f"{list(answer_mask.shape)} disagree on [B, T]"
        )
    if not answer_weight >= 0:
        raise ValueError(f"answer_weight must be >= 0, got {answer_weight!r}")
    per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")  # [B*T]
    ce = per_token.mean()
    mask = answer_mask.flatten().to(per_token.dtype)  # [B*T]
    answer_ce = (per_token * mask).sum() / mask.sum().clamp_min(1.0)
    return ce + answer_weight * answer_ce, ce, answer_ce


class NeedleObjective:
    """`answer_weighted_loss` on `NeedleTrainingData` windows, for `foresight.lm.train.Trainer`.

    ``loss = CE(every character) + answer_weight * CE(answer characters)``, plus ``moe_loss`` when the
    model is a `foresight.lm.moe_lm.MoELM` (the weighted load-balancing and z-losses), so a dense model and
    its MoE twin train on the same task loss. ``ce`` is the plain next-character CE; ``extra`` holds the
    answer CE and, for an MoE, the router diagnostics (`foresight.lm.moe_lm.router_stats`), which the
    Trainer logs on every training line.
    """

    def __init__(self, data: NeedleTrainingData, answer_weight: float):
        if not answer_weight >= 0:
            raise ValueError(f"answer_weight must be >= 0, got {answer_weight!r}")
        self.data, self.answer_weight = data, answer_weight

    def __call__(self, model, input_ids, targets, window_ids):
        out = model(input_ids)
        mask = self.data.answer_mask(window_ids).to(targets.device)  # [B, T]
        loss, ce, answer_ce = answer_weighted_loss(out.logits, targets, mask, self.answer_weight)
        extra = {"answer_ce": answer_ce.detach()}
        if isinstance(out, MoELMOutput):
            loss = loss + out.moe_loss
            extra.update(router_stats(out))
        return LMLoss(loss=loss, ce=ce.detach(), extra=extra)

    def __repr__(self) -> str:
        return f"NeedleObjective(answer_weight={self.answer_weight})"


# ---------------------------------------------------------------------------------------------
# Context extension
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContextStage:
    """One stage of a context-extension schedule: ``steps`` steps of ``batch_size`` windows of ``seq_len``
    characters with RoPE base ``rope_base``."""

    seq_len: int
    steps: int
    batch_size: int
    rope_base: float = 10_000.0

    def __post_init__(self) -> None:
        for name in ("seq_len", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ContextStage.{name} must be >= 1, got {getattr(self, name)}")
        if not self.rope_base > 0:
            raise ValueError(f"ContextStage.rope_base must be > 0, got {self.rope_base}")


def check_schedule(stages: Sequence[ContextStage]) -> None:
    """A schedule is non-empty and never shortens the context or lowers the RoPE base."""
    if not stages:
        raise ValueError("a context schedule needs at least one ContextStage")
    for a, b in zip(stages, stages[1:], strict=False):
        if b.seq_len < a.seq_len or b.rope_base < a.rope_base:
            raise ValueError(f"stage {b} shortens the context or lowers the RoPE base of {a}")


def train_context_schedule(
    run,
    name: str,
    model: torch.nn.Module,
    stages: Sequence[ContextStage],
    setup: Callable[[int, ContextStage], tuple],
) -> tuple[torch.nn.Module, list[list[dict]]]:
    """Short context first, then longer: one resumable `foresight.lm.train.train_phase` per stage.

    Stage ``i`` is the phase ``f"{name}-stage{i}"`` of ``run``: it sets the stage's RoPE base
    (`foresight.lm.moe_lm.set_rope_base`) and continues training the model the previous stage left, with
    ``setup(i, stage) -> (TrainConfig, train data, val data or None, objective)``. A finished stage is read
    back from its checkpoint, an interrupted one resumes, so a killed schedule ends with the numbers of an
    uninterrupted one. Returns (the model, each stage's validation history).
    """
    from foresight.lm.moe_lm import set_rope_base
    from foresight.lm.train import train_phase

    check_schedule(stages)
    histories = []
    for i, stage in enumerate(stages):
        set_rope_base(model, stage.rope_base)
        tcfg, train, val, objective = setup(i, stage)
        if tcfg.steps != stage.steps or tcfg.batch_size != stage.batch_size or train.seq_len != stage.seq_len:
            raise ValueError(f"setup({i}) returned steps/batch/seq_len that disagree with {stage}")
        config = getattr(model, "moe_config", model.config)
        model, history = train_phase(run, f"{name}-stage{i}", model, tcfg, train, val, objective, model_config=config)
        histories.append(history)
    return model, histories


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def answer_exact_match(logits: torch.Tensor, ids: torch.Tensor, answer_len: int) -> torch.Tensor:
    """[B] bool: greedy decoding would reproduce the last ``answer_len`` tokens of each row.

    logits [B, T_keep, V] are the model's logits for the LAST T_keep >= answer_len + 1 positions of
    ids [B, T]; the answer token at position t is predicted by the logits at t - 1.
    """
    if logits.shape[1] < answer_len + 1:
        raise ValueError(f"need logits for the last {answer_len + 1} positions, got {logits.shape[1]}")
    pred = logits[:, -(answer_len + 1) : -1].argmax(-1)  # [B, answer_len]
    return (pred == ids[:, -answer_len:]).all(-1)


@dataclass
class NIAHResult:
    """Recall of a NIAH grid: ``recall[i, j]`` = share of needles retrieved at lengths[i], depths[j]."""

    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    recall: np.ndarray  # [n_lengths, n_depths] float
    needles: int  # probes per cell

    def cells(self, max_length: int | None = None) -> list[float]:
        """Recall of every (length, depth) cell with length <= max_length (all cells if None), row-major."""
        rows = [i for i, L in enumerate(self.lengths) if max_length is None or L <= max_length]
        return [float(v) for v in self.recall[rows].reshape(-1)]

    def mean(self, max_length: int | None = None) -> float:
        """Mean recall over the cells with length <= max_length (all cells if None); NaN if there are none."""
        cells = self.cells(max_length)
        return float(np.mean(cells)) if cells else float("nan")

    def min(self, max_length: int | None = None) -> float:
        cells = self.cells(max_length)
        return min(cells) if cells else float("nan")

    def to_dict(self) -> dict:
        return {
            "lengths": list(self.lengths),
            "depths": list(self.depths),
            "recall": self.recall.tolist(),
            "needles": self.needles,
        }

    @classmethod
    def from_dict(cls, d: dict) -> NIAHResult:
        """The inverse of `to_dict` (e.g. a grid read back from a run checkpoint)."""
        recall = np.asarray(d["recall"], dtype=np.float64).reshape(len(d["lengths"]), len(d["depths"]))
        return cls(tuple(int(L) for L in d["lengths"]), tuple(float(x) for x in d["depths"]), recall, int(d["needles"]))


def grid_probes(
    text: str, length: int, depths: Sequence[float], needles: int, word_len: int, seed: int
) -> list[list[Probe]]:
    """The probes of one grid length: ``needles`` haystacks, each probed at every depth.

    Haystack ``n`` is ``text[offset_n : offset_n + H]`` with ``rng = default_rng([seed, length, n])``
    drawing its offset and then one fresh word per depth (the needle varies per query, as in the report).
    The probes of one haystack share its text up to the needle, so their KV cache can be shared
    (`shared_prefix_logits`). Returns ``[needles][len(depths)]`` probes.
    """
    H = length - probe_overhead(word_len)
    if len(text) < H + 1:
        raise ValueError(f"source of {len(text)} characters is too short for a {length}-character probe")
    out = []
    for n in range(needles):
        rng = np.random.default_rng([seed, int(length), n])
        offset = int(rng.integers(0, len(text) - H + 1))
        out.append([make_probe(text, offset, int(length), float(d), random_word(rng, word_len)) for d in depths])
    return out


@torch.no_grad()
def shared_prefix_logits(
    model: torch.nn.Module,
    probes: Sequence[Probe],
    vocab: CharVocab,
    *,
    logits_to_keep: int,
    chunk_size: int = PREFILL_CHUNK,
) -> list[torch.Tensor]:
    """Logits [1, logits_to_keep, V] of each probe's last positions, the haystack before the needles
    prefilled once.

    The probes must share their text up to each needle (one haystack at several depths, `grid_probes`).
    In order of needle position: extend one KV cache with the haystack up to the next needle, copy it,
    and run that probe's remainder (needle, rest of the haystack, question, answer) through the copy. The
    haystack is fed once instead of once per depth: with depths spread evenly over [0, 100] % that is
    ~(D / 2 + 1) instead of D probe-lengths of tokens. Equal to prefilling each probe from scratch up to
    float rounding (tested).
    """
    if not probes:
        raise ValueError("probes is empty; give at least one Probe")
    order = sorted(range(len(probes)), key=lambda i: probes[i].needle_start)
    last = probes[order[-1]]
    prefix = last.text[: last.needle_start]
    for p in probes:
        if p.text[: p.needle_start] != prefix[: p.needle_start]:
            raise ValueError("probes do not share one haystack before their needles (use grid_probes)")
    device = next(model.parameters()).device
    prefix_ids = torch.from_numpy(vocab.encode(prefix))[None].to(device)  # [1, P]
    cache = model.make_cache(1, max(len(p.text) for p in probes))
    done, out = 0, [None] * len(probes)
    for i in order:
        start = probes[i].needle_start
        if start > done:  # extend the shared cache with the haystack up to this needle
            for _ in prefill_chunks(model, prefix_ids[:, done:start], None, cache, chunk_size=chunk_size):
                pass
            done = start
        rest = torch.from_numpy(vocab.encode(probes[i].text[start:]))[None].to(device)  # [1, L - start]
        branch = copy.deepcopy(cache)
        out[i] = prefill(model, rest, cache=branch, chunk_size=chunk_size, logits_to_keep=logits_to_keep)
    return out


@torch.no_grad()
def evaluate_niah(
    model: torch.nn.Module,
    text: str,
    vocab: CharVocab,
    *,
    lengths: Sequence[int],
    depths: Sequence[float] = DEFAULT_DEPTHS,
    needles: int = 5,
    word_len: int = 5,
    seed: int = 0,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    progress: Callable | None = None,
    prefill_chunk: int = PREFILL_CHUNK,
    share_prefix: bool | None = None,
) -> NIAHResult:
    """Exact-match recall over ``lengths`` x ``depths``: ``needles`` haystacks per length, each probed at
    every depth (`grid_probes`).

    Probes are drawn from ``text`` (use held-out text) with ``default_rng([seed, length, haystack])``, so the
    grid does not depend on the model, the batch size or the order of the lengths. The model is a Gemma2
    or subclass (MoELM). ``share_prefix``: prefill each haystack once up to its needles and branch the KV
    cache per depth (`shared_prefix_logits`, one stream at a time); False: batches of ``batch_size``
    whole probes, each prefilled in chunks of ``prefill_chunk``; None (default): sharing for lengths
    above ``prefill_chunk``, where a probe no longer fits one forward. Both give the same answers.
    """
    if needles < 1:
        raise ValueError(f"needles must be >= 1, got {needles}")
    if not lengths or not depths:
        raise ValueError(f"need at least one length and one depth, got {list(lengths)} and {list(depths)}")
    model.eval()
    answer_len = len(ANSWER.format(word="x" * word_len))
    keep = answer_len + 1
    recall = np.zeros((len(lengths), len(depths)))
    it = progress(lengths, desc="NIAH lengths") if progress is not None else lengths
    for i, length in enumerate(it):
        grid = grid_probes(text, int(length), depths, needles, word_len, seed)  # [needles][depths]
        hit = np.zeros((needles, len(depths)), dtype=bool)
        if share_prefix or (share_prefix is None and length > prefill_chunk):
            for n, probes in enumerate(grid):
                logits = shared_prefix_logits(model, probes, vocab, logits_to_keep=keep, chunk_size=prefill_chunk)
                for j, (p, lg) in enumerate(zip(probes, logits, strict=True)):
                    ids = torch.from_numpy(vocab.encode(p.text[-keep:]))[None].to(lg.device)
                    hit[n, j] = bool(answer_exact_match(lg, ids, answer_len)[0])
        else:
            flat = [p for probes in grid for p in probes]
            hits = []
            for s in range(0, len(flat), batch_size):
                ids = torch.from_numpy(np.stack([vocab.encode(p.text) for p in flat[s : s + batch_size]])).to(device)
                logits = prefill(model, ids, chunk_size=prefill_chunk, logits_to_keep=keep)  # [b, A + 1, V]
                hits.append(answer_exact_match(logits, ids, answer_len).cpu())
            hit = torch.cat(hits).numpy().reshape(needles, len(depths))
        recall[i] = hit.mean(0)
    return NIAHResult(tuple(int(L) for L in lengths), tuple(float(d) for d in depths), recall, needles)


def longest_recalled(grid: NIAHResult, bar: float) -> int:
    """The longest context L such that every (length <= L, depth) cell has recall >= ``bar``; 0 if the
    shortest length already misses it."""
    best = 0
    for L, row in sorted(zip(grid.lengths, grid.recall, strict=True)):
        if row.min() < bar:
            break
        best = L
    return best


def mean_grid(grids: Sequence[NIAHResult]) -> NIAHResult:
    """Recall averaged over grids of the same lengths and depths (e.g. seeds); needles add up."""
    if not grids:
        raise ValueError("grids is empty; give at least one NIAHResult")
    g0 = grids[0]
    for g in grids:
        if (g.lengths, g.depths) != (g0.lengths, g0.depths):
            raise ValueError(f"grids differ: {g.lengths} x {g.depths} vs {g0.lengths} x {g0.depths}")
    recall = np.mean([g.recall for g in grids], axis=0)
    return NIAHResult(g0.lengths, g0.depths, recall, sum(g.needles for g in grids))


@torch.no_grad()
def position_nll(model: torch.nn.Module, ids: torch.Tensor, *, chunk_size: int = PREFILL_CHUNK) -> torch.Tensor:
    """Next-token NLL [B, T - 1] (nats) of every position of ids [B, T], the prompt fed in chunks.

    Entry t is -log p(ids[:, t + 1] | ids[:, : t + 1]); its cumulative mean over t is Gemini 1.5's
    "NLL by context position" curve. Chunks go through a KV cache (`foresight.lm.cache.prefill_chunks`),
    so neither the scores nor the [T, V] logits of the whole stream are ever held at once.
    """
    model.eval()
    B, T = ids.shape
    if T < 2:
        raise ValueError(f"need at least 2 tokens to score a next token, got {T}")
    nll = torch.empty(B, T - 1)
    cache = model.make_cache(B, T)
    for start, end, logits in prefill_chunks(model, ids, None, cache, chunk_size=chunk_size, logits_to_keep=0):
        n = min(end, T - 1) - start  # the last position has no target
        if n > 0:
            targets = ids[:, start + 1 : start + 1 + n]  # [B, n]
            ce = F.cross_entropy(logits[:, :n].flatten(0, 1).float(), targets.flatten(), reduction="none")
            nll[:, start : start + n] = ce.view(B, n).cpu()
    return nll


def cumulative_nll(nll: torch.Tensor | np.ndarray) -> np.ndarray:
    """Gemini 1.5's "cumulative average NLL by token position": entry t is the mean of the NLL at
    positions 0..t, averaged over the streams. ``nll`` [B, T] (e.g. `position_nll`) -> [T] float64."""
    a = np.asarray(nll, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"nll must be [streams, positions] with positions >= 1, got shape {a.shape}")
    return np.cumsum(a.mean(0)) / np.arange(1, a.shape[1] + 1)


def plot_nll_by_position(path, curves: dict[str, np.ndarray], trained_length: int | None = None) -> None:
    """Cumulative-average NLL against token position on a log axis (Gemini 1.5, "continued improvement in
    next-token prediction"), one line per model; a dotted line marks ``trained_length``. Saves a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("curves is empty; give at least one {label: cumulative NLL}")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, y in curves.items():
        y = np.asarray(y, dtype=np.float64)
        ax.plot(np.arange(1, y.size + 1), y, label=label)
    if trained_length is not None:
        ax.axvline(trained_length, color="grey", linestyle=":", label=f"trained context ({trained_length})")
    ax.set_xscale("log")
    ax.set(
        title="Cumulative average NLL by token position",
        xlabel="token position (characters)",
        ylabel="cumulative mean NLL (nats/char)",
    )
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_recall_grids(path, grids: dict[str, NIAHResult], trained_length: int | None = None) -> None:
    """The usual NIAH heatmap, one panel per model: recall per (context length, needle depth) cell.

    Lengths beyond ``trained_length`` are starred (extrapolation). Saves a PNG at ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not grids:
        raise ValueError("grids is empty; give at least one {label: NIAHResult}")
    fig, axes = plt.subplots(1, len(grids), figsize=(5.2 * len(grids), 4.4), squeeze=False, layout="constrained")
    for ax, (label, g) in zip(axes[0], grids.items(), strict=True):
        recall = g.recall.T  # [depths, lengths]
        im = ax.imshow(recall, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
        beyond = [trained_length is not None and L > trained_length for L in g.lengths]
        ax.set_xticks(range(len(g.lengths)), [f"{L}{'*' if b else ''}" for L, b in zip(g.lengths, beyond, strict=True)])
        ax.set_yticks(range(len(g.depths)), [f"{d:.0f}" for d in g.depths])
        for (i, j), v in np.ndenumerate(recall):
            ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=6)
        xlabel = "context length (chars" + ("; * = beyond training)" if trained_length is not None else ")")
        ax.set(title=f"{label}: NIAH recall", xlabel=xlabel, ylabel="needle depth (%)")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
