"""Decoding controls: one frozen `GenerationConfig`, and the pure logits processors it names.

Axis legend: B batch, V vocab, N alternatives.

Each processor is a small pure function on [B, V] fp32 logits with the semantics (and the exact
arithmetic) of its transformers twin, checked on identical logits in tests/lm/test_decoding_controls.py:

    apply_repetition_penalty   RepetitionPenaltyLogitsProcessor  seen tokens: logit / p if > 0 else logit * p
    apply_temperature          TemperatureLogitsWarper           logits / t
    top_k_filter               TopKLogitsWarper                  keep the k largest (ties with the k-th stay)
    top_p_filter               TopPLogitsWarper                  keep the smallest set holding mass >= p
    min_p_filter               MinPLogitsWarper                  keep tokens with prob >= p * max prob

and OpenAI's presence/frequency penalties (no transformers twin; vLLM's arithmetic):

    apply_presence_frequency_penalties   logit - frequency * count - presence * (count > 0)

`process_logits` chains them in HF `generate`'s order: repetition penalty, presence/frequency
penalties (where vLLM puts them: with the other penalties, before the warpers), then (only when
sampling) temperature -> top-k -> top-p -> min-p. Greedy decoding is the argmax of the penalised logits.
One difference from HF: the repetition penalty's "seen" tokens are the real prompt tokens and the
generated ones; HF also counts the left padding of a batch (its input_ids hold the pad ids).

`History` keeps what the penalties read, per row. `Sampler` applies one config per row of a batch
(rows of a JSONL file or concurrent server requests can differ) and draws each sampled row from the
generator it is given: `generate` and the server's engine pick next tokens with the same code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace

import torch

# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationConfig:
    """Per-request decoding controls (one per prompt; `generate`'s keyword arguments override fields).

    Logprobs (one definition for `generate`, `complete`, JSONL output and `foresight serve`):
    `logprobs=n` reports, per generated token, its log-probability and the n most likely alternatives
    under the distribution the token was actually chosen from, `process_logits`' output: the logits
    after the penalties and, when sampling, after temperature, top-k, top-p and min-p (filtered
    tokens are -inf there, so fewer than n alternatives may be listed). Why this one rather than the
    raw model distribution (vLLM's default; OpenAI's do not seem to move with temperature): only
    under it do a reply's logprobs add up to the log-probability of having produced that reply
    (what importance weights and RL on sampled replies need), and a token is never reported with a
    logprob other than the one it was drawn with. Where nothing reshapes the distribution (greedy,
    or temperature 1 with no filters and no penalties: OpenAI's defaults) it is the model's own, so
    scoring text with greedy or default requests reads the model as it is.
    """

    max_new_tokens: int = 32  # tokens to generate at most (finish_reason "length")
    do_sample: bool = False  # False: greedy argmax; True: sample from the processed distribution
    temperature: float = 1.0  # logits / temperature before the filters (sampling only)
    top_k: int | None = None  # keep the k most likely tokens (sampling only); None = off
    top_p: float | None = None  # nucleus mass in (0, 1] (sampling only); None = off
    min_p: float | None = None  # drop tokens below min_p * (top token's prob), in [0, 1] (sampling only)
    repetition_penalty: float = 1.0  # > 0; 1 = off; > 1 discourages tokens already in prompt or reply
    presence_penalty: float = 0.0  # in [-2, 2] (OpenAI): subtracted once from each token already generated
    frequency_penalty: float = 0.0  # in [-2, 2] (OpenAI): subtracted per time a token was already generated
    stop: tuple[str, ...] = ()  # stop strings (need a tokenizer); excluded from the returned text
    stop_token_ids: tuple[int, ...] = ()  # token ids that end a row (kept as its last token)
    max_time: float | None = None  # seconds since generation began; then finish_reason "time"
    logprobs: int | None = None  # None: off; n >= 0: each token's logprob and its n best alternatives
    seed: int | None = None  # seeds the sampling generator (per row when configs are given per row)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # one stop string is a common spelling
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids or ()))
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens!r}")
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"do_sample must be a bool, got {self.do_sample!r}")
        if not _is_number(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature!r}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k <= 0):
            raise ValueError(f"top_k must be a positive int (None = off), got {self.top_k!r}")
        if self.top_p is not None and (not _is_number(self.top_p) or not 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.min_p is not None and (not _is_number(self.min_p) or not 0 <= self.min_p <= 1):
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p!r}")
        if not _is_number(self.repetition_penalty) or not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not -2 <= value <= 2:
                raise ValueError(f"{name} must be a number in [-2, 2] (0 = off), got {value!r}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must hold non-empty strings, got {self.stop!r}")
        if not all(_is_int(i) and i >= 0 for i in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must hold token ids (ints >= 0), got {self.stop_token_ids!r}")
        if self.max_time is not None and (not _is_number(self.max_time) or not self.max_time > 0):
            raise ValueError(f"max_time must be > 0 seconds (None = no limit), got {self.max_time!r}")
        if self.logprobs is not None and (not _is_int(self.logprobs) or self.logprobs < 0):
            raise ValueError(f"logprobs must be None or an int >= 0 (alternatives per token), got {self.logprobs!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")

    def replace(self, **changes) -> GenerationConfig:
        """A copy with some fields changed (validated again)."""
        unknown = sorted(set(changes) - FIELDS)
        if unknown:
            raise TypeError(f"unknown generation option(s) {unknown}; accepted: {sorted(FIELDS)}")
        return replace(self, **changes)

    @classmethod
    def from_options(cls, options: Mapping, base: GenerationConfig | None = None) -> GenerationConfig:
        """From user-facing options (CLI flags, a JSONL line, a server request), on top of `base`.

        Keys are the field names except do_sample: as on the command line and in OpenAI's API,
        temperature 0 means greedy and temperature > 0 sampling at that temperature.
        """
        base = base or cls()
        accepted = FIELDS - {"do_sample"}
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ValueError(f"unknown generation option(s) {unknown}; accepted: {sorted(accepted)}")
        changes = dict(options)
        if "temperature" in changes:
            t = changes["temperature"]
            if not _is_number(t) or t < 0:
                raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
            changes["do_sample"] = t > 0
            changes["temperature"] = t if t > 0 else 1.0
        return replace(base, **changes)

    @property
    def sampling_key(self) -> tuple:
        """The fields that shape the next-token distribution: rows with equal keys are processed together."""
        penalties = (self.repetition_penalty, self.presence_penalty, self.frequency_penalty)
        return (self.do_sample, self.temperature, self.top_k, self.top_p, self.min_p, *penalties)

    @property
    def penalised(self) -> tuple[bool, bool]:
        """(needs the seen tokens, needs the reply's token counts): what `History` must keep for this row."""
        return self.repetition_penalty != 1.0, bool(self.presence_penalty or self.frequency_penalty)


FIELDS = frozenset(f.name for f in fields(GenerationConfig))


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def row_configs(config, batch_size: int, **overrides) -> list[GenerationConfig]:
    """One GenerationConfig per row: `config` is None, one config for every row, or a sequence of B."""
    if config is None or isinstance(config, GenerationConfig):
        configs = [config or GenerationConfig()] * batch_size
    else:
        configs = list(config)
        if len(configs) != batch_size or not all(isinstance(c, GenerationConfig) for c in configs):
            raise ValueError(f"config must be a GenerationConfig or a sequence of {batch_size} (one per row)")
    if overrides:
        configs = [c.replace(**overrides) for c in configs]
    return configs


# ---------------------------------------------------------------------------------------------
# Logits processors: [B, V] fp32 logits in, [B, V] out
# ---------------------------------------------------------------------------------------------


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019) as HF applies it: seen tokens' logits are divided by
    `penalty` when positive and multiplied when negative (both lower them for penalty > 1).
    seen: [B, V] bool, True for tokens in the prompt or the reply so far."""
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def apply_presence_frequency_penalties(
    logits: torch.Tensor, counts: torch.Tensor, presence: float, frequency: float
) -> torch.Tensor:
    """OpenAI's penalties: logit[j] - frequency * c[j] - presence * (c[j] > 0), c[j] the times token j
    was generated so far (the reply only, not the prompt). counts: [B, V] fp32."""
    return logits - frequency * counts - presence * (counts > 0).float()


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """-inf below the k-th largest logit (tokens tied with it stay, as in HF)."""
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]  # [B, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter (Holtzman et al. 2020): drop a token when the tokens ranked above it already hold
    mass >= p. Written as HF does (ascending sort, drop cumulative mass <= 1 - p) so the same logits
    give the same set bit for bit; the most likely token always stays."""
    sorted_logits, order = torch.sort(logits, descending=False)  # [B, V] ascending
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cum <= (1 - p)
    drop_sorted[..., -1:] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """min-p (Nguyen et al. 2024): drop tokens whose probability is below p times the top token's.
    The top token always stays (p <= 1), which is HF's min_tokens_to_keep=1."""
    probs = logits.softmax(dim=-1)
    drop = probs < p * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(drop, float("-inf"))


def process_logits(
    logits: torch.Tensor,
    config: GenerationConfig,
    seen: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """The distribution `config` decodes from, as logits [B, V] (fp32): argmax it (greedy) or sample
    its softmax. `seen` [B, V] bool is needed only with a repetition penalty != 1, `counts` [B, V]
    (times generated) only with a presence or frequency penalty (see `History`)."""
    logits = logits.float()
    if config.repetition_penalty != 1.0:
        if seen is None:
            raise ValueError("repetition_penalty != 1 needs the seen-token mask [B, V]")
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    if config.presence_penalty or config.frequency_penalty:
        if counts is None:
            raise ValueError("presence_penalty / frequency_penalty need the reply's token counts [B, V]")
        logits = apply_presence_frequency_penalties(logits, counts, config.presence_penalty, config.frequency_penalty)
    if not config.do_sample:
        return logits
    # HF's conditions: a warper that cannot change the distribution is not applied at all.
    if config.temperature != 1.0:
        logits = apply_temperature(logits, config.temperature)
    if config.top_k is not None:
        logits = top_k_filter(logits, config.top_k)
    if config.top_p is not None and config.top_p < 1.0:
        logits = top_p_filter(logits, config.top_p)
    if config.min_p is not None:
        logits = min_p_filter(logits, config.min_p)
    return logits


def seen_mask(input_ids: torch.Tensor, vocab_size: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """[B, V] bool: True for every token id that occurs in a row (padding, valid == 0, excluded)."""
    B = input_ids.shape[0]
    ids = input_ids if valid is None else input_ids.masked_fill(~valid.bool(), vocab_size)
    # One extra column catches the padding (HF's trick), then is cut off.
    seen = torch.zeros(B, vocab_size + 1, dtype=torch.bool, device=input_ids.device)
    return seen.scatter_(1, ids, True)[:, :vocab_size]


class History:
    """What the penalties read, per row of a batch: `seen` [B, V] bool, the tokens of the prompt and of
    the reply so far (repetition penalty), and `counts` [B, V] fp32, the times each token was generated
    (presence/frequency penalties: OpenAI counts the reply only). Each is None unless some row needs it.
    """

    def __init__(
        self,
        configs: Sequence[GenerationConfig],
        prompts: Sequence[Sequence[int]],  # each row's real prompt tokens (no padding)
        vocab_size: int,
        device: torch.device,
        replies: Sequence[Sequence[int]] | None = None,  # tokens generated so far (a batch rebuilt mid-way)
    ):
        B = len(configs)
        replies = replies or [()] * B
        need_seen = any(c.penalised[0] for c in configs)
        need_counts = any(c.penalised[1] for c in configs)
        self.seen = self.counts = None
        if need_seen:
            rows, ids = _flat([list(p) + list(r) for p, r in zip(prompts, replies, strict=True)], vocab_size, device)
            self.seen = torch.zeros(B, vocab_size, dtype=torch.bool, device=device)
            self.seen[rows, ids] = True
        if need_counts:
            rows, ids = _flat(replies, vocab_size, device)
            self.counts = torch.zeros(B, vocab_size, device=device)
            self.counts.index_put_((rows, ids), torch.ones(len(ids), device=device), accumulate=True)

    def add(self, tokens: torch.Tensor, active: torch.Tensor | None = None) -> None:
        """Record one generated token per row: tokens [B] long, active [B] bool (None: every row)."""
        if self.seen is None and self.counts is None:
            return
        rows = torch.arange(len(tokens), device=tokens.device) if active is None else active.nonzero()[:, 0]
        tokens = tokens[rows]
        if self.seen is not None:
            self.seen[rows, tokens] = True
        if self.counts is not None:
            self.counts[rows, tokens] += 1

    def select(self, index: torch.Tensor) -> None:
        """Keep only the rows `index` (rows leaving a running batch)."""
        if self.seen is not None:
            self.seen = self.seen.index_select(0, index)
        if self.counts is not None:
            self.counts = self.counts.index_select(0, index)


def _flat(rows: Sequence[Sequence[int]], vocab_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(row index, token id) of every token of every row, as two flat long tensors."""
    ids = [int(i) for r in rows for i in r]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    lengths = torch.tensor([len(r) for r in rows], device=device)
    row = torch.repeat_interleave(torch.arange(len(rows), device=device), lengths)
    return row, torch.tensor(ids, dtype=torch.long, device=device)


def select_next_token(
    logits: torch.Tensor,  # [B, V] (soft-capped) logits of the last position
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:  # [B] long
    """Greedy argmax, or sampling after temperature -> top-k -> top-p (HF's warper order)."""
    config = GenerationConfig(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p)
    logits = process_logits(logits, config)
    if not do_sample:
        return logits.argmax(dim=-1)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


# ---------------------------------------------------------------------------------------------
# Per-row sampling for a batch
# ---------------------------------------------------------------------------------------------


class Sampler:
    """The decoding controls of one batch: per-row configs, and the random generator each sampled row
    draws from (None: torch's global RNG; see `row_generators`). Rows that share a generator draw
    together, in row order, so one generator for a whole batch draws as HF `generate` does.
    """

    def __init__(
        self,
        configs: Sequence[GenerationConfig],
        generators: Sequence[torch.Generator | None],
        *,
        device: torch.device,
    ):
        self.configs = list(configs)
        B = len(self.configs)
        if len(generators) != B:
            raise ValueError(f"need one generator (or None) per row: {B} rows, {len(generators)} generators")
        self.greedy = torch.tensor([not c.do_sample for c in self.configs], device=device)  # [B] bool
        groups: dict[tuple, list[int]] = {}
        for b, c in enumerate(self.configs):
            groups.setdefault(c.sampling_key, []).append(b)
        # (row index or None = all rows, config) per distinct distribution.
        self._groups = [
            (None if len(rows) == B else torch.tensor(rows, device=device), self.configs[rows[0]])
            for rows in groups.values()
        ]
        # Sampled rows grouped by the generator they draw from: [(row index or None, generator)].
        gens: dict[int, tuple[list[int], torch.Generator | None]] = {}
        for b, (c, g) in enumerate(zip(self.configs, generators, strict=True)):
            if c.do_sample:
                gens.setdefault(id(g), ([], g))[0].append(b)
        self._draws = [(None if len(rows) == B else torch.tensor(rows, device=device), g) for rows, g in gens.values()]

    def process(
        self, logits: torch.Tensor, seen: torch.Tensor | None = None, counts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Processed logits [B, V] fp32: each row through its own config (see `process_logits`)."""
        if len(self._groups) == 1:
            return process_logits(logits, self._groups[0][1], seen, counts)
        out = torch.empty_like(logits, dtype=torch.float32)
        for rows, config in self._groups:
            part = [None if t is None else t[rows] for t in (seen, counts)]
            out[rows] = process_logits(logits[rows], config, *part)
        return out

    def sample(self, probs: torch.Tensor) -> torch.Tensor:
        """One draw per sampled row from (unnormalised) probs [B, V]; greedy rows get their argmax."""
        token = probs.argmax(dim=-1)
        for rows, g in self._draws:
            if rows is None:
                return torch.multinomial(probs, 1, generator=g)[:, 0]
            token[rows] = torch.multinomial(probs[rows], 1, generator=g)[:, 0]
        return token

    def choose(self, processed: torch.Tensor) -> torch.Tensor:
        """The next token [B] from processed logits: argmax (greedy rows) or a softmax draw."""
        if not self._draws:
            return processed.argmax(dim=-1)
        return self.sample(processed.softmax(-1))

    def uniform(self, n: int) -> torch.Tensor:
        """[B, n] uniform draws in [0, 1) for the sampled rows (zeros for greedy rows)."""
        B = self.greedy.shape[0]
        u = torch.zeros(B, n, device=self.greedy.device)
        for rows, g in self._draws:
            if rows is None:
                return torch.rand(B, n, generator=g, device=u.device)
            u[rows] = torch.rand(len(rows), n, generator=g, device=u.device)
        return u


def row_generators(
    configs: Sequence[GenerationConfig],
    device: torch.device,
    generator: torch.Generator | None = None,
    shared: bool = True,
) -> list[torch.Generator | None]:
    """The generator each row of a `generate` batch draws from. `generator` given: every row draws
    from it. Else shared=True (one config for the whole batch): the rows draw together from one
    generator seeded by the first seed, or from torch's global RNG (None). shared=False (configs
    given per row): a row with a seed draws from its own generator, so its sample does not depend on
    the batch it is in (the server's engine gives every sampled request its own generator)."""
    if generator is not None:
        return [generator] * len(configs)
    out, seeded = [], {}
    for b, c in enumerate(configs):
        g = None
        if c.do_sample and c.seed is not None:
            key = "shared" if shared else b
            if key not in seeded:
                seeded[key] = torch.Generator(device=device).manual_seed(c.seed)
            g = seeded[key]
        out.append(g)
    return out


def top_logprobs(processed: torch.Tensor, tokens: torch.Tensor, n: int):
    """Log-softmax of processed logits [B, V]: (chosen [B], top ids [B, n], top logprobs [B, n])."""
    lp = processed.float().log_softmax(dim=-1)
    chosen = lp.gather(-1, tokens[:, None])[:, 0]
    top = lp.topk(min(n, lp.shape[-1]), dim=-1)
    return chosen, top.indices, top.values
